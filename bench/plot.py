"""Plots a session's engine scaling curves (bench/gpu_run.sh results) as a PNG.

    python bench/plot.py docs/results/h200-2026-11-28b docs/results/h200-2026-11-28b/scaling.png

Throughput (left) and p99 latency (right) against closed-loop clients, one line per model and
engine run (one line style per call, in the order of the call folders' names), with each model's
best eager Python batching (c) of the same session as a dotted horizontal line.
Needs matplotlib (`make bench-plot` installs it in its own virtual environment).
"""

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from report import baseline_rows, best, reports  # noqa: E402


def main():
    root, out = sys.argv[1], sys.argv[2]
    fig, (tput, lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"hrnet": "tab:blue", "cbam_resunet": "tab:orange", "unet_spherohq": "tab:green"}
    styles = ["--s", "-o", "-.^"]
    # Scaling curves only: a model's runs over at least four client counts in one file (short
    # before/after checks such as `gpu_run.sh batching` stay in the tables).
    curves = []
    for path, report in reports(root, "engine-*.json"):
        per_model = {}
        for run in report["runs"]:
            models = run.get("models") or sorted(run["batches"])
            if len(set(models)) == 1:
                per_model.setdefault(models[0], []).append(run)
        curves += [(path, m, runs) for m, runs in per_model.items() if len(runs) >= 4]
    calls = sorted({os.path.dirname(path) for path, _, _ in curves})
    for path, model, runs in curves:
        runs.sort(key=lambda r: r["clients"])
        clients = [r["clients"] for r in runs]
        label = f"{model} ({os.path.relpath(path, root)})"
        style = styles[calls.index(os.path.dirname(path)) % len(styles)]
        tput.plot(clients, [r["images_per_second"] for r in runs], style, color=colours.get(model), label=label)
        lat.plot(clients, [r["p99_ms"] for r in runs], style, color=colours.get(model), label=label)
    for model, rows in baseline_rows(root).items():
        c = best(rows, "c")
        if c:
            tput.axhline(c["images_per_second"], color=colours.get(model), linestyle=(0, (1, 3)), linewidth=1)
    for ax, title, unit in ((tput, "engine throughput (dotted: best eager Python (c))", "images/s"), (lat, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("closed-loop clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    lat.set_yscale("log")
    tput.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
