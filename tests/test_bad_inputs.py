"""The catalogue of bad inputs. Each one fails with a documented exception type and a message that
names the layer or op, the tensor and the problem, before any kernel reads memory:

* formats   CSR / BSR .validate()                                   ValueError
* modules   SparseLinear / SparseConv2d construction, load_state_dict  ValueError
* ops       torch.ops.sparse_rt.* (C++ TORCH_CHECKs shared by the     RuntimeError
            CPU and CUDA ops; crow always on CPU, every index with
            full_index_checks(); on CUDA without them a malformed
            row of crow outputs NaN)
* .srt      damaged, foreign and forged files (sha256 recomputed)     sparse_rt.io.SrtError subclasses
* checkpoints  pickles, damaged files, bad masks                      sparse_rt.ingest.IngestError subclasses
* ONNX      export / session arguments, hostile index arrays          ValueError / TypeError / ...
"""

import json
import subprocess
import sys
import threading

import pytest
import torch
from helpers import (
    DEVICES,
    assert_close,
    forge_srt,
    randn,
    random_bsr,
    random_csr,
    requires_compiled_ops,
    requires_cuda,
    to_device,
)
from torch import nn

import sparse_rt
from sparse_rt import ingest
from sparse_rt.formats import BSR, CSR
from sparse_rt.io import (
    SrtArchError,
    SrtCorruptError,
    SrtHeaderError,
    SrtIntegrityError,
    SrtVersionError,
    srt,
)
from sparse_rt.nn import SparseConv2d, SparseLinear

# --------------------------------------------------------------------------------------- formats

def _csr(crow, col, values=None, shape=(3, 4), index_dtype=torch.int32):
    values = torch.ones(len(col)) if values is None else values
    return CSR(torch.tensor(crow, dtype=index_dtype), torch.tensor(col, dtype=index_dtype), values, shape)


@pytest.mark.parametrize("csr,message", [
    (_csr([1, 1, 2, 2], [0, 1]), r"crow_indices\[0\] must be 0, got 1"),
    (_csr([0, 2, 1, 2], [0, 1]), r"non-decreasing, but crow_indices\[1\]=2 > crow_indices\[2\]=1"),
    (_csr([0, 1, 2, 3], [0, 1]), r"crow_indices\[-1\]=3 but col_indices holds 2 entries"),
    (_csr([0, 1, 2], [0, 1]), r"crow_indices has 3 entries, expected rows \+ 1 = 4"),
    (_csr([0, 1, 2, 2], [0, 4]), r"col_indices\[1\]=4 is out of range \[0, 4\)"),
    (_csr([0, 1, 2, 2], [0, -1]), r"col_indices\[1\]=-1 is out of range"),
    (_csr([0, 2, 2, 2], [3, 1]), r"col_indices of row 0 are not strictly increasing"),
    (_csr([0, 2, 2, 2], [1, 1]), r"col_indices of row 0 are not strictly increasing"),
    (_csr([0, 1, 2, 2], [0, 1], index_dtype=torch.int64), r"crow_indices must be int32, got torch.int64"),
    (_csr([0, 1, 2, 2], [0, 1], values=torch.ones(3)), r"values has shape \(3,\), expected \(2,\)"),
    (_csr([0, 1, 2, 2], [0, 1], values=torch.ones(2, dtype=torch.int32)), r"values must be floating point"),
    (_csr([0, 1, 2, 2], [0, 1], shape=(3, -4)), r"shape must be two non-negative sizes"),
])
def test_csr_validate_names_the_problem(csr, message):
    with pytest.raises(ValueError, match=message):
        csr.validate()


def test_bsr_validate_names_the_problem():
    ok = BSR.from_dense(torch.ones(4, 4), blocksize=(2, 2))
    with pytest.raises(ValueError, match=r"values has shape \(4, 2, 2\), expected \(4, 2, 1\)"):
        BSR(ok.crow_indices, ok.col_indices, ok.values, (4, 2), (2, 1)).validate()
    with pytest.raises(ValueError, match="does not divide"):
        BSR(ok.crow_indices, ok.col_indices, ok.values, (4, 4), (3, 2)).validate()



def test_bsr_and_device_problems():
    ok = BSR.from_dense(torch.ones(4, 4), blocksize=(2, 2))
    cases = [
        (BSR(ok.crow_indices, torch.tensor([0, 2, 0, 1], dtype=torch.int32), ok.values, (4, 4), (2, 2)),
         r"BSR \[4, 4\] blocks \(2, 2\): col_indices\[1\]=2 is out of range \[0, 2\)"),
        (BSR(ok.crow_indices, ok.col_indices, ok.values, (-4, 4), (2, 2)), r"shape must be two non-negative sizes"),
        (BSR(ok.crow_indices, ok.col_indices, ok.values, (4, 4), (0, 2)), r"does not divide"),
        (CSR(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32),
             torch.ones(1, device="meta"), (1, 2)), r"values is on meta but the indices are on cpu"),
        (CSR(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32, device="meta"),
             torch.ones(1), (1, 2)), r"crow_indices is on cpu but col_indices is on meta"),
        (CSR(torch.tensor([[0, 1]], dtype=torch.int32), torch.tensor([0], dtype=torch.int32), torch.ones(1), (1, 2)),
         r"crow_indices must be 1-D, got shape \(1, 2\)"),
    ]
    for container, message in cases:
        with pytest.raises(ValueError, match=message):
            container.validate()


# --------------------------------------------------------------------------------------- modules

def _csr_weight(rows=4, cols=8, dtype=torch.float32):
    return random_csr(rows, cols, 0.5, seed=0, dtype=dtype)


@pytest.mark.parametrize("build,message", [
    (lambda: SparseLinear(8, 4, _csr_weight(dtype=torch.float64)),
     r"SparseLinear: values dtype torch.float64 is not one the kernels implement"),
    (lambda: SparseLinear(8, 4, _csr_weight(), torch.zeros(5)), r"SparseLinear: bias must have shape \(4,\), got \(5,\)"),
    (lambda: SparseLinear(8, 4, _csr_weight(), torch.zeros(4, dtype=torch.float16)),
     r"bias dtype torch.float16 differs from the values dtype torch.float32"),
    (lambda: SparseLinear(8, 4, _csr_weight(), torch.zeros(4, device="meta")), r"bias is on meta but the weight is on cpu"),
    (lambda: SparseLinear(9, 4, _csr_weight()), r"weight shape \(4, 8\) is not \(out_features, in_features\) = \(4, 9\)"),
    (lambda: SparseLinear(-1, 4, _csr_weight()), r"in_features and out_features must be ints >= 0"),
    (lambda: SparseConv2d(4, 6, (3, 3), _csr_weight(6, 36), stride=(0, 1)), r"stride must be two ints >= 1 \(below 2\^31\), got \(0, 1\)"),
    (lambda: SparseConv2d(4, 6, (3, 3), _csr_weight(6, 36), padding=(-1, 0)), r"padding must be two ints >= 0"),
    # Found by tools/fuzz.py: a forged file with stride 2**31 loaded, then failed in the op.
    (lambda: SparseConv2d(4, 6, (3, 3), _csr_weight(6, 36), stride=(2**31, 1)),
     r"stride must be two ints >= 1 \(below 2\^31\), got \(2147483648, 1\)"),
    (lambda: SparseConv2d(4, 6, (3,), _csr_weight(6, 36)), r"kernel_size must be two ints >= 1 \(below 2\^31\), got \(3,\)"),
    (lambda: SparseConv2d(4, 6, (3, 3), _csr_weight(6, 36), groups=0),
     r"groups=0 must be >= 1 and divide in_channels=4 and out_channels=6"),
    (lambda: SparseConv2d(4, 6, (3, 3), _csr_weight(6, 36), groups=4), r"groups=4 must be >= 1 and divide"),
    (lambda: SparseConv2d(4, 6, (3, 3), _csr_weight(6, 35)), r"weight shape \(6, 35\) is not"),
])
def test_module_construction_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _linear_state():
    model = nn.Sequential(SparseLinear(8, 4, _csr_weight(), torch.zeros(4)))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _edited(**edits):
    def edit(state):
        for key, fn in edits.items():
            state[f"0.{key}"] = fn(state[f"0.{key}"])
        return state
    return edit


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("edit,message", [
    (_edited(col_indices=lambda c: torch.full_like(c, 8)), r"col_indices\[0\]=8 is out of range \[0, 8\)"),
    (_edited(crow_indices=lambda c: c.flip(0)), r"crow_indices\[0\] must be 0"),
    (_edited(col_indices=lambda c: c[:-1], values=lambda v: v[:-1]), r"crow_indices\[-1\]=\d+ but col_indices holds"),
    (_edited(col_indices=lambda c: c.long()), r"col_indices must be int32, got torch.int64"),
])
def test_load_state_dict_validates_indices(assign, edit, message):
    model, state = _linear_state()
    with pytest.raises(ValueError, match=r"layer '0': invalid sparse weight in state_dict: .*" + message):
        model.load_state_dict(edit(state), assign=assign)


@pytest.mark.parametrize("edit,message", [
    (_edited(values=lambda v: v.double()), r"values dtype torch.float64 is not one the kernels implement"),
    (_edited(values=lambda v: torch.stack([v, v], 1)[:, 0]), r"values must be contiguous"),
    (_edited(bias=lambda b: b.half()), r"bias dtype torch.float16 differs from the values dtype torch.float32"),
    (_edited(bias=lambda b: b.to("meta")), r"bias is on meta but the weight is on cpu"),
])
def test_load_state_dict_assign_checks_what_the_kernels_take(edit, message):
    # assign=True (the .srt loader's path) keeps the given tensors as they are.
    model, state = _linear_state()
    with pytest.raises(ValueError, match=r"layer '0': invalid sparse weight in state_dict: " + message):
        model.load_state_dict(edit(state), assign=True)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
def test_module_changed_after_validation_is_caught_by_the_op(device):
    layer = SparseLinear(8, 4, _csr_weight()).to(device)
    with pytest.raises(RuntimeError, match=r"csr_linear: values must be float32, float16 or bfloat16, got Double"):
        layer.to(torch.float64)(randn(2, 8, dtype=torch.float64, device=device))
    # Buffers assigned directly bypass the Python validation; full checks catch them in the op.
    layer = SparseLinear(8, 4, _csr_weight()).to(device)
    layer.col_indices = torch.full_like(layer.col_indices, 99)
    with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=r"col_indices\[0\]=99 is out of range"):
        layer(randn(2, 8, device=device))


# ------------------------------------------------------------------------ ops (C++ binding checks)

def _linear(x=None, crow=None, col=None, values=None, bias=None, in_features=8, device="cpu"):
    w = random_csr(4, 8, 0.5, seed=0, device=device)
    x = randn(3, 8, device=device) if x is None else x
    return torch.ops.sparse_rt.csr_linear(x, w.crow_indices if crow is None else crow,
                                          w.col_indices if col is None else col,
                                          w.values if values is None else values, bias, in_features)


def _int32(values, device="cpu"):
    return torch.tensor(values, dtype=torch.int32, device=device)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs,message", [
    (dict(x=torch.randn(3, 9)), r"csr_linear: input has shape \[3, 9\] but the layer expects in_features=8"),
    (dict(crow=torch.tensor([0, 1, 2, 3, 4])), r"crow_indices must be int32, got Long"),
    (dict(values=torch.randn(999)), r"values holds 999 entries but col_indices holds"),
    (dict(values=torch.ones(16, dtype=torch.float64)), r"values must be float32, float16 or bfloat16, got Double"),
    (dict(x=torch.randn(3, 8, dtype=torch.float16)), r"input dtype Half does not match the weight values dtype Float"),
    (dict(bias=torch.randn(5)), r"bias must have shape \[4\], got \[5\]"),
    (dict(in_features=-1), r"in_features must be >= 0"),
])
def test_csr_linear_argument_errors(device, kwargs, message):
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(RuntimeError, match=message):
        _linear(device=device, **kwargs)


@requires_compiled_ops
@requires_cuda
@pytest.mark.parametrize("on_cpu,message", [
    ("crow", r"crow_indices \(cpu\), col_indices \(cuda:\d\) and values \(cuda:\d\) must be on one device"),
    ("col", r"crow_indices \(cuda:\d\), col_indices \(cpu\) and values \(cuda:\d\) must be on one device"),
    ("values", r"crow_indices \(cuda:\d\), col_indices \(cuda:\d\) and values \(cpu\) must be on one device"),
    ("x", r"input is on cpu but the weight is on cuda:\d"),
    ("bias", r"bias is on cpu but the weight is on cuda:\d"),
])
def test_tensors_split_between_cpu_and_cuda_are_refused(on_cpu, message):
    # Any CUDA argument sends the call to the CUDA op, whose shared checks name the odd one out.
    w = random_csr(4, 8, 0.5, seed=0)
    tensors = dict(x=randn(3, 8), crow=w.crow_indices, col=w.col_indices, values=w.values, bias=torch.zeros(4))
    tensors = {k: v if k == on_cpu else v.cuda() for k, v in tensors.items()}
    with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_linear: " + message):
        _linear(**tensors)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
def test_csr_linear_index_errors(device):
    w = random_csr(4, 8, 0.5, seed=0)
    nnz = w.col_indices.numel()
    crow = w.crow_indices.tolist()
    bad_crow = _int32([crow[0], crow[2] + 1, crow[1], *crow[3:]])
    cases = [
        (dict(crow=bad_crow), rf"crow_indices must be non-decreasing, but crow_indices\[1\]={crow[2] + 1} > "
                              rf"crow_indices\[2\]={crow[1]}"),
        (dict(crow=_int32([1, 2, 3, 4, nnz])), r"crow_indices\[0\] must be 0, got 1"),
        (dict(crow=_int32([0, 1, 2, 3, nnz + 1])),
         rf"crow_indices\[-1\] must equal the number of stored entries \({nnz}\), got {nnz + 1}"),
        (dict(col=torch.full_like(w.col_indices, 8)), r"col_indices\[0\]=8 is out of range \[0, 8\)"),
        (dict(col=torch.full_like(w.col_indices, -3)), r"col_indices\[0\]=-3 is out of range \[0, 8\)"),
        (dict(crow=_int32([]), col=_int32([]), values=torch.ones(0)), r"crow_indices must have rows \+ 1 >= 1 entries"),
    ]
    for kwargs, message in cases:
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=r"^sparse_rt.csr_linear: " + message):
            _linear(device=device, **kwargs)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
def test_full_index_checks_find_a_bad_column_and_leave_the_op_usable(device):
    w = random_csr(16, 32, 0.5, seed=0, device=device)
    bad = w.col_indices.clone()
    bad[-1] = 32
    x = randn(2, 32, device=device)
    with sparse_rt.ops.full_index_checks(), pytest.raises(
            RuntimeError, match=rf"col_indices\[{bad.numel() - 1}\]=32 is out of range \[0, 32\)"):
        torch.ops.sparse_rt.csr_linear(x, w.crow_indices, bad, w.values, None, 32, False)
    y = torch.ops.sparse_rt.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, 32, False)
    assert_close(y, x @ w.to_dense().T, torch.float32)


def _decreasing(r, at_r, at_next):
    return rf"crow_indices must be non-decreasing, but crow_indices\[{r}\]={at_r} > crow_indices\[{r + 1}\]={at_next}"


# Malformed row pointers made from valid ones `c` (whose last row is dense, so c[2] < c[-1]):
# (the malformed crow, the CPU op's message, the rows the CUDA kernels output as NaN; None: all).
ROW_POINTER_FAULTS = {
    "decreasing": (lambda c: [0, c[2] + 1, *c[2:]], lambda c: _decreasing(1, c[2] + 1, c[2]), [1]),
    "far past nnz": (lambda c: [0, 2**31 - 1, *c[2:]], lambda c: _decreasing(1, 2**31 - 1, c[2]), [0, 1]),
    "negative": (lambda c: [0, -2**31, *c[2:]], lambda c: _decreasing(0, 0, -2**31), [0, 1]),
    "first not 0": (lambda c: [1, *c[1:]], lambda c: r"crow_indices\[0\] must be 0, got 1", None),
    "last not nnz": (lambda c: [*c[:-1], c[-1] + 5],
                     lambda c: rf"crow_indices\[-1\] must equal the number of stored entries \({c[-1]}\), "
                               rf"got {c[-1] + 5}", None),
}


def _row_pointer_case(op, device):
    """(weight, call(crow), rows_of(output) -> [rows, everything the row computes])."""
    if op == "csr_linear":
        w = random_csr(4, 8, 0.5, seed=0, dense_rows=(3,), device=device)
        x = randn(3, 8, device=device)
        call = lambda crow: torch.ops.sparse_rt.csr_linear(x, crow, w.col_indices, w.values, None, 8, True)
        return w, call, lambda y: y.T
    if op == "bsr_linear":
        w = random_bsr(16, 12, (4, 4), 0.5, seed=1, dense_rows=(3,), device=device)
        x = randn(3, 12, device=device)
        call = lambda crow: torch.ops.sparse_rt.bsr_linear(x, crow, w.col_indices, w.values, None, 12, True)
        return w, call, lambda y: y.T.reshape(4, -1)
    w = random_csr(6, 4 * 9, 0.5, seed=2, dense_rows=(5,), device=device)
    x = randn(2, 4, 5, 5, device=device)
    call = lambda crow: torch.ops.sparse_rt.csr_conv2d(x, crow, w.col_indices, w.values, None, 4, [3, 3], [1, 1],
                                                       [1, 1], [1, 1], 1, True)
    return w, call, lambda y: y.transpose(0, 1).reshape(6, -1)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["csr_linear", "bsr_linear", "csr_conv2d"])
@pytest.mark.parametrize("fault", ROW_POINTER_FAULTS)
def test_row_pointers_are_checked_without_opting_in(device, op, fault):
    """CPU: refused on every call. CUDA: checking crow on the host would synchronize (no CUDA graph
    capture), so the kernels check each row as they read it: no read past col or values, and the
    malformed rows come out NaN, through the fused bias and ReLU."""
    make_crow, message, nan_rows = ROW_POINTER_FAULTS[fault]
    w, call, rows_of = _row_pointer_case(op, device)
    valid = w.crow_indices.tolist()
    crow = _int32(make_crow(valid), device)
    refused = lambda: pytest.raises(RuntimeError, match=rf"^sparse_rt.{op}: " + message(valid))
    with sparse_rt.ops.full_index_checks(), refused():
        call(crow)
    assert not sparse_rt.ops._library._C.full_index_checks_enabled()
    if device == "cpu":
        with refused():
            call(crow)
    else:
        rows = rows_of(call(crow).cpu())
        expected = torch.ones(len(valid) - 1, dtype=torch.bool)
        if nan_rows is not None:
            expected = torch.zeros_like(expected)
            expected[nan_rows] = True
        assert torch.equal(rows.isnan().all(1), expected) and torch.equal(rows.isnan().any(1), expected)


_MLP_WEIGHTS = random_csr(4, 8, 0.5, seed=0), random_csr(5, 4, 0.6, seed=1, dense_rows=(4,))


def _mlp(device="cpu", **changes):
    """csr_mlp of 3 x [3, 8] through a 4-wide hidden layer into 5 outputs, with `changes`."""
    w1, w2 = _MLP_WEIGHTS
    args = dict(x=randn(3, 8), crow1=w1.crow_indices, col1=w1.col_indices, values1=w1.values, bias1=None,
                crow2=w2.crow_indices, col2=w2.col_indices, values2=w2.values, bias2=torch.zeros(5),
                in_features=8, activation="gelu", residual=None)
    args.update(changes)
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    return torch.ops.sparse_rt.csr_mlp(*args.values())


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("changes,message", [
    (dict(x=torch.randn(3, 9)), r"csr_mlp \(first layer\): input has shape \[3, 9\] but the layer expects "
                                r"in_features=8"),
    (dict(crow2=_MLP_WEIGHTS[1].crow_indices.long()), r"csr_mlp \(second layer\): crow_indices must be int32, got Long"),
    (dict(bias2=torch.zeros(4)), r"csr_mlp \(second layer\): bias must have shape \[5\], got \[4\]"),
    (dict(values2=_MLP_WEIGHTS[1].values.bfloat16()), r"csr_mlp: the layers' values differ in dtype \(Float and "
                                                        r"BFloat16\)"),
    (dict(activation="swish"), r"csr_mlp: activation must be 'relu', 'gelu' or 'gelu_tanh', got 'swish'"),
    (dict(residual=torch.zeros(3, 4)), r"csr_mlp: residual has shape \[3, 4\] but the output has shape \[3, 5\]"),
    (dict(crow2=_MLP_WEIGHTS[1].crow_indices + 1), r"csr_mlp \(second layer\): crow_indices\[0\] must be 0, got 1"),
])
def test_csr_mlp_errors_name_the_layer(device, changes, message):
    with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=r"^sparse_rt." + message):
        _mlp(device, **changes)
    with sparse_rt.ops.full_index_checks(), pytest.raises(
            RuntimeError, match=r"^sparse_rt.csr_mlp \(second layer\): col_indices\[0\]=4 is out of range \[0, 4\)"):
        _mlp(device, col2=torch.full_like(_MLP_WEIGHTS[1].col_indices, 4))


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
def test_csr_linears_errors_name_the_layer(device):
    w = [random_csr(4, 8, 0.5, seed=0, device=device), random_csr(5, 8, 0.5, seed=1, device=device)]
    x = randn(3, 8, device=device)
    lists = lambda key: [getattr(layer, key) for layer in w]
    good = dict(crow=lists("crow_indices"), col=lists("col_indices"), values=lists("values"), bias=[None, None])
    cases = [
        (dict(bias=[None]), r"csr_linears: crow_indices, col_indices, values and bias must be lists of one length "
                            r">= 1, got 2, 2, 2 and 1 entries"),
        (dict(crow=[], col=[], values=[], bias=[]), r"csr_linears: .* got 0, 0, 0 and 0 entries"),
        (dict(values=[w[0].values, w[1].values.half()]), r"csr_linears: the layers' values differ in dtype \(Float "
                                                         r"in layer 0, Half in layer 1\)"),
        (dict(bias=[None, torch.zeros(4, device=device)]), r"csr_linears \(layer 1\): bias must have shape \[5\], "
                                                           r"got \[4\]"),
        (dict(col=[w[0].col_indices, torch.full_like(w[1].col_indices, 8)]),
         r"csr_linears \(layer 1\): col_indices\[0\]=8 is out of range \[0, 8\)"),
        (dict(crow=[w[0].crow_indices + 1, w[1].crow_indices]),
         r"csr_linears \(layer 0\): crow_indices\[0\] must be 0, got 1"),
    ]
    for changes, message in cases:
        args = {**good, **changes}
        with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=r"^sparse_rt." + message):
            torch.ops.sparse_rt.csr_linears(x, args["crow"], args["col"], args["values"], args["bias"], 8)
    with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_linears \(layer 0\): input has shape \[3, 7\]"):
        torch.ops.sparse_rt.csr_linears(randn(3, 7, device=device), *good.values(), 7 + 1)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("changes,message", [
    (dict(query=torch.randn(2, 3, 5)), r"query must be 4-D \[batch, heads, tokens, head_dim\], got shape \[2, 3, 5\]"),
    (dict(value=torch.randn(2, 3, 6, 8)), r"key and value must have one shape, got \[2, 3, 7, 8\] and \[2, 3, 6, 8\]"),
    (dict(key=torch.randn(2, 3, 7, 4), value=torch.randn(2, 3, 7, 4)),
     r"key \[2, 3, 7, 4\] does not match query \[2, 3, 5, 8\] in batch, heads or head_dim"),
    (dict(key=torch.randn(2, 3, 0, 8), value=torch.randn(2, 3, 0, 8)),
     r"key and value have no tokens \(shape \[2, 3, 0, 8\]\): a softmax over no keys is undefined"),
    (dict(value=torch.randn(2, 3, 7, 8, dtype=torch.float64)), r"value must be float32, float16 or bfloat16, got Double"),
    (dict(key=torch.randn(2, 3, 7, 8, dtype=torch.float16)), r"key is Half on .* but query is Float on"),
])
def test_scaled_dot_product_attention_errors(device, changes, message):
    args = {**dict(query=torch.randn(2, 3, 5, 8), key=torch.randn(2, 3, 7, 8), value=torch.randn(2, 3, 7, 8)), **changes}
    args = {k: v.to(device) for k, v in args.items()}
    with pytest.raises(RuntimeError, match=r"^sparse_rt.scaled_dot_product_attention: " + message):
        torch.ops.sparse_rt.scaled_dot_product_attention(*args.values(), 0.5)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("changes,message", [
    (dict(residual=torch.randn(3, 7)), r"residual has shape \[3, 7\] but input has shape \[3, 8\]"),
    (dict(residual=torch.randn(3, 8, dtype=torch.float16)), r"residual is Half on .* but input is Float on"),
    (dict(input=torch.randn(3, 8, dtype=torch.float64), residual=torch.randn(3, 8, dtype=torch.float64)),
     r"input must be float32, float16 or bfloat16, got Double"),
    (dict(weight=torch.randn(7)), r"weight must have shape \[8\] \(the input's last dimension\), got \[7\]"),
    (dict(bias=torch.randn(8, dtype=torch.bfloat16)), r"bias is BFloat16 on .* but input is Float on"),
    (dict(input=torch.tensor(1.0), residual=torch.tensor(2.0)), r"input must have at least one dimension"),
    (dict(eps=-1.0), r"eps must be >= 0, got -1"),
])
def test_add_layer_norm_errors(device, changes, message):
    args = {**dict(input=torch.randn(3, 8), residual=torch.randn(3, 8), weight=None, bias=torch.zeros(8), eps=1e-5),
            **changes}
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=r"^sparse_rt.add_layer_norm: " + message):
        torch.ops.sparse_rt.add_layer_norm(*args.values())


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("changes,message", [
    (dict(input=torch.randn(3, 8, 8)), r"input must be 4-D \[N, C, H, W\], got shape \[3, 8, 8\]"),
    (dict(input=torch.randn(1, 3, 8, 8, dtype=torch.float64)), r"input must be float32, float16 or bfloat16, got Double"),
    (dict(kernel_size=[3]), r"kernel_size, stride and padding must have 2 entries"),
    (dict(padding=[2, 1]), r"need kernel_size, stride >= 1 \(below 2\^31\) and 0 <= padding <= kernel_size / 2, got "
                           r"kernel_size=\[3, 3\] stride=\[2, 2\] padding=\[2, 1\]"),
    (dict(stride=[0, 1]), r"need kernel_size, stride >= 1"),
    (dict(input=torch.randn(1, 3, 1, 8), padding=[0, 0]),
     r"input \[1, 3, 1, 8\] is smaller than the kernel \[3, 3\] after padding \[0, 0\]"),
])
def test_max_pool2d_errors(device, changes, message):
    args = {**dict(input=torch.randn(1, 3, 8, 8), kernel_size=[3, 3], stride=[2, 2], padding=[1, 1]), **changes}
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=r"^sparse_rt.max_pool2d: " + message):
        torch.ops.sparse_rt.max_pool2d(*args.values())


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
def test_bsr_linear_errors(device):
    w = random_bsr(8, 12, (4, 4), 0.5, seed=1, device=device)
    x = randn(2, 12, device=device)
    op = torch.ops.sparse_rt.bsr_linear
    with pytest.raises(RuntimeError, match=r"in_features=10 is not a multiple of the block width 4"):
        op(randn(2, 10, device=device), w.crow_indices, w.col_indices, w.values, None, 10)
    with pytest.raises(RuntimeError, match=r"values must be 3-D"):
        op(x, w.crow_indices, w.col_indices, w.values.flatten(), None, 12)
    with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=r"col_indices\[0\]=3 is out of range \[0, 3\)"):
        op(x, w.crow_indices, torch.full_like(w.col_indices, 3), w.values, None, 12)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
def test_csr_conv2d_errors(device):
    w = random_csr(6, 4 * 9, 0.5, seed=2, device=device)
    op = torch.ops.sparse_rt.csr_conv2d
    args = lambda x, cin=4, k=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), groups=1: (
        x.to(device), w.crow_indices, w.col_indices, w.values, None, cin, list(k), list(stride), list(pad), list(dil),
        groups)
    cases = [
        (args(randn(1, 5, 8, 8)), r"input has 5 channels \(shape \[1, 5, 8, 8\]\) but the layer expects 4"),
        (args(randn(4, 8, 8)), r"input must be 4-D \[N, C, H, W\], got shape \[4, 8, 8\]"),
        (args(randn(1, 4, 8, 8), k=(3, 2)), r"col_indices\[\d+\]=\d+ is out of range \[0, 24\)"),  # 3x3 weight, 3x2 geometry
        (args(randn(1, 4, 8, 8), stride=(0, 1)), r"need kernel_size, stride, dilation >= 1 and padding >= 0"),
        (args(randn(1, 4, 8, 8), groups=3), r"groups=3 must divide in_channels=4"),
        (args(randn(1, 4, 1, 1), pad=(0, 0)), r"is smaller than the dilated kernel after padding"),
    ]
    for call_args, message in cases:
        with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=message):
            op(*call_args)


@requires_compiled_ops
def test_csr_pointwise_conv_pair_errors_name_the_layer():
    """CPU only (the op has no CUDA kernel: fusion calls it for CPU inputs)."""
    w1, w2 = random_csr(6, 4, 0.5, seed=2), random_csr(3, 6, 0.5, seed=3)
    bad_cols = w2.col_indices.clone()
    bad_cols[0] = 6

    def args(x=None, residual=None, cols2=w2.col_indices, values2=w2.values):
        x = randn(2, 4, 5, 5) if x is None else x
        return (x, w1.crow_indices, w1.col_indices, w1.values, None, 4, True, residual, None, w2.crow_indices, cols2,
                values2, None, True, None)
    first, second = r"sparse_rt.csr_pointwise_conv_pair \(first layer\): ", r"sparse_rt.csr_pointwise_conv_pair \(second layer\): "
    cases = [
        (args(x=randn(2, 5, 5, 5)), first + r"input has 5 channels \(shape \[2, 5, 5, 5\]\) but the layer expects 4"),
        (args(x=randn(2, 4, 5, 5, dtype=torch.float16)), r"sparse_rt.csr_pointwise_conv_pair: input must be float32, got Half"),
        (args(residual=randn(2, 6, 5, 4)), first + r"residual has shape \[2, 6, 5, 4\] but"),
        (args(cols2=bad_cols), second + r"col_indices\[0\]=6 is out of range \[0, 6\)"),
        (args(values2=w2.values.to(torch.bfloat16)),
         r"sparse_rt.csr_pointwise_conv_pair: the layers' values must share a dtype, got Float and BFloat16"),
    ]
    for call_args, message in cases:
        with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=message):
            torch.ops.sparse_rt.csr_pointwise_conv_pair(*call_args)


@requires_compiled_ops
def test_csr_bottleneck_block_errors_name_the_layer():
    w1, w2, w3 = random_csr(6, 4, 0.5, seed=2), random_csr(5, 6 * 9, 0.3, seed=3), random_csr(4, 5, 0.5, seed=4)
    bad_cols = w2.col_indices.clone()
    bad_cols[0] = 54

    w4 = random_csr(4, 4, 0.5, seed=5)
    bad_cols4 = w4.col_indices.clone()
    bad_cols4[-1] = 4

    def args(x=None, residual=None, cols2=w2.col_indices, values3=w3.values, crow3=w3.crow_indices, shortcut=()):
        x = randn(2, 4, 5, 5) if x is None else x
        return (x, w1.crow_indices, w1.col_indices, w1.values, None, 4, True, w2.crow_indices, cols2, w2.values, None,
                True, crow3, w3.col_indices, values3, None, True, residual, *shortcut)
    wide = random_csr(5, 4, 0.5, seed=6)
    layer = r"sparse_rt.csr_bottleneck_block \({}\): "
    cases = [
        (args(x=randn(2, 5, 5, 5)), layer.format("first layer") + r"input has 5 channels \(shape \[2, 5, 5, 5\]\) but"),
        (args(x=randn(2, 4, 5)), layer.format("first layer") + r"input must be 4-D"),
        (args(x=randn(2, 4, 5, 5, dtype=torch.float16)), r"sparse_rt.csr_bottleneck_block: input must be float32, got Half"),
        (args(cols2=bad_cols), layer.format("3x3 layer") + r"col_indices\[0\]=54 is out of range \[0, 54\)"),
        (args(residual=randn(2, 4, 5, 4)), layer.format("last layer") + r"residual has shape \[2, 4, 5, 4\] but"),
        (args(crow3=torch.tensor([0, 1, 2, 3, 9], dtype=torch.int32)), layer.format("last layer")),
        (args(values3=w3.values.to(torch.bfloat16)),
         r"sparse_rt.csr_bottleneck_block: the layers' values must share a dtype, got Float and BFloat16"),
        (args(shortcut=(w4.crow_indices, None, w4.values)),
         layer.format("shortcut layer") + r"shortcut_crow_indices, shortcut_col_indices and shortcut_values must be"),
        (args(shortcut=(None, None, None, randn(4))), layer.format("shortcut layer") + r"shortcut_bias is given without"),
        (args(residual=randn(2, 4, 5, 5), shortcut=(w4.crow_indices, w4.col_indices, w4.values)),
         layer.format("shortcut layer") + r"a residual and a shortcut layer were both given"),
        (args(shortcut=(wide.crow_indices, wide.col_indices, wide.values)),
         layer.format("shortcut layer") + r"has 5 output channels but the block's last layer has 4"),
        (args(shortcut=(w4.crow_indices, bad_cols4, w4.values)),
         layer.format("shortcut layer") + r"col_indices\[\d+\]=4 is out of range \[0, 4\)"),
        (args(shortcut=(w4.crow_indices, w4.col_indices, w4.values.to(torch.bfloat16))),
         r"sparse_rt.csr_bottleneck_block: the layers' values must share a dtype, got Float and BFloat16"),
        (args(shortcut=(None,) * 4 + (torch.zeros(3), None, None, None)), layer.format("first layer") + r"packed must"),
        (args(shortcut=(None,) * 7 + (torch.zeros(3, dtype=torch.int32),)),
         layer.format("shortcut layer") + r"shortcut_packed is given without a shortcut weight"),
    ]
    for call_args, message in cases:
        with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=message):
            torch.ops.sparse_rt.csr_bottleneck_block(*call_args)


@requires_compiled_ops
def test_csr_bottleneck_block_refuses_a_stale_packing_of_its_3x3_layer():
    """Where the block runs its layers apart (2 x 10x10 pixels), the 3x3 layer reads its packing over its
    input unfolded, compared with its weight first: another weight's packing is refused, naming the layer."""
    w1, w3 = random_csr(16, 8, 0.5, seed=2), random_csr(8, 16, 0.5, seed=4)
    w2, other = random_csr(16, 16 * 9, 0.5, seed=3), random_csr(16, 16 * 9, 0.5, seed=5)
    stale = sparse_rt.ops.pack_csr(other.crow_indices, other.col_indices, other.values, 16 * 9)
    assert stale.numel() > 0
    with pytest.raises(RuntimeError, match=r"sparse_rt.csr_bottleneck_block \(3x3 layer\): packed "):
        torch.ops.sparse_rt.csr_bottleneck_block(
            randn(2, 8, 10, 10), w1.crow_indices, w1.col_indices, w1.values, None, 8, True, w2.crow_indices,
            w2.col_indices, w2.values, None, True, w3.crow_indices, w3.col_indices, w3.values, None, True, None, None,
            None, None, None, None, stale)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("call,message", [
    (lambda x, w: (x, *w, None, 4, [3], [1, 1], [1, 1], [1, 1], 1), r"kernel_size, stride, padding and dilation must have 2 entries"),
    (lambda x, w: (x, *w, None, 4, [3, 3], [1, 1], [2**40, 1], [1, 1], 1), r"padding >= 0 \(each below 2\^31\)"),
    (lambda x, w: (x, *w, None, 0, [3, 3], [1, 1], [1, 1], [1, 1], 1), r"in_channels must be >= 1, got 0"),
    (lambda x, w: (x, *w, None, 4, [3, 3], [1, 1], [1, 1], [1, 1], 0), r"groups=0 must divide in_channels=4"),
])
def test_csr_conv2d_geometry_is_checked_before_use(device, call, message):
    w = random_csr(6, 4 * 9, 0.5, seed=2, device=device)
    x = randn(1, 4, 8, 8, device=device)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.sparse_rt.csr_conv2d(*call(x, (w.crow_indices, w.col_indices, w.values)))


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
def test_bsr_block_shape_is_bounded(device):
    crow = torch.zeros(2, dtype=torch.int32, device=device)
    values = torch.empty(0, 2**40, 1, device=device)  # zero elements, absurd block height
    with pytest.raises(RuntimeError, match=r"block shape must be positive \(and below 2\^31\), got 1099511627776x1"):
        torch.ops.sparse_rt.bsr_linear(randn(1, 4, device=device), crow, crow[:0], values, None, 4)


@requires_compiled_ops
def test_full_index_checks_are_per_thread_inside_the_context_manager():
    enabled = sparse_rt.ops._library._C.full_index_checks_enabled
    seen = {}

    def other_thread():
        seen["other"] = enabled()

    with sparse_rt.ops.full_index_checks():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert enabled()
    assert seen["other"] is False and not enabled()
    previous = sparse_rt.ops.set_full_index_checks(True)  # process-wide: every thread
    try:
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert seen["other"] is True
        with sparse_rt.ops.full_index_checks(False):  # a thread may still opt out inside a block
            assert not enabled()
    finally:
        sparse_rt.ops.set_full_index_checks(previous)


# -------------------------------------------------------------------------------------- .srt files

def _tiny_arch():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


@pytest.fixture(scope="module")
def tiny_srt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("srt") / "tiny.srt"
    sparse_rt.sparsify(sparse_rt.magnitude_prune(_tiny_arch(), 0.6), min_sparsity=0.0, format="csr").save(path)
    return path


def _set_int32(name, index, value):
    def edit(header, manifest, body):
        start = header[name]["data_offsets"][0] + 4 * index
        body[start:start + 4] = value.to_bytes(4, "little", signed=True)
    return edit


def _manifest_edit(fn):
    return lambda header, manifest, body: fn(manifest)


@pytest.mark.parametrize("edit,error,message", [
    (_set_int32("3.col_indices", 0, 99), SrtArchError,
     r"layer '3': invalid sparse weight in state_dict: .*col_indices\[0\]=99 is out of range \[0, 64\)"),
    (_set_int32("0.crow_indices", 1, 10**6), SrtArchError, r"layer '0': .*crow_indices must be non-decreasing"),
    (lambda h, m, b: h["0.values"].update(dtype="I32"), SrtArchError, r"layer '0': .*values must be floating point"),
    (_manifest_edit(lambda m: m.update(format_version=2)), SrtVersionError, r"format version 2 .*upgrade sparse_rt"),
    (_manifest_edit(lambda m: m.update(format_version="1")), SrtVersionError, r"format version '1'"),
    (_manifest_edit(lambda m: m.update(layers="all")), SrtHeaderError, r"manifest's 'layers' field is missing or has the wrong type"),
    (_manifest_edit(lambda m: m.update(source=True)), SrtHeaderError, r"manifest's 'source' field"),
    (_manifest_edit(lambda m: m["layers"][0].pop("kind")), SrtHeaderError, r"malformed manifest record 0 .*kind"),
    (_manifest_edit(lambda m: m["layers"][0].update(shape=[10**9, 3, 3, 3])), SrtArchError,
     r"layer '0' has 1000000000 \(block\) rows in the manifest but crow_indices of shape \(5,\) in the file"),
    (_manifest_edit(lambda m: m["layers"][0].update(dtype="complex_thing")), SrtHeaderError, r"unknown dtype 'complex_thing'"),
    (_manifest_edit(lambda m: m["layers"][0].update(stride=[0, 1])), SrtHeaderError,
     r"malformed manifest record for layer '0': ValueError: SparseConv2d: stride must be two ints >= 1"),
    (_manifest_edit(lambda m: m["layers"][1].update(kind="Conv2d")), SrtArchError,
     r"layer '3' is a sparse Conv2d in the file but a Linear in the architecture"),
])
def test_forged_srt_files(tmp_path, tiny_srt, edit, error, message):
    forge_srt(tiny_srt, tmp_path / "forged.srt", edit)
    with pytest.raises(error, match=message):
        sparse_rt.load(tmp_path / "forged.srt", arch=_tiny_arch())


def test_forged_architecture_record(tmp_path, tiny_srt):
    forge_srt(tiny_srt, tmp_path / "forged.srt", _manifest_edit(lambda m: m.update(arch={"name": 5})))
    with pytest.raises(SrtHeaderError, match=r"the manifest's architecture record is malformed: \{'name': 5\}"):
        sparse_rt.load(tmp_path / "forged.srt")


def test_forged_architecture_size_is_bounded_by_the_file(tmp_path, tiny_srt):
    # Found by tools/fuzz.py: depth=2**31 made the loader build a resnet without bound. The zoo now
    # refuses such a depth itself; one it accepts must still fit the file.
    arch = {"name": "cifar_resnet", "kwargs": {"depth": 9998}}  # 6n+2, as the zoo requires
    forge_srt(tiny_srt, tmp_path / "forged.srt", _manifest_edit(lambda m: m.update(arch=arch)))
    with pytest.raises(SrtArchError, match=r"the architecture 'cifar_resnet' with \{'depth': 9998\} is larger than "
                                           r"the file can hold \(over \d+ tensors or \d+ elements\)"):
        sparse_rt.load(tmp_path / "forged.srt")
    arch = {"name": "cifar_resnet", "kwargs": {"depth": 2**31}}
    forge_srt(tiny_srt, tmp_path / "forged.srt", _manifest_edit(lambda m: m.update(arch=arch)))
    with pytest.raises(SrtArchError, match=r"cannot rebuild the architecture: .*depth must be an int <= 10000"):
        sparse_rt.load(tmp_path / "forged.srt")


@pytest.mark.parametrize("damage,error,message", [
    (lambda raw: raw[:len(raw) - 10], SrtCorruptError, r"truncated: the tensors need \d+ bytes of data"),
    (lambda raw: raw[:5], SrtCorruptError, r"5 bytes, too short for a .srt file"),
    (lambda raw: raw + b"\0" * 3, SrtCorruptError, r"has trailing bytes"),
    (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), SrtIntegrityError, r"tensor data sha256 .* the file is corrupt"),
    (lambda raw: raw.replace(b'"F32"', b'"I32"', 1), SrtIntegrityError, r"manifest or tensor table was altered"),
    (lambda raw: (2**40).to_bytes(8, "little") + raw[8:], SrtHeaderError, r"header length 1099511627776 exceeds"),
    (lambda raw: b"\x10" + raw[1:], SrtHeaderError, r"header is not valid JSON"),
])
def test_damaged_srt_files(tmp_path, tiny_srt, damage, error, message):
    bad = tmp_path / "bad.srt"
    bad.write_bytes(damage(tiny_srt.read_bytes()))
    with pytest.raises(error, match=message):
        sparse_rt.load(bad, arch=_tiny_arch())


def test_srt_tensor_count_limit(tiny_srt, monkeypatch):
    monkeypatch.setattr(srt, "MAX_TENSORS", 3)
    with pytest.raises(SrtHeaderError, match=r"tensors exceed the limit of 3"):
        sparse_rt.load(tiny_srt, arch=_tiny_arch())


# ------------------------------------------------------------------------------------- checkpoints

class _Payload:
    """Unpickling this calls open(marker, "w"): proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state():
    torch.manual_seed(0)
    return sparse_rt.magnitude_prune(_tiny_arch(), 0.6).state_dict()


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": _state(), "hook": _Payload(str(marker))}, path)
    with pytest.raises(ingest.UnsafeCheckpointError, match=r"(?s)pickles Python objects that are not tensors: io.open.*pass unsafe=True"):
        ingest.read_checkpoint(path)
    assert not marker.exists()


def _saved_bytes(obj, zipped=True):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
    return buf.getvalue()


@pytest.mark.parametrize("name,content,error,message", [
    ("trunc.pt", lambda: _saved_bytes(_state())[:300], ingest.CorruptCheckpointError,
     r"cannot read checkpoint .*trunc.pt: truncated, damaged, or not a torch.save file \(RuntimeError: .*zip"),
    ("garbage.pt", lambda: bytes(range(200, 256)), ingest.CorruptCheckpointError, r"UnpicklingError: Unsupported operand"),
    ("empty.pt", lambda: b"", ingest.CorruptCheckpointError, r"truncated, damaged, or not a torch.save file \(EOFError"),
    ("bad.safetensors", lambda: b"\xff" * 64, ingest.CorruptCheckpointError, r"cannot read checkpoint .* as safetensors"),
    ("list.pt", lambda: _saved_bytes([torch.ones(2)]), ingest.UnknownLayoutError, r"expected a dict .*got list"),
    ("scalars.pt", lambda: _saved_bytes({"epoch": 3}), ingest.UnknownLayoutError, r"could not find a state_dict"),
])
def test_damaged_checkpoints(tmp_path, name, content, error, message):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(error, match=message):
        ingest.read_checkpoint(path)


def _legacy_bomb():
    """A 400-byte legacy (non-zip) torch.save file whose one storage declares 2^30 floats."""
    data = _saved_bytes({"w": torch.randn(16)}, zipped=False)
    numel = data.index(b"K\x10", data.index(b"cpu"))  # BININT1 16, the storage's element count
    return data[:numel] + b"J" + (2**30).to_bytes(4, "little") + data[numel + 2:]


def test_legacy_checkpoint_declaring_more_than_the_file_is_refused_before_loading(tmp_path, monkeypatch):
    """Before the fix torch.load allocated the 4 GiB the file declares, then found it truncated."""
    path = tmp_path / "bomb.pt"
    path.write_bytes(_legacy_bomb())
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on the bomb"))
    with pytest.raises(ingest.CorruptCheckpointError,
                       match=r"refusing checkpoint .*bomb.pt: its storages declare 4294967296 bytes but the file "
                             r"holds \d+: truncated, or forged"):
        ingest.read_checkpoint(path)


def test_legacy_checkpoint_with_shared_storages_still_loads(tmp_path):
    state = _state()
    state["tied.weight"] = state["0.weight"]  # one storage, counted once against the file
    path = tmp_path / "legacy.pt"
    path.write_bytes(_saved_bytes(state, zipped=False))
    loaded = ingest.read_checkpoint(path).state_dict
    assert torch.equal(loaded["tied.weight"], state["0.weight"])


@pytest.mark.parametrize("masks,error,message", [
    ({"0.weight": torch.full((4, 3, 3, 3), 0.5)}, ingest.MaskValueError, r"0.weight"),
    ({"0.weight": torch.ones(2, 2)}, ingest.MaskShapeError, r"0.weight"),
    ({"9.weight": torch.ones(2, 2)}, ingest.MaskKeyError, r"9.weight"),
    ([torch.ones(2)], ingest.MaskValueError, r"masks must be a dict \{name: tensor\}, got list"),
])
def test_bad_masks(tmp_path, masks, error, message):
    path = tmp_path / "dense.pt"
    torch.save(_state(), path)
    with pytest.raises(error, match=message):
        ingest.read_checkpoint(path, masks=masks)


def test_checkpoint_path_errors(tmp_path):
    with pytest.raises(ingest.CheckpointNotFoundError, match=r"checkpoint not found: .*missing.pt"):
        ingest.read_checkpoint(tmp_path / "missing.pt")


# -------------------------------------------------------------------------------------------- ONNX

def test_onnx_export_and_session_arguments(tmp_path):
    pytest.importorskip("onnxscript")
    from sparse_rt import onnx as srt_onnx

    model = sparse_rt.sparsify(sparse_rt.magnitude_prune(_tiny_arch(), 0.6), min_sparsity=0.0)
    with pytest.raises(ValueError, match=r"flavor must be one of \('portable', 'sparse'\), got 'dense'"):
        srt_onnx.export(model, tmp_path / "m.onnx", torch.randn(1, 3, 4, 4), flavor="dense")
    with pytest.raises(TypeError, match=r"export expects an nn.Module, got dict"):
        srt_onnx.export({}, tmp_path / "m.onnx", torch.randn(1, 3, 4, 4))
    pytest.importorskip("onnxruntime")
    with pytest.raises(FileNotFoundError, match=r"no ONNX file at .*absent.onnx"):
        srt_onnx.session(tmp_path / "absent.onnx")


@requires_compiled_ops
def test_onnx_session_checks_index_arrays_from_the_file(tmp_path):
    pytest.importorskip("onnxruntime_extensions")
    import onnx
    from onnx import numpy_helper

    from sparse_rt import onnx as srt_onnx

    torch.manual_seed(0)
    model = sparse_rt.sparsify(sparse_rt.magnitude_prune(nn.Sequential(nn.Linear(16, 8)), 0.5), min_sparsity=0.0,
                               format="csr")
    x = torch.randn(2, 16)
    srt_onnx.export(model, tmp_path / "m.onnx", x, flavor="sparse")
    proto = onnx.load(tmp_path / "m.onnx")
    col = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).dtype.name == "int32"
               and len(numpy_helper.to_array(t)) == int(model.module[0].col_indices.numel()))
    forged = numpy_helper.to_array(col).copy()
    forged[0] = 1000  # a hostile file: out of range for in_features=16
    col.CopyFrom(numpy_helper.from_array(forged, col.name))
    onnx.save(proto, tmp_path / "forged.onnx")
    # Refused when the session is created: inside onnxruntime an exception would abort the process.
    with pytest.raises(ValueError, match=r"forged.onnx: node '.*' \(CsrLinear\): CSR \[8, 16\]: col_indices\[0\]=1000 "
                                         r"is out of range \[0, 16\)"):
        srt_onnx.session(tmp_path / "forged.onnx")


# ------------------------------------------------------- convolution geometry far beyond the image

# (in_channels, image (h, w), kernel, stride, padding, dilation), each with a 1-channel output.
# Before the fix the first crashed the process (the packed image's size wrapped to 2^21 floats and
# the packing wrote ~2^52 per channel), the others allocated 1.25, 16 and 8.4 GiB for an output of
# one pixel.
HOSTILE_CONV_GEOMETRIES = {
    "wrapped packed size": (4096, (2, 2), (3, 1), (1, 1), (2**31 - 1, 2**19 - 1), (2**31 - 1, 1)),
    "stride 2^27": (1, (4, 4), (1, 1), (2**27, 2**27), (0, 0), (1, 1)),
    "stride 2^31-1": (1, (4, 4), (1, 1), (2**31 - 1, 2**31 - 1), (0, 0), (1, 1)),
    "padding with dilation": (1, (4, 4), (2, 2), (1, 1), (23000, 23000), (46003, 46003)),
    # Found by tools/fuzz.py after the fix above: packing walked every stride phase of every row of
    # every channel, 65536 x 2 x 2^20 steps for a 3x1 output.
    "stride far beyond a deep, tiny image": (65536, (2, 4), (2, 2), (3, 2**20 + 1), (3, 0), (1, 3)),
}

# Runs each geometry through the op (full index checks on), the layer, a .srt written by
# sparse_rt.save and loaded back, the pure-torch reference (the fallback without the compiled ops)
# and, with "onnx", a sparse_rt.onnx session, all in one child (one torch import) under a 4 GiB
# address-space cap; prints, per geometry, how far the peak resident memory has grown, in MiB.
_HOSTILE_CONV_CHILD = """
import json, resource, sys
import torch
from torch import nn
import sparse_rt
from sparse_rt.nn import SparseConv2d
from sparse_rt.ops import reference

resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
geometries, folder, onnx = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["onnx"]
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, (in_channels, hw, kernel, stride, padding, dilation) in geometries.items():
    arch = lambda: nn.Sequential(nn.Conv2d(in_channels, 1, kernel, stride, padding, dilation))
    torch.manual_seed(0)
    model = arch()
    with torch.no_grad():
        model[0].weight.zero_()[0, 0, -1, 0] = 1.0  # a tap that reads the image in every geometry here
    x = torch.randn(1, in_channels, *hw)
    layer = SparseConv2d.from_dense(model[0])
    w = (layer.crow_indices, layer.col_indices, layer.values, layer.bias)
    with sparse_rt.ops.full_index_checks():
        y = torch.ops.sparse_rt.csr_conv2d(x, *w, in_channels, list(kernel), list(stride), list(padding),
                                           list(dilation), 1)
    expected = reference.csr_conv2d(x, *w, in_channels, kernel, stride, padding, dilation, 1)
    assert torch.allclose(y, expected), f"{name}: the op differs from the reference"
    assert torch.equal(layer(x), y), f"{name}: the layer differs from the op"
    sparse_model = sparse_rt.sparsify(model, min_sparsity=0.0, format="csr")
    sparse_model.save(f"{folder}/m.srt")
    assert torch.equal(sparse_rt.load(f"{folder}/m.srt", arch=arch())(x), y), f"{name}: the .srt differs"
    if onnx:
        sparse_model.export_onnx(f"{folder}/m.onnx", x, flavor="sparse")
        session = sparse_rt.onnx.session(f"{folder}/m.onnx")
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert torch.equal(torch.from_numpy(out), y), f"{name}: the ONNX session differs"
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) // 1024
    print(name, "grew the peak memory by", grown, flush=True)
"""


def _run_hostile_conv_geometries(folder, geometries, *extra):
    child = subprocess.run([sys.executable, "-c", _HOSTILE_CONV_CHILD, json.dumps(geometries), str(folder), *extra],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, (f"child exited with {child.returncode} after:\n{child.stdout}"
                                   f"{child.stderr[-2000:]}")
    for line in child.stdout.splitlines():
        assert int(line.split()[-1]) < 256, line + " MiB"


@requires_compiled_ops
def test_conv_geometry_far_beyond_the_image_costs_what_the_input_and_output_do(tmp_path):
    _run_hostile_conv_geometries(tmp_path, HOSTILE_CONV_GEOMETRIES)


@pytest.mark.slow
@requires_compiled_ops
def test_conv_geometry_far_beyond_the_image_in_an_onnx_session(tmp_path):
    pytest.importorskip("onnxruntime_extensions")
    pytest.importorskip("onnxscript")
    _run_hostile_conv_geometries(tmp_path, {"wrapped packed size": HOSTILE_CONV_GEOMETRIES["wrapped packed size"]},
                                 "onnx")


@pytest.mark.parametrize("device", DEVICES)
def test_conv_weight_columns_overflowing_int64_are_refused(device):
    """The layer, the ONNX weight check and the op (on `device`) refuse the same geometry, each in its words."""
    from sparse_rt.onnx.ops_table import OPS

    weight = _csr_weight(6, 36)
    columns = r"in_channels/groups\*kh\*kw = 4\*2147483647\*2147483647"
    with pytest.raises(ValueError, match=r"SparseConv2d: " + columns + r" \(the weight's columns\) overflows int64"):
        SparseConv2d(4, 6, (2**31 - 1, 2**31 - 1), weight)
    attributes = dict(in_channels=4, kernel_h=2**31 - 1, kernel_w=2**31 - 1, stride_h=1, stride_w=1, pad_h=0, pad_w=0,
                      dilation_h=1, dilation_w=1, group=1, relu=0)
    with pytest.raises(ValueError, match=columns):
        OPS["CsrConv2d"].weight(weight.crow_indices, weight.col_indices, weight.values, attributes)
    with pytest.raises(ValueError, match=r"SparseConv2d: groups=1 must be >= 1 and divide in_channels=" + str(2**63)):
        SparseConv2d(2**63, 6, (3, 3), weight)
    if sparse_rt.ops.HAS_COMPILED_OPS:
        with pytest.raises(RuntimeError, match=r"sparse_rt.csr_conv2d: " + columns + " overflows int64"):
            torch.ops.sparse_rt.csr_conv2d(randn(1, 4, 8, 8, device=device), weight.crow_indices.to(device),
                                           weight.col_indices.to(device), weight.values.to(device), None, 4,
                                           [2**31 - 1, 2**31 - 1], [1, 1], [0, 0], [1, 1], 1)


@requires_compiled_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding, stride, message", [
    # Found by tools/fuzz.py: bytes overflowing int64 escaped as torch's own unprefixed error.
    ((2**31 - 1, 2**31 - 1), (3, 3), r"cannot allocate the output \[1, 2, 1431655765, 1431655765\] \(over 2\^63 bytes\): "
                                     r"Storage size calculation overflowed"),
    # 563 TB: beyond any memory, host or GPU (and x86-64's 128 TB of user addresses, whatever the
    # overcommit setting), and the allocator's error named no op.
    ((2**22, 2**22), (1, 1), r"cannot allocate the output \[1, 2, 8388609, 8388609\] \(562950087639048 bytes\): "),
])
def test_outputs_that_cannot_be_allocated_name_the_op_and_shape(device, padding, stride, message):
    weight = to_device(_csr_weight(2, 4), device)
    with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_conv2d: " + message):
        torch.ops.sparse_rt.csr_conv2d(randn(1, 4, 1, 1, device=device), weight.crow_indices, weight.col_indices,
                                       weight.values, None, 4, [1, 1], list(stride), list(padding), [1, 1], 1)


# The op once with memory to spare (the packed path), then with too little for the packed image's
# scratch (found by tools/fuzz.py: the allocator's error escaped): the gather path, same output.
_SCRATCH_FALLBACK_CHILD = """
import resource
import torch
import sparse_rt

x = torch.randn(1, 2, 4, 5)
crow, col, values = torch.tensor([0, 2], dtype=torch.int32), torch.tensor([3, 4], dtype=torch.int32), torch.randn(2)
geometry = (2, [3, 1], [3, 3], [2**25, 1], [3, 3], 1)  # a 268 MB output, a 800 MB packed image
packed = torch.ops.sparse_rt.csr_conv2d(x, crow, col, values, None, *geometry)
in_use = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (in_use + 2 * packed.numel() * 4 + (256 << 20), resource.RLIM_INFINITY))
gathered = torch.ops.sparse_rt.csr_conv2d(x, crow, col, values, None, *geometry)
assert torch.equal(packed, gathered) and packed.count_nonzero() > 0
"""


@pytest.mark.slow  # a child that allocates 1 GB
@requires_compiled_ops
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_conv_scratch_that_does_not_fit_falls_back_to_the_gather_path():
    child = subprocess.run([sys.executable, "-c", _SCRATCH_FALLBACK_CHILD], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
