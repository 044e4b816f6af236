"""Property tests (hypothesis): random shapes, densities and dtypes for the formats' round trips
and for every op against a float64 dense reference (torch's own F.linear / F.conv2d). A few
examples each in the normal run; HYPOTHESIS_PROFILE=long for a longer search."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, assert_close, requires_compiled_ops
from hypothesis import assume, given
from hypothesis import strategies as st

import sparse_rt
from sparse_rt import ops
from sparse_rt.formats import BSR, CSR


@st.composite
def masked_weights(draw, rows=st.integers(0, 12), cols=st.integers(0, 12), dtypes=DTYPES):
    """(weight, bool mask) with the mask's density drawn too (empty and full rows included)."""
    r, c = draw(rows), draw(cols)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(r, c, generator=g) < draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    weight = torch.randn(r, c, generator=g).to(draw(st.sampled_from(dtypes)))
    return weight, mask


@given(masked_weights(dtypes=DTYPES + [torch.float64]))
def test_csr_round_trip(wm):
    weight, mask = wm
    csr = CSR.from_dense(weight, mask).validate()
    assert csr.nnz == int(mask.sum())
    assert torch.equal(csr.to_dense(), weight * mask)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 4), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_bsr_round_trip(bh, bw, block_rows, block_cols, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(block_rows * bh, block_cols * bw, generator=g)
    mask = torch.rand(weight.shape, generator=g) < 0.3
    bsr = BSR.from_dense(weight, mask, (bh, bw)).validate()
    assert torch.equal(bsr.to_dense(), weight * mask)
    assert bsr.values.shape[1:] == (bh, bw)


@given(masked_weights(rows=st.integers(1, 8), cols=st.integers(1, 8), dtypes=[torch.float32]),
       st.data())
def test_validate_catches_any_out_of_range_column(wm, data):
    weight, mask = wm
    csr = CSR.from_dense(weight, mask)
    assume(csr.nnz > 0)
    i = data.draw(st.integers(0, csr.nnz - 1))
    bad = data.draw(st.one_of(st.integers(-2**31, -1), st.integers(weight.shape[1], 2**31 - 1)))
    csr.col_indices[i] = bad
    with pytest.raises(ValueError, match=r"col_indices\[\d+\]=-?\d+ is out of range"):
        csr.validate()
    if ops.HAS_COMPILED_OPS:
        with sparse_rt.ops.full_index_checks(), pytest.raises(RuntimeError, match="is out of range"):
            ops.csr_linear(torch.randn(1, weight.shape[1]), csr.crow_indices, csr.col_indices,
                           csr.values, None, weight.shape[1])


def _dense_linear(x, weight, bias, relu):
    y = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    return y.relu() if relu else y


@requires_compiled_ops
@given(masked_weights(), st.lists(st.integers(0, 5), max_size=2), st.booleans(), st.booleans())
def test_csr_linear_matches_dense(wm, lead, with_bias, relu):
    weight, mask = wm
    weight = weight * mask
    csr = CSR.from_dense(weight, mask)
    x = torch.randn(*lead, weight.shape[1]).to(weight.dtype)
    bias = torch.randn(weight.shape[0]).to(weight.dtype) if with_bias else None
    y = ops.csr_linear(x, csr.crow_indices, csr.col_indices, csr.values, bias, weight.shape[1], relu)
    assert_close(y, _dense_linear(x, weight, bias, relu), weight.dtype)


@requires_compiled_ops
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 4), st.integers(0, 4), st.integers(0, 6),
       st.sampled_from(DTYPES), st.booleans(), st.integers(0, 2**31 - 1))
def test_bsr_linear_matches_dense(bh, bw, block_rows, block_cols, batch, dtype, relu, seed):
    g = torch.Generator().manual_seed(seed)
    rows, cols = block_rows * bh, block_cols * bw
    block_mask = torch.rand(block_rows, block_cols, generator=g) < 0.4
    mask = block_mask.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    weight = (torch.randn(rows, cols, generator=g) * mask).to(dtype)
    bsr = BSR.from_dense(weight, mask, (bh, bw))
    x = torch.randn(batch, cols, generator=g).to(dtype)
    bias = torch.randn(rows, generator=g).to(dtype)
    y = ops.bsr_linear(x, bsr.crow_indices, bsr.col_indices, bsr.values, bias, cols, relu)
    assert_close(y, _dense_linear(x, weight, bias, relu), dtype)


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride, padding, dilation = ((draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))
                                 for lo, hi in ((1, 2), (0, 2), (1, 2)))
    # The input must cover the dilated kernel after padding.
    hw = [draw(st.integers(max(1, dilation[i] * (k[i] - 1) + 1 - 2 * padding[i]), 9)) for i in range(2)]
    return groups, cin, cout, k, stride, padding, dilation, hw


@requires_compiled_ops
@given(conv_cases(), st.integers(0, 2), st.sampled_from(DTYPES), st.sampled_from([0.0, 0.3, 1.0]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_csr_conv2d_matches_dense(case, batch, dtype, density, relu, seed):
    groups, cin, cout, k, stride, padding, dilation, hw = case
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin // groups, *k, generator=g)
    weight = (weight * (torch.rand(weight.shape, generator=g) < density)).to(dtype)
    flat = CSR.from_dense(weight.reshape(cout, -1))
    x = torch.randn(batch, cin, *hw, generator=g).to(dtype)
    bias = torch.randn(cout, generator=g).to(dtype)
    y = ops.csr_conv2d(x, flat.crow_indices, flat.col_indices, flat.values, bias, cin, k, stride, padding,
                       dilation, groups, relu)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), stride, padding, dilation, groups)
    assert_close(y, ref.relu() if relu else ref, dtype)
