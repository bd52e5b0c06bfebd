// Leaky ReLU (minicnn/ops/relu.py): y = x > 0 ? x : slope * x; the kink x == 0 takes the slope.
// Elementwise, so safe in place (y may be x, dx may be dy).
#include "common.cuh"

template <typename T>
__global__ void relu_forward(const T* x, T* y, T slope, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    y[i] = v > T(0) ? v : v * slope;
  }
}

template <typename T>
__global__ void relu_backward(const T* dy, const T* x, T* dx, T slope, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T g = dy[i];
    dx[i] = x[i] > T(0) ? g : g * slope;
  }
}
