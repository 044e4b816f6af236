"""End to end at batch 1, fp32: zoo ResNet-50 magnitude-pruned to 90% (first conv dense) and a
BERT-base-shaped encoder (12 layers, 768 hidden, 3072 intermediate) at 90% with sequence 128, each
against the same pruned model run densely by torch.

    python -m pytest benchmarks/test_cpu_e2e.py --benchmark-warmup=on
"""

import functools

import pytest
import torch

import sparse_rt
from sparse_rt import models

CASES = {
    "resnet50": ((1, 3, 224, 224), ("conv1",)),
    "bert_encoder": ((1, 128, 768), ()),
}


@functools.lru_cache(maxsize=None)
def _models(name):
    shape, keep_dense = CASES[name]
    torch.manual_seed(0)
    dense = sparse_rt.magnitude_prune(models.create(name).eval(), 0.9, exclude=keep_dense)
    return dense, sparse_rt.sparsify(dense).eval(), torch.randn(*shape)


@pytest.mark.parametrize("engine", ["sparse_rt", "dense"])
@pytest.mark.parametrize("model", list(CASES))
def test_end_to_end(benchmark, model, engine):
    dense, sparse, x = _models(model)
    benchmark.group = f"{model} 90% batch 1"
    benchmark.extra_info["engine"] = engine
    benchmark.extra_info["series"] = model
    with torch.inference_mode():
        benchmark(sparse if engine == "sparse_rt" else dense, x)
