"""Shared setup of the pytest-benchmark suites: each benchmark tags its case (group), its engine
(extra_info["engine"]) and the series it belongs to (extra_info["series"], e.g. "N=1"); at the end,
speedups of sparse_rt over every other engine are computed per case from the medians of this run,
summarised per series by their geometric mean, and optionally saved."""

import json
from pathlib import Path

import pytest

from sparse_rt.bench import geomean, machine_info, speedups
from sparse_rt.bench.dlmc import dlmc_root


def pytest_addoption(parser):
    parser.addoption("--speedup-json", default=None, help="write the per-case speedups to this JSON file")


@pytest.fixture
def dlmc():
    root = dlmc_root(Path(__file__).parents[1])
    if not root.is_dir():
        pytest.skip(f"DLMC patterns not found at {root} (set SPARSE_RT_DLMC)")
    return root


def _collect(config):
    """({case: {engine: median s}}, {case: series}, {case: other extra_info, e.g. density})"""
    session = getattr(config, "_benchmarksession", None)
    medians, series, info = {}, {}, {}
    for bench in getattr(session, "benchmarks", []):
        if bench.stats and "engine" in bench.extra_info:
            extra = dict(bench.extra_info)
            medians.setdefault(bench.group, {})[extra.pop("engine")] = bench.stats.median
            series[bench.group] = extra.pop("series", "all")
            info.setdefault(bench.group, {}).update(extra)
    return medians, series, info


def _summary(ratios, series):
    """{series: {engine: {geomean, min, max, cases}}}"""
    out = {}
    for engine, per_case in ratios.items():
        for name in sorted(set(series[c] for c in per_case)):
            values = [r for c, r in per_case.items() if series[c] == name]
            out.setdefault(name, {})[engine] = {"geomean": geomean(values), "min": min(values),
                                                "max": max(values), "cases": len(values)}
    return out


def pytest_terminal_summary(terminalreporter, config):
    medians, series, info = _collect(config)
    ratios = speedups(medians)
    if not ratios:
        return
    summary = _summary(ratios, series)
    write = terminalreporter.write_line
    terminalreporter.section("sparse_rt speedup (baseline median / sparse_rt median, same run)")
    for name, by_engine in summary.items():
        for engine, s in sorted(by_engine.items()):
            write(f"{name:<8} vs {engine:<12} geomean {s['geomean']:6.2f}x  min {s['min']:6.2f}x  "
                  f"max {s['max']:6.2f}x  ({s['cases']} cases)")
    path = config.getoption("--speedup-json")
    if path:
        report = {
            **machine_info(),  # date, machine (CPU, cores, threads, GPU), versions
            "medians_s": medians,
            "series": series,
            "case_info": info,
            "summary": summary,
            "speedup_per_case": ratios,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1, sort_keys=True))
        write(f"speedups written to {path}")
