"""Erdős–Rényi-Kernel (ERK) per-layer densities, as RigL and FreeTickets initialise sparse
networks: a layer's density is proportional to (sum of its weight's dims) / (product of its dims),
scaled so the whole network keeps the global density; layers that would exceed 1 stay dense and the
rest are rescaled."""

import torch

from ..nn.surgery import CONVERTIBLE


def erk_densities(module, density, *, power=1.0, dense=()):
    """{layer name: density} for every nn.Linear / nn.Conv2d of `module` at global `density`
    (fraction of those layers' weights kept). Layers named in `dense` are kept whole; `power`
    scales the ERK ratio as RigL's erk_power_scale."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    shapes = {n: m.weight.shape for n, m in module.named_modules() if isinstance(m, tuple(CONVERTIBLE))}
    unknown = set(dense) - set(shapes)
    if unknown:
        raise ValueError(f"dense: {sorted(unknown)} name no Linear/Conv2d layer")
    numel = {n: s.numel() for n, s in shapes.items()}
    budget = density * sum(numel.values())
    raw = {n: (sum(s) / s.numel()) ** power for n, s in shapes.items()}
    full = set(dense)
    while True:
        sparse = [n for n in shapes if n not in full]
        remaining = budget - sum(numel[n] for n in full)
        if not sparse or remaining <= 0:
            raise ValueError(f"density {density} cannot keep the layers {sorted(full)} dense")
        scale = remaining / sum(raw[n] * numel[n] for n in sparse)
        over = [n for n in sparse if raw[n] * scale > 1.0]
        if not over:
            return {n: 1.0 if n in full else raw[n] * scale for n in shapes}
        full.update(over)  # densest first: they saturate at 1 and the rest share what is left


def erk_masks(module, density, *, generator=None, **options):
    """Random masks at the ERK densities ({"layer.weight": bool mask}), as DST methods start from;
    `options` go to erk_densities."""
    masks = {}
    for name, d in erk_densities(module, density, **options).items():
        weight = module.get_submodule(name).weight
        keep = int(round(d * weight.numel()))
        order = torch.randperm(weight.numel(), generator=generator)
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[order[:keep]] = True
        masks[f"{name}.weight"] = mask.view(weight.shape)
    return masks
