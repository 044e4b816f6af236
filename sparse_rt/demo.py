"""The built-in end-to-end run: prune a zoo model, convert it, check it against the dense model and
time both side by side."""

import copy
import time

import torch

from . import models
from .model import sparsify
from .pruning import magnitude_prune
from .timing import compare_latency, median


def run_demo(model_name="bert_encoder", sparsity=0.9, batch=1, seconds=2.0, seed=0, echo=print):
    """Returns {max_abs_diff, max_rel_diff, dense_ms, sparse_ms, speedup, fused_ms, fused_speedup}
    (the diffs the larger of the two sparse models'); prints as it goes. "sparse_rt" is the model
    sparsify() gives, "fused" the same fused and captured (SparseModel.fuse, .capture): the
    recommended way to run it."""
    if model_name not in models.names():
        raise ValueError(f"demo model must be one of {models.names()}, got {model_name!r}")
    shape, keep_dense = models.input_shape(model_name), models.keep_dense(model_name)
    torch.manual_seed(seed)
    echo(f"sparse_rt demo: {model_name}, magnitude-pruned to {sparsity:.0%} "
         f"(dense: {', '.join(keep_dense) or 'none'}), batch {batch}, {torch.get_num_threads()} threads")
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    dense = magnitude_prune(models.create(model_name).eval(), sparsity, exclude=keep_dense)
    sparse = sparsify(dense, example_inputs=(x,)).eval()
    echo(f"converted in {time.perf_counter() - t0:.1f} s\n")
    echo(str(sparse.summary()) + "\n")
    fused = copy.deepcopy(sparse)
    echo(f"fused: {fused.fuse()}\n")
    fused.capture()
    engines = {"dense": lambda: dense(x), "sparse_rt": lambda: sparse(x), "fused": lambda: fused(x)}
    with torch.inference_mode():
        expected = dense(x)
        max_abs = max((run() - expected).abs().max().item() for run in (engines["sparse_rt"], engines["fused"]))
        max_rel = max_abs / expected.abs().max().item()
        echo(f"max |sparse - dense| = {max_abs:.3e} (relative {max_rel:.3e})")
        samples = compare_latency(engines, warmup=min(1.0, seconds / 4), min_time=seconds)
    ms = {name: median(samples[name]) * 1e3 for name in engines}
    echo(f"\n{'engine':<10} {'median ms':>10} {'runs':>6} {'speedup':>8}")
    for name in engines:
        echo(f"{name:<10} {ms[name]:>10.3f} {len(samples[name]):>6} {ms['dense'] / ms[name]:>7.2f}x")
    echo("interleaved runs, same process; fused = fuse() + capture()")
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "dense_ms": ms["dense"],
            "sparse_ms": ms["sparse_rt"], "speedup": ms["dense"] / ms["sparse_rt"],
            "fused_ms": ms["fused"], "fused_speedup": ms["dense"] / ms["fused"]}
