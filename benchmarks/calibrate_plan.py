"""Fits the rows of the planner's SPARSE_EFFICIENCY and DENSITY_EXPONENT (sparse_rt/plan.py): the CPU rows from the
newest `make bench` results of each row, the CUDA row from the newest `make gpu-check` results file (cuda-DATE.json).
Per regime, over the measured layers, a statistic of (dense time / sparse kernel time) x density, the density at
which the sparse kernel breaks even: the geometric mean for the CPU rows (where a regime was timed over a spread of
densities, a least-squares line in logs, its value at CALIBRATION_DENSITY and its slope), the 10th percentile for
the CUDA row
(sparse_rt.plan.CUDA_FIT_PERCENTILE: on a GPU the layers of one regime spread 4x, launch-bound small ones against
bandwidth-bound large ones, and a geometric mean would make sparse the half of the borderline layers that run
slower than cuBLAS).
    python benchmarks/calibrate_plan.py"""

import json
import math
import sys
from pathlib import Path

from sparse_rt.bench import geomean, percentile
from sparse_rt.plan import CALIBRATION_DENSITY, CPU_ROW_OF_ISA, CUDA_FIT_PERCENTILE, regime

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


def density_fit(points):
    """(efficiency at CALIBRATION_DENSITY, exponent b) of efficiency = e0 (density / CALIBRATION_DENSITY) ** b,
    least squares in logs over (density, efficiency) points; b = 0 and e0 their geometric mean where the
    densities do not spread (all within a factor of 2)."""
    densities = [d for d, _ in points]
    if max(densities) < 2 * min(densities):
        return geomean(e for _, e in points), 0.0
    xs = [math.log(d / CALIBRATION_DENSITY) for d, _ in points]
    ys = [math.log(e) for _, e in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return math.exp(mean_y - slope * mean_x), slope


def fit():
    """({row: {regime: efficiency}}, {row: {regime: (density exponent, lowest and highest density fitted)}},
    {row: {regime: layers}})"""
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
                    samples.setdefault(table, {}).setdefault(info["regime"], []).append((info["density"], efficiency))
    fits = {t: {name: density_fit(v) for name, v in sorted(by.items())} for t, by in samples.items()}
    efficiency = {t: {name: e0 for name, (e0, _) in by.items()} for t, by in fits.items()}
    exponent = {t: {name: (b, min(d for d, _ in samples[t][name]), max(d for d, _ in samples[t][name]))
                    for name, (_, b) in by.items()} for t, by in fits.items()}
    _, cuda = newest_cuda_run()
    if cuda:
        samples["cuda"] = cuda_samples(cuda)
        efficiency["cuda"] = {name: percentile(v, CUDA_FIT_PERCENTILE) for name, v in sorted(samples["cuda"].items())}
        exponent["cuda"] = {name: (0.0, CALIBRATION_DENSITY, CALIBRATION_DENSITY) for name in efficiency["cuda"]}
    return efficiency, exponent, {t: {name: len(v) for name, v in by.items()} for t, by in samples.items()}


if __name__ == "__main__":
    efficiency, exponent, counts = fit()
    for table, by_regime in sorted(efficiency.items()):
        for name, value in by_regime.items():
            b, low, high = exponent[table][name]
            print(f"{table:9} {name:8} efficiency {value:.4f}  density exponent {b:.3f} over {low:.3f}-{high:.3f}"
                  f"  ({counts[table][name]} layers)")
