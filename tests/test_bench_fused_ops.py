"""benchmarks/bench_fused_ops.py: one small interleaved run writes its report and table."""

import importlib
import json
from pathlib import Path

from helpers import requires_compiled_ops

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@requires_compiled_ops
def test_a_small_run_reports_every_case(dlmc, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_fused_ops")
    out = tmp_path / "fused.json"
    bench.main(["--layers", "1", "--tokens", "9", "70", "--min-time", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [(r["block"], r["tokens"]) for r in report["results"]] == [
        ("ffn", 9), ("ffn", 70), ("qkv", 9), ("qkv", 70), ("attention", 9), ("attention", 70),
        ("add_layer_norm", 9), ("add_layer_norm", 70)]
    for r in report["results"]:
        engines = {"fused", "unfused"} | ({"dense"} if r["block"] != "add_layer_norm" else set())
        engines |= {"fused-packed"} if r["block"] in ("ffn", "qkv") else set()
        assert set(r["p50_ms"]) == engines and all(v > 0 for v in r["p50_ms"].values())
        assert (r["packed_vs_fused"] is not None) == ("fused-packed" in engines)
    table = capsys.readouterr().out
    assert "| qkv | 1 | 70 |" in table and "| attention | - | 70 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| add_layer_norm | - | 70 |"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[6] == cells[8] == "-" and cells[7].endswith("x")  # no dense column
    assert cells[9] == cells[10] == "-"  # nothing to pack
