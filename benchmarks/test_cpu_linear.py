"""Sparse linear on real pruned Transformer layers (DLMC transformer, magnitude pruning 0.9):
sparse_rt against dense torch (same weights with zeros) and torch.sparse CSR (MKL), fp32.

    python -m pytest benchmarks/test_cpu_linear.py --benchmark-max-time=0.25
"""

import pytest
import torch

from sparse_rt import ops
from sparse_rt.formats import load_smtx

# Every 4th layer of the 96: all shapes (512x512, 2048x512, 512x2048) in encoder and decoder.
LAYER_STRIDE = 4


def _layers(dlmc):
    return sorted((dlmc / "transformer/magnitude_pruning/0.9").glob("*.smtx.gz"))[::LAYER_STRIDE]


def _engines(w, batch):
    rows, cols = w.shape
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(1))
    dense = w.to_dense()
    torch_csr = torch.sparse_csr_tensor(w.crow_indices, w.col_indices, w.values, w.shape)
    xt = x.t().contiguous()
    return {
        "sparse_rt": lambda: ops.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, cols),
        "dense": lambda: torch.nn.functional.linear(x, dense),
        "torch_csr": lambda: torch.sparse.mm(torch_csr, xt),
    }


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("engine", ["sparse_rt", "dense", "torch_csr"])
@pytest.mark.parametrize("layer", range(96 // LAYER_STRIDE))
def test_transformer_linear(benchmark, dlmc, layer, engine, batch):
    path = _layers(dlmc)[layer]
    w = load_smtx(path, seed=0)
    fn = _engines(w, batch)[engine]
    benchmark.group = f"{path.name.removesuffix('.smtx.gz')} {w.shape[0]}x{w.shape[1]} N={batch}"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"N={batch}"
    with torch.inference_mode():
        benchmark(fn)
