"""Turns one GPU run's results folder (bench/gpu_run.sh) into the Markdown tables of
docs/benchmarks.md and docs/gpu-smoke.md.

    python bench/report.py docs/results/h200-2026-11-28
"""

import json
import os
import sys

MODELS = ["hrnet", "cbam_resunet", "unet_spherohq"]
# docs/models.md: FLOPs per image over the measured fp16 matrix rate (767 TFLOP/s).
CEILING = {"hrnet": 1029, "cbam_resunet": 397, "unet_spherohq": 498}


def load(d, name):
    path = os.path.join(d, name)
    return json.load(open(path)) if os.path.exists(path) else None


def smoke(d):
    print("| image | model | OIP max abs logit diff | OIP mask IoU | segment-API mask IoU | polygons (sidecar / PyTorch count) | fp16 vs fp32 mask IoU |")
    print("|---|---|---|---|---|---|---|")
    for image in ("square", "spheroids"):
        for r in load(d, f"smoke-{image}.json") or []:
            print(f"| {r['image']} {r['image_size'][0]}×{r['image_size'][1]} | {r['model']} | {r['oip_max_abs_logit_diff']:.2g} | "
                  f"{r['oip_mask_iou']:.4f} | {r['segment_mask_iou']:.4f} | {r['segment_polygons']} / {r['pytorch_polygons']} | "
                  f"{r.get('fp16_vs_fp32_mask_iou', float('nan')):.4f} |")


def throughput(d):
    print("| model | (a) original: fp32 b1, lock | (b) seed: fp16, 8 streams, b1 | (c) best eager batching | gpupool engine, 8 clients | gpupool HTTP end to end, 8 clients | engine / (c) | HTTP / (a) | engine share of ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in MODELS:
        base = load(d, f"baselines-{m}.json") or []
        a = max((r["images_per_second"] for r in base if r["mode"] == "a"), default=0)
        b = max((r["images_per_second"] for r in base if r["mode"] == "b"), default=0)
        cs = [r for r in base if r["mode"] == "c"]
        c = max(cs, key=lambda r: r["images_per_second"]) if cs else None
        engine = load(d, f"engine-8-{m}.json") or {}
        http = (load(d, f"http-8-{m}.json") or [{}])[0]
        e = engine.get("images_per_second", 0)
        h = http.get("requests_per_second", 0)
        cval = c["images_per_second"] if c else 0
        print(f"| {m} | {a:.1f} | {b:.1f} | {cval:.1f} ({c['config'] if c else '-'}) | {e:.1f} (p50 {engine.get('p50_ms', 0):.0f} ms, p99 {engine.get('p99_ms', 0):.0f} ms) | "
              f"{h:.1f} (p50 {http.get('p50_ms', 0):.0f} ms, p99 {http.get('p99_ms', 0):.0f} ms) | {e / cval if cval else 0:.2f}× | {h / a if a else 0:.2f}× | {e / CEILING[m]:.0%} |")


def budget(d):
    r = load(d, "engine-budget22-mixed.json")
    if not r:
        return
    gib = 2**30
    print(f"- 8 clients split 4/2/2 (HRNet/CBAM-ResUNet/UNet), budget {r['budget_bytes'] / gib:.1f} GiB: "
          f"{r['images_per_second']:.1f} img/s in all ("
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["per_model_images_per_second"].items()))
          + f"), p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; allocator high-water mark "
          f"{r['peak_reserved_bytes'] / gib:.2f} GiB; out-of-memory events {r['oom_events']}; errors {r['errors']}.")


def batching(d):
    print("| run | model | images | batches | mean batch |")
    print("|---|---|---|---|---|")
    for name in ["telemetry-end.json"] + [f"engine-8-{m}.json" for m in MODELS] + ["engine-budget22-mixed.json"]:
        r = load(d, name)
        if not r:
            continue
        for m in r["models"]:
            if m["imagesTotal"]:
                print(f"| {name.removesuffix('.json')} | {m['name']} | {m['imagesTotal']} | {m['batchesTotal']} | {m['imagesTotal'] / max(1, m['batchesTotal']):.2f} |")


if __name__ == "__main__":
    d = sys.argv[1]
    print("### Smoke: sidecar vs PyTorch\n")
    smoke(d)
    print("\n### Throughput, 1024×1024, 8 closed-loop clients\n")
    throughput(d)
    print("\n### Budget mode\n")
    budget(d)
    print("\n### Batches formed\n")
    batching(d)
