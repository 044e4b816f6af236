"""Plots a GPU run's results (`make gpu-check`: benchmarks/results/cuda-DATE.json, the newest by default) as
benchmarks/results/cuda-speedup.png: the CSR kernel against cuBLAS and cuSPARSE by batch and sparsity
(geometric means with min-max bars), every suite against the dense kernels by batch, and the models end to
end.    python benchmarks/plot_cuda.py [cuda-DATE.json]"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from calibrate_plan import newest_cuda_run  # noqa: E402
from plot_cpu import bars, save, speedup_axis  # noqa: E402

from sparse_rt.bench import geomean  # noqa: E402


def stats(values):
    return {"geomean": geomean(values), "min": min(values), "max": max(values)}


def by_batch(rows, key):
    """[(batch, stats of key(row))] over the rows that have it."""
    grouped = defaultdict(list)
    for row in rows:
        value = key(row)
        if value is not None:
            grouped[row["batch"]].append(value)
    return sorted((batch, stats(values)) for batch, values in grouped.items())


def plot_series(ax, batches, series, label, offset):
    """series at the x position of its batch among all the run's batches."""
    if series:
        bars(ax, [batches.index(b) for b, _ in series], [s for _, s in series], label, offset)
        ax.set_xticks(range(len(batches)), [f"N={b}" for b in batches])


def main(path=None):
    path, run = (Path(path), json.loads(Path(path).read_text())) if path else newest_cuda_run()
    if run is None:
        sys.exit("no GPU results (benchmarks/results/cuda-DATE.json): run `make gpu-check` on a GPU machine")
    rows = run["bench"]["results"]
    batches = sorted({r["batch"] for r in rows})
    fig, (kernel, suites, models) = plt.subplots(1, 3, figsize=(17, 4.8))
    linear = [r for r in rows if r["suite"] == "linear"]
    versus = {"cuBLAS": lambda r: r["speedup"]["dense"], "cuSPARSE": lambda r: r["speedup"].get("torch_sparse")}
    for i, sparsity in enumerate(sorted({r["sparsity"] for r in linear})):
        at = [r for r in linear if r["sparsity"] == sparsity]
        for j, (baseline, key) in enumerate(versus.items()):
            plot_series(kernel, batches, by_batch(at, key), f"{sparsity:.0%} vs {baseline}", 0.06 * i + 0.03 * j)
    kernel.set_title("CSR Linear, BERT-base and 11008x4096 shapes, fp16/bf16")
    for i, suite in enumerate(("linear", "dlmc", "bsr", "conv")):
        in_suite = [r for r in rows if r["suite"] == suite]
        plot_series(suites, batches, by_batch(in_suite, versus["cuBLAS"]), f"{suite} vs dense", 0.05 * i)
    suites.set_title("every suite against cuBLAS / cuDNN")
    e2e = [r for r in rows if r["suite"] == "e2e"]
    labels = [f"{r['case'].split()[0]} b{r['batch']}\n{r['case'].split(' ', 2)[2]}" for r in e2e]
    models.bar(range(len(e2e)), [r["speedup"]["dense"] for r in e2e], color="tab:blue")
    models.set_xticks(range(len(e2e)), labels, rotation=90, fontsize=7)
    models.set_title("models at 90%, end to end, against the dense model")
    for ax in (kernel, suites, models):
        speedup_axis(ax)
    kernel.legend(fontsize=7, ncol=2)
    suites.legend(fontsize=7)
    env = run["environment"]
    out = save(fig, f"sparse_rt CUDA kernels, {env['device']}, torch {env['torch']}, CUDA graphs, "
                    f"{run['date'][:10]}", "cuda-speedup.png")
    print(f"wrote {out} from {path.name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
