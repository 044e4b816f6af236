// SPARSE_RT_HOST_DEVICE marks the inline helpers that both the CUDA kernels and host code (the
// C++ tests, the argument checks) compile: __host__ __device__ under nvcc, nothing otherwise.
#pragma once

#ifdef __CUDACC__
#define SPARSE_RT_HOST_DEVICE __host__ __device__
#else
#define SPARSE_RT_HOST_DEVICE
#endif
