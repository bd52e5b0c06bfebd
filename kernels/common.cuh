// Shared by the kernels of minicnn: the grid-stride loop, type-generic math, block reductions.
//
// Every .cu file here is compiled at run time by CuPy (NVRTC, no system headers), once for
// float and once for double: kernels are `template <typename T> __global__ void <op name>(...)`
// and minicnn/cuda.py instantiates <float> and <double> of each. Element counts are long long;
// shapes are int. Only CUDA built-ins and the math functions NVRTC provides are used here, so
// the same sources also build for the host emulator of the tests (tests/cuda_emu/emu.h).
#pragma once

// for (i = this thread's first index; i < n; i += every thread of the grid)
#define MINICNN_KERNEL_LOOP(i, n)                                                       \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
       i += (long long)blockDim.x * gridDim.x)

// Index arithmetic: a / b and a % b for a >= 0, b > 0. Dividing a 64-bit integer by a value
// known only at run time is a long software routine on the GPU, a 32-bit division a few
// instructions; nearly every index fits in 31 bits, and those take the 32-bit path (the branch
// goes the same way for every thread of a launch but for the largest arrays).
namespace mc {
__device__ __forceinline__ long long div_(long long a, long long b) {
  return ((a | b) >> 31) ? a / b : (long long)((unsigned)a / (unsigned)b);
}
__device__ __forceinline__ long long mod_(long long a, long long b) {
  return ((a | b) >> 31) ? a % b : (long long)((unsigned)a % (unsigned)b);
}
}  // namespace mc

#define MINICNN_FLT_MAX 3.402823466e+38F   // Caffe's -FLT_MAX starts max pooling, in both dtypes
#define MINICNN_FLT_MIN 1.175494351e-38F   // the softmax loss clamps p here, in both dtypes

namespace mc {

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float expm1_(float x) { return expm1f(x); }
__device__ __forceinline__ double expm1_(double x) { return expm1(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }
__device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_(double x) { return sqrt(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float pow_(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double pow_(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float trunc_(float x) { return truncf(x); }
__device__ __forceinline__ double trunc_(double x) { return trunc(x); }
__device__ __forceinline__ float abs_(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_(double x) { return fabs(x); }

// Products and sums rounded one at a time, never contracted into a fused multiply-add: where the
// GPU must compute bit for bit what the CPU does (the solver's step). CuPy compiles every kernel
// with -ftz=true, which makes __fmul_rn & co flush subnormals to zero (FMUL.FTZ), and a momentum
// history that decays (a parameter whose gradient is 0) goes subnormal after ~800 steps; the PTX
// instructions without .ftz keep subnormals, as the CPU does. (double has no flush.)
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float mul_rn(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float add_rn(float a, float b) {
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float sub_rn(float a, float b) {
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
#else                                  // the host emulator (tests/cuda_emu): plain C++ floats
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
#endif
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

template <typename T> __device__ __forceinline__ T max_(T a, T b) { return a > b ? a : b; }
template <typename T> __device__ __forceinline__ T min_(T a, T b) { return a < b ? a : b; }

// Sum of v over the block's threads (blockDim.x a power of two, at most 1024); every thread of
// the block must call it. `shared` holds blockDim.x values. The result is returned to all.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  A total = shared[0];
  __syncthreads();                     // before anyone reuses `shared`
  return total;
}

// The largest v over the block's threads, returned to all (as block_sum; every thread calls it)
template <typename A>
__device__ __forceinline__ A block_max(A v, A* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = max_(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  A total = shared[0];
  __syncthreads();
  return total;
}

}  // namespace mc
