"""Reader for the DLMC `.smtx` sparsity patterns (Gale et al., 2020): line 1 `rows, cols, nnz`,
line 2 the row offsets, line 3 the column indices. Patterns carry no values."""

import gzip

import torch

from .csr import CSR


def load_smtx(path, values=None, *, seed=0, dtype=torch.float32):
    """Reads a `.smtx` or `.smtx.gz` pattern as a validated CSR.

    `values` fills the nonzeros; by default they are drawn from N(0, 1) with a fixed `seed`.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        header = f.readline()
        crow_line = f.readline()
        col_line = f.readline()
    try:
        rows, cols, nnz = (int(v) for v in header.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"{path}: first line must be 'rows, cols, nnz', got {header.strip()!r}") from None
    crow = torch.tensor([int(v) for v in crow_line.split()], dtype=torch.int32)
    col = torch.tensor([int(v) for v in col_line.split()], dtype=torch.int32)
    if col.numel() != nnz:
        raise ValueError(f"{path}: header says {nnz} nonzeros but {col.numel()} column indices follow")
    if values is None:
        values = torch.randn(nnz, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return CSR(crow, col, values.to(dtype), (rows, cols)).validate()
