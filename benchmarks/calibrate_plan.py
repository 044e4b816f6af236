"""Fits the rows of the planner's SPARSE_EFFICIENCY (sparse_rt/plan.py): the CPU rows from the newest `make bench`
results of each row, the CUDA row from the newest `make gpu-check` results file (cuda-DATE.json). Per regime, over
the measured layers, a statistic of (dense time / sparse kernel time) x density, the density at which the sparse
kernel breaks even: the geometric mean for the CPU rows, the 10th percentile for the CUDA row
(sparse_rt.plan.CUDA_FIT_PERCENTILE: on a GPU the layers of one regime spread 4x, launch-bound small ones against
bandwidth-bound large ones, and a geometric mean would make sparse the half of the borderline layers that run
slower than cuBLAS).
    python benchmarks/calibrate_plan.py"""

import json
import sys
from pathlib import Path

from sparse_rt.bench import geomean, percentile
from sparse_rt.plan import CPU_ROW_OF_ISA, CUDA_FIT_PERCENTILE, regime

RESULTS = Path(__file__).resolve().parent / "results"


def cost_table(report):
    """The SPARSE_EFFICIENCY row a results file calibrates, by the x86-64 level the kernels ran at
    (build_info's cpu_isa; files from before it was recorded come from the AVX-512 reference machine)."""
    isa = report["versions"]["sparse_rt_build"].get("cpu_isa", "x86-64-v4")
    return CPU_ROW_OF_ISA.get(isa, f"cpu ({isa}: no row)")


def newest_per_table(prefix):
    """{row: the newest (by its date) cpu-linear / cpu-conv report measured for that row}."""
    newest = {}
    for path in RESULTS.glob(f"{prefix}-*.json"):
        report = json.loads(path.read_text())
        table = cost_table(report)
        if table not in newest or report["date"] > newest[table]["date"]:
            newest[table] = report
    return newest


def newest_cuda_run():
    """(path, results) of the newest GPU run with benchmark rows (benchmarks/results/cuda-DATE.json), or
    (None, None)."""
    runs = [(p, json.loads(p.read_text())) for p in RESULTS.glob("cuda-*.json")]
    runs = [(p, r) for p, r in runs if not r.get("dry_run") and r.get("bench", {}).get("results")]
    return max(runs, key=lambda run: run[1]["date"], default=(None, None))


def cuda_samples(report):
    """{regime: [efficiency]} of a GPU run's single layers (kernel against cuBLAS/cuDNN). A Linear layer's
    regime is recomputed from its batch, so that a run from before a regime was split still fits the new one."""
    samples = {}
    for row in report["bench"]["results"]:
        if row["suite"] not in ("linear", "dlmc", "conv") or "dense" not in row.get("speedup", {}):
            continue
        name = regime("Linear", row["batch"]) if row["suite"] != "conv" else row["planner"]["regime"]
        samples.setdefault(name, []).append(row["speedup"]["dense"] * row["density"])
    return samples


def fit():
    """({row: {regime: efficiency}}, {row: {regime: layers}})"""
    samples = {}
    for prefix in ("cpu-linear", "cpu-conv"):
        reports = newest_per_table(prefix)
        if not reports:
            sys.exit(f"no {prefix}-*.json: run `make bench` first")
        for table, r in reports.items():
            for case, info in r.get("case_info", {}).items():
                series, by_engine = r["series"][case], r["medians_s"][case]
                # Only cases that time the kernel itself, not the planner's choice.
                if "regime" in info and not series.startswith("planned") and {"dense", "sparse_rt"} <= set(by_engine):
                    efficiency = by_engine["dense"] / by_engine["sparse_rt"] * info["density"]
                    samples.setdefault(table, {}).setdefault(info["regime"], []).append(efficiency)
    efficiency = {t: {name: geomean(v) for name, v in sorted(by.items())} for t, by in samples.items()}
    _, cuda = newest_cuda_run()
    if cuda:
        samples["cuda"] = cuda_samples(cuda)
        efficiency["cuda"] = {name: percentile(v, CUDA_FIT_PERCENTILE) for name, v in sorted(samples["cuda"].items())}
    return efficiency, {t: {name: len(v) for name, v in by.items()} for t, by in samples.items()}


if __name__ == "__main__":
    efficiency, counts = fit()
    for table, by_regime in sorted(efficiency.items()):
        for name, value in by_regime.items():
            print(f"{table:9} {name:8} efficiency {value:.4f}  ({counts[table][name]} layers)")
