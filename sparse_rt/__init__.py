"""sparse_rt: run pruned PyTorch models on sparse CPU/CUDA kernels."""

from ._version import __version__

from . import formats, nn, ops  # noqa: E402
from .io import load  # noqa: E402
from .model import LayerSummary, SparseModel, Summary, sparsify  # noqa: E402
from .pruning import magnitude_prune  # noqa: E402

__all__ = ["formats", "nn", "ops", "sparsify", "SparseModel", "Summary", "LayerSummary", "load",
           "magnitude_prune", "__version__"]

from . import ensemble  # noqa: E402
from .ensemble import SparseEnsemble  # noqa: E402

__all__ += ["ensemble", "SparseEnsemble"]
