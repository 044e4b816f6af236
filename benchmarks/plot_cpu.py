"""Plots the newest CPU results of one machine (benchmarks/results/cpu-{linear,conv,plan}-*.json) as a PNG: speedup of
sparse_rt against batch size (Linear, per baseline) and against sparsity (Conv2d, kernel and
planner), geometric means with min–max bars.    python benchmarks/plot_cpu.py"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from update_readme import newest_on_one_host  # noqa: E402  (beside this file)

RESULTS = Path(__file__).resolve().parent / "results"


def bars(ax, xs, stats, label, offset):
    g = [s["geomean"] for s in stats]
    low = [s["geomean"] - s["min"] for s in stats]
    high = [s["max"] - s["geomean"] for s in stats]
    ax.errorbar([x + offset for x in xs], g, yerr=[low, high], marker="o", capsize=4, label=label)


def speedup_axis(ax):
    """A speedup axis as every sparse_rt plot draws it: log scale, the break-even line at 1x."""
    ax.axhline(1.0, color="gray", lw=1, ls="--")
    ax.set_ylabel("speedup of sparse_rt (x, log scale)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)


def save(fig, title, name):
    """The figure under its title as RESULTS/name (one name per plot, so the README shows the newest)."""
    fig.suptitle(title)
    fig.tight_layout()
    out = RESULTS / name
    fig.savefig(out, dpi=110)
    return out


def main():
    newest = newest_on_one_host(["cpu-linear", "cpu-conv", "cpu-plan"])
    if len(newest) < 3:
        sys.exit("run `make bench` first: cpu-linear-*.json, cpu-conv-*.json and cpu-plan-*.json of one machine "
                 "are needed")
    (linear_path, linear), (conv_path, conv), (plan_path, plan) = (newest[p] for p in ("cpu-linear", "cpu-conv",
                                                                                       "cpu-plan"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    batches = sorted((s for s in linear["summary"] if s.startswith("N=")), key=lambda s: int(s[2:]))
    for i, engine in enumerate(sorted({e for s in batches for e in linear["summary"][s]})):
        bars(left, range(len(batches)), [linear["summary"][s][engine] for s in batches], f"vs {engine}", 0.08 * i)
    left.set_xticks(range(len(batches)), [s.replace("N=", "batch ") for s in batches])
    left.set_title("Linear: DLMC transformer 0.9 layers")
    for mode, result, offset in (("kernel", conv, 0), ("planned", plan, 0.003)):
        series = sorted(result["summary"], key=lambda s: float(s.split("=")[1]))
        xs = [float(s.split("=")[1]) for s in series]
        bars(right, xs, [result["summary"][s]["dense"] for s in series], f"{mode} vs dense (oneDNN)", offset)
    right.set_xlabel("sparsity")
    right.set_title("Conv2d: DLMC ResNet-50 layers, real shapes, batch 1")
    for ax in (left, right):
        speedup_axis(ax)
        ax.legend()
    machine = linear["machine"]
    out = save(fig, f"sparse_rt CPU speedups, fp32, {machine['cpu']}, {machine['threads']} threads, "
                    f"{linear['date'][:10]}", "cpu-speedup.png")
    print(f"wrote {out} from {linear_path.name}, {conv_path.name} and {plan_path.name}")


if __name__ == "__main__":
    main()
