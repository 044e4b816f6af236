"""CUDA-only behaviour of the sparse_rt ops: CUDA graph capture (which also fails on any host
sync) and running on the caller's stream. Everything else the ops do on CUDA (kernel variants, the
tensor-core BSR path, misaligned inputs, DLMC patterns, the opt-in index check, torch.compile) is
the `cuda` case of the device-parametrised tests in test_ops.py, test_bad_inputs.py and
test_opcheck.py. Skips with the reason where the CUDA kernels cannot run."""

import pytest
import torch
from helpers import CUDA_MARKS, assert_close, randn, random_csr, to_device

from sparse_rt.formats import CSR
from sparse_rt.ops import CSR_CUDA_KERNEL_VARIABLE, reference

pytestmark = CUDA_MARKS


def _capture(run):
    """(graph, its output) for run(), warmed up off the capture stream as torch.cuda.graphs advises."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run()
    return graph, static_y


def test_graph_capture_batch1_matches_eager():
    w = random_csr(512, 768, 0.1, seed=0, dtype=torch.float16, device="cuda")
    bias = randn(512, dtype=torch.float16, device="cuda", seed=1)
    static_x = randn(1, 768, dtype=torch.float16, device="cuda", seed=2)

    def run():
        return torch.ops.sparse_rt.csr_linear(static_x, w.crow_indices, w.col_indices, w.values, bias, 768, True)

    graph, static_y = _capture(run)
    for seed in range(3):
        static_x.copy_(randn(1, 768, dtype=torch.float16, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, run())


def test_runs_on_current_nondefault_stream():
    w = random_csr(256, 256, 0.2, seed=0, device="cuda")
    x = randn(4, 256, device="cuda", seed=1)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # keeps `stream` busy while we look at the default stream
        y = torch.ops.sparse_rt.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, 256, False)
        # Nothing may have been enqueued on the default stream.
        assert torch.cuda.default_stream().query()
    stream.synchronize()
    ref = reference.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, 256, compute_dtype=torch.float64)
    assert_close(y, ref, torch.float32)


@pytest.mark.parametrize("kernel,dtype,batch", [("subwarp", torch.float32, 4), ("tensor_cores", torch.float16, 16)])
def test_row_pointers_broken_after_capture_come_out_nan_in_replays(kernel, dtype, batch, monkeypatch):
    """A replay runs no host code, so only the kernels' own row check (row_extent.h) sees crow."""
    monkeypatch.setenv(CSR_CUDA_KERNEL_VARIABLE, kernel)
    w = random_csr(64, 128, 0.2, seed=0, dtype=dtype, device="cuda")
    x = randn(batch, 128, dtype=dtype, device="cuda", seed=1)
    crow = w.crow_indices.clone()

    def run():
        return torch.ops.sparse_rt.csr_linear(x, crow, w.col_indices, w.values, None, 128, False)

    graph, static_y = _capture(run)
    crow[5] = 2**31 - 1  # rows 4 and 5 now end past nnz / start after they end
    graph.replay()
    torch.cuda.synchronize()
    nan_rows = static_y.isnan().all(0).nonzero().flatten().tolist()
    assert nan_rows == [4, 5] and static_y.isnan().any(0).sum() == 2
    crow.copy_(w.crow_indices)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(static_y, x @ w.to_dense().T, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tensor_core_csr_rows_must_increase(dtype, monkeypatch):
    """The tensor-core kernel expands each row's entries in column order (csr_spmm.cu): a row whose
    columns do not increase strictly (back across a 128-column step, back within one, a repeated
    column) comes out NaN, as a malformed row does; the other rows are right."""
    monkeypatch.setenv(CSR_CUDA_KERNEL_VARIABLE, "tensor_cores")
    dense = torch.zeros(20, 512)
    dense[3, [5, 300]] = torch.tensor([1.5, -2.0])
    dense[4, [10, 20]] = torch.tensor([0.5, 0.25])
    dense[5, [30, 31]] = torch.tensor([1.0, 2.0])
    dense[6, [40, 400]] = torch.tensor([1.0, 3.0])
    w = to_device(CSR.from_dense(dense.to(dtype)), "cuda")
    col, val = w.col_indices.clone(), w.values.clone()
    crow = w.crow_indices.tolist()
    for row in (3, 4):  # row 3: column 300 before 5; row 4: 20 before 10
        col[crow[row]:crow[row + 1]] = col[crow[row]:crow[row + 1]].flip(0)
        val[crow[row]:crow[row + 1]] = val[crow[row]:crow[row + 1]].flip(0)
    col[crow[5] + 1] = col[crow[5]]  # row 5: column 30 twice
    x = randn(9, 512, dtype=dtype, device="cuda", seed=4)
    y = torch.ops.sparse_rt.csr_linear(x, w.crow_indices, col, val, None, 512, False)
    assert y[:, 3:6].isnan().all()
    keep = [0, 1, 2] + list(range(6, 20))
    assert_close(y[:, keep], (x.double() @ dense.double().T.cuda())[:, keep].to(dtype), dtype)
