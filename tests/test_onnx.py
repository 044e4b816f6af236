"""ONNX export, both flavours: export, onnx.checker (full), onnxruntime run, compare with PyTorch."""

import importlib.util
import os
import re

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
needs_ortx = pytest.mark.skipif(not HAS_ORTX,
                                reason="the sparse flavour's Python ops run through onnxruntime-extensions")
HAS_NATIVE = sparse_rt.ops.onnxruntime_kernels_library() is not None
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="sparse_rt was built without its onnxruntime kernels "
                                                         "(onnxruntime's headers not found)")
# The ways our ops run in onnxruntime (sparse_rt.onnx.session's `kernels`), each skipped where unavailable.
KERNELS = [pytest.param("native", marks=needs_native), pytest.param("python", marks=needs_ortx)]

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
    sess = sparse_rt.onnx.session(path, kernels="python")
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


# ------------------------------------------------------------------ hostile files in the session
# Before the fixes each of these aborted the process (SIGABRT) inside onnxruntime-extensions, so
# the session runs in a child process with bounded memory and time.

_SESSION_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
import numpy as np, onnxruntime as ort
import sparse_rt.onnx
from sparse_rt.onnx import ops_table, runtime
from sparse_rt.ops import onnxruntime_kernels_library
path, shape, mode, kernels = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
x = np.ones(shape, np.float32)
try:
    if mode == "no_python_check":  # leave the argument checks to the C++ op (its RuntimeError)
        for spec in ops_table.OPS.values():
            object.__setattr__(spec, "check_input", lambda dims, attributes: None)
    if mode == "by_hand":  # the user's own session: no binding, no reporting, no Python checks
        options = ort.SessionOptions()
        library = onnxruntime_kernels_library() if kernels == "native" else runtime.register_ort_kernels()
        options.register_custom_ops_library(library)
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    else:
        sess = sparse_rt.onnx.session(path, kernels=kernels)
    y, = sess.run(None, {"X": x})
    print(json.dumps({"shape": list(y.shape)}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def _model_of(graph, opset=17):
    """A ModelProto of `graph` importing the ONNX opset and our domain."""
    from onnx import helper

    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("sparse_rt", 1)],
                             ir_version=8 if opset < 19 else 9)


def _native_session_by_hand(source, threads=None):
    """An onnxruntime session of `source` (a path or serialized bytes) with our native kernels
    registered as a user would, without sparse_rt.onnx.session's checks and rewrites."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.register_custom_ops_library(sparse_rt.ops.onnxruntime_kernels_library())
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                providers=["CPUExecutionProvider"])


def _session_in_child(path, x_shape, mode="session", kernels="python"):
    import json
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.run([sys.executable, "-c", _SESSION_CHILD, str(path), json.dumps(x_shape), mode, kernels],
                           capture_output=True, text=True, timeout=120, env=env)
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def _hostile_model(path, op="CsrLinear", x_dims=(2, 8), in_features=8, rows=4, dtype="float32", block=None,
                   conv=None, padding=0, in_subgraph=None, forge_col=False):
    """A one-node file of our domain with a valid (unless told) weight; `conv` = (in_channels, k);
    `in_subgraph`: None (the main graph), "if" or "scan"."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    block_rows, bh, bw = (rows // block[0], *block) if block else (rows, 1, 1)
    crow = np.arange(block_rows + 1, dtype=np.int32)
    col = np.zeros(block_rows, np.int32)
    if forge_col:
        col[0] = 10**6
    values = np.ones((block_rows, bh, bw) if block else (block_rows,), dtype)
    weights = [numpy_helper.from_array(a, name) for a, name in
               ((crow, "crow"), (col, "col"), (values, "values"), (np.zeros(rows, dtype), "bias"))]
    if conv:
        attributes = dict(in_channels=conv[0], kernel_h=conv[1], kernel_w=conv[1], stride_h=1, stride_w=1,
                          pad_h=padding, pad_w=padding, dilation_h=1, dilation_w=1, group=1, relu=0)
    else:
        attributes = dict(in_features=in_features, relu=0)
    node = helper.make_node(op, ["X", "crow", "col", "values", "bias"], ["Y"], domain="sparse_rt", **attributes)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_dims))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    if in_subgraph == "scan":  # Y = Squeeze(Scan(Unsqueeze(X)) { our node on each slice, of unknown dims })
        node.input[0], node.output[0] = "x_t", "y_t"
        unknown = [None] * len(x_dims)  # every op of ours keeps X's rank
        body = helper.make_graph([node], "body", [helper.make_tensor_value_info("x_t", TensorProto.FLOAT, unknown)],
                                 [helper.make_tensor_value_info("y_t", TensorProto.FLOAT, unknown)])
        weights.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
        nodes = [helper.make_node("Unsqueeze", ["X", "axes"], ["X_seq"]),
                 helper.make_node("Scan", ["X_seq"], ["Y_seq"], body=body, num_scan_inputs=1),
                 helper.make_node("Squeeze", ["Y_seq", "axes"], ["Y"])]
        graph = helper.make_graph(nodes, "hostile", [x], [y], initializer=weights)
    elif in_subgraph == "if":  # If(true) { weights as Constants, our node } else { Identity }
        constants = [helper.make_node("Constant", [], [w.name], value=w) for w in weights]
        weights = []
        branch = helper.make_graph([*constants, node], "then", [], [y])
        other = helper.make_graph([helper.make_node("Identity", ["X"], ["Y2"])], "else", [],
                                  [helper.make_tensor_value_info("Y2", TensorProto.FLOAT, None)])
        weights.append(numpy_helper.from_array(np.array(True), "condition"))
        node = helper.make_node("If", ["condition"], ["Out"], then_branch=branch, else_branch=other)
        y = helper.make_tensor_value_info("Out", TensorProto.FLOAT, None)
    if in_subgraph != "scan":
        graph = helper.make_graph([node], "hostile", [x], [y], initializer=weights)
    model = _model_of(graph)
    onnx.save(model, path)
    return path


_HOSTILE = {
    "width": (dict(x_dims=(2, 6)), (2, 6), r"X has shape \[2, 6\] but in_features=8"),
    "width_at_run_time": (dict(x_dims=("N", "W")), (2, 6), r"X has shape \[2, 6\] but in_features=8"),
    "kernel_larger_than_input": (dict(op="CsrConv2d", conv=(1, 5), x_dims=(1, 1, 3, 3)), (1, 1, 3, 3),
                                 r"X has shape \[1, 1, 3, 3\], smaller than the dilated kernel 5x5"),
    "kernel_larger_at_run_time": (dict(op="CsrConv2d", conv=(1, 5), x_dims=(1, 1, "H", "W")), (1, 1, 3, 3),
                                  r"X has shape \[1, 1, 3, 3\], smaller than the dilated kernel 5x5"),
    "fp16_weights": (dict(dtype="float16"), (2, 8), r"values is torch.float16, but onnxruntime runs our ops in "
                                                    r"float32 only"),
    "bsr_blocks_too_tall": (dict(op="BsrLinear", rows=128, block=(128, 8)), (2, 8),
                            r"block height 128 exceeds the CPU kernel's maximum 64"),
    # A failing kernel's empty output must keep X's rank: another rank inside a Scan body made
    # onnxruntime size the scan's output from a negative shape and abort.
    "kernel_failing_in_scan": (dict(op="CsrConv2d", conv=(3, 3), x_dims=(1, 4, 6, 6), in_subgraph="scan"),
                               (1, 4, 6, 6), r"X has shape \[1, 4, 6, 6\] but in_channels=3"),
    "forged_index_in_subgraph": (dict(in_subgraph="if", forge_col=True), (2, 8),
                                 r"col_indices\[0\]=1000000 is out of range \[0, 8\)"),
}


@pytest.mark.slow  # a child process with torch and onnxruntime
@requires_compiled_ops
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_session_refuses_what_would_abort_at_run_time(tmp_path, name, kernels):
    """Refused when the session is built (ValueError, naming the file and node) or, for dims the
    graph leaves symbolic, by a clean exception from session.run (ValueError from the Python ops,
    onnxruntime's InvalidArgument from the native kernels, naming the node); never an abort."""
    options, x_shape, message = _HOSTILE[name]
    path = _hostile_model(tmp_path / f"{name}.onnx", **options)
    got = _session_in_child(path, x_shape, kernels=kernels)
    assert re.search(message, got.get("message", "")), got
    if got["error"] == "ValueError":
        assert f"{name}.onnx: node" in got["message"]
    else:
        assert kernels == "native" and got["error"] == "InvalidArgument", got
        assert f"sparse_rt.{options.get('op', 'CsrLinear')} node" in got["message"]


@pytest.mark.slow  # a child process with torch and onnxruntime
@needs_native
@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_native_kernels_refuse_hostile_files_on_their_own(tmp_path, name):
    """The native kernels in a session the user builds, without sparse_rt's Python checks: every
    file is refused cleanly by the kernel (or, for fp16 weights, by onnxruntime's type check)."""
    options, x_shape, message = _HOSTILE[name]
    path = _hostile_model(tmp_path / f"{name}.onnx", **options)
    got = _session_in_child(path, x_shape, mode="by_hand", kernels="native")
    if name == "fp16_weights":
        assert got.get("error") == "InvalidGraph" and "tensor(float16)" in got["message"], got
    else:
        assert got.get("error") == "InvalidArgument" and re.search(message, got["message"]), got


@pytest.mark.slow  # a child process with torch and onnxruntime
@needs_native
def test_native_output_too_large_fails_the_run_cleanly(tmp_path):
    path = _hostile_model(tmp_path / "m.onnx", op="CsrConv2d", conv=(3, 3), x_dims=(1, 3, 6, 6), padding=2**31 - 1)
    got = _session_in_child(path, (1, 3, 6, 6), kernels="native")
    assert got.get("error") == "InvalidArgument", got
    assert "the output [1, 4, 4294967298, 4294967298] would hold more bytes than int64 counts" in got["message"]


@needs_native
def test_native_kernels_check_index_inputs_that_change(tmp_path):
    """Indices that are graph inputs, not initializers, are checked on every call: a valid call
    first, then the same session fed an out-of-range column."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("CsrLinear", ["X", "crow", "col", "values", "bias"], ["Y"], domain="sparse_rt",
                            in_features=8, relu=0)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8]),
              helper.make_tensor_value_info("crow", TensorProto.INT32, [5]),
              helper.make_tensor_value_info("col", TensorProto.INT32, [4])]
    weights = [numpy_helper.from_array(np.ones(4, np.float32), "values"),
               numpy_helper.from_array(np.zeros(4, np.float32), "bias")]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=weights)
    model = _model_of(graph)
    onnx.save(model, tmp_path / "m.onnx")
    sess = _native_session_by_hand(tmp_path / "m.onnx")
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    crow = np.arange(5, dtype=np.int32)
    (y,) = sess.run(None, {"X": x, "crow": crow, "col": np.array([0, 3, 5, 7], np.int32)})
    np.testing.assert_array_equal(y, x[:, [0, 3, 5, 7]])
    with pytest.raises(Exception, match=r"col_indices\[2\]=8 is out of range \[0, 8\)"):
        sess.run(None, {"X": x, "crow": crow, "col": np.array([0, 3, 8, 7], np.int32)})
    with pytest.raises(Exception, match=r"crow_indices must be non-decreasing"):
        sess.run(None, {"X": x, "crow": np.array([0, 2, 1, 3, 4], np.int32), "col": np.zeros(4, np.int32)})


@requires_compiled_ops
@needs_native
@needs_ortx
@pytest.mark.parametrize("name, format", [("cifar_resnet", "auto"), ("bert_encoder", "auto"),
                                          ("bert_encoder", "bsr:4x4")])
@pytest.mark.parametrize("batch", [1, 9])  # 9: the tiled SpMM's batches (csr_linear.h kTiledMinBatch)
def test_native_and_python_kernels_agree(tmp_path, name, format, batch):
    """Both ways of running our ops give the PyTorch model's output; on the file as it is (no
    residual folding), each other's bit for bit (the same CPU kernels, each row's sum in the same
    order, whatever the thread split), but where the native kernel runs a 3x3 convolution over its input
    unfolded with the packing it keeps (the Python kernels get none: tap offsets), within fp32 rounding."""

    _, model, x = _sparse_model(name, format=format)
    x = x[:1].expand(batch, *x.shape[1:]).contiguous() + 0.01 * torch.randn(batch, *x.shape[1:])
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="sparse")
    with torch.inference_mode():
        expected = model(x)
    sessions = {kernels: sparse_rt.onnx.session(path, kernels=kernels, intra_op_num_threads=2)
                for kernels in ("native", "python")}
    sessions["native, file as it is"] = _native_session_by_hand(path, threads=2)
    got = {}
    for kernels, sess in sessions.items():
        got[kernels] = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        torch.testing.assert_close(got[kernels], expected, rtol=1e-5, atol=1e-5)
    if name == "cifar_resnet" and batch > 1:
        torch.testing.assert_close(got["native, file as it is"], got["python"], rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(got["native, file as it is"], got["python"])


@needs_native
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (1, 1, 0)])  # packed and direct layouts
def test_native_conv_keeps_tap_offsets_per_input_size(tmp_path, kernel, stride, padding):
    """A CsrConv2d node keeps its constant weight's tap offsets for the input size of its last call:
    calls alternating between sizes and batches each give the dense convolution's output."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cin, cout = 6, 10
    g = torch.Generator().manual_seed(3)
    shape = (cout, cin, kernel, kernel)
    dense = torch.randn(*shape, generator=g) * (torch.rand(*shape, generator=g) < 0.4)
    csr = dense.reshape(cout, -1).to_sparse_csr()
    bias = torch.randn(cout, generator=g)
    weights = [numpy_helper.from_array(a, name) for a, name in (
        (csr.crow_indices().int().numpy(), "crow"), (csr.col_indices().int().numpy(), "col"),
        (csr.values().numpy(), "values"), (bias.numpy(), "bias"))]
    node = helper.make_node("CsrConv2d", ["X", "crow", "col", "values", "bias"], ["Y"], domain="sparse_rt",
                            in_channels=cin, kernel_h=kernel, kernel_w=kernel, stride_h=stride, stride_w=stride,
                            pad_h=padding, pad_w=padding, dilation_h=1, dilation_w=1, group=1, relu=0)
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", cin, "H", "W"])
    graph = helper.make_graph([node], "g", [x_info], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=weights)
    onnx.save(_model_of(graph), tmp_path / "m.onnx")
    sess = _native_session_by_hand(tmp_path / "m.onnx", threads=2)
    for shape in [(1, cin, 8, 8), (2, cin, 11, 9), (1, cin, 11, 9), (3, cin, 8, 8)]:
        x = torch.randn(*shape, generator=g)
        expected = torch.nn.functional.conv2d(x.double(), dense.double(), bias.double(), stride, padding)
        (y,) = sess.run(None, {"X": x.numpy()})
        np.testing.assert_allclose(y, expected.numpy(), rtol=1e-5, atol=1e-5, err_msg=str(shape))


@requires_compiled_ops
@needs_native
def test_native_session_runs_residual_adds_in_the_epilogue(tmp_path):
    """cifar_resnet's residual Add + Relu after each block's last conv become that conv's residual
    input and relu=1 in a native session: same output as the file run as it is, bit for bit."""
    import numpy as np
    import onnx

    from sparse_rt.onnx import fold, runtime

    _, model, x = _sparse_model("cifar_resnet")
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="sparse")
    proto = onnx.load(path)
    def count(op_type):
        return sum(n.op_type == op_type for n in proto.graph.node)

    adds, relus = count("Add"), count("Relu")
    assert adds == 9  # three stages of three blocks
    assert fold.fold_residual_add_and_relu(proto, runtime.value_dims(proto)) == 2 * adds
    ours = [n for n in proto.graph.node if n.domain == "sparse_rt"]
    assert sum(len(n.input) == 6 and any(a.name == "relu" and a.i == 1 for a in n.attribute) for n in ours) == adds
    assert (count("Add"), count("Relu")) == (0, relus - adds)
    known = {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:  # still topologically sorted
        assert all(name in known for name in node.input if name), node.name
        known.update(node.output)

    feed = x.numpy()
    fused = sparse_rt.onnx.session(path, kernels="native")
    as_is = _native_session_by_hand(path)
    got = [s.run(None, {s.get_inputs()[0].name: feed})[0] for s in (fused, as_is)]
    np.testing.assert_array_equal(got[0], got[1])
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(got[0]), model(x), rtol=1e-5, atol=1e-5)


def _linear_then_add(addend_dims, residual_input=False):
    """CsrLinear [2, 8] -> [2, 4], then Add(Y, R) with R an input of `addend_dims`; or, with
    residual_input, the native op's sixth input taking R directly."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(a, name) for a, name in (
        (np.arange(5, dtype=np.int32), "crow"), (np.array([0, 3, 5, 7], np.int32), "col"),
        (np.ones(4, np.float32), "values"), (np.zeros(4, np.float32), "bias"))]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8]),
              helper.make_tensor_value_info("R", TensorProto.FLOAT, list(addend_dims))]
    names = ["X", "crow", "col", "values", "bias"]
    if residual_input:
        nodes = [helper.make_node("CsrLinear", [*names, "R"], ["Out"], domain="sparse_rt", in_features=8, relu=0)]
    else:
        nodes = [helper.make_node("CsrLinear", names, ["Y"], domain="sparse_rt", in_features=8, relu=0),
                 helper.make_node("Add", ["Y", "R"], ["Out"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("Out", TensorProto.FLOAT, None)],
                              initializer=weights)
    return _model_of(graph)


@requires_compiled_ops
def test_residual_fold_leaves_broadcasting_adds():
    from sparse_rt.onnx import fold, runtime

    for dims in ([4], [1, 4], ["N", 4]):
        proto = _linear_then_add(dims)
        assert fold.fold_residual_add_and_relu(proto, runtime.value_dims(proto)) == 0, dims
        assert [n.op_type for n in proto.graph.node] == ["CsrLinear", "Add"]
    proto = _linear_then_add([2, 4])
    assert fold.fold_residual_add_and_relu(proto, runtime.value_dims(proto)) == 1
    assert [(n.op_type, list(n.input[5:])) for n in proto.graph.node] == [("CsrLinear", ["R"])]


@needs_native
def test_native_residual_must_match_the_output(tmp_path):
    import numpy as np
    import onnx

    onnx.save(_linear_then_add(["A", "B"], residual_input=True), tmp_path / "m.onnx")
    sess = _native_session_by_hand(tmp_path / "m.onnx")
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    r = np.full((2, 4), 100, np.float32)
    np.testing.assert_array_equal(sess.run(None, {"X": x, "R": r})[0], x[:, [0, 3, 5, 7]] + r)
    with pytest.raises(Exception, match=r"residual has shape \[1, 4\] but the output has shape \[2, 4\]"):
        sess.run(None, {"X": x, "R": r[:1]})


@requires_compiled_ops
@needs_native
@pytest.mark.parametrize("batch", [1, 9])  # 9: the tiled SpMM's batches (csr_linear.h kTiledMinBatch)
def test_native_session_groups_linears_reading_one_input(tmp_path, batch):
    """BERT's query, key and value projections (CsrLinear nodes reading one X) become one
    CsrLinears node in a native session: same output as the file run as it is, bit for bit (each
    row's sum is the same, only the packing of X and the thread split are shared)."""
    import numpy as np
    import onnx

    from sparse_rt.onnx import fold

    _, model, x = _sparse_model("bert_encoder", format="csr")
    x = x[:1].expand(batch, *x.shape[1:]).contiguous() + 0.01 * torch.randn(batch, *x.shape[1:])
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="sparse")
    proto = onnx.load(path)
    linears = sum(n.op_type == "CsrLinear" for n in proto.graph.node)
    assert fold.group_linears_sharing_input(proto) == 2  # the one layer's three projections: one node
    grouped = [n for n in proto.graph.node if n.op_type == "CsrLinears"]
    assert len(grouped) == 1 and len(grouped[0].input) == 1 + 3 * 4 and len(grouped[0].output) == 3
    assert sum(n.op_type == "CsrLinear" for n in proto.graph.node) == linears - 3
    known = {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:  # still topologically sorted
        assert all(name in known for name in node.input if name), node.name
        known.update(node.output)

    sessions = [_native_session_by_hand(source) for source in (proto.SerializeToString(), path)]
    got = [s.run(None, {s.get_inputs()[0].name: x.numpy()})[0] for s in sessions]
    np.testing.assert_array_equal(got[0], got[1])
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(got[0]), model(x), rtol=1e-5, atol=1e-5)


@requires_compiled_ops
@needs_native
def test_native_session_packs_constant_weights_without_changing_the_output(tmp_path, monkeypatch):
    """A native session packs constant weights' nonzeros for the tiled SpMM (cpu::pack_nonzeros,
    whose kernel the C++ tests check is taken and exact) on their first tiled call: a BERT layer wide
    enough to pack, 70 token rows (a packed 64-row panel and an unpacked partial one), gives the
    output of a session made with SPARSE_RT_PACK_NONZEROS=0 bit for bit, and torch's."""
    import numpy as np

    from sparse_rt.onnx import session as make_session

    torch.manual_seed(0)
    dense = models.create("bert_encoder", layers=1, hidden=384, heads=6, intermediate=768).eval()
    model = sparse_rt.sparsify(sparse_rt.magnitude_prune(dense, 0.8), format="csr").eval()
    x = torch.randn(1, 70, 384)
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="sparse")
    packed = make_session(path, intra_op_num_threads=2)
    monkeypatch.setenv("SPARSE_RT_PACK_NONZEROS", "0")
    unpacked = make_session(path, intra_op_num_threads=2)
    got = [s.run(None, {s.get_inputs()[0].name: x.numpy()})[0] for s in (packed, unpacked, packed)]
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[2], got[1])  # the packing kept, not rebuilt
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(got[0]), model(x), rtol=1e-5, atol=1e-5)


@requires_compiled_ops
@needs_native
def test_native_packed_weights_on_dlmc_transformer_patterns(dlmc, monkeypatch):
    """Real pruned patterns (DLMC transformer, 90%), one CsrLinear per shape, 70 rows: packed and
    unpacked sessions agree bit for bit and with the product in double."""
    import gzip

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from sparse_rt.formats.smtx import load_smtx

    shapes = {}
    for path in sorted((dlmc / "transformer/magnitude_pruning/0.9").glob("*.smtx.gz")):
        with gzip.open(path, "rt") as f:
            shapes.setdefault(tuple(f.readline().split(",")[:2]), path)
    assert shapes
    for path in shapes.values():
        w = load_smtx(path, seed=0)
        rows, cols = w.shape
        weights = [numpy_helper.from_array(t.numpy(), name) for t, name in (
            (w.crow_indices, "crow"), (w.col_indices, "col"), (w.values, "values"), (torch.zeros(rows), "bias"))]
        node = helper.make_node("CsrLinear", ["X", "crow", "col", "values", "bias"], ["Y"], name="linear",
                                domain="sparse_rt", in_features=cols, relu=0)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", cols])],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=weights)
        source = _model_of(graph, opset=20).SerializeToString()
        x = np.random.default_rng(1).standard_normal((70, cols), dtype=np.float32)
        monkeypatch.delenv("SPARSE_RT_PACK_NONZEROS", raising=False)
        packed = _native_session_by_hand(source, threads=2).run(None, {"X": x})[0]
        monkeypatch.setenv("SPARSE_RT_PACK_NONZEROS", "0")
        unpacked = _native_session_by_hand(source, threads=2).run(None, {"X": x})[0]
        np.testing.assert_array_equal(packed, unpacked, err_msg=path.name)
        expected = torch.from_numpy(x).double() @ w.to_dense().double().T
        torch.testing.assert_close(torch.from_numpy(packed).double(), expected, rtol=1e-5, atol=1e-4, msg=path.name)


@requires_compiled_ops
@needs_native
def test_native_packed_pointwise_convolutions_on_dlmc_rn50_patterns(dlmc, monkeypatch):
    """Real pruned 1x1 layers (DLMC ResNet-50, 90%), one CsrConv2d per shape over 3 images of 7x7
    (panels across the images): packed and unpacked sessions agree bit for bit and with the
    convolution in double."""
    import gzip

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from sparse_rt.formats.smtx import load_smtx

    shapes = {}
    for path in sorted((dlmc / "rn50/magnitude_pruning/0.9").glob("*.smtx.gz")):
        with gzip.open(path, "rt") as f:
            rows, cols = (int(v) for v in f.readline().split(",")[:2])
        if not (cols % 9 == 0 and cols // 9 >= 64):  # 1x1 layers only
            shapes.setdefault((rows, cols), path)
    packable = 0
    for (rows, cols), path in shapes.items():
        w = load_smtx(path, seed=0)
        packable += sparse_rt.ops.pack_csr(w.crow_indices, w.col_indices, w.values, cols).numel() > 0
        weights = [numpy_helper.from_array(t.numpy(), name) for t, name in (
            (w.crow_indices, "crow"), (w.col_indices, "col"), (w.values, "values"), (torch.zeros(rows), "bias"))]
        node = helper.make_node("CsrConv2d", ["X", "crow", "col", "values", "bias"], ["Y"], name="conv",
                                domain="sparse_rt", in_channels=cols, kernel_h=1, kernel_w=1, stride_h=1, stride_w=1,
                                pad_h=0, pad_w=0, dilation_h=1, dilation_w=1, group=1, relu=0)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                              ["N", cols, 7, 7])],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=weights)
        source = _model_of(graph, opset=20).SerializeToString()
        x = np.random.default_rng(1).standard_normal((3, cols, 7, 7), dtype=np.float32)
        monkeypatch.delenv("SPARSE_RT_PACK_NONZEROS", raising=False)
        packed = _native_session_by_hand(source, threads=2).run(None, {"X": x})[0]
        monkeypatch.setenv("SPARSE_RT_PACK_NONZEROS", "0")
        unpacked = _native_session_by_hand(source, threads=2).run(None, {"X": x})[0]
        np.testing.assert_array_equal(packed, unpacked, err_msg=path.name)
        expected = torch.nn.functional.conv2d(torch.from_numpy(x).double(), w.to_dense().double()[:, :, None, None])
        torch.testing.assert_close(torch.from_numpy(packed).double(), expected, rtol=1e-5, atol=1e-4, msg=path.name)
    assert packable > 0


def _linear_then_gelu(approximate="none", relu=0, also_output=False):
    """CsrLinear [N, 8] -> [N, 4] (columns 0, 3, 5, 7, values 1, 2, 3, 4) then Gelu; with
    also_output the linear's output is a graph output too."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(a, name) for a, name in (
        (np.arange(5, dtype=np.int32), "crow"), (np.array([0, 3, 5, 7], np.int32), "col"),
        (np.arange(1, 5, dtype=np.float32), "values"), (np.array([0.5, -1, 0, 2], np.float32), "bias"))]
    nodes = [helper.make_node("CsrLinear", ["X", "crow", "col", "values", "bias"], ["Y"], name="linear",
                              domain="sparse_rt", in_features=8, relu=relu),
             helper.make_node("Gelu", ["Y"], ["Out"], approximate=approximate)]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in ("Out",) + (("Y",) if also_output else ())]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 8])], outputs,
                              initializer=weights)
    return _model_of(graph, opset=20)


def _assert_left_alone(rewrite, cases):
    """`rewrite` (one of fold's, on a ModelProto) removes no node from any of `cases` (why -> model)
    and leaves their nodes as they were."""
    for why, proto in cases.items():
        before = [n.op_type for n in proto.graph.node]
        assert rewrite(proto) == 0, why
        assert [n.op_type for n in proto.graph.node] == before, why


@requires_compiled_ops
def test_gelu_folded_only_in_its_exact_form_after_a_linear_without_relu():
    from sparse_rt.onnx import fold

    _assert_left_alone(fold.fold_gelu, {
        "tanh form": _linear_then_gelu("tanh"), "after a ReLU": _linear_then_gelu(relu=1),
        "output used twice": _linear_then_gelu(also_output=True)})
    proto = _linear_then_gelu()
    assert fold.fold_gelu(proto) == 1
    (node,) = proto.graph.node
    assert list(node.output) == ["Out"] and {a.name: a.i for a in node.attribute}["gelu"] == 1


@requires_compiled_ops
@needs_native
def test_native_session_runs_bert_gelu_in_the_epilogue_and_attention_and_feed_forward_as_one_node(tmp_path):
    """The feed-forward block's Gelu folds into its first linear layer, attention into one
    ScaledDotProductAttention and the feed-forward block into one CsrMlp, in a native session, whose
    output stays within 1e-5 of the PyTorch model's."""
    import onnx

    from sparse_rt.onnx import fold
    from sparse_rt.onnx.runtime import value_dims

    _, model, x = _sparse_model("bert_encoder", format="csr")
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, flavor="sparse")
    assert fold.fold_gelu(onnx.load(path)) == 1  # the one layer's
    proto = onnx.load(path)
    assert fold.fold_attention(proto, value_dims(proto)) == 11  # its attention, one node
    fold.fold_residual_add_and_relu(proto, value_dims(proto))
    fold.fold_gelu(proto)
    assert fold.fuse_feed_forward(proto) == 1  # its feed-forward block, one node
    (mlp,) = [n for n in proto.graph.node if n.op_type == "CsrMlp"]
    assert len(mlp.input) == 10 and {a.name: a.i for a in mlp.attribute}["gelu"] == 1  # with the residual
    sess = sparse_rt.onnx.session(path, kernels="native")
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize("batch", [1, 9, 70])  # the gather kernel; the tiled one, one panel and two
def test_native_linear_applies_gelu_in_its_epilogue(tmp_path, batch):
    """gelu=1 on the native CsrLinear: the exact GELU of x W^T + b, for outputs across GELU's
    range, within the kernel's bound (3e-7 |x| plus rounding); relu and gelu together refused."""
    import numpy as np
    import onnx

    from sparse_rt.onnx import fold

    proto = _linear_then_gelu()
    assert fold.fold_gelu(proto) == 1
    onnx.save(proto, tmp_path / "m.onnx")
    sess = _native_session_by_hand(tmp_path / "m.onnx")
    x = torch.linspace(-4, 4, batch * 8, dtype=torch.float64).reshape(batch, 8)
    pre = x[:, [0, 3, 5, 7]] * torch.arange(1, 5) + torch.tensor([0.5, -1, 0, 2])
    (y,) = sess.run(None, {"X": x.float().numpy()})
    np.testing.assert_allclose(y, torch.nn.functional.gelu(pre).numpy(), rtol=1e-6, atol=1e-6)

    onnx.save(_linear_then_gelu(relu=1), tmp_path / "both.onnx")
    both = onnx.load(tmp_path / "both.onnx")
    both.graph.node[0].attribute.append(onnx.helper.make_attribute("gelu", 1))
    with pytest.raises(Exception, match=r"CsrLinear node 'linear': relu and gelu cannot both be set"):
        _native_session_by_hand(both.SerializeToString())


def _two_linears(shared_input=True, relu=(0, 0), residual=False, col_as_input=False):
    """Two CsrLinear nodes [N, 8] -> [N, 4] reading X (the second reads X2 unless shared_input),
    columns {0, 3, 5, 7} and {1, 2, 4, 6}; with residual the second adds R; with col_as_input its
    col_indices are a graph input."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(a, name) for a, name in (
        (np.arange(5, dtype=np.int32), "crow"), (np.array([0, 3, 5, 7], np.int32), "col0"),
        (np.array([1, 2, 4, 6], np.int32), "col1"), (np.ones(4, np.float32), "values"),
        (np.zeros(4, np.float32), "bias"))]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", "F"])
              for name in ("X",) + (() if shared_input else ("X2",))]
    if col_as_input:
        weights = [w for w in weights if w.name != "col1"]
        inputs.append(helper.make_tensor_value_info("col1", TensorProto.INT32, [4]))
    second = ["X" if shared_input else "X2", "crow", "col1", "values", "bias"] + (["X"] if residual else [])
    nodes = [helper.make_node("CsrLinear", ["X", "crow", "col0", "values", "bias"], ["Y0"], name="first",
                              domain="sparse_rt", in_features=8, relu=relu[0]),
             helper.make_node("CsrLinear", second, ["Y1"], name="second", domain="sparse_rt", in_features=8,
                              relu=relu[1])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("Y0", "Y1")]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=weights)
    return _model_of(graph)


@requires_compiled_ops
def _attention_written_out(scaling="Mul", factor_first=False, mask=False, probs_also_output=False, batch=2,
                           key_heads=(2, 4)):
    """Attention over q, k, v [batch, 7, 8] in 2 heads of 4 as the exporter writes it: heads split
    by Reshape/Transpose (K's into `key_heads`), MatMul, `scaling` by 0.5 (Mul or Div, the factor
    first with factor_first), optionally + a mask, Softmax, MatMul, heads merged back."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(a, name) for a, name in (
        (np.array([2, 7, 2, 4]), "heads"), (np.array([2, 7, *key_heads]), "key_heads"), (np.array([2, 7, 8]), "merged"),
        (np.array(0.5, np.float32), "factor"), (np.zeros((7, 7), np.float32), "mask"))]
    scaled = "scaled" if mask else "logits"

    def reshaped_and_transposed(source, shape, perm, output):
        return [helper.make_node("Reshape", [source, shape], [f"{source}4"]),
                helper.make_node("Transpose", [f"{source}4"], [output], perm=perm)]

    nodes = [
        *reshaped_and_transposed("q", "heads", [0, 2, 1, 3], "qh"),
        *reshaped_and_transposed("k", "key_heads", [0, 2, 3, 1], "kt"),
        *reshaped_and_transposed("v", "heads", [0, 2, 1, 3], "vh"),
        helper.make_node("MatMul", ["qh", "kt"], ["scores"]),
        helper.make_node(scaling, ["factor", "scores"] if factor_first else ["scores", "factor"], [scaled]),
        *([helper.make_node("Add", ["scaled", "mask"], ["logits"])] if mask else []),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "vh"], ["o4"]),
        helper.make_node("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "merged"], ["out"])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 7, 8]) for name in "qkv"]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in ("out",) + (("probs",) if probs_also_output else ())]
    return _model_of(helper.make_graph(nodes, "g", inputs, outputs, initializer=constants), opset=20)


@needs_native
@pytest.mark.parametrize("scaling, factor_first", [("Mul", False), ("Mul", True), ("Div", False)])
def test_attention_folds_into_one_node(scaling, factor_first):
    """The exporter's attention becomes one ScaledDotProductAttention of ours with the right heads
    and scale, the constants it alone read are dropped, and our kernel gives stock onnxruntime's
    output of the written-out graph within rounding."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    from sparse_rt.onnx import fold
    from sparse_rt.onnx.runtime import value_dims

    original = _attention_written_out(scaling, factor_first)
    proto = _attention_written_out(scaling, factor_first)
    assert fold.fold_attention(proto, value_dims(proto)) == 11
    (node,) = proto.graph.node
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain, list(node.input), list(node.output)) == (
        "ScaledDotProductAttention", "sparse_rt", ["q", "k", "v"], ["out"])
    assert attributes == {"num_heads": 2, "scale": 0.5 if scaling == "Mul" else 2.0}
    assert [t.name for t in proto.graph.initializer] == ["mask"]  # read by no node before either
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal((2, 7, 8), dtype=np.float32) for name in "qkv"}
    got = _native_session_by_hand(proto.SerializeToString()).run(None, feed)[0]
    expected = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _attention_node(heads=2, scale=0.5):
    """One ScaledDotProductAttention node on q [B, Sq, E], k and v [B, Sk, E] of any shape."""
    from onnx import TensorProto, helper

    node = helper.make_node("ScaledDotProductAttention", ["q", "k", "v"], ["out"], name="attn", domain="sparse_rt",
                            num_heads=heads, scale=scale)
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in "qkv"]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return _model_of(graph, opset=17).SerializeToString()


@needs_native
def test_native_attention_kernel_checks_its_inputs():
    """Cross attention (more keys than queries, a head of 64) matches PyTorch's; operands of other
    ranks, batch or hidden sizes, keys and values of different lengths, no keys, and a hidden size
    that the heads do not divide are refused as InvalidArgument naming the node; num_heads < 1
    when the session is made."""
    import numpy as np
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, n, 128), dtype=np.float32) for n in (9, 20, 20))
    got = _native_session_by_hand(_attention_node(heads=2, scale=0.125)).run(None, {"q": q, "k": k, "v": v})[0]
    heads = [torch.from_numpy(t).view(2, -1, 2, 64).transpose(1, 2) for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*heads, scale=0.125).transpose(1, 2).reshape(2, 9, 128)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    session = _native_session_by_hand(_attention_node(heads=3))
    good = rng.standard_normal((2, 5, 6), dtype=np.float32)
    cases = [
        ({"q": good[0]}, r"Q must be 3-D \[batch, tokens, heads \* head_dim\], got \[5, 6\]"),
        ({"k": good[:1]}, r"K has shape \[1, 5, 6\] but Q has \[2, 5, 6\]: batch and hidden size must match"),
        ({"v": good[:, :, :3]}, r"V has shape \[2, 5, 3\] but Q has \[2, 5, 6\]"),
        ({"v": good[:, :4]}, r"K has shape \[2, 5, 6\] but V has \[2, 4, 6\]"),
        ({"k": good[:, :0], "v": good[:, :0]}, r"K and V have no tokens"),
    ]
    for changes, message in cases:
        feed = {"q": good, "k": good, "v": good, **changes}
        with pytest.raises(Exception, match=r"ScaledDotProductAttention node 'attn': " + message):
            session.run(None, feed)
    four = rng.standard_normal((2, 5, 8), dtype=np.float32)
    with pytest.raises(Exception, match=r"'attn': the hidden size 8 is not a multiple of num_heads=3"):
        session.run(None, {"q": four, "k": four, "v": four})
    with pytest.raises(Exception, match=r"'attn': num_heads must be >= 1, got 0"):
        _native_session_by_hand(_attention_node(heads=0))


def test_attention_folded_only_as_the_exporter_writes_it_without_a_mask():
    from sparse_rt.onnx import fold
    from sparse_rt.onnx.runtime import value_dims

    _assert_left_alone(lambda proto: fold.fold_attention(proto, value_dims(proto)), {
        "a mask": _attention_written_out(mask=True),
        "probabilities also an output": _attention_written_out(probs_also_output=True),
        "batch unknown": _attention_written_out(batch="N"),
        "keys split into other heads": _attention_written_out(key_heads=(4, 2))})


def test_linears_grouped_only_when_they_read_one_input_alike():
    from sparse_rt.onnx import fold

    _assert_left_alone(fold.group_linears_sharing_input, {
        "different inputs": _two_linears(shared_input=False), "a ReLU": _two_linears(relu=(0, 1)),
        "a residual": _two_linears(residual=True), "indices not initializers": _two_linears(col_as_input=True)})
    proto = _two_linears()
    assert fold.group_linears_sharing_input(proto) == 1
    (node,) = proto.graph.node
    assert (node.op_type, node.name, list(node.output)) == ("CsrLinears", "first+second", ["Y0", "Y1"])
    assert list(node.input) == ["X", "crow", "col0", "values", "bias", "crow", "col1", "values", "bias"]


def _grouped_by_hand(tmp_path, inputs_of_node=None, outputs=("Y0", "Y1"), col_as_input=False):
    """A session, built without sparse_rt's Python checks, of _two_linears grouped into CsrLinears
    (its inputs and outputs replaced where given)."""
    import onnx

    from sparse_rt.onnx import fold

    proto = _two_linears()
    assert fold.group_linears_sharing_input(proto) == 1
    node = proto.graph.node[0]
    if inputs_of_node is not None:
        del node.input[:]
        node.input.extend(inputs_of_node)
    del node.output[:]
    node.output.extend(outputs)
    if col_as_input:
        proto.graph.initializer.remove(next(t for t in proto.graph.initializer if t.name == "col1"))
        proto.graph.input.append(onnx.helper.make_tensor_value_info("col1", onnx.TensorProto.INT32, [4]))
    del proto.graph.output[len(outputs):]
    onnx.save(proto, tmp_path / "m.onnx")
    return _native_session_by_hand(tmp_path / "m.onnx")


@needs_native
def test_native_linears_kernel_checks_its_inputs(tmp_path):
    """CsrLinears as a user might write it by hand: each layer's output right; an input count that
    is not X plus four per layer, outputs that do not match the layers, a layer's inputs of the
    wrong type, and indices out of range (checked on every call when they are graph inputs) are
    refused as InvalidArgument naming the node and the layer."""
    import numpy as np

    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    y0, y1 = _grouped_by_hand(tmp_path).run(None, {"X": x})
    np.testing.assert_array_equal(y0, x[:, [0, 3, 5, 7]])
    np.testing.assert_array_equal(y1, x[:, [1, 2, 4, 6]])

    layers = ["crow", "col0", "values", "bias", "crow", "col1", "values", "bias"]
    with pytest.raises(Exception, match=r"CsrLinears node 'first\+second': takes X and four inputs per layer .* "
                                        r"got 8 inputs and 2 outputs"):
        _grouped_by_hand(tmp_path, ["X", *layers[:-1]])
    with pytest.raises(Exception, match=r"got 9 inputs and 1 outputs"):
        _grouped_by_hand(tmp_path, outputs=("Y0",))
    session = _grouped_by_hand(tmp_path, ["X", *layers[:5], "values", "col1", "bias"])
    with pytest.raises(Exception, match=r"'first\+second': layer 1: col_indices must be int32"):
        session.run(None, {"X": x})
    session = _grouped_by_hand(tmp_path, col_as_input=True)
    np.testing.assert_array_equal(session.run(None, {"X": x, "col1": np.array([1, 2, 4, 6], np.int32)})[1],
                                  x[:, [1, 2, 4, 6]])
    with pytest.raises(Exception, match=r"layer 1: col_indices\[3\]=8 is out of range \[0, 8\)"):
        session.run(None, {"X": x, "col1": np.array([1, 2, 4, 8], np.int32)})
    with pytest.raises(Exception, match=r"X has shape \[2, 6\] but in_features=8"):
        session.run(None, {"X": x[:, :6], "col1": np.array([1, 2, 4, 6], np.int32)})


def _linear_pair(activation="gelu", residual=False, second_relu=0, hidden_also_output=False):
    """CsrLinear [N, 8] -> [N, 6] with `activation` ("relu", "gelu" or None), then CsrLinear
    [N, 6] -> [N, 4] (+ R, a graph input, with residual), both with initializer weights."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weights(prefix, rows, cols):
        dense = rng.standard_normal((rows, cols)).astype(np.float32) * (rng.random((rows, cols)) < 0.6)
        dense[1] = 0  # an empty row
        crow = np.concatenate([[0], np.cumsum((dense != 0).sum(1))]).astype(np.int32)
        return [numpy_helper.from_array(a, f"{prefix}.{name}") for name, a in (
            ("crow", crow), ("col", np.nonzero(dense)[1].astype(np.int32)), ("values", dense[dense != 0]),
            ("bias", rng.standard_normal(rows).astype(np.float32)))]

    first, second = weights("first", 6, 8), weights("second", 4, 6)
    nodes = [helper.make_node("CsrLinear", ["X", *(t.name for t in first)], ["H"], name="first", domain="sparse_rt",
                              in_features=8, relu=int(activation == "relu"), gelu=int(activation == "gelu")),
             helper.make_node("CsrLinear", ["H", *(t.name for t in second), *(["R"] if residual else [])], ["Y"],
                              name="second", domain="sparse_rt", in_features=6, relu=second_relu)]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 8])]
    if residual:
        inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, ["N", 4]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in ("Y",) + (("H",) if hidden_also_output else ())]
    return _model_of(helper.make_graph(nodes, "g", inputs, outputs, initializer=first + second), opset=20)


@needs_native
@pytest.mark.parametrize("activation, residual", [("gelu", True), ("relu", False), (None, False)])
@pytest.mark.parametrize("batch", [1, 9, 70])  # the gather kernels; the tiled one, one panel and two
def test_native_feed_forward_node_gives_the_two_linears_outputs(activation, residual, batch):
    """Two CsrLinear nodes in a row fused into one CsrMlp: the same outputs as the two nodes, bit for
    bit (the same sums and epilogues, the hidden activations kept per panel instead of written out)."""
    import numpy as np

    from sparse_rt.onnx import fold

    separate = _linear_pair(activation, residual)
    fused = _linear_pair(activation, residual)
    assert fold.fuse_feed_forward(fused) == 1
    (node,) = fused.graph.node
    assert node.op_type == "CsrMlp" and len(node.input) == 9 + residual and list(node.output) == ["Y"]
    rng = np.random.default_rng(1)
    feed = {"X": rng.standard_normal((batch, 8), dtype=np.float32)}
    if residual:
        feed["R"] = rng.standard_normal((batch, 4), dtype=np.float32)
    got, expected = (_native_session_by_hand(m.SerializeToString(), threads=2).run(None, feed)[0]
                     for m in (fused, separate))
    np.testing.assert_array_equal(got, expected)


def test_feed_forward_fused_only_for_a_hidden_output_read_by_the_second_layer_alone():
    from sparse_rt.onnx import fold

    _assert_left_alone(fold.fuse_feed_forward, {
        "hidden output also a graph output": _linear_pair(hidden_also_output=True),
        "second layer with a ReLU": _linear_pair(second_relu=1)})


@needs_native
def test_native_feed_forward_kernel_names_the_layer_it_refuses(tmp_path):
    """A CsrMlp whose second layer addresses a column past the first layer's rows, or whose X has
    the wrong width, fails the run as InvalidArgument naming the node and the layer."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from sparse_rt.onnx import fold

    proto = _linear_pair()
    assert fold.fuse_feed_forward(proto) == 1
    col = next(t for t in proto.graph.initializer if t.name == "second.col")
    forged = numpy_helper.to_array(col).copy()
    forged[-1] = 6  # the hidden layer has 6 rows: columns 0-5
    col.CopyFrom(numpy_helper.from_array(forged, col.name))
    onnx.save(proto, tmp_path / "m.onnx")
    sess = _native_session_by_hand(tmp_path / "m.onnx")
    with pytest.raises(Exception, match=r"CsrMlp node 'first\+second': second layer: "
                                        r"col_indices\[\d+\]=6 is out of range \[0, 6\)"):
        sess.run(None, {"X": np.zeros((2, 8), np.float32)})
    proto = _linear_pair()
    fold.fuse_feed_forward(proto)
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "K"  # X's width left to the kernel
    with pytest.raises(Exception, match=r"CsrMlp node 'first\+second': X has shape \[2, 7\] but in_features=8"):
        _native_session_by_hand(proto.SerializeToString()).run(None, {"X": np.zeros((2, 7), np.float32)})


def _bottleneck_convs(x_dims=(2, 8, 5, 7), mid=(6, 5), out_channels=8, stride=1, residual=True, last_relu=1,
                      middle_also_output=False, unknown_dims=False, seed=0, shortcut=None):
    """CsrConv2d 1x1 [N, C, H, W] -> mid[0] channels (ReLU), 3x3 (`stride`, padding 1) -> mid[1] (ReLU),
    1x1 -> out_channels (+ R, a graph input shaped like Y, with `residual`; relu=`last_relu`), initializer
    weights ~70% sparse with an empty row each, and a dict of their dense weights and biases. With
    `shortcut`, R is instead made by a fourth CsrConv2d, 1x1 of X -> out_channels, and either the block's
    last layer adds it ("block") or it adds the last layer's output ("downsample", with the ReLU)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n, channels, height, width = x_dims
    out_size = [(height - 1) // stride + 1, (width - 1) // stride + 1]
    initializers, dense = [], {}

    def conv(name, input, output, rows, in_channels, kernel, relu, extra=(), conv_stride=1):
        weight = rng.standard_normal((rows, in_channels * kernel * kernel)).astype(np.float32)
        weight *= rng.random(weight.shape) < 0.3
        weight[1] = 0  # an empty row
        bias = rng.standard_normal(rows).astype(np.float32)
        dense[name] = (weight.reshape(rows, in_channels, kernel, kernel), bias)
        crow = np.concatenate([[0], np.cumsum((weight != 0).sum(1))]).astype(np.int32)
        tensors = [numpy_helper.from_array(a, f"{name}.{part}") for part, a in (
            ("crow", crow), ("col", np.nonzero(weight)[1].astype(np.int32)), ("values", weight[weight != 0]),
            ("bias", bias))]
        initializers.extend(tensors)
        return helper.make_node(
            "CsrConv2d", [input, *(t.name for t in tensors), *extra], [output], name=name, domain="sparse_rt",
            in_channels=in_channels, kernel_h=kernel, kernel_w=kernel, stride_h=conv_stride, stride_w=conv_stride,
            pad_h=kernel // 2, pad_w=kernel // 2, dilation_h=1, dilation_w=1, group=1, relu=relu)

    nodes = [conv("first", "X", "A", mid[0], channels, 1, 1),
             conv("second", "A", "B", mid[1], mid[0], 3, 1, conv_stride=stride)]
    if shortcut == "block":
        nodes = [conv("shortcut", "X", "R", out_channels, channels, 1, 0), *nodes,
                 conv("last", "B", "Y", out_channels, mid[1], 1, last_relu, ["R"])]
    elif shortcut == "downsample":
        nodes += [conv("last", "B", "L", out_channels, mid[1], 1, 0),
                  conv("shortcut", "X", "Y", out_channels, channels, 1, last_relu, ["L"])]
    else:
        nodes.append(conv("last", "B", "Y", out_channels, mid[1], 1, last_relu, ["R"] if residual else []))
    x_shape = ["N", channels, "H", "W"] if unknown_dims else list(x_dims)
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if residual and not shortcut:
        inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, [n, out_channels, *out_size]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in ("Y",) + (("B",) if middle_also_output else ())]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    return _model_of(graph, opset=20), dense


def _bottleneck_reference(dense, x, residual):
    """The three layers of _bottleneck_convs in float64 (torch's convolution), ReLU after each."""
    import torch.nn.functional as F

    y = torch.from_numpy(x).double()
    for name, padding in (("first", 0), ("second", 1), ("last", 0)):
        weight, bias = (torch.from_numpy(a).double() for a in dense[name])
        y = F.conv2d(y, weight, bias, padding=padding)
        y = torch.relu(y + torch.from_numpy(residual).double() if name == "last" else y)
    return y.numpy()


@needs_native
@pytest.mark.parametrize("x_dims, mid, out_channels, banded", [
    ((2, 8, 5, 7), (6, 5), 8, False),  # small enough to stay in cache: the layers one after the other
    ((8, 64, 56, 56), (32, 32), 128, True),  # 29 MB through the last layer: in bands
])
def test_native_bottleneck_node_gives_the_three_convolutions_outputs(x_dims, mid, out_channels, banded):
    """Three CsrConv2d nodes of a bottleneck block fused into one CsrBottleneck: in bands where the
    kernel runs them so (the same products summed in tiles of other widths at a band's edges: equal
    to fp32 rounding), else bit for bit the three nodes; both against the float64 reference."""
    import numpy as np

    from sparse_rt import _C
    from sparse_rt.onnx import fold, runtime

    separate, dense = _bottleneck_convs(x_dims, mid, out_channels)
    fused, _ = _bottleneck_convs(x_dims, mid, out_channels)
    nnz2 = next(t.dims[0] for t in fused.graph.initializer if t.name == "second.col")
    runs_in_bands = _C.bottleneck_band_rows(*x_dims, *mid, out_channels, nnz2=nnz2, threads=os.cpu_count()) > 0
    assert runs_in_bands == banded
    assert fold.fuse_bottleneck_blocks(fused, runtime.value_dims(fused)) == 2 * banded
    assert fold.fuse_bottleneck_blocks(fused, {}, banded_only=False) == 2 * (not banded)
    (node,) = fused.graph.node
    assert (node.op_type, node.name, len(node.input), list(node.output)) == (
        "CsrBottleneck", "first+second+last", 14, ["Y"])
    rng = np.random.default_rng(1)
    feed = {"X": rng.standard_normal(x_dims, dtype=np.float32),
            "R": rng.standard_normal((x_dims[0], out_channels, *x_dims[2:]), dtype=np.float32)}
    got, expected = (_native_session_by_hand(m.SerializeToString(), threads=2).run(None, feed)[0]
                     for m in (fused, separate))
    reference = _bottleneck_reference(dense, feed["X"], feed["R"])
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    if banded:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    else:
        np.testing.assert_array_equal(got, expected)


@needs_native
@pytest.mark.parametrize("x_dims, mid, out_channels", [((2, 8, 5, 7), (6, 5), 8), ((8, 64, 56, 56), (32, 32), 128)])
@pytest.mark.parametrize("takes_the_sum", ["block", "downsample"])
def test_native_bottleneck_node_takes_its_shortcut(x_dims, mid, out_channels, takes_the_sum):
    """A CsrBottleneck and the pointwise CsrConv2d of its input whose output it adds (or which adds its
    output) become one CsrBottleneck with that layer as its shortcut: apart (small) the four nodes' values
    bit for bit, in bands within fp32 rounding; both against the float64 reference."""
    import numpy as np
    import torch.nn.functional as F

    from sparse_rt.onnx import fold

    separate, dense = _bottleneck_convs(x_dims, mid, out_channels, shortcut=takes_the_sum)
    fused, _ = _bottleneck_convs(x_dims, mid, out_channels, shortcut=takes_the_sum)
    assert fold.fuse_bottleneck_blocks(fused, {}, banded_only=False) == 2
    assert fold.fuse_block_shortcuts(fused) == 1
    (node,) = fused.graph.node
    assert (node.op_type, len(node.input), node.input[13], list(node.output)) == ("CsrBottleneck", 18, "", ["Y"])
    x = np.random.default_rng(2).standard_normal(x_dims, dtype=np.float32)
    got, expected = (_native_session_by_hand(m.SerializeToString(), threads=2).run(None, {"X": x})[0]
                     for m in (fused, separate))
    weight, bias = (torch.from_numpy(a).double() for a in dense["shortcut"])
    summand = F.conv2d(torch.from_numpy(x).double(), weight, bias).numpy()
    reference = _bottleneck_reference(dense, x, summand)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    if x_dims[0] == 8:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    else:
        np.testing.assert_array_equal(got, expected)


@requires_compiled_ops
def test_block_shortcut_fused_only_for_a_pointwise_layer_of_the_blocks_input_whose_sum_it_alone_reads():
    import onnx

    from sparse_rt.onnx import fold

    def blocks_of(takes_the_sum):
        proto, _ = _bottleneck_convs(shortcut=takes_the_sum)
        fold.fuse_bottleneck_blocks(proto, {}, banded_only=False)
        return proto

    def set_attribute(proto, node_type, name, value):
        node = next(n for n in proto.graph.node if n.op_type == node_type)
        next(a for a in node.attribute if a.name == name).i = value
        return proto

    read_elsewhere = blocks_of("block")
    read_elsewhere.graph.output.append(onnx.helper.make_tensor_value_info("R", onnx.TensorProto.FLOAT, None))
    other_input = blocks_of("downsample")
    next(n for n in other_input.graph.node if n.op_type == "CsrConv2d").input[0] = "A"
    _assert_left_alone(fold.fuse_block_shortcuts, {
        "its output also a graph output": read_elsewhere, "another input": other_input,
        "the shortcut's own ReLU": set_attribute(blocks_of("block"), "CsrConv2d", "relu", 1),
        "the block's last ReLU before the sum": set_attribute(blocks_of("downsample"), "CsrBottleneck", "relu3", 1)})


@requires_compiled_ops
def test_bottleneck_fused_only_for_a_stride_1_block_whose_inner_outputs_the_next_layer_reads_alone():
    from sparse_rt.onnx import fold, runtime

    def unbanded(proto):
        return fold.fuse_bottleneck_blocks(proto, {}, banded_only=False)

    _assert_left_alone(unbanded, {
        "strided 3x3": _bottleneck_convs(stride=2)[0],
        "middle output also a graph output": _bottleneck_convs(middle_also_output=True)[0]})
    proto, _ = _bottleneck_convs(x_dims=(8, 64, 56, 56), mid=(32, 32), out_channels=128, unknown_dims=True)
    _assert_left_alone(lambda p: fold.fuse_bottleneck_blocks(p, runtime.value_dims(p)), {"input dims unknown": proto})
    _assert_left_alone(lambda p: fold.fuse_bottleneck_blocks(p, {"X": [2, 8, 5, 7]}), {
        "stays in the cache": _bottleneck_convs()[0]})
    proto, _ = _bottleneck_convs(residual=False)
    assert unbanded(proto) == 2 and len(proto.graph.node[0].input) == 13


@needs_native
def test_native_bottleneck_kernel_names_the_layer_it_refuses(tmp_path):
    """A CsrBottleneck whose 3x3 layer addresses a column past its input's channels x 9 taps, or whose
    X has other channels, fails the run as InvalidArgument naming the node and the layer."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from sparse_rt.onnx import fold

    proto, _ = _bottleneck_convs(residual=False)
    fold.fuse_bottleneck_blocks(proto, {}, banded_only=False)
    col = next(t for t in proto.graph.initializer if t.name == "second.col")
    forged = numpy_helper.to_array(col).copy()
    forged[-1] = 6 * 9  # the first layer has 6 output channels: columns 0-53
    col.CopyFrom(numpy_helper.from_array(forged, col.name))
    onnx.save(proto, tmp_path / "m.onnx")
    sess = _native_session_by_hand(tmp_path / "m.onnx")
    with pytest.raises(Exception, match=r"CsrBottleneck node 'first\+second\+last': second layer: "
                                        r"col_indices\[\d+\]=54 is out of range \[0, 54\)"):
        sess.run(None, {"X": np.zeros((2, 8, 5, 7), np.float32)})
    proto, _ = _bottleneck_convs(residual=False, unknown_dims=True)
    fold.fuse_bottleneck_blocks(proto, {}, banded_only=False)
    proto.graph.input[0].type.tensor_type.ClearField("shape")  # X's rank and channels left to the kernel
    sess = _native_session_by_hand(proto.SerializeToString())
    with pytest.raises(Exception, match=r"CsrBottleneck node 'first\+second\+last': X has shape \[2, 7, 5, 7\] "
                                        r"but in_channels=8"):
        sess.run(None, {"X": np.zeros((2, 7, 5, 7), np.float32)})
    with pytest.raises(Exception, match=r"X must be 4-D \[N, C, H, W\], got shape \[2, 8, 5\]"):
        sess.run(None, {"X": np.zeros((2, 8, 5), np.float32)})
    proto, _ = _bottleneck_convs(shortcut="block")
    fold.fuse_bottleneck_blocks(proto, {}, banded_only=False)
    fold.fuse_block_shortcuts(proto)
    col = next(t for t in proto.graph.initializer if t.name == "shortcut.col")
    forged = numpy_helper.to_array(col).copy()
    forged[-1] = 8  # X has 8 channels: columns 0-7
    col.CopyFrom(numpy_helper.from_array(forged, col.name))
    sess = _native_session_by_hand(proto.SerializeToString())
    with pytest.raises(Exception, match=r"CsrBottleneck node 'first\+second\+last\+shortcut': shortcut layer: "
                                        r"col_indices\[\d+\]=8 is out of range \[0, 8\)"):
        sess.run(None, {"X": np.zeros((2, 8, 5, 7), np.float32)})


@needs_native
def test_native_session_runs_bottleneck_blocks_as_one_node(tmp_path, monkeypatch):
    """sparse_rt.onnx.session folds the residual into a block's last layer, then makes the block one
    CsrBottleneck where it runs in bands: its output as the three nodes run as they are."""
    import numpy as np
    import onnx

    from sparse_rt.onnx import fold

    proto, _ = _bottleneck_convs(x_dims=(8, 64, 56, 56), mid=(32, 32), out_channels=128, residual=False,
                                 last_relu=0)
    proto.graph.node.extend([onnx.helper.make_node("Add", ["Y", "R"], ["S"]),
                             onnx.helper.make_node("Relu", ["S"], ["Z"])])
    proto.graph.input.append(onnx.helper.make_tensor_value_info("R", onnx.TensorProto.FLOAT, [8, 128, 56, 56]))
    proto.graph.output[0].name = "Z"
    onnx.save(proto, tmp_path / "m.onnx")
    blocks = []

    def fuse_and_record(model, *args, **kwargs):
        removed = real(model, *args, **kwargs)
        blocks.extend((len(n.input), {a.name: a.i for a in n.attribute}["relu3"]) for n in model.graph.node)
        return removed

    real = fold.fuse_bottleneck_blocks
    monkeypatch.setattr(fold, "fuse_bottleneck_blocks", fuse_and_record)
    sess = sparse_rt.onnx.session(tmp_path / "m.onnx", kernels="native", intra_op_num_threads=2)
    assert blocks == [(14, 1)]  # one node, taking the residual, the ReLU after the sum its own
    rng = np.random.default_rng(1)
    feed = {"X": rng.standard_normal((8, 64, 56, 56), dtype=np.float32)}
    feed["R"] = rng.standard_normal((8, 128, 56, 56), dtype=np.float32)
    expected = _native_session_by_hand(tmp_path / "m.onnx", threads=2).run(None, feed)[0]
    np.testing.assert_allclose(sess.run(None, feed)[0], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_session_rejects_unknown_kernels(tmp_path):
    model, x = _tiny()
    model.export_onnx(tmp_path / "m.onnx", x, flavor="portable")
    with pytest.raises(ValueError, match=r"kernels must be one of \('auto', 'native', 'python'\), got 'cuda'"):
        sparse_rt.onnx.session(tmp_path / "m.onnx", kernels="cuda")


@pytest.mark.slow  # a child process with torch and onnxruntime
@needs_ortx
@requires_compiled_ops
@pytest.mark.parametrize("in_subgraph", [None, "scan"])
def test_output_too_large_for_memory_fails_the_run_cleanly(tmp_path, in_subgraph):
    """A padding that asks for a 400 GB output: the kernel would fail to allocate it, or
    onnxruntime-extensions its copy of it (which aborts the process), so it is refused first."""
    path = _hostile_model(tmp_path / "m.onnx", op="CsrConv2d", conv=(3, 3), x_dims=(1, 3, 6, 6),
                          padding=2**31 - 1, in_subgraph=in_subgraph)
    got = _session_in_child(path, (1, 3, 6, 6))
    assert got.get("error") == "RuntimeError", got
    assert re.search(r"the output \[1, 4, 4294967298, 4294967298\] and its copies into onnxruntime need \d+ bytes, "
                     r"more than the \d+ this process can still allocate", got["message"]), got


@pytest.mark.slow  # a child process with torch and onnxruntime
@needs_ortx
@requires_compiled_ops
def test_error_from_the_cpp_op_fails_the_run_cleanly(tmp_path):
    """With the Python-side check out of the way, the op's own TORCH_CHECK raises RuntimeError inside
    onnxruntime-extensions: session.run raises it instead of the process aborting."""
    path = _hostile_model(tmp_path / "m.onnx", x_dims=("N", "W"))
    got = _session_in_child(path, (2, 6), mode="no_python_check")
    assert got.get("error") == "RuntimeError" and "in_features=8" in got["message"], got


@pytest.mark.slow  # a child process with torch and onnxruntime
@needs_ortx
@requires_compiled_ops
def test_bound_ops_are_private_to_their_session(tmp_path):
    """A file naming the internal ...Bound op (in a session built by hand) neither aborts nor finds
    another session's weights: keys are random, and a miss fails the kernel (empty output)."""
    import onnx

    path = _hostile_model(tmp_path / "m.onnx")
    proto = onnx.load(path)
    node = proto.graph.node[0]
    node.op_type = "CsrLinearBound"
    del node.input[1:]
    node.attribute.append(onnx.helper.make_attribute("weights", "0:"))  # the keys before the fix were N:name
    onnx.save(proto, tmp_path / "bound.onnx")
    assert _session_in_child(tmp_path / "bound.onnx", (2, 8), mode="by_hand") == {"shape": [0, 0]}  # empty, of X's rank
    with pytest.raises(ValueError, match=r"unknown op of domain 'sparse_rt'"):
        sparse_rt.onnx.session(tmp_path / "bound.onnx")  # refused before onnxruntime sees it


# --------------------------------------------------------------------------- export writes safely

class _DataDependentBranch(torch.nn.Module):
    """Model code torch.export cannot trace: a branch on a tensor's value."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        y = self.layers(x)
        return y * 2 if y.sum() > 0 else y


def test_export_failing_on_the_models_own_code_says_so_and_where(tmp_path):
    model, x = _tiny()
    with pytest.raises(sparse_rt.onnx.ModelNotExportableError,
                       match=r"torch.onnx.export fails on this model's own code, not on sparse_rt's layers \(its dense "
                             r"copy fails the same way\)"):
        sparse_rt.onnx.export(_DataDependentBranch(model.module), tmp_path / "m.onnx", x, flavor="sparse")
    assert not (tmp_path / "m.onnx").exists()


def test_export_leaves_a_data_file_it_does_not_write(tmp_path):
    model, x = _tiny()
    (tmp_path / "m.onnx.data").write_bytes(b"the user's own file")
    model.export_onnx(tmp_path / "m.onnx", x, external_data=False)
    assert (tmp_path / "m.onnx.data").read_bytes() == b"the user's own file"


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["m.onnx", "m.onnx.data"])
def test_export_failing_mid_write_keeps_the_previous_pair(tmp_path, monkeypatch, failing):
    """Disk full (OSError ENOSPC) half-way through either file: the previous model and data file
    are untouched and load together; no temporary file is left."""
    import contextlib
    import errno

    import onnx

    export_module = importlib.import_module("sparse_rt.onnx.export")  # the package's `export` is the function
    model, x = _tiny()
    path = tmp_path / "m.onnx"
    model.export_onnx(path, x, external_data=True)
    before = {name: (tmp_path / name).read_bytes() for name in ("m.onnx", "m.onnx.data")}
    real_atomic_write = export_module.atomic_write

    class DiskFull:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def atomic_write(target, *args):
        with real_atomic_write(target, *args) as f:
            yield DiskFull(f) if os.path.basename(target) == failing else f

    monkeypatch.setattr(export_module, "atomic_write", atomic_write)
    with pytest.raises(OSError, match="No space left"):
        model.export_onnx(path, x + 1, external_data=True)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    onnx.checker.check_model(str(path), full_check=True)
