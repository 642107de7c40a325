"""Reference segmentation of one image with an exported TorchScript model (models.md pre/post-processing).

    python tests/models/reference.py --model-file unet.pt --image cells.tif --out-mask mask.png \\
        [--out-json mask.json] [--out-probs probs.npy] [--size 1024] [--threshold 0.5] [--device cuda]

Pre: decode with Pillow, convert to RGB (as the original service did, so 16-bit TIFFs are clipped the
same way), resize to size×size ignoring aspect ratio, /255, normalise with ImageNet mean/std.
Post: sigmoid, resize the probabilities back to the original width×height, foreground = prob > threshold.

Both resizes are torch's bilinear interpolation with align_corners=False and antialias=True: Pillow's
bilinear filter (plain bilinear when enlarging, a widened triangle filter when shrinking), without
Pillow's rounding to 8 bits, and exactly the libtorch kernel the sidecar's engine runs
(upsample_bilinear2d_aa), so a mask computed here and one the sidecar returns agree.

Writes the mask as an 8-bit PNG (0 / 255) and a JSON summary with the foreground pixel count.
--out-probs saves the float32 probabilities (original size) for tolerance-based comparisons, which are
more robust than pixel counts: pixels near the threshold may flip between implementations.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 1024


def preprocess(image: Image.Image, size: int, device: str = "cpu") -> torch.Tensor:
    """(1, 3, size, size) float32 model input from a decoded image, computed on `device`.

    The operations and their order are the sidecar engine's (crates/executor/src/image.rs), so on
    the same device both give the same bits; float rounding differs between a CPU and a GPU.
    """
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).to(device)
    x = rgb.permute(2, 0, 1).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True) / 255.0
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (MEAN, STD))
    return (x - mean) / std


def postprocess(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(height, width) float32 foreground probabilities from (1, 1, s, s) logits."""
    probs = torch.sigmoid(logits.float())
    return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def load_model(path: str, device: str) -> tuple[torch.jit.ScriptModule, dict]:
    """The module and the export settings export.py stored in it ({} for other TorchScript files)."""
    extra = {"gpupool.json": ""}
    module = torch.jit.load(path, map_location=device, _extra_files=extra)
    return module.eval(), json.loads(extra["gpupool.json"] or "{}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-file", required=True, help="TorchScript file (export.py --format torchscript)")
    p.add_argument("--image", required=True, help="PNG, JPEG or TIFF")
    p.add_argument("--out-mask", required=True, help="mask PNG to write")
    p.add_argument("--out-json", help="summary JSON to write (default: the mask path with .json)")
    p.add_argument("--out-probs", help="also write the probabilities as a float32 .npy")
    p.add_argument("--size", type=int, help="model input size (default: from the file's export settings, else 1024)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if not 0.0 < args.threshold < 1.0:
        p.error("--threshold must be between 0 and 1")

    model, meta = load_model(args.model_file, args.device)
    size = args.size or meta.get("size", DEFAULT_SIZE)
    image = Image.open(args.image)
    width, height = image.size
    x = preprocess(image, size, args.device)

    start = time.perf_counter()
    with torch.no_grad():
        logits = model(x)  # export.py files take and return float32 whatever their precision
    if x.is_cuda:
        torch.cuda.synchronize()
    inference_s = time.perf_counter() - start

    probs = postprocess(logits, height, width).cpu()
    mask = probs > args.threshold
    Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(args.out_mask)
    if args.out_probs:
        np.save(args.out_probs, probs.numpy())

    foreground = int(mask.sum())
    summary = {
        "image": args.image,
        "model_file": args.model_file,
        "model": meta.get("name"),
        "precision": meta.get("precision"),
        "size": size,
        "width": width,
        "height": height,
        "threshold": args.threshold,
        "foreground_pixels": foreground,
        "foreground_fraction": round(foreground / (width * height), 6),
        "prob_min": float(probs.min()),
        "prob_max": float(probs.max()),
        "prob_mean": float(probs.mean()),
        "device": args.device,
        "inference_s": round(inference_s, 4),  # first call: includes warm-up, not a benchmark
        "mask": args.out_mask,
    }
    out_json = args.out_json or os.path.splitext(args.out_mask)[0] + ".json"
    with open(out_json, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
