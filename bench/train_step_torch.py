#!/usr/bin/env python3
"""PyTorch peer for bench/train_step.sh: one training step (forward, Hungarian loss, backward,
AdamW) of HF transformers' DeformableDetrForObjectDetection (two-stage, box refinement) with
the `tiny` (or `paper-r50`) preset's dimensions, on CPU with a fixed thread count or on CUDA
(bench/gpu_train.sh). Prints one JSON line.

Needs torch + transformers + scipy (tests/reference/requirements.txt); never run by CI.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (times then end in a sync)")
    ap.add_argument("--preset", choices=["tiny", "paper-r50"], default="tiny",
                    help="tiny (below) or paper-r50: ResNet-50, d 256, 8 heads, 6 + 6 layers, "
                         "FFN 2048, 900 queries, 5 levels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    # Same numerics as codetr's GPU runs: no TF32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # codetr `tiny`: ResNet-18 at width 32 (C3–C5) + 1 extra level, d 128, 4 heads, 4 points,
    # 2 + 3 layers, FFN 512, 100 queries, 10 classes.
    backbone = ResNetConfig(
        embedding_size=32,
        hidden_sizes=[32, 64, 128, 256],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    dims = dict(d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                num_feature_levels=4, two_stage_num_proposals=100, num_queries=100)
    if args.preset == "paper-r50":
        backbone = ResNetConfig(
            embedding_size=64,
            hidden_sizes=[256, 512, 1024, 2048],
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        dims = dict(d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                    num_feature_levels=5, two_stage_num_proposals=900, num_queries=900)
    cfg = DeformableDetrConfig(
        use_timm_backbone=False,
        backbone=None,
        backbone_config=backbone,
        use_pretrained_backbone=False,
        num_labels=10,
        encoder_n_points=4,
        decoder_n_points=4,
        **{k: v for k, v in dims.items() if k not in ('two_stage_num_proposals', 'num_queries')},
        two_stage=True,
        with_box_refine=True,
        two_stage_num_proposals=dims["two_stage_num_proposals"],
        num_queries=dims["num_queries"],
        dropout=0.0,
        disable_custom_kernels=True,
    )
    model = DeformableDetrForObjectDetection(cfg).train().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    labels = []
    for _ in range(args.batch):
        n = 9  # the synthetic set's mean objects per image
        c = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        labels.append({"class_labels": torch.randint(0, 10, (n,), generator=g).to(dev),
                       "boxes": torch.cat([c, wh], 1).to(dev)})
    x = x.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, losses = [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        out = model(pixel_values=x, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        losses.append(out.loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    steady = times[2:] if len(times) > 3 else times
    print(json.dumps({
        "impl": "hf-transformers DeformableDetr (torch %s)" % torch.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "preset": args.preset,
        "device": str(dev),
        "params": sum(p.numel() for p in model.parameters()),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
        "loss_first_last": [float(losses[0]), float(losses[-1])],
        "seconds_per_step": statistics.median(steady),
        "steps": times,
    }))


if __name__ == "__main__":
    main()
