from dataclasses import dataclass

import torch

from ._checks import check_compressed_rows, check_values, compress_rows, dense_and_mask, nbytes


@dataclass
class CSR:
    """A matrix [rows, cols] in compressed sparse rows with int32 indices.

    Row r holds values[crow_indices[r]:crow_indices[r+1]] at columns col_indices[...] (strictly
    increasing within a row).
    """

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    shape: tuple

    @classmethod
    def from_dense(cls, weight, mask=None):
        """Stores the entries where `mask` is True (default: the nonzeros of `weight`)."""
        weight, mask = dense_and_mask(weight, mask, "CSR")
        crow, col = compress_rows(mask)
        return cls(crow, col, weight[mask].contiguous(), tuple(weight.shape))

    @property
    def nnz(self):
        return self.col_indices.numel()

    @property
    def density(self):
        rows, cols = self.shape
        return self.nnz / (rows * cols) if rows * cols else 0.0

    @property
    def nbytes(self):
        return nbytes(self.crow_indices, self.col_indices, self.values)

    def to_dense(self):
        rows, cols = self.shape
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        row = torch.repeat_interleave(torch.arange(rows, device=dense.device),
                                      self.crow_indices.long().diff())
        dense[row, self.col_indices.long()] = self.values
        return dense

    def validate(self):
        """Raises ValueError naming the first structural problem; returns self when valid."""
        if len(self.shape) != 2 or any(int(s) < 0 for s in self.shape):
            raise ValueError(f"CSR: shape must be two non-negative sizes, got {self.shape}")
        rows, cols = self.shape
        what = f"CSR {list(self.shape)}"
        check_compressed_rows(self.crow_indices, self.col_indices, rows, cols, what)
        check_values(self.values, self.nnz, (), self.crow_indices.device, what)
        return self
