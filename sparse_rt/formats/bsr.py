from dataclasses import dataclass

import torch

from ._checks import check_compressed_rows, check_values, compress_rows, dense_and_mask, nbytes


@dataclass
class BSR:
    """A matrix [rows, cols] stored as dense (bh, bw) blocks in compressed sparse block rows.

    Block row i holds blocks crow_indices[i]..crow_indices[i+1]-1; block k sits at block column
    col_indices[k] and its values are values[k], a [bh, bw] tile.
    """

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    shape: tuple
    blocksize: tuple

    @classmethod
    def from_dense(cls, weight, mask=None, blocksize=(4, 4)):
        """Stores every (bh, bw) block holding at least one True mask entry (default mask: the
        nonzeros); entries of a stored block outside the mask are stored as zeros."""
        weight, mask = dense_and_mask(weight, mask, "BSR")
        bh, bw = (int(b) for b in blocksize)
        rows, cols = weight.shape
        if bh < 1 or bw < 1 or rows % bh or cols % bw:
            raise ValueError(f"BSR.from_dense: blocksize ({bh}, {bw}) does not divide the weight shape "
                             f"({rows}, {cols})")
        tiles = lambda t: t.reshape(rows // bh, bh, cols // bw, bw).transpose(1, 2)
        block_mask = tiles(mask).any(dim=(2, 3))
        crow, col = compress_rows(block_mask)
        values = tiles(weight * mask)[block_mask].contiguous()
        return cls(crow, col, values, (rows, cols), (bh, bw))

    @property
    def nnz(self):
        """Stored entries, counting every element of every stored block."""
        return self.values.numel()

    @property
    def nblocks(self):
        """Stored blocks: the length of col_indices (what the C++ front half calls `stored`)."""
        return self.values.shape[0]

    @property
    def density(self):
        rows, cols = self.shape
        return self.nnz / (rows * cols) if rows * cols else 0.0

    @property
    def nbytes(self):
        return nbytes(self.crow_indices, self.col_indices, self.values)

    def to_dense(self):
        rows, cols = self.shape
        bh, bw = self.blocksize
        blocks = torch.zeros(rows // bh, cols // bw, bh, bw, dtype=self.values.dtype,
                             device=self.values.device)
        block_row = torch.repeat_interleave(torch.arange(rows // bh, device=blocks.device),
                                            self.crow_indices.long().diff())
        blocks[block_row, self.col_indices.long()] = self.values
        return blocks.transpose(1, 2).reshape(rows, cols)

    def validate(self):
        """Raises ValueError naming the first structural problem; returns self when valid."""
        what = f"BSR {list(self.shape)} blocks {tuple(self.blocksize)}"
        if len(self.shape) != 2 or len(self.blocksize) != 2:
            raise ValueError(f"{what}: shape and blocksize must each have two entries")
        (rows, cols), (bh, bw) = self.shape, self.blocksize
        if rows < 0 or cols < 0:
            raise ValueError(f"{what}: shape must be two non-negative sizes")
        if bh < 1 or bw < 1 or rows % bh or cols % bw:
            raise ValueError(f"{what}: the block shape does not divide the matrix shape")
        check_compressed_rows(self.crow_indices, self.col_indices, rows // bh, cols // bw, what)
        check_values(self.values, self.col_indices.numel(), (bh, bw), self.crow_indices.device, what)
        return self
