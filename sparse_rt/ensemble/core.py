"""SparseEnsemble: M sparse members of one architecture, run fused (one kernel per layer) and
combined into one prediction."""

import os
import re
import warnings

import torch
from torch import nn

from ..convert import from_checkpoint
from ..model import SparseModel, sparsify
from .combine import check_rule, combine, uncertainty
from .fuse import FusionError, fuse_members
from .masks import density, pairwise_jaccard


def natural_key(name):
    """'member_2' sorts before 'member_10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def member_paths(paths):
    """A folder's entries (hidden ones skipped) in natural order, or the given paths as they are."""
    if isinstance(paths, (str, os.PathLike)):
        folder = os.fspath(paths)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such folder of member checkpoints: {folder}")
        names = sorted((n for n in os.listdir(folder) if not n.startswith(".")), key=natural_key)
        paths = [os.path.join(folder, n) for n in names]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no member checkpoints given (empty folder or list)")
    return paths


class SparseEnsemble(nn.Module):
    """M members (SparseModels of one architecture). `ensemble(x)` is the combined prediction,
    `forward_members(x)` the members' outputs stacked [M, B, ...].

    With fuse=True the members run as one fused graph (sparse_rt.ensemble.fuse), which holds its
    own copy of the weights; architectures it cannot fuse run member by member after a warning
    naming the module at fault."""

    def __init__(self, members, *, combine="mean_prob", fuse=True):
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, SparseModel) for m in members):
            raise TypeError("SparseEnsemble expects a non-empty list of SparseModels "
                            "(use SparseEnsemble.from_models for nn.Modules)")
        self.members = nn.ModuleList(members)
        self.combine = check_rule(combine)
        self.fused = None
        self.fallback_reason = None
        if fuse:
            try:
                self.fused = fuse_members([m.module for m in members]).train(members[0].module.training)
            except FusionError as e:
                self.fallback_reason = str(e)
                warnings.warn(f"SparseEnsemble: cannot fuse the members ({e}); running them one by one",
                              RuntimeWarning, stacklevel=2)

    @classmethod
    def from_models(cls, models, *, combine="mean_prob", fuse=True, **sparsify_options):
        """Members from SparseModels (kept as they are) or pruned nn.Modules (converted with
        sparse_rt.sparsify(**sparsify_options))."""
        members = [m if isinstance(m, SparseModel) else sparsify(m, **sparsify_options) for m in models]
        return cls(members, combine=combine, fuse=fuse)

    @classmethod
    def from_checkpoints(cls, paths, arch, *, combine="mean_prob", fuse=True, **convert_options):
        """Members from checkpoint files (a list, or a folder read in natural order: member_2
        before member_10), each converted by SparseModel.from_checkpoint(path, arch,
        **convert_options) (masks, mask_form, arch_kwargs, min_sparsity, format, dtype, ...)."""
        members = [from_checkpoint(p, arch, **convert_options) for p in member_paths(paths)]
        return cls(members, combine=combine, fuse=fuse)

    def forward_members(self, *args, **kwargs):
        if self.fused is not None:
            return self.fused(*args, **kwargs)
        return torch.stack([m(*args, **kwargs) for m in self.members])

    def forward(self, *args, **kwargs):
        return combine(self.forward_members(*args, **kwargs), self.combine)

    def uncertainty(self, *args, **kwargs):
        """{"entropy": predictive entropy [B], "disagreement": fraction of member pairs whose top-1
        predictions differ [B]}."""
        return uncertainty(self.forward_members(*args, **kwargs))

    def report(self):
        """Text: per member its density and sparse layer count, then the pairwise mask overlap."""
        lines = [f"ensemble of {len(self.members)} members, combine={self.combine}, "
                 + ("fused" if self.fused is not None else f"per-member ({self.fallback_reason or 'fuse=False'})")]
        for i, m in enumerate(self.members):
            t = m.summary().totals()
            lines.append(f"  member {i}: density {density(m):.4f}, {t['sparse_layers']}/{t['layers']} sparse layers, "
                         f"{t['sparse_bytes'] / 2**20:.2f} MiB  {(m.source or {}).get('file', '')}".rstrip())
        overlap = pairwise_jaccard(self.members)
        lines.append("pairwise mask overlap (Jaccard |a∩b|/|a∪b| over Linear/Conv2d weights):")
        lines.append("      " + "".join(f"{j:>8}" for j in range(len(self.members))))
        for i, row in enumerate(overlap.tolist()):
            lines.append(f"  {i:>4}" + "".join(f"{v:8.4f}" for v in row))
        return "\n".join(lines)

    def save(self, path):
        """One .srt file holding every member (the fused graph is rebuilt on load)."""
        from ..serialize import save  # facade: the artifact layer builds on this one

        save(self, path)

    @classmethod
    def load(cls, path, arch=None, *, arch_kwargs=None, trust_arch=False, combine=None, fuse=True):
        """Reads an ensemble .srt (see save); arguments as sparse_rt.load, `combine` overrides the
        recorded rule."""
        from ..serialize import load_ensemble  # facade: the artifact layer builds on this one

        return load_ensemble(path, arch, arch_kwargs=arch_kwargs, trust_arch=trust_arch, combine=combine, fuse=fuse)
