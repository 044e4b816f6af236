"""Read checkpoints exactly as sparse-training codebases save them.

::

    from sparse_rt.ingest import read_checkpoint, match_state_dict, match_masks
    ckpt = read_checkpoint("run/level_3/main")      # or a file; mask_form="auto"
    ckpt.state_dict   # {name: effective dense tensor}  (masks applied, prefixes removed)
    ckpt.masks        # {name: bool mask} for every masked tensor
    ckpt.form, ckpt.notes, ckpt.source_sha256
    sd = match_state_dict(ckpt, model)               # keys mapped onto model's; KeyError-derived
    masks = match_masks(ckpt.masks, model, key_map=sd.key_map)
    model.load_state_dict(sd, strict=True)

Forms (:data:`FORMS`; key names and the source files they were confirmed in are in
:mod:`sparse_rt.ingest.forms`, the OpenLTH folder layout in :mod:`sparse_rt.ingest.openlth`,
wrapper keys and safe loading in :mod:`sparse_rt.ingest.loading`):

``dense_zeros``                plain state dict, pruned weights are zeros (FreeTickets, Sup-tickets,
                               sparselearning/DST-family code); masks inferred as ``w != 0``
``explicit``                   plain state dict + ``masks=``
``torch_prune``                ``X_orig`` + ``X_mask``               (torch.nn.utils.prune)
``shrinkbench``                ``X`` + ``X_mask`` buffers             (JJGO/shrinkbench)
``open_lth``                   ``mask.pth`` beside ``model_ep*_it*.pth``, or ``checkpoint.pth`` with
                               ``model.``-prefixed keys and ``mask_<a___b>`` buffers  (open_lth)
``rigl_reproducibility``       ``ckpt["mask"]["masks"]``              (varun19299/rigl-reproducibility)
``rigl_torch``                 ``ckpt["pruner"]["backward_masks"]`` list, needs ``model=``  (rigl-torch)
``torch_ao``                   ``parametrizations.weight.original`` + ``masks=``  (torch.ao.pruning)
``continuous_sparsification``  ``mask_weight`` scores: mask ``s > 0``, W x 1/sigmoid(s0)  (lolemacs/CS)
``dst``                        per-row ``threshold``: mask ``|W|.view(out,-1) > t[:, None]``  (DST)

Loading is safe by default (``weights_only=True``; ``unsafe=True`` to allow pickles, with a
warning).  Every error derives from :class:`IngestError`.
"""

from .errors import (
    AmbiguousFormError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FormNotPresentError,
    IngestError,
    MaskKeyError,
    MaskShapeError,
    MaskValueError,
    MissingMasksError,
    ModelRequiredError,
    UnknownLayoutError,
    UnsafeCheckpointError,
)
from .forms import FORMS, rigl_torch_weight_names
from .loading import UnsafeLoadWarning
from .matching import MatchedStateDict, match_masks, match_state_dict
from .reader import Checkpoint, read_checkpoint

__all__ = [
    "read_checkpoint",
    "Checkpoint",
    "match_state_dict",
    "match_masks",
    "MatchedStateDict",
    "FORMS",
    "rigl_torch_weight_names",
    "UnsafeLoadWarning",
    "IngestError",
    "CheckpointNotFoundError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "UnknownLayoutError",
    "AmbiguousFormError",
    "FormNotPresentError",
    "MaskShapeError",
    "MaskValueError",
    "MaskKeyError",
    "MissingMasksError",
    "ModelRequiredError",
    "CheckpointMismatchError",
]
