// Eltwise MAX (minicnn/ops/eltwise.py; SUM and PROD are CuPy ufuncs with out=). Bottoms are
// folded in one at a time, as the reference does: the first step compares x0 > x1 (a tie goes to
// bottom 1), each later bottom takes over only where strictly greater.
#include "common.cuh"

template <typename T>
__global__ void eltwise_max_first(const T* a, const T* b, T* y, int* argmax, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    bool first = a[i] > b[i];
    T v = first ? a[i] : b[i];
    argmax[i] = first ? 0 : 1;
    y[i] = v;
  }
}

template <typename T>
__global__ void eltwise_max_next(const T* x, T* y, int* argmax, int k, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    if (x[i] > y[i]) {
      y[i] = x[i];
      argmax[i] = k;
    }
  }
}

// dx_k = dy where bottom k was the maximum, else 0
template <typename T>
__global__ void eltwise_max_backward(const T* dy, const int* argmax, T* dx, int k, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { dx[i] = argmax[i] == k ? dy[i] : T(0); }
}
