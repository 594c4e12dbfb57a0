#!/usr/bin/env python3
"""Runs a COCO split through a running codetr-serve (the real serving path: JPEG bytes in,
decode, resize, batcher, ONNX Runtime on the server's provider) and writes its detections as a
COCO results file; `compare` then puts two such runs side by side (e.g. CPU and CUDA).

Standard library only (it runs on the GPU machine's bare Python too).

  gpu_parity.py detect --url http://127.0.0.1:18200 --data DIR/val --out run.json [--clients 8]
  gpu_parity.py compare A.json B.json [--top 20]
  gpu_parity.py worst PARITY.json --data DIR/val [--count 2]

`detect` asks for every detection (score_threshold 0, the graph's top-k) so that AP is the
graph's, then writes {"results": [COCO detections], "per_image": {id: [[score, cls, x1, y1,
x2, y2], ...]}}. `compare` prints JSON: the largest score difference by rank over all images (and over the top
ranks), how it spreads over images (how many exceed 1e-4, 1e-3, 1e-2; the median image; the
five worst with the rank where it happens), and how many of each image's top detections in A
have a same-class box in B with IoU ≥ 0.99. `worst` prints the image files of the worst images
of a `compare` report, comma-separated (what the `drift` bench takes as --images).
"""

import argparse
import concurrent.futures as cf
import json
import sys
import urllib.request


def detect(args: argparse.Namespace) -> None:
    gt = json.load(open(f"{args.data}/instances.json"))
    cats = sorted(c["id"] for c in gt["categories"])  # contiguous labels in ascending id order
    url = f"{args.url}/v1/detect?score_threshold=0"

    def one(img):
        body = open(f"{args.data}/images/{img['file_name']}", "rb").read()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=120) as r:
            res = json.load(r)
        return img["id"], res["images"][0]["detections"]

    results, per_image = [], {}
    with cf.ThreadPoolExecutor(args.clients) as pool:
        for image_id, dets in pool.map(one, gt["images"]):
            rows = []
            for d in dets:
                b = d["box"]
                x1, y1, x2, y2 = b["x1"], b["y1"], b["x2"], b["y2"]
                cat = cats[d["class_id"]] if d["class_id"] < len(cats) else -1  # a model of other classes
                results.append({"image_id": image_id, "category_id": cat,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": d["score"]})
                rows.append([d["score"], d["class_id"], x1, y1, x2, y2])
            per_image[str(image_id)] = rows
    json.dump({"results": results, "per_image": per_image}, open(args.out, "w"))
    json.dump(results, open(args.out.replace(".json", ".coco.json"), "w"))
    print(f"{len(per_image)} images, {len(results)} detections -> {args.out}", file=sys.stderr)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compare(args: argparse.Namespace) -> None:
    print(json.dumps(compare_runs(json.load(open(args.a))["per_image"], json.load(open(args.b))["per_image"], args.top)))


def compare_runs(a: dict, b: dict, top: int = 20) -> dict:
    """`compare`'s report for two runs' `per_image` maps (image id → [[score, class, x1, y1, x2,
    y2], ...], by descending score)."""
    worst, worst_top, worst_box, matched, total = 0.0, 0.0, 0.0, 0, 0
    per_image = []  # (largest score difference by rank, that rank, image id)
    for k, ra in a.items():
        rb = b.get(k, [])
        img, img_rank = 0.0, -1
        for r, (x, y) in enumerate(zip(ra, rb)):  # scores by rank: sorted in both, whatever the order of ties
            d = abs(x[0] - y[0])
            if d > img:
                img, img_rank = d, r
            if r < top:
                worst_top = max(worst_top, d)
        worst = max(worst, img)
        per_image.append((img, img_rank, k))
        for x in ra[:top]:
            total += 1
            best = max((iou(x[2:], y[2:]) for y in rb[: top * 2] if y[1] == x[1]), default=0.0)
            if best >= 0.99:
                matched += 1
        for x, y in zip(ra[:top], rb[:top]):
            if x[1] == y[1]:
                worst_box = max(worst_box, max(abs(p - q) for p, q in zip(x[2:], y[2:])))
    per_image.sort(reverse=True)
    diffs = sorted(d for d, _, _ in per_image)
    # How the difference spreads over images: one near-tied image or all of them.
    spread = {f"images_over_{t:g}": sum(d > t for d in diffs) for t in (1e-4, 1e-3, 1e-2)}
    spread["median_image_max"] = diffs[len(diffs) // 2] if diffs else 0.0
    return {"images": len(a), "max_score_diff_by_rank": worst,
            f"max_score_diff_by_rank_top{top}": worst_top, **spread,
            "worst_images": [{"image_id": k, "max_score_diff": d, "rank": r} for d, r, k in per_image[:5]],
            f"top{top}_matched_iou99": matched, f"top{top}_total": total,
            "max_box_diff_px_same_rank_same_class": worst_box}


def worst(args: argparse.Namespace) -> None:
    ids = [w["image_id"] for w in json.load(open(args.parity))["worst_images"][: args.count]]
    names = {str(i["id"]): i["file_name"] for i in json.load(open(f"{args.data}/instances.json"))["images"]}
    print(",".join(f"{args.data}/images/{names[i]}" for i in ids if i in names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect")
    d.add_argument("--url", required=True)
    d.add_argument("--data", required=True, help="COCO split: DIR/instances.json + DIR/images/")
    d.add_argument("--out", required=True)
    d.add_argument("--clients", type=int, default=8)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--top", type=int, default=20)
    w = sub.add_parser("worst")
    w.add_argument("parity", help="a `compare` report")
    w.add_argument("--data", required=True, help="the COCO split it was run on")
    w.add_argument("--count", type=int, default=2)
    args = p.parse_args()
    {"detect": detect, "compare": compare, "worst": worst}[args.cmd](args)


if __name__ == "__main__":
    main()
