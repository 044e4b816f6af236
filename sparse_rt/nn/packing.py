"""The packing of a layer's CSR weight (ops.pack_csr) that the CPU ops read, kept by the layer with
the tensors it was made from: SparseLinear's, and a SparseConv2d's of one group, whose op runs it as a
linear layer over the images' output pixels (a kernel of several taps over its input unfolded)."""

import os
import weakref

import torch

from .. import ops

# A linear layer's inputs of fewer rows run unpacked: the ops compare a packing with the weight on
# every call (a pass over both), which eats the gain over few of the SpMM's 64-row panels. Zen 3, 2
# threads, packed / unpacked: DLMC transformer layers at 90%, 0.87-1.10x at 128 rows and 1.00-1.14x
# at 1024
# (benchmarks/bench_fused_ops.py, results/fused-ops-2026-12-04-packed.json); random BERT-base-shaped
# layers at 80-90% (a script outside the repo), 0.68-1.08x at 128, 1.02-1.16x at 512, 1.07-1.21x
# at 1024.
PACKING_MIN_ROWS = 512
# A weight of at least PACKING_MIN_DENSITY packs from PACKING_MIN_ROWS_DENSE rows, its packing
# compared with it all the same (eight entries at a time with AVX-512). Whole fused BERT-base, Zen 4,
# 2 threads, the default against unpacked in one process (benchmarks/bench_trusted_packing.py,
# results/trusted-packing-2026-12-06-zen4-dense-rule.json and -touch-rows.json): 256 tokens (batch 2)
# 1.06x at 90%, 1.15x at 87.5%, 1.07-1.46x at 80%. A script outside the repo (/tmp/bert/minrows_ab.py)
# found 1.14x at 384 tokens (90%), but 0.96x at 95% (density 0.05) and 0.97x at 128 tokens (90%): the
# comparison reads the packing and the weight from DRAM, 6 ms of a 32 ms forward.
PACKING_MIN_ROWS_DENSE = 256
# A pointwise convolution's op (its rows are the pixels of all images) gains more per row from a
# packing than a linear layer's, enough to pay for the comparison from fewer rows. Fused ResNet-50 at
# 90%, each pointwise layer alone (Zen 3, 2 threads, a script outside the repo), packed (compared on
# every call) against the unpacked tap offsets it ran on before: 0.98-1.41x at batch 1 on the 14x14
# layers (196 pixels), 1.19-1.92x at batch 8 on the 7x7 ones (392).
PACKING_MIN_PIXELS = 196
# With trusted packings (ops.set_trusted_packings) the ops skip that comparison, and a packing of a
# weight of at least PACKING_MIN_DENSITY pays from one whole panel on. Whole BERT-base at
# batch 1 (128 tokens), trusted, packing from 64 rows against not packing, in one process (2 threads,
# Zen 3, a script outside the repo): 1.14x at 90%, 0.976x at 95%, although csr_mlp alone at
# BERT-base's shapes gains 1.23x at density 0.1 and 1.03x at 0.05.
PACKING_MIN_ROWS_TRUSTED = 64
PACKING_MIN_DENSITY = 0.08
# "0" when a layer packs keeps its weight unpacked (the packing's 8 bytes per nonzero are saved).
PACKING_VARIABLE = "SPARSE_RT_PACK_NONZEROS"


# Counts repack() calls: a forward recorded for replay (sparse_rt.capture) before one is not replayed.
_generation = 0


def packing_generation():
    return _generation


def _version(tensor):
    """PyTorch's count of the in-place changes it saw; None for an inference tensor (it counts none)."""
    return None if tensor.is_inference() else tensor._version


class PackedWeight:
    """Mixin of a SparseWeightModule whose CPU op reads a packing of its CSR weight. The layer says
    how many rows an input makes (_packing_rows: 0 where its op reads no packing) and how many
    columns its weight has (_packing_columns).

    The layer packs its weight the first time an input of at least packing_min_rows rows comes, and
    keeps the packing with the tensors it was made from and their versions: an in-place change
    PyTorch counts makes the next call pack again. Writes it does not count (through .data or
    NumPy, or to tensors made in inference mode, which have no version) make the ops refuse the
    stale packing, naming it, until repack() is called; they never compute with it, unless
    packings are trusted (ops.set_trusted_packings), which skips that comparison."""

    # Whether this layer packs (False keeps it unpacked, as SPARSE_RT_PACK_NONZEROS=0 does for all).
    packs = True
    # The fewest rows from which it packs, unless packings are trusted.
    packing_min_rows = PACKING_MIN_ROWS
    # Weak references to crow_indices, col_indices and values when packed, then their versions (None
    # for an inference tensor); the packing, None where there is none (not worth it, turned off).
    _packing_key = None
    _packing = None

    def packing(self, input):
        """The packing of this layer's weight (ops.pack_csr) that the CPU op reads for `input`, or
        None: for a CSR weight that `packs` and the compiled ops, a plain CPU input of at least
        packing_min_rows rows (for a density of at least PACKING_MIN_DENSITY: PACKING_MIN_ROWS_DENSE
        where that is fewer, PACKING_MIN_ROWS_TRUSTED with trusted packings), outside an export or
        torch.compile (which see the op without it)."""
        # An export or torch.compile traces this method: it must return before reading anything else.
        # The checks are ordered cheapest first (is_in_onnx_export costs 1.1 us).
        if (not self.packs or self.format != "csr" or not self._reads_packing() or not ops.HAS_COMPILED_OPS
                or type(input) is not torch.Tensor or not input.is_cpu or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling()):
            return None
        crow, col, values, _ = self._weight_tensors()
        rows = self._packing_rows(input)
        if rows == 0 or rows < self._packing_min_rows(values):
            return None  # the common case below the minimum: nothing else read
        # Checked on every call (72 times per BERT-base forward), so written out rather than looped:
        # the generator over the three tensors cost more than the rest of this method.
        key = self._packing_key
        if (key is None or key[0]() is not crow or key[1]() is not col or key[2]() is not values
                or key[3] != _version(crow) or key[4] != _version(col) or key[5] != _version(values)):
            packing = None
            if os.environ.get(PACKING_VARIABLE) != "0":
                packing = ops.pack_csr(crow, col, values, self._packing_columns())
            self._packing = packing if packing is not None and packing.numel() > 0 else None
            self._packing_key = (weakref.ref(crow), weakref.ref(col), weakref.ref(values),
                                 _version(crow), _version(col), _version(values))
        return self._packing

    def _reads_packing(self):
        """Whether this layer's op reads a packing for some input."""
        return True

    def _packing_min_rows(self, values):
        dense_entries = self.weight_shape[0] * self.weight_shape[1]
        if dense_entries == 0 or values.numel() < PACKING_MIN_DENSITY * dense_entries:
            return self.packing_min_rows
        if ops.trusted_packings_enabled():
            return PACKING_MIN_ROWS_TRUSTED
        return min(self.packing_min_rows, PACKING_MIN_ROWS_DENSE)

    def repack(self):
        """Drops the packing, so that the next call packs the weight again: needed after writes to
        the weight that PyTorch does not count (through .data or NumPy)."""
        global _generation
        _generation += 1
        self._packing_key = self._packing = None

    def __getstate__(self):
        # Weak references do not pickle; a copy packs again when first used.
        state = super().__getstate__()
        state.pop("_packing_key", None)
        state.pop("_packing", None)
        return state
