import pickle
from copy import deepcopy

import pytest
import torch
from helpers import DEVICES, assert_close, randn, requires_compiled_ops
from torch import nn

import sparse_rt
from sparse_rt.nn import SparseConv2d, SparseLinear
from sparse_rt.nn import packing as packing_module
from sparse_rt.pruning import magnitude_prune


def _pruned_linear(seed=0, in_f=40, out_f=24, sparsity=0.8):
    torch.manual_seed(seed)
    return magnitude_prune(nn.Sequential(nn.Linear(in_f, out_f)), sparsity)[0]


def _pruned_conv(**kw):
    torch.manual_seed(1)
    return magnitude_prune(nn.Sequential(nn.Conv2d(8, 12, 3, **kw)), 0.8)[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["csr", "bsr"])
def test_sparse_linear_matches_dense(device, fmt):
    dense = _pruned_linear().to(device)
    sparse = SparseLinear.from_dense(dense, format=fmt, blocksize=(4, 4))
    x = randn(5, 3, 40, device=device)
    assert_close(sparse(x), dense(x).detach(), torch.float32)


def test_sparse_linear_explicit_mask():
    dense = nn.Linear(6, 4)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    sparse = SparseLinear.from_dense(dense, mask)
    x = randn(2, 6)
    expected = x @ (dense.weight * mask).T + dense.bias
    assert_close(sparse(x), expected.detach(), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                dict(groups=4, padding=(0, 2))])
def test_sparse_conv_matches_dense(device, kw):
    dense = _pruned_conv(**kw).to(device)
    sparse = SparseConv2d.from_dense(dense)
    x = randn(2, 8, 11, 13, device=device)
    assert_close(sparse(x), dense(x).detach(), torch.float32)


def test_a_bias_made_a_parameter_is_still_the_one_the_layers_add():
    # Layers read their tensors from the buffer dict; a bias made trainable moves out of it.
    dense_linear, dense_conv = _pruned_linear(), _pruned_conv(padding=1)
    for dense, sparse, x in ((dense_linear, SparseLinear.from_dense(dense_linear), randn(3, 40)),
                             (dense_conv, SparseConv2d.from_dense(dense_conv), randn(2, 8, 9, 9))):
        sparse.bias = nn.Parameter(sparse.bias + 1)
        assert "bias" in sparse._parameters and "bias" not in sparse._buffers
        with torch.no_grad():
            dense.bias += 1
        assert_close(sparse(x), dense(x).detach(), torch.float32)


def test_state_dict_round_trip_into_a_module_with_other_nnz():
    a = SparseLinear.from_dense(_pruned_linear(seed=0, sparsity=0.9))
    b = SparseLinear.from_dense(_pruned_linear(seed=1, sparsity=0.5))
    assert a.values.numel() != b.values.numel()
    b.load_state_dict(a.state_dict())
    x = randn(3, 40)
    assert torch.equal(a(x), b(x))
    for key, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[key]), key


def test_state_dict_with_bad_indices_is_rejected_with_the_layer_name():
    model = nn.Sequential(SparseLinear.from_dense(_pruned_linear()))
    state = model.state_dict()
    state["0.col_indices"] = state["0.col_indices"].clone()
    state["0.col_indices"][0] = 40
    message = r"layer '0': invalid sparse weight in state_dict: .*col_indices\[0\]=40 is out of range"
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_to_dtype(dtype):
    dense = _pruned_linear()
    sparse = SparseLinear.from_dense(dense).to(dtype)
    assert sparse.values.dtype == sparse.bias.dtype == dtype
    assert sparse.crow_indices.dtype == torch.int32
    x = randn(4, 40)
    assert_close(sparse(x.to(dtype)), (x.double() @ sparse.dense_weight().double().T + sparse.bias.double()), dtype)


def test_extra_repr_shows_format_and_density():
    text = repr(SparseLinear.from_dense(_pruned_linear(sparsity=0.75)))
    assert "format=csr" in text and "density=0.250" in text and "in_features=40" in text
    conv = repr(SparseConv2d.from_dense(_pruned_conv(padding=1)))
    assert "kernel_size=(3, 3)" in conv and "padding=(1, 1)" in conv and "density=0.200" in conv


def test_circular_padding_is_refused():
    with pytest.raises(ValueError, match="padding_mode='circular' is not supported"):
        SparseConv2d.from_dense(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"))


@pytest.mark.parametrize("layer", [SparseLinear.from_dense(_pruned_linear()), SparseConv2d.from_dense(_pruned_conv())])
def test_partial_state_dict_with_bad_indices_is_rejected_and_leaves_the_layer_unchanged(layer):
    model = nn.Sequential(layer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hostile = before["0.col_indices"].clone()
    hostile[0] = 10**6
    for strict in (False, True):
        with pytest.raises(ValueError, match=r"layer '0': invalid sparse weight.*col_indices\[0\]=1000000 is out"):
            model.load_state_dict({"0.col_indices": hostile}, strict=strict)
    shorter = {"0.col_indices": before["0.col_indices"][:-1].clone()}
    with pytest.raises(ValueError, match="layer '0': invalid sparse weight"):
        model.load_state_dict(shorter, strict=False)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key]), key


def test_failed_strict_load_changes_nothing():
    """torch loads the keys present before it reports the missing ones; a SparseModel or a sparse
    layer checks the keys first, so a strict load that fails leaves it as it was."""
    layer = SparseLinear.from_dense(_pruned_linear())
    model = sparse_rt.sparsify(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), min_sparsity=0.0, format="csr")
    for module, key in ((layer, "values"), (model, "module.0.values")):
        before = {k: v.clone() for k, v in module.state_dict().items()}
        with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: .*crow_indices"):
            module.load_state_dict({key: before[key] * 2}, strict=True)
        for k, tensor in module.state_dict().items():
            assert torch.equal(tensor, before[k]), k


def test_partial_state_dict_that_keeps_the_weight_valid_loads():
    model = nn.Sequential(SparseLinear.from_dense(_pruned_linear()))
    values = model[0].values * 2
    model.load_state_dict({"0.values": values}, strict=False)
    assert torch.equal(model[0].values, values)


# -------------------------------------------------------------- .weight, as code written for nn.Linear reads it

def _pruned_pair(kind, dtype=torch.float32):
    torch.manual_seed(0)
    dense = nn.Linear(12, 6) if kind == "linear" else nn.Conv2d(4, 6, (3, 2), groups=2)
    dense = magnitude_prune(nn.Sequential(dense), 0.7)[0].to(dtype)
    sparse = (SparseLinear if kind == "linear" else SparseConv2d).from_dense(dense)
    return dense, sparse


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_answers_what_dense_layers_are_asked_without_storing_it(kind, dtype):
    """HF ViT reads `projection.weight.dtype`, T5 `wo.weight.dtype`: before, AttributeError."""
    dense, sparse = _pruned_pair(kind, dtype)
    weight = sparse.weight
    assert isinstance(weight, torch.Tensor) and not weight.requires_grad
    assert (weight.dtype, weight.device, weight.shape, weight.dim()) == (dense.weight.dtype, dense.weight.device,
                                                                         dense.weight.shape, dense.weight.dim())
    assert torch.equal(weight.clone(), dense.weight.detach())  # reading values builds the dense weight
    assert torch.equal(weight.sum(), dense.weight.detach().sum())
    assert sparse.to(torch.float16).weight.dtype == torch.float16


@pytest.mark.parametrize("write", [
    lambda layer: layer.weight.mul_(0),
    lambda layer: layer.weight.copy_(torch.zeros(layer.weight.shape)),
    lambda layer: layer.weight.__setitem__(0, 1.0),
])
def test_writing_to_the_weight_view_fails_loudly(write):
    _, sparse = _pruned_pair("linear")
    before = sparse.dense_weight()
    with pytest.raises(RuntimeError, match=r"SparseLinear.weight is a read-only view of the sparse weight"):
        write(sparse)
    assert torch.equal(sparse.dense_weight(), before)
    with pytest.raises(KeyError, match="attribute 'weight' already exists"):
        sparse.weight = nn.Parameter(torch.zeros(6, 12))


def test_transformer_encoder_layer_runs_its_sparse_layers_not_the_dense_fast_path(monkeypatch):
    """nn.TransformerEncoderLayer's inference fast path reads linear1.weight; the view makes it take
    the path that calls the (sparse) layers."""
    import sparse_rt.nn.linear

    calls = []
    real = sparse_rt.nn.linear.ops.csr_linear
    monkeypatch.setattr(sparse_rt.nn.linear.ops, "csr_linear", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    layer = magnitude_prune(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 0.8).eval()
    x = randn(2, 5, 16)
    with torch.no_grad():
        expected = layer(x)
        got = sparse_rt.sparsify(layer, min_sparsity=0.0, format="csr")(x)
    assert len(calls) == 2
    assert_close(got, expected, torch.float32)


@requires_compiled_ops
def test_sparse_linear_packs_its_weight_for_large_inputs_and_repacks_after_changes(monkeypatch):
    """A CSR layer of density PACKING_MIN_DENSITY packs on its first input of PACKING_MIN_ROWS_DENSE
    rows (outputs bit for bit the unpacked ones), packs again after an in-place change PyTorch counts,
    refuses a packing made stale behind PyTorch's back until repack(), and keeps the packing out of
    state_dict, pickles and copies."""
    dense = _pruned_linear(in_f=700, out_f=300, sparsity=0.8)
    layer = SparseLinear.from_dense(dense)
    rows = packing_module.PACKING_MIN_ROWS_DENSE
    assert layer.values.numel() >= packing_module.PACKING_MIN_DENSITY * 700 * 300
    x, small = randn(2, rows // 2, 700, seed=1), randn(rows - 1, 700, seed=2)
    unpacked = SparseLinear.from_dense(dense)
    monkeypatch.setenv(packing_module.PACKING_VARIABLE, "0")
    expected = unpacked(x)
    assert unpacked.packing(x) is None
    monkeypatch.delenv(packing_module.PACKING_VARIABLE)

    layer(small)
    assert layer.packing(small) is None  # too few rows to pay for the packing's check
    assert torch.equal(layer(x), expected)
    packing = layer.packing(x)
    assert packing is not None and packing.numel() > 0
    assert layer.packing(x) is packing  # kept
    assert set(layer.state_dict()) == {"crow_indices", "col_indices", "values", "bias"}

    with torch.no_grad():
        layer.values.mul_(2)  # counted: packs again
    assert layer.packing(x) is not packing
    assert_close(layer(x), 2 * (expected - dense.bias) + dense.bias, torch.float32)

    layer.values.data.mul_(0.5)  # not counted: the ops refuse the stale packing
    with pytest.raises(RuntimeError, match=r"packed differs from col_indices / values .* repack\(\)"):
        layer(x)
    layer.repack()
    assert torch.equal(layer(x), expected)

    for copy in (pickle.loads(pickle.dumps(layer)), deepcopy(layer)):
        assert copy._packing is None or copy._packing is not layer._packing
        assert torch.equal(copy(x), expected)
    layer.load_state_dict(SparseLinear.from_dense(_pruned_linear(seed=3, in_f=700, out_f=300)).state_dict(),
                          assign=True)
    assert torch.equal(layer(x), SparseLinear.from_dense(_pruned_linear(seed=3, in_f=700, out_f=300))(x))


@requires_compiled_ops
def test_a_sparse_linear_below_the_packing_density_packs_from_packing_min_rows(monkeypatch):
    """A layer sparser than PACKING_MIN_DENSITY loses by a compared packing at PACKING_MIN_ROWS_DENSE
    rows (BERT-base at 95%): it packs from PACKING_MIN_ROWS on, with outputs bit for bit the unpacked
    ones."""
    dense = _pruned_linear(in_f=700, out_f=300, sparsity=0.93)
    layer, unpacked = SparseLinear.from_dense(dense), SparseLinear.from_dense(dense)
    assert layer.values.numel() < packing_module.PACKING_MIN_DENSITY * 700 * 300
    assert packing_module.PACKING_MIN_ROWS_DENSE < packing_module.PACKING_MIN_ROWS
    few, enough = (randn(rows, 700, seed=1) for rows in (packing_module.PACKING_MIN_ROWS - 1,
                                                          packing_module.PACKING_MIN_ROWS))
    monkeypatch.setenv(packing_module.PACKING_VARIABLE, "0")
    expected = unpacked(enough)
    monkeypatch.delenv(packing_module.PACKING_VARIABLE)
    assert layer.packing(few) is None
    assert layer.packing(enough) is not None
    assert torch.equal(layer(enough), expected)


@requires_compiled_ops
def test_with_trusted_packings_a_sparse_linear_packs_from_one_panel_and_computes_with_its_packing():
    """Trusted packings (sparse_rt.ops.trusted_packings): a layer of density PACKING_MIN_DENSITY or
    more packs from PACKING_MIN_ROWS_TRUSTED rows, its outputs stay the unpacked ones bit for bit, a
    counted change still repacks, and an uncounted one is computed with the packing made before it
    until repack(), as documented."""
    dense = _pruned_linear(in_f=700, out_f=300, sparsity=0.8)
    layer = SparseLinear.from_dense(dense)
    x = randn(packing_module.PACKING_MIN_ROWS_TRUSTED, 700, seed=1)
    assert packing_module.PACKING_MIN_ROWS_TRUSTED < packing_module.PACKING_MIN_ROWS
    expected = layer(x)
    assert layer.packing(x) is None  # too few rows while the ops compare every packing
    sparser = SparseLinear.from_dense(_pruned_linear(in_f=700, out_f=300, sparsity=0.95))
    assert sparser.values.numel() < packing_module.PACKING_MIN_DENSITY * 700 * 300
    with sparse_rt.ops.trusted_packings():
        assert layer.packing(randn(packing_module.PACKING_MIN_ROWS_TRUSTED - 1, 700, seed=2)) is None
        assert sparser.packing(x) is None  # too sparse to pay at so few rows
        assert torch.equal(layer(x), expected)
        packing = layer.packing(x)
        assert packing is not None and packing.numel() > 0
        with torch.no_grad():
            layer.values.mul_(2)  # counted: packs again
        assert_close(layer(x), 2 * (expected - dense.bias) + dense.bias, torch.float32)
        assert layer.packing(x) is not packing
        layer.values.data.mul_(0.5)  # not counted: the packing of the doubled weight is used
        assert_close(layer(x), 2 * (expected - dense.bias) + dense.bias, torch.float32)
        layer.repack()
        assert torch.equal(layer(x), expected)


@requires_compiled_ops
def test_a_pointwise_sparse_conv2d_packs_for_enough_pixels_and_repacks_after_changes(monkeypatch):
    """A 1x1 layer packs from PACKING_MIN_PIXELS output pixels of all its images together (outputs
    bit for bit the unpacked ones and within rounding of the dense layer), packs again after a counted
    change and refuses a stale packing until repack(); a strided one counts the pixels it reads; a 3x3
    one of one group packs too (its op runs over its input unfolded); a grouped one never packs."""
    torch.manual_seed(2)
    dense = magnitude_prune(nn.Sequential(nn.Conv2d(700, 300, 1)), 0.8)[0]
    layer = SparseConv2d.from_dense(dense)
    x = randn(4, 700, 7, 7, seed=1)  # 196 pixels
    small = randn(1, 700, 7, 7, seed=2)
    assert 4 * 7 * 7 >= packing_module.PACKING_MIN_PIXELS > 7 * 7
    monkeypatch.setenv(packing_module.PACKING_VARIABLE, "0")
    expected = SparseConv2d.from_dense(dense)(x)
    monkeypatch.delenv(packing_module.PACKING_VARIABLE)
    assert layer.packing(small) is None
    packing = layer.packing(x)
    assert packing is not None and layer.packing(x) is packing
    assert torch.equal(layer(x), expected)
    assert_close(layer(x), dense(x), torch.float32)
    with torch.no_grad():
        layer.values.mul_(2)
    assert layer.packing(x) is not packing
    layer.values.data.mul_(0.5)
    with pytest.raises(RuntimeError, match=r"sparse_rt.csr_conv2d: packed differs .* repack\(\)"):
        layer(x)
    layer.repack()
    assert torch.equal(layer(x), expected)
    strided_dense = magnitude_prune(nn.Sequential(nn.Conv2d(700, 300, 1, stride=2)), 0.8)[0]
    strided = SparseConv2d.from_dense(strided_dense)
    assert strided.packing(x) is None  # 4 x 4x4 output pixels
    wide = randn(4, 700, 14, 14, seed=3)  # 4 x 7x7
    assert strided.packing(wide) is not None
    monkeypatch.setenv(packing_module.PACKING_VARIABLE, "0")
    assert torch.equal(strided(wide), SparseConv2d.from_dense(strided_dense)(wide))
    monkeypatch.delenv(packing_module.PACKING_VARIABLE)
    assert_close(strided(wide), strided_dense(wide), torch.float32)
    grouped = nn.Conv2d(700, 300, 1, groups=2)
    assert SparseConv2d.from_dense(magnitude_prune(nn.Sequential(grouped), 0.8)[0]).packing(x) is None
    conv3_dense = magnitude_prune(nn.Sequential(nn.Conv2d(64, 48, 3, padding=1)), 0.8)[0]
    conv3 = SparseConv2d.from_dense(conv3_dense)
    image = randn(4, 64, 7, 7, seed=4)
    assert conv3.packing(image) is not None and conv3.packing(image[:1]) is None
    assert_close(conv3(image), conv3_dense(image), torch.float32)


@requires_compiled_ops
def test_a_sparse_linear_made_in_inference_mode_packs_and_its_stale_packing_is_refused():
    """Inference tensors have no version counter: the layer packs all the same, and an in-place change
    made in inference mode is caught by the ops' comparison."""
    with torch.inference_mode():
        layer = SparseLinear.from_dense(_pruned_linear(in_f=700, out_f=300))
        x = randn(packing_module.PACKING_MIN_ROWS, 700, seed=1)
        expected = layer(x)
        assert layer.packing(x) is not None
        layer.values.mul_(2)
        with pytest.raises(RuntimeError, match=r"packed differs"):
            layer(x)
        layer.repack()
        assert_close(layer(x), 2 * (expected - layer.bias) + layer.bias, torch.float32)
