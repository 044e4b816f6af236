import json

import pytest
import torch
from torch import nn

import sparse_rt
from sparse_rt.nn import SparseLinear
from sparse_rt.plan import SPARSE_EFFICIENCY, FormatSpec, plan_layer, predicted_speedup, regime

from sparse_cases import randn


def test_regimes():
    assert regime("Linear", batch=1) == "gemv" and regime("Linear", batch=8) == "gemm"
    assert regime("Conv2d", kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)) == "conv1x1"
    assert regime("Conv2d", kernel_size=(1, 1), stride=(2, 2), padding=(0, 0)) == "conv"
    assert regime("Conv2d", kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)) == "conv"


def test_cost_model_keeps_moderately_sparse_layers_dense():
    for name, efficiency in SPARSE_EFFICIENCY.items():
        assert predicted_speedup(name, 0.1) == pytest.approx(efficiency / 0.1)
    conv = SPARSE_EFFICIENCY["conv"]
    sparse = plan_layer("Conv2d", (64, 576), 1 - conv / 4, min_sparsity=0.5, layer_regime="conv")
    assert (sparse.format, sparse.reason) == ("csr", "cost model: sparse est. 4.0x dense")
    dense = plan_layer("Conv2d", (64, 576), 1 - conv * 2, min_sparsity=0.5, layer_regime="conv")
    assert dense.format == "dense" and dense.reason == "cost model: sparse est. 0.50x dense"
    assert plan_layer("Conv2d", (64, 576), 0.6, min_sparsity=0.5, format="csr").format == "csr"
    assert plan_layer("Linear", (64, 64), 0.4, min_sparsity=0.5, format="csr").format == "dense"


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


def test_autotune_measures_caches_and_reports(tmp_path):
    model = _mixed_mlp()
    cache = tmp_path / "autotune.json"
    x = randn(16, 256)
    tuned = sparse_rt.sparsify(model, example_inputs=(x,), autotune=True, autotune_cache=cache)
    entries = json.loads(cache.read_text())
    assert len(entries) == 2
    for row in tuned.summary():
        assert row.reason.startswith("autotuned: sparse ")
    # Each choice is the faster of its two measurements.
    for entry in entries.values():
        assert entry["format"] == ("csr" if entry["sparse_s"] < entry["dense_s"] else "dense")
    with torch.inference_mode():
        torch.testing.assert_close(tuned(x), model(x), rtol=1e-5, atol=1e-5)
    again = sparse_rt.sparsify(model, example_inputs=(x,), autotune=True, autotune_cache=cache)
    assert [r.reason.startswith("cached autotune") for r in again.summary()] == [True, True]
    assert [r.format for r in again.summary()] == [r.format for r in tuned.summary()]


def test_example_inputs_give_the_cost_model_the_batch():
    model = _mixed_mlp()
    at_batch_1 = sparse_rt.sparsify(model, example_inputs=(randn(1, 256),)).summary()[0].reason
    at_batch_64 = sparse_rt.sparsify(model, example_inputs=(randn(64, 256),)).summary()[0].reason
    assert at_batch_1 != at_batch_64
    assert isinstance(sparse_rt.sparsify(model).module[0], SparseLinear)


def test_autotune_needs_example_inputs():
    with pytest.raises(ValueError, match="needs example_inputs"):
        sparse_rt.sparsify(_mixed_mlp(), autotune=True)
