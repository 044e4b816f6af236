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
    model = sparse_rt.sparsify(pruned)
    x = randn(7, 64, device=device)
    with torch.no_grad():
        assert rel_err(model(x), pruned(x)) <= 1e-5
    assert all(isinstance(m, SparseLinear) for m in (model.module[0], model.module[2], model.module[4]))


@pytest.mark.parametrize("device", DEVICES)
def test_cnn_with_stride_padding_dilation_groups_matches_dense(device):
    torch.manual_seed(1)
    cnn = _CNN().eval()
    pruned = sparse_rt.magnitude_prune(cnn, 0.85, exclude=("stem",)).to(device)
    model = sparse_rt.sparsify(pruned)
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
