"""The .srt container (srt.py: layout, limits, digests, errors) and atomic file writes (atomic.py).
Turning models into .srt files and back is sparse_rt.serialize's job."""

from .atomic import atomic_write
from .srt import (
    SrtArchError,
    SrtCorruptError,
    SrtError,
    SrtHeaderError,
    SrtIntegrityError,
    SrtVersionError,
    read_manifest,
)

__all__ = ["read_manifest", "atomic_write", "SrtError", "SrtCorruptError", "SrtHeaderError", "SrtIntegrityError",
           "SrtVersionError", "SrtArchError"]
