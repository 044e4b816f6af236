"""Saving and loading: the .srt artifact (srt.py) and atomic file writes (atomic.py)."""

from .atomic import atomic_write
from .srt import (
    SrtArchError,
    SrtCorruptError,
    SrtError,
    SrtHeaderError,
    SrtIntegrityError,
    SrtVersionError,
    load,
    read_manifest,
    save,
)

__all__ = ["save", "load", "read_manifest", "atomic_write", "SrtError", "SrtCorruptError",
           "SrtHeaderError", "SrtIntegrityError", "SrtVersionError", "SrtArchError"]
