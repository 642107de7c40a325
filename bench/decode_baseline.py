#!/usr/bin/env python3
"""The original service's decode, timed: PIL's Image.open(...).convert("RGB") into a numpy array.

    python bench/decode_baseline.py FILE... [--runs 21]

Prints one JSON line per file (median milliseconds), next to crates/sidecar/examples/decode_bench.rs
in bench/cpu_postprocess.sh.
"""
import argparse
import io
import json
import time

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    for path in args.files:
        data = open(path, "rb").read()
        times = []
        for _ in range(max(args.runs, 1)):
            start = time.perf_counter()
            image = Image.open(io.BytesIO(data))
            pixels = np.asarray(image.convert("RGB"))
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        print(json.dumps({"file": path, "bytes": len(data), "size": f"{pixels.shape[1]}x{pixels.shape[0]}",
                          "median_ms": times[len(times) // 2], "runs": len(times), "decoder": "PIL"}))


if __name__ == "__main__":
    main()
