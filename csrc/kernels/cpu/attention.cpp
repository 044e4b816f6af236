#include "attention.h"

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "vectors.h"

namespace sparse_rt::cpu {
namespace {

// Rows are padded to a multiple of 16 floats: whole vectors of either width.
constexpr int64_t kPad = 16;
int64_t whole_vectors(int64_t n) { return (n + kPad - 1) / kPad * kPad; }

// Wide's lanes as int32 (GCC takes no vector_size that depends on a template parameter).
typedef int32_t vec16i __attribute__((vector_size(64)));
typedef int32_t vec8i __attribute__((vector_size(32)));
template <typename Wide>
using IntsOf = std::conditional_t<kLanesOf<Wide> == 16, vec16i, vec8i>;

// e^x for x <= 0 (scores less their row's maximum; -inf included): x = n ln2 + r with
// |r| <= ln2 / 2, e^r by its Taylor polynomial of degree 6 (truncation below 1.2e-7 relative),
// 2^n written into the exponent bits. Below -87 the result is flushed to 0 (2^n would be subnormal).
// In place: a vector passed by value would cross a function boundary (vectors.h).
template <typename Wide>
[[gnu::always_inline]] inline void exp_nonpositive(Wide& e) {
  const auto underflow = e < -87.f;
  const Wide x = underflow ? Wide{} : e;
  const Wide round = Wide{} + 0x1.8p23f;  // adding then subtracting it rounds to an integer
  const Wide n = (x * 1.44269504f + round) - round;
  const Wide r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 in two parts: r is exact
  Wide p = r * (1.f / 720) + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const IntsOf<Wide> bits = (__builtin_convertvector(n, IntsOf<Wide>) + 127) << 23;
  Wide two_n;
  __builtin_memcpy(&two_n, &bits, sizeof two_n);
  e = underflow ? Wide{} : p * two_n;
}

// The register tile of the products: ROWS rows of VECS Wide vectors, as many accumulators as
// leave registers for the loads: 8 x 2 of AVX-512's 32 (16 FMAs per 10 loads), 4 x 3 of AVX2's 16
// (12 FMAs per 7 loads; 8 x 1 is bound by its 9 loads per 8 FMAs).
template <typename Wide>
constexpr int kTileRows = kLanesOf<Wide> == 16 ? 8 : 4;
template <typename Wide>
constexpr int kTileVecs = kLanesOf<Wide> == 16 ? 2 : 3;

// c[r][0, lanes * VECS) = sum over t < depth of a[r * lda + t] * b[t * ldb + (0, lanes * VECS)] for
// rows r < ROWS: the sums stay in registers, and each step loads VECS vectors of b and broadcasts
// one element of a per row.
template <typename Wide, int ROWS, int VECS>
[[gnu::always_inline]] inline void block_product(const float* a, int64_t lda, const float* b, int64_t ldb,
                                                 int64_t depth, float* c, int64_t ldc) {
  constexpr int kLanes = kLanesOf<Wide>;
  Wide acc[ROWS][VECS] = {};
  for (int64_t t = 0; t < depth; ++t) {
    Wide row[VECS];
#pragma GCC unroll 4
    for (int i = 0; i < VECS; ++i) row[i] = load<Wide>(b + t * ldb + kLanes * i);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const float s = a[r * lda + t];
#pragma GCC unroll 4
      for (int i = 0; i < VECS; ++i) acc[r][i] += s * row[i];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < ROWS; ++r) __builtin_memcpy(c + r * ldc, acc[r], sizeof acc[r]);
}

// c = a b for the kQueryBlock rows of a and columns [0, width) of b and c, width a multiple of
// kPad: whole tiles, then the columns left over one or two vectors at a time.
template <typename Wide>
[[gnu::always_inline]] inline void block_products(const float* a, int64_t lda, const float* b, int64_t ldb,
                                                  int64_t depth, int64_t width, float* c, int64_t ldc) {
  constexpr int kRows = kTileRows<Wide>, kVecs = kTileVecs<Wide>;
  constexpr int64_t kLanes = kLanesOf<Wide>;
  for (int r = 0; r < kQueryBlock; r += kRows) {
    const float* rows = a + r * lda;
    float* out = c + r * ldc;
    int64_t j = 0;
    for (; j + kVecs * kLanes <= width; j += kVecs * kLanes) {
      block_product<Wide, kRows, kVecs>(rows, lda, b + j, ldb, depth, out + j, ldc);
    }
    if constexpr (kVecs > 2) {
      if (j + 2 * kLanes <= width) {
        block_product<Wide, kRows, 2>(rows, lda, b + j, ldb, depth, out + j, ldc);
        j += 2 * kLanes;
      }
    }
    for (; j < width; j += kLanes) block_product<Wide, kRows, 1>(rows, lda, b + j, ldb, depth, out + j, ldc);
  }
}

// row[0, keys) <- e^(row - max), row[keys, padded) <- 0 (the scores arrive scaled: see
// transpose_keys); returns 1 / their sum.
template <typename Wide>
[[gnu::always_inline]] inline float softmax_numerators(float* row, int64_t keys, int64_t padded) {
  constexpr int kLanes = kLanesOf<Wide>;
  std::fill(row + keys, row + padded, -std::numeric_limits<float>::infinity());
  Wide most = Wide{} - std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < padded; j += kLanes) {
    const Wide s = load<Wide>(row + j);
    most = s > most ? s : most;
  }
  const float max = reduce_lanes(most, [](float a, float b) { return std::max(a, b); });
  Wide sums = {};
  for (int64_t j = 0; j < padded; j += kLanes) {
    Wide e = load<Wide>(row + j) - max;
    exp_nonpositive(e);
    __builtin_memcpy(row + j, &e, sizeof e);
    sums += e;
  }
  return 1.f / reduce_lanes(sums, [](float a, float b) { return a + b; });
}

// One thread's buffers, sized for one head and reused across its heads.
struct HeadBuffers {
  explicit HeadBuffers(const AttentionShape& s)
      : keys_padded(whole_vectors(s.keys)),
        dim_padded(whole_vectors(s.head_dim)),
        keys_t(s.head_dim * keys_padded),
        values(s.head_dim == dim_padded ? 0 : s.keys * dim_padded),
        queries(kQueryBlock * s.head_dim),
        scores(kQueryBlock * keys_padded),
        sums(kQueryBlock * dim_padded) {}
  int64_t keys_padded, dim_padded;
  std::vector<float> keys_t;   // [head_dim][keys_padded]: k transposed, padding columns 0
  std::vector<float> values;   // [keys][dim_padded]: v, padding columns 0 (head_dim not whole vectors)
  std::vector<float> queries;  // [kQueryBlock][head_dim]: a short block's queries, missing rows 0
  std::vector<float> scores;   // [kQueryBlock][keys_padded]
  std::vector<float> sums;     // [kQueryBlock][dim_padded]: probabilities times values
};

// keys_t[d * ld + j] = scale * k[b, h, j, d]: square blocks of Wide's lanes transposed in registers,
// the edges one by one. Scaled here, once per key, the scores need no pass of their own.
template <typename Wide>
[[gnu::always_inline]] inline void transpose_keys(const HeadsView<const float>& k, int64_t b, int64_t h,
                                                  int64_t keys, int64_t dim, float scale, int64_t ld,
                                                  float* keys_t) {
  constexpr int kLanes = kLanesOf<Wide>;
  const int64_t whole_keys = keys / kLanes * kLanes, whole_dim = dim / kLanes * kLanes;
  for (int64_t j0 = 0; j0 < whole_keys; j0 += kLanes) {
    for (int64_t d0 = 0; d0 < whole_dim; d0 += kLanes) {
      Wide block[kLanes];
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) block[i] = load<Wide>(k.row(b, h, j0 + i) + d0) * scale;
      transpose(block);
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) __builtin_memcpy(keys_t + (d0 + i) * ld + j0, &block[i], sizeof block[i]);
    }
  }
  for (int64_t j = 0; j < keys; ++j) {
    for (int64_t d = j < whole_keys ? whole_dim : 0; d < dim; ++d) keys_t[d * ld + j] = scale * k.row(b, h, j)[d];
  }
}

template <typename Wide>
[[gnu::always_inline]] inline void attend_head(const AttentionShape& shape, const HeadsView<const float>& q,
                                               const HeadsView<const float>& k, const HeadsView<const float>& v,
                                               float scale, const HeadsView<float>& out, int64_t b, int64_t h,
                                               HeadBuffers& buf) {
  const int64_t keys = shape.keys, dim = shape.head_dim, kp = buf.keys_padded, dp = buf.dim_padded;
  float* keys_t = buf.keys_t.data();
  transpose_keys<Wide>(k, b, h, keys, dim, scale, kp, keys_t);
  for (int64_t d = 0; d < dim; ++d) std::fill(keys_t + d * kp + keys, keys_t + (d + 1) * kp, 0.f);
  // Values whose rows are whole vectors are read in place; others are copied, padded with zeros.
  const float* values = v.row(b, h, 0);
  int64_t values_ld = v.token_stride;
  if (dim != dp) {
    for (int64_t j = 0; j < keys; ++j) {
      std::copy(v.row(b, h, j), v.row(b, h, j) + dim, buf.values.data() + j * dp);
      std::fill(buf.values.data() + j * dp + dim, buf.values.data() + (j + 1) * dp, 0.f);
    }
    values = buf.values.data();
    values_ld = dp;
  }

  float* scores = buf.scores.data();
  float* sums = buf.sums.data();
  for (int64_t i0 = 0; i0 < shape.queries; i0 += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, shape.queries - i0);
    // A whole block of queries is read in place; the last, short one copied with rows of zeros.
    const float* block = q.row(b, h, i0);
    int64_t block_ld = q.token_stride;
    if (rows < kQueryBlock) {
      float* copy = buf.queries.data();
      for (int64_t r = 0; r < kQueryBlock; ++r) {
        if (r < rows) {
          std::copy(q.row(b, h, i0 + r), q.row(b, h, i0 + r) + dim, copy + r * dim);
        } else {
          std::fill(copy + r * dim, copy + (r + 1) * dim, 0.f);
        }
      }
      block = copy;
      block_ld = dim;
    }
    block_products<Wide>(block, block_ld, keys_t, kp, dim, kp, scores, kp);
    float inverse_sum[kQueryBlock];
    for (int64_t r = 0; r < kQueryBlock; ++r) {
      inverse_sum[r] = softmax_numerators<Wide>(scores + r * kp, keys, kp);
    }
    block_products<Wide>(scores, kp, values, values_ld, keys, dp, sums, dp);
    for (int64_t r = 0; r < rows; ++r) {
      float* y = out.row(b, h, i0 + r);
      for (int64_t d = 0; d < dim; ++d) y[d] = sums[r * dp + d] * inverse_sum[r];
    }
  }
}

// Head `unit` of batch * heads, compiled for the running CPU.
void attend(const AttentionShape& shape, const HeadsView<const float>& q, const HeadsView<const float>& k,
            const HeadsView<const float>& v, float scale, const HeadsView<float>& out, int64_t unit,
            HeadBuffers& buf) {
  SPARSE_RT_DISPATCH_WIDE(attend_head<Wide>(shape, q, k, v, scale, out, unit / shape.heads, unit % shape.heads, buf))
}

}  // namespace

void scaled_dot_product_attention(const AttentionShape& shape, HeadsView<const float> q,
                                  HeadsView<const float> k, HeadsView<const float> v, float scale,
                                  HeadsView<float> out, const ParallelFor& pf) {
  const int64_t units = shape.batch * shape.heads;
  const int64_t work = 2 * shape.queries * shape.keys * shape.head_dim;  // multiply-adds per head
  const int64_t grain = work * units < kMinParallelWork ? std::max<int64_t>(units, 1) : 1;
  pf.run(0, units, grain, [&](int64_t begin, int64_t end) {
    HeadBuffers buf(shape);
    for (int64_t unit = begin; unit < end; ++unit) attend(shape, q, k, v, scale, out, unit, buf);
  });
}

}  // namespace sparse_rt::cpu
