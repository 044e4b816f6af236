"""One model from many: Sup-tickets superposition (weight averaging, then global magnitude
re-pruning to a parameter budget) and batch-norm recalibration on user data."""

import torch
from torch import nn

from ..model import SparseModel, sparsify
from ..nn.surgery import dense_copy, weight_layers
from .masks import density as member_density
from .masks import member_module


def superpose(members, density=None, weights=None, **sparsify_options):
    """Averages the members' parameters and buffers (weighted by `weights`, default uniform), keeps
    the `density` fraction of all Linear/Conv2d weights with the largest magnitude (one global
    threshold; default: the members' mean density) and returns the result as a SparseModel.

    Batch-norm statistics are averaged too, which only approximates those of the averaged
    weights: run recalibrate_bn(model, batches) on your data before evaluating.
    `sparsify_options` (min_sparsity, format) go to sparse_rt.sparsify."""
    members = list(members)
    if not members:
        raise ValueError("superpose needs at least one member")
    weights = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (len(members),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"weights must be {len(members)} non-negative numbers with a positive sum, "
                         f"got {weights.tolist()}")
    weights = weights / weights.sum()
    if density is None:
        density = sum(member_density(m) for m in members) / len(members)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")

    modules = [dense_copy(member_module(m)) for m in members]
    states = [m.state_dict() for m in modules]
    for i, s in enumerate(states[1:], 1):
        if s.keys() != states[0].keys() or any(s[k].shape != v.shape for k, v in states[0].items()):
            raise ValueError(f"member {i} has other parameters or shapes than member 0: not one architecture")
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            averaged[key] = sum(float(w) * s[key].double() for w, s in zip(weights, states)).to(first.dtype)
        else:  # counters such as num_batches_tracked
            averaged[key] = first.clone()
    soup = modules[0]
    soup.load_state_dict(averaged)

    layers = weight_layers(soup)
    magnitudes = torch.cat([layer.weight.detach().abs().flatten().float() for layer in layers.values()])
    keep = int(round(density * magnitudes.numel()))
    masks = {}
    if keep < magnitudes.numel():
        # The keep-th largest magnitude; ties at the threshold are broken by position (stable sort).
        order = torch.argsort(magnitudes, descending=True, stable=True)
        flat_mask = torch.zeros_like(magnitudes, dtype=torch.bool)
        flat_mask[order[:keep]] = True
        for name, chunk in zip(layers, flat_mask.split([layer.weight.numel() for layer in layers.values()])):
            masks[name] = chunk.view_as(layers[name].weight)
    return sparsify(soup, masks, **sparsify_options)


@torch.no_grad()
def recalibrate_bn(model, batches):
    """Re-estimates every BatchNorm's running mean and variance from `batches` (an iterable of
    model inputs, or of (input, target) pairs) as an exact average over them; the model's other
    state and its train/eval mode are kept. Returns the model."""
    module = model.module if isinstance(model, SparseModel) else model
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise ValueError("recalibrate_bn: the model has no BatchNorm layer with running statistics")
    was_training = module.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    module.eval()
    for m in norms:
        m.train()
    seen = 0
    for batch in batches:
        module(batch[0] if isinstance(batch, (tuple, list)) else batch)
        seen += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    module.train(was_training)
    if not seen:
        raise ValueError("recalibrate_bn: `batches` yielded no batch")
    return model
