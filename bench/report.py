"""Turns a GPU session's results (bench/gpu_run.sh) into the Markdown tables of
docs/benchmarks.md and docs/gpu-smoke.md.

    python bench/report.py docs/results/h200-2026-11-28      one call's folder (first session)
    python bench/report.py docs/results/h200-2026-11-28b     a session of several calls: one
                                                             subfolder per call (compiled,
                                                             baselines, final)
"""

import glob
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


def baseline_rows(root):
    """Per model: every baseline configuration measured in any call of the session."""
    rows = {}
    for _, r in records(root, "baselines-*.json"):
        rows.setdefault(r["model"], []).append(r)
    return rows


def best(rows, mode, contains=""):
    cands = [r for r in rows if r["mode"] == mode and contains in r["config"]]
    return max(cands, key=lambda r: r["images_per_second"]) if cands else None


def fmt(r, label=True):
    if not r:
        return "–"
    return f"{r['images_per_second']:.1f}" + (f" ({r['config']})" if label else "")


def baselines_v2(root):
    print("| model | (a) original: fp32 b1, lock | (b) seed: fp16, 8 streams | (c) best eager batching | (d) torch.compile, batch 8 | (d) torch.compile, batch 16 (recompiled dynamic) |")
    print("|---|---|---|---|---|---|")
    for m, rows in baseline_rows(root).items():
        print(f"| {m} | {fmt(best(rows, 'a'), False)} | {fmt(best(rows, 'b'), False)} | {fmt(best(rows, 'c'))} | "
              f"{fmt(best(rows, 'd', 'batch 8'), False)} | {fmt(best(rows, 'd', 'batch 16'), False)} |")


def profiles(root):
    print("| model | file | batch: ms per batch (img/s) |")
    print("|---|---|---|")
    for path, r in reports(root, "engine-*.json"):
        for m in r["models"]:
            if not m.get("profile"):
                continue
            pts = ", ".join(f"{p['batchSize']}: {p['latencyMs']:.1f} ({p['batchSize'] * 1000 / p['latencyMs']:.0f})" for p in m["profile"])
            print(f"| {m['name']} | {os.path.relpath(path, root)} | {pts} |")


def curves(root):
    print("| run | model(s) | clients | img/s | p50 ms | p99 ms | p99/p50 | mean batch | OOM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, r in reports(root, "engine-*.json"):
        for run in r["runs"]:
            models = run.get("models") or sorted(run["batches"])
            label = "+".join(dict.fromkeys(models)) if len(set(models)) > 1 else models[0]
            per = run.get("per_model_images_per_second", {})
            if len(per) > 1:
                label += " (" + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items())) + " img/s)"
            used = [b for b in run["batches"].values() if b["images"]]
            mean = sum(b["images"] for b in used) / max(1, sum(b["batches"] for b in used))
            print(f"| {os.path.relpath(path, root)} | {label} | {run['clients']} | {run['images_per_second']:.1f} | {run['p50_ms']:.0f} | "
                  f"{run['p99_ms']:.0f} | {run['p99_ms'] / max(run['p50_ms'], 1e-9):.1f} | {mean:.2f} | {run['oom_events']} |")
        print(f"| {os.path.relpath(path, root)} | allocator high-water mark {r['peak_reserved_bytes'] / 2**30:.2f} GiB of a {r['budget_bytes'] / 2**30:.1f} GiB budget; start-up {r['startup_seconds']:.0f} s; input {r.get('input', 'tensor')} | | | | | | | |")


def reports(root, pattern):
    """(path, parsed JSON) for every call's files matching `pattern`."""
    for path in sorted(glob.glob(os.path.join(root, "*", pattern))):
        yield path, json.load(open(path))


def records(root, pattern):
    """(path, record) for every record of the list files matching `pattern`."""
    for path, rs in reports(root, pattern):
        for r in rs:
            yield path, r


def http_v2(root):
    print("| run | model | clients | req/s | p50 ms | p99 ms | statuses | server p50 ms: decode / engine / polygons (mean batch) |")
    print("|---|---|---|---|---|---|---|---|")
    for path, r in records(root, "http-*.json"):
        run = os.path.relpath(path, root)
        per = r.get("ok_per_model", {})
        name = next(iter(per)) if len(per) == 1 else "mixed"
        detail = ", ".join(f"{k} {v / r['seconds']:.1f}/s" for k, v in sorted(per.items())) if len(per) > 1 else ""
        s = r.get("server")  # loadgen reports it since the second session
        stages = f"{s['decode_p50_ms']:.0f} / {s['engine_p50_ms']:.0f} / {s['polygons_p50_ms']:.0f} ({s['mean_batch']:.1f})" if s else "–"
        print(f"| {run} | {name} {detail} | {r['clients']} | {r['requests_per_second']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['status_counts']} | {stages} |")


def smoke_v2(root):
    print("| image | model | OIP max abs logit diff | OIP mask IoU | segment mask IoU | polygons: sidecar / PyTorch mask by the same rules (min_area 0) | polygons at min_area 50 | fp16 vs fp32 mask IoU |")
    print("|---|---|---|---|---|---|---|---|")
    for _, r in records(root, "smoke-*.json"):
        print(f"| {r['image']} {r['image_size'][0]}×{r['image_size'][1]} | {r['model']} | {r['oip_max_abs_logit_diff']:.2g} | "
              f"{r['oip_mask_iou']:.5f} | {r['segment_mask_iou']:.5f} | {r['segment_polygons']} / {r['pytorch_polygons']} | "
              f"{r['segment_polygons_min_area_50']} | {r.get('fp16_vs_fp32_mask_iou', float('nan')):.4f} |")


def session(root):
    print("### Smoke: sidecar vs PyTorch\n")
    smoke_v2(root)
    print("\n### Python baselines (same TorchScript files)\n")
    baselines_v2(root)
    print("\n### Calibrated profiles (engine, start-up measurement on this GPU)\n")
    profiles(root)
    print("\n### Engine alone, closed loop\n")
    curves(root)
    print("\n### HTTP end to end, closed loop (1280×960 PNG → polygons)\n")
    http_v2(root)


if __name__ == "__main__":
    d = sys.argv[1]
    if glob.glob(os.path.join(d, "*", "gpu.txt")):
        session(d)
        sys.exit(0)
    print("### Smoke: sidecar vs PyTorch\n")
    smoke(d)
    print("\n### Throughput, 1024×1024, 8 closed-loop clients\n")
    throughput(d)
    print("\n### Budget mode\n")
    budget(d)
    print("\n### Batches formed\n")
    batching(d)
