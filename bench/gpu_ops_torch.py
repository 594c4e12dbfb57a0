"""PyTorch peer of `cargo bench -p codetr-core --bench gpu_ops`: the same ops at the same
sizes, forward + backward, one JSON object per line.

Ops (sizes of `paper-r50` at 800², batch 2, unless --small):
- conv_stem: 3×3 conv 64→64 on [2, 64, 200, 200] (ResNet stage 1);
- conv_neck: 3×3 conv 256→256 on [2, 256, 50, 50];
- ffn_matmul: [2·53294, 256] × [256, 2048] (encoder FFN);
- msda_encoder / msda_decoder: multi-scale deformable attention with PyTorch's own ops, as the
  official `ms_deform_attn_core_pytorch` does (grid_sample per level), value [2, 53294, 8, 32],
  queries 53294 (encoder) / 900 (decoder), 5 levels × 4 points.

Usage: python bench/gpu_ops_torch.py [--device cuda|cpu] [--small] [--reps N]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

PAPER_SHAPES = [(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)]
SMALL_SHAPES = [(32, 32), (16, 16), (8, 8), (4, 4)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, reps, fn):
    """Median seconds of `reps` runs after two warm-up runs."""
    fn()
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def msda(value, shapes, loc, att):
    """value [B, S, H, C], loc [B, Q, H, L, P, 2] in [0, 1], att [B, Q, H, L, P] → [B, Q, H·C]."""
    b, _, h, c = value.shape
    _, q, _, l, p, _ = loc.shape
    splits = value.split([hh * ww for hh, ww in shapes], dim=1)
    grids = 2 * loc - 1
    out = None
    for lvl, (hh, ww) in enumerate(shapes):
        v = splits[lvl].permute(0, 2, 3, 1).reshape(b * h, c, hh, ww)
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(b * h, q, p, 2)
        s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        w = att[:, :, :, lvl].permute(0, 2, 1, 3).reshape(b * h, 1, q, p)
        part = (s * w).sum(-1)  # [B·H, C, Q]
        out = part if out is None else out + part
    return out.reshape(b, h * c, q).transpose(1, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="small sizes (CPU rehearsal)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmul/conv (default off)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(0)
    small = args.small
    shapes = SMALL_SHAPES if small else PAPER_SHAPES
    s = sum(hh * ww for hh, ww in shapes)
    b = 2
    cases = {
        "conv_stem": (b, 64, 64, 40 if small else 200),
        "conv_neck": (b, 256, 256, 12 if small else 50),
    }
    rows = []
    for name, (n, cin, cout, hw) in cases.items():
        x = torch.randn(n, cin, hw, hw, device=dev, requires_grad=True)
        w = torch.randn(cout, cin, 3, 3, device=dev, requires_grad=True)

        def conv():
            y = F.conv2d(x, w, padding=1)
            y.sum().backward()

        rows.append({"op": name, "shape": [n, cin, hw, hw], "fwd_bwd_s": timed(dev, args.reps, conv)})
    m = b * s
    x = torch.randn(m, 256, device=dev, requires_grad=True)
    w = torch.randn(256, 2048, device=dev, requires_grad=True)

    def mm():
        (x @ w).sum().backward()

    rows.append({"op": "ffn_matmul", "shape": [m, 256, 2048], "fwd_bwd_s": timed(dev, args.reps, mm)})
    h, c, l, p = 8, 32, len(shapes), 4
    value = torch.randn(b, s, h, c, device=dev, requires_grad=True)
    for name, q in [("msda_encoder", s), ("msda_decoder", 900)]:
        loc = torch.rand(b, q, h, l, p, 2, device=dev, requires_grad=True)
        att = torch.rand(b, q, h, l, p, device=dev, requires_grad=True)

        def run():
            msda(value, shapes, loc, att).sum().backward()

        def fwd():
            with torch.no_grad():
                msda(value, shapes, loc, att)

        rows.append(
            {
                "op": name,
                "shape": [b, s, h, c, q, l, p],
                "fwd_s": timed(dev, args.reps, fwd),
                "fwd_bwd_s": timed(dev, args.reps, run),
            }
        )
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    for r in rows:
        r.update({"impl": "torch", "torch": torch.__version__, "device": str(dev), "tf32": args.tf32})
        print(json.dumps(r), flush=True)
    if peak is not None:
        print(json.dumps({"impl": "torch", "peak_gpu_bytes": peak}), flush=True)


if __name__ == "__main__":
    main()
