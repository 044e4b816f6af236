"""benchmarks/bench_block_cache.py: one small run writes its report and table, the cache's limit restored."""

import importlib
import json
from pathlib import Path

from helpers import requires_compiled_ops

from sparse_rt import ops

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@requires_compiled_ops
def test_a_small_run_reports_both_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_block_cache")
    limit = ops.cpu_cache_stats()["limit_bytes"]
    out = tmp_path / "block-cache.json"
    bench.main(["--models", "cifar_resnet", "--batch", "1", "3", "--min-time", "0", "--block-calls", "1",
                "--out", str(out)])
    report = json.loads(out.read_text())
    assert [(r["model"], r["batch"]) for r in report["results"]] == [("cifar_resnet", 1), ("cifar_resnet", 3)]
    for r in report["results"]:
        assert set(r["p50_ms"]) == set(r["page_faults_per_forward"]) == {"cache", "no-cache"}
        assert all(v > 0 for v in r["p50_ms"].values())
        assert r["speedup"] == r["p50_ms"]["no-cache"] / r["p50_ms"]["cache"]
    assert ops.cpu_cache_stats()["limit_bytes"] == limit
    assert "| cifar_resnet | 0.9 | 3 |" in capsys.readouterr().out
