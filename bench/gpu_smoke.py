"""GPU smoke check of the sidecar against PyTorch, on the same TorchScript files and the same image.

    python bench/gpu_smoke.py --url http://127.0.0.1:8080 --models-dir DIR --image IMG \
        --precision fp16 --models hrnet,cbam_resunet,unet_spherohq --out smoke.json

Per model:
  - OIP path: the image pre-processed in Python (models.md) is sent to /v2/models/{m}/infer; the
    logits are compared with the TorchScript module run by PyTorch on the same tensor (max |diff|,
    mask IoU at threshold 0.5).
  - Segment path: the image file is sent to /api/v1/segment; the polygons are rasterised (externals
    filled, holes cleared) and compared with the PyTorch mask (sigmoid, bilinear resize back,
    threshold 0.5): IoU and polygon counts (PyTorch side: 8-connected objects and their holes with at
    least 50 pixels, the service's area rule).
  - fp16-vs-fp32 agreement: PyTorch masks of the fp16 and fp32 files (IoU), when both exist.
Exits non-zero if an IoU is below --min-iou.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import urllib.request
import uuid

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def preprocess(img: Image.Image, size: int) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
    # PIL-style bilinear (antialiased when shrinking), as the sidecar resizes.
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - MEAN) / STD


def torch_logits(path: str, x: torch.Tensor) -> torch.Tensor:
    module = torch.jit.load(path, map_location="cuda").eval()
    with torch.no_grad():
        return module(x.cuda()).float().cpu()


def mask_from_logits(logits: torch.Tensor, width: int, height: int) -> np.ndarray:
    probs = torch.sigmoid(logits)
    probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return (probs[0, 0] > 0.5).numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def post(url: str, body: bytes, content_type: str) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def segment(url: str, image_bytes: bytes, model: str) -> dict:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="img"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode() + image_bytes + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return post(f"{url}/api/v1/segment", b"".join(parts), f"multipart/form-data; boundary={boundary}")


def rasterise(polygons: list[dict], width: int, height: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for p in sorted(polygons, key=lambda p: p["type"] == "internal"):
        pts = [(q["x"], q["y"]) for q in p["points"]]
        if len(pts) >= 2:
            draw.polygon(pts, fill=0 if p["type"] == "internal" else 1, outline=0 if p["type"] == "internal" else 1)
    return np.asarray(canvas, dtype=bool)


def count_polygons(mask: np.ndarray) -> int:
    objects, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = ndimage.sum(mask, objects, range(1, n + 1))
    count = int((np.asarray(sizes) >= 50).sum())
    holes, m = ndimage.label(~mask)
    border = set(np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])))
    hole_sizes = ndimage.sum(~mask, holes, range(1, m + 1))
    count += sum(1 for i, s in enumerate(hole_sizes, start=1) if i not in border and s >= 50)
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--models", default="hrnet,cbam_resunet,unet_spherohq")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--min-iou", type=float, default=0.999)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    image_bytes = open(args.image, "rb").read()
    img = Image.open(io.BytesIO(image_bytes))
    width, height = img.size
    x = preprocess(img, args.size)
    results, failed = [], False
    for model in args.models.split(","):
        path = os.path.join(args.models_dir, f"{model}.{args.precision}.pt")
        ref = torch_logits(path, x)
        oip = post(
            f"{args.url}/v2/models/{model}/infer",
            json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}).encode(),
            "application/json",
        )
        got = torch.tensor(oip["outputs"][0]["data"]).view_as(ref)
        seg = segment(args.url, image_bytes, model)
        ref_mask = mask_from_logits(ref, width, height)
        http_mask = rasterise(seg["polygons"], width, height)
        r = {
            "model": model,
            "precision": args.precision,
            "image": os.path.basename(args.image),
            "image_size": [width, height],
            "oip_max_abs_logit_diff": float((got - ref).abs().max()),
            "oip_mask_iou": iou((got > 0).numpy(), (ref > 0).numpy()),
            "segment_mask_iou": iou(http_mask, ref_mask),
            "segment_polygons": len(seg["polygons"]),
            "pytorch_polygons": count_polygons(ref_mask),
            "batch_size_used": seg.get("batch_size_used"),
            "inference_time": seg.get("inference_time"),
            "gpu_enabled": seg.get("gpu_enabled"),
        }
        other = os.path.join(args.models_dir, f"{model}.fp32.pt")
        if args.precision != "fp32" and os.path.exists(other):
            r["fp16_vs_fp32_mask_iou"] = iou(ref_mask, mask_from_logits(torch_logits(other, x), width, height))
        failed |= r["oip_mask_iou"] < args.min_iou
        print(json.dumps(r), flush=True)
        results.append(r)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
