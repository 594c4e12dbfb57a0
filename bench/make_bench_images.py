#!/usr/bin/env python3
"""Deterministic benchmark images (Pillow only): N photo-like JPEGs (smooth colour field,
sensor-like noise, filled shapes) at each requested size, quality 90.

    python bench/make_bench_images.py OUT_DIR WIDTHxHEIGHT [N]
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    out, size = Path(sys.argv[1]), sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    w, h = (int(v) for v in size.lower().split("x"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234 + w)
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([
            128 + 90 * np.sin(xx / w * (3 + i) + c) * np.cos(yy / h * (2 + c)) for c in range(3)
        ], axis=-1)
        base += rng.normal(0, 12, size=base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = rng.integers(0, w - w // 6), rng.integers(0, h - h // 6)
            s = int(rng.integers(min(w, h) // 20, min(w, h) // 6))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                d.ellipse([x0, y0, x0 + s, y0 + s], fill=colour)
            else:
                d.rectangle([x0, y0, x0 + s, y0 + s], fill=colour)
        img.save(out / f"{i:03d}.jpg", quality=90)


if __name__ == "__main__":
    main()
