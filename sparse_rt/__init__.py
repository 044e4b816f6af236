"""sparse_rt: run pruned PyTorch models on sparse CPU/CUDA kernels."""

from . import ensemble, formats, nn, ops
from ._version import __version__
from .ensemble import SparseEnsemble
from .model import LayerSummary, SparseModel, Summary, sparsify
from .pruning import magnitude_prune
from .serialize import load, save

__all__ = ["formats", "nn", "ops", "sparsify", "SparseModel", "Summary", "LayerSummary", "load", "save",
           "magnitude_prune", "ensemble", "SparseEnsemble", "__version__"]
