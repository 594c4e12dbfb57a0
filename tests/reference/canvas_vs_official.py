#!/usr/bin/env python3
"""A letterbox graph against the official Co-DINO on padded batches whose canvas is not square
and not a multiple of the strides, and the official model's own padded-vs-alone difference.

The exporter's parity tests pad into a 128² canvas only. Here the official model (mmdetection
3.3.0, the small fixture `core/tests/fixtures/official/co_dino_small.pth`, no
`pad_size_divisor`: the batch's canvas is its largest image) runs two images of one batch, one
filling the canvas and one smaller; the graph (`codetr-export --dynamic-size --resize
letterbox` of the same checkpoint) runs the same canvas with the same valid sizes. Printed per
case: the largest score difference (rank by rank) and box difference in pixels (partner: the
same label, a score within 1e-4). Also the official model's padded answer against each image
run alone. That difference is what batching costs against the official single-image test. With
these random weights it only measures how far the answers move, not accuracy.

    codetr-export --checkpoint core/tests/fixtures/official/co_dino_small.pth \\
        --model-config core/tests/fixtures/official/co_dino_small.toml \\
        --dynamic-size --resize letterbox --out /tmp/small_lb.onnx
    MMDET_SRC=/path/to/mmdetection $REF_PY tests/reference/canvas_vs_official.py /tmp/small_lb.onnx

Environment: make_official_fixtures.py's, plus `pip install onnxruntime`.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_official_fixtures as F  # noqa: E402

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "core/tests/fixtures/official/co_dino_small.pth"
CASES = [
    [(96, 160), (70, 160)],
    [(100, 150), (77, 150)],
    [(160, 96), (160, 70)],
    [(150, 100), (150, 77)],
    [(200, 120), (133, 120)],
    [(128, 128), (96, 112)],
]


def official(model, imgs):
    """The official inference of one batch of RGB images: (canvas, [(scores, labels, boxes)])."""
    from mmdet.structures import DetDataSample

    inputs, samples = [], []
    for img in imgs:
        h, w = img.shape[:2]
        inputs.append(torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1).contiguous())
        samples.append(DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                                   scale_factor=(1.0, 1.0))))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), False)
        res = model.predict(data["inputs"], data["data_samples"], rescale=True)
    out = [(r.pred_instances.scores.numpy(), r.pred_instances.labels.numpy(),
            r.pred_instances.bboxes.numpy()) for r in res]
    return tuple(data["inputs"].shape[-2:]), out


def graph(sess, imgs, canvas):
    """The graph on the images top-left in a zero canvas, with their valid sizes."""
    h, w = canvas
    batch = np.zeros((len(imgs), h, w, 3), np.uint8)
    for i, img in enumerate(imgs):
        batch[i, :img.shape[0], :img.shape[1]] = img
    sizes = np.array([img.shape[:2] for img in imgs], np.int64)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, {"images": batch, "orig_sizes": sizes,
                                          "valid_sizes": sizes})))
    return [(out["scores"][i], out["labels"][i], out["boxes"][i]) for i in range(len(imgs))]


def compare(a, b, k=30):
    """Largest score difference (rank by rank) and box difference (px) over the top-k."""
    ws, wb = 0.0, 0.0
    for (s1, l1, b1), (s2, l2, b2) in zip(a, b):
        n = min(k, len(s1), len(s2))
        ws = max(ws, float(np.abs(np.sort(s1)[::-1][:n] - np.sort(s2)[::-1][:n]).max()))
        for i in range(n):
            c = np.where((l2 == l1[i]) & (np.abs(s2 - s1[i]) <= 1e-4))[0]
            wb = max(wb, float(np.abs(b2[c] - b1[i]).max(axis=1).min()) if len(c) else np.inf)
    return ws, wb


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    import onnxruntime as ort

    model = F.build_small()
    ck = torch.load(FIXTURE, map_location="cpu", weights_only=False)
    model.load_state_dict(ck.get("state_dict", ck), strict=True)
    model.eval()
    sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for sizes in CASES:
        imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
        canvas, off = official(model, imgs)
        g = graph(sess, imgs, canvas)
        alone = [official(model, [im])[1][0] for im in imgs]
        gs, gb = compare(off, g)
        # the smaller image only: the full one is not padded
        ps, pb = compare(off[1:], alone[1:])
        print(f"images {sizes[0][0]}x{sizes[0][1]} + {sizes[1][0]}x{sizes[1][1]}, canvas "
              f"{canvas[0]}x{canvas[1]}: official vs graph scores {gs:.2e}, boxes {gb:.2e} px"
              f" | official padded vs alone (the smaller image): scores {ps:.2e}, boxes "
              f"{pb:.2e} px")


if __name__ == "__main__":
    main()
