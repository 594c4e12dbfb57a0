#!/usr/bin/env python3
"""Pillow's decode (+ EXIF transpose, RGB) and bilinear resize of the same JPEGs the server's
preprocessing bench uses (server/benches/preprocess.rs), timed the same way.

    python bench/preprocess_pillow.py --images DIR --size 256 [--rounds 5] [--json out.json]
"""
import argparse
import io
import json
import time
from pathlib import Path

from PIL import Image, ImageOps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    data = [p.read_bytes() for p in sorted(Path(a.images).glob("*.jpg"))]
    t_dec = t_res = 0.0
    n = 0
    dims = None
    for r in range(a.rounds + 1):
        for b in data:
            t0 = time.perf_counter()
            img = ImageOps.exif_transpose(Image.open(io.BytesIO(b))).convert("RGB")
            img.load()
            t1 = time.perf_counter()
            out = img.resize((a.size, a.size), Image.BILINEAR).tobytes()
            t2 = time.perf_counter()
            dims = img.size
            if r > 0:
                t_dec += t1 - t0
                t_res += t2 - t1
                n += 1
            del out
    rep = {"impl": f"Pillow {Image.__version__}", "images": len(data), "size": dims, "out": a.size,
           "samples": n, "decode_ms": 1e3 * t_dec / n, "resize_ms": 1e3 * t_res / n,
           "total_ms": 1e3 * (t_dec + t_res) / n}
    print(json.dumps(rep))
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=2))


if __name__ == "__main__":
    main()
