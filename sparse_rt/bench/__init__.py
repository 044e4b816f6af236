"""Benchmark helpers: same-run latency comparison and speedup summaries."""

from .stats import geomean, speedups
from .timing import compare_latency

__all__ = ["geomean", "speedups", "compare_latency"]
