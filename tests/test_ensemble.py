"""SparseEnsemble: fused execution equals the members run one by one, combine rules against
hand-written references, uncertainty, fallback, superposition, mask algebra, checkpoints, .srt."""

import itertools
import math

import pytest
import torch
from helpers import rel_err
from torch import nn

import sparse_rt
from sparse_rt import models
from sparse_rt.ensemble import (
    SparseEnsemble,
    combine,
    erk_densities,
    erk_masks,
    jaccard,
    mask_intersection,
    mask_union,
    pairwise_jaccard,
    recalibrate_bn,
    superpose,
)

SMALL = {"wrn": dict(depth=10, widen_factor=1), "cifar_resnet": dict(depth=8)}


def _randomize_bn(net, generator):
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo in ((m.weight.data, 0.5), (m.running_var, 0.5)):
                t.copy_(torch.rand(t.shape, generator=generator) + lo)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)


def _pruned(name, seed, density=0.2, **kwargs):
    """A zoo model with random weights, random BN statistics and ERK masks applied to its weights."""
    torch.manual_seed(seed)
    net = models.create(name, **{**SMALL.get(name, {}), **kwargs}).eval()
    g = torch.Generator().manual_seed(seed)
    _randomize_bn(net, g)
    masks = erk_masks(net, density, generator=g)
    with torch.no_grad():
        for key, mask in masks.items():
            net.get_submodule(key.removesuffix(".weight")).weight.mul_(mask)
    return net


def _members(name, m=3, **kwargs):
    return [sparse_rt.sparsify(_pruned(name, seed, **kwargs)) for seed in range(m)]


def _x(batch=4, channels=3):
    return torch.randn(batch, channels, 16, 16, generator=torch.Generator().manual_seed(7))


# --- hand-written references ---------------------------------------------------------------------

def _ref_mean_prob(outs):
    probs = []
    for o in outs:
        e = torch.exp(o - o.max(dim=-1, keepdim=True).values)
        probs.append(e / e.sum(dim=-1, keepdim=True))
    return sum(probs) / len(probs)


def _ref_vote(outs):
    batch, classes = outs[0].shape
    votes = torch.zeros(batch, classes)
    for o in outs:
        for b in range(batch):
            votes[b, int(o[b].argmax())] += 1
    return votes / len(outs)


def _ref_uncertainty(outs):
    probs = _ref_mean_prob(outs)
    entropy = torch.tensor([-sum(p * math.log(p) for p in row.tolist() if p > 0) for row in probs])
    pairs = list(itertools.combinations(range(len(outs)), 2))
    dis = torch.tensor([sum(int(outs[i][b].argmax() != outs[j][b].argmax()) for i, j in pairs) / len(pairs)
                        for b in range(outs[0].shape[0])])
    return entropy, dis


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fused_equals_members_and_references(name):
    members = _members(name)
    fused = SparseEnsemble(members)
    per_member = SparseEnsemble(members, fuse=False)
    assert fused.fused is not None and per_member.fused is None
    x = _x()
    with torch.inference_mode():
        outs = [m(x) for m in members]
        got = fused.forward_members(x)
        assert got.shape == (3, 4, 10)
        assert rel_err(got, torch.stack(outs)) <= 1e-5
        assert torch.equal(per_member.forward_members(x), torch.stack(outs))
        references = {"mean_prob": _ref_mean_prob(outs), "mean_logit": sum(outs) / len(outs), "vote": _ref_vote(outs)}
        for rule, ref in references.items():
            fused.combine = per_member.combine = rule
            assert rel_err(fused(x), ref) <= 1e-5, rule
            assert rel_err(per_member(x), ref) <= 1e-5, rule
        assert torch.equal(fused.forward_members(x).argmax(-1), torch.stack(outs).argmax(-1))


def test_fused_first_layer_stacks_rows_and_later_layers_are_grouped():
    fused = SparseEnsemble(_members("wrn", m=4)).fused
    assert fused.conv1.out_channels == 4 * 16 and fused.conv1.groups == 1  # shared input: stacked rows
    conv = fused.get_submodule("block2.layer.0.conv2")
    assert conv.groups == 4 and conv.in_channels == 4 * 32  # block-diagonal as groups x M
    assert fused.get_submodule("block2.layer.0.bn1").num_features == 4 * 16


def test_log_softmax_members_give_the_same_mean_prob():
    logits = _members("wrn", m=2)
    log_probs = _members("wrn", m=2, log_softmax=True)
    x = _x()
    with torch.inference_mode():
        a, b = SparseEnsemble(logits)(x), SparseEnsemble(log_probs)(x)
        assert rel_err(b, a) <= 1e-5
        # The fused per-member log-softmax is a normalized distribution per member.
        assert torch.allclose(SparseEnsemble(log_probs).forward_members(x).exp().sum(-1), torch.ones(2, 4), atol=1e-5)


class _FunctionalLogSoftmaxNet(nn.Module):
    """Ends like FreeTickets' own WideResNet: F.log_softmax(out, dim=1)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return nn.functional.log_softmax(self.fc(x), dim=1)


def test_functional_log_softmax_runs_per_member():
    torch.manual_seed(0)
    members = [_FunctionalLogSoftmaxNet() for _ in range(3)]
    ensemble = SparseEnsemble.from_models(members)
    assert ensemble.fused is not None
    x = torch.randn(5, 6)
    with torch.inference_mode():
        assert rel_err(ensemble.forward_members(x), torch.stack([m(x) for m in members])) <= 1e-5


def test_uncertainty_matches_reference():
    ensemble = SparseEnsemble(_members("cifar_resnet"))
    x = _x(8)
    with torch.inference_mode():
        outs = list(ensemble.forward_members(x))
        got = ensemble.uncertainty(x)
    entropy, dis = _ref_uncertainty(outs)
    assert torch.allclose(got["entropy"], entropy, atol=1e-5)
    assert torch.equal(got["disagreement"], dis)


def test_combine_rules_on_crafted_outputs():
    outs = torch.tensor([[[2.0, 1.0, 0.0]], [[0.0, 3.0, 0.0]], [[5.0, 0.0, 0.0]]])
    assert torch.equal(combine(outs, "vote"), torch.tensor([[2 / 3, 1 / 3, 0.0]]))
    assert torch.allclose(combine(outs, "mean_logit"), torch.tensor([[7 / 3, 4 / 3, 0.0]]))
    assert torch.allclose(combine(outs, "mean_prob"), _ref_mean_prob(list(outs)))
    with pytest.raises(ValueError, match="combine must be one of"):
        combine(outs, "median")


class _GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.norm(self.conv(x))), 1))


def test_unfusable_module_falls_back_with_a_warning_naming_it():
    torch.manual_seed(0)
    members = [sparse_rt.magnitude_prune(_GroupNormNet().eval(), 0.8) for _ in range(2)]
    with pytest.warns(RuntimeWarning, match=r"norm \(GroupNorm\)"):
        ensemble = SparseEnsemble.from_models(members)
    assert ensemble.fused is None
    x = _x(2)
    with torch.inference_mode():
        assert torch.allclose(ensemble.forward_members(x), torch.stack([m(x) for m in members]), atol=1e-5)


def test_grouped_first_conv_and_dense_layers_fuse():
    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, groups=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 6)).eval()

    members = [sparse_rt.magnitude_prune(net(s), 0.6, exclude=("6",)) for s in range(3)]
    ensemble = SparseEnsemble.from_models(members, min_sparsity=0.5)
    assert ensemble.fused is not None
    x = _x(2, channels=4)
    with torch.inference_mode():
        assert rel_err(ensemble.forward_members(x), torch.stack([m(x) for m in members])) <= 1e-5


def test_members_with_a_layer_dense_in_one_and_sparse_in_another_fuse():
    pruned = [_pruned("cifar_resnet", seed) for seed in range(2)]
    members = [sparse_rt.sparsify(pruned[0], format="dense"), sparse_rt.sparsify(pruned[1], format="csr")]
    ensemble = SparseEnsemble.from_models(members)
    assert ensemble.fused is not None
    x = _x(2)
    with torch.inference_mode():
        assert rel_err(ensemble.forward_members(x), torch.stack([m(x) for m in pruned])) <= 1e-5


class _ScaledNet(nn.Module):
    """A LeakyReLU of a given slope, and a forward that multiplies by a plain attribute."""

    def __init__(self, slope=0.01, scale=1.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 16), nn.LeakyReLU(slope), nn.Linear(16, 4)
        self.scale = scale

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))) * self.scale


def _scaled_members(**differences):
    """Two pruned _ScaledNets with equal weights, member 1 built with `differences`."""
    torch.manual_seed(0)
    first = sparse_rt.magnitude_prune(_ScaledNet().eval(), 0.6)
    second = _ScaledNet(**differences).eval()
    second.load_state_dict(first.state_dict())
    return [first, second]


@pytest.mark.parametrize("differences, at_fault", [
    (dict(slope=0.5), r"act: members differ in negative_slope"),
    (dict(scale=100.0), r"mul \(mul\): members call it with different arguments")])
def test_members_differing_outside_their_weights_are_not_fused(differences, at_fault):
    members = _scaled_members(**differences)
    with pytest.warns(RuntimeWarning, match=at_fault):
        ensemble = SparseEnsemble.from_models(members, min_sparsity=0.5)
    assert ensemble.fused is None
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert rel_err(ensemble.forward_members(x), torch.stack([m(x) for m in members])) <= 1e-5


def test_members_equal_outside_their_weights_are_fused():
    members = _scaled_members()
    with torch.no_grad():
        members[1].fc1.weight.mul_(-2)
    ensemble = SparseEnsemble.from_models(members, min_sparsity=0.5)
    assert ensemble.fused is not None
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert rel_err(ensemble.forward_members(x), torch.stack([m(x) for m in members])) <= 1e-5


# --- superposition, mask algebra, ERK -------------------------------------------------------------

def test_superpose_keeps_the_global_budget_and_averages():
    members = _members("cifar_resnet", m=3)
    soup = superpose(members, density=0.1)
    total = sum(m.numel() for m in sparse_rt.ensemble.member_masks(soup).values())
    assert abs(sparse_rt.ensemble.density(soup) - 0.1) <= 1 / total
    # Superposing copies of one member at its own density gives it back.
    same = superpose([members[0]] * 3)
    x = _x(2)
    with torch.inference_mode():
        assert rel_err(same(x), members[0](x)) <= 1e-5
    with pytest.raises(ValueError, match="density"):
        superpose(members, density=1.5)


def test_recalibrate_bn_estimates_the_data_statistics():
    torch.manual_seed(0)
    model = sparse_rt.sparsify(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval())
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    recalibrate_bn(model, batches)
    with torch.no_grad():
        features = torch.cat([model.module[0](b) for b in batches])
    bn = model.module[1]
    assert not bn.training
    assert torch.allclose(bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)


def test_mask_algebra():
    a = {"fc": torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)}
    b = {"fc": torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)}
    assert mask_union([a, b])["fc"].tolist() == [[True, True, True, False]]
    assert mask_intersection([a, b])["fc"].tolist() == [[False, True, False, False]]
    assert jaccard(a, b) == pytest.approx(1 / 3)
    members = _members("wrn", m=3)
    overlap = pairwise_jaccard(members)
    assert overlap.shape == (3, 3) and torch.equal(overlap.diagonal(), torch.ones(3))
    assert torch.equal(overlap, overlap.T)
    assert (overlap[0, 1:] < 0.9).all()  # independent random masks overlap little


def test_erk_densities_keep_the_budget():
    net = models.create("wrn", depth=16, widen_factor=4)
    densities = erk_densities(net, 0.2)
    numel = {n: net.get_submodule(n).weight.numel() for n in densities}
    kept = sum(densities[n] * numel[n] for n in densities)
    assert kept == pytest.approx(0.2 * sum(numel.values()))
    assert max(densities.values()) <= 1.0 and densities["conv1"] == 1.0
    assert densities["block1.layer.1.conv1"] > densities["block3.layer.1.conv1"]


# --- checkpoints and files ------------------------------------------------------------------------

def test_from_checkpoints_reads_a_folder_in_natural_order(tmp_path):
    nets = {i: _pruned("wrn", i) for i in (1, 2, 10)}
    for i, net in nets.items():
        torch.save({"state_dict": net.state_dict()}, tmp_path / f"member_{i}.pth")
    ensemble = SparseEnsemble.from_checkpoints(tmp_path, arch="wrn", arch_kwargs=SMALL["wrn"])
    assert [m.source["file"] for m in ensemble.members] == ["member_1.pth", "member_2.pth", "member_10.pth"]
    x = _x(2)
    with torch.inference_mode():
        assert rel_err(ensemble.forward_members(x), torch.stack([nets[i](x) for i in (1, 2, 10)])) <= 1e-5


def test_from_checkpoints_takes_a_factory_of_fresh_instances(tmp_path):
    """Before: a zero-argument callable was refused as arch (only instances, zoo names, strings)."""
    nets = [_pruned("wrn", i) for i in (1, 2)]
    for i, net in enumerate(nets):
        torch.save(net.state_dict(), tmp_path / f"member_{i}.pth")
    built = []
    factory = lambda: built.append(1) or models.create("wrn", **SMALL["wrn"])
    ensemble = SparseEnsemble.from_checkpoints(tmp_path, arch=factory)
    assert len(built) == 2  # one fresh instance per member
    x = _x(2)
    with torch.inference_mode():
        assert rel_err(ensemble.forward_members(x), torch.stack([net(x) for net in nets])) <= 1e-5
    with pytest.raises(sparse_rt.arch.ArchitectureError, match=r"arch '<lambda>' returned a int, not an nn.Module"):
        SparseEnsemble.from_checkpoints(tmp_path, arch=lambda: 3)


def test_srt_round_trip(tmp_path):
    ensemble = SparseEnsemble.from_models(_members("cifar_resnet", m=2), combine="vote")
    for m in ensemble.members:
        m.arch_spec = {"name": "cifar_resnet", "kwargs": SMALL["cifar_resnet"]}
    path = tmp_path / "ens.srt"
    ensemble.save(path)
    loaded = SparseEnsemble.load(path)
    assert loaded.combine == "vote" and loaded.fused is not None and len(loaded.members) == 2
    assert isinstance(sparse_rt.load(path), SparseEnsemble)
    x = _x(2)
    with torch.inference_mode():
        assert torch.equal(loaded.forward_members(x), ensemble.forward_members(x))
    single = tmp_path / "one.srt"
    ensemble.members[0].save(single)
    with pytest.raises(ValueError, match="not an ensemble"):
        SparseEnsemble.load(single)


def test_cli_convert_ensemble_and_inspect(tmp_path, capsys):
    from sparse_rt.cli import main

    folder = tmp_path / "tickets"
    folder.mkdir()
    for i in (1, 2):
        torch.save(_pruned("cifar_resnet", i).state_dict(), folder / f"member_{i}.pt")
    out = tmp_path / "ens.srt"
    assert main(["convert", "--ensemble", str(folder), "--arch", "cifar_resnet", "--arch-kwargs", "depth=8",
                 "-o", str(out)]) == 0
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ensemble of 2 members" in text and "member 1: density" in text and "pairwise mask overlap" in text
    assert "member_2.pt" in text
    assert main(["convert", "--arch", "cifar_resnet", "-o", str(out)]) == 2
