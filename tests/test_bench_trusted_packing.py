"""benchmarks/bench_trusted_packing.py: one small run writes its report and table, the packing rule and the
trust setting restored."""

import importlib
import json
from pathlib import Path

import torch
from helpers import randn, requires_compiled_ops

from sparse_rt import magnitude_prune, ops
from sparse_rt.nn import SparseLinear
from sparse_rt.nn import packing as packing_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@requires_compiled_ops
def test_a_small_run_reports_every_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_trusted_packing")
    rule = packing_module.PACKING_MIN_ROWS_TRUSTED, packing_module.PACKING_MIN_DENSITY
    out = tmp_path / "trusted-packing.json"
    bench.main(["--models", "bert_encoder", "--sparsity", "0.9", "--batch", "1", "--min-time", "0",
                "--block-calls", "1", "--out", str(out)])
    [row] = json.loads(out.read_text())["results"]
    assert (row["model"], row["sparsity"], row["batch"]) == ("bert_encoder", 0.9, 1)
    assert set(row["p50_ms"]) == {"default", "trusted", "trusted-any-density", "trusted-unpacked"}
    assert all(v > 0 for v in row["p50_ms"].values())
    assert row["speedup_over_default"]["trusted"] == row["p50_ms"]["default"] / row["p50_ms"]["trusted"]
    assert (packing_module.PACKING_MIN_ROWS_TRUSTED, packing_module.PACKING_MIN_DENSITY) == rule
    assert not ops.trusted_packings_enabled()
    assert "| bert_encoder | 0.9 | 1 |" in capsys.readouterr().out


@requires_compiled_ops
def test_each_setting_packs_the_layers_its_name_says(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_trusted_packing")
    torch.manual_seed(0)
    denser, sparser = (SparseLinear.from_dense(magnitude_prune(torch.nn.Linear(700, 300), s)) for s in (0.8, 0.95))
    assert sparser.values.numel() < packing_module.PACKING_MIN_DENSITY * 700 * 300 <= denser.values.numel()
    model = torch.nn.Sequential(denser, torch.nn.Linear(300, 700), sparser)
    x = randn(packing_module.PACKING_MIN_ROWS_TRUSTED, 700, seed=1)
    packed = []
    monkeypatch.setattr(SparseLinear, "packing", _recording(SparseLinear.packing, packed))
    expected = {"default": [False, False], "trusted": [True, False], "trusted-any-density": [True, True],
                "trusted-unpacked": [False, False]}
    with torch.inference_mode():
        for name, run in bench.settings(model, x).items():
            packed.clear()
            run()
            assert packed == expected[name], name


def _recording(packing, packed):
    def recorded(self, input):
        result = packing(self, input)
        packed.append(result is not None)
        return result
    return recorded
