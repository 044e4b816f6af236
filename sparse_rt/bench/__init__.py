"""Benchmarks: `run` (sparse_rt against dense, torch.sparse, onnxruntime, its ONNX sparse flavour
and OpenVINO, one run) returning a BenchReport; same-run latency comparison, statistics and machine information."""

from ..machine import machine_info
from ..timing import compare_latency
from .report import BenchReport
from .runner import run
from .stats import geomean, latency_stats, percentile, speedups

__all__ = ["run", "BenchReport", "machine_info", "geomean", "latency_stats", "percentile", "speedups",
           "compare_latency"]
