"""End to end at batch 1, fp32: zoo ResNet-50 magnitude-pruned to 90% (first conv dense) and a
BERT-base-shaped encoder (12 layers, 768 hidden, 3072 intermediate) at 90% with sequence 128, each
against the same pruned model run densely by torch; and ResNet-50 at 80%, where the planner should
keep what sparse would lose dense (never slower than dense).

    python -m pytest benchmarks/test_cpu_e2e.py --benchmark-warmup=on
"""

import functools

import pytest
import torch

import sparse_rt
from sparse_rt import models

CASES = {  # name: (input shape at batch 1, layers left dense, sparsity)
    "resnet50": ((1, 3, 224, 224), ("conv1",), 0.9),
    "bert_encoder": ((1, 128, 768), (), 0.9),
    "resnet50@0.8": ((1, 3, 224, 224), ("conv1",), 0.8),
}


@functools.lru_cache(maxsize=None)
def _models(case):
    shape, keep_dense, sparsity = CASES[case]
    torch.manual_seed(0)
    arch = models.create(case.split("@")[0]).eval()
    dense = sparse_rt.magnitude_prune(arch, sparsity, exclude=keep_dense)
    return dense, sparse_rt.sparsify(dense).eval(), torch.randn(*shape)


@pytest.mark.parametrize("engine", ["sparse_rt", "dense"])
@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(benchmark, case, engine):
    dense, sparse, x = _models(case)
    sparsity = CASES[case][2]
    benchmark.group = f"{case} {sparsity:.0%} batch 1"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = f"{case.split('@')[0]} {sparsity:.0%}"
    with torch.inference_mode():
        benchmark(sparse if engine == "sparse_rt" else dense, x)
