#!/usr/bin/env python3
"""Deterministic COCO gt + detections for bench/eval_speed.sh.

Usage: make_eval_bench.py OUT_DIR [--images N] [--dets-per-image D] [--seed S]

Writes OUT_DIR/gt.json and OUT_DIR/dt.json: N 640x480 images, 80 categories, 0-15 gts per
image with sizes from small to large, and exactly D detections per image (jittered gts with
high-ish scores, the rest false positives).
"""
import argparse
import json
import math
import os
import random

W, H = 640.0, 480.0


def rbox(rng):
    side = math.exp(rng.uniform(math.log(4), math.log(300)))
    aspect = rng.uniform(0.5, 2.0)
    w = min(side * math.sqrt(aspect), W - 1)
    h = min(side / math.sqrt(aspect), H - 1)
    return [round(rng.random() * (W - w), 2), round(rng.random() * (H - h), 2),
            round(w, 2), round(h, 2)]


def jitter(rng, b, a):
    return [round(b[0] + b[2] * rng.gauss(0, a), 2), round(b[1] + b[3] * rng.gauss(0, a), 2),
            round(max(1.0, b[2] * (1 + rng.gauss(0, a))), 2),
            round(max(1.0, b[3] * (1 + rng.gauss(0, a))), 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets-per-image", type=int, default=100)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cats = list(range(1, 81))
    images, anns, dets = [], [], []
    for i in range(args.images):
        img_id = i + 1
        images.append({"id": img_id, "file_name": f"{img_id:06d}.jpg",
                       "width": int(W), "height": int(H)})
        gts = []
        for _ in range(rng.randint(0, 15)):
            c = rng.choice(cats)
            b = rbox(rng)
            crowd = 1 if rng.random() < 0.01 else 0
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": c,
                         "bbox": b, "area": round(b[2] * b[3], 2), "iscrowd": crowd})
            gts.append((c, b))
        mine = []
        for c, b in gts:
            if rng.random() < 0.85:
                mine.append({"image_id": img_id, "category_id": c,
                             "bbox": jitter(rng, b, 0.08),
                             "score": round(rng.uniform(0.3, 1.0), 5)})
        while len(mine) < args.dets_per_image:
            mine.append({"image_id": img_id, "category_id": rng.choice(cats),
                         "bbox": rbox(rng), "score": round(rng.uniform(0.0, 0.6), 5)})
        dets.extend(mine[:args.dets_per_image])
    os.makedirs(args.out, exist_ok=True)
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"class{c}"} for c in cats]}
    with open(os.path.join(args.out, "gt.json"), "w") as f:
        json.dump(gt, f)
    with open(os.path.join(args.out, "dt.json"), "w") as f:
        json.dump(dets, f)
    print(f"{len(images)} images, {len(anns)} gts, {len(dets)} detections -> {args.out}")


if __name__ == "__main__":
    main()
