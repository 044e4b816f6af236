// Sparse 2-D convolution as one tiled CSR SpMM (csr_spmm.h) over a packed copy of the input.
//
// The input image is copied zero-padded and split into its stride phases: phase (a, b) holds the
// padded pixels (a + s_h*i, b + s_w*j). In phase coordinates every tap of a strided, dilated kernel
// reads with stride 1, so the output row oy, column ox of tap (ky, kx) reads phase element
// (oy + ky*d_h / s_h, ox + kx*d_w / s_w). Only the phases some tap reads are stored (a 1x1 stride-2
// convolution keeps one of four). Outputs are computed "wide" - each output row as long as a phase
// row (Ws) - so that output position q = oy*Ws + ox maps to packed input position q + offset with
// one offset per nonzero, and the SpMM runs over contiguous rows. The extra columns (ox >= OW) are
// computed but not stored.
//
// The packed image spans the padded input, and its stride-phase tables the stride: geometries with
// padding, stride or dilation far beyond the image would make it huge (and its sizes overflow).
// Those run a gather path instead, whose cost depends only on the input, the output and the
// nonzeros (see PackedConvLayout::gather).
#pragma once

#include <cstdint>
#include <vector>

#include "../conv_shape.h"
#include "parallel.h"
#include "sparse_matrix.h"

namespace sparse_rt::cpu {

struct PackedConvLayout {
  int64_t phase_h, phase_w;  // size of one stride phase of the padded image (Hs, Ws)
  int64_t plane;             // phase_h * phase_w
  // Slot of each phase row a < s_h (column b < s_w) among the stored ones, -1 where no tap reads it.
  std::vector<int32_t> row_slot, col_slot;
  int64_t stored_cols;       // phase columns stored; phase (a, b) is stored at row_slot[a] * stored_cols + col_slot[b]
  int64_t phases;            // stored phases per channel
  int64_t wide;              // out_h * phase_w: output positions computed per channel
  int64_t wide_padded;       // wide padded as padded_columns does (to a multiple of 8, the SpMM's vector width)
  int64_t packed_len;        // floats in a packed image, including the zero tail the SpMM may read
  // A 1x1, stride-1, unpadded convolution reads the image as it is: packing would only copy it.
  // Then the width is not padded either, so no read runs past the input, and the last wide % 8
  // columns take the SpMM's overlapping last tile.
  bool direct;
  // A direct layout of one group over a whole panel of pixels once padded (PanelLayout: batch *
  // height * width > 32) runs as a linear layer: the images' pixels side by side are the columns
  // of one [in_channels, batch * height * width] operand, copied 64 columns at a time into a panel
  // (rows 64 floats apart, as pack_panels lays out a linear layer's input) that the SpMM reads with
  // the weight's own columns, packed (PackedNonzeros) when w.packed is given. Panels span images,
  // so a 7x7 image at batch 8 fills six whole panels rather than three narrow tiles per image, and a
  // panel's window of the operand is contiguous. No tap offsets then.
  // A strided 1x1 convolution (no padding, one group) takes it too, its panels copied from the
  // pixels its kernel reads: ResNet-50's downsampling layers had run on tap offsets, image by image.
  // So does a kernel of several taps (or padding) of one group whose weight is packed for the call,
  // over its input unfolded: a panel's row c * taps + tap holds, for each of the panel's output
  // pixels, the input pixel that tap reads in channel c (0 in the padding), so the weight's own
  // columns index it and the packed SpMM reads its rows aligned, from L1. On tap offsets each
  // nonzero's 64-float window starts wherever its tap does (a load crossing a line costs 1.55x an
  // aligned one on a Zen 4, in L1) and the channel blocks that keep the windows in L1 leave about
  // 30 nonzeros per row and block. ResNet-50 90%'s 3x3 layers alone on a Zen 4 (2 threads, inputs
  // from the model): batch 8 1.06x (28x28), 1.22x (14x14), 1.31x (7x7), stride 2 1.15-1.68x; batch 1
  // 1.03-1.15x, but 0.90x on a 7x7 image (one panel: kMinUnfoldedColumns), and a 56x56 layer of 64
  // output channels 0.83x at batch 8 (its copy, a row per weight column, against 6.4 nonzeros per
  // column: kMinUnfoldedNonzerosPerRow).
  bool panels;
  // The wide rows are the output rows when phase_w == out_w; otherwise the SpMM stores the first
  // out_w columns of each.
  bool crop;
  // The SpMM reads the packed image (or the input, when direct) idx_block offsets at a time, a
  // block of input channels whose taps' windows fit L1, in idx_blocks blocks; 0 for all at once
  // (DenseRows::idx_block). Chosen from the nonzeros' count, so the layout is for one weight.
  int64_t idx_block, idx_blocks;
  // The packed path's scratch would exceed kPackedScratchPerElement times the elements the call
  // reads and writes (input, output, nonzeros) plus kPackedScratchSlack, or its sizes overflow:
  // then no scratch is used and each nonzero adds its value times the input to the output pixels
  // whose tap lands inside the image, in O(output + nnz * out_h + reads) time. The other fields
  // are unset then.
  bool gather;
};

constexpr int64_t kPackedScratchPerElement = 8;
constexpr int64_t kPackedScratchSlack = int64_t(1) << 20;
// An unfolded input's panels (PackedConvLayout::panels) take at least this many columns (padded),
// and the weight this many nonzeros per weight column on average.
constexpr int64_t kMinUnfoldedColumns = 128, kMinUnfoldedNonzerosPerRow = 6;

// Decides the path and, for the packed one, its layout; O(1) work and memory before it has bounded
// the layout's sizes with overflow-checked arithmetic (checked_int.h). `nnz`: the weight's nonzeros;
// `packed`: whether the call has them packed (PackedNonzeros), which a kernel of several taps needs
// to run as panels of its unfolded input.
PackedConvLayout packed_conv_layout(const Conv2dShape& s, int64_t nnz, bool packed = false);

// What csr_conv2d needs besides its operands, in elements: the packed images (none when the
// layout is direct) and one tap offset per nonzero (conv_tap_offsets), or the panels; none on the
// gather path. The caller allocates it, with its own allocator.
struct ConvScratch {
  float* packed;           // batch * packed_len
  const int32_t* offsets;  // nnz, filled by conv_tap_offsets
  float* panels;           // one panel (in_channels * kh * kw * kPanelWidth floats) per thread, at most
};
struct ConvScratchSizes {
  int64_t packed, offsets, panels;
};
// `threads`: the ParallelFor's num_threads that csr_conv2d will get (the panels layout copies each
// thread's panel into its own part of the scratch).
ConvScratchSizes conv_scratch_sizes(const Conv2dShape& s, const PackedConvLayout& layout, int64_t nnz,
                                    int64_t threads);

// The packed path's tap offsets: for each nonzero, where its tap's input starts in a packed image
// (or in the input itself, when the layout is direct). They depend on the weight's pattern, the
// geometry and the input's height and width only (not on the batch or the values), so a caller
// that runs one weight many times may keep them. Rows split over pf's threads; nothing on the
// gather path.
void conv_tap_offsets(const Conv2dShape& s, const PackedConvLayout& layout, const int32_t* crow, const int32_t* col,
                      int32_t* offsets, const ParallelFor& pf);

// Whether csr_conv2d stores its output with non-temporal stores (Epilogue::stream) by itself: when
// what the call reads and writes (input, output, residual) exceeds half the L3, the output will have
// left the cache before the next layer reads it, and a plain store would first fetch each line it
// fills. ResNet-50's expanding 1x1 convolutions with a residual at batch 8 (Zen 4, 90% sparse):
// 1.2-1.3x per layer, the whole model 1.05x; at batch 1 no layer comes near the bound.
// At most kL3CountedAtMost of the L3 counts: a virtual machine's sysfs may describe the host's whole
// L3, shared with its other tenants (480 MiB on an Intel Xeon VM, where ResNet-50's first 1x1 layer
// at batch 8, 32 MB touched, ran 4x faster streamed once its output had left the cache, and the
// whole model 1.07-1.13x at batch 8, 0.99-1.02x at batch 1; old and new rule alternated in one process).
// 32 MiB keeps the Zen 3 and Zen 4 hosts' own L3 (32 MiB per CCD) and their thresholds.
constexpr int64_t kL3CountedAtMost = int64_t(32) << 20;
bool streams_output(const Conv2dShape& s, const Epilogue& ep);

// y = act(conv2d(x, W) + bias) for the whole batch: x is fp32 [batch, in_channels, height, width],
// y fp32 [batch, out_channels, out_h, out_w], W (w.cols = in_channels / groups * kh * kw) as in
// conv_shape.h, its tap offsets in scratch.offsets. Packing runs on pf's threads split by (image,
// channel), the SpMM by (image, nnz-balanced rows); a batch-1 image is packed by every thread too.
// The panels layout splits (panel, nnz-balanced rows) over the threads, each copying its panels;
// w.packed (pack_nonzeros of w, checked by the caller) is read there only. The output is streamed
// where ep.stream asks for it or streams_output finds it pays.
template <typename V>
void csr_conv2d(const Conv2dShape& s, const PackedConvLayout& layout, const CsrView<V>& w,
                const float* x, float* y, Epilogue ep, const ConvScratch& scratch,
                const ParallelFor& pf);

// Two pointwise convolutions in a row, the second reading the first's output (ResNet's block output
// and the next block's first layer): y1 = first(x) with ep1, y2 = second(y1) with ep2, one panel of
// pixels at a time through both, so that the second reads the first's output from L1/L2 rather than
// from memory. `first` is 1x1, stride 1, unpadded, of one group; the second has first.out_channels
// input channels and w2.rows output channels, and no residual. The same values as the two csr_conv2d
// calls bit for bit (the same sums in the same order). y1 is streamed where ep1.stream asks or
// streams_output finds it pays; the second layer reads its panel copy. w1.packed / w2.packed are read
// where given (each checked by the caller).
// chains_pointwise: whether the chain pays, for the caller to run the two layers apart where not.
// Each thread takes whole panels (its share of their count): kChainPanelsPerThread per thread at
// least. And y1 must stream: where it stays in the cache anyway, the panel copies of the input, the
// residual and y1 cost more than they save (ResNet-50 90% at batch 1, Intel Xeon, every pair chained:
// 0.97x the layers apart).
constexpr int64_t kChainPanelsPerThread = 4;
bool chains_pointwise(const Conv2dShape& first, const Epilogue& ep1, int64_t threads);
// Scratch floats pointwise_conv_chain needs: per thread, the first layer's input panel, its output
// panel and, with a residual, the residual's panel.
int64_t pointwise_chain_scratch(const Conv2dShape& first, bool residual, int64_t threads);
template <typename V>
void pointwise_conv_chain(const Conv2dShape& first, const CsrView<V>& w1, Epilogue ep1, float* y1,
                          const CsrView<V>& w2, Epilogue ep2, float* y2, const float* x, float* scratch,
                          const ParallelFor& pf);

// A ResNet bottleneck block's three convolutions, each of one group: 1x1 (in_channels -> mid1),
// 3x3 with stride 1 and padding 1 (mid1 -> mid2), 1x1 (mid2 -> out_channels), on an fp32 [batch,
// in_channels, height, width] input.
struct BottleneckShape {
  int64_t batch, in_channels, height, width, mid1, mid2, out_channels;
};

// The block run a band of output rows of one image at a time: the first layer on the band's rows
// and one either side (the two it shares with the band above kept where the same thread ran that
// one), the 3x3 layer on that, the last layer with its epilogue (the residual) into the output's
// rows, so that the two inner activations never leave the core's L2 (bottleneck_block).
// bottleneck_band_rows: the rows of a band, the largest divisor of the height whose band's operands
// (scratch, and the input and output rows passing through) take at most kBandBytesAtMost and at most
// the L2, whose band is at least one 64-column tile wide, and that gives each thread kBandsPerThread
// bands at least; 0 where the block does not pay (its activations stay in the cache anyway: the caller
// runs the layers apart; ResNet-50's stages 3 and 4 at batch 8 ran 1.4x and 6.5x as long in bands) or
// no band fits. Measured on ResNet-50 at batch 8, 2 threads: on an Intel Xeon (2 MiB of L2) bands of
// 1 MiB against 2 MiB ran its second stage 1.5x as fast; on an AMD EPYC Zen 4 (1 MiB of L2) bands of
// 1 MiB against 512 KiB, two rows (56 columns, tiles of 32, 16 and 8, each a pass over the weight),
// ran its blocks 1.1-1.3x as fast, the first stage's too (layer by layer in the model's order,
// alternating); the whole model, captured, with the stem pool's prefetch (max_pool.cpp) beside it,
// 1.04x / 1.08x at 90% and 1.07x / 1.09x at 95% (old and new alternated in one process, two runs
// each); batch 1 bands nothing, level (0.995x).
constexpr int64_t kBandsPerThread = 4;
constexpr int64_t kBandBytesAtMost = int64_t(1) << 20;
int64_t bottleneck_band_rows(const BottleneckShape& b, int64_t nnz2, int64_t threads);
// Scratch bottleneck_block needs: floats (per thread, the band's two inner activations, the packed
// copy of the first and, with a shortcut, the band's sums) and int32 tap offsets (one per nonzero of
// the 3x3 layer).
struct BottleneckScratchSizes {
  int64_t floats, offsets;
};
BottleneckScratchSizes bottleneck_scratch(const BottleneckShape& b, int64_t band_rows, int64_t nnz2,
                                          int64_t threads, bool shortcut);
// y = w3(w2(w1(x) with ep1) with ep2) with ep3, band by band (band_rows from bottleneck_band_rows).
// w1.cols = in_channels, w2.cols = mid1 * 9, w3.cols = mid2; ep3's residual (if any) has y's shape.
// With a shortcut (a 1x1 convolution of x, in_channels -> out_channels, its epilogue a bias at most),
// its output is the residual instead: each band's goes into scratch, the last layer's sums are added
// to it in place and the band is copied into y, so that it never passes through memory (a stage's
// first block, whose downsample is pointwise: ResNet-50's first; ep3 then has no residual of its own).
// The same products as the csr_conv2d calls, summed in tiles of other widths at a band's edges:
// equal to fp32 rounding. The output is streamed where ep3.stream asks or streams_output finds it pays.
template <typename V>
void bottleneck_block(const BottleneckShape& b, int64_t band_rows, const CsrView<V>& w1, const Epilogue& ep1,
                      const CsrView<V>& w2, const Epilogue& ep2, const CsrView<V>& w3, Epilogue ep3,
                      const CsrView<V>* shortcut, const Epilogue& shortcut_ep, const float* x, float* y,
                      float* scratch, int32_t* offsets, const ParallelFor& pf);

}  // namespace sparse_rt::cpu
