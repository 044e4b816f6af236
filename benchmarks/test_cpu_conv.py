"""Sparse convolution on the real pruned ResNet-50 layers of DLMC (magnitude pruning) with their
real shapes at batch 1, against dense torch (oneDNN) on the same weights, fp32.

Series "kernel sparsity=S": the sparse kernel on every layer. benchmarks/test_cpu_plan.py runs the
same layers as the planner chooses.

    python -m pytest benchmarks/test_cpu_conv.py --benchmark-warmup=on
"""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt import ops
from sparse_rt.bench.dlmc import rn50_conv_geometry, rn50_output_pixels
from sparse_rt.formats import load_smtx
from sparse_rt.plan import plan_layer, regime

SERIES = [("kernel", "0.8"), ("kernel", "0.9"), ("kernel", "0.95"), ("kernel", "0.98")]
LAYERS = 54  # matrices per sparsity level


def _case(dlmc, sparsity, index):
    path = sorted((dlmc / "rn50/magnitude_pruning" / sparsity).glob("*.smtx.gz"))[index]
    name = path.name.removesuffix(".smtx.gz")
    w = load_smtx(path, seed=0)
    g = rn50_conv_geometry(name, w.shape[1], rn50_output_pixels(dlmc)[name])
    x = torch.randn(1, g.in_channels, g.in_side, g.in_side, generator=torch.Generator().manual_seed(1))
    dense = w.to_dense().view(w.shape[0], g.in_channels, g.kernel, g.kernel)
    k, s, p = (g.kernel,) * 2, (g.stride,) * 2, (g.padding,) * 2
    sparse_fn = lambda: ops.csr_conv2d(x, w.crow_indices, w.col_indices, w.values, None, g.in_channels,
                                       k, s, p, (1, 1), 1)
    dense_fn = lambda: F.conv2d(x, dense, None, s, p)
    layer_regime = regime("Conv2d", kernel_size=k, stride=s, padding=p, out_pixels=g.out_side ** 2)
    planned = plan_layer("Conv2d", w.shape, 1.0 - w.density, min_sparsity=0.5, layer_regime=layer_regime)
    fns = {"kernel": sparse_fn, "planned": sparse_fn if planned.format == "csr" else dense_fn}
    return name, g, fns, dense_fn, {"density": w.density, "regime": layer_regime}


@pytest.mark.parametrize("engine", ["sparse_rt", "dense"])
@pytest.mark.parametrize("series", SERIES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("layer", range(LAYERS))
def test_rn50_conv(benchmark, dlmc, layer, series, engine):
    mode, sparsity = series
    name, g, sparse_fns, dense_fn, info = _case(dlmc, sparsity, layer)
    benchmark.group = (f"rn50 {mode} {sparsity} {name} {g.kernel}x{g.kernel}/{g.stride} "
                       f"{g.in_channels}ch {g.out_side}^2")
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"{mode} sparsity={sparsity}"
    benchmark.extra_info.update(info)
    with torch.inference_mode():
        benchmark(sparse_fns[mode] if engine == "sparse_rt" else dense_fn)
