"""ONNX export, both flavours: export, onnx.checker (full), onnxruntime run, compare with PyTorch."""

import importlib.util
import os

import pytest
import torch
from helpers import requires_compiled_ops

import sparse_rt
from sparse_rt import models

_MISSING = [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"ONNX export needs {', '.join(_MISSING)}")
if not _MISSING:
    import sparse_rt.onnx  # noqa: F401

HAS_ORTX = importlib.util.find_spec("onnxruntime_extensions") is not None
needs_ortx = pytest.mark.skipif(not HAS_ORTX, reason="the sparse flavour runs through onnxruntime-extensions")

# Every zoo model, small: name -> (kwargs, input shape); the layers left dense are the zoo's own
# (models.keep_dense).
ZOO = {
    "resnet18": ({"num_classes": 10}, (1, 3, 32, 32)),
    "resnet34": ({"num_classes": 10}, (1, 3, 32, 32)),
    "resnet50": ({"num_classes": 10}, (1, 3, 32, 32)),
    "mobilenet_v2": ({"num_classes": 10, "width_mult": 0.5}, (1, 3, 32, 32)),
    "cifar_resnet": ({"depth": 20}, (2, 3, 32, 32)),
    "wrn": ({"depth": 10, "widen_factor": 2}, (1, 3, 32, 32)),
    "vgg_cifar": ({"depth": 11}, (1, 3, 32, 32)),
    "bert_encoder": ({"layers": 1, "hidden": 64, "heads": 4, "intermediate": 128}, (2, 7, 64)),
}
# Exporting is mostly torch.export time, which grows with the graph: the four small graphs run in
# both flavours, the ImageNet ones in the sparse flavour only (the flavours differ per layer, not
# per model) and resnet34 (resnet18's blocks, more of them) not at all by default.
# SPARSE_RT_ONNX_FULL=1 runs the whole matrix (about 2 minutes more on 2 cores).
_DEFAULT_FLAVORS = {"resnet18": ("sparse",), "resnet34": (), "resnet50": ("sparse",), "mobilenet_v2": ("sparse",)}
_FULL = os.environ.get("SPARSE_RT_ONNX_FULL") == "1"


def _matrix():
    for name in sorted(ZOO):
        for flavor in ("portable", "sparse"):
            marks = [pytest.mark.slow] + ([needs_ortx, requires_compiled_ops] if flavor == "sparse" else [])
            if not _FULL and flavor not in _DEFAULT_FLAVORS.get(name, (flavor,)):
                marks.append(pytest.mark.skip(reason="large graph, left to the full run (SPARSE_RT_ONNX_FULL=1)"))
            yield pytest.param(name, flavor, marks=marks, id=f"{name}-{flavor}")


def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 10)).eval()
    return sparse_rt.sparsify(sparse_rt.magnitude_prune(net, 0.9)).eval(), torch.randn(1, 3, 8, 8)


def _sparse_model(name, sparsity=0.9, format="auto", seed=0):
    kwargs, shape = ZOO[name]
    torch.manual_seed(seed)
    pruned = sparse_rt.magnitude_prune(models.create(name, **kwargs).eval(), sparsity, exclude=models.keep_dense(name))
    return pruned, sparse_rt.sparsify(pruned, format=format).eval(), torch.randn(*shape)


def _domains(proto):
    return {n.domain for n in proto.graph.node}


def test_zoo_covered():
    assert sorted(ZOO) == models.names()


@pytest.mark.parametrize("name, flavor", list(_matrix()))
def test_export_check_run_compare(tmp_path, name, flavor):
    import onnx

    _, model, x = _sparse_model(name)
    path = tmp_path / f"{name}.onnx"
    result = model.export_onnx(path, x, flavor=flavor, check=True)
    assert result.max_rel_diff <= 1e-5, result
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 13  # what onnxruntime 1.31 reads
    if flavor == "portable":
        assert _domains(proto) <= {"", "ai.onnx"}
        assert not any(t.name.endswith("col_indices") for t in proto.graph.initializer)
    else:
        assert "sparse_rt" in _domains(proto)
        names = {t.name for t in proto.graph.initializer}
        assert any(n.endswith("crow_indices") for n in names) and any(n.endswith("col_indices") for n in names)


def test_portable_runs_in_stock_onnxruntime(tmp_path):
    import onnxruntime as ort

    model, x = _tiny()
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="portable")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # no extra library
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-5, atol=1e-5)


@needs_ortx
@requires_compiled_ops
def test_sparse_flavour_bsr_and_external_data(tmp_path):
    _, model, x = _sparse_model("bert_encoder", format="bsr:4x4")
    assert any(r.format.startswith("bsr") for r in model.summary())
    path = tmp_path / "bsr.onnx"
    result = sparse_rt.onnx.export(model, path, x, flavor="sparse", check=True, external_data=True)
    assert result.max_rel_diff <= 1e-5
    assert os.path.getsize(str(path) + ".data") > os.path.getsize(path)
    assert result.file_bytes == os.path.getsize(path) + os.path.getsize(str(path) + ".data")


@pytest.mark.slow
@requires_compiled_ops
def test_shape_inference_of_our_ops(tmp_path):
    import onnx

    _, model, x = _sparse_model("cifar_resnet")
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="sparse")
    proto = onnx.load(path)
    del proto.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    ours = [n for n in inferred.graph.node if n.domain == "sparse_rt"]
    assert {n.op_type for n in ours} == {"CsrConv2d", "CsrLinear"}
    first_conv = next(n for n in ours if n.op_type == "CsrConv2d")
    assert shapes[first_conv.output[0]] == [2, 16, 32, 32]  # blocks.0.conv1


@pytest.mark.slow
def test_file_size_at_90_percent(tmp_path):
    """Both flavours at most a quarter of the dense export's bytes."""
    torch.manual_seed(0)
    pruned = sparse_rt.magnitude_prune(models.create("bert_encoder", layers=1, hidden=256, heads=4,
                                                     intermediate=1024).eval(), 0.9)
    model, x = sparse_rt.sparsify(pruned).eval(), torch.randn(1, 16, 256)
    dense_path = tmp_path / "dense.onnx"
    torch.onnx.export(pruned, (x,), str(dense_path), dynamo=True, external_data=False, verbose=False)
    dense_bytes = os.path.getsize(dense_path)
    for flavor in ("portable", "sparse"):
        result = model.export_onnx(tmp_path / f"{flavor}.onnx", x, flavor=flavor)
        assert result.file_bytes <= 0.25 * dense_bytes, (flavor, result.file_bytes, dense_bytes)


class _ConvBnBlock(torch.nn.Module):
    """conv -> bn -> relu (folds entirely), conv -> bn whose conv output is also used elsewhere
    (must stay), and a final conv -> bn that is the graph output (folds, no relu)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.conv3, self.bn3 = torch.nn.Conv2d(8, 6, 1, bias=False), torch.nn.BatchNorm2d(6)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        x = torch.relu(self.bn2(y)) + y
        return self.bn3(self.conv3(x))


def _random_batchnorm_stats(module, generator):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=generator) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=generator)
            m.running_mean = torch.randn(m.num_features, generator=generator)
            m.running_var = torch.rand(m.num_features, generator=generator) + 0.1


@pytest.mark.slow
@needs_ortx
@requires_compiled_ops
def test_sparse_flavour_folds_batchnorm_and_relu(tmp_path):
    import onnx

    torch.manual_seed(0)
    net = _ConvBnBlock().eval()
    _random_batchnorm_stats(net, torch.Generator().manual_seed(1))
    model = sparse_rt.sparsify(sparse_rt.magnitude_prune(net, 0.6), format="csr").eval()
    x = torch.randn(2, 3, 9, 7)
    result = model.export_onnx(tmp_path / "m.onnx", x, flavor="sparse", check=True)
    assert result.max_rel_diff <= 1e-5, result
    graph = onnx.load(tmp_path / "m.onnx").graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("CsrConv2d") == 3
    assert ops.count("BatchNormalization") == 1  # bn2: its conv's output is also added to
    assert ops.count("Relu") == 1  # after the unfolded bn2
    relu = {n.output[0]: onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "relu"))
            for n in graph.node if n.op_type == "CsrConv2d"}
    assert sorted(relu.values()) == [0, 0, 1]
    assert graph.output[0].name in relu  # conv3 + bn3 folded, still the graph output


@pytest.mark.slow
@needs_ortx
@requires_compiled_ops
def test_session_binds_weights_and_releases_them(tmp_path):
    import gc

    import onnx
    import onnxruntime as ort

    from sparse_rt.onnx import runtime

    _, model, x = _sparse_model("cifar_resnet")
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="sparse")
    ours = sum(n.domain == "sparse_rt" for n in onnx.load(path).graph.node)
    before = len(runtime._BOUND_WEIGHTS)
    sess = sparse_rt.onnx.session(path)
    assert len(runtime._BOUND_WEIGHTS) == before + ours
    # The file as it is, in a session the user builds: weights arrive as inputs on every call.
    options = ort.SessionOptions()
    options.register_custom_ops_library(runtime.register_ort_kernels())
    plain = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        expected = model(x)
    for s in (sess, plain):
        torch.testing.assert_close(torch.from_numpy(s.run(None, feed)[0]), expected, rtol=1e-5, atol=1e-5)
    del sess
    gc.collect()
    assert len(runtime._BOUND_WEIGHTS) == before


def test_portable_encoding_roundtrip_with_long_gaps():
    from sparse_rt.onnx.portable import decode, encode

    w = torch.zeros(7, 300)
    w[0, 0], w[0, 299], w[3, 5], w[6, 299] = 1.0, 2.0, -3.0, 4.0  # gaps far beyond 255
    values, deltas = encode(w)
    assert deltas.dtype == torch.uint8
    assert torch.equal(decode(values, deltas, w.shape), w)
    empty_values, empty_deltas = encode(torch.zeros(3, 4))
    assert torch.equal(decode(empty_values, empty_deltas, (3, 4)), torch.zeros(3, 4))


@pytest.mark.slow
@needs_ortx
@requires_compiled_ops
def test_ensemble_exports_with_its_combine_rule(tmp_path):
    import onnx

    from sparse_rt.ensemble import SparseEnsemble

    members = [_sparse_model("cifar_resnet", seed=seed)[1] for seed in (0, 1)]
    ensemble = SparseEnsemble(members, combine="mean_prob").eval()
    assert ensemble.fused is not None  # one graph of fused sparse layers
    x = torch.randn(2, 3, 32, 32)
    result = sparse_rt.onnx.export(ensemble, tmp_path / "ensemble.onnx", x, flavor="sparse", check=True)
    assert result.max_rel_diff <= 1e-5, result
    ops = [n.op_type for n in onnx.load(tmp_path / "ensemble.onnx").graph.node]
    assert ops[-2:] == ["Softmax", "ReduceMean"]  # mean_prob, inside the graph


def test_bad_flavor(tmp_path):
    model, x = _tiny()
    with pytest.raises(ValueError, match="flavor"):
        model.export_onnx(tmp_path / "m.onnx", x, flavor="dense")


def test_session_rejects_unknown_option(tmp_path):
    with pytest.raises(FileNotFoundError):
        sparse_rt.onnx.session(tmp_path / "missing.onnx")
    model, x = _tiny()
    model.export_onnx(tmp_path / "m.onnx", x)
    with pytest.raises(TypeError, match="not_an_option"):
        sparse_rt.onnx.session(tmp_path / "m.onnx", register_ops=False, not_an_option=1)


@pytest.mark.slow
@needs_ortx
@requires_compiled_ops
def test_cli_export(tmp_path, capsys):
    from sparse_rt.cli import main

    out = tmp_path / "m.onnx"
    code = main(["export", "cifar_resnet", "--arch-kwargs", "depth=20", "-o", str(out), "--flavor", "sparse"])
    assert code == 0 and out.exists()
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
