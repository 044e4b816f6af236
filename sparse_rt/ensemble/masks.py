"""Weights and masks of ensemble members, and the mask algebra used to analyse them: union,
intersection and Jaccard overlap between members' sparsity patterns."""

import itertools

import torch
from torch import nn

from ..formats import CSR
from ..model import SparseModel
from ..nn.surgery import SPARSE_LAYERS, dense_weight, weight_layers


def layer_csr(layer):
    """The weight of a Linear/Conv2d layer, dense or sparse, as a CSR over [rows, fan-in]. BSR
    blocks keep their stored zeros; a dense layer stores every entry (its zeros included), so the
    fused layer computes exactly what the member computes."""
    if isinstance(layer, SPARSE_LAYERS):
        if layer.format == "csr":
            return layer.sparse_weight()
        bsr = layer.sparse_weight()
        structure = type(bsr)(bsr.crow_indices, bsr.col_indices, torch.ones_like(bsr.values, dtype=torch.bool),
                              bsr.shape, bsr.blocksize)
        return CSR.from_dense(bsr.to_dense(), structure.to_dense())
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    return CSR.from_dense(w, torch.ones_like(w, dtype=torch.bool))


def weight_mask(layer):
    """Where the layer keeps weights: the stored entries of a sparse layer, the nonzeros of a dense one."""
    if isinstance(layer, SPARSE_LAYERS):
        csr = layer_csr(layer)
        ones = CSR(csr.crow_indices, csr.col_indices, torch.ones_like(csr.values, dtype=torch.bool), csr.shape)
        return ones.to_dense().reshape(dense_weight(layer).shape)
    return layer.weight.detach() != 0


def member_module(member):
    """The nn.Module of a member given as a SparseModel or a module."""
    if isinstance(member, SparseModel):
        return member.module
    if isinstance(member, nn.Module):
        return member
    raise TypeError(f"expected a SparseModel or an nn.Module, got {type(member).__name__}")


def member_masks(member):
    """{layer name: bool mask shaped like its weight} for every Linear/Conv2d of `member` (a
    SparseModel, an nn.Module, or already such a dict)."""
    if isinstance(member, dict):
        return {k: torch.as_tensor(v).bool() for k, v in member.items()}
    return {name: weight_mask(layer) for name, layer in weight_layers(member_module(member)).items()}


def _aligned(members):
    masks = [member_masks(m) for m in members]
    if not masks:
        raise ValueError("mask algebra needs at least one member")
    names = list(masks[0])
    for i, m in enumerate(masks[1:], 1):
        if list(m) != names or any(m[n].shape != masks[0][n].shape for n in names):
            raise ValueError(f"member {i} has other layers or shapes than member 0: not one architecture")
    return masks, names


def mask_union(members):
    """{layer: mask} kept by at least one member."""
    masks, names = _aligned(members)
    return {n: torch.stack([m[n] for m in masks]).any(0) for n in names}


def mask_intersection(members):
    """{layer: mask} kept by every member (their overlap)."""
    masks, names = _aligned(members)
    return {n: torch.stack([m[n] for m in masks]).all(0) for n in names}


def density(member):
    """Kept fraction of all Linear/Conv2d weights of one member (or mask dict)."""
    masks = member_masks(member)
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


def jaccard(a, b):
    """|a ∩ b| / |a ∪ b| over all Linear/Conv2d weights of two members (or mask dicts)."""
    inter = sum(int(m.sum()) for m in mask_intersection([a, b]).values())
    union = sum(int(m.sum()) for m in mask_union([a, b]).values())
    return inter / union if union else 1.0


def pairwise_jaccard(members):
    """M x M tensor of the Jaccard overlap between every pair of members' masks."""
    masks = [member_masks(m) for m in members]
    out = torch.eye(len(masks), dtype=torch.float64)
    for i, j in itertools.combinations(range(len(masks)), 2):
        out[i, j] = out[j, i] = jaccard(masks[i], masks[j])
    return out
