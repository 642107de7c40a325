"""Writes a deterministic microscope-like test image: dark, slightly noisy background with bright
spheroids (some with a dark core), as PNG (8-bit RGB) and TIFF (16-bit grayscale).

    python bench/make_image.py OUT_PREFIX [--width 1280 --height 960]
"""

import argparse

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefix")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=960)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    h, w = args.height, args.width
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.08 + 0.02 * rng.standard_normal((h, w))
    for _ in range(12):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        r = rng.uniform(0.03, 0.09) * min(h, w)
        d = np.hypot(yy - cy, xx - cx)
        img += 0.7 * np.clip((r - d) / 4.0, 0, 1)
        if rng.uniform() < 0.3:
            img -= 0.5 * np.clip((0.35 * r - d) / 3.0, 0, 1)
    img = np.clip(img, 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).convert("RGB").save(f"{args.prefix}.png")
    Image.fromarray((img * 65535).astype(np.uint16)).save(f"{args.prefix}.tiff")


if __name__ == "__main__":
    main()
