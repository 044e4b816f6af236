// How a row's entries [start, end) split for VEC-wide vector loads, which need an index aligned to
// VEC: a scalar head up to the first aligned index, a vector body of whole VEC groups, and a
// scalar tail. With VEC == 1 there is no head and no body: the whole row is the tail.
// CUDA-free and torch-free, so the C++ kernel tests check the split on the host (a VEC == 1 split
// whose body ended at `end` once left every entry of misaligned views unread).
#pragma once

#include <cstdint>

#include "../host_device.h"

namespace sparse_rt {

struct VectorSpan {
  int64_t head_end;  // [start, head_end): scalar
  int64_t body_end;  // [head_end, body_end): VEC at a time; [body_end, end): scalar
};

template <int VEC>
SPARSE_RT_HOST_DEVICE inline VectorSpan vector_span(int64_t start, int64_t end) {
  static_assert(VEC >= 1, "a vector holds at least one entry");
  if (VEC == 1) return {start, start};
  const int64_t aligned = (start + VEC - 1) / VEC * VEC;
  const int64_t head_end = aligned < end ? aligned : end;
  return {head_end, head_end + (end - head_end) / VEC * VEC};
}

}  // namespace sparse_rt
