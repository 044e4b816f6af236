"""Builders of sparse test operands and the tolerance rule shared by the op tests."""

import torch

from sparse_rt.formats import BSR, CSR

# Max error relative to the largest reference magnitude, per output dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_mask(rows, cols, density, seed, empty_rows=(), dense_rows=()):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    for r in empty_rows:
        mask[r] = False
    for r in dense_rows:
        mask[r] = True
    return mask


def random_weight(rows, cols, density, seed, dtype=torch.float32, **rows_kw):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    return w * random_mask(rows, cols, density, seed, **rows_kw)


def random_csr(rows, cols, density, seed, dtype=torch.float32, device="cpu", **rows_kw):
    w = random_weight(rows, cols, density, seed, dtype, **rows_kw)
    return to_device(CSR.from_dense(w), device)


def random_bsr(rows, cols, blocksize, density, seed, dtype=torch.float32, device="cpu"):
    bh, bw = blocksize
    block_mask = random_mask(rows // bh, cols // bw, density, seed)
    mask = block_mask.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return to_device(BSR.from_dense(w * mask, mask, blocksize), device)


def to_device(m, device):
    m.crow_indices, m.col_indices, m.values = (t.to(device) for t in (m.crow_indices, m.col_indices, m.values))
    return m


def randn(*shape, dtype=torch.float32, device="cpu", seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype=dtype, device=device)


def assert_close(actual, expected, dtype):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == dtype
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    err = (actual.double() - expected.double()).abs().max().item() / scale if expected.numel() else 0.0
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g} > {TOLERANCE[dtype]:.1g} for {dtype}"
