"""torch.library.opcheck for every op: schema, fake kernel, autograd registration, AOT dispatch."""

import pytest
import torch
from helpers import (
    DEVICES,
    DTYPES,
    randn,
    random_bsr,
    random_csr,
    requires_compiled_ops,
)

pytestmark = requires_compiled_ops


def _linear_samples(device):
    for dtype in DTYPES:
        w = random_csr(12, 20, 0.3, seed=1, dtype=dtype, device=device)
        for x, bias, relu, residual in [
                (randn(3, 20, dtype=dtype, device=device), randn(12, dtype=dtype, device=device), False, None),
                (randn(2, 4, 20, dtype=dtype, device=device), None, True, None),
                (randn(16, 20, dtype=dtype, device=device), None, False, None),
                (randn(2, 4, 20, dtype=dtype, device=device), None, True, randn(2, 4, 12, dtype=dtype, device=device)),
                (randn(16, 20, dtype=dtype, device=device), randn(12, dtype=dtype, device=device), False,
                 randn(16, 12, dtype=dtype, device=device))]:
            yield (x, w.crow_indices, w.col_indices, w.values, bias, 20, relu, residual)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_csr_linear(device):
    for args in _linear_samples(device):
        torch.library.opcheck(torch.ops.sparse_rt.csr_linear.default, args)


def test_opcheck_pack_csr_and_the_ops_reading_a_packing():
    """CPU only (packings are the CPU kernels' layout); 64 input rows or more, so that the packing is read."""
    for dtype in DTYPES:
        w1 = random_csr(40, 300, 0.3, seed=1, dtype=dtype)
        w2 = random_csr(24, 40, 0.3, seed=2, dtype=dtype)
        pack = torch.ops.sparse_rt.pack_csr.default
        torch.library.opcheck(pack, (w1.crow_indices, w1.col_indices, w1.values, 300))
        packing = pack(w1.crow_indices, w1.col_indices, w1.values, 300)
        assert packing.numel() > 0
        x = randn(64, 300, dtype=dtype)
        torch.library.opcheck(torch.ops.sparse_rt.csr_linear.default,
                              (x, w1.crow_indices, w1.col_indices, w1.values, None, 300, True, None, packing))
        torch.library.opcheck(torch.ops.sparse_rt.csr_linears.default,
                              (x, [w1.crow_indices] * 2, [w1.col_indices] * 2, [w1.values] * 2, [None, None], 300,
                               [packing, None]))
        torch.library.opcheck(torch.ops.sparse_rt.csr_mlp.default,
                              (x, w1.crow_indices, w1.col_indices, w1.values, None, w2.crow_indices, w2.col_indices,
                               w2.values, None, 300, "gelu", None, packing, None))
        image = randn(2, 300, 6, 6, dtype=dtype)  # a pointwise convolution over 72 pixels reads it
        torch.library.opcheck(torch.ops.sparse_rt.csr_conv2d.default,
                              (image, w1.crow_indices, w1.col_indices, w1.values, None, 300, [1, 1], [1, 1], [0, 0],
                               [1, 1], 1, True, None, packing))
        # A 3x3 one over 162 output pixels reads it over its input unfolded (6 nonzeros per weight column or more).
        w3 = random_csr(24, 16 * 9, 0.5, seed=3, dtype=dtype)
        packing3 = pack(w3.crow_indices, w3.col_indices, w3.values, 16 * 9)
        assert packing3.numel() > 0
        torch.library.opcheck(torch.ops.sparse_rt.csr_conv2d.default,
                              (randn(2, 16, 9, 9, dtype=dtype), w3.crow_indices, w3.col_indices, w3.values, None, 16,
                               [3, 3], [1, 1], [1, 1], [1, 1], 1, True, None, packing3))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_bsr_linear(device):
    for dtype in (torch.float32, torch.float16):
        w = random_bsr(16, 24, (4, 8), 0.4, seed=2, dtype=dtype, device=device)
        for x in (randn(5, 24, dtype=dtype, device=device), randn(2, 3, 24, dtype=dtype, device=device)):
            for relu, residual in ((False, None), (True, randn(*x.shape[:-1], 16, dtype=dtype, device=device))):
                torch.library.opcheck(torch.ops.sparse_rt.bsr_linear.default,
                                      (x, w.crow_indices, w.col_indices, w.values,
                                       randn(16, dtype=dtype, device=device), 24, relu, residual))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_csr_linears(device):
    for dtype in DTYPES:
        layers = [random_csr(out_f, 20, 0.3, seed=out_f, dtype=dtype, device=device) for out_f in (12, 5)]
        for x in (randn(3, 20, dtype=dtype, device=device), randn(2, 9, 20, dtype=dtype, device=device)):
            torch.library.opcheck(torch.ops.sparse_rt.csr_linears.default,
                                  (x, [w.crow_indices for w in layers], [w.col_indices for w in layers],
                                   [w.values for w in layers], [randn(12, dtype=dtype, device=device), None], 20))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_csr_mlp(device):
    for dtype in DTYPES:
        w1 = random_csr(24, 20, 0.3, seed=4, dtype=dtype, device=device)
        w2 = random_csr(12, 24, 0.3, seed=5, dtype=dtype, device=device)
        for x, activation, residual in [(randn(3, 20, dtype=dtype, device=device), "gelu", None),
                                        (randn(2, 9, 20, dtype=dtype, device=device), "relu",
                                         randn(2, 9, 12, dtype=dtype, device=device))]:
            torch.library.opcheck(torch.ops.sparse_rt.csr_mlp.default,
                                  (x, w1.crow_indices, w1.col_indices, w1.values, randn(24, dtype=dtype, device=device),
                                   w2.crow_indices, w2.col_indices, w2.values, None, 20, activation, residual))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_csr_conv2d(device):
    for dtype in (torch.float32, torch.bfloat16):
        w = random_csr(8, 4 // 2 * 9, 0.4, seed=3, dtype=dtype, device=device)
        x = randn(2, 4, 9, 7, dtype=dtype, device=device)
        # output [2, 8, 5, 7]
        for residual in (None, randn(2, 8, 5, 7, dtype=dtype, device=device)):
            args = (x, w.crow_indices, w.col_indices, w.values, randn(8, dtype=dtype, device=device), 4,
                    [3, 3], [2, 1], [1, 2], [1, 2], 2, True, residual)
            torch.library.opcheck(torch.ops.sparse_rt.csr_conv2d.default, args)


def test_opcheck_csr_pointwise_conv_pair():
    """CPU only (fusion calls it for CPU inputs): the layers one after the other (2 x 6x6 pixels), and,
    with the residual, a panel at a time through both (8 x 32x32 pixels: 18 MB touched, past the cache)."""
    for values_dtype in DTYPES:
        for n, size, cin, mid, cout in ((2, 6, 12, 20, 8), (8, 32, 64, 256, 16)):
            w1 = random_csr(mid, cin, 0.2, seed=6, dtype=values_dtype)
            w2 = random_csr(cout, mid, 0.2, seed=7, dtype=values_dtype)
            x = randn(n, cin, size, size)
            for residual in (None, randn(n, mid, size, size)):
                torch.library.opcheck(torch.ops.sparse_rt.csr_pointwise_conv_pair.default,
                                      (x, w1.crow_indices, w1.col_indices, w1.values, randn(mid, dtype=values_dtype),
                                       cin, True, residual, None, w2.crow_indices, w2.col_indices, w2.values, None,
                                       False, None))


def test_opcheck_csr_bottleneck_block():
    """CPU only (fusion calls it for CPU inputs): the layers one after the other (2 x 6x5 pixels), and,
    with the residual or a shortcut layer, band by band (8 x 32x32 pixels of 256 channels: 17 MB touched,
    past the cache)."""
    for values_dtype in DTYPES:
        for n, size, cin, mid in ((2, 6, 12, 8), (8, 32, 256, 16)):
            w1 = random_csr(mid, cin, 0.2, seed=6, dtype=values_dtype)
            w2 = random_csr(mid, mid * 9, 0.2, seed=7, dtype=values_dtype)
            w3 = random_csr(cin, mid, 0.2, seed=8, dtype=values_dtype)
            w4 = random_csr(cin, cin, 0.1, seed=9, dtype=values_dtype)
            x = randn(n, cin, size, size - 1 if n == 2 else size)
            block = (x, w1.crow_indices, w1.col_indices, w1.values, randn(mid, dtype=values_dtype), cin, True,
                     w2.crow_indices, w2.col_indices, w2.values, None, True, w3.crow_indices, w3.col_indices,
                     w3.values, randn(cin, dtype=values_dtype), True)
            for residual in (None, randn(*x.shape)):
                torch.library.opcheck(torch.ops.sparse_rt.csr_bottleneck_block.default, (*block, residual))
            torch.library.opcheck(torch.ops.sparse_rt.csr_bottleneck_block.default,
                                  (*block, None, w4.crow_indices, w4.col_indices, w4.values,
                                   randn(cin, dtype=values_dtype)))
            # With the layers' packings (read where the layers run apart).
            packings = [torch.ops.sparse_rt.pack_csr(w.crow_indices, w.col_indices, w.values, w.shape[1])
                        for w in (w1, w2, w3, w4)]
            torch.library.opcheck(torch.ops.sparse_rt.csr_bottleneck_block.default,
                                  (*block, None, w4.crow_indices, w4.col_indices, w4.values,
                                   randn(cin, dtype=values_dtype), *packings))


@pytest.mark.parametrize("device", DEVICES)
def test_ops_compile_fullgraph(device):
    """torch.compile traces the ops through their fake kernels without graph breaks. CUDA runs the
    compiled graph through inductor; CPU only traces (inductor's C++ build would take a minute)."""
    w1 = random_csr(96, 40, 0.3, seed=4, device=device)
    w2 = random_bsr(64, 96, (16, 16), 0.5, seed=5, device=device)

    def layers(x):
        h = torch.ops.sparse_rt.csr_linear(x, w1.crow_indices, w1.col_indices, w1.values, None, 40, True)
        return torch.ops.sparse_rt.bsr_linear(h * 2.0, w2.crow_indices, w2.col_indices, w2.values, None, 96, False)

    x = randn(3, 5, 40, device=device)
    compiled = torch.compile(layers, fullgraph=True, backend="inductor" if device == "cuda" else "eager")
    y = compiled(x)
    assert y.shape == (3, 5, 64)
    torch.testing.assert_close(y, layers(x))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_scaled_dot_product_attention(device):
    for dtype in DTYPES:
        query = randn(2, 5, 3 * 8, dtype=dtype, device=device).unflatten(-1, (3, 8)).transpose(1, 2)
        key = randn(2, 3, 7, 8, dtype=dtype, device=device)
        value = randn(2, 3, 7, 8, dtype=dtype, device=device, seed=1)
        torch.library.opcheck(torch.ops.sparse_rt.scaled_dot_product_attention.default, (query, key, value, 0.35))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_add_layer_norm(device):
    for dtype in DTYPES:
        x, residual = randn(2, 5, 24, dtype=dtype, device=device), randn(2, 5, 24, dtype=dtype, device=device, seed=1)
        for weight, bias in [(randn(24, dtype=dtype, device=device), randn(24, dtype=dtype, device=device)),
                             (None, None)]:
            torch.library.opcheck(torch.ops.sparse_rt.add_layer_norm.default, (x, residual, weight, bias, 1e-5))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_max_pool2d(device):
    for dtype in DTYPES:
        x = randn(2, 20, 9, 7, dtype=dtype, device=device)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            torch.library.opcheck(torch.ops.sparse_rt.max_pool2d.default,
                                  (x.contiguous(memory_format=memory_format), [3, 2], [2, 1], [1, 0]))
