"""Malformed arguments to the compiled ops: each raises before any kernel reads memory, with a
message naming the op, the tensor and the problem."""

import pytest
import torch

import sparse_rt

from conftest import DEVICES, requires_compiled_ops
from sparse_cases import randn, random_bsr, random_csr

pytestmark = requires_compiled_ops


def _linear(x=None, crow=None, col=None, values=None, bias=None, in_features=8, device="cpu"):
    w = random_csr(4, 8, 0.5, seed=0, device=device)
    x = randn(3, 8, device=device) if x is None else x
    return torch.ops.sparse_rt.csr_linear(x, w.crow_indices if crow is None else crow,
                                          w.col_indices if col is None else col,
                                          w.values if values is None else values, bias, in_features)


def _int32(values, device="cpu"):
    return torch.tensor(values, dtype=torch.int32, device=device)


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


def test_csr_linear_index_errors():
    w = random_csr(4, 8, 0.5, seed=0)
    nnz = w.col_indices.numel()
    crow = w.crow_indices.tolist()
    bad_crow = _int32([crow[0], crow[2] + 1, crow[1], *crow[3:]])
    cases = [
        (dict(crow=bad_crow), r"crow_indices must be non-decreasing, but crow_indices\[1\]="),
        (dict(crow=_int32([1, 2, 3, 4, nnz])), r"crow_indices\[0\] must be 0, got 1"),
        (dict(crow=_int32([0, 1, 2, 3, nnz + 1])), rf"crow_indices\[-1\] must equal the number of stored entries \({nnz}\)"),
        (dict(col=torch.full_like(w.col_indices, 8)), r"col_indices\[0\]=8 is out of range \[0, 8\)"),
        (dict(col=torch.full_like(w.col_indices, -3)), r"col_indices\[0\]=-3 is out of range"),
        (dict(crow=_int32([]), col=_int32([]), values=torch.ones(0)), r"crow_indices must have rows \+ 1 >= 1 entries"),
    ]
    for kwargs, message in cases:
        with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=message):
            _linear(**kwargs)


def test_row_pointers_are_checked_without_opting_in():
    w = random_csr(4, 8, 0.5, seed=0)
    crow = w.crow_indices.tolist()
    assert not sparse_rt.ops._library._C.full_index_checks_enabled()
    with pytest.raises(RuntimeError, match=r"crow_indices must be non-decreasing"):
        _linear(crow=_int32([crow[0], crow[2] + 1, crow[1], *crow[3:]]))
    with pytest.raises(RuntimeError, match=r"crow_indices\[-1\] must equal the number of stored entries"):
        _linear(crow=_int32([0, 1, 2, 3, w.col_indices.numel() + 5]))


def test_bsr_linear_errors():
    w = random_bsr(8, 12, (4, 4), 0.5, seed=1)
    x = randn(2, 12)
    op = torch.ops.sparse_rt.bsr_linear
    with pytest.raises(RuntimeError, match=r"in_features=10 is not a multiple of the block width 4"):
        op(randn(2, 10), w.crow_indices, w.col_indices, w.values, None, 10)
    with pytest.raises(RuntimeError, match=r"values must be 3-D"):
        op(x, w.crow_indices, w.col_indices, w.values.flatten(), None, 12)
    with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match=r"col_indices\[0\]=3 is out of range \[0, 3\)"):
        op(x, w.crow_indices, torch.full_like(w.col_indices, 3), w.values, None, 12)


def test_csr_conv2d_errors():
    w = random_csr(6, 4 * 9, 0.5, seed=2)
    op = torch.ops.sparse_rt.csr_conv2d
    args = lambda x, cin=4, k=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), groups=1: (
        x, w.crow_indices, w.col_indices, w.values, None, cin, list(k), list(stride), list(pad), list(dil), groups)
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
