"""GPU smoke check of the sidecar against PyTorch, on the same TorchScript files and the same image.

    python bench/gpu_smoke.py --url http://127.0.0.1:8080 --models-dir DIR --image IMG \
        --precision fp16 --models hrnet,cbam_resunet,unet_spherohq --out smoke.json

PyTorch's side is tests/models/reference.py (models.md's pre- and post-processing, on the GPU). Per model:
  - OIP path: the image pre-processed in Python is sent to /v2/models/{m}/infer; the logits are
    compared with the TorchScript module run by PyTorch on the same tensor (max |diff|, mask IoU).
  - Segment path: the image file is sent to /api/v1/segment with return_mask=true and min_area=0;
    the returned mask (the sidecar's own decode, resize, model, sigmoid, resize back, threshold) is
    compared with PyTorch's (IoU), and the polygon count with the count the service's contour
    rules give on PyTorch's mask: every 8-connected object except those whose outline has fewer
    than 3 corners (single pixels and straight one-pixel lines), plus every hole (4-connected
    background not reaching the border). min_area=0 because the area rule (shoelace over the
    traced outline, as OpenCV's contourArea) has no closed form on a pixel mask.
    With the default min_area=50 the count is reported too, for information.
  - fp16-vs-fp32 agreement: PyTorch masks of the fp16 and fp32 files (IoU), when both exist.
Exits non-zero if an IoU is below --min-iou or a polygon count differs.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import urllib.request
import uuid

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "models"))
from reference import load_model, postprocess, preprocess  # noqa: E402


def torch_logits(path: str, x: torch.Tensor, device: str) -> torch.Tensor:
    """The module's float32 logits for `x`, left on `device` for the post-processing."""
    module, _ = load_model(path, device)
    with torch.no_grad():
        return module(x.to(device)).float()


def torch_mask(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """PyTorch's mask, post-processed where the logits are (the sidecar does it on its device)."""
    return (postprocess(logits, height, width) > 0.5).cpu().numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def post(url: str, body: bytes, content_type: str) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def segment(url: str, image_bytes: bytes, fields: dict[str, str]) -> dict:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="img"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode() + image_bytes + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return post(f"{url}/api/v1/segment", b"".join(parts), f"multipart/form-data; boundary={boundary}")


def straight_line(xs: np.ndarray, ys: np.ndarray) -> bool:
    """An 8-connected object on one row, column or diagonal: its outline compresses to ≤ 2 points."""
    return any(len(np.unique(v)) == 1 for v in (xs, ys, xs - ys, xs + ys))


def count_polygons(mask: np.ndarray) -> int:
    """Polygons the service reports for `mask` with detect_holes=true and min_area=0."""
    objects, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    count = 0
    for label, box in enumerate(ndimage.find_objects(objects), start=1):
        ys, xs = np.nonzero(objects[box] == label)
        count += not straight_line(xs, ys)
    holes, m = ndimage.label(~mask)  # 4-connected background
    border = set(np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))) - {0}
    return count + m - len(border)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--models", default="hrnet,cbam_resunet,unet_spherohq")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--device", default="cuda", help="where PyTorch runs the reference (cpu to try it without a GPU)")
    ap.add_argument("--min-iou", type=float, default=0.999)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    image_bytes = open(args.image, "rb").read()
    img = Image.open(io.BytesIO(image_bytes))
    width, height = img.size
    # Pre- and post-processing run on the device the sidecar uses, in the sidecar's order: on the
    # same device the two agree to the bit (a CPU and a GPU round differently, which random-weight
    # fp16 models, HRNet above all, amplify: see fp16_vs_fp32_mask_iou).
    x = preprocess(img, args.size, args.device)
    results, failed = [], False
    for model in args.models.split(","):
        path = os.path.join(args.models_dir, f"{model}.{args.precision}.pt")
        ref = torch_logits(path, x, args.device)
        oip = post(
            f"{args.url}/v2/models/{model}/infer",
            json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.cpu().flatten().tolist()}]}).encode(),
            "application/json",
        )
        got = torch.tensor(oip["outputs"][0]["data"]).view_as(ref)
        ref_mask = torch_mask(ref, height, width)
        ref = ref.cpu()
        seg = segment(args.url, image_bytes, {"model": model, "return_mask": "true", "min_area": "0"})
        seg_mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(seg["mask_png"])))) == 255
        default = segment(args.url, image_bytes, {"model": model})
        r = {
            "model": model,
            "precision": args.precision,
            "image": os.path.basename(args.image),
            "image_size": [width, height],
            "oip_max_abs_logit_diff": float((got - ref).abs().max()),
            "oip_mask_iou": iou((got > 0).numpy(), (ref > 0).numpy()),
            "segment_mask_iou": iou(seg_mask, ref_mask),
            "foreground_fraction": float(ref_mask.mean()),
            "segment_polygons": len(seg["polygons"]),
            "pytorch_polygons": count_polygons(ref_mask),
            "segment_polygons_min_area_50": len(default["polygons"]),
            "batch_size_used": seg.get("batch_size_used"),
            "inference_time": seg.get("inference_time"),
            "postprocessing_time": seg.get("postprocessing_time"),
            "gpu_enabled": seg.get("gpu_enabled"),
        }
        other = os.path.join(args.models_dir, f"{model}.fp32.pt")
        if args.precision != "fp32" and os.path.exists(other):
            fp32_mask = torch_mask(torch_logits(other, x, args.device), height, width)
            r["fp16_vs_fp32_mask_iou"] = iou(ref_mask, fp32_mask)
        failed |= min(r["oip_mask_iou"], r["segment_mask_iou"]) < args.min_iou
        failed |= r["segment_polygons"] != r["pytorch_polygons"]
        print(json.dumps(r), flush=True)
        results.append(r)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
