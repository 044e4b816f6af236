"""The built-in end-to-end run: prune a zoo model, convert it, check it against the dense model and
time both side by side."""

import time

import torch

from . import models
from .model import sparsify
from .pruning import magnitude_prune
from .timing import compare_latency, median


def run_demo(model_name="bert_encoder", sparsity=0.9, batch=1, seconds=2.0, seed=0, echo=print):
    """Returns {max_abs_diff, max_rel_diff, dense_ms, sparse_ms, speedup}; prints as it goes."""
    if model_name not in models.names():
        raise ValueError(f"demo model must be one of {models.names()}, got {model_name!r}")
    shape, keep_dense = models.input_shape(model_name), models.keep_dense(model_name)
    torch.manual_seed(seed)
    echo(f"sparse_rt demo: {model_name}, magnitude-pruned to {sparsity:.0%} "
         f"(dense: {', '.join(keep_dense) or 'none'}), batch {batch}, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    dense = magnitude_prune(models.create(model_name).eval(), sparsity, exclude=keep_dense)
    sparse = sparsify(dense).eval()
    echo(f"converted in {time.perf_counter() - t0:.1f} s\n")
    echo(str(sparse.summary()) + "\n")
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected, actual = dense(x), sparse(x)
        max_abs = (actual - expected).abs().max().item()
        max_rel = max_abs / expected.abs().max().item()
        echo(f"max |sparse - dense| = {max_abs:.3e} (relative {max_rel:.3e})")
        samples = compare_latency({"dense": lambda: dense(x), "sparse_rt": lambda: sparse(x)},
                                  warmup=min(1.0, seconds / 4), min_time=seconds)
    dense_ms, sparse_ms = (median(samples[k]) * 1e3 for k in ("dense", "sparse_rt"))
    echo(f"\n{'engine':<10} {'median ms':>10} {'runs':>6}")
    echo(f"{'dense':<10} {dense_ms:>10.3f} {len(samples['dense']):>6}")
    echo(f"{'sparse_rt':<10} {sparse_ms:>10.3f} {len(samples['sparse_rt']):>6}")
    echo(f"speedup: {dense_ms / sparse_ms:.2f}x (interleaved runs, same process)")
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "dense_ms": dense_ms,
            "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms}
