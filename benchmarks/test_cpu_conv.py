"""Sparse convolution on the real pruned ResNet-50 layers of DLMC (magnitude pruning 0.8/0.9/...)
with their real shapes at batch 1, against dense torch (oneDNN) on the same weights, fp32.

    python -m pytest benchmarks/test_cpu_conv.py --benchmark-warmup=on
"""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt import ops
from sparse_rt.bench.dlmc import rn50_conv_geometry, rn50_output_pixels
from sparse_rt.formats import load_smtx

SPARSITIES = ["0.8", "0.9"]
LAYERS = 54  # matrices per sparsity level


def _case(dlmc, sparsity, index):
    path = sorted((dlmc / "rn50/magnitude_pruning" / sparsity).glob("*.smtx.gz"))[index]
    name = path.name.removesuffix(".smtx.gz")
    w = load_smtx(path, seed=0)
    g = rn50_conv_geometry(name, w.shape[1], rn50_output_pixels(dlmc)[name])
    x = torch.randn(1, g.in_channels, g.in_side, g.in_side, generator=torch.Generator().manual_seed(1))
    dense = w.to_dense().view(w.shape[0], g.in_channels, g.kernel, g.kernel)
    k, s, p = (g.kernel,) * 2, (g.stride,) * 2, (g.padding,) * 2
    engines = {
        "sparse_rt": lambda: ops.csr_conv2d(x, w.crow_indices, w.col_indices, w.values, None,
                                            g.in_channels, k, s, p, (1, 1), 1),
        "dense": lambda: F.conv2d(x, dense, None, s, p),
    }
    return name, g, engines


@pytest.mark.parametrize("engine", ["sparse_rt", "dense"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("layer", range(LAYERS))
def test_rn50_conv(benchmark, dlmc, layer, sparsity, engine):
    name, g, engines = _case(dlmc, sparsity, layer)
    benchmark.group = f"rn50 {sparsity} {name} {g.kernel}x{g.kernel}/{g.stride} {g.in_channels}ch {g.out_side}^2"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"sparsity={sparsity}"
    with torch.inference_mode():
        benchmark(engines[engine])
