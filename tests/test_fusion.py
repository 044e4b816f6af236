"""sparse_rt.fusion / SparseModel.fuse(): BatchNorm folding, residual and ReLU epilogues, Dropout
removal; same outputs as the unfused model, and the fused model saves, loads and exports."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err, requires_compiled_ops
from torch import nn

import sparse_rt
from sparse_rt import fusion, models
from sparse_rt.fusion import (
    TENSOR_FREE_REWRITES,
    ChannelsLastConv2d,
    ChannelsLastMaxPool2d,
    FusionError,
    FusionReport,
    fuse,
    sparse_linears,
    sparse_mlp,
)
from sparse_rt.io.srt import SrtArchError
from sparse_rt.models.resnet import Bottleneck
from sparse_rt.nn import SparseConv2d, SparseLinear
from sparse_rt.nn.surgery import dense_copy


def _with_batch_statistics(model, seed=0):
    """BatchNorms with the running statistics and affine parameters of a trained network (a fresh
    one's are the identity, which a wrong fold would pass)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model


def _sparse(model, sparsity=0.8, exclude=()):
    return sparse_rt.sparsify(sparse_rt.magnitude_prune(model, sparsity, exclude=exclude), format="csr").eval()


def _resnet18():
    return _with_batch_statistics(models.create("resnet18", num_classes=10).eval())


@requires_compiled_ops
def test_resnet_batchnorms_residuals_and_relus_are_fused_with_the_same_outputs():
    model = _sparse(_resnet18(), exclude=models.keep_dense("resnet18"))  # the stem stays dense
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(x)
    report = model.fuse()
    bns = [n for n, m in _resnet18().named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(bn for bn, _ in report.folded_batchnorms) == sorted(bns)
    # Each BasicBlock's conv2 takes the skip connection; both of each block's ReLUs (after conv1,
    # after the sum) run in the kernels.
    assert len(report.fused_residuals) == 8
    assert len(report.fused_relus) == 8 * 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert report.channels_last_pools == ["maxpool"]
    assert report.channels_last_convs == ["conv1"]  # the dense stem, through its ReLU into the pool
    assert type(model.module.conv1) is ChannelsLastConv2d
    with torch.inference_mode():
        assert rel_err(model(x), expected) < 1e-5
    assert model.fusion is report


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=2, stride=2, ceil_mode=True),
                                    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=2)])
def test_channels_last_max_pool_gives_the_very_same_values(kwargs):
    pool = nn.MaxPool2d(**kwargs)
    fast = ChannelsLastMaxPool2d(**kwargs)
    x = torch.randn(2, 5, 13, 11, generator=torch.Generator().manual_seed(0))
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, :, :] = float("-inf")
    out = fast(x)
    assert out.is_contiguous() and torch.equal(out.isnan(), pool(x).isnan())
    assert torch.equal(out.nan_to_num(), pool(x).nan_to_num())
    assert torch.equal(fast(x[1]), pool(x[1]))  # unbatched input: pooled as given


def test_channels_last_conv_gives_the_same_values_in_channels_last():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 5, stride=2, padding=2)
    fast = ChannelsLastConv2d(3, 8, 5, stride=2, padding=2)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 17, 15)
    out = fast(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, conv(x)) < 1e-6
    assert rel_err(fast(x[0]), conv(x[0])) < 1e-6  # unbatched input: convolved as given


def test_a_dense_conv_goes_channels_last_only_when_its_output_reaches_nothing_but_a_pool():
    class Stems(nn.Module):
        def __init__(self):
            super().__init__()
            self.into_pool, self.through_relu, self.read_twice = (nn.Conv2d(3, 4, 3) for _ in range(3))
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            a = self.pool(self.into_pool(x))
            b = self.pool(F.relu(self.through_relu(x)))
            c = self.read_twice(x)
            return a + b, self.pool(c) + c.mean()

    model = Stems().eval()
    x = torch.randn(2, 3, 12, 12)
    expected = model(x)
    fused, report = fuse(model)
    assert sorted(report.channels_last_convs) == ["into_pool", "through_relu"]
    for out, want in zip(fused(x), expected):
        assert rel_err(out, want) < 1e-6


class _Attentions(nn.Module):
    """Attention written out three ways that fuse (nn.Softmax, F.softmax, Tensor.softmax with the scale
    first) and three that must not: scores read twice, softmax over another dimension, a tensor scale."""

    def __init__(self):
        super().__init__()
        self.softmax = nn.Softmax(dim=-1)
        self.scale = 0.125

    def forward(self, q, k, v):
        fused = (torch.matmul(self.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale), v)
                 + torch.matmul(F.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.5, dim=-1), v)
                 + torch.matmul((0.25 * torch.matmul(q, k.transpose(-1, -2))).softmax(-1), v))
        scores = torch.matmul(q, k.transpose(-1, -2))
        kept = (torch.matmul(torch.softmax(scores * 0.5, -1), v) + scores.mean()
                + torch.matmul(F.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.5, dim=-2), v)
                + torch.matmul(F.softmax(torch.matmul(q, k.transpose(-1, -2)) * q.new_tensor(0.5), dim=-1), v))
        return fused, kept


def test_attention_becomes_one_call_only_where_nothing_else_reads_its_parts():
    model = _Attentions().eval()
    q, k, v = (torch.randn(2, 3, 7, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = model(q, k, v)
    fused, report = fuse(model)
    assert len(report.fused_attentions) == 3 and report.fused_attentions[0] == "softmax"
    calls = [n.target for n in fused.graph.nodes if n.op == "call_function"]
    assert calls.count(fusion.attention) == 3
    for out, want in zip(fused(q, k, v), expected):
        assert rel_err(out, want) < 1e-5


@requires_compiled_ops
def test_fused_attention_runs_our_kernel_where_it_applies_and_pytorch_elsewhere():
    """Ours (its output laid out [batch, queries, heads, head_dim]) for fp32 4-D CPU tensors without
    gradients; F.scaled_dot_product_attention (contiguous output) for gradients, 3-D operands, float64."""
    q, k, v = (torch.randn(2, 3, 7, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    ours = fusion.attention(q, k, v, 0.3)
    assert not ours.is_contiguous() and ours.transpose(1, 2).is_contiguous()
    assert rel_err(ours, F.scaled_dot_product_attention(q, k, v, scale=0.3)) < 1e-5
    wanting_grad = q.clone().requires_grad_()
    out = fusion.attention(wanting_grad, k, v, 0.3)
    out.sum().backward()
    assert out.is_contiguous() and wanting_grad.grad is not None
    for args in ((q[0], k[0], v[0]), (q.double(), k.double(), v.double())):
        out = fusion.attention(*args, 0.3)
        assert out.is_contiguous() and torch.equal(out, F.scaled_dot_product_attention(*args, scale=0.3))


@requires_compiled_ops
def test_bert_dropouts_are_dropped_and_its_linear_sums_kept():
    model = _sparse(_small_bert(), 0.7)
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(x)
    report = model.fuse()
    # The output projections' `dense(h) + input` stay sums: fused into linear layers, they measured slower.
    assert report.dropped_dropouts and not report.folded_batchnorms and not report.fused_residuals
    assert report.fused_attentions == [f"encoder.layer.{i}.attention.self.softmax" for i in range(2)]
    # ... each then normalised with its LayerNorm in one pass
    assert report.fused_add_layer_norms == [f"encoder.layer.{i}.{part}.LayerNorm" for i in range(2)
                                            for part in ("attention.output", "output")]
    with torch.inference_mode():
        assert rel_err(model(x), expected) < 1e-5


class _Norms(nn.Module):
    """LayerNorm of a sum, written three ways that fuse (a + b, torch.add, a.add(b)) and three that must not:
    the sum read twice, a LayerNorm over two dimensions, a LayerNorm of something else than a sum."""

    def __init__(self):
        super().__init__()
        self.fused = nn.ModuleList(nn.LayerNorm(6) for _ in range(3))
        self.read_twice, self.plain = nn.LayerNorm(6), nn.LayerNorm(6)
        self.two_dims = nn.LayerNorm((5, 6))

    def forward(self, a, b):
        fused = self.fused[0](a + b) + self.fused[1](torch.add(a, b)) + self.fused[2](a.add(b))
        twice = a - b
        kept = self.read_twice(twice) + twice + self.two_dims(a + b) + self.plain(a * b)
        return fused, kept


def test_a_sum_and_the_layer_norm_after_it_become_one_call_only_where_nothing_else_reads_the_sum():
    model = _Norms().eval()
    a, b = (torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(i)) for i in range(2))
    with torch.no_grad():
        expected = model(a, b)
    fused, report = fuse(model)
    assert report.fused_add_layer_norms == ["fused.0", "fused.1", "fused.2"]
    with torch.no_grad():
        for out, want in zip(fused(a, b), expected):
            assert rel_err(out, want) < 1e-5
    # Gradients wanted (the LayerNorm's parameters): the sum and the module, which autograd sees through.
    out = fused(a, b)[0]
    out.sum().backward()
    assert fused.get_submodule("fused.0").weight.grad is not None


class _Mlps(nn.Module):
    """Sparse linear pairs: with a GELU module, F.gelu(approximate='tanh') and a ReLU between them
    (all fused); a pair whose hidden activations are read twice, one with a residual sum after the
    first layer, and one with nothing between (none of them fused)."""

    def __init__(self):
        super().__init__()
        sizes = {"a": (12, 40), "b": (40, 12), "c": (12, 30), "d": (30, 12), "e": (12, 20), "f": (20, 12),
                 "g": (12, 16), "h": (16, 12), "i": (12, 12), "j": (12, 12), "k": (12, 12), "l": (12, 12)}
        for name, (cin, cout) in sizes.items():
            setattr(self, name, nn.Linear(cin, cout))
        self.gelu = nn.GELU()

    def forward(self, x):
        x = self.b(self.gelu(self.a(x)))
        x = self.d(F.gelu(self.c(x), approximate="tanh"))
        x = self.f(torch.relu(self.e(x)))
        h = F.gelu(self.g(x))
        x = self.h(h) + h.mean()
        x = self.j(F.gelu(self.i(x) + x))
        return self.l(self.k(x))


@requires_compiled_ops
def test_sparse_linear_pairs_run_as_one_op_with_the_same_values_to_rounding():
    """The op's GELUs (exact and tanh) run in its first layer's epilogue, within 3e-7 |h| of torch's;
    the ReLU pair is the same sums bit for bit."""
    model = _sparse(_Mlps().eval(), 0.6)
    # Batch 3 runs the gather kernels, batch 70 two panels of the tiled one.
    inputs = [torch.randn(b, 12, generator=torch.Generator().manual_seed(b)) for b in (3, 70)]
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    report = model.fuse()
    assert report.fused_mlps == [("a", "b"), ("c", "d"), ("e", "f")]
    assert report.fused_relus == ["e"]
    calls = [n.target for n in model.module.graph.nodes if n.op == "call_function"]
    assert calls.count(sparse_mlp) == 3
    with torch.inference_mode():
        for x, want in zip(inputs, expected):
            assert rel_err(model(x), want) < 1e-6
        # The ReLU pair alone: its activation is the layer's own epilogue either way.
        x = torch.randn(70, 12)
        assert torch.equal(sparse_mlp(model.module.e, model.module.f, "relu", x), model.module.f(model.module.e(x)))


class _SharedInputs(nn.Module):
    """Linear layers reading one input: q, k, v (grouped); r (its ReLU fused), `other` (another
    input), s and t (equal slices computed twice: two inputs) and a dense layer stay out of it."""

    def __init__(self):
        super().__init__()
        for name, out in {"q": 8, "k": 8, "v": 6, "r": 5, "other": 4, "s": 3, "t": 3}.items():
            setattr(self, name, nn.Linear(12, out))
        self.dense = nn.Linear(12, 2)

    def forward(self, x):
        y = x * 2
        a = torch.cat([self.q(x), self.k(x), self.v(x), torch.relu(self.r(x)), self.other(y)], -1)
        return a, self.s(y[:, :12]) + self.t(y[:, :12]).sum(), self.dense(x)


@requires_compiled_ops
def test_linear_layers_reading_one_input_run_as_one_call_with_the_very_same_values():
    model = _sparse(_SharedInputs().eval(), 0.5, exclude=("dense",))
    inputs = [torch.randn(b, 12, generator=torch.Generator().manual_seed(b)) for b in (3, 70)]
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    report = model.fuse()
    assert report.shared_input_linears == [("q", "k", "v")]
    assert report.fused_relus == ["r"]
    with torch.inference_mode():
        for x, want in zip(inputs, expected):
            for out, ref in zip(model(x), want):
                assert torch.equal(out, ref)
    # BERT: each layer's query, key and value projections.
    bert = _sparse(_small_bert(), 0.7)
    assert bert.fuse().shared_input_linears == [
        tuple(f"encoder.layer.{i}.attention.self.{p}" for p in ("query", "key", "value")) for i in range(2)]


def test_a_pair_the_op_does_not_take_runs_layer_by_layer():
    first = SparseLinear.from_dense(nn.Linear(8, 16), format="bsr", blocksize=(4, 4))
    second = SparseLinear.from_dense(nn.Linear(16, 4), format="bsr", blocksize=(4, 4))
    x = torch.randn(5, 8)
    assert torch.equal(sparse_mlp(first, second, "gelu_tanh", x), second(F.gelu(first(x), approximate="tanh")))
    outputs = sparse_linears((first, SparseLinear.from_dense(nn.Linear(8, 3))), x)
    assert torch.equal(outputs[0], first(x)) and outputs[1].shape == (5, 3)


class _Unsafe(nn.Module):
    """Patterns that must not be fused: a conv output read twice, a layer called twice, a ReLU
    after a dense layer, a sum after a linear layer; and a residual that broadcasts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.shared = nn.Linear(4, 4)
        self.dense = nn.Linear(4, 4)
        self.last = nn.Linear(4, 6)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y.mean()                    # y also read by mean: no fold
        z = self.conv2(z) + torch.ones(4, 1, 1)      # broadcast residual: added after the kernel
        h = z.mean((2, 3))
        h = F.relu(self.shared(h)) + self.shared(h)  # called twice: no epilogue
        h = torch.relu(self.dense(h))                # dense layer (kept dense by exclude): untouched
        return self.last(h) + h[:, :1]               # a linear layer's sum stays a sum


@requires_compiled_ops
def test_unsafe_patterns_are_left_alone_and_broadcast_residuals_stay_exact():
    module = _with_batch_statistics(_Unsafe().eval())
    for layer in (module.conv, module.conv2, module.shared, module.last):
        with torch.no_grad():
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(3)) > 0.6)
    model = sparse_rt.sparsify(module, exclude=("dense",), format="csr").eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = model(x)
    report = model.fuse()
    assert report.folded_batchnorms == [] and report.fused_relus == []
    assert report.fused_residuals == ["conv2"]  # a [4, 1, 1] residual for a [2, 4, 6, 6] output
    with torch.inference_mode():
        assert rel_err(model(x), expected) < 1e-6


class _InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        out = self.a(x).add_(x)      # in place into the layer's own output: fused
        y = x.clone().add_(self.b(x))  # in place into another tensor: not fused
        return out.relu_() + y


@requires_compiled_ops
def test_in_place_sums_are_fused_only_into_the_layers_own_output():
    model = sparse_rt.sparsify(_InPlace().eval(), min_sparsity=0.0, format="csr").eval()
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model(x)
        report = model.fuse()
        assert report.fused_residuals == ["a"] and report.fused_relus == ["a"]
        assert rel_err(model(x), expected) < 1e-6


def test_fuse_refuses_training_mode_and_untraceable_models():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    model = sparse_rt.sparsify(Branchy(), min_sparsity=0.0)
    with pytest.raises(FusionError, match="training mode"):
        model.train().fuse()
    with pytest.raises(FusionError, match="torch.fx cannot trace Branchy"):
        model.eval().fuse()


@requires_compiled_ops
def test_pointwise_convolutions_in_a_row_run_as_one_op_with_the_very_same_values(monkeypatch):
    """A bottleneck block's last 1x1 layer (with the skip connection) and the next block's first run as
    one csr_pointwise_conv_pair call: a panel of pixels at a time through both where the first's output
    leaves the cache (2 x 128x128 images: 19 MB touched), one layer after the other at 16x16; bit for
    bit the model fused without the pair, and within 1e-5 of the unfused one."""
    net = _with_batch_statistics(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), Bottleneck(64, 16),
                                               Bottleneck(64, 16)).eval())
    unfused, paired, apart = (_sparse(net) for _ in range(3))
    monkeypatch.setattr(fusion, "_bottleneck_block_pattern", lambda *args: None)  # whole blocks would take the layers
    assert paired.fuse().pointwise_conv_pairs == [("2.conv3", "3.conv1")]
    monkeypatch.setattr(fusion, "_pointwise_conv_pair_pattern", lambda *args: None)
    assert apart.fuse().pointwise_conv_pairs == []
    with torch.inference_mode():
        for shape in ((2, 3, 128, 128), (1, 3, 16, 16)):
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
            out = paired(x)
            assert torch.equal(out, apart(x))
            assert rel_err(out, unfused(x)) < 1e-5


def _strided_bottlenecks():
    """A bottleneck block with a strided downsample (computed first, as the zoo's blocks do), then one
    without: the sum of the first has two sparse convolutions that may take it."""
    downsample = nn.Sequential(nn.Conv2d(64, 128, 1, stride=2, bias=False), nn.BatchNorm2d(128))
    return _with_batch_statistics(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                                                Bottleneck(64, 32, stride=2, downsample=downsample),
                                                Bottleneck(128, 32)).eval())


@requires_compiled_ops
def test_the_pointwise_summand_takes_the_sum_and_chains_with_the_next_block(tmp_path):
    """Of a block's last 1x1 layer and its strided downsample, the 1x1 layer takes the skip connection
    (though the downsample comes first in the graph); the values are those of the downsample taking
    it, bit for bit. A file whose report gives the sum to the downsample (as fuse did before the rule)
    loads fused that way."""
    net = _strided_bottlenecks()
    unfused, fused, downsample_takes = (_sparse(net) for _ in range(3))
    report = fused.fuse()
    assert sorted(report.fused_residuals) == ["2.conv3", "3.conv3"]
    module, old_report = fuse(downsample_takes.module, residual_layers={"2.downsample.0", "3.conv3"})
    downsample_takes.module, downsample_takes.fusion = module, old_report
    assert sorted(old_report.fused_residuals) == ["2.downsample.0", "3.conv3"]
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        out = fused(x)
        assert torch.equal(out, downsample_takes(x))
        assert rel_err(out, unfused(x)) < 1e-5
    downsample_takes.save(tmp_path / "old.srt")
    loaded = sparse_rt.load(tmp_path / "old.srt", arch=_strided_bottlenecks())
    assert loaded.fusion.to_json() == old_report.to_json()
    with torch.inference_mode():
        assert torch.equal(loaded(x), out)


def _first_stage_bottlenecks():
    """ResNet's first stage in small: a block whose downsample is pointwise with stride 1 (computed
    first; it takes the sum), then one without."""
    downsample = nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128))
    return _with_batch_statistics(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                                                Bottleneck(64, 32, downsample=downsample), Bottleneck(128, 32)).eval())


@requires_compiled_ops
def test_a_block_with_a_pointwise_downsample_runs_it_as_its_shortcut_and_saves_and_loads(tmp_path):
    """A bottleneck block whose pointwise downsample takes the block's output as its residual runs as one
    csr_bottleneck_block call with the downsample as its shortcut: band by band on 4 x 64x64 images (19
    MB touched by its last layer), its layers apart at 16x16; the values of the model fused without it
    bit for bit at 16x16 and within 1e-5 of the unfused model. Saved and loaded, and from a file whose
    report predates shortcuts, the model runs fused the same way."""
    net = _first_stage_bottlenecks()
    unfused, fused, plain = _sparse(net), _sparse(net), _sparse(net)
    report = fused.fuse()
    assert report.fused_residuals == ["2.downsample.0", "3.conv3"]
    assert report.bottleneck_blocks == [("2.conv1", "2.conv2", "2.conv3"), ("3.conv1", "3.conv2", "3.conv3")]
    assert report.block_shortcuts == [("2.conv3", "2.downsample.0")]
    assert "2.downsample.0" not in [n.target for n in fused.module.graph.nodes if n.op == "call_module"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fusion, "_block_before_shortcut", lambda *args: None)
        assert plain.fuse().block_shortcuts == []
    xs, expected = _outputs_close_to_unfused(fused, unfused, ((4, 3, 64, 64), (1, 3, 16, 16)), seed=14)
    with torch.inference_mode():
        assert torch.equal(expected[1], plain(xs[1]))
    _reloads_fused_the_same(fused, _first_stage_bottlenecks, xs, expected, tmp_path, "block_shortcuts",
                            lambda record: {k: v for k, v in record.items() if k != "block_shortcuts"})


def _outputs_close_to_unfused(fused, unfused, shapes, seed):
    """(inputs of `shapes`, fused's outputs), each within 1e-5 of unfused's."""
    xs = [torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) for shape in shapes]
    with torch.inference_mode():
        expected = [fused(x) for x in xs]
        for x, out in zip(xs, expected):
            assert rel_err(out, unfused(x)) < 1e-5
    return xs, expected


def _reloads_fused_the_same(fused, arch, xs, expected, tmp_path, field, older_record):
    """`fused` saved and loaded (its report whole), and saved with its report as `older_record` makes it
    (a file of an earlier version) and loaded (its `field` as fused's): both give `expected`, bit for bit."""
    fused.save(tmp_path / "fused.srt")
    loaded = sparse_rt.load(tmp_path / "fused.srt", arch=arch())
    assert loaded.fusion.to_json() == fused.fusion.to_json()
    to_json = FusionReport.to_json
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FusionReport, "to_json", lambda self: older_record(to_json(self)))
        fused.save(tmp_path / "older.srt")
    older = sparse_rt.load(tmp_path / "older.srt", arch=arch())
    assert getattr(older.fusion, field) == getattr(fused.fusion, field)
    with torch.inference_mode():
        for x, out in zip(xs, expected):
            assert torch.equal(loaded(x), out) and torch.equal(older(x), out)


@requires_compiled_ops
def test_bottleneck_blocks_run_as_one_op_and_save_and_load(tmp_path):
    """A stride-1 bottleneck block (1x1, 3x3, 1x1 with the skip connection) runs as one
    csr_bottleneck_block call: band by band on 4 x 64x64 images (past the strided block; 19 MB touched
    by its last layer), its layers apart at 8x8; within 1e-5 of the unfused model. The strided block's layers run alone.
    The model saves and loads with its blocks fused again, and a file written before blocks existed
    (its report recording the pair they replace) loads with them too."""
    net = _strided_bottlenecks()
    unfused, fused = _sparse(net), _sparse(net)
    report = fused.fuse()
    assert report.bottleneck_blocks == [("3.conv1", "3.conv2", "3.conv3")]
    assert report.pointwise_conv_pairs == []
    xs, expected = _outputs_close_to_unfused(fused, unfused, ((4, 3, 128, 128), (1, 3, 16, 16)), seed=13)
    _reloads_fused_the_same(fused, _strided_bottlenecks, xs, expected, tmp_path, "bottleneck_blocks",
                            lambda record: {**{k: v for k, v in record.items() if k != "bottleneck_blocks"},
                                            "pointwise_conv_pairs": [["2.conv3", "3.conv1"]]})


@requires_compiled_ops
def test_a_fused_mobilenet_saves_and_loads_with_its_pointwise_pairs_fused_again(tmp_path):
    model = _sparse(models.create("mobilenet_v2", num_classes=10).eval())
    report = model.fuse()
    assert len(report.pointwise_conv_pairs) == 17  # each block's projection and the next block's expansion
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    with torch.inference_mode():
        expected = model(x)
    model.save(tmp_path / "mobilenet.srt")
    loaded = sparse_rt.load(tmp_path / "mobilenet.srt", arch="mobilenet_v2", arch_kwargs={"num_classes": 10})
    assert loaded.fusion.to_json() == report.to_json()
    with torch.inference_mode():
        assert torch.equal(loaded(x), expected)


@requires_compiled_ops
def test_a_fused_model_saves_loads_exports_and_turns_dense(tmp_path):
    model = _sparse(_resnet18(), exclude=models.keep_dense("resnet18"))
    model.fuse()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        expected = model(x)
    path = tmp_path / "fused.srt"
    model.save(path)
    loaded = sparse_rt.load(path, arch="resnet18", arch_kwargs={"num_classes": 10})
    assert loaded.fusion.to_json() == model.fusion.to_json()
    assert {n for n, m in loaded.module.named_modules() if getattr(m, "relu", False) is True} == \
        set(model.fusion.fused_relus)
    with torch.inference_mode():
        assert torch.equal(loaded(x), expected)
        assert rel_err(dense_copy(model.module)(x), expected) < 1e-5
    # A file written before the tensor-free rewrites were recorded loads, and gets them.
    to_json = FusionReport.to_json
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FusionReport, "to_json",
                      lambda self: {k: v for k, v in to_json(self).items() if k not in TENSOR_FREE_REWRITES})
        model.save(tmp_path / "older.srt")
    older = sparse_rt.load(tmp_path / "older.srt", arch="resnet18", arch_kwargs={"num_classes": 10})
    assert older.fusion.channels_last_convs == ["conv1"]
    with torch.inference_mode():
        assert torch.equal(older(x), expected)
    # An architecture that fuses differently (no BatchNorm to fold) is refused, naming the difference.
    with pytest.raises(SrtArchError, match="does not fuse the way the file's model was fused"):
        other = models.create("resnet18", num_classes=10)
        other.bn1 = nn.Identity()
        sparse_rt.load(path, arch=other)


@requires_compiled_ops
def test_a_fused_bert_saves_and_loads_with_its_blocks_fused_again(tmp_path):
    model = _sparse(_small_bert(), 0.7)
    report = model.fuse()
    assert len(report.fused_mlps) == 2 and len(report.shared_input_linears) == 2
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        expected = model(x)
    model.save(tmp_path / "bert.srt")
    loaded = sparse_rt.load(tmp_path / "bert.srt", arch="bert_encoder",
                            arch_kwargs={"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128})
    assert loaded.fusion.to_json() == report.to_json()
    with torch.inference_mode():
        assert torch.equal(loaded(x), expected)


def _small_bert():
    return models.create("bert_encoder", layers=2, hidden=64, heads=4, intermediate=128).eval()


def _fused_example(arch, images):
    """(a fused sparse model of `arch`, an input for it: 2 sequences of 9 tokens, or `images` images)."""
    build = {"resnet18": _resnet18, "bert": _small_bert,
             "mobilenet_v2": lambda: models.create("mobilenet_v2", num_classes=10).eval(),
             "bottlenecks": _strided_bottlenecks, "first_stage": _first_stage_bottlenecks}[arch]
    model = _sparse(build())
    model.fuse()
    x = (torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(7)) if arch == "bert"
         else torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(7)))
    return model, x


@requires_compiled_ops
@pytest.mark.parametrize("flavor", ["portable", "sparse"])
@pytest.mark.parametrize("arch", ["resnet18", "bert", "mobilenet_v2", "bottlenecks", "first_stage"])
def test_a_fused_model_exports_to_onnx_with_the_same_outputs(tmp_path, flavor, arch):
    """mobilenet_v2: pairs of pointwise convolutions in one op, exported as the two layers;
    bottlenecks: a bottleneck block in one op, exported as its three layers; first_stage: a block with
    its shortcut in one op, exported as its four layers."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    if flavor == "sparse":
        pytest.importorskip("onnxruntime_extensions")
    model, x = _fused_example(arch, images=1)
    with torch.inference_mode():
        expected = model(x)
    path = tmp_path / f"{flavor}.onnx"
    model.export_onnx(path, (x,), flavor=flavor)
    sess = (sparse_rt.onnx.session(str(path)) if flavor == "sparse"
            else ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert rel_err(out, expected) < 1e-5


@requires_compiled_ops
@pytest.mark.parametrize("arch", ["bert", "mobilenet_v2", "bottlenecks", "first_stage"])
def test_a_fused_model_pickles_with_its_fused_calls(tmp_path, arch):
    """torch.save / torch.load of the whole fused model (the functions fuse() puts in the graph stay
    calls when unpickling traces its code again; the zoo's string annotations are not globals)."""
    model, x = _fused_example(arch, images=2)
    with torch.inference_mode():
        expected = model(x)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)

    def calls(module):
        return [(n.op, getattr(n.target, "__name__", n.target)) for n in module.graph.nodes]

    assert calls(loaded.module) == calls(model.module) and loaded.fusion.to_json() == model.fusion.to_json()
    with torch.inference_mode():
        assert torch.equal(loaded(x), expected)


def test_fused_layers_report_their_epilogue():
    layer = SparseLinear.from_dense(nn.Linear(3, 2))
    layer.relu = True
    assert "relu=True" in repr(layer)
    conv = SparseConv2d.from_dense(nn.Conv2d(2, 2, 3))
    y = conv(torch.randn(1, 2, 5, 5), residual=torch.randn(2, 3, 3))  # broadcasts: added after the kernel
    assert y.shape == (1, 2, 3, 3)


@requires_compiled_ops
def test_fused_bert_blocks_pass_their_layers_packings_with_the_very_same_values(monkeypatch):
    """At 4 x 128 tokens (PACKING_MIN_ROWS) the fused feed-forward and query/key/value calls read every
    layer's packing; the outputs are those of the unpacked model bit for bit."""
    bert = models.create("bert_encoder", layers=1, hidden=384, heads=4, intermediate=768).eval()
    model = _sparse(bert, 0.8)
    model.fuse()
    x = torch.randn(4, 128, 384, generator=torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    with torch.inference_mode():
        monkeypatch.setenv("SPARSE_RT_PACK_NONZEROS", "0")
        expected = model(x)
        assert all(layer.packing(x) is None for layer in layers)
        monkeypatch.delenv("SPARSE_RT_PACK_NONZEROS")
        for layer in layers:
            layer.repack()
        assert torch.equal(model(x), expected)
    assert all(layer._packing is not None for layer in layers)


def _small_caches(monkeypatch, l2, l3):
    sizes = {2: l2, 3: l3}
    monkeypatch.setattr(fusion, "cache_bytes", lambda level: sizes.get(level))


def _fused_resnet18_batch(monkeypatch, l2, l3, seed):
    """Fused sparse resnet18 with the given cache sizes, and a batch of 4 images of 64x64 pixels."""
    _small_caches(monkeypatch, l2, l3)
    model = _sparse(_resnet18(), exclude=models.keep_dense("resnet18"))
    model.fuse()
    return model, torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _batch_sizes_seen(layer):
    """The batch sizes `layer` is called with, from now on."""
    seen = []
    layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen


@requires_compiled_ops
@pytest.mark.parametrize("l3, images", [(1 << 20, 1), (2 << 20, 2)])
def test_a_fused_cnn_runs_its_first_stages_in_parts_of_the_batch_with_the_same_outputs(monkeypatch, l3, images):
    # At 64x64 pixels, resnet18's stem conv writes 256 KiB per image and each of layer1's blocks 64 KiB:
    # with a 48 KiB L2 the cut is layer1's end, the batch of 4 (1 MiB at the stem) is split where it
    # fills half of the L3, into parts whose stem output fills at most a quarter of it.
    model, x = _fused_resnet18_batch(monkeypatch, 48 << 10, l3, seed=2)
    layer = model.module.get_submodule
    in_first, after_cut = _batch_sizes_seen(layer("layer1.0.conv1")), _batch_sizes_seen(layer("layer2.0.conv1"))
    with torch.inference_mode():
        whole = model.module(x)
        model(x)  # the plan: one image through the graph
        in_first.clear(), after_cut.clear()
        split = model(x)
        assert in_first == [images] * (4 // images) and after_cut == [4]
        assert rel_err(split, whole) < 1e-5
        in_first.clear()
        model(x[:1])  # one image: run whole
        model(x[:2])  # 512 KiB at the stem, under half the L3 only with the larger one
        assert in_first == [1, 2] if images == 2 else [1, 1, 1]


@requires_compiled_ops
def test_a_split_batch_runs_whole_once_a_layer_was_replaced_and_is_not_copied_along(monkeypatch):
    import copy

    model, x = _fused_resnet18_batch(monkeypatch, 48 << 10, 1 << 20, seed=3)
    with torch.inference_mode():
        model(x)  # the plan is made, holding layer1[0].conv1
        replaced = copy.deepcopy(model.module.get_submodule("layer1.0.conv1"))
        replaced.values.mul_(2)
        model.module.set_submodule("layer1.0.conv1", replaced)
        assert torch.equal(model(x), model.module(x))  # the new layer, not the plan's
        twin = copy.deepcopy(model)
        assert "_split" not in twin.__dict__
        assert torch.equal(twin(x), model(x))


class _BatchMixing(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        return self.conv2(h - h.mean(0, keepdim=True))


def test_no_split_at_the_largest_activation_so_far(monkeypatch):
    # resnet18 at 64x64: the only cuts filling a 96 KiB "L2" are the stem conv's and its ReLU's
    # (256 KiB each); layer1's outputs are 64 KiB.
    model, x = _fused_resnet18_batch(monkeypatch, 96 << 10, 1 << 20, seed=6)
    with torch.inference_mode():
        model(x)
    assert model._split_batch()._plans[((3, 64, 64), torch.float32)] is None


def test_only_nodes_that_treat_each_image_alone_run_in_parts():
    gm, _ = fuse(_BatchMixing().eval())
    assert [n.name for n in fusion._image_cuts(gm.graph)] == ["conv1", "relu"]
    assert fusion._image_cuts(fuse(_Norms().eval())[0].graph) == []  # BERT-like blocks: a LayerNorm first


@requires_compiled_ops
def test_a_fused_model_with_a_split_batch_compiles_whole(monkeypatch):
    model, x = _fused_resnet18_batch(monkeypatch, 48 << 10, 1 << 20, seed=4)
    seen = _batch_sizes_seen(model.module.get_submodule("layer1.0.conv1"))
    with torch.inference_mode():
        compiled = torch.compile(model, backend="eager")(x)  # before any plan was made
        assert seen and all(b == 4 for b in seen)  # traced and run whole: no parts
        assert rel_err(compiled, model.module(x)) < 1e-5


class _AddsInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 8, 3), nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(x.add_(1)))


def test_the_split_plan_leaves_an_input_changed_in_place_changed_once(monkeypatch):
    # The pool's 7.2 KiB per image fill the 4 KiB "L2" and follow the conv's 28.8 KiB: cut there,
    # 4 images split one at a time.
    _small_caches(monkeypatch, 4 << 10, 128 << 10)
    gm, _ = fuse(_AddsInPlace().eval())
    split = fusion.SplitBatch(gm)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected_input = x + 1
    with torch.no_grad():
        expected = gm.pool(gm.conv(expected_input))
        y = split(x)
    assert split._plans[((3, 32, 32), torch.float32)].images == 1
    assert torch.equal(x, expected_input)
    assert rel_err(y, expected) < 1e-6
