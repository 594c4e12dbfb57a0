#!/usr/bin/env python3
"""How much of the fp16 graph's score difference is the query selection's (issue 21's fp16
parity): runs the fp32 graph, the `--fp16` graph as exported, and the fp16 graph handed the
fp32 graph's selected proposals (the two-stage top-k's indices become a graph input; the
fp16 graph computes everything else itself), on the same images in ONNX Runtime CPU, and
prints JSON: each run against the fp32 graph by the serving parity's measures
(`gpu_parity.compare_runs`: score differences by rank and their spread over images, top-20
boxes matched at IoU ≥ 0.99).

  fp16_same_selection.py --fp32 grid.onnx --fp16 fp16.onnx --images DIR [--count 300]
    [--batch 8] [--topk query_selection_topk]

The images are fed as the server feeds a stretch graph of their size (RGB, uint8, no resize:
pass images of the graph's input size, e.g. the synthetic val split at 256²).
"""

import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from gpu_parity import compare_runs


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def selection_as_input(model: onnx.ModelProto, topk: str) -> tuple[onnx.ModelProto, str]:
    """`model` whose top-k node `topk` no longer feeds its indices downstream: they come from a
    new graph input of the same name (its own indices are renamed and left unused)."""
    node = next((n for n in model.graph.node if n.name == topk), None)
    if node is None or node.op_type != "TopK":
        raise SystemExit(f"no TopK node named {topk}")
    indices = node.output[1]
    node.output[1] = indices + "_own"
    model.graph.input.append(onnx.helper.make_tensor_value_info(indices, onnx.TensorProto.INT64, None))
    return model, indices


def per_image(run: dict) -> dict:
    """A run's outputs as `gpu_parity.py`'s `per_image` map (image index → detections by
    descending score), so that its `compare_runs` measures them as it measures served runs."""
    out = {}
    for i in range(run["scores"].shape[0]):
        order = np.argsort(-run["scores"][i], kind="stable")
        out[str(i)] = [[float(run["scores"][i][k]), int(run["labels"][i][k]), *map(float, run["boxes"][i][k])]
                       for k in order]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", required=True)
    p.add_argument("--fp16", required=True)
    p.add_argument("--images", required=True, help="a directory of .jpg/.png of the graph's input size")
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--batch", type=int, default=8, help="images per run (memory)")
    p.add_argument("--topk", default="query_selection_topk", help="the query selection's TopK node")
    args = p.parse_args()

    files = sorted(f for f in os.listdir(args.images) if f.lower().endswith((".jpg", ".jpeg", ".png")))[: args.count]
    if not files:
        raise SystemExit(f"{args.images}: no images")
    contract = ["scores", "labels", "boxes"]
    # fp32, with its selection exposed
    m32 = onnx.load(args.fp32)
    tk = next((x for x in m32.graph.node if x.name == args.topk), None)
    if tk is None:
        raise SystemExit(f"{args.fp32}: no node {args.topk}")
    m32.graph.output.append(onnx.ValueInfoProto(name=tk.output[1]))
    s32, s16 = session(m32), session(onnx.load(args.fp16))
    m16, name = selection_as_input(onnx.load(args.fp16), args.topk)
    m16.graph.output.append(onnx.ValueInfoProto(name=name + "_own"))
    s16_given = session(m16)

    runs: dict[str, list] = {k: [] for k in ("ref", "fp16", "given", "selection", "own")}
    for at in range(0, len(files), args.batch):
        pixels = np.stack([np.asarray(Image.open(os.path.join(args.images, f)).convert("RGB"))
                           for f in files[at:at + args.batch]])
        n, h, w, _ = pixels.shape
        feeds = {"images": pixels, "orig_sizes": np.array([[h, w]] * n, dtype=np.int64)}
        out32 = s32.run(contract + [tk.output[1]], feeds)
        runs["ref"].append(out32[:3])
        runs["selection"].append(out32[3])
        runs["fp16"].append(s16.run(contract, feeds))
        given = s16_given.run(contract + [name + "_own"], feeds | {name: out32[3]})
        runs["given"].append(given[:3])
        runs["own"].append(given[3])
    cat = {k: dict(zip(contract, (np.concatenate([r[i] for r in runs[k]]) for i in range(3))))
           for k in ("ref", "fp16", "given")}
    ref, fp16, given = cat["ref"], cat["fp16"], cat["given"]
    selection, own_selection = np.concatenate(runs["selection"]), np.concatenate(runs["own"])
    n = selection.shape[0]

    print(json.dumps({
        "images": n, "input": [h, w],
        "selection_slots_differing": int((own_selection != selection).sum()), "selection_slots": int(selection.size),
        "fp16_vs_fp32": compare_runs(per_image(ref), per_image(fp16)),
        "fp16_given_fp32_selection_vs_fp32": compare_runs(per_image(ref), per_image(given)),
    }, indent=2))


if __name__ == "__main__":
    main()
