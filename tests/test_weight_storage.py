"""Weights stored in 16 bits for fp32 activations (SparseWeightModule.store_weights, SparseModel.store_weights):
the CPU ops take fp32 inputs with fp16/bf16 values, and a layer's output stays within the documented bound
(sparse_rt.nn.WEIGHT_STORAGE_ERROR) of its fp32 weights'."""

import pytest
import torch
from helpers import TOLERANCE, randn, random_bsr, random_csr, requires_compiled_ops, requires_cuda

import sparse_rt
from sparse_rt import models, ops
from sparse_rt.formats import CSR, load_smtx
from sparse_rt.nn import WEIGHT_STORAGE_ERROR, SparseLinear
from sparse_rt.ops import reference

pytestmark = requires_compiled_ops
STORED = (torch.bfloat16, torch.float16)


def _stored(w, dtype):
    """w (CSR/BSR, fp32 values) with its values rounded to `dtype`."""
    return type(w)(w.crow_indices, w.col_indices, w.values.to(dtype), *_shape_args(w))


def _shape_args(w):
    return (w.shape,) if isinstance(w, CSR) else (w.shape, tuple(w.values.shape[1:]))


def _widened(w):
    """The float64 reference's view of w: its values as the kernels read them."""
    return w.values.double()


def _assert_within_storage_bound(y, x, w32, dtype, bias=None):
    """|y - (x W32^T + b)| (float64) within WEIGHT_STORAGE_ERROR[dtype] of the fp32 weights, plus the fp32
    sums' own rounding (n + 2 roundings of 2^-24 over a row of n nonzeros and its bias)."""
    relative, absolute = WEIGHT_STORAGE_ERROR[dtype]
    dense, mask = w32.to_dense().double(), (w32.to_dense() != 0).double()
    x64 = x.double().reshape(-1, dense.shape[1])
    b = torch.zeros(dense.shape[0], dtype=torch.float64) if bias is None else bias.double()
    reference64 = x64 @ dense.T + b
    magnitude = x64.abs() @ dense.abs().T
    per_row = mask.sum(1)
    budget = (relative * magnitude + absolute * (x64.abs() @ mask.T)
              + (per_row + 2) * 2.0**-24 * (magnitude * (1 + relative) + b.abs()))
    error = (y.double().reshape(reference64.shape) - reference64).abs()
    worst = (error - budget).max().item() if error.numel() else 0.0
    assert worst <= 0, f"{dtype} storage: an output exceeds its bound by {worst:.3g}"
    return error


@pytest.mark.parametrize("dtype", STORED)
@pytest.mark.parametrize("batch", [1, 5, 8, 70, 130])
def test_csr_linear_within_the_bound_of_the_fp32_weights(dtype, batch):
    """Gather (batch < 8), tiled and (with a packing, 64 rows and more) packed kernels; odd shapes, an empty
    and a full row."""
    w32 = random_csr(37, 300, 0.2, seed=4, empty_rows=(3,), dense_rows=(5,))
    w = _stored(w32, dtype)
    x, bias = randn(batch, 300, seed=5), randn(37, seed=6)
    packings = [None] + ([ops.pack_csr(w.crow_indices, w.col_indices, w.values, 300)] if batch >= 64 else [])
    for packing in packings:
        y = ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, bias, 300, False, None, packing)
        assert y.dtype == torch.float32
        _assert_within_storage_bound(y, x, w32, dtype, bias)
        expected = reference.csr_linear(x.double(), w.crow_indices, w.col_indices, _widened(w), bias.double(), 300,
                                        compute_dtype=torch.float64)
        assert (y.double() - expected).abs().max().item() <= TOLERANCE[torch.float32] * expected.abs().max().item()


@pytest.mark.parametrize("dtype", STORED)
def test_one_nonzero_per_row_meets_the_bound_exactly(dtype):
    """With one nonzero per row an output's error is that weight's rounding alone: the bound is tight
    (truncating instead of rounding to nearest would break it for about half the rows), and tiny weights
    (fp16 subnormals) take the absolute term."""
    rows = 512
    g = torch.Generator().manual_seed(7)
    scale = torch.where(torch.arange(rows) % 4 == 0, 1e-6, 1.0)  # a quarter below fp16's normal range
    values = torch.randn(rows, generator=g) * scale
    w32 = CSR(torch.arange(rows + 1, dtype=torch.int32), torch.randint(0, 9, (rows,), generator=g, dtype=torch.int32),
              values, (rows, 9))
    w = _stored(w32, dtype)
    x = randn(3, 9, seed=8)
    error = _assert_within_storage_bound(ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, 9),
                                         x, w32, dtype)
    assert error.max().item() > 0  # the values were rounded: the check above had something to bound


@pytest.mark.parametrize("dtype", STORED)
def test_every_linear_op_reads_16_bit_values_with_fp32_inputs(dtype):
    """csr_linears, csr_mlp and bsr_linear against float64 with the values widened; nnz = 0 included."""
    tol = TOLERANCE[torch.float32]
    w1, w2 = _stored(random_csr(48, 40, 0.3, seed=1), dtype), _stored(random_csr(24, 48, 0.3, seed=2), dtype)
    empty = _stored(random_csr(16, 40, 0.0, seed=3), dtype)
    x = randn(70, 40, seed=4)
    b1, b2 = randn(48, seed=5), randn(24, seed=6)
    outputs = ops.csr_linears(x, [w1.crow_indices, empty.crow_indices], [w1.col_indices, empty.col_indices],
                              [w1.values, empty.values], [b1, None], 40)
    for y, w, b in zip(outputs, (w1, empty), (b1, None), strict=True):
        expected = reference.csr_linear(x.double(), w.crow_indices, w.col_indices, _widened(w),
                                        None if b is None else b.double(), 40, compute_dtype=torch.float64)
        assert y.dtype == torch.float32 and (y.double() - expected).abs().max().item() <= tol * max(
            expected.abs().max().item(), 1.0)
    y = ops.csr_mlp(x, w1.crow_indices, w1.col_indices, w1.values, b1, w2.crow_indices, w2.col_indices, w2.values,
                    b2, 40, "gelu")
    expected = reference.csr_mlp(x.double(), w1.crow_indices, w1.col_indices, _widened(w1), b1.double(),
                                 w2.crow_indices, w2.col_indices, _widened(w2), b2.double(), 40, "gelu",
                                 compute_dtype=torch.float64)
    assert y.dtype == torch.float32 and (y.double() - expected).abs().max().item() <= tol * expected.abs().max().item()
    wb = _stored(random_bsr(32, 40, (4, 4), 0.3, seed=9), dtype)
    y = ops.bsr_linear(x, wb.crow_indices, wb.col_indices, wb.values, None, 40)
    expected = reference.bsr_linear(x.double(), wb.crow_indices, wb.col_indices, _widened(wb), None, 40,
                                    compute_dtype=torch.float64)
    assert y.dtype == torch.float32 and (y.double() - expected).abs().max().item() <= tol * expected.abs().max().item()


@pytest.mark.parametrize("dtype", STORED)
def test_csr_conv2d_on_a_dlmc_pattern_with_16_bit_values(dlmc, dtype):
    """A real pruned ResNet-50 3x3 layer's pattern (bottleneck_2: the blocks' 3x3 convolutions), on an odd
    image."""
    w = _stored(load_smtx(dlmc / "rn50/magnitude_pruning/0.9/bottleneck_2_block_group2_1_1.smtx.gz", seed=0), dtype)
    out_channels, cols = w.shape
    assert cols % 9 == 0
    in_channels = cols // 9
    x, bias = randn(2, in_channels, 7, 9, seed=1), randn(out_channels, seed=2)
    args = (w.crow_indices, w.col_indices, w.values, bias, in_channels, [3, 3], [1, 1], [1, 1], [1, 1], 1)
    y = ops.csr_conv2d(x, *args)
    expected = reference.csr_conv2d(x.double(), w.crow_indices, w.col_indices, _widened(w), bias.double(),
                                    *args[4:], compute_dtype=torch.float64)
    assert y.dtype == torch.float32
    assert (y.double() - expected).abs().max().item() <= TOLERANCE[torch.float32] * expected.abs().max().item()


@pytest.mark.parametrize("dtype", STORED)
def test_opcheck_with_16_bit_values(dtype):
    w = _stored(random_csr(12, 20, 0.3, seed=1), dtype)
    for x, bias in [(randn(3, 20), randn(12)), (randn(70, 20), None)]:
        torch.library.opcheck(torch.ops.sparse_rt.csr_linear.default,
                              (x, w.crow_indices, w.col_indices, w.values, bias, 20, True, None))
    wc = _stored(random_csr(8, 2 * 9, 0.4, seed=3), dtype)
    torch.library.opcheck(torch.ops.sparse_rt.csr_conv2d.default,
                          (randn(2, 4, 9, 7), wc.crow_indices, wc.col_indices, wc.values, randn(8), 4, [3, 3], [2, 1],
                           [1, 2], [1, 2], 2, True, None))


def test_mismatched_dtypes_are_still_refused():
    w = _stored(random_csr(12, 20, 0.3, seed=1), torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"input dtype Half does not match the weight values dtype BFloat16"):
        ops.csr_linear(randn(3, 20, dtype=torch.float16), w.crow_indices, w.col_indices, w.values, None, 20)
    with pytest.raises(RuntimeError, match=r"bias dtype Half matches neither the weight values dtype BFloat16 nor "
                                           r"the input dtype Float"):
        ops.csr_linear(randn(3, 20), w.crow_indices, w.col_indices, w.values, randn(12, dtype=torch.float16), 20)


@requires_cuda
def test_cuda_refuses_fp32_inputs_with_16_bit_values():
    w = _stored(random_csr(12, 20, 0.3, seed=1, device="cuda"), torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"fp32 inputs with 16-bit values run on the CPU only"):
        ops.csr_linear(randn(3, 20, device="cuda"), w.crow_indices, w.col_indices, w.values, None, 20)
    layer = SparseLinear(20, 12, random_csr(12, 20, 0.3, seed=1, device="cuda"))
    with pytest.raises(ValueError, match=r"16-bit values beside fp32 inputs run on the CPU only, and this layer is "
                                         r"on cuda"):
        layer.store_weights(torch.bfloat16)


def _fused_bert(seed=0):
    torch.manual_seed(seed)
    pruned = sparse_rt.magnitude_prune(models.create("bert_encoder", layers=2).eval(), 0.9,
                                       exclude=models.keep_dense("bert_encoder")).eval()
    x = torch.randn(1, 128, 768, generator=torch.Generator().manual_seed(seed))
    model = sparse_rt.sparsify(pruned, example_inputs=(x,)).eval()
    model.fuse()
    return model, x


@pytest.mark.parametrize("dtype", STORED)
def test_sparse_model_store_weights(dtype):
    """Half the bytes of every sparse layer's values, fp32 biases and outputs, and outputs close to the fp32
    weights' (each layer within its bound; two encoder layers of BERT-base compound to about 1e-3)."""
    model, x = _fused_bert()
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    before = sum(m.values.nbytes for m in layers)
    with torch.inference_mode():
        y32 = model(x)
        assert model.store_weights(dtype) is model
        y16 = model(x)
    assert all(m.values.dtype == dtype and m.bias.dtype == torch.float32 for m in layers)
    assert sum(m.values.nbytes for m in layers) * 2 == before
    assert y16.dtype == torch.float32
    error = ((y16 - y32).abs().max() / y32.abs().max()).item()
    assert 0 < error < 1e-2
    model.store_weights(torch.float32)
    assert all(m.values.dtype == torch.float32 for m in layers)


def test_a_packed_layer_with_bf16_values_equals_the_unpacked_one():
    """512 rows: the layer packs its weight (entries widened to fp32) and the op compares the packing with the
    16-bit values on every call."""
    w = _stored(random_csr(96, 300, 0.2, seed=1), torch.bfloat16)
    packed = SparseLinear(300, 96, w, randn(96, seed=2))
    unpacked = SparseLinear(300, 96, w, randn(96, seed=2))
    unpacked.packs = False
    x = randn(512, 300, seed=3)
    assert packed.packing(x) is not None
    assert torch.equal(packed(x), unpacked(x))


def test_store_weights_errors_name_the_layer():
    model, _ = _fused_bert()
    with pytest.raises(ValueError, match=r"store_weights: dtype must be one of"):
        model.store_weights(torch.float64)
    layer = next(m for m in model.modules() if isinstance(m, SparseLinear))
    with torch.no_grad():
        layer.values[0] = 1e6
    with pytest.raises(ValueError, match=r"layer '.+': SparseLinear.store_weights: a value of magnitude 1e\+06 "
                                         r"exceeds torch.float16's range"):
        model.store_weights(torch.float16)


def test_export_and_srt_of_stored_weights(tmp_path):
    """ONNX ops take one dtype: export refuses 16-bit values beside fp32 inputs, naming the layer and the fix; a
    .srt file keeps them (same outputs after loading)."""
    torch.manual_seed(0)
    pruned = sparse_rt.magnitude_prune(models.create("cifar_resnet").eval(), 0.9).eval()
    x = torch.randn(2, 3, 32, 32)
    model = sparse_rt.sparsify(pruned, example_inputs=(x,)).eval()
    model.fuse()
    model.store_weights(torch.bfloat16)
    with pytest.raises(ValueError, match=r"layer '.+' stores its values in torch.bfloat16 \(store_weights\) but the "
                                         r"inputs are torch.float32.+store_weights\(torch.float32\)"):
        model.export_onnx(tmp_path / "m.onnx", (x,), flavor="sparse")
    model.save(tmp_path / "m.srt")
    loaded = sparse_rt.load(tmp_path / "m.srt", arch="cifar_resnet").eval()
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
