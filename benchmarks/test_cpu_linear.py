"""Sparse linear on real pruned Transformer layers (DLMC transformer, magnitude pruning 0.9):
sparse_rt against dense torch (same weights with zeros), torch.sparse CSR (MKL, int32 indices,
prebuilt) and scipy.sparse CSR, fp32.

    python -m pytest benchmarks/test_cpu_linear.py --benchmark-max-time=0.25
"""

import itertools

import pytest
import scipy.sparse
import torch

from sparse_rt import ops
from sparse_rt.formats import CSR, load_smtx
from sparse_rt.plan import regime

# Every 4th layer of the 96: all shapes (512x512, 2048x512, 512x2048) in encoder and decoder.
LAYER_STRIDE = 4


def _layers(dlmc):
    return sorted((dlmc / "transformer/magnitude_pruning/0.9").glob("*.smtx.gz"))[::LAYER_STRIDE]


def _engines(w, batch):
    rows, cols = w.shape
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(1))
    dense = w.to_dense()
    torch_csr = torch.sparse_csr_tensor(w.crow_indices, w.col_indices, w.values, w.shape)
    scipy_csr = scipy.sparse.csr_matrix((w.values.numpy(), w.col_indices.numpy(), w.crow_indices.numpy()),
                                        shape=w.shape)
    x_np = x.numpy()
    return {
        "sparse_rt": lambda: ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, cols),
        "dense": lambda: torch.nn.functional.linear(x, dense),
        # Every engine gets x as a linear layer does; y = W x^T (a transposed view of x @ W.T).
        "torch_csr": lambda: torch.sparse.mm(torch_csr, x.t()),
        "scipy": lambda: scipy_csr @ x_np.T,
    }


@pytest.mark.parametrize("batch", [1, 32, 128])
@pytest.mark.parametrize("engine", ["sparse_rt", "dense", "torch_csr", "scipy"])
@pytest.mark.parametrize("layer", range(96 // LAYER_STRIDE))
def test_transformer_linear(benchmark, dlmc, layer, engine, batch):
    path = _layers(dlmc)[layer]
    w = load_smtx(path, seed=0)
    fn = _engines(w, batch)[engine]
    benchmark.group = f"{path.name.removesuffix('.smtx.gz')} {w.shape[0]}x{w.shape[1]} N={batch}"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"N={batch}"
    benchmark.extra_info.update(density=w.density, regime=regime("Linear", batch))
    with torch.inference_mode():
        benchmark(fn)


def _large_layer():
    """11008x4096 at 90% (uniform random mask): its CSR (~36 MB) exceeds a 32 MiB L3."""
    rows, cols = 11008, 4096
    g = torch.Generator().manual_seed(2)
    nnz_per_row = cols // 10
    col = torch.stack([torch.randperm(cols, generator=g)[:nnz_per_row].sort().values for _ in range(rows)])
    crow = torch.arange(0, rows * nnz_per_row + 1, nnz_per_row, dtype=torch.int32)
    return CSR(crow, col.flatten().int(), torch.randn(rows * nnz_per_row, generator=g), (rows, cols)).validate()


# Copies of the layer (and of the stream's block) taken in turn: 4 x 36 MB, so that each call reads its
# bytes from DRAM. With one copy, the streaming sum's block stayed in a 32 MiB L3 between calls while the
# kernel's did not, and the ratio compared DRAM against L3 (0.30x on a Zen 4 whose L3 serves 2.4x DRAM).
BANDWIDTH_COPIES = 4


@pytest.mark.parametrize("engine", ["sparse_rt", "stream"])
def test_batch1_bandwidth(benchmark, engine):
    """stream reads as many bytes as the batch-1 kernel must (indices, values, input, output), so
    stream time / sparse_rt time is the fraction of the streaming bandwidth the kernel reaches."""
    w = _large_layer()
    x = torch.randn(1, w.shape[1])
    must_read = w.nbytes + x.numel() * 4 + w.shape[0] * 4
    if engine == "sparse_rt":
        copies = [(w.crow_indices.clone(), w.col_indices.clone(), w.values.clone()) for _ in range(BANDWIDTH_COPIES)]
        calls = [lambda c=c: ops.csr_linear(x, *c, None, w.shape[1]) for c in copies]
    else:
        calls = [lambda b=torch.ones(must_read // 4): b.sum() for _ in range(BANDWIDTH_COPIES)]
    turn = itertools.cycle(calls)
    benchmark.group = f"batch-1 bandwidth 11008x4096 90% ({must_read / 2**20:.0f} MiB x {BANDWIDTH_COPIES} copies)"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = "bandwidth"
    benchmark.extra_info["bytes"] = must_read
    with torch.inference_mode():
        benchmark(lambda: next(turn)())


def _ffn_pair(dlmc, layer):
    """The feed-forward block of encoder layer `layer`: conv1 [2048, 512] and conv2 [512, 2048]."""
    folder = dlmc / "transformer/magnitude_pruning/0.9"
    return [load_smtx(folder / f"body_encoder_layer_{layer}_ffn_conv{i}_fully_connected.smtx.gz", seed=i)
            for i in (1, 2)]


@pytest.mark.parametrize("tokens", [128, 1024])
@pytest.mark.parametrize("engine", ["sparse_rt", "layer_by_layer", "dense"])
@pytest.mark.parametrize("layer", [0, 3])
def test_transformer_ffn(benchmark, dlmc, layer, engine, tokens):
    """A whole feed-forward block, linear -> GELU -> linear: csr_mlp (the fused model's call) against
    the same ops one after the other (the unfused model) and dense torch."""
    w1, w2 = _ffn_pair(dlmc, layer)
    x = torch.randn(tokens, w1.shape[1], generator=torch.Generator().manual_seed(3))
    gelu = torch.nn.functional.gelu
    dense1, dense2 = w1.to_dense(), w2.to_dense()
    fns = {
        "sparse_rt": lambda: ops.csr_mlp(x, w1.crow_indices, w1.col_indices, w1.values, None, w2.crow_indices,
                                         w2.col_indices, w2.values, None, w1.shape[1], "gelu"),
        "layer_by_layer": lambda: ops.csr_linear(
            gelu(ops.csr_linear(x, w1.crow_indices, w1.col_indices, w1.values, None, w1.shape[1])),
            w2.crow_indices, w2.col_indices, w2.values, None, w2.shape[1]),
        "dense": lambda: torch.nn.functional.linear(gelu(torch.nn.functional.linear(x, dense1)), dense2),
    }
    benchmark.group = f"encoder layer {layer} FFN 512-2048-512 90% tokens={tokens}"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"FFN tokens={tokens}"
    with torch.inference_mode():
        benchmark(fns[engine])


@pytest.mark.parametrize("tokens", [128, 1024])
@pytest.mark.parametrize("engine", ["sparse_rt", "layer_by_layer", "dense"])
@pytest.mark.parametrize("layer", [0, 3])
def test_transformer_qkv(benchmark, dlmc, layer, engine, tokens):
    """The query, key and value projections of one input: csr_linears (the fused model's call)
    against three csr_linear calls (the unfused model) and dense torch."""
    folder = dlmc / "transformer/magnitude_pruning/0.9"
    ws = [load_smtx(folder / f"body_encoder_layer_{layer}_self_attention_multihead_attention_{p}_fully_connected"
                             ".smtx.gz", seed=i) for i, p in enumerate("qkv")]
    x = torch.randn(tokens, ws[0].shape[1], generator=torch.Generator().manual_seed(4))
    dense = [w.to_dense() for w in ws]
    weights = ([w.crow_indices for w in ws], [w.col_indices for w in ws], [w.values for w in ws], [None] * 3)
    fns = {
        "sparse_rt": lambda: ops.csr_linears(x, *weights, x.shape[1]),
        "layer_by_layer": lambda: [ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, x.shape[1])
                                   for w in ws],
        "dense": lambda: [torch.nn.functional.linear(x, d) for d in dense],
    }
    benchmark.group = f"encoder layer {layer} q/k/v 3x 512x512 90% tokens={tokens}"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"QKV tokens={tokens}"
    with torch.inference_mode():
        benchmark(fns[engine])


def _magnitude_pruned(rows, cols, density, seed):
    """A normal random [rows, cols] weight keeping its largest `density` fraction by magnitude (DLMC
    holds 90% only; for a random weight this is a uniform random mask)."""
    dense = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    keep = max(1, round(density * dense.numel()))
    threshold = dense.abs().flatten().kthvalue(dense.numel() - keep + 1).values
    return CSR.from_dense(dense * (dense.abs() >= threshold))


@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.3, 0.5])
@pytest.mark.parametrize("engine", ["sparse_rt", "dense"])
@pytest.mark.parametrize("shape", [(768, 768), (3072, 768), (768, 3072)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bert_linear_density(benchmark, shape, engine, density):
    """BERT-base layer shapes at 128 tokens from 50% to 95% sparsity, sparse_rt against dense torch: where
    the tiled SpMM reads its operand's rows in L1-sized column blocks (each row with >= 16 nonzeros per
    block, from a density of about 0.125 on a 32 KiB L1) and where sparse passes dense. A planner
    calibration case for how the gemm64 regime's efficiency grows with the density
    (benchmarks/calibrate_plan.py: sparse_rt.plan.DENSITY_EXPONENT)."""
    w = _magnitude_pruned(*shape, density, seed=shape[0] + shape[1])
    x = torch.randn(128, shape[1], generator=torch.Generator().manual_seed(4))
    dense = w.to_dense()
    fns = {"sparse_rt": lambda: ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, shape[1]),
           "dense": lambda: torch.nn.functional.linear(x, dense)}
    benchmark.group = f"BERT-base {shape[0]}x{shape[1]} density {density:g} tokens=128"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"BERT-base shapes, density {density:g}"
    benchmark.extra_info.update(density=w.density, regime=regime("Linear", x.shape[0]))
    with torch.inference_mode():
        benchmark(fns[engine])
