#!/usr/bin/env python3
"""An exported graph against the official Co-DINO model, at full size, on one image.

`codetr-export --check` compares the graph with our Burn model. This script compares it with the
official one instead (mmdetection 3.3.0 `projects/CO-DETR`, the config of the checkpoint's
backbone, soft-NMS removed as in make_official_fixtures.py): the official model and ONNX Runtime
run the same uint8 image (random, seeded), and the top-k scores (rank by rank), labels and boxes
are compared. Meant for a real checkpoint before serving it, or for a full-size checkpoint with
random weights (make_official_fixtures.py --full / --full-swin).

    MMDET_SRC=/path/to/mmdetection REF_PY=... $REF_PY tests/reference/compare_graph_with_official.py \\
        --checkpoint co_dino_5scale_r50_1x_coco.pth --onnx co_dino_r50.onnx --size 800

The graph must be a stretch graph at `--size` (export with `--model-config` giving
`input_size`), or a dynamic-size one. Needs torch, mmengine, mmcv-lite, mmdet 3.3.0 and
onnxruntime (the environment of make_official_fixtures.py plus `pip install onnxruntime`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_official_fixtures as F  # noqa: E402


def official_model(pth: str, k: int):
    """The official model of the checkpoint's backbone, with its weights, top-k without NMS."""
    src = os.environ.get("MMDET_SRC")
    if not src:
        sys.exit("set MMDET_SRC to a checkout of mmdetection v3.3.0 (with projects/CO-DETR)")
    F.install_shims()
    sys.path.insert(0, src)
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    MMLogger.get_current_instance().setLevel(logging.WARNING)
    init_default_scope("mmdet")
    from mmdet.registry import MODELS

    ck = torch.load(pth, map_location="cpu", weights_only=False)
    sd = ck.get("state_dict", ck)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    swin = any(k.startswith("backbone.patch_embed.") for k in sd)
    name = ("co_dino_5scale_swin_l_16xb1_1x_coco.py" if swin
            else "co_dino_5scale_r50_8xb2_1x_coco.py")
    cfg = Config.fromfile(os.path.join(src, "projects/CO-DETR/configs/codino", name))
    importlib.import_module("projects.CO-DETR.codetr")
    m = cfg.model
    m.backbone.init_cfg = None
    m.test_cfg[0] = dict(max_per_img=k)
    classes = sd["query_head.cls_branches.0.weight"].shape[0]
    m.query_head.num_classes = classes
    for h in m.bbox_head:
        h.num_classes = classes
    for r in m.roi_head:
        r.bbox_head.num_classes = classes
    model = MODELS.build(m)
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="official .pth")
    ap.add_argument("--onnx", required=True, help="codetr-export's graph of it")
    ap.add_argument("--size", type=int, default=800, help="square input side")
    ap.add_argument("--topk", type=int, default=100, help="the graph's max_detections")
    ap.add_argument("--seed", type=int, default=3, help="seed of the random image")
    a = ap.parse_args()
    import onnxruntime as ort

    model = official_model(a.checkpoint, a.topk)
    px = np.random.default_rng(a.seed).integers(0, 256, (1, a.size, a.size, 3), dtype=np.uint8)
    s, labels, boxes = F.run(model, px, [(a.size, a.size)], a.size)
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    feed = {"images": px, "orig_sizes": np.array([[a.size, a.size]], dtype=np.int64)}
    names = [i.name for i in sess.get_inputs()]
    if "valid_sizes" in names:
        feed["valid_sizes"] = feed["orig_sizes"].copy()
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    k = min(s.shape[1], out["scores"].shape[1])
    gs, gl, gb = out["scores"][0, :k], out["labels"][0, :k], out["boxes"][0, :k]
    score_diff = float(np.abs(np.sort(s[0])[::-1][:k] - np.sort(gs)[::-1][:k]).max())
    # Each official detection's partner: a graph detection of the same label whose score is
    # within `tol`, the closest box among them (near-equal scores may rank in either order).
    tol = 1e-4
    box_diff, unmatched = 0.0, 0
    for i in range(k):
        cand = np.where((gl == labels[0, i]) & (np.abs(gs - s[0, i]) <= tol))[0]
        if len(cand) == 0:
            unmatched += 1
            continue
        d = np.abs(gb[cand] - boxes[0, i]).max(axis=1).min() / a.size
        box_diff = max(box_diff, float(d))
    print(f"official vs graph, top-{k} at {a.size}²: scores {score_diff:.2e} (rank by rank), "
          f"boxes/side {box_diff:.2e} (partner: same label, score within {tol}), "
          f"{unmatched} without a partner; smallest official score gap "
          f"{F.min_gap(s[:, :k]):.1e}")


if __name__ == "__main__":
    main()
