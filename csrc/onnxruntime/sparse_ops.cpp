// onnxruntime kernels of the "sparse" ONNX flavour's ops (domain "sparse_rt"; the op table is
// sparse_rt/onnx/ops_table.py): CsrLinear, BsrLinear and CsrConv2d, fp32, each taking (X,
// crow_indices, col_indices, values, bias) and giving Y. An optional sixth input, `residual`
// (shaped like Y), is added in the kernel's epilogue before the ReLU: not part of the file format,
// it is what sparse_rt.onnx.session makes of an Add (and Relu) after our op (fold.py), as are the
// linear ops' optional attribute gelu=1 (a Gelu after them, applied in the epilogue) and
// CsrLinears: CsrLinear nodes reading one X (attention's query, key and value projections) as one
// node, X packed once and every layer's rows in one parallel region, and CsrMlp: a CsrLinear whose
// output only a second one reads (a feed-forward block) as one node, 64 rows of X at a time through
// both layers, the hidden activations kept in cache, and ScaledDotProductAttention: attention written
// out in standard ops as one node (fold.fold_attention), and CsrBottleneck: a ResNet bottleneck
// block's three CsrConv2d nodes as one, run a band of rows at a time where its activations would
// leave the cache (fold.fuse_bottleneck_blocks). They call the torch-free CPU kernels
// directly and run them on onnxruntime's own intra-op threads, so a session spends no time in
// Python and no second thread pool competes for the cores.
//
// Built into sparse_rt._C where onnxruntime's headers are found (tools/onnxruntime_headers.py);
// onnxruntime loads that library by path (SessionOptions.register_custom_ops_library) and calls
// RegisterCustomOps. The C API is only ever appended to, so any onnxruntime from the headers'
// release (ORT_API_VERSION) on runs it.
//
// Index arrays are validated before a kernel reads them: weights that are initializers (the
// exporter's output) once, when the node's kernel is created; any other index input on every call.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../kernels/checked_int.h"
#include "../kernels/conv_shape.h"
#include "../kernels/cpu/attention.h"
#include "../kernels/cpu/bsr_linear.h"
#include "../kernels/cpu/csr_conv2d.h"
#include "../kernels/cpu/csr_linear.h"
#include "../kernels/cpu/csr_spmm.h"
#include "../kernels/cpu/index_checks.h"
#include "../kernels/cpu/parallel.h"

namespace sparse_rt::onnxruntime {
namespace {

// An input the op cannot take: onnxruntime reports it as INVALID_ARGUMENT.
struct InvalidArgument {
  std::string message;
};

template <typename... Parts>
[[noreturn]] void invalid(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  throw InvalidArgument{out.str()};
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// --- onnxruntime's intra-op threads as the kernels' parallel-for ---------------------------------

// The context of the node this thread is computing; the parallel-for below runs on its thread
// pool. Elsewhere (a kernel body already on a worker) it runs serially.
thread_local const OrtKernelContext* current_context = nullptr;

struct ContextScope {
  explicit ContextScope(const OrtKernelContext* context) : previous(current_context) { current_context = context; }
  ~ContextScope() { current_context = previous; }
  const OrtKernelContext* previous;
};

struct Chunks {
  const cpu::RangeFn* body;
  int64_t begin, length, count;
};

void run_chunk(void* data, size_t index) {
  const Chunks& c = *static_cast<const Chunks*>(data);
  const int64_t i = static_cast<int64_t>(index);
  (*c.body)(c.begin + c.length * i / c.count, c.begin + c.length * (i + 1) / c.count);
}

// The C API does not tell a kernel how many threads its session has: the hardware's count is what
// the kernels split work into (the pool balances the parts over however many it has).
const int64_t kParts = std::max<int64_t>(1, std::thread::hardware_concurrency());

cpu::ParallelFor ort_parallel_for() {
  return {[](int64_t begin, int64_t end, int64_t grain, cpu::RangeFn body) {
            const int64_t length = end - begin;
            if (length <= 0) return;
            const int64_t count = std::min(kParts, std::max<int64_t>(1, length / std::max<int64_t>(grain, 1)));
            if (count == 1 || current_context == nullptr) return body(begin, end);
            Chunks chunks{&body, begin, length, count};
            Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(current_context, run_chunk,
                                                                      static_cast<size_t>(count), 0, &chunks));
          },
          kParts};
}

// --- inputs -----------------------------------------------------------------------------------------

enum Input : size_t { kX, kCrow, kCol, kValues, kBias, kResidual, kInputs };
constexpr std::array<const char*, kInputs> kInputNames{"X", "crow_indices", "col_indices", "values", "bias",
                                                       "residual"};

struct Tensor {
  const void* data;
  std::vector<int64_t> dims;
  int64_t count;
  ONNXTensorElementDataType type;
};

Tensor read(const Ort::ConstValue& value) {
  const auto info = value.GetTensorTypeAndShapeInfo();
  return {value.GetTensorRawData(), info.GetShape(), static_cast<int64_t>(info.GetElementCount()),
          info.GetElementType()};
}

// The types onnxruntime checks for inputs the op declares with a type, and an op of inputs of
// undeclared types (CsrLinears) checks itself.
void require_declared_types(const std::array<Tensor, kInputs>& in) {
  for (size_t i : {kCrow, kCol, kValues, kBias}) {
    const auto expected = i == kCrow || i == kCol ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    if (in[i].type != expected) {
      invalid(kInputNames[i], " must be ", i == kCrow || i == kCol ? "int32" : "float32", " (ONNX element type ",
              static_cast<int>(expected), "), got ONNX element type ", static_cast<int>(in[i].type));
    }
  }
}

void require_rank(const Tensor& t, size_t input, size_t rank) {
  if (t.dims.size() != rank) {
    invalid(kInputNames[input], " must be ", rank, "-D, got shape ", dims_text(t.dims));
  }
}

// The sparse weight as the op's inputs give it; shapes checked, indices not yet.
struct Weight {
  const int32_t* crow;
  const int32_t* col;
  const float* values;
  const float* bias;
  int64_t row_blocks;  // len(crow_indices) - 1
  int64_t nnz;         // stored entries (blocks, for BSR)
  int64_t bh = 1, bw = 1;
  int64_t rows() const { return row_blocks * bh; }
};

Weight read_weight(const std::array<Tensor, kInputs>& in, bool blocked) {
  require_rank(in[kCrow], kCrow, 1);
  require_rank(in[kCol], kCol, 1);
  require_rank(in[kBias], kBias, 1);
  require_rank(in[kValues], kValues, blocked ? 3 : 1);
  Weight w{static_cast<const int32_t*>(in[kCrow].data), static_cast<const int32_t*>(in[kCol].data),
           static_cast<const float*>(in[kValues].data), static_cast<const float*>(in[kBias].data),
           in[kCrow].count - 1, in[kCol].count};
  if (w.row_blocks < 0) invalid("crow_indices must hold at least one entry");
  if (w.nnz > std::numeric_limits<int32_t>::max()) invalid("col_indices has ", w.nnz, " entries, above int32's range");
  if (blocked) {
    w.bh = in[kValues].dims[1];
    w.bw = in[kValues].dims[2];
    if (w.bh < 1 || w.bw < 1) invalid("values must have blocks of at least 1x1, got shape ", dims_text(in[kValues].dims));
    if (w.bh > cpu::kMaxBlockHeight) invalid("block height ", w.bh, " exceeds the CPU kernel's maximum ", cpu::kMaxBlockHeight);
  }
  if (in[kValues].dims[0] != w.nnz) {
    invalid("values has shape ", dims_text(in[kValues].dims), " but col_indices holds ", w.nnz, " entries");
  }
  if (in[kBias].count != w.rows()) invalid("bias has ", in[kBias].count, " entries but the weight has ", w.rows(), " rows");
  return w;
}

// --- what every kernel does ------------------------------------------------------------------------

// Runs a kernel's body, turning what it throws into the status onnxruntime reports, prefixed with
// `what` (the node).
template <typename Body>
OrtStatusPtr reporting(const std::string& what, const Body& body) {
  try {
    body();
    return nullptr;
  } catch (const InvalidArgument& e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (what + ": " + e.message).c_str());
  } catch (const std::bad_alloc&) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (what + ": out of memory").c_str());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (what + ": " + e.what()).c_str());
  }
}

std::string node_description(const OrtKernelInfo* info, const char* op_type) {
  return std::string("sparse_rt.") + op_type + " node '" + Ort::ConstKernelInfo(info).GetNodeName() + "'";
}

// The data of input `index` where it is one of the node's constant initializers, else null.
const void* constant_input(const OrtKernelInfo* info, size_t index) {
  int is_constant = 0;
  const Ort::ConstValue value = Ort::ConstKernelInfo(info).GetTensorConstantInput(index, &is_constant);
  return is_constant ? value.GetTensorRawData() : nullptr;
}

// One weight's index arrays, validated before a kernel reads them: in full once, on the first
// call, when they are the node's constant initializers (the columns they address depend on
// attributes only); on every call otherwise.
class IndexCheck {
 public:
  IndexCheck(const OrtKernelInfo* info, size_t crow_input, size_t col_input)
      : crow_(constant_input(info, crow_input)), col_(constant_input(info, col_input)) {}

  bool constant(const Weight& w) const { return w.crow == crow_ && w.col == col_; }

  void operator()(const Weight& w, int64_t cols) {
    const bool constant = this->constant(w);
    if (constant) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (checked_) return;
    }
    const std::string error = cpu::find_index_error(w.crow, w.row_blocks, w.col, w.nnz, cols, true, ort_parallel_for());
    if (!error.empty()) invalid(error);
    if (constant) {
      const std::lock_guard<std::mutex> lock(mutex_);
      checked_ = true;
    }
  }

 private:
  const void* const crow_;
  const void* const col_;
  std::mutex mutex_;
  bool checked_ = false;
};

// A CSR weight's nonzeros packed for the tiled SpMM (cpu::pack_nonzeros), built on the first call
// that runs it and kept, where crow, col and values are the node's constant initializers (they
// cannot change between calls); other weights run unpacked. The packing holds a copy of the
// nonzeros (8 bytes each); SPARSE_RT_PACK_NONZEROS=0 when the session is made saves that memory
// and keeps every weight unpacked.
class PackedWeight {
 public:
  PackedWeight(const OrtKernelInfo* info, size_t crow_input)
      : crow_(packing_enabled() ? constant_input(info, crow_input) : nullptr),
        col_(constant_input(info, crow_input + 1)), values_(constant_input(info, crow_input + 2)) {}

  // The packing of `view` (a constant weight's), or null.
  const cpu::PackedNonzeros* operator()(const cpu::CsrView<float>& view) {
    if (!crow_ || !col_ || !values_ || view.crow != crow_ || view.col != col_ || view.values != values_) return nullptr;
    std::call_once(packed_once_, [&] {
      blob_ = cpu::pack_nonzeros(view);
      if (!blob_.empty()) {
        view_ = cpu::packed_nonzeros(blob_.data());
        view_.columns_checked = true;  // made here from the weight's checked columns
      }
    });
    return blob_.empty() ? nullptr : &view_;
  }

 private:
  static bool packing_enabled() {
    const char* value = std::getenv("SPARSE_RT_PACK_NONZEROS");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }

  const void* const crow_;  // null: not packed
  const void* const col_;
  const void* const values_;
  std::once_flag packed_once_;
  std::vector<int32_t> blob_;  // empty: packing would not pay
  cpu::PackedNonzeros view_{};
};

int64_t int_attribute(const OrtKernelInfo* info, const char* name) {
  return Ort::ConstKernelInfo(info).GetAttribute<int64_t>(name);
}

// An int attribute the node may leave out (the file format's ops have none: these are what
// sparse_rt.onnx.session folds into them).
int64_t optional_int_attribute(const OrtKernelInfo* info, const char* name, int64_t absent) {
  int64_t value = absent;
  if (OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value)) {
    Ort::GetApi().ReleaseStatus(status);
    return absent;
  }
  return value;
}

// The rows of a linear layer's X (the product of its leading dimensions), after checking that its
// last dimension is in_features.
int64_t linear_batch(const Tensor& x, int64_t in_features) {
  if (x.dims.empty()) invalid("X must have at least one dimension (in_features=", in_features, "), got a scalar");
  if (x.dims.back() != in_features) invalid("X has shape ", dims_text(x.dims), " but in_features=", in_features);
  int64_t batch = 1;
  for (size_t i = 0; i + 1 < x.dims.size(); ++i) batch *= x.dims[i];
  return batch;
}

// A residual input, where given, must be shaped like the output it is added to.
void check_residual(const Tensor* residual, const std::vector<int64_t>& out_dims) {
  if (residual && residual->dims != out_dims) {
    invalid("residual has shape ", dims_text(residual->dims), " but the output has shape ", dims_text(out_dims));
  }
}

// --- the kernel common to CsrLinear, BsrLinear and CsrConv2d -------------------------------------

// What one op adds to the shared kernel: its attributes, the columns its indices address, and its
// computation.
class OpKernel {
 public:
  OpKernel(const OrtKernelInfo* info, const char* op_type, bool blocked)
      : what_(node_description(info, op_type)), blocked_(blocked), index_check_(info, kCrow, kCol) {}
  virtual ~OpKernel() = default;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return reporting(what_, [&] {
      const ContextScope scope(context);
      const Ort::KernelContext ctx(context);
      std::array<Tensor, kInputs> in{};
      for (size_t i = 0; i < std::min<size_t>(ctx.GetInputCount(), kInputs); ++i) {
        const Ort::ConstValue value = ctx.GetInput(i);
        if (value) in[i] = read(value);
      }
      const Weight w = read_weight(in, blocked_);
      index_check_(w, index_columns(in[kX], w));
      compute(ctx, in[kX], w, in[kResidual].data ? &in[kResidual] : nullptr);
    });
  }

 protected:
  // The columns of the index space (in_features / bw, or in_channels / groups * kh * kw), after
  // checking X against the attributes.
  virtual int64_t index_columns(const Tensor& x, const Weight& w) const = 0;
  virtual void compute(const Ort::KernelContext& ctx, const Tensor& x, const Weight& w,
                       const Tensor* residual) const = 0;

  // Y's buffer, of out_dims, and the epilogue adding bias, the residual (which must be shaped like
  // Y) and the ReLU or GELU.
  static std::pair<float*, cpu::Epilogue> output(const Ort::KernelContext& ctx, const std::vector<int64_t>& out_dims,
                                                 const Weight& w, bool relu, const Tensor* residual, bool gelu = false) {
    check_residual(residual, out_dims);
    float* y = ctx.GetOutput(0, out_dims).GetTensorMutableData<float>();
    return {y, cpu::Epilogue{w.bias, relu, residual ? static_cast<const float*>(residual->data) : nullptr,
                             gelu ? cpu::Gelu::kExact : cpu::Gelu::kNone}};
  }

  bool blocked() const { return blocked_; }
  // Whether w's indices are the node's constant initializers (the same on every call).
  bool constant_weight(const Weight& w) const { return index_check_.constant(w); }

 private:
  const std::string what_;
  const bool blocked_;
  IndexCheck index_check_;
};

// Scratch from the session's CPU allocator (its arena reuses memory between calls).
class Scratch {
 public:
  explicit Scratch(const Ort::KernelContext& ctx)
      : allocator_(ctx.GetAllocator(*static_cast<const OrtMemoryInfo*>(
            Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault)))) {}
  template <typename T>
  T* get(int64_t count) {
    if (count <= 0) return nullptr;
    allocations_.push_back(allocator_.GetAllocation(static_cast<size_t>(count) * sizeof(T)));
    return static_cast<T*>(allocations_.back().get());
  }

 private:
  Ort::Allocator allocator_;
  std::vector<Ort::MemoryAllocation> allocations_;
};

// Scratch for x [batch, in_features] packed for the tiled SpMM (the kernels pack it: cpu::csr_linears),
// or null below kTiledMinBatch, where the gather kernel reads x itself.
float* panel_scratch(Scratch& scratch, int64_t batch, int64_t in_features) {
  return scratch.get<float>(cpu::packed_input_floats(batch, in_features));
}

// --- CsrLinear and BsrLinear --------------------------------------------------------------------

class LinearKernel : public OpKernel {
 public:
  LinearKernel(const OrtKernelInfo* info, const char* op_type, bool blocked)
      : OpKernel(info, op_type, blocked), in_features_(int_attribute(info, "in_features")),
        relu_(int_attribute(info, "relu") != 0), gelu_(optional_int_attribute(info, "gelu", 0) != 0),
        packed_weight_(info, kCrow) {
    if (in_features_ < 0) invalid("in_features must be >= 0, got ", in_features_);
    if (relu_ && gelu_) invalid("relu and gelu cannot both be set");
  }

 protected:
  int64_t index_columns(const Tensor& x, const Weight& w) const override {
    linear_batch(x, in_features_);
    if (in_features_ % w.bw != 0) invalid("in_features=", in_features_, " is not a multiple of the block width ", w.bw);
    return in_features_ / w.bw;
  }

  void compute(const Ort::KernelContext& ctx, const Tensor& x, const Weight& w,
               const Tensor* residual) const override {
    std::vector<int64_t> out_dims = x.dims;
    out_dims.back() = w.rows();
    const auto [y, ep] = output(ctx, out_dims, w, relu_, residual, gelu_);
    const int64_t batch = linear_batch(x, in_features_);
    if (batch == 0 || w.rows() == 0) return;
    const auto* xp = static_cast<const float*>(x.data);
    const cpu::ParallelFor pf = ort_parallel_for();
    const int64_t work = w.nnz * w.bh * w.bw * batch;
    if (blocked()) {
      const cpu::BsrView<float> view{w.crow, w.col, w.values, w.row_blocks, in_features_ / w.bw, w.bh, w.bw};
      cpu::parallel_over_rows(pf, w.crow, w.row_blocks, 1, work, [&](int64_t, int64_t r0, int64_t r1) {
        cpu::bsr_linear(view, xp, batch, y, ep, r0, r1);
      });
      return;
    }
    cpu::CsrView<float> view{w.crow, w.col, w.values, w.row_blocks, in_features_};
    Scratch scratch(ctx);
    float* panels = panel_scratch(scratch, batch, in_features_);
    if (panels) view.packed = packed_weight_(view);
    cpu::csr_linear(view, xp, panels, batch, y, ep, pf);
  }

 private:
  const int64_t in_features_;
  const bool relu_;
  const bool gelu_;  // GELU (exact form) after bias and residual: a Gelu node folded in
  mutable PackedWeight packed_weight_;
};

struct CsrLinearKernel final : LinearKernel {
  explicit CsrLinearKernel(const OrtKernelInfo* info) : LinearKernel(info, "CsrLinear", false) {}
};

struct BsrLinearKernel final : LinearKernel {
  explicit BsrLinearKernel(const OrtKernelInfo* info) : LinearKernel(info, "BsrLinear", true) {}
};

// --- CsrLinears ------------------------------------------------------------------------------------

// Inputs X, then (crow_indices, col_indices, values, bias) for each layer; output i is layer i's
// X @ W_i^T + bias_i. Not a file format op: sparse_rt.onnx.session makes it of CsrLinear nodes
// that read one X (fold.group_linears_sharing_input).
constexpr size_t kInputsPerLayer = 4;

// The layer of an op with several whose four inputs start at `first`, over `cols` columns: types,
// shapes and indices checked, errors prefixed with `name` ("layer 1", "second layer").
Weight read_layer(const Ort::KernelContext& ctx, size_t first, int64_t cols, IndexCheck& check,
                  const std::string& name) {
  try {
    std::array<Tensor, kInputs> in{};
    for (size_t j = 0; j < kInputsPerLayer; ++j) in[kCrow + j] = read(ctx.GetInput(first + j));
    require_declared_types(in);
    const Weight w = read_weight(in, false);
    check(w, cols);
    return w;
  } catch (const InvalidArgument& e) {
    invalid(name, ": ", e.message);
  }
}

class CsrLinearsKernel {
 public:
  explicit CsrLinearsKernel(const OrtKernelInfo* info)
      : what_(node_description(info, "CsrLinears")), in_features_(int_attribute(info, "in_features")) {
    const Ort::ConstKernelInfo kernel_info(info);
    const size_t inputs = kernel_info.GetInputCount(), layers = (inputs - 1) / kInputsPerLayer;
    if (inputs < 1 + kInputsPerLayer || (inputs - 1) % kInputsPerLayer != 0 || kernel_info.GetOutputCount() != layers) {
      invalid("takes X and four inputs per layer (crow_indices, col_indices, values, bias) and gives one output "
              "per layer, got ", inputs, " inputs and ", kernel_info.GetOutputCount(), " outputs");
    }
    if (in_features_ < 0) invalid("in_features must be >= 0, got ", in_features_);
    for (size_t i = 0; i < layers; ++i) {
      const size_t first = 1 + i * kInputsPerLayer;
      checks_.push_back(std::make_unique<IndexCheck>(info, first, first + 1));
      packed_weights_.push_back(std::make_unique<PackedWeight>(info, first));
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return reporting(what_, [&] {
      const ContextScope scope(context);
      const Ort::KernelContext ctx(context);
      const Tensor x = read(ctx.GetInput(0));
      const int64_t batch = linear_batch(x, in_features_);
      const int64_t layers = static_cast<int64_t>(checks_.size());
      std::vector<Weight> weights;
      std::vector<float*> outputs;
      for (int64_t i = 0; i < layers; ++i) {
        const size_t first = 1 + i * kInputsPerLayer;
        weights.push_back(read_layer(ctx, first, in_features_, *checks_[i], "layer " + std::to_string(i)));
        std::vector<int64_t> out_dims = x.dims;
        out_dims.back() = weights.back().rows();
        outputs.push_back(ctx.GetOutput(i, out_dims).GetTensorMutableData<float>());
      }
      if (batch == 0) return;
      const auto* xp = static_cast<const float*>(x.data);
      const cpu::ParallelFor pf = ort_parallel_for();
      Scratch scratch(ctx);
      float* panels = panel_scratch(scratch, batch, in_features_);
      std::vector<cpu::CsrView<float>> views;
      for (int64_t i = 0; i < layers; ++i) {
        const Weight& w = weights[i];
        views.push_back({w.crow, w.col, w.values, w.row_blocks, in_features_});
        if (panels) views.back().packed = (*packed_weights_[i])(views.back());
      }
      std::vector<cpu::Epilogue> epilogues;
      for (const Weight& w : weights) epilogues.push_back({w.bias, false, nullptr});
      cpu::csr_linears(views.data(), epilogues.data(), outputs.data(), layers, xp, panels, batch, pf);
    });
  }

 private:
  const std::string what_;
  const int64_t in_features_;
  std::vector<std::unique_ptr<IndexCheck>> checks_;
  std::vector<std::unique_ptr<PackedWeight>> packed_weights_;
};

// --- CsrMlp ---------------------------------------------------------------------------------------

// Inputs X, the first layer's (crow_indices, col_indices, values, bias), the second's, and an
// optional residual: Y = W2 act(W1 X + b1) + b2 + residual, act the first layer's relu or gelu
// attribute (or none). Not a file format op: sparse_rt.onnx.session makes it of a CsrLinear whose
// output only a second CsrLinear reads (fold.fuse_feed_forward). From kTiledMinBatch rows on, one
// panel of X at a time goes through both layers, the first layer's output for it (hidden x 64
// floats) staying in cache as the second's operand (csr_mlp_tiled); below, the layers run in turn.
enum MlpInput : size_t { kMlpX, kFirstLayer, kSecondLayer = kFirstLayer + kInputsPerLayer,
                         kMlpResidual = kSecondLayer + kInputsPerLayer };

class CsrMlpKernel {
 public:
  explicit CsrMlpKernel(const OrtKernelInfo* info)
      : what_(node_description(info, "CsrMlp")), in_features_(int_attribute(info, "in_features")),
        relu_(optional_int_attribute(info, "relu", 0) != 0), gelu_(optional_int_attribute(info, "gelu", 0) != 0),
        first_check_(info, kFirstLayer, kFirstLayer + 1), second_check_(info, kSecondLayer, kSecondLayer + 1),
        first_packed_(info, kFirstLayer), second_packed_(info, kSecondLayer) {
    if (in_features_ < 0) invalid("in_features must be >= 0, got ", in_features_);
    if (relu_ && gelu_) invalid("relu and gelu cannot both be set");
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return reporting(what_, [&] {
      const ContextScope scope(context);
      const Ort::KernelContext ctx(context);
      const Tensor x = read(ctx.GetInput(kMlpX));
      const int64_t batch = linear_batch(x, in_features_);
      const Weight w1 = read_layer(ctx, kFirstLayer, in_features_, first_check_, "first layer");
      const Weight w2 = read_layer(ctx, kSecondLayer, w1.rows(), second_check_, "second layer");
      std::vector<int64_t> out_dims = x.dims;
      out_dims.back() = w2.rows();
      const Ort::ConstValue residual_value = ctx.GetInput(kMlpResidual);
      const Tensor residual = residual_value ? read(residual_value) : Tensor{};
      check_residual(residual.data ? &residual : nullptr, out_dims);
      float* y = ctx.GetOutput(0, out_dims).GetTensorMutableData<float>();
      if (batch == 0 || w2.rows() == 0) return;
      const cpu::Epilogue ep1{w1.bias, relu_, nullptr, gelu_ ? cpu::Gelu::kExact : cpu::Gelu::kNone};
      const cpu::Epilogue ep2{w2.bias, false, static_cast<const float*>(residual.data)};
      cpu::CsrView<float> view1{w1.crow, w1.col, w1.values, w1.rows(), in_features_};
      cpu::CsrView<float> view2{w2.crow, w2.col, w2.values, w2.rows(), w1.rows()};
      const auto* xp = static_cast<const float*>(x.data);
      const cpu::ParallelFor pf = ort_parallel_for();
      Scratch scratch(ctx);
      if (float* panels = panel_scratch(scratch, batch, in_features_)) {
        float* hidden = scratch.get<float>(cpu::mlp_hidden_floats(batch, in_features_, w1.rows(), pf.num_threads));
        view1.packed = first_packed_(view1);
        view2.packed = second_packed_(view2);
        cpu::csr_mlp_tiled(view1, ep1, view2, ep2, xp, panels, batch, hidden, y, pf);
        return;
      }
      float* hidden = scratch.get<float>(batch * w1.rows());
      cpu::parallel_over_rows(pf, w1.crow, w1.rows(), 1, w1.nnz * batch, [&](int64_t, int64_t r0, int64_t r1) {
        cpu::csr_linear_gather(view1, xp, batch, hidden, ep1, r0, r1);
      });
      cpu::parallel_over_rows(pf, w2.crow, w2.rows(), 1, w2.nnz * batch, [&](int64_t, int64_t r0, int64_t r1) {
        cpu::csr_linear_gather(view2, hidden, batch, y, ep2, r0, r1);
      });
    });
  }

 private:
  const std::string what_;
  const int64_t in_features_;
  const bool relu_, gelu_;  // the first layer's activation
  IndexCheck first_check_, second_check_;
  PackedWeight first_packed_, second_packed_;
};

// --- CsrConv2d ----------------------------------------------------------------------------------

// A convolution layer of a node: runs it on a complete shape, keeping between calls what does not
// change where its weight is the node's constant initializers (the packing of its nonzeros, its tap
// offsets for the last input size).
class ConvLayer {
 public:
  ConvLayer(const OrtKernelInfo* info, size_t crow_input) : packed_weight_(info, crow_input) {}

  // y = conv(x) with ep: s from with_output_size, w's indices checked (over `index_cols` columns),
  // `constant` whether w is the node's constant initializers.
  void run(const Ort::KernelContext& ctx, const Conv2dShape& s, const Weight& w, int64_t index_cols, bool constant,
           const float* x, float* y, const cpu::Epilogue& ep) const {
    cpu::CsrView<float> view{w.crow, w.col, w.values, s.out_channels, index_cols};
    // Made at the first call and kept; only the panels layout reads it, of one group (PackedConvLayout::panels).
    const cpu::PackedNonzeros* const packing = s.groups == 1 ? packed_weight_(view) : nullptr;
    cpu::PackedConvLayout layout = cpu::packed_conv_layout(s, w.nnz, packing != nullptr);
    Scratch scratch(ctx);
    cpu::ConvScratch buffers{};
    std::shared_ptr<const KeptOffsets> kept;  // held until the call ends
    const cpu::ParallelFor pf = ort_parallel_for();
    try {
      const cpu::ConvScratchSizes sizes = cpu::conv_scratch_sizes(s, layout, w.nnz, pf.num_threads);
      const int32_t* offsets = nullptr;
      if (sizes.offsets > 0 && constant) {
        kept = kept_tap_offsets(s, layout, w);
        offsets = kept->offsets.data();
      } else if (sizes.offsets > 0) {
        int32_t* fresh = scratch.get<int32_t>(sizes.offsets);
        cpu::conv_tap_offsets(s, layout, w.crow, w.col, fresh, pf);
        offsets = fresh;
      }
      buffers = {scratch.get<float>(sizes.packed), offsets, scratch.get<float>(sizes.panels)};
    } catch (const std::exception&) {
      layout.gather = true;  // the packed path's scratch does not fit: the gather path needs none
      buffers = {};
    }
    if (layout.panels) view.packed = packing;
    cpu::csr_conv2d(s, layout, view, x, y, ep, buffers, pf);
  }

 private:
  struct KeptOffsets {
    int64_t height, width;
    std::vector<int32_t> offsets;
  };

  // The tap offsets of the node's constant weight for the input size of the last call, computed
  // once per size (they depend on the pattern, the geometry and the input's height and width
  // only): a pass over the nonzeros, about 5% of ResNet-50's convolution time at batch 1, that
  // every call made.
  std::shared_ptr<const KeptOffsets> kept_tap_offsets(const Conv2dShape& s, const cpu::PackedConvLayout& layout,
                                                      const Weight& w) const {
    const std::lock_guard<std::mutex> lock(kept_mutex_);
    if (!kept_ || kept_->height != s.height || kept_->width != s.width) {
      auto fresh = std::make_shared<KeptOffsets>(KeptOffsets{s.height, s.width, std::vector<int32_t>(w.nnz)});
      cpu::conv_tap_offsets(s, layout, w.crow, w.col, fresh->offsets.data(), ort_parallel_for());
      kept_ = std::move(fresh);
    }
    return kept_;
  }

  mutable std::mutex kept_mutex_;
  mutable std::shared_ptr<const KeptOffsets> kept_;
  mutable PackedWeight packed_weight_;
};

// The output of batch x channels x height x width floats: refused where its bytes overflow int64.
void check_output_bytes(const std::vector<int64_t>& dims, const char* what) {
  CheckedInt bytes(int64_t(sizeof(float)));
  for (int64_t d : dims) bytes = bytes * d;
  if (bytes.overflowed()) invalid(what, " ", dims_text(dims), " would hold more bytes than int64 counts");
}

class CsrConv2dKernel final : public OpKernel {
 public:
  explicit CsrConv2dKernel(const OrtKernelInfo* info) : OpKernel(info, "CsrConv2d", false), layer_(info, kCrow) {
    const char* names[] = {"in_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h",
                           "pad_w",       "dilation_h", "dilation_w", "group", "relu"};
    int64_t a[11];
    for (int i = 0; i < 11; ++i) a[i] = int_attribute(info, names[i]);
    geometry_ = {0, a[0], 0, 0, 0, 0, 0, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9]};
    relu_ = a[10] != 0;
    constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
    const auto in_range = [&](int64_t v, int64_t low) { return v >= low && v <= kMax; };
    const Conv2dShape& g = geometry_;
    if (!in_range(g.in_channels, 1) || !in_range(g.groups, 1) || g.in_channels % g.groups != 0) {
      invalid("in_channels=", g.in_channels, " must be >= 1 and a multiple of group=", g.groups);
    }
    if (!in_range(g.kh, 1) || !in_range(g.kw, 1) || !in_range(g.stride_h, 1) || !in_range(g.stride_w, 1) ||
        !in_range(g.dil_h, 1) || !in_range(g.dil_w, 1) || !in_range(g.pad_h, 0) || !in_range(g.pad_w, 0)) {
      invalid("need kernel, stride, dilation >= 1 and padding >= 0, each below 2^31");
    }
    const CheckedInt cols = CheckedInt(g.in_channels / g.groups) * g.kh * g.kw;
    if (cols.overflowed()) invalid("in_channels/group*kernel_h*kernel_w overflows int64");
    index_cols_ = cols.value();
  }

 protected:
  int64_t index_columns(const Tensor& x, const Weight& w) const override {
    if (x.dims.size() != 4) invalid("X must be 4-D [N, C, H, W], got shape ", dims_text(x.dims));
    if (x.dims[1] != geometry_.in_channels) {
      invalid("X has shape ", dims_text(x.dims), " but in_channels=", geometry_.in_channels);
    }
    if (w.rows() % geometry_.groups != 0) invalid("group=", geometry_.groups, " does not divide the ", w.rows(), " output channels");
    return index_cols_;
  }

  void compute(const Ort::KernelContext& ctx, const Tensor& x, const Weight& w,
               const Tensor* residual) const override {
    Conv2dShape s = geometry_;
    s.batch = x.dims[0];
    s.height = x.dims[2];
    s.width = x.dims[3];
    s.out_channels = w.rows();
    for (int64_t size : {s.height, s.width}) {
      if ((CheckedInt(size) + CheckedInt(2) * std::max(s.pad_h, s.pad_w)).overflowed()) invalid("X's size overflows with the padding");
    }
    s = with_output_size(s);
    if (s.out_h < 1 || s.out_w < 1) {
      invalid("X has shape ", dims_text(x.dims), ", smaller than the dilated kernel ", s.kh, "x", s.kw,
              ": the output would be ", s.out_h, "x", s.out_w);
    }
    const std::vector<int64_t> out_dims{s.batch, s.out_channels, s.out_h, s.out_w};
    check_output_bytes(out_dims, "the output");
    const auto [y, ep] = output(ctx, out_dims, w, relu_, residual);
    if (s.batch == 0 || s.out_channels == 0) return;
    layer_.run(ctx, s, w, index_cols_, constant_weight(w), static_cast<const float*>(x.data), y, ep);
  }

 private:
  ConvLayer layer_;
  Conv2dShape geometry_;
  bool relu_;
  int64_t index_cols_;
};

// --- CsrBottleneck --------------------------------------------------------------------------------

// Inputs X [N, in_channels, H, W], a ResNet bottleneck block's three layers' (crow_indices,
// col_indices, values, bias): a 1x1 convolution, a 3x3 one with stride 1 and padding 1, a 1x1 one,
// each of one group, and an optional residual shaped like Y, or instead an optional shortcut layer's
// four (a 1x1 convolution of one group of X to the last layer's channels, no ReLU: its output is the
// residual); attributes in_channels and each layer's relu1 / relu2 / relu3 (relu3 after the sum).
// Not a file format op: sparse_rt.onnx.session makes it of three CsrConv2d nodes in a row, each output
// read by the next alone (fold.fuse_bottleneck_blocks), and of a pointwise CsrConv2d of X whose output
// only the block adds (fold.fuse_block_shortcuts). Where the block's activations leave the cache
// (cpu::bottleneck_band_rows) it runs a band of rows of one image at a time through the layers, the
// inner activations staying in L2 (as the PyTorch op csr_bottleneck_block does); elsewhere the layers
// one after the other, as CsrConv2d nodes.
enum BlockInput : size_t { kBlockX, kBlockFirst, kBlockSecond = kBlockFirst + kInputsPerLayer,
                           kBlockLast = kBlockSecond + kInputsPerLayer, kBlockResidual = kBlockLast + kInputsPerLayer,
                           kBlockShortcut };
constexpr std::array<size_t, 4> kBlockLayerInputs{kBlockFirst, kBlockSecond, kBlockLast, kBlockShortcut};
constexpr std::array<const char*, 4> kBlockLayerNames{"first layer", "second layer", "last layer", "shortcut layer"};

class CsrBottleneckKernel {
 public:
  explicit CsrBottleneckKernel(const OrtKernelInfo* info)
      : what_(node_description(info, "CsrBottleneck")), in_channels_(int_attribute(info, "in_channels")),
        relu_{int_attribute(info, "relu1") != 0, int_attribute(info, "relu2") != 0, int_attribute(info, "relu3") != 0},
        shortcut_(Ort::ConstKernelInfo(info).GetInputCount() > kBlockShortcut),
        checks_{IndexCheck(info, kBlockFirst, kBlockFirst + 1), IndexCheck(info, kBlockSecond, kBlockSecond + 1),
                IndexCheck(info, kBlockLast, kBlockLast + 1),
                IndexCheck(info, shortcut_first(), shortcut_first() + 1)},
        layers_{ConvLayer(info, kBlockFirst), ConvLayer(info, kBlockSecond), ConvLayer(info, kBlockLast),
                ConvLayer(info, shortcut_first())} {
    if (in_channels_ < 1 || in_channels_ > std::numeric_limits<int32_t>::max()) {
      invalid("in_channels must be >= 1 and below 2^31, got ", in_channels_);
    }
    if (shortcut_ && Ort::ConstKernelInfo(info).GetInputCount() != kBlockShortcut + kInputsPerLayer) {
      invalid("a shortcut layer takes four inputs (crow_indices, col_indices, values, bias), got ",
              Ort::ConstKernelInfo(info).GetInputCount() - kBlockShortcut);
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return reporting(what_, [&] {
      const ContextScope scope(context);
      const Ort::KernelContext ctx(context);
      const Tensor x = read(ctx.GetInput(kBlockX));
      if (x.dims.size() != 4) invalid("X must be 4-D [N, C, H, W], got shape ", dims_text(x.dims));
      if (x.dims[1] != in_channels_) invalid("X has shape ", dims_text(x.dims), " but in_channels=", in_channels_);
      if (x.dims[2] < 1 || x.dims[3] < 1) invalid("X has shape ", dims_text(x.dims), ", with no pixels");
      // The columns each layer's indices address: its input channels times its taps.
      std::array<Weight, 4> w{};
      int64_t channels = in_channels_;
      for (size_t i = 0; i < 3; ++i) {
        const CheckedInt cols = CheckedInt(channels) * (i == 1 ? 9 : 1);
        if (cols.overflowed()) invalid(kBlockLayerNames[i], ": ", channels, " input channels x 9 taps overflow int64");
        w[i] = read_layer(ctx, kBlockLayerInputs[i], cols.value(), checks_[i], kBlockLayerNames[i]);
        channels = w[i].rows();
        if (i < 2 && channels == 0) invalid(kBlockLayerNames[i], " has no output channels: the next layer needs one");
      }
      if (shortcut_) {
        w[3] = read_layer(ctx, kBlockShortcut, in_channels_, checks_[3], kBlockLayerNames[3]);
        if (w[3].rows() != w[2].rows()) {
          invalid(kBlockLayerNames[3], " has ", w[3].rows(), " output channels but the last layer has ", w[2].rows());
        }
      }
      const cpu::BottleneckShape b{x.dims[0], in_channels_, x.dims[2], x.dims[3], w[0].rows(), w[1].rows(),
                                   w[2].rows()};
      const std::vector<int64_t> out_dims{b.batch, b.out_channels, b.height, b.width};
      for (int64_t inner : {b.mid1, b.mid2}) check_output_bytes({b.batch, inner, b.height, b.width}, "an inner activation");
      check_output_bytes(out_dims, "the output");
      const Ort::ConstValue residual_value = ctx.GetInput(kBlockResidual);
      const Tensor residual = residual_value ? read(residual_value) : Tensor{};
      check_residual(residual.data ? &residual : nullptr, out_dims);
      if (shortcut_ && residual.data) invalid("a residual and a shortcut layer were both given");
      float* y = ctx.GetOutput(0, out_dims).GetTensorMutableData<float>();
      if (b.batch == 0 || b.out_channels == 0) return;
      // With a shortcut the last ReLU follows the shortcut's sum.
      std::array<cpu::Epilogue, 4> ep{};
      for (size_t i = 0; i < 3; ++i) ep[i] = {w[i].bias, relu_[i]};
      ep[2].residual = static_cast<const float*>(residual.data);
      ep[3] = {w[3].bias, false};
      const auto* xp = static_cast<const float*>(x.data);
      const cpu::ParallelFor pf = ort_parallel_for();
      Scratch scratch(ctx);
      const int64_t rows = cpu::bottleneck_band_rows(b, w[1].nnz, pf.num_threads);
      if (rows > 0) {
        const cpu::BottleneckScratchSizes sizes = cpu::bottleneck_scratch(b, rows, w[1].nnz, pf.num_threads, shortcut_);
        const auto view = [&](size_t i, int64_t cols) {
          return cpu::CsrView<float>{w[i].crow, w[i].col, w[i].values, w[i].rows(), cols};
        };
        const cpu::CsrView<float> added = view(3, b.in_channels);
        cpu::bottleneck_block(b, rows, view(0, b.in_channels), ep[0], view(1, b.mid1 * 9), ep[1], view(2, b.mid2),
                              ep[2], shortcut_ ? &added : nullptr, ep[3], xp, y, scratch.get<float>(sizes.floats),
                              scratch.get<int32_t>(sizes.offsets), pf);
        return;
      }
      // One after the other: 1x1, 3x3 (stride 1, padding 1), 1x1.
      const auto shape = [&](int64_t in, int64_t out, int64_t k) {
        return Conv2dShape{b.batch, in, b.height, b.width, out, b.height, b.width, k, k, 1, 1, k / 2, k / 2, 1, 1, 1};
      };
      float* y1 = scratch.get<float>(b.batch * b.mid1 * b.height * b.width);
      float* y2 = scratch.get<float>(b.batch * b.mid2 * b.height * b.width);
      layers_[0].run(ctx, shape(b.in_channels, b.mid1, 1), w[0], b.in_channels, checks_[0].constant(w[0]), xp, y1, ep[0]);
      layers_[1].run(ctx, shape(b.mid1, b.mid2, 3), w[1], b.mid1 * 9, checks_[1].constant(w[1]), y1, y2, ep[1]);
      if (!shortcut_) {
        layers_[2].run(ctx, shape(b.mid2, b.out_channels, 1), w[2], b.mid2, checks_[2].constant(w[2]), y2, y, ep[2]);
        return;
      }
      // The shortcut takes the sum after the last layer (the same values: a sum of two is commutative).
      float* y3 = scratch.get<float>(b.batch * b.out_channels * b.height * b.width);
      layers_[2].run(ctx, shape(b.mid2, b.out_channels, 1), w[2], b.mid2, checks_[2].constant(w[2]), y2, y3,
                     cpu::Epilogue{w[2].bias, false});
      layers_[3].run(ctx, shape(b.in_channels, b.out_channels, 1), w[3], b.in_channels, checks_[3].constant(w[3]), xp,
                     y, cpu::Epilogue{w[3].bias, relu_[2], y3});
    });
  }

 private:
  const std::string what_;
  const int64_t in_channels_;
  const std::array<bool, 3> relu_;
  const bool shortcut_;  // the node has a shortcut layer's inputs
  // The shortcut layer's first input; without one the fourth check and layer (on the first layer's) go unused.
  size_t shortcut_first() const { return shortcut_ ? kBlockShortcut : kBlockFirst; }
  std::array<IndexCheck, 4> checks_;
  const std::array<ConvLayer, 4> layers_;
};

// --- ScaledDotProductAttention ------------------------------------------------------------------

// Inputs Q [B, Sq, H*D], K and V [B, Sk, H*D], attributes num_heads = H and scale: each head's
// softmax(scale Q K^T) V into Y [B, Sq, H*D] (cpu::scaled_dot_product_attention, reading the heads in
// place: no transposed copies). Not a file format op: sparse_rt.onnx.session makes it of attention
// written out in standard ops (fold.fold_attention), in the place of onnxruntime's MultiHeadAttention,
// which ran slower with the intra-op threads not spinning, as sparse_rt.onnx.session runs them
// (BERT-base's heads, 2 threads: 0.36 against 0.24 ms at batch 1, 2.24 against 2.02 at batch 8).
class AttentionKernel {
 public:
  explicit AttentionKernel(const OrtKernelInfo* info)
      : what_(node_description(info, "ScaledDotProductAttention")), heads_(int_attribute(info, "num_heads")),
        scale_(Ort::ConstKernelInfo(info).GetAttribute<float>("scale")) {
    if (heads_ < 1) invalid("num_heads must be >= 1, got ", heads_);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return reporting(what_, [&] {
      const ContextScope scope(context);
      const Ort::KernelContext ctx(context);
      const Tensor q = read(ctx.GetInput(0)), k = read(ctx.GetInput(1)), v = read(ctx.GetInput(2));
      const char* names[] = {"Q", "K", "V"};
      const Tensor* inputs[] = {&q, &k, &v};
      for (int i = 0; i < 3; ++i) {
        const std::vector<int64_t>& d = inputs[i]->dims;
        if (d.size() != 3) invalid(names[i], " must be 3-D [batch, tokens, heads * head_dim], got ", dims_text(d));
        if (d[0] != q.dims[0] || d[2] != q.dims[2]) {
          invalid(names[i], " has shape ", dims_text(d), " but Q has ", dims_text(q.dims),
                  ": batch and hidden size must match");
        }
      }
      if (k.dims[1] != v.dims[1]) invalid("K has shape ", dims_text(k.dims), " but V has ", dims_text(v.dims));
      const int64_t batch = q.dims[0], queries = q.dims[1], keys = k.dims[1], hidden = q.dims[2];
      if (hidden % heads_ != 0) invalid("the hidden size ", hidden, " is not a multiple of num_heads=", heads_);
      float* y = ctx.GetOutput(0, q.dims).GetTensorMutableData<float>();
      if (batch == 0 || queries == 0 || hidden == 0) return;
      if (keys == 0) invalid("K and V have no tokens: a softmax over no keys is undefined");
      const int64_t dim = hidden / heads_;
      const auto heads = [&](auto* data, int64_t tokens) {
        return cpu::HeadsView<std::remove_pointer_t<decltype(data)>>{data, tokens * hidden, dim, hidden};
      };
      cpu::scaled_dot_product_attention({batch, heads_, queries, keys, dim},
                                        heads(static_cast<const float*>(q.data), queries),
                                        heads(static_cast<const float*>(k.data), keys),
                                        heads(static_cast<const float*>(v.data), keys), scale_, heads(y, queries),
                                        ort_parallel_for());
    });
  }

 private:
  const std::string what_;
  const int64_t heads_;
  const float scale_;
};

// --- the ops --------------------------------------------------------------------------------------

// What every op declares the same way: its name, and how a node's kernel is created (a bad
// attribute is reported as INVALID_ARGUMENT naming the node).
template <typename Op, typename Kernel>
struct OpBase : Ort::CustomOpBase<Op, Kernel, /*WithStatus=*/true> {
  explicit OpBase(const char* name) : name_(name) {}

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return reporting(node_description(info, name_), [&] { *kernel = new Kernel(info); });
  }
  const char* GetName() const { return name_; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

 private:
  const char* name_;
};

// The file format's ops: (X, crow_indices, col_indices, values, bias[, residual]) -> Y.
template <typename Kernel>
struct SparseOp : OpBase<SparseOp<Kernel>, Kernel> {
  using OpBase<SparseOp<Kernel>, Kernel>::OpBase;
  size_t GetInputTypeCount() const { return kInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == kCrow || index == kCol ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == kResidual ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
};

// CsrLinears: X, then a variadic list of the layers' inputs (int32 indices and float values
// alternate, so of mixed types) -> one output per layer. The kernel checks their count and types.
struct CsrLinearsOp : OpBase<CsrLinearsOp, CsrLinearsKernel> {
  CsrLinearsOp() : OpBase("CsrLinears") {}
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_VARIADIC;
  }
  int GetVariadicInputMinArity() const { return static_cast<int>(kInputsPerLayer); }
  bool GetVariadicInputHomogeneity() const { return false; }
  size_t GetOutputTypeCount() const { return 1; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const { return INPUT_OUTPUT_VARIADIC; }
};

// Ops of consecutive layers (CsrMlp: two, CsrBottleneck: three): X, each layer's (crow_indices,
// col_indices, values, bias), an optional residual, then kOptionalLayers optional layers' four -> Y.
template <typename Kernel, size_t kLayers, size_t kOptionalLayers = 0>
struct LayersOp : OpBase<LayersOp<Kernel, kLayers, kOptionalLayers>, Kernel> {
  static constexpr size_t kResidualInput = 1 + kLayers * kInputsPerLayer;
  using OpBase<LayersOp<Kernel, kLayers, kOptionalLayers>, Kernel>::OpBase;
  size_t GetInputTypeCount() const { return kResidualInput + 1 + kOptionalLayers * kInputsPerLayer; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    // A layer's four inputs start after X, and again after the residual.
    const size_t layer_input = index < kResidualInput ? index - 1 : index - kResidualInput - 1;
    const bool indices = index != 0 && index != kResidualInput && layer_input % kInputsPerLayer < 2;
    return indices ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= kResidualInput ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
};
static_assert(LayersOp<CsrMlpKernel, 2>::kResidualInput == kMlpResidual);
static_assert(LayersOp<CsrBottleneckKernel, 3, 1>::kResidualInput + 1 == kBlockShortcut);

// ScaledDotProductAttention: Q, K, V -> Y, all fp32.
struct AttentionOp : OpBase<AttentionOp, AttentionKernel> {
  AttentionOp() : OpBase("ScaledDotProductAttention") {}
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
};

const SparseOp<CsrLinearKernel> csr_linear_op("CsrLinear");
const SparseOp<BsrLinearKernel> bsr_linear_op("BsrLinear");
const SparseOp<CsrConv2dKernel> csr_conv2d_op("CsrConv2d");
const CsrLinearsOp csr_linears_op;
const LayersOp<CsrMlpKernel, 2> csr_mlp_op("CsrMlp");
const LayersOp<CsrBottleneckKernel, 3, 1> csr_bottleneck_op("CsrBottleneck");
const AttentionOp attention_op;

}  // namespace
}  // namespace sparse_rt::onnxruntime

// onnxruntime's entry point into a custom-op library: adds the domain "sparse_rt" to `options`.
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace sparse_rt::onnxruntime;
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const std::string message = std::string("sparse_rt's onnxruntime kernels need onnxruntime's C API version ") +
                                std::to_string(ORT_API_VERSION) + " or later; this onnxruntime is " +
                                api_base->GetVersionString();
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, message.c_str());
  }
  Ort::InitApi(api);
  // A domain must outlive the sessions that use it: one per registration, kept for the process.
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;
  try {
    Ort::CustomOpDomain domain("sparse_rt");
    domain.Add(&csr_linear_op);
    domain.Add(&bsr_linear_op);
    domain.Add(&csr_conv2d_op);
    domain.Add(&csr_linears_op);
    domain.Add(&csr_mlp_op);
    domain.Add(&csr_bottleneck_op);
    domain.Add(&attention_op);
    Ort::UnownedSessionOptions(options).Add(domain);
    const std::lock_guard<std::mutex> lock(mutex);
    domains.push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  }
  return nullptr;
}
