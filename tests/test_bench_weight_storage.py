"""benchmarks/bench_weight_storage.py: one small run reports every storage dtype, with the weights' bytes and the
outputs' difference from the fp32 weights'."""

import importlib
import json
from pathlib import Path

from helpers import requires_compiled_ops

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@requires_compiled_ops
def test_a_small_run_reports_every_storage_dtype(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_weight_storage")
    out = tmp_path / "weight-storage.json"
    bench.main(["--models", "cifar_resnet", "--batch", "2", "--min-time", "0", "--block-calls", "1",
                "--out", str(out)])
    [row] = json.loads(out.read_text())["results"]
    assert (row["model"], row["batch"]) == ("cifar_resnet", 2)
    assert set(row["p50_ms"]) == {"fp32", "bf16", "fp16"}
    assert row["max_rel_diff"]["fp32"] == 0
    assert 0 < row["max_rel_diff"]["fp16"] < row["max_rel_diff"]["bf16"] < 1e-2
    # Each value 2 bytes less; indices and fp32 biases unchanged.
    fp32, bf16 = row["weight_bytes"]["fp32"], row["weight_bytes"]["bf16"]
    assert bf16 == row["weight_bytes"]["fp16"] and fp32 - bf16 > 0.2 * fp32
    assert "| cifar_resnet | 0.9 | 2 |" in capsys.readouterr().out
