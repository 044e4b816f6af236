// y = act(x @ W.T + bias) with W in CSR for small batches. x is fp32 row-major [batch, cols]; y is
// fp32 row-major [batch, rows]. Each call computes output features [row_begin, row_end) for the
// whole batch, so the caller can split rows across threads (kernels never spawn threads). Batches
// of kTiledMinBatch and more go to csr_linear_tiled.
#pragma once

#include <algorithm>
#include <cstdint>

#include "csr_spmm.h"
#include "parallel.h"
#include "sparse_matrix.h"

namespace sparse_rt::cpu {

// Small batches: every output is a dot product of a weight row with a gathered slice of x; the
// row's indices and values are reused from L1 across the batch.
template <typename V>
void csr_linear_gather(const CsrView<V>& w, const float* x, int64_t batch, float* y, Epilogue ep,
                       int64_t row_begin, int64_t row_end);

// The batch size from which the tiled SpMM beats csr_linear_gather (its narrowest tile is 8 wide).
constexpr int64_t kTiledMinBatch = 8;

// Larger batches: the tiled SpMM over x packed by pack_panels (csr_spmm.h), panel by panel.
template <typename V>
void csr_linear_tiled(const CsrView<V>& w, const float* panels, int64_t batch, float* y, Epilogue ep,
                      int64_t row_begin, int64_t row_end);

// Floats of the packed input (pack_panels) that a batch takes: 0 below kTiledMinBatch, where
// the gather kernel reads x itself.
inline int64_t packed_input_floats(int64_t batch, int64_t cols) {
  return batch < kTiledMinBatch ? 0 : cols * PanelLayout{batch, cols}.padded();
}

// y = act(x @ W.T + bias) for the whole batch on pf's threads, for each of `layers` layers
// (ws[l], eps[l], ys[l]) that read the same x (a transformer's query, key and value), one after
// another. `panels` is scratch for x packed by pack_panels (packed_input_floats of it), or null below
// kTiledMinBatch, where the gather kernel reads x itself, each layer's rows split into nnz-balanced
// parts. On the tiled kernel with at least as many panels as threads, each thread takes whole
// panels: it packs them itself and runs every layer whose nonzeros fit in L2 on them, each layer
// read whole from the thread's own L2 (the panels left over, fewer than the threads, and the layers
// that outgrow L2 split rows instead; then both cores read every panel). BERT-base's 768x768 layers
// at densities 0.05-0.1 (Zen 3, 2 threads, trusted packings, a script outside the repo): 1.04-1.17x
// at 128 and 1024 rows against splitting rows; a 768x3072 layer at density 0.1 (1.9 MB of nonzeros)
// lost 8% that way at 1024 rows. Packing its own panels, a thread reads no panel another core
// wrote: this host's two vCPUs are at times placed far apart (a cache line's round trip between
// them 350 ns instead of 70), and there packing in a parallel region of its own, split by columns,
// made a 768x768 layer at density 0.05 on 1024 rows take 1.14 ms against 0.65 ms near. Whole
// BERT-base at batch 8, 2 threads, against that and the layers in regions of their own: 1.16-1.25x
// (Zen 4, 90% and 95%; batch 1 1.02-1.07x).
template <typename V>
void csr_linears(const CsrView<V>* ws, const Epilogue* eps, float* const* ys, int64_t layers, const float* x,
                 float* panels, int64_t batch, const ParallelFor& pf);

template <typename V>
void csr_linear(const CsrView<V>& w, const float* x, float* panels, int64_t batch, float* y, Epilogue ep,
                const ParallelFor& pf) {
  csr_linears(&w, &ep, &y, 1, x, panels, batch, pf);
}

// Two linear layers with an activation between them, y = W2 act(W1 x + b1) + ep2, for batches of
// kTiledMinBatch and more: ep1 holds W1's bias and the activation (a ReLU or a GELU; no residual).
// x is packed into `panels` (scratch of packed_input_floats) as csr_linears packs it, each thread
// packing the panels it takes whole. One panel of x at a time, W1's output for that panel (hidden
// [w1.rows, panel width], W1's rows contiguous) stays in cache as the dense operand of W2, so the
// hidden activations are never stored as a [batch, w1.rows] matrix, transposed back into panels, or
// passed over separately for the activation, which runs on W1's sums in registers. The values are
// those of two csr_linear_tiled calls with these epilogues, bit for bit.
//
// With at least as many panels as pf's threads, each thread takes whole panels through both layers
// with hidden activations of its own, and the panels left over (fewer than the threads) split each
// layer's rows over the threads, as every panel did before: splitting rows made W2 read the half of
// each panel's hidden activations that the other core wrote, and put two parallel regions per panel.
// BERT-base's feed-forward block alone (Zen 3, 2 threads, trusted packings, a script outside the
// repo): 1.06-1.21x at 128-1024 rows, densities 0.05 and 0.1.
template <typename V>
void csr_mlp_tiled(const CsrView<V>& w1, Epilogue ep1, const CsrView<V>& w2, Epilogue ep2, const float* x,
                   float* panels, int64_t batch, float* hidden, float* y, const ParallelFor& pf);

// How many threads csr_mlp_tiled gives whole panels to (0: none, each panel's rows are split), for
// pf's num_threads `threads`.
inline int64_t mlp_panel_threads(int64_t batch, int64_t cols, int64_t threads) {
  return PanelLayout{batch, cols}.count() >= threads ? threads : 0;
}

// Floats of the hidden activations csr_mlp_tiled needs: one panel's worth (w1.rows x kPanelWidth)
// for each thread that takes whole panels, or one.
inline int64_t mlp_hidden_floats(int64_t batch, int64_t cols, int64_t hidden_rows, int64_t threads) {
  return std::max<int64_t>(1, mlp_panel_threads(batch, cols, threads)) * hidden_rows * kPanelWidth;
}

}  // namespace sparse_rt::cpu
