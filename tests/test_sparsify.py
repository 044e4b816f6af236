import pytest
import torch
from helpers import DEVICES, randn, rel_err
from torch import nn

import sparse_rt
from sparse_rt.nn import SparseConv2d, SparseLinear


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 10))


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
            nn.Conv2d(32, 64, 1, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, (3, 1), padding=(1, 0), stride=(1, 2)),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("device", DEVICES)
def test_mlp_matches_dense(device):
    pruned = sparse_rt.magnitude_prune(_mlp(), 0.9).to(device).eval()
    model = sparse_rt.sparsify(pruned, format="csr")  # every layer sparse on every device (test_plan: the planner)
    x = randn(7, 64, device=device)
    with torch.no_grad():
        assert rel_err(model(x), pruned(x)) <= 1e-5
    assert all(isinstance(m, SparseLinear) for m in (model.module[0], model.module[2], model.module[4]))


@pytest.mark.parametrize("device", DEVICES)
def test_cnn_with_stride_padding_dilation_groups_matches_dense(device):
    torch.manual_seed(1)
    cnn = _CNN().eval()
    pruned = sparse_rt.magnitude_prune(cnn, 0.85, exclude=("stem",)).to(device)
    model = sparse_rt.sparsify(pruned, format="csr")  # the planner keeps these convolutions dense on CUDA
    x = randn(2, 3, 33, 29, device=device)
    with torch.no_grad():
        assert rel_err(model(x), pruned(x)) <= 1e-5
    assert isinstance(model.module.stem, nn.Conv2d)  # left dense: no zeros
    assert sum(isinstance(m, SparseConv2d) for m in model.modules()) == 4


def test_input_module_is_not_mutated():
    pruned = sparse_rt.magnitude_prune(_mlp(), 0.9)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    masks = {"0.weight": torch.ones(128, 64, dtype=torch.bool)}
    sparse_rt.sparsify(pruned, masks)
    assert all(isinstance(m, (nn.Linear, nn.ReLU, nn.GELU)) for m in pruned)
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in before.items())


def test_explicit_masks_by_parameter_or_layer_name():
    dense = _mlp().eval()
    g = torch.Generator().manual_seed(3)
    masks = {"0.weight": torch.rand(128, 64, generator=g) < 0.1, "2": torch.rand(96, 128, generator=g) < 0.3,
             "4.weight": torch.rand(10, 96, generator=g) < 0.8}  # 20% sparse: stays dense, masked
    model = sparse_rt.sparsify(dense, masks, format="csr")
    reference = _mlp().eval()
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_submodule(name.removesuffix(".weight")).weight.mul_(mask)
        x = randn(4, 64)
        assert rel_err(model(x), reference(x)) <= 1e-5
    assert [r.format for r in model.summary()] == ["csr", "csr", "dense"]
    assert isinstance(model.module[4], nn.Linear)


def test_min_sparsity_and_summary():
    pruned = sparse_rt.magnitude_prune(_mlp(), 0.6)
    summary = sparse_rt.sparsify(pruned, min_sparsity=0.7, format="csr").summary()
    assert [r.format for r in summary] == ["dense"] * 3
    summary = sparse_rt.sparsify(pruned, min_sparsity=0.5, format="csr").summary()
    row = summary[0]
    assert (row.name, row.kind, row.shape, row.format) == ("0", "Linear", (128, 64), "csr")
    assert row.density == pytest.approx(0.4, abs=1e-3)
    assert row.dense_bytes == (128 * 64 + 128) * 4
    nnz = round(0.4 * 128 * 64)
    assert row.sparse_bytes == (129 + nnz) * 4 + nnz * 4 + 128 * 4
    totals = summary.totals()
    assert totals["dense_bytes"] == sum(r.dense_bytes for r in summary)
    text = str(summary)
    assert "total (3/3 sparse)" in text and "Linear" in text and "128x64" in text


def test_bsr_format():
    pruned = sparse_rt.magnitude_prune(_mlp(), 0.9)
    model = sparse_rt.sparsify(pruned, format="bsr:4x4")
    assert [r.label for r in model.summary()] == ["bsr4x4", "bsr4x4", "csr"]  # 10 rows: not divisible
    x = randn(3, 64)
    with torch.no_grad():
        assert rel_err(model(x), pruned(x)) <= 1e-5


def test_block_format_no_layer_takes_is_refused():
    pruned = sparse_rt.magnitude_prune(_mlp(), 0.9)
    with pytest.raises(ValueError, match=r"format 'bsr:3x3' applies to no layer of this model: 0: blocks 3x3 "
                                         r"do not divide 128x64; csr used"):
        sparse_rt.sparsify(pruned, format="bsr:3x3")
    convs = sparse_rt.magnitude_prune(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3)), 0.9)
    with pytest.raises(ValueError, match="bsr applies to Linear layers"):
        sparse_rt.sparsify(convs, format="bsr:4x4")


def test_bad_arguments():
    pruned = sparse_rt.magnitude_prune(_mlp(), 0.9)
    with pytest.raises(ValueError, match="'fc.weight' names no Linear/Conv2d layer"):
        sparse_rt.sparsify(pruned, {"fc.weight": torch.ones(3, 3)})
    with pytest.raises(ValueError, match=r"masks\['0'\]: shape \(3, 3\) differs from the weight shape \(128, 64\)"):
        sparse_rt.sparsify(pruned, {"0.weight": torch.ones(3, 3)})
    with pytest.raises(ValueError, match="format must be"):
        sparse_rt.sparsify(pruned, format="coo")
    with pytest.raises(TypeError, match="expects an nn.Module"):
        sparse_rt.sparsify(torch.ones(3))


def test_state_dict_round_trip_of_a_sparse_model():
    pruned = sparse_rt.magnitude_prune(_mlp(), 0.9)
    a = sparse_rt.sparsify(pruned)
    b = sparse_rt.sparsify(sparse_rt.magnitude_prune(_mlp(), 0.5), format="csr")
    b.load_state_dict(a.state_dict())
    x = randn(2, 64)
    assert torch.equal(a(x), b(x))


# ------------------------------------------------------------- models pruned with torch.nn.utils.prune

def _pruned_with_torch_prune(per_layer=False):
    """The state every pruning tutorial leaves: _CNN pruned 90% with its masks still in place
    (weight_orig + weight_mask + a forward pre-hook), no forward run since."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = _CNN().eval()
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if per_layer:
        for module, name in layers:
            prune.l1_unstructured(module, name, amount=0.9)
    else:
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.9)
    prune.l1_unstructured(model.head, "bias", amount=0.5)  # a pruned tensor that is not a weight
    return model


@pytest.mark.parametrize("per_layer", [False, True])
def test_model_pruned_with_hooks_in_place_converts_and_stays_as_it_was(per_layer):
    """Before the fix: "Only Tensors created explicitly by the user (graph leaves) support the
    deepcopy protocol" from sparsify's copy of the reparametrised weights."""
    model = _pruned_with_torch_prune(per_layer)
    keys_before = set(model.state_dict())
    sparse = sparse_rt.sparsify(model, min_sparsity=0.5)  # before any forward (one under no_grad hides it)
    x = randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    assert rel_err(sparse(x), expected) < 1e-5
    assert set(model.state_dict()) == keys_before  # the caller's model keeps its hooks
    assert any(k.endswith("weight_orig") for k in keys_before)
    rows = {r.name: r for r in sparse.summary()}
    assert rows["head"].density == pytest.approx(float((model.head.weight != 0).float().mean()))


def test_layers_kept_dense_lose_their_hooks_and_the_file_loads_into_a_fresh_instance(tmp_path):
    """Before the fix the layers the planner kept dense kept weight_orig / weight_mask, and the
    .srt did not load into a fresh (unpruned) instance: Missing key(s) ... weight."""
    model = _pruned_with_torch_prune()
    x = randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    sparse = sparse_rt.sparsify(model, min_sparsity=1.0)  # only fully pruned layers convert
    assert any(r.format == "dense" for r in sparse.summary())
    assert not [k for k in sparse.state_dict() if k.endswith(("_orig", "_mask"))]
    sparse.save(tmp_path / "m.srt")
    loaded = sparse_rt.load(tmp_path / "m.srt", arch=_CNN().eval())
    assert rel_err(loaded(x), expected) < 1e-5


def test_pruned_instance_as_the_architecture_of_a_checkpoint_or_a_file(tmp_path):
    """from_checkpoint(arch=pruned instance) and load(arch=pruned instance) copied it with the same
    deepcopy; the copy now takes the file's plain weights."""
    from torch.nn.utils import prune

    model = _pruned_with_torch_prune()
    x = randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    plain = _pruned_with_torch_prune()
    for module in plain.modules():
        for name in ("weight", "bias"):
            if prune.is_pruned(module) and hasattr(module, name + "_orig"):
                prune.remove(module, name)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")  # zeros where pruned: the dense_zeros form
    converted = sparse_rt.SparseModel.from_checkpoint(tmp_path / "plain.pt", arch=_pruned_with_torch_prune())
    assert rel_err(converted(x), expected) < 1e-5
    converted.save(tmp_path / "m.srt")
    assert rel_err(sparse_rt.load(tmp_path / "m.srt", arch=_pruned_with_torch_prune())(x), expected) < 1e-5


def test_exclude_keeps_named_layers_dense_with_their_masks():
    model = sparse_rt.magnitude_prune(_mlp(), 0.9)
    sparse = sparse_rt.sparsify(model, min_sparsity=0.5, exclude=["0"])
    rows = {r.name: r for r in sparse.summary()}
    assert rows["0"].format == "dense" and rows["0"].reason.startswith("excluded")
    assert rows["2"].format != "dense"
    x = randn(3, 64)
    assert rel_err(sparse(x), model(x)) < 1e-5
    with pytest.raises(ValueError, match=r"exclude must be a list of Linear/Conv2d layer names of the model; "
                                         r"\['9'\] are not"):
        sparse_rt.sparsify(model, exclude=["9"])
    with pytest.raises(ValueError, match=r"exclude must be a list"):
        sparse_rt.sparsify(model, exclude="0")


def test_a_layer_pruned_entirely_is_warned_about():
    model = _mlp()
    with torch.no_grad():
        model[2].weight.zero_()
    with pytest.warns(UserWarning, match=r"1 layer\(s\) are pruned entirely \(density 0; each outputs its bias "
                                         r"alone\): 2"):
        sparse = sparse_rt.sparsify(model, min_sparsity=0.0)
    assert "warning: 2 is pruned entirely (density 0)" in str(sparse.summary())


def test_the_result_keeps_the_mode_of_the_input():
    assert sparse_rt.sparsify(_mlp().train()).training
    assert not sparse_rt.sparsify(_mlp().eval()).training


def test_linear_subclasses_left_dense_are_reported_with_the_reason():
    """nn.MultiheadAttention's out_proj (NonDynamicallyQuantizableLinear) is a Linear subclass whose
    weight the attention passes to its own kernel: kept dense, and said so in summary()."""
    torch.manual_seed(0)
    model = sparse_rt.magnitude_prune(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 0.8).eval()
    rows = {r.name: r for r in sparse_rt.sparsify(model, min_sparsity=0.0, format="csr").summary()}
    assert rows["linear1"].format == "csr"
    assert rows["self_attn.out_proj"].format == "dense"
    assert rows["self_attn.out_proj"].reason == ("kept dense: nn.MultiheadAttention passes out_proj.weight to its "
                                                 "own kernel")
