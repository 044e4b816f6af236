"""Validation shared by CSR and BSR: the compressed-row index structure is the same for both."""

import torch


def check_compressed_rows(crow, col, n_rows, n_cols, what):
    """Raises ValueError naming the first problem in a compressed-row index pair.

    `what` names the matrix (e.g. "CSR [512, 2048]"); rows/cols count blocks for BSR.
    """
    for name, t in (("crow_indices", crow), ("col_indices", col)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype != torch.int32:
            raise ValueError(f"{what}: {name} must be int32, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{what}: {name} must be 1-D, got shape {tuple(t.shape)}")
    if crow.numel() != n_rows + 1:
        raise ValueError(f"{what}: crow_indices has {crow.numel()} entries, expected rows + 1 = {n_rows + 1}")
    if crow.device != col.device:
        raise ValueError(f"{what}: crow_indices is on {crow.device} but col_indices is on {col.device}")
    nnz = col.numel()
    crow64 = crow.long()
    if crow64[0].item() != 0:
        raise ValueError(f"{what}: crow_indices[0] must be 0, got {crow64[0].item()}")
    steps = crow64.diff()
    if (steps < 0).any():
        i = int((steps < 0).nonzero()[0])
        raise ValueError(f"{what}: crow_indices must be non-decreasing, but crow_indices[{i}]="
                         f"{crow64[i].item()} > crow_indices[{i + 1}]={crow64[i + 1].item()}")
    if crow64[-1].item() != nnz:
        raise ValueError(f"{what}: crow_indices[-1]={crow64[-1].item()} but col_indices holds {nnz} entries")
    if nnz == 0:
        return
    col64 = col.long()
    bad = (col64 < 0) | (col64 >= n_cols)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"{what}: col_indices[{i}]={col64[i].item()} is out of range [0, {n_cols})")
    # Within a row, column indices must increase strictly (sorted, no duplicates).
    same_row = torch.ones(nnz - 1, dtype=torch.bool, device=col.device)
    row_starts = crow64[1:-1]
    row_starts = row_starts[(row_starts > 0) & (row_starts < nnz)]
    same_row[row_starts - 1] = False
    unsorted = same_row & (col64.diff() <= 0)
    if unsorted.any():
        i = int(unsorted.nonzero()[0]) + 1
        row = int(torch.searchsorted(crow64, torch.tensor(i, device=crow64.device), right=True)) - 1
        raise ValueError(f"{what}: col_indices of row {row} are not strictly increasing at position {i} "
                         f"({col64[i - 1].item()} then {col64[i].item()})")


def check_values(values, nnz, tail_shape, device, what):
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"{what}: values must be a tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        raise ValueError(f"{what}: values must be floating point, got {values.dtype}")
    if values.device != device:
        raise ValueError(f"{what}: values is on {values.device} but the indices are on {device}")
    expected = (nnz, *tail_shape)
    if tuple(values.shape) != expected:
        raise ValueError(f"{what}: values has shape {tuple(values.shape)}, expected {expected}")


def dense_and_mask(weight, mask, what):
    """Checks a dense 2-D weight and its optional mask; returns (weight, bool mask)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{what}.from_dense: expected a 2-D weight tensor, got {shape}")
    if mask is None:
        return weight, weight != 0
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"{what}.from_dense: mask shape {tuple(mask.shape)} differs from weight "
                         f"shape {tuple(weight.shape)}")
    return weight, mask.to(device=weight.device, dtype=torch.bool)


def compress_rows(mask):
    """(crow, col) int32 of the True entries of a 2-D bool mask, row-major."""
    counts = mask.sum(dim=1)
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(counts, 0, out=crow[1:])
    col = mask.nonzero()[:, 1]
    return crow.to(torch.int32), col.to(torch.int32)


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)
