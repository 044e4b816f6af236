"""Sparse weight containers: plain tensors named like torch's sparse layouts (never torch.sparse_*
tensors, which break torch.export, .pt2 saving and ONNX export)."""

from .bsr import BSR
from .csr import CSR
from .smtx import load_smtx

__all__ = ["CSR", "BSR", "load_smtx"]
