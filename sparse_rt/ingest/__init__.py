"""Read checkpoints exactly as sparse-training codebases save them.

::

    from sparse_rt.ingest import read_checkpoint, match_state_dict, match_masks
    ckpt = read_checkpoint("run/level_3/main")      # or a file; mask_form="auto"
    ckpt.state_dict   # {name: effective dense tensor}  (masks applied, prefixes removed)
    ckpt.masks        # {name: bool mask} for every masked tensor
    ckpt.form, ckpt.notes, ckpt.source_sha256
    state_dict = match_state_dict(ckpt, model)       # keys mapped onto model's; KeyError-derived
    masks = match_masks(ckpt.masks, model, key_map=state_dict.key_map)
    model.load_state_dict(state_dict, strict=True)

Forms (:data:`FORMS`; each is one entry of :data:`sparse_rt.ingest.forms.FORM_TABLE`: its
detector, its reader and where its key names were confirmed; the OpenLTH folder layout
is in :mod:`sparse_rt.ingest.openlth`, auto-detection in :mod:`sparse_rt.ingest.detection`,
wrapper keys and safe loading in :mod:`sparse_rt.ingest.loading`, mask validation in
:mod:`sparse_rt.ingest.masks`):

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
    InvalidOptionError,
    MaskKeyError,
    MaskShapeError,
    MaskValueError,
    MissingMasksError,
    ModelRequiredError,
    UnknownLayoutError,
    UnsafeCheckpointError,
    UnsupportedTensorError,
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
    "UnsupportedTensorError",
    "InvalidOptionError",
]
