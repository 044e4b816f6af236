import pytest
import torch
from helpers import random_weight

from sparse_rt.formats import BSR, CSR, load_smtx


@pytest.mark.parametrize("shape,density", [((7, 13), 0.3), ((1, 1), 1.0), ((5, 9), 0.0), ((0, 4), 0.5)])
def test_csr_round_trip(shape, density):
    w = random_weight(*shape, density, seed=0, empty_rows=(0,) if shape[0] else ())
    csr = CSR.from_dense(w).validate()
    assert csr.crow_indices.dtype == csr.col_indices.dtype == torch.int32
    assert csr.nnz == int((w != 0).sum())
    assert torch.equal(csr.to_dense(), w)
    assert csr.nbytes == 4 * (shape[0] + 1) + 4 * csr.nnz + 4 * csr.nnz


def test_csr_mask_keeps_explicit_zeros():
    w = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False]])
    csr = CSR.from_dense(w, mask)
    assert csr.nnz == 2 and csr.crow_indices.tolist() == [0, 2, 2]
    assert torch.equal(csr.to_dense(), w * mask)


@pytest.mark.parametrize("blocksize", [(1, 1), (2, 3), (4, 4)])
def test_bsr_round_trip(blocksize):
    bh, bw = blocksize
    w = random_weight(4 * bh, 5 * bw, 0.1, seed=1)
    bsr = BSR.from_dense(w, blocksize=blocksize).validate()
    assert bsr.values.shape[1:] == blocksize
    assert torch.equal(bsr.to_dense(), w)
    assert bsr.nbytes == 4 * (4 + 1) + 4 * bsr.col_indices.numel() + 4 * bsr.values.numel()


def test_bsr_blocksize_must_divide():
    with pytest.raises(ValueError, match=r"blocksize \(3, 3\) does not divide the weight shape \(8, 9\)"):
        BSR.from_dense(torch.ones(8, 9), blocksize=(3, 3))


def test_from_dense_rejects_bad_mask():
    with pytest.raises(ValueError, match=r"mask shape \(2, 2\) differs from weight shape \(3, 3\)"):
        CSR.from_dense(torch.ones(3, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="expected a 2-D weight"):
        CSR.from_dense(torch.ones(3, 3, 3))


def test_load_smtx(tmp_path, dlmc):
    path = tmp_path / "m.smtx"
    path.write_text("3, 4, 3\n0 2 2 3\n1 3 0\n")
    csr = load_smtx(path, values=torch.tensor([1.0, 2.0, 3.0]))
    assert csr.to_dense().tolist() == [[0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]
    real = load_smtx(next((dlmc / "transformer/magnitude_pruning/0.9").glob("*.smtx.gz")))
    assert real.density == pytest.approx(0.1, abs=0.01)
    (tmp_path / "bad.smtx").write_text("3, 4, 5\n0 2 2 3\n1 3 0\n")
    with pytest.raises(ValueError, match="header says 5 nonzeros but 3 column indices follow"):
        load_smtx(tmp_path / "bad.smtx")
