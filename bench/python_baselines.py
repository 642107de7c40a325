"""Python/PyTorch baselines for one model, measured on the same TorchScript files the sidecar runs.

    python bench/python_baselines.py --model unet_spherohq --models-dir DIR --modes a,b,c,d --out FILE

Modes (docs/benchmarks.md explains each):
  a  the original service's way: fp32, batch 1, 8 client threads behind one model lock
  b  the seed's proposal: fp16 weights, 8 threads each on its own CUDA stream, batch 1, no lock
  c  the best eager batching: fp16 / bf16 weights, autocast fp16, fp32, at batch 8 and 16
  d  torch.compile (default mode) of the eager model, fp16 weights, batch 8 and 16 (--d-batches:
     each further batch size makes torch.compile recompile with a dynamic batch dimension, which
     costs HRNet about two minutes on the H200)
Expects DIR/<model>.<precision>.pt for fp32, fp16 and bf16 (tests/models/export.py --all writes
<model>.pt; bench/gpu_run.sh names them by precision). Inputs are random normalised tensors already
on the GPU: these are model-throughput baselines, without decode or post-processing.
Each worker thread is warmed up before timing (cuDNN handles and autotuning are per thread).
Prints one JSON object per configuration and writes them all to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "models"))
import spheroid  # noqa: E402

torch.backends.cudnn.benchmark = True
DEV = "cuda"


def load(models_dir: str, model: str, precision: str):
    path = os.path.join(models_dir, f"{model}.{precision}.pt")
    module = torch.jit.load(path, map_location=DEV).eval()
    return module


def percentile(values, q):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def closed_loop(fn_per_thread, threads: int, seconds: float, warmup: int = 3):
    """Runs `threads` closed-loop workers for `seconds`; each call of fn() answers one image."""
    latencies: list[float] = []
    lock = threading.Lock()
    start_barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(i):
        fn = fn_per_thread(i)
        for _ in range(warmup):
            fn()
        start_barrier.wait()
        local = []
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            fn()
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    start_barrier.wait()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t_start
    return {
        "images_per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "images": len(latencies),
    }


def mode_a(args, size):
    module = load(args.models_dir, args.model, "fp32")
    model_lock = threading.Lock()

    def make(i):
        x = torch.randn(1, 3, size, size, device=DEV)

        def run():
            with model_lock, torch.no_grad():
                module(x)
                torch.cuda.synchronize()

        return run

    return [dict(mode="a", config="fp32 batch 1, 8 users behind one lock", **closed_loop(make, 8, args.seconds))]


def mode_b(args, size):
    module = load(args.models_dir, args.model, "fp16")

    def make(i):
        stream = torch.cuda.Stream()
        x = torch.randn(1, 3, size, size, device=DEV)

        def run():
            with torch.cuda.stream(stream), torch.no_grad():
                module(x)
            stream.synchronize()

        return run

    return [dict(mode="b", config="fp16 weights, 8 threads x 8 CUDA streams, batch 1", **closed_loop(make, 8, args.seconds))]


def timed_batches(fn, batch: int, seconds: float, warmup: int = 3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"images_per_second": batch / median, "batch_ms_p50": median * 1000, "batches": len(times)}


def peak_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


C_VARIANTS = {
    # name: (file precision, autocast, label)
    "fp16": ("fp16", False, "fp16 weights"),
    "bf16": ("bf16", False, "bf16 weights"),
    "autocast": ("fp32", True, "autocast fp16"),
    "fp32": ("fp32", False, "fp32"),
}


def mode_c(args, size):
    results = []
    for spec in args.c_variants.split(","):
        variant, batch = spec.split(":")
        batch = int(batch)
        precision, autocast, name = C_VARIANTS[variant]
        module = load(args.models_dir, args.model, precision)
        x = torch.randn(batch, 3, size, size, device=DEV)

        def run():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                module(x)

        try:
            r = timed_batches(run, batch, args.seconds / 2)
            r["peak_mib"] = peak_mib(run)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        results.append(dict(mode="c", config=f"{name}, batch {batch}", **r))
    return results


def mode_d(args, size):
    results = []
    eager = spheroid.build(args.model, seed=0).to(DEV).half().eval()
    t0 = time.perf_counter()
    compiled = torch.compile(eager)
    for batch in (int(b) for b in args.d_batches.split(",")):
        x = torch.randn(batch, 3, size, size, device=DEV, dtype=torch.float16)

        def run():
            with torch.no_grad():
                compiled(x)

        run()
        compile_s = time.perf_counter() - t0
        r = timed_batches(run, batch, args.seconds / 2)
        results.append(dict(mode="d", config=f"torch.compile fp16 weights, batch {batch}", compile_seconds=compile_s, **r))
        t0 = time.perf_counter()
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--modes", default="a,b,c,d")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument(
        "--c-variants",
        default="fp16:8,fp16:16,bf16:8,bf16:16,autocast:8,autocast:16,fp32:8,fp32:16",
        help="mode c configurations as variant:batch (variants: fp16, bf16, autocast, fp32)",
    )
    p.add_argument("--d-batches", default="8,16", help="mode d batch sizes, compiled in this order")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runners = {"a": mode_a, "b": mode_b, "c": mode_c, "d": mode_d}
    results = []
    for mode in args.modes.split(","):
        for r in runners[mode](args, args.size):
            r.update(model=args.model, device=torch.cuda.get_device_name(), torch=torch.__version__)
            print(json.dumps(r), flush=True)
            results.append(r)
        torch.cuda.empty_cache()
        # Written after every mode, so a device call cut short by its time limit keeps what it measured.
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
