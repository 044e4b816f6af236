// The front half every backend's binding shares: argument checks, shape derivation and their
// messages. Each check names the op, the tensor and the problem, so a user who calls an op directly
// with a malformed weight gets a clear error instead of an out-of-bounds access inside a kernel.
// Torch-only (no CUDA headers): compiled into the CPU-only and the CUDA build alike.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "../kernels/conv_shape.h"

// Every error of an op reads "sparse_rt.<op>: <message>". The message is built by error_message()
// and handed to TORCH_CHECK as one string, so that no number goes through an ostream: on the GPU
// machine (2026-12-04) an extension compiled against newer libstdc++ headers than the library the
// process loaded crashed in ostream's number formatting, while messages of strings (the index
// errors, formatted with std::to_string) came back intact. A bad argument must never crash.
#define SPARSE_RT_CHECK(cond, op, ...) \
  TORCH_CHECK(cond, ::sparse_rt::error_message("sparse_rt.", op, ": ", __VA_ARGS__))

namespace sparse_rt {
namespace message_parts {

inline void append(std::string& out, const char* text) { out += text; }
inline void append(std::string& out, const std::string& text) { out += text; }
inline void append(std::string& out, c10::string_view text) { out.append(text.data(), text.size()); }
inline void append(std::string& out, at::ScalarType dtype) { out += c10::toString(dtype); }
inline void append(std::string& out, const c10::Device& device) { out += device.str(); }
inline void append(std::string& out, double value) {
  char text[32];  // %g: what an ostream's default precision prints
  std::snprintf(text, sizeof(text), "%g", value);
  out += text;
}
template <typename Int, typename = std::enable_if_t<std::is_integral_v<Int>>>
void append(std::string& out, Int value) {
  out += std::to_string(value);
}
// Shapes as torch prints them: [3, 9].
inline void append(std::string& out, c10::IntArrayRef shape) {
  out += '[';
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  out += ']';
}
inline void append(std::string& out, const std::vector<int64_t>& shape) { append(out, c10::IntArrayRef(shape)); }

}  // namespace message_parts

template <typename... Parts>
std::string error_message(const Parts&... parts) {
  std::string out;
  (message_parts::append(out, parts), ...);
  return out;
}

// The sizes implied by a CSR (or BSR) weight once its tensors have passed the structural checks.
struct SparseWeightInfo {
  int64_t rows;      // output features / channels (for BSR: block rows * block height)
  int64_t stored;    // entries of col_indices: nonzeros for CSR, blocks for BSR (BSR.nblocks)
  int64_t block_h;   // 1 for CSR
  int64_t block_w;   // 1 for CSR
};

// A linear op's arguments, checked: weight, activation, bias, in_features and the input shape.
struct LinearProblem {
  SparseWeightInfo weight;
  int64_t batch;                   // the product of the input's leading dimensions
  std::vector<int64_t> out_shape;  // input.shape[:-1] + [weight.rows]
  int64_t index_cols;              // column indices lie in [0, index_cols): in_features / block_w
};

// `value_rank` is 1 for CSR and 3 for BSR ([nblocks, bh, bw]). Index values are not read here:
// each backend validates them its own way (check_sparse_indices, or on the device).
LinearProblem prepare_linear(const char* op, const at::Tensor& input, const at::Tensor& crow,
                             const at::Tensor& col, const at::Tensor& values,
                             const c10::optional<at::Tensor>& bias, int64_t in_features,
                             int64_t value_rank);

// pack_csr's arguments, checked as csr_linear checks its weight (without an input): the weight's
// sizes.
SparseWeightInfo prepare_pack(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                              int64_t in_features);

// A packing handed to a CSR op (pack_csr's result), checked as a tensor: int32, 1-D, contiguous, on
// the weight's device, and empty unless that is the CPU (the CUDA kernels have no packed layout:
// pack_csr returns an empty one there). Its contents are compared with the weight by the CPU op
// where it reads them (cpu::find_packed_error).
void check_packing(const char* op, const c10::optional<at::Tensor>& packed, const at::Tensor& values);

// csr_linears' arguments, checked: lists of one length >= 1, each layer as prepare_linear checks it
// (errors name "csr_linears (layer i)", linears_layer_name(i)) against the one input, one value
// dtype for all the layers, and no packings (an empty list) or one per layer (check_packing).
std::vector<LinearProblem> prepare_linears(const at::Tensor& input, at::TensorList crows, at::TensorList cols,
                                           at::TensorList values,
                                           const c10::List<c10::optional<at::Tensor>>& biases,
                                           int64_t in_features,
                                           const c10::List<c10::optional<at::Tensor>>& packed);
std::string linears_layer_name(size_t layer);

// csr_mlp's arguments, checked: each layer as prepare_linear checks it (the second's input being
// the first's output; errors name the layer), one value dtype for both, the activation, the
// residual and the packings (check_packing). `gelu_approximate` is F.gelu's `approximate` for the
// GELU activations.
struct MlpProblem {
  LinearProblem first, second;
  std::vector<int64_t> out_shape;  // input.shape[:-1] + [second layer's rows]
  bool relu;
  c10::string_view gelu_approximate;
};
MlpProblem prepare_mlp(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                       const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                       const at::Tensor& crow2, const at::Tensor& col2, const at::Tensor& values2,
                       const c10::optional<at::Tensor>& bias2, int64_t in_features,
                       c10::string_view activation, const c10::optional<at::Tensor>& residual,
                       const c10::optional<at::Tensor>& packed1, const c10::optional<at::Tensor>& packed2);
// The op names prepare_mlp's errors give for each layer.
constexpr const char* kMlpFirstLayer = "csr_mlp (first layer)";
constexpr const char* kMlpSecondLayer = "csr_mlp (second layer)";

// csr_conv2d's arguments, checked: weight, activation, bias and the geometry (two entries per list,
// positive kernel/stride/dilation and non-negative padding, each below 2^31, groups dividing both
// channel counts, no overflow, a non-empty output).
struct ConvProblem {
  SparseWeightInfo weight;
  Conv2dShape shape;
  int64_t index_cols;  // in_channels / groups * kh * kw: the columns of the CSR weight
};

ConvProblem prepare_conv(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                         const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                         int64_t in_channels, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         const char* op = "csr_conv2d");

// csr_pointwise_conv_pair's layers, checked: each as prepare_conv checks a 1x1, stride-1, unpadded
// convolution of one group (errors name the layer: kPairFirstLayer, kPairSecondLayer), the second
// reading the first's output ([batch, first's rows, height, width]: middle_shape), and the residual.
struct PairProblem {
  ConvProblem first, second;
  std::vector<int64_t> middle_shape;
};
constexpr const char* kPairFirstLayer = "csr_pointwise_conv_pair (first layer)";
constexpr const char* kPairSecondLayer = "csr_pointwise_conv_pair (second layer)";
PairProblem prepare_pointwise_conv_pair(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                                        const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                                        int64_t in_channels, const c10::optional<at::Tensor>& residual,
                                        const at::Tensor& crow2, const at::Tensor& col2, const at::Tensor& values2,
                                        const c10::optional<at::Tensor>& bias2);

// A bottleneck block's shortcut layer as the op takes it: its CSR arrays given all three or none.
struct BlockShortcut {
  const c10::optional<at::Tensor>& crow;
  const c10::optional<at::Tensor>& col;
  const c10::optional<at::Tensor>& values;
  const c10::optional<at::Tensor>& bias;
  bool given() const { return crow.has_value(); }
};

// csr_bottleneck_block's layers, checked: each as prepare_conv checks it (errors name the layer:
// kBlockLayers), a 1x1 convolution, a 3x3 one with stride 1 and padding 1, a 1x1 one, all of one
// group, each reading the one before's output; the residual of the last one's output shape, or a
// shortcut (kBlockShortcut: a 1x1 convolution of one group of the block's input to the last one's
// channels, not with a residual).
struct BlockProblem {
  ConvProblem first, second, last;
  c10::optional<ConvProblem> shortcut;
};
constexpr const char* kBlockLayers[3] = {"csr_bottleneck_block (first layer)", "csr_bottleneck_block (3x3 layer)",
                                         "csr_bottleneck_block (last layer)"};
constexpr const char* kBlockShortcut = "csr_bottleneck_block (shortcut layer)";
BlockProblem prepare_bottleneck_block(const at::Tensor& input, const at::Tensor& crow1, const at::Tensor& col1,
                                      const at::Tensor& values1, const c10::optional<at::Tensor>& bias1,
                                      int64_t in_channels, const at::Tensor& crow2, const at::Tensor& col2,
                                      const at::Tensor& values2, const c10::optional<at::Tensor>& bias2,
                                      const at::Tensor& crow3, const at::Tensor& col3, const at::Tensor& values3,
                                      const c10::optional<at::Tensor>& bias3,
                                      const c10::optional<at::Tensor>& residual, const BlockShortcut& shortcut);
// csr_bottleneck_block's packings, each checked as check_packing does under its layer's name; none for
// a shortcut layer not given.
void check_block_packings(const c10::optional<at::Tensor>& packed1, const c10::optional<at::Tensor>& packed2,
                          const c10::optional<at::Tensor>& packed3, const c10::optional<at::Tensor>& shortcut_packed,
                          const at::Tensor& values1, const at::Tensor& values2, const at::Tensor& values3,
                          const BlockShortcut& shortcut);

// scaled_dot_product_attention's arguments, checked: query [batch, heads, queries, head_dim], key and
// value [batch, heads, keys, head_dim] with keys >= 1, all three of one floating dtype and device.
struct AttentionProblem {
  int64_t batch, heads, queries, keys, head_dim;
};
AttentionProblem prepare_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value);

// add_layer_norm's arguments, checked: input and residual of one shape (at least 1-D, the last
// dimension normalised), dtype and device; weight and bias, when given, [last dimension] of that
// dtype and device; eps >= 0. Returns the number of rows (the product of the leading dimensions).
int64_t prepare_add_layer_norm(const at::Tensor& input, const at::Tensor& residual,
                               const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                               double eps);

// max_pool2d's arguments, checked: a 4-D float32, float16 or bfloat16 input [N, C, H, W] (any memory
// format), kernel_size >= 1, stride >= 1 and 0 <= padding <= kernel_size / 2 (so that every window
// holds a pixel, as torch.max_pool2d requires), 2 entries each, and an output of at least one pixel.
// Returns the geometry (kernels/cpu/max_pool.h's fields).
struct PoolProblem {
  int64_t batch, channels, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w;
};
PoolProblem prepare_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding);

// The residual an op adds to its output before the activation, when given: the output's shape,
// the input's dtype and device.
void check_residual(const char* op, const c10::optional<at::Tensor>& residual, at::IntArrayRef out_shape,
                    const at::Tensor& input);

// at::empty(sizes, options), or an error "sparse_rt.<op>: cannot allocate the <what> [sizes] (N bytes)"
// with the allocator's reason when it refuses (out of memory, or a size whose bytes overflow): the
// geometry's own bounds allow outputs larger than any memory, and allocator errors name no op.
at::Tensor allocate(const char* op, const char* what, at::IntArrayRef sizes, const at::TensorOptions& options);

// Whether direct op calls validate every column index (O(nnz)), and on CUDA the row pointers too
// (on the device, with a synchronization). Off by default: sparse_rt's modules validate their
// weights in Python when built or loaded, so the hot path pays only for the O(rows) row-pointer
// check on CPU and for the per-row check inside the CUDA kernels (kernels/cuda/row_extent.h). Opt in process-wide with SPARSE_RT_CHECK_INDICES=1 or
// sparse_rt.ops.set_full_index_checks(True); a thread's own setting (-1: follow the process-wide
// one, 0: off, 1: on), used by sparse_rt.ops.full_index_checks(), overrides it for that thread so
// that concurrent callers cannot turn each other's checks off.
bool full_index_checks_enabled();
void set_full_index_checks(bool enabled);
int set_thread_full_index_checks(int state);  // returns the thread's previous state

// Whether the CPU ops trust a `packed` argument's nonzeros: they check its header and row blocks'
// offsets (O(rows / 256)) but do not compare its entries with col_indices and values (a pass over
// every nonzero of both), and the SpMM keeps each segment within its row block and clamps its
// columns into the weight, so a packing never makes a read out of bounds; a packing made before
// writes to the weight that its layer did not see is then computed with, silently. Off by default; SPARSE_RT_TRUST_PACKINGS=1 or
// sparse_rt.ops.set_trusted_packings(True) process-wide, sparse_rt.ops.trusted_packings() per thread
// (the same three states as the full index checks).
bool trusted_packings_enabled();
void set_trusted_packings(bool enabled);
int set_thread_trusted_packings(int state);

// Index validation of CPU tensors before a kernel reads them: crow starts at 0, is non-decreasing
// and ends at nnz; with `check_columns`, every column index lies in [0, cols). The CPU ops run it on
// every call (columns when full checks are enabled); the CUDA ops run it on host copies to word
// what their device-side check found, so every index error reads the same on both devices.
void check_sparse_indices(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t cols,
                          bool check_columns);

}  // namespace sparse_rt
