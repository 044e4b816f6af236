// Overflow-checked int64 arithmetic for sizes derived from user-given geometry (kernel, stride,
// padding, dilation, channel counts): each value may be legal on its own while a product of them
// wraps, and a wrapped size allocates too little and then writes past it. Torch-free and
// CUDA-free (host code only), so the argument checks and the kernels' layout code share it.
#pragma once

#include <cstdint>

namespace sparse_rt {

// An int64 that remembers whether any operation that produced it overflowed.
class CheckedInt {
 public:
  constexpr CheckedInt(int64_t value) : value_(value) {}  // NOLINT(google-explicit-constructor)

  bool overflowed() const { return overflowed_; }
  int64_t value() const { return value_; }
  // Whether the value is exact and at most `limit`.
  bool at_most(int64_t limit) const { return !overflowed_ && value_ <= limit; }

  friend CheckedInt operator+(CheckedInt a, CheckedInt b) {
    CheckedInt r(0);
    r.overflowed_ = a.overflowed_ || b.overflowed_ || __builtin_add_overflow(a.value_, b.value_, &r.value_);
    return r;
  }
  friend CheckedInt operator*(CheckedInt a, CheckedInt b) {
    CheckedInt r(0);
    r.overflowed_ = a.overflowed_ || b.overflowed_ || __builtin_mul_overflow(a.value_, b.value_, &r.value_);
    return r;
  }
  // Division by a positive divisor cannot overflow; an overflowed dividend stays overflowed.
  friend CheckedInt operator/(CheckedInt a, int64_t positive_divisor) {
    CheckedInt r(a.value_ / positive_divisor);
    r.overflowed_ = a.overflowed_;
    return r;
  }

 private:
  int64_t value_;
  bool overflowed_ = false;
};

}  // namespace sparse_rt
