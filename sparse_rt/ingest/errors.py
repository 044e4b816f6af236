"""Exceptions raised by :mod:`sparse_rt.ingest` — one type per problem.

Every exception derives from :class:`IngestError`, and also from the closest
builtin (``ValueError``, ``KeyError``, ``FileNotFoundError``) so callers that
catch builtins keep working.  Messages name the file, key and shapes involved
and say what to do next.
"""

from __future__ import annotations

__all__ = [
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


class IngestError(Exception):
    """Base class of every error raised while reading a checkpoint."""


class _KeyErrorMessage(KeyError):
    # KeyError.__str__ repr()s its argument (quotes, escaped newlines); these
    # errors carry multi-line human messages, so print them as written.
    def __str__(self) -> str:  # pragma: no cover - trivial
        return str(self.args[0]) if self.args else ""


class CheckpointNotFoundError(IngestError, FileNotFoundError):
    """The path does not exist, or a folder holds no checkpoint we can read."""


class UnsafeCheckpointError(IngestError, ValueError):
    """``torch.load(weights_only=True)`` refused the file (it holds pickled
    Python objects).  Re-run with ``unsafe=True`` (CLI: ``--unsafe``) if the
    file comes from a source you trust."""


class CorruptCheckpointError(IngestError, ValueError):
    """The file cannot be read as a checkpoint at all: truncated, damaged, or not a
    ``torch.save`` / safetensors file."""


class UnsupportedTensorError(IngestError, ValueError):
    """A tensor the reader cannot use: a sparse or quantized layout, the meta device, more
    elements than its storage holds (an expanded view), or a dtype its form cannot compute
    with (weights and scores must be real floating point)."""


class InvalidOptionError(IngestError, ValueError):
    """An argument of ``read_checkpoint`` is out of its range (``mask_form=``, ``cs_s0=``)."""


class UnknownLayoutError(IngestError, ValueError):
    """No known checkpoint layout matches; the message lists the key families seen."""


class AmbiguousFormError(IngestError, ValueError):
    """Keys of more than one mask form were found; pass ``mask_form=``."""


class FormNotPresentError(IngestError, ValueError):
    """``mask_form=`` forced a form whose keys are not in the checkpoint."""


class MaskShapeError(IngestError, ValueError):
    """A mask's shape differs from the shape of the tensor it masks."""


class MaskValueError(IngestError, ValueError):
    """A mask holds values other than 0 and 1 (or is not a tensor)."""


class MaskKeyError(IngestError, _KeyErrorMessage):
    """A mask names a parameter that the checkpoint does not have."""


class MissingMasksError(IngestError, ValueError):
    """The form keeps its masks outside the checkpoint (``torch.ao.pruning``)
    and none were passed with ``masks=``."""


class ModelRequiredError(IngestError, ValueError):
    """The form stores masks by layer position (rigl-torch); ``model=`` is needed
    to know which parameter each position refers to."""


class CheckpointMismatchError(IngestError, _KeyErrorMessage):
    """Checkpoint keys/shapes do not match the model (see :func:`match_state_dict`).

    Attributes: ``missing``, ``unexpected`` (lists of key names) and
    ``mismatched`` (list of ``(key, checkpoint_shape, model_shape)``).
    """

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
