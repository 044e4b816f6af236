"""Magnitude pruning, to make pruned models from dense ones (demos, benchmarks, tests)."""

import copy
from typing import Sequence, Tuple

import torch
from torch import nn

from .nn.surgery import CONVERTIBLE


def magnitude_prune(module: nn.Module, sparsity: float, *, exclude: Sequence[str] = (),
                    layer_types: Tuple[type, ...] = tuple(CONVERTIBLE)) -> nn.Module:
    """Returns a copy of `module` whose Linear/Conv2d weights are pruned layer by layer: in each,
    the round(sparsity * numel) smallest-magnitude entries become zero. Layers whose qualified
    name is in `exclude` (e.g. the first conv) stay dense. The input module is not changed."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    pruned = copy.deepcopy(module)
    for name, layer in pruned.named_modules():
        if not isinstance(layer, layer_types) or name in exclude:
            continue
        w = layer.weight.data
        k = int(round(sparsity * w.numel()))
        if k == 0:
            continue
        # Rank by magnitude with a stable order so ties break deterministically.
        order = torch.argsort(w.abs().flatten(), stable=True)
        w.view(-1)[order[:k]] = 0
    return pruned
