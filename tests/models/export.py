"""Export the spheroid models (random weights from a seed) as TorchScript or AOTInductor packages.

    python tests/models/export.py --model unet_spherohq --size 64 --width 8 --precision fp32 \\
        --format torchscript --device cpu --seed 0 --out /tmp/unet.pt
    python tests/models/export.py --all DIR [--format aotinductor --max-batch 8 ...]

Contract of every exported file, whatever the precision: the input is a float32 (N, 3, size, size)
tensor, already normalised as docs/models.md says, on the export device; the output is float32
(N, 1, size, size) logits. For fp16/bf16 only the weights are cast: the module casts its input to its
own dtype and its logits back to float32, so callers (the Rust executor) never deal with dtypes.

- TorchScript (.pt): traced with --batch, then runs any batch size. It records the export settings as
  an extra file `gpupool.json` (read it with torch.jit.load(path, _extra_files={"gpupool.json": ""})).
  A file traced on the CPU loads onto a GPU too (map_location); full-size files (120-260 MB) are best
  exported on the GPU machine itself, where the CPU's slow fp16/bf16 kernels are not involved either.
- AOTInductor (.pt2): compiled for the export device (on CUDA: the GPU architecture; on CPU: the
  machine's instruction set, e.g. AVX512), with a dynamic batch dimension 1..--max-batch and a fixed
  spatial size. The compiled code does not reject a larger batch (seen on CPU), so callers must keep
  to --max-batch. With --static the batch is fixed at --max-batch instead (metadata "static":
  "true"): faster kernels, and the engine serves a directory of such packages, padding each batch
  up to the smallest one that takes it. The export settings are in the package metadata (strings;
  read with AOTIModelPackageLoader::get_metadata() or aoti_load_package(path).get_metadata()).

Same seed, same width → same weights on any device (they are initialised on the CPU). Unless
--no-verify, each file is reloaded and compared with the eager model at batch 1 and one other batch
size; the maximum absolute difference is in the summary. One JSON line is printed per file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

import spheroid

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Reloaded vs eager run the same kernels, so these only absorb reduction-order and algorithm-choice noise.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
SUFFIX = {"torchscript": ".pt", "aotinductor": ".pt2"}


class FloatIO(nn.Module):
    """Takes float32 input and returns float32 logits, whatever dtype the wrapped model runs in."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def random_input(batch: int, size: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g).to(device)


def export_torchscript(module: nn.Module, args, meta: dict) -> None:
    example = random_input(args.batch, args.size, args.seed, args.device)
    # check_trace would run the model twice more; the reload check below is stronger anyway.
    traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, args.out, _extra_files={"gpupool.json": json.dumps(meta)})


def export_aotinductor(module: nn.Module, args, meta: dict) -> None:
    dynamic_shapes = None
    example_batch = 1
    if args.static:
        # One fixed batch size: every kernel is specialised for it (the engine pads smaller batches).
        example_batch = args.max_batch
    elif args.max_batch > 1:
        # torch.export specialises a dimension whose example size is 1, so trace with at least 2.
        example_batch = min(max(args.batch, 2), args.max_batch)
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=args.max_batch)},)
    example = random_input(example_batch, args.size, args.seed, args.device)
    program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    # Metadata values must be strings.
    configs = {"aot_inductor.metadata": {k: str(v) for k, v in meta.items()}}
    torch._inductor.aoti_compile_and_package(program, package_path=args.out, inductor_configs=configs)


def load(args):
    if args.format == "torchscript":
        return torch.jit.load(args.out, map_location=args.device)
    return torch._inductor.aoti_load_package(args.out)


def verify_batches(args) -> list[int]:
    if args.format == "torchscript":
        return [1, 3]  # 3: a batch size the trace (usually batch 1) never saw
    return [args.max_batch] if args.static else sorted({1, args.max_batch})


def export_one(name: str, args) -> dict:
    if args.size % 32 or (name == "hrnet" and args.size < 64):
        sys.exit(f"--size {args.size}: must be a multiple of 32 (at least 64 for hrnet)")
    model = spheroid.build(name, args.width, seed=args.seed)
    module = FloatIO(model, PRECISIONS[args.precision]).to(args.device).eval()
    meta = {
        "name": name,
        "params": spheroid.count_params(model),
        "precision": args.precision,
        "size": args.size,
        "width": args.width,
        "seed": args.seed,
        "format": args.format,
        "device": args.device,
    }
    if args.format == "aotinductor":
        meta["max_batch"] = args.max_batch
        if args.static:
            meta["static"] = "true"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    start = time.perf_counter()
    with torch.no_grad():
        (export_torchscript if args.format == "torchscript" else export_aotinductor)(module, args, meta)
    summary = {**meta, "path": args.out, "bytes": os.path.getsize(args.out),
               "export_s": round(time.perf_counter() - start, 2)}

    if args.verify:
        loaded = load(args)
        diffs = {}
        with torch.no_grad():
            for batch in verify_batches(args):
                x = random_input(batch, args.size, args.seed + batch, args.device)
                expected, got = module(x), loaded(x)
                if got.shape != expected.shape or got.dtype != torch.float32:
                    sys.exit(f"{args.out}: batch {batch} gave {tuple(got.shape)} {got.dtype}, "
                             f"expected {tuple(expected.shape)} float32")
                diffs[batch] = (got - expected).abs().max().item()
        summary["max_abs_diff"] = {str(b): float(f"{d:.3g}") for b, d in diffs.items()}
        if max(diffs.values()) > TOLERANCE[args.precision]:
            print(json.dumps(summary), flush=True)
            sys.exit(f"{args.out}: reloaded model differs from eager by {max(diffs.values()):.3g} "
                     f"(tolerance {TOLERANCE[args.precision]})")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", choices=sorted(spheroid.MODELS))
    target.add_argument("--all", metavar="DIR", help="export all three models into DIR as <name>.pt / <name>.pt2")
    p.add_argument("--out", help="output file (with --model)")
    p.add_argument("--size", type=int, default=spheroid.DEFAULT_SIZE, help="input height = width (multiple of 32)")
    p.add_argument("--width", type=int, default=spheroid.FULL_WIDTH, help="base channel width (64 = full model)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--format", choices=sorted(SUFFIX), default="torchscript")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="example batch for tracing")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch an AOTInductor package accepts")
    p.add_argument("--static", action="store_true",
                   help="AOTInductor: compile for exactly --max-batch images (faster kernels; the engine pads "
                        "smaller batches and picks among a directory of such packages)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the reload-and-compare check")
    args = p.parse_args()
    if args.model and not args.out:
        p.error("--model needs --out")
    if args.batch < 1 or args.max_batch < 1:
        p.error("--batch and --max-batch must be at least 1")

    names = [args.model] if args.model else list(spheroid.MODELS)
    for name in names:
        if args.all:
            args.out = os.path.join(args.all, name + SUFFIX[args.format])
        print(json.dumps(export_one(name, args)), flush=True)


if __name__ == "__main__":
    main()
