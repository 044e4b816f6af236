"""Ensembles of sparse tickets (FreeTickets, Sup-tickets): fused execution, combine rules,
superposition into one model, and mask algebra between members.

::

    ens = SparseEnsemble.from_checkpoints("runs/freetickets/", arch="wrn", arch_kwargs={...})
    probs = ens(x)                        # mean of the members' softmax (combine="mean_prob")
    outs = ens.forward_members(x)         # [M, B, C]
    ens.uncertainty(x)                    # {"entropy": [B], "disagreement": [B]}
    soup = superpose(ens.members, density=0.2); recalibrate_bn(soup, batches)
"""

from .combine import COMBINE_RULES, combine, uncertainty
from .core import SparseEnsemble
from .erk import erk_densities, erk_masks
from .fuse import FusionError, fuse_members
from .masks import density, jaccard, mask_intersection, mask_union, member_masks, pairwise_jaccard
from .superpose import recalibrate_bn, superpose

__all__ = ["SparseEnsemble", "combine", "uncertainty", "COMBINE_RULES", "fuse_members", "FusionError",
           "superpose", "recalibrate_bn", "member_masks", "mask_union", "mask_intersection", "jaccard",
           "pairwise_jaccard", "density", "erk_densities", "erk_masks"]
