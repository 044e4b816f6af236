"""sparse_rt.bench and `sparse-rt bench`: the report's arithmetic on known inputs, the engines'
correctness, and end-to-end runs that must write every field of the JSON and the PNG."""

import copy
import importlib.util
import json
import os
import sys
import time

import numpy as np
import pytest
import torch
from helpers import requires_compiled_ops
from torch import nn

import sparse_rt
from sparse_rt import bench, models
from sparse_rt.bench import runner
from sparse_rt.bench.engines import (
    BASELINES,
    EngineUnavailable,
    TorchSparseConv2d,
    onnxruntime_sparse_engine,
    openvino_engine,
    torch_sparse_model,
)
from sparse_rt.bench.stats import latency_stats, percentile
from sparse_rt.cli import main
from sparse_rt.machine import busy_warning
from sparse_rt.nn.surgery import dense_copy
from sparse_rt.timing import call_block, compare_latency_blocks

LATENCY = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "items_per_s", "iterations",
           "speedup", "batch", "engine"}
METRICS = {"params", "nonzeros", "compression_ratio", "dense_macs", "nonzero_macs", "theoretical_speedup"}
LAYER = {"name", "kind", "format", "reason", "density", "time_ms", "time_share"}
MACHINE = {"cpu", "cores", "threads", "gpu"}
VERSIONS = {"torch", "cuda", "sparse_rt", "python"}


def test_percentile_matches_numpy_linear_interpolation():
    assert percentile([5, 1, 4, 2, 3], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    assert percentile([1, 2, 3, 4, 5], 99) == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0
    samples = np.random.default_rng(0).exponential(size=101).tolist()
    for q in (0, 50, 90, 99, 100):
        assert percentile(samples, q) == pytest.approx(np.percentile(samples, q))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_stats_on_known_samples():
    s = latency_stats([0.004, 0.001, 0.003, 0.002], batch=8)
    assert s["p50_ms"] == pytest.approx(2.5)
    assert s["mean_ms"] == pytest.approx(2.5)
    assert s["std_ms"] == pytest.approx(np.std([1, 2, 3, 4]))  # population std, as numpy
    assert (s["min_ms"], s["max_ms"]) == (pytest.approx(1.0), pytest.approx(4.0))
    assert s["items_per_s"] == pytest.approx(8 / 0.0025)
    assert s["iterations"] == 4


def _hand_model():
    """Linear(16 -> 4): 4 of 64 weights nonzero, 4 nonzero biases. Parameters 68, nonzeros 8;
    multiply-adds per sample 64 dense, 4 nonzero."""
    layer = nn.Linear(16, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[torch.arange(4), torch.arange(4) * 4] = torch.tensor([1.0, -2.0, 3.0, -4.0])
        layer.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    return nn.Sequential(layer)


def test_report_arithmetic_on_a_hand_computable_model(monkeypatch):
    # Known latencies per engine (seconds): sparse_rt's p50 is 2 ms, dense's 6 ms, torch-sparse's 3 ms.
    fake = {"sparse_rt": [0.001, 0.002, 0.003], "dense": [0.004, 0.006, 0.008], "torch-sparse": [0.003] * 3}
    monkeypatch.setattr(runner, "_interleaved_samples", lambda fns, settings, cuda: {n: fake[n] for n in fns})
    report = bench.run(_hand_model(), (16,), batch=[1, 4], baselines="dense,torch-sparse", warmup=0, time=0)
    variant = report.data["variants"][0]
    m = variant["metrics"]
    assert (m["params"], m["nonzeros"]) == (68, 8)
    assert m["compression_ratio"] == pytest.approx(8.5)
    assert (m["dense_macs"], m["nonzero_macs"]) == (64, 4)
    assert m["theoretical_speedup"] == pytest.approx(16.0)
    assert report.speedup("dense", 4) == pytest.approx(3.0)
    assert report.speedup("torch-sparse", 1) == pytest.approx(1.5)
    rows = {(r["batch"], r["engine"]): r for r in report.rows()}
    assert rows[(4, "sparse_rt")]["items_per_s"] == pytest.approx(4 / 0.002)
    assert rows[(1, "dense")]["p90_ms"] == pytest.approx(7.6)
    assert rows[(1, "sparse_rt")]["speedup"] is None
    (layer,) = variant["layers"]
    summary = sparse_rt.sparsify(_hand_model()).summary()[0]
    assert (layer["name"], layer["format"], layer["reason"]) == ("0", "csr", summary.reason)
    assert (layer["params"], layer["nonzeros"], layer["theoretical_speedup"]) == (64, 4, 16.0)
    assert all(0 < share <= 1 for share in layer["time_share"])
    assert all(s["max_rel_diff"] < 1e-6 for s in variant["engines"].values())
    csv_lines = report.to_csv().splitlines()
    assert csv_lines[0].startswith("sparsity,batch,engine,p50_ms") and len(csv_lines) == 1 + 2 * 3
    assert "sparse_rt" in str(report) and "theoretical speedup" in str(report)


def _off_by(model, factor):
    """`model` with its first layer's bias scaled: a model that computes something else."""
    with torch.no_grad():
        model[0].bias.mul_(factor)
    return model


def test_a_baseline_that_computes_another_model_is_dropped_not_timed(monkeypatch):
    """A baseline whose output is more than WRONG_OUTPUT_REL off sparse_rt's (an export that lost a
    layer, say) is reported as a wrong output, in red, and neither timed nor ranked."""
    timed = []

    def samples(fns, settings, cuda):
        timed.append(set(fns))
        return {name: [0.001] for name in fns}

    monkeypatch.setattr(runner, "_interleaved_samples", samples)
    monkeypatch.setattr(runner, "torch_sparse_model", lambda dense, summary: (_off_by(copy.deepcopy(dense), 3.0), ""))
    report = bench.run(_hand_model(), (16,), batch=[1, 2], baselines="dense,torch-sparse", warmup=0, time=0)
    engines = report.data["variants"][0]["engines"]
    assert engines["dense"]["status"] == "ok" and engines["dense"]["max_rel_diff"] < 1e-6
    status = engines["torch-sparse"]
    assert status["status"] == "wrong output" and status["max_rel_diff"] > runner.WRONG_OUTPUT_REL
    assert "not timed" in status["note"]
    assert timed == [{"sparse_rt", "dense"}] * 2
    assert {row["engine"] for row in report.rows()} == {"sparse_rt", "dense"}
    assert "torch-sparse: wrong output, max rel diff vs sparse_rt" in str(report)


def test_sparse_rt_computing_another_model_than_the_dense_one_is_an_error(monkeypatch):
    monkeypatch.setattr(runner, "_interleaved_samples", lambda fns, settings, cuda: {name: [0.001] for name in fns})
    monkeypatch.setattr(runner, "dense_copy", lambda module: _off_by(dense_copy(module), 3.0))
    with pytest.raises(RuntimeError, match="sparse_rt's output differs from the dense model's by .* at batch 1"):
        bench.run(_hand_model(), (16,), batch=[1], baselines="dense", warmup=0, time=0)


def test_torch_sparse_conv_and_densify_match_the_sparse_model():
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2, bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
    x = torch.randn(3, 6, 11, 9)
    assert torch.allclose(TorchSparseConv2d(conv)(x), conv(x), atol=1e-5)

    pruned = sparse_rt.magnitude_prune(models.create("cifar_resnet").eval(), 0.8, exclude=("conv",))
    sparse = sparse_rt.sparsify(pruned, format="csr")  # every conv sparse, whatever the planner says
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        dense = dense_copy(sparse.module).eval()
        assert torch.allclose(dense(x), pruned(x), atol=1e-5)
        baseline, note = torch_sparse_model(dense, sparse.summary())
        assert note == "" and any(isinstance(m, TorchSparseConv2d) for m in baseline.modules())
        assert torch.allclose(baseline(x), pruned(x), atol=1e-4)


def test_fuse_times_the_fused_model_against_the_unfused_baselines():
    pruned = sparse_rt.magnitude_prune(models.create("cifar_resnet").eval(), 0.9, exclude=("conv",))
    baselines = "dense" + (",onnxruntime-sparse" if importlib.util.find_spec("onnxruntime") else "")
    report = bench.run(sparse_rt.sparsify(pruned, format="csr"), (3, 32, 32), baselines=baselines, warmup=0, time=0,
                       fuse=True)
    variant = report.data["variants"][0]
    assert report.data["config"]["fuse"] and len(variant["fusion"]["folded_batchnorms"]) == 21
    # The baselines, built from the model before fusion, give its outputs: the sparse flavour's export
    # (made on first use, after fuse() folded the BatchNorms into the shared layers) from its own copy.
    assert len(variant["engines"]) == len(baselines.split(",")) + 1
    for name, engine in variant["engines"].items():
        assert engine["status"] == "ok" and engine["max_rel_diff"] < 1e-5, name


def test_capture_times_the_replayed_model_and_profiles_it_eagerly():
    pruned = sparse_rt.magnitude_prune(models.create("cifar_resnet").eval(), 0.9, exclude=("conv",))
    sparse = sparse_rt.sparsify(pruned, format="csr")
    report = bench.run(sparse, (3, 32, 32), baselines="dense", batch="2", warmup=0, time=0.3, fuse=True,
                       capture=True)
    variant = report.data["variants"][0]
    assert report.data["config"]["capture"]
    assert all(engine["status"] == "ok" for engine in variant["engines"].values())  # outputs checked
    [state] = variant["capture"]["2"]  # the timed calls replayed
    assert state.startswith("replays")
    timed = [row["time_ms"][0] for row in variant["layers"] if row.get("time_ms")]
    assert len(timed) > 10 and all(t > 0 for t in timed)  # the profile's hooks ran


def test_cli_capture_flag(tmp_path):
    path = tmp_path / "r.json"
    assert main(["bench", "cifar_resnet", "--sparsity", "0.9", "--batch", "2", "--time", "0.2", "--warmup", "0.05",
                 "--baselines", "dense", "--fuse", "--capture", "--json", str(path), "--no-progress"]) == 0
    data = json.loads(path.read_text())
    assert data["config"]["capture"] and data["variants"][0]["capture"]["2"][0].startswith("replays")


@requires_compiled_ops
@pytest.mark.parametrize("stored", ["bf16", "fp16"])
def test_store_weights_times_the_model_with_16_bit_values(tmp_path, stored):
    """--store-weights: sparse_rt's layers keep 16-bit values after fusion; the dense baseline, built
    before, keeps fp32, and the outputs differ by the weights' rounding only."""
    path = tmp_path / "r.json"
    assert main(["bench", "cifar_resnet", "--sparsity", "0.9", "--batch", "2", "--time", "0.1", "--warmup", "0",
                 "--baselines", "dense", "--fuse", "--capture", "--store-weights", stored, "--json", str(path),
                 "--no-progress"]) == 0
    data = json.loads(path.read_text())
    assert data["config"]["store_weights"] == stored
    engines = data["variants"][0]["engines"]
    assert engines["dense"]["status"] == "ok" and 1e-6 < engines["dense"]["max_rel_diff"] < 2e-2
    with pytest.raises(ValueError, match="store_weights must be 'bf16' or 'fp16', got 'fp32'"):
        bench.run("cifar_resnet", sparsity=0.9, baselines="dense", time=0, warmup=0, store_weights="fp32")


def test_srt_and_checkpoint_forms(tmp_path):
    pruned = sparse_rt.magnitude_prune(models.create("cifar_resnet").eval(), 0.9, exclude=("conv",))
    sparse = sparse_rt.sparsify(pruned)
    sparse.arch_spec = {"name": "cifar_resnet", "kwargs": {}}
    sparse.save(tmp_path / "m.srt")
    torch.save(pruned.state_dict(), tmp_path / "ckpt.pt")
    for model, arch in ((str(tmp_path / "m.srt"), None), (str(tmp_path / "ckpt.pt"), "cifar_resnet")):
        report = bench.run(model, arch=arch, baselines="dense", warmup=0, time=0)
        assert report.data["model"]["input_shape"] == [3, 32, 32]
        assert report.data["variants"][0]["metrics"]["nonzeros"] == sparse_rt.metrics.model_metrics(sparse).nonzeros


def test_bench_errors(capsys):
    assert main(["bench", "cifar_resnet"]) == 2
    assert "give --sparsity" in capsys.readouterr().err
    assert main(["bench", "cifar_resnet", "--sparsity", "0.9", "--baselines", "dense,tvm"]) == 2
    assert "unknown baseline(s) tvm" in capsys.readouterr().err
    with pytest.raises(ValueError, match="input shape is unknown"):
        bench.run(_hand_model())


def _check_report_file(path, batches, baselines):
    report = json.loads(path.read_text())
    assert {"date", "machine", "versions", "model", "config", "variants"} <= set(report)
    assert MACHINE <= set(report["machine"]) and VERSIONS <= set(report["versions"])
    assert report["config"]["batches"] == batches
    for variant in report["variants"]:
        assert METRICS <= set(variant["metrics"])
        assert {e for e, s in variant["engines"].items() if s["status"] == "ok"} == {"sparse_rt", *baselines}
        assert {(r["batch"], r["engine"]) for r in variant["results"]} == {
            (b, e) for b in batches for e in ("sparse_rt", *baselines)}
        for row in variant["results"]:
            assert LATENCY <= set(row) and row["iterations"] >= 1
            assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
            assert (row["speedup"] is None) == (row["engine"] == "sparse_rt")
        planned = [layer for layer in variant["layers"] if layer["format"] is not None]
        assert planned and all(LAYER | METRICS - {"compression_ratio"} <= set(layer) for layer in planned)
        assert any(layer["format"] == "csr" for layer in planned)
        assert all(len(layer["time_ms"]) == len(batches) for layer in variant["layers"])
    return report


def _check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.slow
def test_cli_end_to_end_cifar(tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "cifar_resnet", "--sparsity", "0.9", "--batch", "1,2", "--time", "0.2", "--warmup", "0.05",
                 "--json", str(out / "r.json"), "--plot", str(out / "r.png"), "--csv", str(tmp_path / "r.csv"),
                 "--no-progress"]) == 0
    _check_report_file(out / "r.json", [1, 2], list(BASELINES))
    _check_png(out / "r.png")
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + 2 * (1 + len(BASELINES))


@pytest.mark.slow
def test_issue_command_resnet50(tmp_path):
    """The issue's command, with short timing: `bench resnet50 --sparsity 0.9 --batch 1,8
    --json r.json --plot r.png`."""
    json_path, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", "resnet50", "--sparsity", "0.9", "--batch", "1,8", "--json", str(json_path),
                 "--plot", str(png), "--time", "0", "--warmup", "0", "--no-progress"]) == 0
    report = _check_report_file(json_path, [1, 8], list(BASELINES))
    assert report["variants"][0]["metrics"]["theoretical_speedup"] > 5
    _check_png(png)


def test_busy_warning_when_the_load_exceeds_the_threads(monkeypatch):
    assert busy_warning([1.5, 1.0, 1.0], [2.0, 1.0, 1.0], 2) is None  # the run's own 2 threads at the end
    assert busy_warning(None, None, 2) is None  # the OS does not say
    warning = busy_warning([0.5, 0, 0], [3.25, 0, 0], 2)
    assert "3.25 at the end" in warning and "at the start" not in warning and "2 thread(s)" in warning
    # In a run: the load averages go to the report, and a busy machine gets a warning line printed.
    fake = {"sparse_rt": [0.001], "dense": [0.002]}
    monkeypatch.setattr(runner, "_interleaved_samples", lambda fns, settings, cuda: {n: fake[n] for n in fns})
    loads = iter([[5.0, 4.0, 3.0], [6.0, 5.0, 4.0]])
    monkeypatch.setattr(runner, "load_average", lambda: next(loads))
    report = bench.run(_hand_model(), (16,), baselines="dense", threads=1, warmup=0, time=0)
    load = report.to_dict()["load"]
    assert (load["start"], load["end"], load["threads"]) == ([5.0, 4.0, 3.0], [6.0, 5.0, 4.0], 1)
    assert "5.00 at the start and 6.00 at the end" in load["warning"]
    assert "WARNING: machine busy" in str(report)
    monkeypatch.setattr(runner, "load_average", lambda: [0.25, 0.5, 0.5])
    quiet = bench.run(_hand_model(), (16,), baselines="dense", threads=1, warmup=0, time=0)
    assert quiet.data["load"]["warning"] is None and "WARNING" not in str(quiet)


def test_core_round_trip_between_the_first_two_cpus(monkeypatch):
    from sparse_rt import machine

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not sparse_rt.ops.HAS_COMPILED_OPS:
        pytest.skip("needs two CPUs and the compiled ops")
    ns = machine.core_round_trip_ns(rounds=2000, repeats=1)
    assert 1 < ns < 1e6
    # CPUs the threads cannot be pinned to: no figure rather than a hang or a wrong one.
    for cpu in (-1, max(cpus) + 1, 1 << 20):
        assert sparse_rt.ops.core_round_trip_ns(cpus[0], cpu, 100) is None
        assert sparse_rt.ops.core_round_trip_ns(cpu, cpus[0], 100) is None
    # Both threads on one CPU (each pass waits for a time slice): done within its 100 ms budget, not
    # after 10^8 rounds.
    start = time.perf_counter()
    assert sparse_rt.ops.core_round_trip_ns(cpus[0], cpus[0], 10**8) > 0
    assert time.perf_counter() - start < 5
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {cpus[0]})
    assert machine.core_round_trip_ns() is None


def test_blocks_take_turns_in_rotating_order():
    calls = []

    def block(name):
        def run(untimed, timed, settle):
            calls.append((name, untimed, timed, settle))
            return [0.001] * timed
        return run

    samples = compare_latency_blocks({"a": block("a"), "b": block("b")}, block_calls=3, untimed_calls=2,
                                     settle=0.5, min_rounds=2)
    assert calls == [("a", 5, 0, 0.5), ("b", 5, 0, 0.5),  # the warm-up round
                     ("a", 2, 3, 0.5), ("b", 2, 3, 0.5), ("b", 2, 3, 0.5), ("a", 2, 3, 0.5)]
    assert {name: len(s) for name, s in samples.items()} == {"a": 6, "b": 6}
    with pytest.raises(ValueError, match="block_calls"):
        compare_latency_blocks({"a": block("a")}, block_calls=0)
    with pytest.raises(ValueError, match="settle"):
        compare_latency_blocks({"a": block("a")}, settle=-1)


def test_a_block_settles_before_its_timed_calls():
    """call_block makes its untimed calls, then more until `settle` seconds have passed (another
    engine's spinning threads stop meanwhile), then the timed ones."""
    stamps = []
    run = call_block(lambda: (stamps.append(time.perf_counter()), time.sleep(0.01)))
    assert len(run(2, 3)) == 3 and len(stamps) == 5  # no settle time: the counts alone
    stamps.clear()
    start = time.perf_counter()
    samples = run(1, 2, settle=0.1)
    untimed = stamps[:-2]
    assert len(samples) == 2 and len(untimed) >= 2
    assert untimed[-1] - start < 0.1 <= stamps[-2] - start  # the timed calls begin after the settle time


class _OnnxFile:
    """What openvino_engine takes (sparse_rt.bench.engines.DenseOnnx's interface), here an ONNX
    file written directly: y = relu(x W1^T + b1) W2^T + b2, batch dimension dynamic."""

    def __init__(self, model, directory):
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        first, second = model[0], model[2]
        weights = [numpy_helper.from_array(t.detach().numpy(), name) for name, t in (
            ("w1", first.weight.t().contiguous()), ("b1", first.bias), ("w2", second.weight.t().contiguous()),
            ("b2", second.bias))]
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
                 helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
                 helper.make_node("Add", ["o", "b2"], ["y"])]
        graph = helper.make_graph(
            nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", first.in_features])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", second.out_features])], weights)
        self._path = str(directory / "mlp.onnx")
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), self._path)

    def path(self):
        return self._path


def test_openvino_engine_runs_fp32_at_each_batch_size(tmp_path):
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 32)).eval()
    engine = openvino_engine(_OnnxFile(model, tmp_path), threads=1, device=torch.device("cpu"))
    assert "f32" in engine.note
    for batch in (1, 5):
        x = torch.randn(batch, 64)
        with torch.inference_mode():
            expected = model(x)
        got = torch.as_tensor(engine.prepare(x)())
        # OpenVINO's default on a CPU with AVX-512 BF16 (bf16 compute) is ~3e-3 off here; fp32 ~3e-7.
        assert got.shape == expected.shape
        assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5


def test_openvino_and_sparse_flavour_unavailable_with_a_reason(monkeypatch, tmp_path):
    with pytest.raises(EngineUnavailable, match="CPU only"):
        openvino_engine(None, threads=1, device=torch.device("cuda"))
    with pytest.raises(EngineUnavailable, match="CPU only"):
        onnxruntime_sparse_engine(None, tmp_path, threads=1, device=torch.device("cuda"))
    if importlib.util.find_spec("onnxruntime_extensions"):
        with pytest.raises(EngineUnavailable, match="fp32 models only, not bfloat16"):
            onnxruntime_sparse_engine(sparse_rt.sparsify(_hand_model()).bfloat16(), tmp_path, threads=1,
                                      device=torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails
    with pytest.raises(EngineUnavailable, match="openvino is not installed"):
        openvino_engine(None, threads=1, device=torch.device("cpu"))
    # In a run, the baseline is reported with the reason and the others go on.
    fake = {"sparse_rt": [0.001], "dense": [0.002]}
    monkeypatch.setattr(runner, "_interleaved_samples", lambda fns, settings, cuda: {n: fake[n] for n in fns})
    report = bench.run(_hand_model(), (16,), baselines="dense,openvino", warmup=0, time=0)
    engines = report.data["variants"][0]["engines"]
    assert engines["openvino"]["status"] == "unavailable" and "not installed" in engines["openvino"]["note"]
    assert {r["engine"] for r in report.rows()} == {"sparse_rt", "dense"}
    assert "openvino: unavailable" in str(report)


@pytest.mark.slow
def test_openvino_and_onnxruntime_sparse_in_a_run():
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime_extensions")
    pruned = sparse_rt.magnitude_prune(models.create("cifar_resnet").eval(), 0.9, exclude=("conv",))
    report = bench.run(pruned, (3, 32, 32), batch=[1, 3], baselines="onnxruntime,onnxruntime-sparse,openvino",
                       threads=1, warmup=0, time=0)
    engines = report.data["variants"][0]["engines"]
    for name in ("onnxruntime", "onnxruntime-sparse", "openvino"):
        assert engines[name]["status"] == "ok" and engines[name]["max_rel_diff"] < 1e-5, (name, engines[name])
    # one sparse-flavour export per batch size: both ran
    assert {(r["engine"], r["batch"]) for r in report.rows()} >= {("onnxruntime-sparse", 1), ("onnxruntime-sparse", 3)}
