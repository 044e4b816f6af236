"""benchmarks/bench_engines.py and its DeepSparse worker (benchmarks/deepsparse_env.py): argument
parsing, a tiny run writing every field of the JSON and the PNG, and the worker's protocol (where
build/deepsparse-venv exists: `make deepsparse-env`)."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_engines(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other as top-level modules
    return importlib.import_module("bench_engines")


@pytest.fixture
def deepsparse_python(bench_engines):
    env = sys.modules["deepsparse_env"]
    try:
        return env.ensure_venv(create=False)
    except env.DeepSparseUnavailable as e:
        pytest.skip(str(e))


def test_arguments(bench_engines, capsys):
    args = bench_engines.parse_args([])
    assert (args.models, args.batch, args.threads) == (["resnet50", "bert_encoder"], [1, 8], 2)
    assert args.sparsity == [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    assert args.engines == ["torch-dense", "sparse_rt", "sparse_rt-fused", "sparse_rt-captured", "onnxruntime",
                            "onnxruntime-sparse", "openvino", "deepsparse"]
    args = bench_engines.parse_args(["--models", "bert_encoder", "--batch", "8", "--sparsity", "0.9,0.95",
                                     "--engines", "deepsparse,sparse_rt", "--threads", "4"])
    assert (args.models, args.batch, args.sparsity, args.threads) == (["bert_encoder"], [8], [0.9, 0.95], 4)
    assert args.engines == ["sparse_rt", "deepsparse"]  # the documented order
    assert bench_engines.parse_args([]).settle == 0.3 and bench_engines.parse_args(["--settle", "0"]).settle == 0
    for bad, message in ((["--engines", "tvm"], "unknown engine(s) tvm"), (["--models", "gpt9"], "unknown model(s)"),
                         (["--sparsity", "1.0"], "sparsities must be in [0, 1)"),
                         (["--batch", "0"], "must be >= 1"), (["--batch", ""], "at least one value"),
                         (["--settle", "-1"], "--untimed and --settle must be >= 0")):
        with pytest.raises(SystemExit):
            bench_engines.parse_args(bad)
        assert message in capsys.readouterr().err


def _check_run(bench_engines, tmp_path, engines, extra=()):
    out = tmp_path / "e.json"
    assert bench_engines.main(["--models", "cifar_resnet", "--batch", "1,2", "--sparsity", "0.9", "--engines",
                               ",".join(engines), "--threads", "1", "--rounds", "1", "--block", "2",
                               "--untimed", "0", "--settle", "0", "--out", str(out), *extra]) == 0
    report = json.loads(out.read_text())
    assert {"date", "command", "machine", "versions", "config", "load", "results"} <= set(report)
    assert {"cpu", "cores"} <= set(report["machine"]) and {"torch", "sparse_rt", "openvino"} <= set(report["versions"])
    assert len(report["load"]["start"]) == 3 and report["load"]["threads"] == 1
    assert set(report["load"]["core_round_trip_ns"]) == {"start", "end"}
    assert "core_round_trip_ns" in report["machine"]
    rows = {(r["batch"], r["engine"]): r for r in report["results"]}
    assert set(rows) == {(b, e) for b in (1, 2) for e in engines}
    for (batch, engine), row in rows.items():
        assert row["status"] == "ok", row
        assert row["max_rel_diff"] <= 1e-4 and row["iterations"] == 2
        fastest = row["fastest_dense"]
        assert row["speedup_vs_fastest_dense"] == pytest.approx(rows[batch, fastest]["p50_ms"] / row["p50_ms"])
        assert row["speedup_vs_torch_dense"] == pytest.approx(rows[batch, "torch-dense"]["p50_ms"] / row["p50_ms"])
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


def test_tiny_run(bench_engines, tmp_path, capsys):
    _check_run(bench_engines, tmp_path, ["torch-dense", "sparse_rt"])
    table = capsys.readouterr().out
    assert "| model | batch | sparsity | torch-dense | sparse_rt |" in table and "| cifar_resnet | 2 | 0.9 |" in table


@pytest.mark.slow
def test_tiny_run_every_engine(bench_engines, tmp_path):
    pytest.importorskip("openvino")
    env = sys.modules["deepsparse_env"]
    try:
        env.ensure_venv(create=False)
        with_deepsparse = ["deepsparse"]
    except env.DeepSparseUnavailable:
        with_deepsparse = []  # the worker's own test says why it skips
    report = _check_run(bench_engines, tmp_path, [*bench_engines.ENGINES[:-1], *with_deepsparse])
    dense = set(bench_engines.DENSE_ENGINES)
    assert all(r["fastest_dense"] in dense for r in report["results"])


def test_deepsparse_unavailable_is_recorded(bench_engines, tmp_path, monkeypatch):
    env = sys.modules["deepsparse_env"]

    def no_venv(**kwargs):
        raise env.DeepSparseUnavailable("no wheel for this platform")

    monkeypatch.setattr(bench_engines, "ensure_venv", no_venv)
    out = tmp_path / "e.json"
    bench_engines.main(["--models", "cifar_resnet", "--batch", "1", "--sparsity", "0.9", "--engines",
                        "torch-dense,deepsparse", "--threads", "1", "--rounds", "1", "--block", "1", "--out", str(out)])
    rows = {r["engine"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["deepsparse"]["status"] == "unavailable" and rows["deepsparse"]["note"] == "no wheel for this platform"
    assert rows["torch-dense"]["status"] == "ok"


def test_deepsparse_worker_protocol(deepsparse_python, tmp_path):
    env = sys.modules["deepsparse_env"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) > 0.9)  # 90% zeros, as a pruned model
    path = env.export_onnx(model, torch.randn(1, 32), tmp_path / "m.onnx")
    import onnx

    proto = onnx.load(str(path))
    assert proto.ir_version <= env.MAX_IR_VERSION and proto.opset_import[0].version == env.OPSET
    x = torch.randn(3, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "y.npy", model(x).numpy())
        np.save(tmp_path / "wrong.npy", model(x).numpy() + 1.0)
    with env.DeepSparseWorker(deepsparse_python, tmp_path / "worker.log") as worker:
        assert worker.versions["deepsparse"] == "1.8.0" and worker.versions["numpy"].startswith("1.")
        with pytest.raises(env.DeepSparseUnavailable, match="block before a successful compile"):
            worker.block(0, 1)
        answer = worker.compile(path, 3, 1, tmp_path / "x.npy", tmp_path / "y.npy")
        assert answer["max_rel_diff"] < 1e-5 and answer["fraction_of_supported_ops"] > 0
        assert worker.compile(path, 3, 1, tmp_path / "x.npy", tmp_path / "wrong.npy")["max_rel_diff"] > 0.1
        samples = worker.block(1, 4, 0.05)  # one untimed call, and more for 0.05 s
        assert len(samples) == 4 and all(s > 0 for s in samples)
        with pytest.raises(env.DeepSparseUnavailable) as failed:
            worker.compile(tmp_path / "missing.onnx", 1, 1, tmp_path / "x.npy", tmp_path / "y.npy")
        assert "missing.onnx" in str(failed.value)
        # The server goes on after a failed request; the failed compile dropped the previous engine.
        with pytest.raises(env.DeepSparseUnavailable, match="block before a successful compile"):
            worker.block(0, 1)
    assert worker.process.returncode == 0
