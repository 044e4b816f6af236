import json

import pytest
import torch
from helpers import randn
from torch import nn

import sparse_rt
import sparse_rt.plan
from sparse_rt.nn import SparseLinear
from sparse_rt.plan import (
    CALIBRATION_DENSITY,
    DENSITY_EXPONENT,
    SPARSE_EFFICIENCY,
    FormatSpec,
    cost_table,
    device_type,
    efficiency,
    plan_layer,
    predicted_speedup,
    regime,
)


def test_regimes():
    assert regime("Linear", batch=1) == "gemv" and regime("Linear", batch=8) == regime("Linear", batch=63) == "gemm"
    assert regime("Linear", batch=64) == "gemm64"
    assert regime("Conv2d", kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)) == "conv1x1"
    assert regime("Conv2d", kernel_size=(1, 1), stride=(2, 2), padding=(0, 0)) == "conv"
    assert regime("Conv2d", kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)) == "conv"


def test_cost_model_keeps_moderately_sparse_layers_dense():
    for device in ("cpu", "cuda"):
        for name, at_calibration in SPARSE_EFFICIENCY[cost_table(device)].items():
            assert predicted_speedup(name, 0.1, device) == pytest.approx(at_calibration / 0.1)
    gemv = SPARSE_EFFICIENCY[cost_table("cpu")]["gemv"]  # a flat regime: no DENSITY_EXPONENT entry
    sparse = plan_layer("Linear", (64, 576), 1 - gemv / 4, min_sparsity=0.5, layer_regime="gemv")
    assert (sparse.format, sparse.reason) == ("csr", "cost model: sparse est. 4.0x dense")
    dense = plan_layer("Linear", (64, 576), 1 - gemv * 2, min_sparsity=0.5, layer_regime="gemv")
    assert dense.format == "dense" and dense.reason == "cost model: sparse est. 0.50x dense"
    assert plan_layer("Conv2d", (64, 576), 0.6, min_sparsity=0.5, format="csr").format == "csr"
    assert plan_layer("Linear", (64, 64), 0.4, min_sparsity=0.5, format="csr").format == "dense"


@pytest.mark.parametrize("isa,table", [("x86-64-v4", "cpu"), ("x86-64-v3", "cpu-avx2"), ("baseline", "cpu"),
                                       (None, "cpu")])
def test_cpu_layers_are_planned_with_the_row_of_the_kernels_level(monkeypatch, isa, table):
    """AVX2 CPUs have their own calibration (a batched Linear layer breaks even at another density there);
    CUDA devices keep theirs whatever the CPU: a density between the two rows' break-evens runs sparse
    with the row whose efficiency is higher only."""
    monkeypatch.setattr(sparse_rt.plan, "build_info", lambda: {"cpu_isa": isa} if isa else {})
    assert cost_table("cpu") == cost_table(None) == table and cost_table("cuda:0") == "cuda"
    rows = {row: SPARSE_EFFICIENCY[row]["gemm"] for row in ("cpu", "cpu-avx2")}
    plan = plan_layer("Linear", (768, 768), 1 - sum(rows.values()) / 2, min_sparsity=0.5, layer_regime="gemm")
    assert plan.format == ("csr" if rows[table] == max(rows.values()) else "dense")


def test_cost_model_follows_the_device():
    """CUDA layers are planned with the GPU's calibration, every other device with the CPU's: at 90% a
    batched Linear layer, a 3x3 convolution and even a batch-1 Linear layer run sparse on the CPU but stay
    dense on a GPU (dense runs on tensor cores there); at 96% a Linear layer on a GPU runs sparse at
    batch 1 and 8 but not at 64 (ours re-read the weight for every 8 batch rows)."""
    assert device_type(None) == device_type("cpu") == device_type(torch.device("meta")) == "cpu"
    assert device_type("cuda") == device_type(torch.device("cuda", 1)) == "cuda"
    for kind, shape, layer_regime, on_cpu, on_cuda in [("Linear", (768, 3072), "gemm", "csr", "dense"),
                                                        ("Conv2d", (64, 576), "conv", "csr", "dense"),
                                                        ("Linear", (768, 3072), "gemv", "csr", "dense")]:
        cpu = plan_layer(kind, shape, 0.9, min_sparsity=0.5, layer_regime=layer_regime)
        cuda = plan_layer(kind, shape, 0.9, min_sparsity=0.5, layer_regime=layer_regime, device="cuda:0")
        assert (cpu.format, cuda.format) == (on_cpu, on_cuda), kind
        estimate = predicted_speedup(layer_regime, 0.1, "cuda")
        assert cuda.reason == (f"cost model: sparse est. {estimate:.2f}x dense" if on_cuda == "dense" else
                               f"cost model: sparse est. {estimate:.1f}x dense")
    on_gpu = {name: plan_layer("Linear", (768, 3072), 0.96, min_sparsity=0.5, layer_regime=name, device="cuda").format
              for name in ("gemv", "gemm", "gemm64")}
    assert on_gpu == {"gemv": "csr", "gemm": "csr", "gemm64": "dense"}
    # Forced formats and min_sparsity do not depend on the device.
    assert plan_layer("Linear", (64, 64), 0.6, min_sparsity=0.5, format="csr", device="cuda").format == "csr"
    assert plan_layer("Linear", (64, 64), 0.4, min_sparsity=0.5, device="cuda").format == "dense"


def test_sparsify_plans_for_the_device_it_is_given(tmp_path):
    torch.manual_seed(0)
    model = sparse_rt.magnitude_prune(nn.Sequential(nn.Linear(256, 512)), 0.9)
    x = randn(64, 256)
    on_cpu = sparse_rt.sparsify(model, example_inputs=(x,)).summary()[0]
    for_cuda = sparse_rt.sparsify(model, example_inputs=(x,), device="cuda").summary()[0]
    assert (on_cpu.format, for_cuda.format) == ("csr", "dense")
    assert for_cuda.reason == f"cost model: sparse est. {predicted_speedup('gemm64', 0.1, 'cuda'):.2f}x dense"
    sparser = sparse_rt.magnitude_prune(nn.Sequential(nn.Linear(256, 512)), 0.95)
    assert sparse_rt.sparsify(sparser, device="cuda").summary()[0].format == "csr"  # batch 1 by default
    assert sparse_rt.sparsify(sparser, example_inputs=(x,), device="cuda").summary()[0].format == "dense"
    with pytest.raises(ValueError, match=r"autotune times each layer where it is, and 0 is on cpu"):
        sparse_rt.sparsify(model, example_inputs=(x,), autotune=True, autotune_cache=tmp_path / "a.json",
                           device="cuda")


def test_format_spec():
    assert FormatSpec.parse("bsr:2x8") == FormatSpec("bsr", (2, 8))
    assert FormatSpec.parse("BSR") == FormatSpec("bsr", (4, 4))
    with pytest.raises(ValueError, match="block sizes must be positive"):
        FormatSpec.parse("bsr:0x4")


def _mixed_mlp():
    """A very sparse first layer and a moderately sparse second one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    return nn.Sequential(sparse_rt.magnitude_prune(model[:1], 0.97)[0], nn.ReLU(),
                         sparse_rt.magnitude_prune(model[2:], 0.55)[0])


def _fake_timing(monkeypatch, seconds):
    """Makes autotune's timing return `seconds` ({layer call: [dense samples], [sparse samples]}
    in call order) after checking that what it would time computes the layer; returns the calls."""
    calls = []

    def compare_latency(fns, **kwargs):
        assert set(fns) == {"dense", "sparse"}
        torch.testing.assert_close(fns["sparse"](), fns["dense"](), rtol=1e-5, atol=1e-5)
        dense, sparse = seconds[len(calls)]
        calls.append(kwargs)
        return {"dense": dense, "sparse": sparse}

    monkeypatch.setattr(sparse_rt.autotune, "compare_latency", compare_latency)
    return calls


def test_autotune_keeps_the_faster_measurement_and_caches_it(tmp_path, monkeypatch):
    model = _mixed_mlp()
    cache = tmp_path / "autotune.json"
    x = randn(16, 256)
    # Against the cost model both ways: the very sparse layer measures slower sparse, the
    # moderately sparse one faster. Medians decide, not the first or the fastest sample.
    calls = _fake_timing(monkeypatch, [([1e-3, 1e-3, 1e-3], [0.5e-3, 2e-3, 3e-3]),
                                       ([4e-3, 4e-3, 1e-3], [3e-3, 3e-3, 3e-3])])
    tuned = sparse_rt.sparsify(model, example_inputs=(x,), autotune=True, autotune_cache=cache)
    assert len(calls) == 2
    assert [r.format for r in tuned.summary()] == ["dense", "csr"]
    assert [r.reason for r in tuned.summary()] == ["autotuned: sparse 2.000 ms vs dense 1.000 ms (0.50x)",
                                                   "autotuned: sparse 3.000 ms vs dense 4.000 ms (1.33x)"]
    assert isinstance(tuned.module[0], nn.Linear) and isinstance(tuned.module[2], SparseLinear)
    with torch.inference_mode():
        torch.testing.assert_close(tuned(x), model(x), rtol=1e-5, atol=1e-5)
    entries = sorted(json.loads(cache.read_text()).values(), key=lambda e: e["dense_s"])
    assert entries == [{"format": "dense", "dense_s": 1e-3, "sparse_s": 2e-3},
                       {"format": "csr", "dense_s": 4e-3, "sparse_s": 3e-3}]

    # The file alone answers a second call: no timing, same choices.
    again = sparse_rt.sparsify(model, example_inputs=(x,), autotune=True, autotune_cache=cache)
    assert len(calls) == 2
    assert [r.format for r in again.summary()] == ["dense", "csr"]
    assert [r.reason for r in again.summary()] == ["cached autotune: sparse 2.000 ms vs dense 1.000 ms (0.50x)",
                                                   "cached autotune: sparse 3.000 ms vs dense 4.000 ms (1.33x)"]
    # Another input shape is another measurement.
    _fake_timing(monkeypatch, [([1e-3], [2e-3]), ([1e-3], [2e-3])])
    sparse_rt.sparsify(model, example_inputs=(randn(1, 256),), autotune=True, autotune_cache=cache)
    assert len(json.loads(cache.read_text())) == 4


def test_efficiency_grows_with_the_density_over_the_fitted_range_only():
    """A regime fitted over a spread of densities: its efficiency is the table's at CALIBRATION_DENSITY, grows
    as density ** exponent inside the fitted range and is held at the range's ends outside it."""
    table = cost_table("cpu")
    for name, (exponent, low, high) in DENSITY_EXPONENT[table].items():
        at_calibration = SPARSE_EFFICIENCY[table][name]
        assert efficiency(name, CALIBRATION_DENSITY) == pytest.approx(at_calibration)
        assert efficiency(name, high) == pytest.approx(at_calibration * (high / CALIBRATION_DENSITY) ** exponent)
        assert efficiency(name, min(1.0, 2 * high)) == pytest.approx(efficiency(name, high))
        assert efficiency(name, low / 2) == pytest.approx(efficiency(name, low))
        assert predicted_speedup(name, high) == pytest.approx(efficiency(name, high) / high)
    # BERT-base's layers at 50% sparsity fed 128 tokens: sparse (they ran 1.44-2.01x faster so); at batch 1 dense.
    assert plan_layer("Linear", (768, 768), 0.5, min_sparsity=0.5, layer_regime="gemm64").format == "csr"
    assert plan_layer("Linear", (768, 768), 0.5, min_sparsity=0.5, layer_regime="gemv").format == "dense"


def test_example_inputs_give_the_cost_model_the_batch():
    """A density between the gemv and gemm64 break-even densities (0.205 and above 0.5 in the "cpu" row,
    0.175 and 0.362 in "cpu-avx2") runs dense at batch 1 and sparse at batch 64."""
    torch.manual_seed(0)
    model = sparse_rt.magnitude_prune(nn.Sequential(nn.Linear(256, 512)), 0.78)

    def first_row(*example_inputs):
        return sparse_rt.sparsify(model, example_inputs=example_inputs or None).summary()[0]

    at_batch_1, at_batch_64 = first_row(randn(1, 256)), first_row(randn(64, 256))
    density = at_batch_1.density
    assert (at_batch_1.format, at_batch_1.reason) == (
        "dense", f"cost model: sparse est. {predicted_speedup('gemv', density):.2f}x dense")
    assert (at_batch_64.format, at_batch_64.reason) == (
        "csr", f"cost model: sparse est. {predicted_speedup('gemm64', density):.1f}x dense")
    assert first_row(randn(4, 16, 256)).format == "csr"  # leading dimensions make the batch
    assert first_row().reason == at_batch_1.reason  # without example inputs: batch 1
    assert isinstance(sparse_rt.sparsify(_mixed_mlp()).module[0], SparseLinear)


@pytest.mark.parametrize("damage", [lambda entries: [], lambda entries: "{", lambda entries: list(entries),
                                    lambda entries: {key: "csr" for key in entries},
                                    lambda entries: {key: {**e, "sparse_s": 0} for key, e in entries.items()},
                                    lambda entries: {key: {**e, "dense_s": "0.001"} for key, e in entries.items()},
                                    lambda entries: {key: {**e, "format": None} for key, e in entries.items()}],
                         ids=["empty-list", "broken-json", "list", "entry-not-object", "zero-seconds",
                              "string-seconds", "bad-format"])
def test_damaged_autotune_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, monkeypatch, damage):
    model, cache, x = _mixed_mlp(), tmp_path / "autotune.json", randn(16, 256)
    seconds = [([1e-3], [2e-3]), ([4e-3], [3e-3])]
    _fake_timing(monkeypatch, seconds)
    sparse_rt.sparsify(model, example_inputs=(x,), autotune=True, autotune_cache=cache)
    good = json.loads(cache.read_text())
    damaged = damage(good)
    cache.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    calls = _fake_timing(monkeypatch, seconds)
    with pytest.warns(RuntimeWarning, match="autotune cache .* ignoring it and measuring again"):
        tuned = sparse_rt.sparsify(model, example_inputs=(x,), autotune=True, autotune_cache=cache)
    assert len(calls) == 2
    assert [r.format for r in tuned.summary()] == ["dense", "csr"]
    assert json.loads(cache.read_text()) == good


def test_autotune_needs_example_inputs():
    with pytest.raises(ValueError, match="needs example_inputs"):
        sparse_rt.sparsify(_mixed_mlp(), autotune=True)
