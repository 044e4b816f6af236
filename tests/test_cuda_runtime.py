"""CUDA-only behaviour of the sparse_rt ops: graph capture, torch.compile, streams, the BSR
tensor-core path, kernel-variant selection, the opt-in device index check and DLMC patterns.
The device-parametrized op tests cover the shared semantics; everything here needs a GPU and
skips with a reason without one."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import torch

import sparse_rt

try:
    import sparse_rt  # noqa: F401  (loads the compiled ops)
except ImportError:  # the skip below explains what is missing
    pass


def _cuda_kernel_missing() -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available"
    for op in ("csr_linear", "bsr_linear", "csr_conv2d"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sparse_rt::{op}", "CUDA"):
            return f"torch.ops.sparse_rt.{op} has no CUDA kernel (built without CUDA?)"
    return None


pytestmark = pytest.mark.skipif(_cuda_kernel_missing() is not None, reason=str(_cuda_kernel_missing()))

DEV = "cuda"
REPO = Path(__file__).resolve().parent.parent


def random_csr(m, k, density, dtype, seed=0):
    """Masked dense weight on the GPU plus its CSR tensors (int32 indices)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g) * (torch.rand(m, k, generator=g) < density)
    w = w.to(dtype)
    csr = w.to_sparse_csr()
    return (w.to(DEV), csr.crow_indices().int().to(DEV), csr.col_indices().int().to(DEV),
            csr.values().to(DEV))


def random_bsr(m, k, bh, bw, density, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(m // bh, k // bw, generator=g) < density
    mask[0] = False  # an empty block row
    w = torch.randn(m, k, generator=g) * mask.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    w = w.to(dtype)
    bsr = w.to_sparse_bsr((bh, bw))
    return (w.to(DEV), bsr.crow_indices().int().to(DEV), bsr.col_indices().int().to(DEV),
            bsr.values().contiguous().to(DEV))


def reference_linear(x, w, bias=None, relu=False):
    y = x.double() @ w.double().T
    if bias is not None:
        y = y + bias.double()
    return y.clamp_min(0) if relu else y


def assert_close_to_reference(y, ref):
    """Output-dtype rounding plus fp32 accumulation, scaled to the reference magnitude."""
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[y.dtype]
    scale = ref.abs().max().item() + 1.0
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * scale)


def test_graph_capture_batch1_matches_eager():
    w, crow, col, val = random_csr(512, 768, 0.1, torch.float16)
    bias = torch.randn(512, device=DEV, dtype=torch.float16)
    static_x = torch.randn(1, 768, device=DEV, dtype=torch.float16)

    def run():
        return torch.ops.sparse_rt.csr_linear(static_x, crow, col, val, bias, 768, True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs advises
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run()

    for seed in range(3):
        static_x.copy_(torch.randn(1, 768, generator=torch.Generator().manual_seed(seed)).half())
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, run())


def test_torch_compile_fullgraph_matches_eager():
    w1, crow1, col1, val1 = random_csr(96, 40, 0.3, torch.float32, seed=1)
    _, crow2, col2, val2 = random_bsr(64, 96, 16, 16, 0.5, torch.float32, seed=2)

    class Tiny(torch.nn.Module):
        def forward(self, x):
            h = torch.ops.sparse_rt.csr_linear(x, crow1, col1, val1, None, 40, True)
            return torch.ops.sparse_rt.bsr_linear(h * 2.0, crow2, col2, val2, None, 96, False)

    x = torch.randn(3, 5, 40, device=DEV)
    eager = Tiny()(x)
    compiled = torch.compile(Tiny(), fullgraph=True)(x)
    assert compiled.shape == (3, 5, 64)
    torch.testing.assert_close(compiled, eager)


def test_runs_on_current_nondefault_stream():
    w, crow, col, val = random_csr(256, 256, 0.2, torch.float32)
    x = torch.randn(4, 256, device=DEV)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # keeps `stream` busy while we look at the default stream
        y = torch.ops.sparse_rt.csr_linear(x, crow, col, val, None, 256, False)
        # Nothing may have been enqueued on the default stream.
        assert torch.cuda.default_stream().query()
    stream.synchronize()
    assert_close_to_reference(y, reference_linear(x, w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block", [16, 32])
@pytest.mark.parametrize("batch", [1, 7, 9, 33, 100])
def test_bsr_tensor_core_path_vs_float64(dtype, block, batch):
    m, k = 8 * block, 12 * block
    w, crow, col, val = random_bsr(m, k, block, block, 0.4, dtype, seed=block + batch)
    bias = torch.randn(m, device=DEV, dtype=dtype)
    x = torch.randn(batch, k, device=DEV, dtype=dtype)
    for relu in (False, True):
        y = torch.ops.sparse_rt.bsr_linear(x, crow, col, val, bias, k, relu)
        assert_close_to_reference(y, reference_linear(x, w, bias, relu))


def test_bsr_misaligned_input_takes_fallback_path():
    w, crow, col, val = random_bsr(64, 64, 16, 16, 0.5, torch.float16)
    buf = torch.randn(3 * 64 + 1, device=DEV, dtype=torch.float16)
    x = buf[1:].view(3, 64)  # contiguous, but 2-byte aligned: no 32-bit fragment loads
    y = torch.ops.sparse_rt.bsr_linear(x, crow, col, val, None, 64, False)
    assert_close_to_reference(y, reference_linear(x, w))


@pytest.mark.parametrize("avg_row", [3, 80, 300])
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 17])
def test_csr_every_kernel_variant(avg_row, batch):
    """Row lengths select the subwarp width, batch sizes the batch tile."""
    k = 1024
    w, crow, col, val = random_csr(75, k, avg_row / k, torch.float16, seed=avg_row)
    bias = torch.randn(75, device=DEV, dtype=torch.float16)
    x = torch.randn(batch, k, device=DEV, dtype=torch.float16)
    y = torch.ops.sparse_rt.csr_linear(x, crow, col, val, bias, k, True)
    assert_close_to_reference(y, reference_linear(x, w, bias, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_csr_misaligned_indices_take_scalar_path(dtype):
    w, crow, col, val = random_csr(33, 200, 0.5, dtype)
    nnz = col.numel()
    col_buf = torch.empty(nnz + 1, device=DEV, dtype=torch.int32)
    val_buf = torch.empty(nnz + 1, device=DEV, dtype=dtype)
    col_buf[1:] = col
    val_buf[1:] = val
    x = torch.randn(5, 200, device=DEV, dtype=dtype)
    y = torch.ops.sparse_rt.csr_linear(x, crow, col_buf[1:], val_buf[1:], None, 200, False)
    assert_close_to_reference(y, reference_linear(x, w))


def test_opt_in_index_check_reports_bad_column():
    w, crow, col, val = random_csr(16, 32, 0.5, torch.float32)
    bad = col.clone()
    bad[-1] = 32
    x = torch.randn(2, 32, device=DEV)
    with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match="col_indices"):
        torch.ops.sparse_rt.csr_linear(x, crow, bad, val, None, 32, False)
    y = torch.ops.sparse_rt.csr_linear(x, crow, col, val, None, 32, False)
    assert_close_to_reference(y, reference_linear(x, w))


def _dlmc_dir() -> Path:
    return dlmc_root(REPO)


def load_smtx(path: Path, dtype, seed=0):
    """DLMC .smtx(.gz): `rows, cols, nnz`, then row offsets, then column indices."""
    with gzip.open(path, "rt") as f:
        rows, cols, nnz = (int(v) for v in f.readline().split(","))
        crow = torch.tensor([int(v) for v in f.readline().split()], dtype=torch.int32)
        col = torch.tensor([int(v) for v in f.readline().split()], dtype=torch.int32)
    assert crow.numel() == rows + 1 and col.numel() == nnz
    val = torch.randn(nnz, generator=torch.Generator().manual_seed(seed)).to(dtype)
    w = torch.sparse_csr_tensor(crow.long(), col.long(), val, (rows, cols)).to_dense()
    return w.to(DEV), crow.to(DEV), col.to(DEV), val.to(DEV), cols


@pytest.mark.parametrize("batch", [1, 16])
def test_dlmc_transformer_patterns(batch):
    files = sorted((_dlmc_dir() / "transformer" / "magnitude_pruning" / "0.9").glob("*.smtx.gz"))
    if not files:
        pytest.skip(f"no DLMC transformer patterns under {_dlmc_dir()} (set SPARSE_RT_DLMC)")
    seen = set()
    for path in files:  # one file of each shape in the set (512x512, 512x2048, 2048x512)
        with gzip.open(path, "rt") as f:
            shape = f.readline().split(",")[:2]
        if tuple(shape) in seen:
            continue
        seen.add(tuple(shape))
        w, crow, col, val, k = load_smtx(path, torch.float16)
        x = torch.randn(batch, k, device=DEV, dtype=torch.float16)
        y = torch.ops.sparse_rt.csr_linear(x, crow, col, val, None, k, False)
        assert_close_to_reference(y, reference_linear(x, w))
