"""Loads the compiled ops (sparse_rt._C). Without them the ops run on the pure-torch references,
after one warning that says why."""

import warnings

try:
    from .. import _C  # noqa: F401  (loading registers torch.ops.sparse_rt.*)

    HAS_COMPILED_OPS = True
    LOAD_ERROR = None
except ImportError as e:  # not built, or built against another torch
    HAS_COMPILED_OPS = False
    LOAD_ERROR = e
    warnings.warn(
        f"sparse_rt: compiled ops are unavailable ({e}); sparse layers fall back to slow pure-torch "
        "reference implementations. Build them with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=2,
    )


def build_info():
    """How the compiled ops were built ({} when they are missing)."""
    return dict(_C.build_info()) if HAS_COMPILED_OPS else {}
