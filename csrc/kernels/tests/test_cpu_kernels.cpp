// Tests of the torch-free CPU kernels against dense references accumulated in double: odd shapes,
// empty and full rows, nnz = 0, every value type; and of the CUDA kernels' host-compilable index
// arithmetic. Built by CMake (also under ASan + UBSan) and run by ctest; no torch involved.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/checked_int.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/bsr_linear.h"
#include "kernels/cpu/csr_conv2d.h"
#include "kernels/cpu/csr_linear.h"
#include "kernels/cpu/csr_spmm.h"
#include "kernels/cpu/index_checks.h"
#include "kernels/cpu/layer_norm.h"
#include "kernels/cpu/max_pool.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/scalar_types.h"
#include "kernels/cpu/vectors.h"
#include "kernels/cuda/row_extent.h"
#include "kernels/cuda/vector_span.h"

using sparse_rt::CheckedInt;
using sparse_rt::Conv2dShape;
using sparse_rt::with_output_size;
using namespace sparse_rt::cpu;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

// Reference decoders written from the IEEE definitions, independent of the kernels' bit tricks.
double half_reference(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(mantissa, -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(1024 + mantissa, exponent - 25);
  }
  return sign ? -magnitude : magnitude;
}

void test_16bit_conversions() {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const double expected = half_reference(uint16_t(bits));
    const float actual = to_float(half_t{uint16_t(bits)});
    const bool same = std::isnan(expected) ? std::isnan(actual) : double(actual) == expected;
    expect(same, "half bits " + std::to_string(bits));
    uint32_t f32 = bits << 16;
    float bf;
    std::memcpy(&bf, &f32, 4);
    const float got = to_float(bfloat16_t{uint16_t(bits)});
    expect(std::isnan(bf) ? std::isnan(got) : got == bf, "bfloat16 bits " + std::to_string(bits));
  }
}

template <typename V>
V encode(float v);
template <>
float encode<float>(float v) { return v; }
template <>
bfloat16_t encode<bfloat16_t>(float v) {  // values in the tests are exact in bf16 (see below)
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return {uint16_t(u >> 16)};
}
template <>
half_t encode<half_t>(float v) {  // small integers / 8: exact in half
  // Searched once per value (the tests use a few dozen distinct ones, millions of times).
  static std::map<float, uint16_t> found;
  if (const auto it = found.find(v); it != found.end()) return {it->second};
  for (uint32_t b = 0; b < 65536; ++b) {
    if (half_reference(uint16_t(b)) == double(v)) return {found[v] = uint16_t(b)};
  }
  std::abort();
}

// Random values k/8 with |k| <= 16: exact in every value type, so results can be compared tightly.
float exact_value(std::mt19937& g) { return float(int(g() % 33) - 16) / 8.f; }

struct RandomCsr {
  std::vector<int32_t> crow{0}, col;
  std::vector<float> val;
};

RandomCsr random_csr(int64_t rows, int64_t cols, double density, std::mt19937& g) {
  RandomCsr m;
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t r = 0; r < rows; ++r) {
    const bool empty = r % 5 == 1, full = r % 7 == 3;
    for (int64_t c = 0; c < cols; ++c) {
      if (!empty && (full || u(g) < density)) {
        m.col.push_back(int32_t(c));
        m.val.push_back(exact_value(g));
      }
    }
    m.crow.push_back(int32_t(m.col.size()));
  }
  return m;
}

template <typename V>
std::vector<V> encode_all(const std::vector<float>& v) {
  std::vector<V> out;
  for (float f : v) out.push_back(encode<V>(f));
  return out;
}

bool close(double a, double b) { return std::fabs(a - b) <= 1e-4 * std::max(1.0, std::fabs(b)); }

double gelu_reference(Gelu form, double x) {
  if (form == Gelu::kTanh) return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  return form == Gelu::kExact ? 0.5 * x * std::erfc(-x / std::sqrt(2.0)) : x;
}

// The epilogue's GELUs (activation.h), through Epilogue::activate on a float and on each vector
// width, against double: error within 3e-7 * |x| plus a few float roundings of the result, from the
// far left tail (where GELU underflows) to the identity-like right.
void test_gelu(Gelu form) {
  const char* name = form == Gelu::kExact ? "gelu" : "gelu_tanh";
  const Epilogue ep{nullptr, false, nullptr, form};
  double worst = 0;
  for (int i = -20 * 256; i <= 20 * 256; ++i) {
    const float x = float(i) / 256;
    const double ref = gelu_reference(form, x);
    const vec8 v8 = ep.activate(splat<vec8>(x));
    const vec16 v16 = ep.activate(splat<vec16>(x));
    for (const float got : {ep.activate(x), v8[3], v16[11]}) {
      const double error = std::fabs(got - ref), bound = 3e-7 * std::fabs(x) + 4 * 6e-8 * std::fabs(ref) + 1e-30;
      worst = std::max(worst, error / bound);
      if (error > bound) {
        expect(false, std::string(name) + "(" + std::to_string(x) + ") = " + std::to_string(got) + ", reference " +
                          std::to_string(ref));
        return;
      }
    }
  }
  std::printf("%s: worst error %.2f of its bound\n", name, worst);
}

// Both GELUs far beyond test_gelu's grid, as torch computes them: the identity on the right, zero
// on the left (the exact form's clamp, the tanh form's e^-2|u| below float's range), NaN at -inf.
void test_gelu_extremes(Gelu form) {
  const std::string name = form == Gelu::kExact ? "gelu" : "gelu_tanh";
  const Epilogue ep{nullptr, false, nullptr, form};
  const float inf = std::numeric_limits<float>::infinity();
  for (const auto& [x, want] : {std::pair{1e30f, 1e30f}, std::pair{inf, inf}, std::pair{-1e30f, 0.f}, std::pair{-60.f, 0.f}}) {
    for (const float got : {ep.activate(x), ep.activate(splat<vec8>(x))[5], ep.activate(splat<vec16>(x))[13]}) {
      expect(got == want, name + "(" + std::to_string(x) + ") = " + std::to_string(got));
    }
  }
  expect(std::isnan(ep.activate(-inf)) && std::isnan(ep.activate(splat<vec8>(-inf))[0]), name + "(-inf) is not NaN");
}

// The tests' parallel-for: three chunks (grain ignored, so that small shapes split too), run last
// first, so that results cannot depend on the order threads would run them in.
void three_chunks_backwards(int64_t begin, int64_t end, int64_t, RangeFn body) {
  if (begin >= end) return;
  const int64_t step = (end - begin + 2) / 3;
  for (int64_t b = begin + (end - begin - 1) / step * step; b >= begin; b -= step) {
    body(b, std::min(end, b + step));
  }
}
const ParallelFor kThreeChunks{three_chunks_backwards, 3};

// pack_nonzeros(w), after checking that find_packed_error accepts it and reports what is wrong
// with copies of it altered: a value or a column changed (a stale packing), a segment moved past
// its row's nonzeros, a shortened blob, another weight's shape.
template <typename V>
std::vector<int32_t> checked_packing(const CsrView<V>& w) {
  std::vector<int32_t> blob = pack_nonzeros(w);
  if (blob.empty()) return blob;
  const auto error = [&](const std::vector<int32_t>& b, int64_t size, const CsrView<V>& view,
                         bool compare_entries = true) {
    return find_packed_error(view, b.data(), size, kThreeChunks, compare_entries);
  };
  const auto fails_with = [&](const std::string& what, const std::vector<int32_t>& b, const std::string& words,
                              int64_t size = -1, const CsrView<V>* view = nullptr) {
    const std::string e = error(b, size < 0 ? int64_t(b.size()) : size, view ? *view : w);
    expect(e.find(words) != std::string::npos, "find_packed_error on " + what + ": got '" + e + "'");
  };
  expect(error(blob, int64_t(blob.size()), w).empty(), "find_packed_error accepts pack_nonzeros' blob");
  const PackedNonzeros p = packed_nonzeros(blob.data());
  const int64_t last_entry = int64_t(blob.size()) - 2;  // the last entry: column, then value bits
  const int64_t entries = (blob.size() - (reinterpret_cast<const int32_t*>(p.entries) - blob.data())) / 2;
  std::vector<int32_t> altered = blob;
  // Entries at each place of the comparison's eight-entry steps and of a segment's last few (masked).
  for (const int64_t k : {int64_t(0), int64_t(1), int64_t(7), int64_t(8), entries / 2, entries - 2, entries - 1}) {
    if (k < 0 || k >= entries) continue;
    altered = blob;
    altered[last_entry - 2 * (entries - 1 - k) + 1] ^= 1;
    fails_with("a changed value (entry " + std::to_string(k) + ")", altered, "changed after it was packed");
  }
  expect(packed_columns_below(blob.data(), w.cols, kThreeChunks), "packed_columns_below on pack_nonzeros' blob");
  altered = blob;
  altered[last_entry] = int32_t(w.cols);
  fails_with("a column out of range", altered, "changed after it was packed");
  expect(!packed_columns_below(altered.data(), w.cols, kThreeChunks), "packed_columns_below on a column out of range");
  altered = blob;
  altered[last_entry - 2 * (entries / 2)] = -1;
  fails_with("a negative column", altered, "changed after it was packed");
  expect(!packed_columns_below(altered.data(), w.cols, kThreeChunks), "packed_columns_below on a negative column");
  // Trusted (entries not compared), both pass; the SpMM clamps the column (test_clamped_packing).
  expect(error(altered, int64_t(altered.size()), w, false).empty(),
         "find_packed_error without comparing entries accepts a changed column");
  altered = blob;
  const int64_t segment = (reinterpret_cast<const int32_t*>(p.segments) - blob.data());
  altered[segment + 1] = 1 << 30;
  fails_with("a segment longer than its row", altered, "outside its row block");
  altered = blob;
  altered[segment] = int32_t(kPackedRowBlock);
  fails_with("a segment of another block's row", altered, "outside its row block");
  // Without the comparison the segments are not placed (the SpMM keeps them in bounds:
  // test_clamped_packing), but the row blocks' offsets are still checked.
  expect(error(altered, int64_t(altered.size()), w, false).empty(),
         "find_packed_error without comparing entries accepts a misplaced segment");
  altered = blob;
  altered[kPackedHeader] = 1;  // the first row block's segments would start at segment 1
  expect(error(altered, int64_t(altered.size()), w, false).find("offsets") != std::string::npos,
         "find_packed_error without comparing entries rejects a row block's segment offsets");
  fails_with("a shortened blob", blob, "layout", int64_t(blob.size()) - 2);
  fails_with("three ints", blob, "header", 3);
  CsrView<V> wider = w;
  wider.cols += 1;
  fails_with("another weight's shape", blob, "was packed for", -1, &wider);
  return blob;
}

// columns_descending: each row's nonzeros stored in descending column order (CSR does not require
// ascending order; the K-blocked SpMM must stay exact without it).
template <typename V>
void test_csr_linear(int64_t rows, int64_t cols, int64_t batch, double density, bool relu, bool with_residual,
                     bool columns_descending = false, Gelu gelu = Gelu::kNone, bool expect_packed = false,
                     int64_t empty_rows = 0) {
  std::mt19937 g(unsigned(rows * 131 + cols * 7 + batch));
  RandomCsr m = random_csr(rows, cols, density, g);
  // The first empty_rows rows emptied (whole segments and row blocks with nothing to add).
  for (int64_t r = 0; r < empty_rows; ++r) {
    const int64_t removed = m.crow[r + 1] - m.crow[0];
    m.col.erase(m.col.begin() + m.crow[0], m.col.begin() + m.crow[r + 1]);
    m.val.erase(m.val.begin() + m.crow[0], m.val.begin() + m.crow[r + 1]);
    for (int64_t i = 0; i <= rows; ++i) m.crow[i] = i <= r ? 0 : m.crow[i] - int32_t(removed);
  }
  for (int64_t r = 0; columns_descending && r < rows; ++r) {
    std::reverse(m.col.begin() + m.crow[r], m.col.begin() + m.crow[r + 1]);
    std::reverse(m.val.begin() + m.crow[r], m.val.begin() + m.crow[r + 1]);
  }
  const std::vector<V> vals = encode_all<V>(m.val);
  // The tiled kernel reads x transposed in panels of 64 batch rows, the last padded with zeros to a
  // multiple of 8 (pack_panels; the padding is checked too).
  const PanelLayout layout{batch, cols};
  std::vector<float> x(batch * cols), panels(layout.padded() * cols, NAN), bias(rows), residual(batch * rows);
  for (auto& v : x) v = exact_value(g);
  for (auto& v : bias) v = exact_value(g);
  for (auto& v : residual) v = exact_value(g);
  pack_panels(x.data(), layout, panels.data(), kThreeChunks);
  for (int64_t p = 0; p < layout.count(); ++p) {
    for (int64_t k = 0; k < cols; ++k) {
      for (int64_t j = 0; j < layout.width(p); ++j) {
        const int64_t n = p * kPanelWidth + j;
        expect(panels[layout.offset(p) + k * layout.width(p) + j] == (n < batch ? x[n * cols + k] : 0.f),
               "pack_panels at (" + std::to_string(k) + ", " + std::to_string(n) + ")");
      }
    }
  }
  // Packed a panel range at a time (pack_panel_range, last panel first) and from a first panel on
  // (pack_panels): the same floats, and nothing before the first panel written.
  std::vector<float> by_range(panels.size(), NAN), from_second(panels.size(), NAN);
  for (int64_t p = layout.count() - 1; p >= 0; --p) pack_panel_range(x.data(), layout, p, p + 1, by_range.data());
  pack_panels(x.data(), layout, from_second.data(), kThreeChunks, 1);
  const size_t second = std::min(panels.size(), size_t(layout.offset(1)));
  expect(std::memcmp(by_range.data(), panels.data(), panels.size() * sizeof(float)) == 0 &&
             std::all_of(from_second.begin(), from_second.begin() + second, [](float v) { return std::isnan(v); }) &&
             std::memcmp(from_second.data() + second, panels.data() + second,
                         (panels.size() - second) * sizeof(float)) == 0,
         "pack_panel_range and pack_panels from the second panel, batch " + std::to_string(batch));
  const CsrView<V> w{m.crow.data(), m.col.data(), vals.data(), rows, cols};
  const Epilogue ep{bias.data(), relu, with_residual ? residual.data() : nullptr, gelu};
  std::vector<float> y_gather(batch * rows, NAN), y_tiled(batch * rows, NAN), y_packed(batch * rows, NAN),
      y_clamped(batch * rows, NAN);
  // The nonzeros packed for the tiled kernel, where that pays: the same sums bit for bit, with the
  // columns known to be checked and with them clamped.
  const std::vector<int32_t> packed = checked_packing(w);
  PackedNonzeros packed_view = packed.empty() ? PackedNonzeros{} : packed_nonzeros(packed.data());
  PackedNonzeros clamped_view = packed_view;
  packed_view.columns_checked = true;
  CsrView<V> w_packed = w, w_clamped = w;
  w_packed.packed = packed.empty() ? nullptr : &packed_view;
  w_clamped.packed = packed.empty() ? nullptr : &clamped_view;
  // Two row ranges, as two threads would compute them.
  const int64_t mid = balanced_row_start(m.crow.data(), rows, 1, 2);
  for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, mid}, {mid, rows}}) {
    csr_linear_gather(w, x.data(), batch, y_gather.data(), ep, r0, r1);
    csr_linear_tiled(w, panels.data(), batch, y_tiled.data(), ep, r0, r1);
    csr_linear_tiled(w_packed, panels.data(), batch, y_packed.data(), ep, r0, r1);
    csr_linear_tiled(w_clamped, panels.data(), batch, y_clamped.data(), ep, r0, r1);
  }
  // The whole batch on three threads, packing x itself into scratch (csr_linears: whole panels per
  // thread where there are at least three, the rest split by rows), the layer packed and not: the
  // same sums bit for bit.
  std::vector<float> y_threads(batch * rows, NAN), y_threads_unpacked(batch * rows, NAN);
  if (batch >= kTiledMinBatch) {
    std::vector<float> scratch(panels.size(), NAN);
    const CsrView<V> layers[] = {w_packed, w};
    const Epilogue epilogues[] = {ep, ep};
    float* const outputs[] = {y_threads.data(), y_threads_unpacked.data()};
    csr_linears(layers, epilogues, outputs, 2, x.data(), scratch.data(), batch, kThreeChunks);
    expect(std::memcmp(y_threads.data(), y_packed.data(), y_threads.size() * sizeof(float)) == 0 &&
               std::memcmp(y_threads_unpacked.data(), y_tiled.data(), y_threads.size() * sizeof(float)) == 0,
           "csr_linears " + std::to_string(rows) + "x" + std::to_string(cols) + " batch " + std::to_string(batch) +
               " over three threads gives csr_linear_tiled's sums");
  }
  expect(!expect_packed || !packed.empty(), "pack_nonzeros " + std::to_string(rows) + "x" + std::to_string(cols) + " packs");
  expect(std::memcmp(y_tiled.data(), y_packed.data(), y_tiled.size() * sizeof(float)) == 0 &&
             std::memcmp(y_tiled.data(), y_clamped.data(), y_tiled.size() * sizeof(float)) == 0,
         "csr_linear " + std::to_string(rows) + "x" + std::to_string(cols) + " batch " + std::to_string(batch) +
             ": packed nonzeros (columns checked or clamped) give the unpacked sums");
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = bias[r];
      for (int64_t k = m.crow[r]; k < m.crow[r + 1]; ++k) ref += double(m.val[k]) * x[n * cols + m.col[k]];
      if (with_residual) ref += residual[n * rows + r];
      if (relu && ref < 0) ref = 0;
      ref = gelu_reference(gelu, ref);
      const std::string where = "csr_linear " + std::to_string(rows) + "x" + std::to_string(cols) +
                                " batch " + std::to_string(batch) + " at (" + std::to_string(n) +
                                ", " + std::to_string(r) + ")";
      expect(close(y_gather[n * rows + r], ref), "gather " + where);
      expect(close(y_tiled[n * rows + r], ref), "tiled " + where);
    }
  }
}

// A packing whose entries were not compared with the weight (trusted packings) and hold columns
// outside it, above and (as int32) below, and whose first row block has segments running past its
// entries, of negative length and of rows outside it: the SpMM finds the columns outside the operand
// in each block's check, clamps them there, and keeps the segments within their block instead of
// reading outside either (the sanitizer build
// would report the read), and the rows of the second block that the columns are not in come out
// as the unpacked kernel's.
void test_clamped_packing() {
  const int64_t rows = 300, cols = 700, batch = 64;
  std::mt19937 g(7);
  const RandomCsr m = random_csr(rows, cols, 0.2, g);
  const CsrView<float> w{m.crow.data(), m.col.data(), m.val.data(), rows, cols};
  std::vector<int32_t> blob = pack_nonzeros(w);
  expect(!blob.empty(), "test_clamped_packing: the weight packs");
  const PackedNonzeros view = packed_nonzeros(blob.data());
  const int64_t nnz = m.crow[rows];
  const int64_t first_column = reinterpret_cast<const int32_t*>(view.entries) - blob.data();
  blob[first_column] = -5;
  blob[first_column + 2 * (nnz - 1)] = 1 << 30;
  // The weight row of the last entry: that of the last segment.
  const int64_t last_block = (rows - 1) / kPackedRowBlock, segments = view.block_segments[last_block + 1];
  const int64_t altered_row = last_block * kPackedRowBlock + view.segments[segments - 1].row;
  expect(last_block == 1 && view.block_segments[1] >= 3, "test_clamped_packing: two row blocks, three segments");
  int32_t* first_segments = blob.data() + (reinterpret_cast<const int32_t*>(view.segments) - blob.data());
  first_segments[1] = 1 << 30;      // segment 0: its count
  first_segments[3] = -4;           // segment 1: its count
  first_segments[4] = -1;           // segment 2: its row
  expect(find_packed_error(w, blob.data(), int64_t(blob.size()), kThreeChunks, false).empty(),
         "test_clamped_packing: the row blocks' offsets pass");
  CsrView<float> w_packed = w;
  w_packed.packed = &view;
  const PanelLayout layout{batch, cols};
  std::vector<float> x(batch * cols), panels(layout.padded() * cols);
  for (auto& v : x) v = exact_value(g);
  pack_panels(x.data(), layout, panels.data(), kThreeChunks);
  std::vector<float> y(batch * rows), y_packed(batch * rows);
  csr_linear_tiled(w, panels.data(), batch, y.data(), Epilogue{}, 0, rows);
  csr_linear_tiled(w_packed, panels.data(), batch, y_packed.data(), Epilogue{}, 0, rows);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t r = 0; r < rows; ++r) {
      const float got = y_packed[n * rows + r];
      expect(std::isfinite(got) && (r < kPackedRowBlock || r == altered_row || got == y[n * rows + r]),
             "test_clamped_packing: row " + std::to_string(r) + " of input " + std::to_string(n));
    }
  }
}

template <typename V>
void test_bsr_linear(int64_t bh, int64_t bw, int64_t batch, Gelu gelu = Gelu::kNone) {
  std::mt19937 g(unsigned(bh * 17 + bw));
  const int64_t brows = 5, bcols = 3, rows = brows * bh, cols = bcols * bw;
  const RandomCsr blocks = random_csr(brows, bcols, 0.5, g);
  std::vector<float> tiles(blocks.col.size() * bh * bw), x(batch * cols), y(batch * rows, NAN);
  for (auto& v : tiles) v = exact_value(g);
  for (auto& v : x) v = exact_value(g);
  const std::vector<V> vals = encode_all<V>(tiles);
  const BsrView<V> w{blocks.crow.data(), blocks.col.data(), vals.data(), brows, bcols, bh, bw};
  bsr_linear(w, x.data(), batch, y.data(), Epilogue{nullptr, false, nullptr, gelu}, 0, brows);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0;
      const int64_t br = r / bh, i = r % bh;
      for (int64_t k = blocks.crow[br]; k < blocks.crow[br + 1]; ++k)
        for (int64_t j = 0; j < bw; ++j)
          ref += double(tiles[(k * bh + i) * bw + j]) * x[n * cols + blocks.col[k] * bw + j];
      ref = gelu_reference(gelu, ref);
      expect(close(y[n * rows + r], ref), "bsr_linear " + std::to_string(bh) + "x" +
                                              std::to_string(bw) + " row " + std::to_string(r));
    }
  }
}

// csr_mlp_tiled against two layers computed in double: the ReLU or a GELU in the first layer's
// epilogue; several panels, the last one partial.
template <typename V>
void test_csr_mlp(int64_t in, int64_t hidden, int64_t out, int64_t batch, double density, bool relu,
                  Gelu gelu = Gelu::kNone, bool expect_packed = false) {
  std::mt19937 g(unsigned(in * 131 + hidden * 7 + out + batch));
  const RandomCsr m1 = random_csr(hidden, in, density, g), m2 = random_csr(out, hidden, density, g);
  const std::vector<V> vals1 = encode_all<V>(m1.val), vals2 = encode_all<V>(m2.val);
  const PanelLayout layout{batch, in};
  std::vector<float> x(batch * in), panels(layout.padded() * in, NAN), bias1(hidden), bias2(out), residual(batch * out);
  for (auto* v : {&x, &bias1, &bias2, &residual}) {
    for (auto& e : *v) e = exact_value(g);
  }
  std::vector<float> h(mlp_hidden_floats(batch, in, hidden, kThreeChunks.num_threads), NAN), y(batch * out, NAN);
  const CsrView<V> w1{m1.crow.data(), m1.col.data(), vals1.data(), hidden, in};
  const CsrView<V> w2{m2.crow.data(), m2.col.data(), vals2.data(), out, hidden};
  const Epilogue ep1{bias1.data(), relu, nullptr, gelu}, ep2{bias2.data(), false, residual.data()};
  csr_mlp_tiled(w1, ep1, w2, ep2, x.data(), panels.data(), batch, h.data(), y.data(), kThreeChunks);
  // With both layers' nonzeros packed where that pays: the same sums bit for bit.
  const std::vector<int32_t> packed1 = checked_packing(w1), packed2 = checked_packing(w2);
  const PackedNonzeros view1 = packed1.empty() ? PackedNonzeros{} : packed_nonzeros(packed1.data());
  const PackedNonzeros view2 = packed2.empty() ? PackedNonzeros{} : packed_nonzeros(packed2.data());
  CsrView<V> w1_packed = w1, w2_packed = w2;
  w1_packed.packed = packed1.empty() ? nullptr : &view1;
  w2_packed.packed = packed2.empty() ? nullptr : &view2;
  std::vector<float> y_packed(batch * out, NAN);
  csr_mlp_tiled(w1_packed, ep1, w2_packed, ep2, x.data(), panels.data(), batch, h.data(), y_packed.data(),
                kThreeChunks);
  expect(!expect_packed || (!packed1.empty() && !packed2.empty()), "csr_mlp: pack_nonzeros packs both layers");
  expect(std::memcmp(y.data(), y_packed.data(), y.size() * sizeof(float)) == 0,
         "csr_mlp: packed nonzeros give the unpacked sums");
  std::vector<double> act(hidden);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t r = 0; r < hidden; ++r) {
      double sum = bias1[r];
      for (int64_t k = m1.crow[r]; k < m1.crow[r + 1]; ++k) sum += double(m1.val[k]) * x[n * in + m1.col[k]];
      act[r] = gelu_reference(gelu, relu ? std::max(sum, 0.0) : sum);
    }
    for (int64_t r = 0; r < out; ++r) {
      // The GELU's rounding (3e-7 |h|) carries into the second sum: measured against its terms' size.
      double ref = bias2[r] + residual[n * out + r], size = std::fabs(ref);
      for (int64_t k = m2.crow[r]; k < m2.crow[r + 1]; ++k) {
        ref += double(m2.val[k]) * act[m2.col[k]];
        size += std::fabs(double(m2.val[k]) * act[m2.col[k]]);
      }
      expect(std::fabs(y[n * out + r] - ref) <= 1e-5 * std::max(1.0, size), "csr_mlp " + std::to_string(in) + "x" + std::to_string(hidden) + "x" +
                                             std::to_string(out) + " batch " + std::to_string(batch) + " at (" +
                                             std::to_string(n) + ", " + std::to_string(r) + ")");
    }
  }
}

// A convolution in double: out = relu(conv(in) + bias (+ residual)), [batch, out_channels, out_h,
// out_w] for input [batch, in_channels, height, width].
template <typename T>
std::vector<double> conv_reference(const Conv2dShape& s, const RandomCsr& m, const std::vector<float>& bias,
                                   const std::vector<T>& in, const float* residual, bool relu = true) {
  const int64_t cin_g = s.in_channels / s.groups, cout_g = s.out_channels / s.groups;
  std::vector<double> out(s.batch * s.out_channels * s.out_h * s.out_w);
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t o = 0; o < s.out_channels; ++o) {
      for (int64_t oy = 0; oy < s.out_h; ++oy) {
        for (int64_t ox = 0; ox < s.out_w; ++ox) {
          double sum = bias[o];
          for (int64_t k = m.crow[o]; k < m.crow[o + 1]; ++k) {
            const int64_t c = (o / cout_g) * cin_g + m.col[k] / (s.kh * s.kw);
            const int64_t ky = m.col[k] / s.kw % s.kh, kx = m.col[k] % s.kw;
            const int64_t iy = oy * s.stride_h - s.pad_h + ky * s.dil_h, ix = ox * s.stride_w - s.pad_w + kx * s.dil_w;
            if (iy >= 0 && iy < s.height && ix >= 0 && ix < s.width) {
              sum += double(m.val[k]) * double(in[((n * s.in_channels + c) * s.height + iy) * s.width + ix]);
            }
          }
          const int64_t index = ((n * s.out_channels + o) * s.out_h + oy) * s.out_w + ox;
          if (residual) sum += residual[index];
          out[index] = relu ? std::max(sum, 0.0) : sum;
        }
      }
    }
  }
  return out;
}

// packed_weight: the weight packed (pack_nonzeros) for a layout of panels, which must take it (a kernel
// of several taps: over its input unfolded).
// stream: the output stored with non-temporal stores where a vector is aligned (Epilogue::stream).
// channel_blocks: the packed image must be read in at least two blocks of input channels.
template <typename V>
void test_conv(Conv2dShape s, double density, bool with_residual, bool packed_weight = false, bool stream = false,
               bool channel_blocks = false) {
  s = with_output_size(s);
  std::mt19937 rng(unsigned(s.in_channels * 13 + s.kh * 5 + s.stride_w));
  const int64_t cin_g = s.in_channels / s.groups;
  const int64_t in_image = s.in_channels * s.height * s.width, out_plane = s.out_h * s.out_w;
  const RandomCsr m = random_csr(s.out_channels, cin_g * s.kh * s.kw, density, rng);
  const std::vector<V> vals = encode_all<V>(m.val);
  std::vector<float> in(s.batch * in_image), bias(s.out_channels), residual(s.batch * s.out_channels * out_plane);
  for (auto& v : in) v = exact_value(rng);
  for (auto& v : bias) v = exact_value(rng);
  for (auto& v : residual) v = exact_value(rng);
  std::vector<float> out(s.batch * s.out_channels * out_plane, NAN);
  CsrView<V> w{m.crow.data(), m.col.data(), vals.data(), s.out_channels, cin_g * s.kh * s.kw};
  const std::vector<int32_t> blob = packed_weight ? pack_nonzeros(w) : std::vector<int32_t>();
  // Scratch starts as NaN: any element read before it is written shows in the result.
  const PackedConvLayout layout = packed_conv_layout(s, int64_t(m.col.size()), !blob.empty());
  expect(!channel_blocks || layout.idx_blocks >= 2, "the packed image is read in blocks of channels");
  expect(packed_weight || !layout.panels || (s.kh == 1 && s.kw == 1 && s.pad_h == 0 && s.pad_w == 0),
         "a kernel of several taps runs as panels only with a packed weight");
  const ConvScratchSizes sizes = conv_scratch_sizes(s, layout, int64_t(m.col.size()), kThreeChunks.num_threads);
  std::vector<float> packed(sizes.packed, NAN), panels(sizes.panels, NAN);
  std::vector<int32_t> offsets(sizes.offsets, -1);
  PackedNonzeros view{};
  if (packed_weight) {
    expect(layout.panels && !blob.empty(), "the convolution runs as panels with a packed weight");
    view = packed_nonzeros(blob.data());
    w.packed = &view;
  }
  conv_tap_offsets(s, layout, m.crow.data(), m.col.data(), offsets.data(), kThreeChunks);
  csr_conv2d(s, layout, w, in.data(), out.data(),
             Epilogue{bias.data(), true, with_residual ? residual.data() : nullptr, Gelu::kNone, stream},
             ConvScratch{packed.data(), offsets.data(), panels.data()}, kThreeChunks);
  const std::vector<double> ref = conv_reference(s, m, bias, in, with_residual ? residual.data() : nullptr);
  for (size_t i = 0; i < ref.size(); ++i) {
    expect(close(out[i], ref[i]), "csr_conv2d output element " + std::to_string(i) + " of shape [" +
                                      std::to_string(s.batch) + ", " + std::to_string(s.out_channels) + ", " +
                                      std::to_string(s.out_h) + ", " + std::to_string(s.out_w) + "]");
  }
}

// pointwise_conv_chain against its two csr_conv2d calls, bit for bit: 3 x 17x17 pixels (14 panels,
// some across images, the last narrower) on three threads, 300 -> 250 -> 24 channels (weights wide
// enough to pack), rows empty and full, packed or not, with a residual or without; scratch and
// outputs start as NaN.
template <typename V>
void test_pointwise_chain(bool with_residual, bool packed_weights) {
  const int64_t in = 300, mid = 250, out = 24;
  const Conv2dShape first = with_output_size({3, in, 17, 17, mid, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1});
  Conv2dShape second = first;
  second.in_channels = mid;
  second.out_channels = out;
  const int64_t pixels = first.batch * first.height * first.width;
  std::mt19937 rng(unsigned(7 + with_residual + 2 * packed_weights));
  const RandomCsr m1 = random_csr(mid, in, 0.2, rng), m2 = random_csr(out, mid, 0.2, rng);
  const std::vector<V> vals1 = encode_all<V>(m1.val), vals2 = encode_all<V>(m2.val);
  std::vector<float> x(pixels * in), bias1(mid), bias2(out), residual(pixels * mid);
  for (auto* v : {&x, &bias1, &bias2, &residual}) {
    for (auto& f : *v) f = exact_value(rng);
  }
  CsrView<V> w1{m1.crow.data(), m1.col.data(), vals1.data(), mid, in};
  CsrView<V> w2{m2.crow.data(), m2.col.data(), vals2.data(), out, mid};
  const std::vector<int32_t> blob1 = packed_weights ? pack_nonzeros(w1) : std::vector<int32_t>();
  const std::vector<int32_t> blob2 = packed_weights ? pack_nonzeros(w2) : std::vector<int32_t>();
  PackedNonzeros view1{}, view2{};
  if (packed_weights) {
    expect(!blob1.empty() && !blob2.empty(), "the chain's weights pack");
    if (blob1.empty() || blob2.empty()) return;
    view1 = packed_nonzeros(blob1.data());
    view2 = packed_nonzeros(blob2.data());
    w1.packed = &view1;
    w2.packed = &view2;
  }
  const Epilogue ep1{bias1.data(), true, with_residual ? residual.data() : nullptr, Gelu::kNone, true};
  const Epilogue ep2{bias2.data(), true};
  expect(chains_pointwise(first, ep1, kThreeChunks.num_threads), "the chain runs a panel at a time");
  const auto conv = [](const Conv2dShape& s, const CsrView<V>& w, const float* in, float* out, const Epilogue& ep) {
    const PackedConvLayout layout = packed_conv_layout(s, w.crow[w.rows]);
    const ConvScratchSizes sizes = conv_scratch_sizes(s, layout, w.crow[w.rows], kThreeChunks.num_threads);
    std::vector<float> packed(sizes.packed), panels(sizes.panels);
    std::vector<int32_t> offsets(sizes.offsets);
    conv_tap_offsets(s, layout, w.crow, w.col, offsets.data(), kThreeChunks);
    csr_conv2d(s, layout, w, in, out, ep, ConvScratch{packed.data(), offsets.data(), panels.data()}, kThreeChunks);
  };
  std::vector<float> y1_ref(pixels * mid), y2_ref(pixels * out);
  conv(first, w1, x.data(), y1_ref.data(), ep1);
  conv(second, w2, y1_ref.data(), y2_ref.data(), ep2);
  std::vector<float> scratch(pointwise_chain_scratch(first, with_residual, kThreeChunks.num_threads), NAN);
  std::vector<float> y1(pixels * mid, NAN), y2(pixels * out, NAN);
  pointwise_conv_chain(first, w1, ep1, y1.data(), w2, ep2, y2.data(), x.data(), scratch.data(), kThreeChunks);
  const std::string what = std::string(" of the pointwise chain") + (with_residual ? " with a residual" : "") +
                           (packed_weights ? ", packed" : "");
  expect(y1 == y1_ref, "the first output" + what);
  expect(y2 == y2_ref, "the second output" + what);
}

// What a bottleneck block adds to its last layer's output: nothing, a residual tensor, or a shortcut
// layer's output (a 1x1 convolution of the block's input).
enum class BlockSum { kNone, kResidual, kShortcut };

// bottleneck_block against its layers in double: 3 images of 12x10 (bands of 1, 3, 4 and 12 rows, the
// first rows of each thread's first band computed, the rest kept from the band above; bands of 10 and
// 30 columns end in a part tile, which a shortcut's in-place sum must not store twice),
// 20 -> 12 -> 9 -> 20 channels, rows empty and full, a 3x3 layer with no nonzero, each BlockSum, on
// three threads; scratch and output start as NaN.
template <typename V>
void test_bottleneck_block(BlockSum sum, bool empty_middle) {
  const BottleneckShape b{3, 20, 12, 10, 12, 9, 20};
  const auto shape = [&](int64_t in, int64_t out, int64_t k) {
    return with_output_size({b.batch, in, b.height, b.width, out, 0, 0, k, k, 1, 1, k / 2, k / 2, 1, 1, 1});
  };
  const Conv2dShape s1 = shape(b.in_channels, b.mid1, 1), s2 = shape(b.mid1, b.mid2, 3);
  const Conv2dShape s3 = shape(b.mid2, b.out_channels, 1), s4 = shape(b.in_channels, b.out_channels, 1);
  std::mt19937 rng(unsigned(11 + int(sum) + 3 * empty_middle));
  const RandomCsr m1 = random_csr(b.mid1, b.in_channels, 0.3, rng);
  const RandomCsr m2 = random_csr(b.mid2, b.mid1 * 9, empty_middle ? 0.0 : 0.2, rng);
  const RandomCsr m3 = random_csr(b.out_channels, b.mid2, 0.4, rng);
  const RandomCsr m4 = random_csr(b.out_channels, b.in_channels, 0.3, rng);
  RandomCsr none;
  none.crow.assign(b.mid2 + 1, 0);
  const RandomCsr& middle = empty_middle ? none : m2;
  const std::vector<V> vals1 = encode_all<V>(m1.val), vals2 = encode_all<V>(middle.val), vals3 = encode_all<V>(m3.val),
                       vals4 = encode_all<V>(m4.val);
  const int64_t plane = b.height * b.width;
  std::vector<float> x(b.batch * b.in_channels * plane), bias1(b.mid1), bias2(b.mid2), bias3(b.out_channels),
      bias4(b.out_channels), residual(b.batch * b.out_channels * plane);
  for (auto* v : {&x, &bias1, &bias2, &bias3, &bias4, &residual}) {
    for (auto& f : *v) f = exact_value(rng);
  }
  if (sum == BlockSum::kShortcut) {
    // The shortcut's output, no ReLU: what the last layer adds.
    const std::vector<double> shortcut = conv_reference(s4, m4, bias4, x, nullptr, false);
    residual.assign(shortcut.begin(), shortcut.end());
  }
  const std::vector<double> ref = conv_reference(
      s3, m3, bias3,
      conv_reference(s2, middle, bias2,
                     conv_reference(s1, m1, bias1, x, nullptr), nullptr),
      sum == BlockSum::kNone ? nullptr : residual.data());
  const CsrView<V> w1{m1.crow.data(), m1.col.data(), vals1.data(), b.mid1, b.in_channels};
  const CsrView<V> w2{middle.crow.data(), middle.col.data(), vals2.data(), b.mid2, b.mid1 * 9};
  const CsrView<V> w3{m3.crow.data(), m3.col.data(), vals3.data(), b.out_channels, b.mid2};
  const CsrView<V> w4{m4.crow.data(), m4.col.data(), vals4.data(), b.out_channels, b.in_channels};
  const CsrView<V>* shortcut = sum == BlockSum::kShortcut ? &w4 : nullptr;
  const float* res = sum == BlockSum::kResidual ? residual.data() : nullptr;
  for (const int64_t rows : {1, 3, 4, 12}) {
    const BottleneckScratchSizes sizes = bottleneck_scratch(b, rows, w2.crow[w2.rows], kThreeChunks.num_threads,
                                                                shortcut != nullptr);
    std::vector<float> scratch(sizes.floats, NAN), y(ref.size(), NAN);
    std::vector<int32_t> offsets(sizes.offsets, -1);
    bottleneck_block(b, rows, w1, Epilogue{bias1.data(), true}, w2, Epilogue{bias2.data(), true}, w3,
                     Epilogue{bias3.data(), true, res}, shortcut, Epilogue{bias4.data(), false}, x.data(), y.data(),
                     scratch.data(), offsets.data(), kThreeChunks);
    bool all_close = true;
    for (size_t i = 0; i < ref.size(); ++i) all_close = all_close && close(y[i], ref[i]);
    const char* what[] = {"", ", with a residual", ", with a shortcut"};
    expect(all_close, "bottleneck_block in bands of " + std::to_string(rows) + " rows" + what[int(sum)] +
                          (empty_middle ? ", no 3x3 nonzero" : ""));
  }
}

// bottleneck_band_rows: none where the block's activations stay in the cache; for ResNet-50's
// first stage at batch 8, a divisor of the height that leaves each thread several bands.
void test_bottleneck_band_rows() {
  expect(bottleneck_band_rows({3, 20, 12, 10, 12, 9, 20}, 500, 2) == 0, "a small block runs its layers apart");
  const int64_t rows = bottleneck_band_rows({8, 256, 56, 56, 64, 64, 256}, 1843, 2);
  expect(rows > 0 && 56 % rows == 0 && 8 * (56 / rows) >= kBandsPerThread * 2,
         "ResNet-50's first stage at batch 8 runs in bands, got " + std::to_string(rows) + " rows");
}

// A convolution case with and without a residual in the epilogue, and streamed.
template <typename V>
void test_conv_epilogues(const Conv2dShape& s, double density, bool channel_blocks) {
  test_conv<V>(s, density, false, false, false, channel_blocks);
  test_conv<V>(s, density, true, false, false, channel_blocks);
  test_conv<V>(s, density, true, false, true, channel_blocks);
}

template <typename V>
void test_conv(const Conv2dShape& s, double density) {
  test_conv_epilogues<V>(s, density, false);
}

template <typename V>
void test_value_type() {
  struct LinearCase {
    int64_t rows, cols, batch;
    double density;
  };
  for (const LinearCase& c : {LinearCase{7, 96, 40, 0.3}, LinearCase{1, 1, 1, 1.0}, LinearCase{33, 65, 3, 0.1},
                              LinearCase{16, 16, 9, 0.0}, LinearCase{64, 130, 70, 0.05},
                              // Whole 16-row groups transposed in registers, with a residual
                              LinearCase{48, 40, 35, 0.2}, LinearCase{50, 33, 128, 0.15},
                              // Three panels, the last 22 rows padded to 24
                              LinearCase{37, 50, 150, 0.2},
                              // Four panels: on three threads one whole each, the fourth split by rows
                              LinearCase{37, 50, 250, 0.2},
                              // Columns in blocks that fill L1 (64-wide tiles, a row block and a part)
                              LinearCase{70, 700, 130, 0.3}}) {
    test_csr_linear<V>(c.rows, c.cols, c.batch, c.density, c.batch % 2 == 0, c.batch % 3 != 1);
    test_csr_linear<V>(c.rows, c.cols, c.batch, c.density, false, c.batch % 3 == 1, false,
                       c.batch % 2 ? Gelu::kExact : Gelu::kTanh);
  }
  test_csr_linear<V>(70, 700, 130, 0.3, false, true, true);
  // Packed nonzeros: two row blocks (one split between the two ranges), columns in several blocks,
  // rows out of column order, a partial panel, and leading rows empty.
  test_csr_linear<V>(300, 700, 130, 0.1, true, true, false, Gelu::kNone, /*expect_packed=*/true);
  test_csr_linear<V>(300, 700, 64, 0.1, false, false, true, Gelu::kExact, /*expect_packed=*/true);
  test_csr_linear<V>(520, 650, 72, 0.2, false, true, false, Gelu::kNone, /*expect_packed=*/true, /*empty_rows=*/260);
  // 49 rows: one panel, padded to a whole one, which the packed kernel reads.
  test_csr_linear<V>(300, 700, 49, 0.1, true, true, false, Gelu::kNone, /*expect_packed=*/true);
  test_csr_mlp<V>(40, 96, 24, 150, 0.2, false, Gelu::kExact);  // three panels, the last 22 rows padded to 24
  test_csr_mlp<V>(40, 96, 24, 250, 0.2, true);  // four panels over three threads: one split by rows
  test_csr_mlp<V>(33, 70, 17, 64, 0.3, true);
  test_csr_mlp<V>(16, 8, 5, 9, 0.0, false);  // nnz = 0: the output is bias2 + residual
  test_csr_mlp<V>(300, 520, 30, 70, 0.3, false, Gelu::kTanh);  // both layers' columns in blocks
  test_csr_mlp<V>(400, 700, 300, 130, 0.1, false, Gelu::kExact, /*expect_packed=*/true);
  for (const auto& [bh, bw] : {std::pair<int64_t, int64_t>{1, 1}, {4, 4}, {2, 8}, {16, 16}}) {
    test_bsr_linear<V>(bh, bw, 3);
  }
  test_bsr_linear<V>(4, 4, 5, Gelu::kExact);
  // {batch, in_channels, height, width, out_channels, out_h, out_w, kh, kw, stride, pad, dil, groups}
  test_conv<V>({2, 3, 7, 9, 5, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 0.5);
  test_conv<V>({2, 8, 17, 15, 16, 0, 0, 3, 3, 2, 2, 1, 1, 1, 1, 2}, 0.3);
  test_conv<V>({2, 6, 12, 11, 6, 0, 0, 3, 5, 1, 2, 2, 1, 2, 1, 3}, 0.4);
  test_conv<V>({2, 4, 9, 9, 4, 0, 0, 3, 3, 3, 1, 0, 4, 1, 3, 4}, 0.6);
  test_conv<V>({2, 3, 5, 5, 2, 0, 0, 7, 7, 1, 1, 3, 3, 1, 1, 1}, 1.0);
  test_conv<V>({2, 5, 13, 11, 7, 0, 0, 3, 3, 2, 3, 1, 2, 2, 1, 1}, 0.5);  // stride and dilation together
  test_conv<V>({1, 16, 70, 70, 4, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 0.2);  // 64-wide tiles
  test_conv<V>({2, 8, 6, 6, 8, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.0);
  test_conv<V>({1, 5, 6, 7, 6, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.5);  // read directly, overlapping last tile
  test_conv<V>({2, 5, 6, 7, 6, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.5);  // panels: one across both images
  // Panels of 7x7 images at batch 3 (147 pixels: two whole panels across images, a last one of 24
  // columns), 600 input channels (packed: several column blocks), more rows than a row block.
  test_conv<V>({3, 600, 7, 7, 300, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.1);
  test_conv<V>({3, 600, 7, 7, 300, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.1, true, true);
  // One 7x7 image: 49 pixels, a panel padded to a whole one.
  test_conv<V>({1, 600, 7, 7, 300, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.1);
  test_conv<V>({1, 600, 7, 7, 300, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.1, true, true);
  test_conv<V>({1, 200, 9, 9, 17, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 2}, 0.3);  // grouped 1x1: read directly
  test_conv<V>({3, 4, 2, 3, 3, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.5);  // read directly, narrower than 8
  // Panels of 1x1 images: each column is an image (row stride 1, but not a linear layer's layout).
  test_conv<V>({70, 24, 1, 1, 40, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.4);
  test_conv<V>({70, 600, 1, 1, 40, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1}, 0.1, false, true);
  // Wide rows stored cropped: 14 of 16 (an 8-float vector and one overlapping it), 7 of 9 (one by
  // one), 56 of 58 (runs that cross 64-column tiles).
  test_conv<V>({2, 20, 14, 14, 24, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 0.3);
  test_conv<V>({2, 8, 7, 7, 8, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 0.5);
  test_conv<V>({1, 4, 56, 56, 3, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 0.5);
  test_conv<V>({2, 6, 11, 10, 5, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 1}, 0.5);  // 1x1 stride 2: one phase of four
  test_conv<V>({1, 40, 14, 14, 24, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 1}, 0.3);  // 7x7 output: one 64-column tile
  // 1x1 stride 2 subsampled into panels that cross images (7x7 outputs), reading a packed weight; and
  // output rows of 20 columns (each run of the panel copied in two pieces)
  test_conv<V>({3, 600, 14, 14, 300, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 1}, 0.1, true, true);
  test_conv<V>({2, 200, 6, 40, 24, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 1}, 0.5, true, true);
  test_conv<V>({2, 4, 12, 12, 6, 0, 0, 3, 3, 2, 2, 2, 2, 2, 2, 2}, 0.5);  // dilation = stride: one phase
  // Kernels of several taps over their input unfolded into panels (a packed weight): 3x3 (runs of 11
  // columns, the last panel of 41), stride 2 (even floats picked from two vectors; runs of 8, and of 20
  // in two pieces), dilation with an uneven kernel and padding, stride 3 (the scalar copy), a padded
  // 1x1; empty and full rows.
  test_conv<V>({3, 24, 9, 11, 32, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 0.5, true, true);
  test_conv<V>({3, 24, 17, 15, 32, 0, 0, 3, 3, 2, 2, 1, 1, 1, 1, 1}, 0.5, false, true);
  test_conv<V>({2, 16, 12, 40, 24, 0, 0, 3, 3, 2, 2, 1, 1, 1, 1, 1}, 0.5, true, true);
  test_conv<V>({2, 16, 13, 12, 24, 0, 0, 3, 5, 1, 1, 2, 2, 2, 1, 1}, 0.5, true, true);
  test_conv<V>({3, 16, 20, 19, 24, 0, 0, 3, 3, 3, 3, 1, 1, 1, 1, 1}, 0.5, true, true);
  test_conv<V>({2, 200, 8, 9, 24, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 0.5, true, true);
  // 16 taps, the most whose offsets AVX-512 maps a vector at a time (7x7 above: a table per column).
  test_conv<V>({2, 10, 9, 9, 6, 0, 0, 4, 4, 1, 1, 2, 1, 1, 1, 2}, 0.4);
  // The packed image read in blocks of input channels (3 or 4 of them with 32-64 KiB of L1): 3x3,
  // and 3x3 stride 2 (four phases per channel), empty rows among them.
  test_conv_epilogues<V>({2, 160, 14, 14, 20, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 0.1, true);
  test_conv_epilogues<V>({1, 200, 15, 17, 18, 0, 0, 3, 3, 2, 2, 1, 1, 1, 1, 1}, 0.3, true);
  // The gather path: stride, padding or dilation far beyond the image.
  test_conv<V>({2, 3, 4, 4, 2, 0, 0, 1, 1, 1 << 27, 2, 0, 0, 1, 1, 1}, 1.0);
  test_conv<V>({1, 2, 4, 4, 2, 0, 0, 2, 2, 1, 1, 23000, 23000, 46003, 46003, 1}, 1.0);
  test_conv<V>({2, 4, 5, 3, 4, 0, 0, 3, 2, 1, 2, 1 << 22, 1, 1 << 22, 1, 2}, 0.7);
  for (const bool with_residual : {false, true}) {
    for (const bool packed_weights : {false, true}) test_pointwise_chain<V>(with_residual, packed_weights);
  }
  for (const BlockSum sum : {BlockSum::kNone, BlockSum::kResidual, BlockSum::kShortcut}) {
    for (const bool empty_middle : {false, true}) test_bottleneck_block<V>(sum, empty_middle);
  }
}

// The attack geometries of issue 14 choose the gather path in O(1), without a wrapped size.
void test_conv_layout_is_bounded() {
  expect(!(CheckedInt(int64_t(1) << 62) * 2).at_most(std::numeric_limits<int64_t>::max()),
         "CheckedInt: 2^62 * 2 overflows");
  expect((CheckedInt(int64_t(1) << 31) * (int64_t(1) << 31) + 1).at_most(int64_t(1) << 62 | 1),
         "CheckedInt: 2^31 * 2^31 + 1 is exact");
  expect((CheckedInt(std::numeric_limits<int64_t>::max()) + 1).overflowed(), "CheckedInt: max + 1 overflows");
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  const Conv2dShape attacks[] = {
      // 4096 channels on a 2x2 image: the packed size wrapped to 2^21 and the packing wrote ~2^52 floats.
      with_output_size({1, 4096, 2, 2, 1, 0, 0, 3, 1, 1, 1, kInt32Max, (1 << 19) - 1, kInt32Max, 1, 1}),
      with_output_size({1, 1, 4, 4, 1, 0, 0, 1, 1, 1 << 27, 1 << 27, 0, 0, 1, 1, 1}),      // 1 GiB of phase tables
      with_output_size({1, 1, 4, 4, 1, 0, 0, 1, 1, kInt32Max, kInt32Max, 0, 0, 1, 1, 1}),  // 16 GiB of them
      with_output_size({1, 1, 4, 4, 1, 0, 0, 2, 2, 1, 1, 23000, 23000, 46003, 46003, 1}),  // 8.4 GiB packed
  };
  for (const Conv2dShape& s : attacks) {
    for (const bool packed : {false, true}) {
      const PackedConvLayout layout = packed_conv_layout(s, 1, packed);
      const ConvScratchSizes sizes = conv_scratch_sizes(s, layout, 1, 4);
      expect(layout.gather && layout.row_slot.empty() && sizes.packed == 0 && sizes.offsets == 0 &&
                 sizes.panels == 0,
             "conv layout of stride " + std::to_string(s.stride_h) + ", padding " + std::to_string(s.pad_h) +
                 " takes the gather path without scratch");
    }
  }
}

// A kernel of several taps runs over its input unfolded (PackedConvLayout::panels) only with a packed
// weight, one group, kMinUnfoldedColumns columns and kMinUnfoldedNonzerosPerRow nonzeros per weight
// column.
void test_unfolded_layout_rules() {
  const Conv2dShape s = with_output_size({2, 16, 8, 8, 32, 0, 0, 3, 3, 1, 1, 1, 1, 1, 1, 1});  // 128 columns
  const int64_t enough = kMinUnfoldedNonzerosPerRow * 16 * 9;
  expect(packed_conv_layout(s, enough, true).panels, "a packed 3x3 weight runs over its input unfolded");
  expect(!packed_conv_layout(s, enough, false).panels, "an unpacked one on tap offsets");
  expect(!packed_conv_layout(s, enough - 1, true).panels, "so does one of too few nonzeros per weight column");
  Conv2dShape narrow = s;
  narrow.batch = 1;  // 64 columns
  expect(!packed_conv_layout(narrow, enough, true).panels, "and one over a single panel of columns");
  Conv2dShape grouped = s;
  grouped.groups = 2;
  expect(!packed_conv_layout(grouped, enough / 2, true).panels, "and a grouped one");
}

void test_balanced_rows() {
  const std::vector<int32_t> crow{0, 0, 10, 10, 11, 12, 30};
  expect(balanced_row_start(crow.data(), 6, 0, 3) == 0, "first part starts at row 0");
  expect(balanced_row_start(crow.data(), 6, 3, 3) == 6, "last part ends at rows");
  int64_t previous = 0;
  for (int64_t p = 1; p <= 3; ++p) {
    const int64_t start = balanced_row_start(crow.data(), 6, p, 3);
    expect(start >= previous, "parts are ordered");
    previous = start;
  }
}

// find_index_error reports the first violation in index order, whichever chunk finds it first
// (kThreeChunks runs the last chunk first).
void test_index_checks() {
  const auto error = [](std::vector<int32_t> crow, std::vector<int32_t> col, int64_t cols, bool check_columns) {
    return find_index_error(crow.data(), int64_t(crow.size()) - 1, col.data(), int64_t(col.size()), cols,
                            check_columns, kThreeChunks);
  };
  expect(error({0, 2, 2, 3}, {1, 4, 0}, 5, true).empty(), "valid CSR passes");
  expect(error({0}, {}, 0, true).empty(), "an empty matrix passes");
  expect(error({1, 2, 3}, {0, 0}, 5, true) == "crow_indices[0] must be 0, got 1", "crow[0]");
  expect(error({0, 1, 3}, {0, 0}, 5, true) ==
             "crow_indices[-1] must equal the number of stored entries (2), got 3", "crow[-1]");
  expect(error({0, 2, 1, 2, 2, 2, 1, 2}, {0, 0}, 5, true) ==
             "crow_indices must be non-decreasing, but crow_indices[1]=2 > crow_indices[2]=1",
         "the first decreasing row pointer, not the last chunk's");
  const std::vector<int32_t> crow{0, 1, 2, 3, 4, 5, 6};
  expect(error(crow, {0, 9, 1, 2, -1, 7}, 5, true) == "col_indices[1]=9 is out of range [0, 5)",
         "the first out-of-range column");
  expect(error(crow, {0, 1, 1, 2, -1, 3}, 5, true) == "col_indices[4]=-1 is out of range [0, 5)",
         "a negative column");
  expect(error(crow, {0, 9, 1, 2, -1, 7}, 5, false).empty(), "columns unchecked when not asked");
}

// The CUDA CSR kernel (csr_spmm.cu) reads a row as a scalar head and a vector body when VEC > 1,
// then a scalar tail from body_end: every entry must be read exactly once, the body aligned.
template <int VEC>
void test_vector_span() {
  for (int64_t start = 0; start < 12; ++start) {
    for (int64_t end = start; end < 24; ++end) {
      const sparse_rt::VectorSpan span = sparse_rt::vector_span<VEC>(start, end);
      const std::string what = "vector_span<" + std::to_string(VEC) + ">(" + std::to_string(start) + ", " +
                               std::to_string(end) + ")";
      std::vector<int> reads(end, 0);
      if (VEC > 1) {
        for (int64_t e = start; e < span.head_end; ++e) ++reads[e];
        for (int64_t e = span.head_end; e < span.body_end; e += VEC) {
          expect(e % VEC == 0, what + ": a vector load starts aligned");
          expect(e + VEC <= end, what + ": a vector load ends within the row");
          for (int64_t i = e; i < e + VEC && i < end; ++i) ++reads[i];
        }
      }
      for (int64_t e = span.body_end; e < end; ++e) ++reads[e];
      expect(std::count(reads.begin() + start, reads.end(), 1) == end - start, what + " reads each entry once");
    }
  }
}

// The CUDA kernels take crow unchecked and read each row through row_extent (row_extent.h). For
// every crow of 3 rows over a set of values that includes the int32 extremes, and a few nnz: each
// row's reads (as csr_spmm.cu makes them, head, int4 body and tail) stay within [0, nnz); a crow
// that passes the CPU op's check reads every entry exactly once with no malformed row, and any
// other crow leaves at least one row malformed, whose sums start at NaN.
void test_row_extent() {
  constexpr int64_t kRows = 3;
  for (const int64_t nnz : {0, 1, 3, 9}) {
    const std::vector<int32_t> values = {std::numeric_limits<int32_t>::min(), -1, 0, 1, 2, 3, 5, 9,
                                         std::numeric_limits<int32_t>::max()};
    const size_t n = values.size();
    for (size_t code = 0; code < n * n * n * n; ++code) {
      int32_t crow[kRows + 1];
      for (size_t i = 0, c = code; i <= kRows; ++i, c /= n) crow[i] = values[c % n];
      std::string what = "crow [";
      for (const int32_t c : crow) what += std::to_string(c) + " ";
      what += "] nnz " + std::to_string(nnz);
      const bool cpu_accepts = crow[0] == 0 && crow[kRows] == nnz && crow[0] <= crow[1] &&
                               crow[1] <= crow[2] && crow[2] <= crow[3];
      std::vector<int> reads(nnz, 0);
      int malformed = 0;
      for (int64_t row = 0; row < kRows; ++row) {
        const sparse_rt::RowExtent r = sparse_rt::row_extent(crow, kRows, row, nnz);
        const float init = sparse_rt::row_sum_init(r);
        expect(0 <= r.start && r.start <= r.end && r.end <= nnz, what + ": row within [0, nnz]");
        expect(r.valid ? init == 0.f : std::isnan(init), what + ": sums start at 0, or NaN when malformed");
        expect(r.valid || r.start == r.end, what + ": a malformed row reads nothing");
        malformed += !r.valid;
        const sparse_rt::VectorSpan span = sparse_rt::vector_span<4>(r.start, r.end);
        for (int64_t e = r.start; e < span.head_end; ++e) ++reads.at(e);
        for (int64_t e = span.head_end; e < span.body_end; e += 4)
          for (int64_t i = e; i < e + 4; ++i) ++reads.at(i);
        for (int64_t e = span.body_end; e < r.end; ++e) ++reads.at(e);
      }
      if (cpu_accepts) {
        expect(malformed == 0, what + ": a valid crow has no malformed row");
        expect(std::count(reads.begin(), reads.end(), 1) == nnz, what + ": a valid crow reads each entry once");
      } else {
        expect(malformed > 0, what + ": a crow the CPU op refuses leaves a malformed row");
      }
    }
  }
}

// Attention against softmax and sums in double, the operands in three different layouts (query
// token-major as a linear layer's output, key head-major, value with padding between tokens), the
// output token-major; written NaN first, so that an element left unwritten fails. Scores span a wide
// range (scale 3), so that most probabilities underflow in some rows.
void test_attention(AttentionShape s, float scale) {
  std::mt19937 g(unsigned(s.batch * 1000 + s.queries * 37 + s.keys * 11 + s.head_dim));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int64_t h = s.heads, d = s.head_dim, value_stride = d + 3;
  std::vector<float> q(s.batch * s.queries * h * d), k(s.batch * h * s.keys * d),
      v(s.batch * s.keys * h * value_stride);
  for (auto* t : {&q, &k, &v}) {
    for (auto& x : *t) x = u(g);
  }
  std::vector<float> out(s.batch * s.queries * h * d, NAN);
  const HeadsView<const float> qv{q.data(), s.queries * h * d, d, h * d};
  const HeadsView<const float> kv{k.data(), h * s.keys * d, s.keys * d, d};
  const HeadsView<const float> vv{v.data(), s.keys * h * value_stride, value_stride, h * value_stride};
  const HeadsView<float> ov{out.data(), s.queries * h * d, d, h * d};
  scaled_dot_product_attention(s, qv, kv, vv, scale, ov, kThreeChunks);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t hh = 0; hh < h; ++hh) {
      for (int64_t i = 0; i < s.queries; ++i) {
        std::vector<double> p(s.keys);
        double most = -INFINITY, sum = 0;
        for (int64_t j = 0; j < s.keys; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < d; ++e) dot += double(qv.row(b, hh, i)[e]) * kv.row(b, hh, j)[e];
          p[j] = scale * dot;
          most = std::max(most, p[j]);
        }
        for (auto& x : p) sum += x = std::exp(x - most);
        for (int64_t e = 0; e < d; ++e) {
          double ref = 0;
          for (int64_t j = 0; j < s.keys; ++j) ref += p[j] / sum * vv.row(b, hh, j)[e];
          const std::string where = std::to_string(s.queries) + "x" + std::to_string(s.keys) + "x" +
                                    std::to_string(d) + " at (" + std::to_string(b) + ", " + std::to_string(hh) +
                                    ", " + std::to_string(i) + ", " + std::to_string(e) + ")";
          expect(std::fabs(ov.row(b, hh, i)[e] - ref) <= 1e-5, "attention " + where);
        }
      }
    }
  }
}

void test_attention() {
  test_attention({1, 2, 16, 16, 64}, 0.125f);
  test_attention({2, 3, 37, 5, 20}, 3.f);   // queries and keys off the block and vector sizes
  test_attention({1, 1, 1, 1, 1}, 1.f);
  test_attention({1, 2, 9, 70, 48}, 3.f);   // keys: two 32-wide score tiles and a 16-wide one
  test_attention({2, 2, 8, 33, 17}, -0.5f);  // a negative scale: the maximum is taken after scaling
  // Rows of whole vectors: the values and each whole block of queries read in place (their tokens
  // strided), the last short block copied.
  test_attention({1, 2, 20, 40, 32}, 0.3f);
  test_attention({1, 2, 128, 128, 64}, 0.125f);  // BERT-base's heads
}

// add_layer_norm against mean and variance in double; rows of cols not a multiple of 16 take the
// scalar tail, one column normalises to bias, and the output is written NaN first.
void test_add_layer_norm(int64_t rows, int64_t cols, bool affine) {
  std::mt19937 g(unsigned(rows * 31 + cols));
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  std::vector<float> x(rows * cols), residual(rows * cols), weight(cols), bias(cols), y(rows * cols, NAN);
  for (auto* t : {&x, &residual, &weight, &bias}) {
    for (auto& v : *t) v = u(g);
  }
  const float eps = 1e-5f;
  add_layer_norm(x.data(), residual.data(), affine ? weight.data() : nullptr, affine ? bias.data() : nullptr, rows,
                 cols, eps, y.data(), kThreeChunks);
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < cols; ++j) mean += double(x[r * cols + j]) + residual[r * cols + j];
    mean /= double(cols);
    for (int64_t j = 0; j < cols; ++j) {
      const double d = double(x[r * cols + j]) + residual[r * cols + j] - mean;
      var += d * d;
    }
    var /= double(cols);
    for (int64_t j = 0; j < cols; ++j) {
      double ref = (double(x[r * cols + j]) + residual[r * cols + j] - mean) / std::sqrt(var + eps);
      if (affine) ref = ref * weight[j] + bias[j];
      expect(std::fabs(y[r * cols + j] - ref) <= 1e-5 * std::max(1.0, std::fabs(ref)),
             "add_layer_norm " + std::to_string(rows) + "x" + std::to_string(cols) + " at (" + std::to_string(r) +
                 ", " + std::to_string(j) + ")");
    }
  }
}

void test_add_layer_norm() {
  test_add_layer_norm(5, 768, true);
  test_add_layer_norm(7, 37, true);   // two vectors and a tail of 5
  test_add_layer_norm(3, 9, false);  // no whole vector
  test_add_layer_norm(4, 1, true);   // one column: (s - mean) is 0, the output is the bias
}

// max_pool2d_nhwc_to_nchw against a scalar reference: channels that fill whole vectors, leave a
// remainder or fill none, windows cut by the padding, a NaN (which wins) and -inf in the input.
void test_max_pool(PoolShape s) {
  s.out_h = (s.height + 2 * s.pad_h - s.kernel_h) / s.stride_h + 1;
  s.out_w = (s.width + 2 * s.pad_w - s.kernel_w) / s.stride_w + 1;
  std::mt19937 rng(unsigned(s.channels * 7 + s.width));
  std::vector<float> x(s.batch * s.height * s.width * s.channels);  // [batch, height, width, channels]
  for (auto& v : x) v = exact_value(rng);
  x[3] = -std::numeric_limits<float>::infinity();
  x[x.size() / 2] = NAN;
  std::vector<float> y(s.batch * s.channels * s.out_h * s.out_w, 12345.f);
  max_pool2d_nhwc_to_nchw(s, x.data(), y.data(), kThreeChunks);
  for (int64_t n = 0; n < s.batch; ++n) {
    for (int64_t c = 0; c < s.channels; ++c) {
      for (int64_t oy = 0; oy < s.out_h; ++oy) {
        for (int64_t ox = 0; ox < s.out_w; ++ox) {
          float ref = -std::numeric_limits<float>::infinity();
          for (int64_t iy = oy * s.stride_h - s.pad_h; iy < oy * s.stride_h - s.pad_h + s.kernel_h; ++iy) {
            for (int64_t ix = ox * s.stride_w - s.pad_w; ix < ox * s.stride_w - s.pad_w + s.kernel_w; ++ix) {
              if (iy < 0 || iy >= s.height || ix < 0 || ix >= s.width) continue;
              const float v = x[((n * s.height + iy) * s.width + ix) * s.channels + c];
              if (v > ref || std::isnan(v)) ref = v;
            }
          }
          const float got = y[((n * s.channels + c) * s.out_h + oy) * s.out_w + ox];
          expect(std::isnan(ref) ? std::isnan(got) : got == ref,
                 "max_pool2d channels " + std::to_string(s.channels) + " at (" + std::to_string(n) + ", " +
                     std::to_string(c) + ", " + std::to_string(oy) + ", " + std::to_string(ox) + ")");
        }
      }
    }
  }
}

void test_max_pool() {
  // batch, channels, height, width, kernel, stride, padding (out_h, out_w filled in)
  test_max_pool({2, 64, 15, 37, 3, 3, 2, 2, 1, 1, 0, 0});
  test_max_pool({1, 20, 9, 7, 3, 2, 1, 2, 1, 0, 0, 0});
  test_max_pool({3, 5, 6, 6, 2, 2, 2, 2, 0, 0, 0, 0});
}

// The in-register transpose of the SpMM packing and stores, on each vector width.
template <typename Vec>
void test_transpose() {
  constexpr int kLanes = kLanesOf<Vec>;
  Vec rows[kLanes];
  for (int i = 0; i < kLanes; ++i) {
    for (int j = 0; j < kLanes; ++j) rows[i][j] = float(i * kLanes + j);
  }
  transpose(rows);
  bool ok = true;
  for (int i = 0; i < kLanes; ++i) {
    for (int j = 0; j < kLanes; ++j) ok = ok && rows[i][j] == float(j * kLanes + i);
  }
  expect(ok, "transpose of a " + std::to_string(kLanes) + "x" + std::to_string(kLanes) + " block");
}

}  // namespace

int main() {
  test_16bit_conversions();
  test_gelu(Gelu::kExact);
  test_gelu(Gelu::kTanh);
  test_gelu_extremes(Gelu::kExact);
  test_gelu_extremes(Gelu::kTanh);
  test_transpose<vec8>();
  test_transpose<vec16>();
  test_vector_span<1>();
  test_vector_span<4>();
  test_row_extent();
  test_balanced_rows();
  test_index_checks();
  test_conv_layout_is_bounded();
  test_unfolded_layout_rules();
  test_bottleneck_band_rows();
  test_clamped_packing();
  test_attention();
  test_add_layer_norm();
  test_max_pool();
  test_value_type<float>();
  test_value_type<half_t>();
  test_value_type<bfloat16_t>();
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("cpu kernel tests passed\n");
  return 0;
}
