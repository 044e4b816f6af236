"""Fits the CPU row of the planner's SPARSE_EFFICIENCY (sparse_rt/plan.py) from the newest `make bench` results:
per regime, the geometric mean over the measured layers of (dense time / sparse kernel time) x
density, i.e. the density at which the sparse kernel breaks even.   python benchmarks/calibrate_plan.py"""

import json
import sys
from pathlib import Path

from sparse_rt.bench import geomean

RESULTS = Path(__file__).resolve().parent / "results"


def fit():
    samples = {}
    for prefix in ("cpu-linear", "cpu-conv"):
        files = sorted(RESULTS.glob(f"{prefix}-*.json"))
        if not files:
            sys.exit(f"no {prefix}-*.json: run `make bench` first")
        r = json.loads(files[-1].read_text())
        for case, info in r.get("case_info", {}).items():
            series, by_engine = r["series"][case], r["medians_s"][case]
            # Only cases that time the kernel itself, not the planner's choice.
            if "regime" in info and not series.startswith("planned") and {"dense", "sparse_rt"} <= set(by_engine):
                efficiency = by_engine["dense"] / by_engine["sparse_rt"] * info["density"]
                samples.setdefault(info["regime"], []).append(efficiency)
    return {name: geomean(values) for name, values in sorted(samples.items())}, {k: len(v) for k, v in samples.items()}


if __name__ == "__main__":
    efficiency, counts = fit()
    for name, value in efficiency.items():
        print(f"{name:8} efficiency {value:.3f}  ({counts[name]} layers)")
