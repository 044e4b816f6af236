"""Every op against its pure-torch reference run in float64 (double accumulation)."""

import gzip
import os
import subprocess
import sys

import pytest
import torch
from helpers import (
    CSR_DEVICES,
    DEVICES,
    DTYPES,
    assert_close,
    randn,
    random_bsr,
    random_csr,
    requires_compiled_ops,
    to_device,
)

from sparse_rt import ops
from sparse_rt.formats import CSR, load_smtx
from sparse_rt.ops import reference

LINEAR_CASES = [
    # (out_features, in_features, leading input shape, density, rows_kw)
    (7, 96, (40,), 0.3, {}),
    (1, 1, (1,), 1.0, {}),
    (33, 65, (3,), 0.1, {"empty_rows": (0, 5, 32)}),
    (64, 130, (2, 9), 0.05, {"dense_rows": (3,), "empty_rows": (4,)}),
    (16, 16, (70,), 0.0, {}),  # nnz = 0: the output is the bias
    (24, 40, (0,), 0.5, {}),  # batch 0
    (300, 257, (1,), 0.1, {}),  # enough work to run on several threads
    (128, 200, (33,), 0.2, {}),  # broadcast kernel, batch not a multiple of its tile
]


# (average nonzeros per row, batch)
LINEAR_KERNEL_CASES = [(avg_row, batch) for avg_row in (3, 80, 300) for batch in (1, 2, 3, 5, 17)]


def _linear_ref(x, w, bias, relu):
    return reference.csr_linear(x, w.crow_indices, w.col_indices, w.values, bias, w.shape[1], relu,
                                compute_dtype=torch.float64)


@pytest.mark.parametrize("device", CSR_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-d{c[3]}")
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_csr_linear(device, csr_device, dtype, case, with_bias, relu):
    device = csr_device
    out_f, in_f, lead, density, rows_kw = case
    w = random_csr(out_f, in_f, density, seed=out_f * in_f, dtype=dtype, device=device, **rows_kw)
    x = randn(*lead, in_f, dtype=dtype, device=device, seed=1)
    bias = randn(out_f, dtype=dtype, device=device, seed=2) if with_bias else None
    y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, bias, in_f, relu)
    assert_close(y, _linear_ref(x, w, bias, relu), dtype)


def test_csr_cuda_kernel_is_set_inside_its_block_and_refuses_unknown_names(monkeypatch):
    monkeypatch.setenv(ops.CSR_CUDA_KERNEL_VARIABLE, "subwarp")
    with ops.csr_cuda_kernel("tensor_cores"):
        assert os.environ[ops.CSR_CUDA_KERNEL_VARIABLE] == "tensor_cores"
        with ops.csr_cuda_kernel(None):
            assert ops.CSR_CUDA_KERNEL_VARIABLE not in os.environ
    assert os.environ[ops.CSR_CUDA_KERNEL_VARIABLE] == "subwarp"
    with pytest.raises(ValueError, match="'tensor-cores' is not one of"):
        with ops.csr_cuda_kernel("tensor-cores"):
            pass


@pytest.mark.parametrize("device", DEVICES)
def test_csr_linear_non_contiguous_input(device):
    w = random_csr(20, 48, 0.3, seed=3, device=device)
    x = randn(96, 10, device=device).t()[:, ::2]  # [10, 48], strided both ways
    assert not x.is_contiguous()
    y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, 48)
    assert_close(y, _linear_ref(x, w, None, False), torch.float32)


@pytest.mark.parametrize("device", CSR_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LINEAR_KERNEL_CASES, ids=lambda c: f"row{c[0]}-batch{c[1]}")
def test_csr_linear_row_lengths_and_batch_tiles(device, csr_device, dtype, case):
    """Average row lengths that select each CUDA subwarp width, batches around each batch tile."""
    device = csr_device
    avg_row, batch = case
    in_f = 1024
    w = random_csr(75, in_f, avg_row / in_f, seed=avg_row, dtype=dtype, device=device)
    x = randn(batch, in_f, dtype=dtype, device=device, seed=batch)
    bias = randn(75, dtype=dtype, device=device, seed=2)
    y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, bias, in_f, True)
    assert_close(y, _linear_ref(x, w, bias, True), dtype)


@pytest.mark.parametrize("device", CSR_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [8, 13, 23, 30, 36, 47, 55, 63, 71, 130])
def test_csr_linear_every_column_tile(device, csr_device, dtype, batch):
    """Batches whose last panel (rounded up to 8 rows) is 8 to 56 columns wide, alone or after
    whole 64-column panels: every combination of the CPU SpMM's 32-, 16- and 8-column tiles."""
    device = csr_device
    w = random_csr(40, 96, 0.3, seed=batch, dtype=dtype, device=device, empty_rows=(3,))
    x = randn(batch, 96, dtype=dtype, device=device, seed=batch)
    bias = randn(40, dtype=dtype, device=device, seed=2)
    y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, bias, 96)
    assert_close(y, _linear_ref(x, w, bias, False), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_linear_misaligned_indices(device, dtype):
    """Index and value arrays starting one element into their buffers (CUDA: the scalar path)."""
    w = random_csr(33, 200, 0.5, seed=11, dtype=dtype, device=device)
    nnz = w.col_indices.numel()
    col_buf = torch.empty(nnz + 1, dtype=torch.int32, device=device)
    val_buf = torch.empty(nnz + 1, dtype=dtype, device=device)
    col_buf[1:], val_buf[1:] = w.col_indices, w.values
    w.col_indices, w.values = col_buf[1:], val_buf[1:]
    x = randn(5, 200, dtype=dtype, device=device, seed=12)
    y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, 200)
    assert_close(y, _linear_ref(x, w, None, False), dtype)


MLP_CASES = [
    # (in_features, hidden, out_features, leading input shape, density, rows_kw of both layers)
    (24, 40, 8, (5,), 0.4, {}),  # gather kernels
    (33, 70, 17, (2, 9), 0.3, {"empty_rows": (0, 5)}),  # one panel of the tiled kernel
    (40, 96, 24, (150,), 0.2, {"dense_rows": (3,)}),  # three panels, the last padded
    (16, 16, 16, (70,), 0.0, {}),  # nnz = 0: the output is bias2 (+ residual)
    (24, 40, 8, (0,), 0.5, {}),  # batch 0
    (300, 600, 257, (130,), 0.1, {}),  # enough work to run on several threads
]


def _mlp_args(case, dtype, device, activation, with_residual):
    in_f, hidden, out_f, lead, density, rows_kw = case
    w1 = random_csr(hidden, in_f, density, seed=in_f, dtype=dtype, device=device, **rows_kw)
    w2 = random_csr(out_f, hidden, density, seed=hidden, dtype=dtype, device=device, **rows_kw)
    x = randn(*lead, in_f, dtype=dtype, device=device, seed=1)
    residual = randn(*lead, out_f, dtype=dtype, device=device, seed=4) if with_residual else None
    return (x, w1.crow_indices, w1.col_indices, w1.values, randn(hidden, dtype=dtype, device=device, seed=2),
            w2.crow_indices, w2.col_indices, w2.values, randn(out_f, dtype=dtype, device=device, seed=3), in_f,
            activation, residual)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MLP_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-d{c[4]}")
@pytest.mark.parametrize("activation,with_residual", [("gelu", False), ("gelu_tanh", True), ("relu", True)])
def test_csr_mlp(device, dtype, case, activation, with_residual):
    args = _mlp_args(case, dtype, device, activation, with_residual)
    assert_close(ops.csr_mlp(*args), reference.csr_mlp(*args, compute_dtype=torch.float64), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead", [(5,), (2, 35), (0,)], ids=lambda lead: f"x{lead}")
def test_csr_linears(device, dtype, lead):
    """Layers of different widths and densities (one without nonzeros, one without bias) on one input:
    the gather kernels, two panels of the tiled one, an empty batch."""
    layers = [random_csr(out_f, 48, density, seed=out_f, dtype=dtype, device=device, empty_rows=(0,))
              for out_f, density in ((20, 0.3), (7, 0.0), (33, 0.6))]
    biases = [randn(20, dtype=dtype, device=device), None, randn(33, dtype=dtype, device=device)]
    x = randn(*lead, 48, dtype=dtype, device=device, seed=5)
    args = ([w.crow_indices for w in layers], [w.col_indices for w in layers], [w.values for w in layers], biases, 48)
    outputs = ops.csr_linears(x, *args)
    expected = reference.csr_linears(x, *args, compute_dtype=torch.float64)
    assert len(outputs) == 3
    for out, want in zip(outputs, expected):
        assert_close(out, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_csr_mlp_dlmc_transformer_layer_and_its_transpose(dlmc, device):
    for path in _one_file_per_shape(dlmc, "transformer/magnitude_pruning/0.9")[:3]:
        w = to_device(load_smtx(path, seed=0), device)
        back = CSR.from_dense(w.to_dense().T.contiguous())
        x = randn(70, w.shape[1], device=device, seed=9)
        args = (x, w.crow_indices, w.col_indices, w.values, None, back.crow_indices, back.col_indices, back.values,
                None, w.shape[1], "gelu")
        assert_close(ops.csr_mlp(*args), reference.csr_mlp(*args, compute_dtype=torch.float64), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize", [(1, 1), (4, 4), (2, 8), (16, 16), (32, 32)])
@pytest.mark.parametrize("batch", [1, 5, 7, 9, 33, 64, 100])
def test_bsr_linear(device, dtype, blocksize, batch):
    """16x16 and 32x32 blocks in half precision take the CUDA tensor-core path; the batches
    straddle its tiles. Block row 0 is empty."""
    bh, bw = blocksize
    rows, cols = bh * 8, bw * 12
    w = random_bsr(rows, cols, blocksize, 0.4, seed=bh * 31 + bw, dtype=dtype, device=device, empty_rows=(0,))
    x = randn(batch, cols, dtype=dtype, device=device, seed=4)
    bias = randn(rows, dtype=dtype, device=device, seed=5)
    for relu in (False, True):
        y = ops.bsr_linear(x, w.crow_indices, w.col_indices, w.values, bias, cols, relu)
        ref = reference.bsr_linear(x, w.crow_indices, w.col_indices, w.values, bias, cols, relu,
                                   compute_dtype=torch.float64)
        assert_close(y, ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_bsr_linear_misaligned_input(device):
    """A contiguous half-precision input 2-byte aligned only (CUDA: no 32-bit fragment loads)."""
    w = random_bsr(64, 64, (16, 16), 0.5, seed=13, dtype=torch.float16, device=device)
    x = randn(3 * 64 + 1, dtype=torch.float16, device=device, seed=14)[1:].view(3, 64)
    y = ops.bsr_linear(x, w.crow_indices, w.col_indices, w.values, None, 64)
    ref = reference.bsr_linear(x, w.crow_indices, w.col_indices, w.values, None, 64, compute_dtype=torch.float64)
    assert_close(y, ref, torch.float16)


CONV_CASES = [
    # (N, Cin, H, W, Cout, k, stride, padding, dilation, groups, density)
    (1, 3, 7, 9, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.5),
    (2, 8, 17, 15, 16, (3, 3), (2, 2), (1, 1), (1, 1), 2, 0.2),
    (1, 16, 10, 10, 32, (1, 1), (1, 1), (0, 0), (1, 1), 1, 0.1),
    (2, 6, 12, 11, 6, (3, 5), (1, 2), (2, 1), (2, 1), 3, 0.4),
    (1, 4, 9, 9, 4, (3, 3), (3, 1), (0, 4), (1, 3), 4, 0.6),  # depthwise, padding wider than kernel
    (1, 8, 8, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.0),  # nnz = 0
    (0, 8, 8, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.3),  # batch 0
    (1, 64, 14, 14, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.1),  # threaded
    (1, 3, 5, 5, 2, (7, 7), (1, 1), (3, 3), (1, 1), 1, 1.0),  # kernel larger than the image
    # ResNet-50's last stage: 49 output columns read in place (tiles of 32 and 16, then the
    # overlapping 8), and 56 packed ones (a 3x3 stride 2 on 14x14: tiles of 32, 16 and 8)
    (2, 24, 7, 7, 40, (1, 1), (1, 1), (0, 0), (1, 1), 1, 0.3),
    (1, 16, 14, 14, 24, (3, 3), (2, 2), (1, 1), (1, 1), 1, 0.3),
    # stride-2 columns split 32 at a time: rows of 45 and 38 (a whole step and a part), one column
    # phase stored (a one-column kernel, odd columns only) and an even padding
    (1, 5, 9, 45, 6, (3, 1), (2, 2), (1, 1), (1, 1), 1, 0.5),
    (1, 4, 6, 38, 3, (2, 3), (1, 2), (0, 2), (1, 1), 1, 0.5),
    # 1x1 images, 70 of them: a pointwise convolution whose panels' columns are images
    (70, 24, 1, 1, 40, (1, 1), (1, 1), (0, 0), (1, 1), 1, 0.4),
]


def _conv_case_id(c):
    return "-".join(map(str, c[:6])) + f"-s{c[6]}-p{c[7]}-d{c[8]}-g{c[9]}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_case_id)
@pytest.mark.parametrize("with_bias", [True, False])
def test_csr_conv2d(device, dtype, case, with_bias):
    n, cin, h, w_, cout, k, stride, padding, dilation, groups, density = case
    cols = cin // groups * k[0] * k[1]
    w = random_csr(cout, cols, density, seed=cout * cols, dtype=dtype, device=device, empty_rows=(0,))
    x = randn(n, cin, h, w_, dtype=dtype, device=device, seed=6)
    bias = randn(cout, dtype=dtype, device=device, seed=7) if with_bias else None
    args = (w.crow_indices, w.col_indices, w.values, bias, cin, k, stride, padding, dilation, groups)
    y = ops.csr_conv2d(x, *args)
    assert_close(y, reference.csr_conv2d(x, *args, compute_dtype=torch.float64), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_csr_conv2d_relu_and_channels_last_input(device):
    w = random_csr(12, 6 * 9, 0.3, seed=8, device=device)
    x = randn(2, 6, 9, 9, device=device).to(memory_format=torch.channels_last)
    args = (w.crow_indices, w.col_indices, w.values, None, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
    assert_close(ops.csr_conv2d(x, *args), reference.csr_conv2d(x, *args, compute_dtype=torch.float64),
                 torch.float32)


def _dlmc_files(dlmc, subdir, count):
    files = sorted((dlmc / subdir).glob("*.smtx.gz"))
    assert files, f"no patterns in {dlmc / subdir}"
    return files[:: max(1, len(files) // count)][:count]


def _one_file_per_shape(dlmc, subdir):
    """The first file of each matrix shape in the set (DLMC repeats a few shapes many times)."""
    first = {}
    for path in sorted((dlmc / subdir).glob("*.smtx.gz")):
        with gzip.open(path, "rt") as f:
            first.setdefault(tuple(f.readline().split(",")[:2]), path)
    assert first, f"no patterns in {dlmc / subdir}"
    return list(first.values())


@pytest.mark.parametrize("device", CSR_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 16])
def test_csr_linear_dlmc_transformer(dlmc, device, csr_device, dtype, batch):
    device = csr_device
    for path in _one_file_per_shape(dlmc, "transformer/magnitude_pruning/0.9"):
        w = to_device(load_smtx(path, seed=0, dtype=dtype), device)
        x = randn(batch, w.shape[1], dtype=dtype, device=device, seed=9)
        y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, w.shape[1])
        assert_close(y, _linear_ref(x, w, None, False), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_csr_conv2d_dlmc_rn50(dlmc, device):
    # DLMC flattens a conv weight to [Cout, Cin*kh*kw]; these layers are 3x3 (cols = 9 * Cin).
    for path in _dlmc_files(dlmc, "rn50/magnitude_pruning/0.9", 12):
        w = to_device(load_smtx(path, seed=0), device)
        cout, cols = w.shape
        k = 3 if cols % 9 == 0 and cols // 9 >= 64 else 1
        cin = cols // (k * k)
        x = randn(1, cin, 8, 8, device=device, seed=10)
        args = (w.crow_indices, w.col_indices, w.values, None, cin, (k, k), (1, 1), (k // 2, k // 2), (1, 1), 1)
        assert_close(ops.csr_conv2d(x, *args), reference.csr_conv2d(x, *args, compute_dtype=torch.float64),
                     torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_csr_conv2d_without_output_channels_matches_its_reference(device):
    """Found by tools/fuzz.py: the op accepts a weight of 0 rows (an empty output) and the pure-torch
    fallback raised from F.conv2d instead."""
    x = randn(2, 4, 5, 5, device=device)
    crow = torch.zeros(1, dtype=torch.int32, device=device)
    col, values = crow[:0], torch.zeros(0, device=device)
    args = (x, crow, col, values, None, 4, [3, 3], [1, 1], [1, 1], [1, 1], 1, False)
    for conv in (ops.csr_conv2d, reference.csr_conv2d):
        assert conv(*args).shape == (2, 0, 5, 5)


# The residual in the epilogue: act(op(x) + bias + residual), on every path of every op (the
# linear cases cover the gather and the tiled SpMM kernels, the conv cases the direct, packed,
# cropped-wide and gather layouts).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_residual_in_the_epilogue_of_every_op(device, dtype, relu):
    for out_f, in_f, lead, density, rows_kw in LINEAR_CASES:
        w = random_csr(out_f, in_f, density, seed=out_f + in_f, dtype=dtype, device=device, **rows_kw)
        x = randn(*lead, in_f, dtype=dtype, device=device, seed=1)
        bias = randn(out_f, dtype=dtype, device=device, seed=2)
        residual = randn(*lead, out_f, dtype=dtype, device=device, seed=3)
        args = (w.crow_indices, w.col_indices, w.values, bias, in_f, relu, residual)
        assert_close(ops.csr_linear(x, *args), reference.csr_linear(x, *args, compute_dtype=torch.float64), dtype)
    w = random_bsr(32, 48, (4, 8), 0.4, seed=4, dtype=dtype, device=device)
    for batch in (1, 19):
        x = randn(batch, 48, dtype=dtype, device=device, seed=5)
        args = (w.crow_indices, w.col_indices, w.values, None, 48, relu, randn(batch, 32, dtype=dtype, device=device))
        assert_close(ops.bsr_linear(x, *args), reference.bsr_linear(x, *args, compute_dtype=torch.float64), dtype)
    for n, cin, h, w_, cout, k, stride, padding, dilation, groups, density in CONV_CASES:
        cols = cin // groups * k[0] * k[1]
        w = random_csr(cout, cols, density, seed=cout + cols, dtype=dtype, device=device, empty_rows=(0,))
        x = randn(n, cin, h, w_, dtype=dtype, device=device, seed=6)
        out_hw = ops.conv2d_output_hw((h, w_), k, stride, padding, dilation)
        residual = randn(n, cout, *out_hw, dtype=dtype, device=device, seed=7)
        args = (w.crow_indices, w.col_indices, w.values, None, cin, k, stride, padding, dilation, groups, relu,
                residual)
        assert_close(ops.csr_conv2d(x, *args), reference.csr_conv2d(x, *args, compute_dtype=torch.float64), dtype)


# Convolutions that touch more than half of a 32 MiB L3 (this project's machines; at most that much
# counts) store their output with non-temporal stores (csr_conv2d.h, streams_output): a 1x1
# convolution on the panels layout, reading the input in place (56x56 images fill whole panels) or
# copying panels that cross images (28x28), the next panel's input prefetched, and a 3x3 one on the
# packed layout, cropped, each with a residual.
@pytest.mark.parametrize("relu", [False, True])
def test_a_convolution_larger_than_the_cache_streams_its_output_unchanged(relu):
    for n, cin, cout, k, padding, size in [(3, 64, 256, (1, 1), (0, 0), 56), (8, 96, 512, (1, 1), (0, 0), 28),
                                           (3, 96, 192, (3, 3), (1, 1), 56)]:
        w = random_csr(cout, cin * k[0] * k[1], 0.1, seed=cout, empty_rows=(0,))
        x = randn(n, cin, size, size, seed=6)
        residual = randn(n, cout, size, size, seed=7)
        args = (w.crow_indices, w.col_indices, w.values, randn(cout, seed=8), cin, k, (1, 1), padding, (1, 1), 1,
                relu, residual)
        assert_close(ops.csr_conv2d(x, *args), reference.csr_conv2d(x, *args, compute_dtype=torch.float64),
                     torch.float32)


# max_pool2d against torch's on either memory format: odd sizes, channels that fill no vector or
# leave a remainder, windows cut by the padding, NaN and -inf in the input, an empty batch.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    ((2, 64, 28, 28), (3, 3), (2, 2), (1, 1)),  # ResNet's stem pool
    ((3, 20, 9, 7), (3, 2), (1, 2), (1, 0)),
    ((2, 17, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((1, 5, 13, 11), (3, 3), (2, 2), (1, 1)),
    ((1, 33, 15, 40), (3, 3), (2, 2), (1, 1)),
    ((1, 16, 3, 3), (3, 3), (1, 1), (1, 1)),
    ((0, 8, 8, 8), (3, 3), (2, 2), (1, 1)),
], ids=str)
def test_max_pool2d(device, dtype, case):
    shape, kernel_size, stride, padding = case
    x = randn(*shape, device=device)
    if x.numel():
        x.view(-1)[7] = float("nan")
        x.view(-1)[-5] = float("nan")
        x.view(-1)[3] = float("-inf")
    x = x.to(dtype)
    expected = torch.nn.functional.max_pool2d(x.float(), kernel_size, stride, padding).to(dtype)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        out = ops.max_pool2d(x.contiguous(memory_format=memory_format), kernel_size, stride, padding)
        assert out.is_contiguous() and out.dtype == dtype and out.shape == expected.shape
        assert torch.equal(out.isnan(), expected.isnan())
        assert torch.equal(out.nan_to_num(), expected.nan_to_num())


@pytest.mark.parametrize("device", DEVICES)
def test_a_residual_of_another_shape_dtype_or_device_is_refused(device):
    w = random_csr(12, 20, 0.3, seed=1, device=device)
    x = randn(3, 20, device=device)
    base = (w.crow_indices, w.col_indices, w.values, None, 20, False)
    with pytest.raises(RuntimeError, match=r"sparse_rt.csr_linear: residual has shape \[12\] but the output has "
                                           r"shape \[3, 12\]"):
        ops.csr_linear(x, *base, randn(12, device=device))
    with pytest.raises(RuntimeError, match="sparse_rt.csr_linear: residual dtype Double does not match the input"):
        ops.csr_linear(x, *base, randn(3, 12, device=device).double())
    c = random_csr(4, 2 * 9, 0.5, seed=2, device=device)
    with pytest.raises(RuntimeError, match=r"sparse_rt.csr_conv2d: residual has shape \[1, 4, 5, 5\] but the "
                                           r"output has shape \[1, 4, 3, 3\]"):
        ops.csr_conv2d(randn(1, 2, 5, 5, device=device), c.crow_indices, c.col_indices, c.values, None, 2,
                       (3, 3), (1, 1), (0, 0), (1, 1), 1, False, randn(1, 4, 5, 5, device=device))


# (batch, heads, queries, keys, head_dim): BERT-base's heads; odd sizes of every dimension (queries and
# keys not multiples of the 8-query block or of a vector, head_dim not a multiple of 16); one key;
# cross attention (queries != keys; 130 keys: past the 128 up to which CPUs without AVX2 run the
# written-out form; 600 keys: past the 512 up to which AVX2 CPUs run the kernel, PyTorch's flash
# kernel beyond); a batch without queries.
ATTENTION_CASES = [(1, 12, 128, 128, 64), (2, 3, 37, 5, 20), (1, 1, 1, 1, 1), (3, 2, 9, 130, 64), (2, 4, 17, 17, 33),
                   (1, 2, 5, 600, 24), (1, 2, 0, 6, 8)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: "x".join(map(str, c)))
def test_scaled_dot_product_attention(device, dtype, case):
    batch, heads, queries, keys, head_dim = case
    # query as a linear layer's output split into heads (a strided view, as in a transformer)
    query = randn(batch, queries, heads * head_dim, dtype=dtype, device=device, seed=1).unflatten(-1, (heads, head_dim))
    query = query.transpose(1, 2)
    key = randn(batch, heads, keys, head_dim, dtype=dtype, device=device, seed=2)
    value = randn(batch, heads, keys, head_dim, dtype=dtype, device=device, seed=3)
    scale = head_dim ** -0.5
    out = ops.scaled_dot_product_attention(query, key, value, scale)
    expected = reference.scaled_dot_product_attention(query, key, value, scale, compute_dtype=torch.float64)
    assert_close(out, expected, dtype)
    # the heads merge back without a copy: the op's layout is [batch, queries, heads, head_dim]
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
def test_scaled_dot_product_attention_extreme_scores(device):
    """Scores 100s apart (every probability but one underflows) and a row of equal scores."""
    query = torch.tensor([[[[30.0, 0.0], [0.0, 0.0]]]], device=device)
    key = torch.tensor([[[[4.0, 1.0], [-4.0, 2.0], [0.0, 3.0]]]], device=device)
    value = randn(1, 1, 3, 2, device=device)
    out = ops.scaled_dot_product_attention(query, key, value, 1.0)
    expected = reference.scaled_dot_product_attention(query, key, value, 1.0, compute_dtype=torch.float64)
    assert_close(out, expected, torch.float32)
    assert torch.allclose(out[0, 0, 0].cpu(), value[0, 0, 0].cpu())
    assert torch.allclose(out[0, 0, 1].cpu(), value[0, 0].mean(0).cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 128, 768), (7, 37), (3, 9), (4, 1), (2, 0), (0, 5)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_add_layer_norm(device, dtype, shape, affine):
    x, residual = randn(*shape, dtype=dtype, device=device, seed=1), randn(*shape, dtype=dtype, device=device, seed=2)
    weight = randn(shape[-1], dtype=dtype, device=device, seed=3) if affine else None
    bias = randn(shape[-1], dtype=dtype, device=device, seed=4) if affine else None
    out = ops.add_layer_norm(x, residual, weight, bias, 1e-5)
    expected = reference.add_layer_norm(x, residual, weight, bias, 1e-5, compute_dtype=torch.float64)
    assert_close(out, expected, dtype)


# Packed nonzeros (ops.pack_csr): a weight wide enough for several L1 column blocks and dense enough
# to pack, with empty and dense rows; 130 input rows are two full 64-row panels (read packed) and a
# partial one (read unpacked).
def _packable(rows, cols, seed, dtype=torch.float32):
    return random_csr(rows, cols, 0.2, seed=seed, dtype=dtype, empty_rows=(0, 7), dense_rows=(3,))


@requires_compiled_ops
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_csr_ops_give_the_unpacked_outputs_bit_for_bit(dtype):
    w1, w2, w3 = _packable(300, 700, 1, dtype), _packable(250, 300, 2, dtype), _packable(40, 700, 3, dtype)
    packings = [ops.pack_csr(w.crow_indices, w.col_indices, w.values, w.shape[1]) for w in (w1, w2, w3)]
    assert all(p.dtype == torch.int32 and p.numel() > 0 for p in packings)
    x = randn(130, 700, dtype=dtype, seed=3)
    bias = randn(300, dtype=dtype, seed=4)
    args = (x, w1.crow_indices, w1.col_indices, w1.values, bias, 700, True, None)
    packed = ops.csr_linear(*args, packed=packings[0])
    assert torch.equal(packed, ops.csr_linear(*args))
    assert_close(packed, _linear_ref(x, w1, bias, True), dtype)
    layers = ([w1.crow_indices, w3.crow_indices], [w1.col_indices, w3.col_indices], [w1.values, w3.values],
              [bias, None], 700)
    for got, want in zip(ops.csr_linears(x, *layers, packed=[packings[0], None]), ops.csr_linears(x, *layers)):
        assert torch.equal(got, want)
    mlp = (x, w1.crow_indices, w1.col_indices, w1.values, bias, w2.crow_indices, w2.col_indices, w2.values,
           None, 700, "gelu")
    packed_mlp = ops.csr_mlp(*mlp, packed1=packings[0], packed2=packings[1])
    assert torch.equal(packed_mlp, ops.csr_mlp(*mlp))
    assert_close(packed_mlp, reference.csr_mlp(*mlp, compute_dtype=torch.float64), dtype)


def _pointwise_conv(w, packed=None, residual=None, stride=(1, 1)):
    """A 1x1 csr_conv2d of w ([out_channels, in_channels]) with a bias and a ReLU."""
    bias = randn(w.shape[0], dtype=w.values.dtype, seed=4)
    return lambda x: ops.csr_conv2d(x, w.crow_indices, w.col_indices, w.values, bias, w.shape[1], (1, 1), stride,
                                    (0, 0), (1, 1), 1, True, residual, packed)


@requires_compiled_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride, size", [((1, 1), 7), ((2, 2), 14), ((2, 3), 13)])
def test_packed_pointwise_csr_conv2d_gives_the_unpacked_outputs_bit_for_bit(dtype, stride, size):
    """A 1x1 convolution runs as a linear layer over the output pixels of all its images, 64 at a time
    (panels across images: 3 x 7x7 = two whole panels and one of 19 pixels), reading the packing; a
    strided one copies its panels from the pixels it reads (7x7 and 7x5 of 14x14 and 13x13)."""
    w = _packable(300, 700, 1, dtype)
    packing = ops.pack_csr(w.crow_indices, w.col_indices, w.values, 700)
    assert packing.numel() > 0
    x = randn(3, 700, size, size, dtype=dtype, seed=2)
    out_hw = ops.conv2d_output_hw((size, size), (1, 1), stride, (0, 0), (1, 1))
    residual = randn(3, 300, *out_hw, dtype=dtype, seed=3)
    packed = _pointwise_conv(w, packing, residual, stride)(x)
    assert torch.equal(packed, _pointwise_conv(w, None, residual, stride)(x))
    bias = randn(300, dtype=dtype, seed=4)
    expected = reference.csr_conv2d(x, w.crow_indices, w.col_indices, w.values, bias, 700, (1, 1), stride, (0, 0),
                                    (1, 1), 1, True, residual, compute_dtype=torch.float64)
    assert_close(packed, expected, dtype)


@requires_compiled_ops
def test_packed_pointwise_csr_conv2d_on_dlmc_rn50_patterns(dlmc):
    """Real pruned 1x1 layers (DLMC ResNet-50, 90%) at batch 2 on 10x10 images (200 pixels: three
    whole panels, one of them across the images), packed where packing pays."""
    packed_shapes = 0
    for path in _one_file_per_shape(dlmc, "rn50/magnitude_pruning/0.9"):
        w = load_smtx(path, seed=0)
        cout, cols = w.shape
        if cols % 9 == 0 and cols // 9 >= 64:
            continue  # a 3x3 layer
        packing = ops.pack_csr(w.crow_indices, w.col_indices, w.values, cols)
        packed_shapes += packing.numel() > 0
        x = randn(2, cols, 10, 10, seed=9)
        y = _pointwise_conv(w, packing)(x)
        assert torch.equal(y, _pointwise_conv(w)(x))
        bias = randn(cout, seed=4)
        expected = reference.csr_conv2d(x, w.crow_indices, w.col_indices, w.values, bias, cols, (1, 1), (1, 1),
                                        (0, 0), (1, 1), 1, True, compute_dtype=torch.float64)
        assert_close(y, expected, torch.float32)
    assert packed_shapes > 0


@requires_compiled_ops
@pytest.mark.parametrize("stride", [1, 2])
def test_packed_3x3_csr_conv2d_on_dlmc_rn50_patterns(dlmc, stride):
    """Real pruned 3x3 layers (DLMC ResNet-50, 90%) at batch 2 over 200 output pixels (10x10, from 20x20 at
    stride 2), each with its packing: those with enough nonzeros per weight column run over their input
    unfolded into panels (PackedConvLayout::panels), the rest on tap offsets; both against float64."""
    packed_shapes = 0
    for path in _one_file_per_shape(dlmc, "rn50/magnitude_pruning/0.9"):
        w = load_smtx(path, seed=0)
        cout, cols = w.shape
        if cols % 9 != 0 or cols // 9 < 64:
            continue  # a 1x1 layer
        cin = cols // 9
        packing = ops.pack_csr(w.crow_indices, w.col_indices, w.values, cols)
        packed_shapes += packing.numel() > 0 and w.values.numel() >= 6 * cols
        x = randn(2, cin, 10 * stride, 10 * stride, seed=9)
        bias = randn(cout, seed=4)
        y = ops.csr_conv2d(x, w.crow_indices, w.col_indices, w.values, bias, cin, (3, 3), (stride, stride), (1, 1),
                           (1, 1), 1, True, None, packing)
        expected = reference.csr_conv2d(x, w.crow_indices, w.col_indices, w.values, bias, cin, (3, 3),
                                        (stride, stride), (1, 1), (1, 1), 1, True, compute_dtype=torch.float64)
        assert_close(y, expected, torch.float32)
    assert packed_shapes > 0


@requires_compiled_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, with_residual", [
    # 4 x 60x60 = 14400 pixels (225 panels, some across two images): the first layer's output
    # streams (18 MB touched without a residual), so the layers run a panel at a time through both
    ((4, 64, 60, 60, 256, 40), True),
    ((4, 64, 60, 60, 256, 40), False),
    # 7 x 9 x 3 pixels: too few panels for the threads, the layers one after the other
    ((3, 24, 7, 9, 40, 24), True),
])
def test_csr_pointwise_conv_pair_gives_the_two_convolutions_bit_for_bit(dtype, shape, with_residual):
    """csr_pointwise_conv_pair against its two csr_conv2d calls (bit for bit, packed and unpacked; a
    first weight with empty rows and a dense one, a second of 0 nonzeros) and the float64 reference."""
    n, cin, h, w_, mid, cout = shape
    x = torch.relu(randn(n, cin, h, w_, seed=1))
    for second_density in (0.1, 0.0):
        w1 = random_csr(mid, cin, 0.1, seed=2, dtype=dtype, empty_rows=(0, 5), dense_rows=(3,))
        w2 = random_csr(cout, mid, second_density, seed=3, dtype=dtype)
        bias1, bias2 = randn(mid, dtype=dtype, seed=4), randn(cout, dtype=dtype, seed=5)
        residual = randn(n, mid, h, w_, seed=6) if with_residual else None
        for packed in (False, True):
            p1 = ops.pack_csr(w1.crow_indices, w1.col_indices, w1.values, cin) if packed else None
            p2 = ops.pack_csr(w2.crow_indices, w2.col_indices, w2.values, mid) if packed else None
            args = (x, w1.crow_indices, w1.col_indices, w1.values, bias1, cin, True, residual, p1,
                    w2.crow_indices, w2.col_indices, w2.values, bias2, True, p2)
            y1, y2 = ops.csr_pointwise_conv_pair(*args)
            one, none = (1, 1), (0, 0)
            first = ops.csr_conv2d(x, w1.crow_indices, w1.col_indices, w1.values, bias1, cin, one, one, none, one, 1,
                                   True, residual, p1)
            second = ops.csr_conv2d(first, w2.crow_indices, w2.col_indices, w2.values, bias2, mid, one, one, none, one,
                                    1, True, None, p2)
            assert torch.equal(y1, first) and torch.equal(y2, second)
        expected = reference.csr_pointwise_conv_pair(*args, compute_dtype=torch.float64)
        assert_close(y1, expected[0].float(), torch.float32)
        assert_close(y2, expected[1].float(), torch.float32)

@requires_compiled_ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, summand", [
    # 8 x 56x56 images, 128 -> 32 -> 32 -> 128 channels: the last layer touches 29 MB, past the cache,
    # so the block runs a band of rows at a time (cpu::bottleneck_band_rows)
    ((8, 128, 56, 56, 32, 32, 128), "residual"),
    # a shortcut layer's output as the residual, in bands (of 7-column rows: 98 or 196 columns, tiles of
    # 64 and a part one, which the in-place sum must not store twice) and apart
    ((8, 64, 56, 7, 32, 32, 1024), "shortcut"),
    ((2, 12, 9, 7, 10, 6, 12), "shortcut"),
    # 2 x 9x7 images: the layers one after the other
    ((2, 12, 9, 7, 10, 6, 12), "residual"),
    ((2, 12, 9, 7, 10, 6, 12), None),
])
def test_csr_bottleneck_block_gives_its_three_convolutions(dtype, shape, summand):
    """csr_bottleneck_block against its csr_conv2d calls and the float64 reference (a first weight with
    empty rows and a dense one, a 3x3 weight of 0 nonzeros); with a shortcut, the last layer without its
    ReLU and the shortcut layer taking its output as the residual, with the ReLU."""
    from sparse_rt import _C

    n, cin, h, w_, mid1, mid2, cout = shape
    band_rows = _C.bottleneck_band_rows(*shape, nnz2=int(mid2 * mid1 * 9 * 0.1), threads=torch.get_num_threads())
    assert (band_rows > 0) == (n == 8)
    x = torch.relu(randn(n, cin, h, w_, seed=1))
    w1 = random_csr(mid1, cin, 0.2, seed=2, dtype=dtype, empty_rows=(0, 5), dense_rows=(3,))
    w3 = random_csr(cout, mid2, 0.3, seed=4, dtype=dtype, empty_rows=(1,))
    w4 = random_csr(cout, cin, 0.2, seed=9, dtype=dtype, empty_rows=(2,))
    bias1, bias2, bias3, bias4 = (randn(c, dtype=dtype, seed=5 + i) for i, c in enumerate((mid1, mid2, cout, cout)))
    residual = randn(n, cout, h, w_, seed=8) if summand == "residual" else None
    shortcut = (w4.crow_indices, w4.col_indices, w4.values, bias4) if summand == "shortcut" else ()
    one, none = (1, 1), (0, 0)
    for middle_density in (0.1, 0.0):
        w2 = random_csr(mid2, mid1 * 9, middle_density, seed=3, dtype=dtype)
        args = (x, w1.crow_indices, w1.col_indices, w1.values, bias1, cin, True, w2.crow_indices, w2.col_indices,
                w2.values, bias2, True, w3.crow_indices, w3.col_indices, w3.values, bias3, True, residual, *shortcut)
        y = ops.csr_bottleneck_block(*args)
        apart = ops.csr_conv2d(x, w1.crow_indices, w1.col_indices, w1.values, bias1, cin, one, one, none, one, 1, True)
        apart = ops.csr_conv2d(apart, w2.crow_indices, w2.col_indices, w2.values, bias2, mid1, (3, 3), one, one, one, 1,
                               True)
        apart = ops.csr_conv2d(apart, w3.crow_indices, w3.col_indices, w3.values, bias3, mid2, one, one, none, one, 1,
                               not shortcut, residual)
        if shortcut:
            apart = ops.csr_conv2d(x, *shortcut, cin, one, one, none, one, 1, True, apart)
        assert_close(y, apart, torch.float32)
        assert_close(y, reference.csr_bottleneck_block(*args, compute_dtype=torch.float64).float(), torch.float32)


@requires_compiled_ops
def test_bottleneck_bands_are_at_least_a_tile_wide_and_divide_the_height():
    """The bands the block kernel picks for ResNet-50's stages at batches 1 to 32 (and a narrow image):
    none, or a divisor of the height whose rows hold at least one 64-column tile (narrower bands run
    the SpMM in tiles of 32, 16 and 8 columns, each a pass over the weight); at batch 1 none (the
    activations stay in the cache)."""
    from sparse_rt import _C

    stages = [(256, 56, 64), (512, 28, 128), (1024, 14, 256), (2048, 7, 512), (64, 8, 16)]
    for batch in (1, 8, 32):
        for channels, size, mid in stages:
            rows = _C.bottleneck_band_rows(batch, channels, size, size, mid, mid, channels, nnz2=mid * mid, threads=2)
            assert rows == 0 or (size % rows == 0 and rows * size >= 64), (batch, channels, size, rows)
            assert batch > 1 or rows == 0, (channels, size, rows)


@requires_compiled_ops
def test_packed_csr_linear_on_dlmc_transformer_patterns(dlmc):
    packed_shapes = 0
    for path in _one_file_per_shape(dlmc, "transformer/magnitude_pruning/0.9"):
        w = load_smtx(path, seed=0)
        packing = ops.pack_csr(w.crow_indices, w.col_indices, w.values, w.shape[1])
        packed_shapes += packing.numel() > 0
        x = randn(192, w.shape[1], seed=9)
        y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, w.shape[1], packed=packing)
        assert torch.equal(y, ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, w.shape[1]))
        assert_close(y, _linear_ref(x, w, None, False), torch.float32)
    assert packed_shapes > 0


@requires_compiled_ops
def test_pack_csr_is_empty_where_packing_would_not_pay_and_the_ops_take_that():
    narrow = random_csr(50, 64, 0.5, seed=5)  # one L1 column block: nothing to block
    sparse = random_csr(50, 700, 0.01, seed=6)  # a few nonzeros per row and block
    empty = random_csr(50, 700, 0.0, seed=7)
    x = randn(70, 64, seed=1)
    for w in (narrow, sparse, empty):
        packing = ops.pack_csr(w.crow_indices, w.col_indices, w.values, w.shape[1])
        assert packing.dtype == torch.int32 and packing.numel() == 0
        x = randn(70, w.shape[1], seed=1)
        assert torch.equal(ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, w.shape[1], packed=packing),
                           ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, w.shape[1]))


@requires_compiled_ops
def test_packed_csr_ops_refuse_a_packing_that_is_not_the_weights():
    w, other = _packable(300, 700, 1), _packable(300, 700, 2)
    packing = ops.pack_csr(w.crow_indices, w.col_indices, w.values, 700)
    x = randn(64, 700, seed=2)

    def linear(packed, values=w.values):
        return ops.csr_linear(x, w.crow_indices, w.col_indices, values, None, 700, packed=packed)

    changed = w.values.clone()
    changed[w.crow_indices[200]] += 1  # row 200's first nonzero
    cases = [
        (lambda: linear(packing, changed), r"packed differs from col_indices / values in row 200 \(nonzeros \d+"),
        (lambda: linear(ops.pack_csr(other.crow_indices, other.col_indices, other.values, 700)),
         r"packed (has a layout that does not fit|differs)"),
        (lambda: linear(packing[:-2]), r"packed has a layout that does not fit the weight's 300 rows"),
        (lambda: linear(packing[1:]), r"packed is not a packing of nonzeros"),
        (lambda: linear(packing.long()), r"packed must be int32, got Long"),
        (lambda: linear(packing.view(-1, 1)), r"packed must be 1-D"),
        (lambda: ops.csr_linear(x[:, :650], w.crow_indices, w.col_indices, w.values, None, 650, packed=packing),
         r"packed was packed for a 300x700 weight, not 300x650"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_linear: " + message):
            call()
    with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_linears \(layer 1\): packed differs"):
        ops.csr_linears(x, [w.crow_indices] * 2, [w.col_indices] * 2, [w.values, changed], [None, None], 700,
                        packed=[packing, packing])
    with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_linears: packed must be empty or hold one entry per "
                                           r"layer \(2\), got 1"):
        ops.csr_linears(x, [w.crow_indices] * 2, [w.col_indices] * 2, [w.values] * 2, [None, None], 700,
                        packed=[packing])
    image = randn(2, 700, 8, 8, seed=4)
    with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_conv2d: packed differs from col_indices / values in "
                                           r"row 200"):
        ops.csr_conv2d(image, w.crow_indices, w.col_indices, changed, None, 700, (1, 1), (1, 1), (0, 0), (1, 1), 1,
                       packed=packing)
    back = _packable(700, 300, 3)
    with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_mlp \(second layer\): packed was packed for"):
        ops.csr_mlp(x, w.crow_indices, w.col_indices, w.values, None, back.crow_indices, back.col_indices,
                    back.values, None, 700, "relu", packed1=packing, packed2=packing)
    # Read only where a whole panel runs (more than 32 rows, the last panel padded): a smaller batch
    # neither reads nor checks it, nor does a convolution that is not pointwise.
    small = randn(32, 700, seed=3)
    assert torch.equal(ops.csr_linear(small, w.crow_indices, w.col_indices, changed, None, 700, packed=packing),
                       ops.csr_linear(small, w.crow_indices, w.col_indices, changed, None, 700))
    strided = (w.crow_indices, w.col_indices, changed, None, 700, (1, 1), (2, 2), (0, 0), (1, 1), 1)
    assert torch.equal(ops.csr_conv2d(image, *strided, packed=packing), ops.csr_conv2d(image, *strided))


@requires_compiled_ops
def test_trusted_packings_skip_the_entry_comparison_but_not_the_layout_check():
    """With trusted packings a stale packing is computed with, as documented (the weight it was made
    from), a packing with columns outside the weight or segments outside their row block is read
    within bounds (one panel or many), and a malformed header or row block offsets are still refused."""
    w = _packable(300, 700, 1)
    packing = ops.pack_csr(w.crow_indices, w.col_indices, w.values, 700)
    x = randn(64, 700, seed=2)
    changed = w.values.clone()
    changed[w.crow_indices[200]] += 1

    def linear(packed, values=w.values):
        return ops.csr_linear(x, w.crow_indices, w.col_indices, values, None, 700, packed=packed)

    assert not ops.trusted_packings_enabled()
    with ops.trusted_packings():
        assert ops.trusted_packings_enabled()
        assert torch.equal(linear(packing, changed), linear(None))  # stale: the packed values
        corrupt = packing.clone()
        corrupt[-2] = 1 << 30  # the last entry's column
        # The first segment's row and length (after the header and the two row blocks' offsets)
        corrupt[6 + 2 * 3:6 + 2 * 3 + 2] = torch.tensor([-3, 1 << 30], dtype=torch.int32)
        assert torch.isfinite(linear(corrupt)).all()
        # Five panels: the columns are checked in one pass before the sums, not per panel and row block.
        wide = randn(300, 700, seed=5)

        def wide_linear(packed):
            return ops.csr_linear(wide, w.crow_indices, w.col_indices, w.values, None, 700, packed=packed)

        assert torch.equal(wide_linear(packing), wide_linear(None))
        negative = packing.clone()
        negative[-2] = -5
        assert torch.isfinite(wide_linear(corrupt)).all() and torch.isfinite(wide_linear(negative)).all()
        with pytest.raises(RuntimeError, match=r"^sparse_rt.csr_linear: packed has a layout that does not fit"):
            linear(packing[:-2])
        with ops.trusted_packings(False):  # a nested block turns it off for its calls
            with pytest.raises(RuntimeError, match=r"packed differs from col_indices / values in row 200"):
                linear(packing, changed)
    with pytest.raises(RuntimeError, match=r"packed differs from col_indices / values in row 200"):
        linear(packing, changed)
    assert not ops.set_trusted_packings(True) and ops.trusted_packings_enabled()
    assert ops.set_trusted_packings(False) and not ops.trusted_packings_enabled()


@requires_compiled_ops
def test_trusted_packings_from_the_environment():
    code = "from sparse_rt import ops; print(ops.trusted_packings_enabled())"
    for value, expected in (("1", "True"), ("0", "False")):
        env = {**os.environ, "SPARSE_RT_TRUST_PACKINGS": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected
