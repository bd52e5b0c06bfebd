// Embed (minicnn/ops/embed.py): a lookup of rows of w (K, N) by index, and its gradient.
// Indices arrive as long long; the layer's bottom (floats holding integers) is turned into them
// by embed_indices, which also flags the bad ones on the device (read later, with the loss, as
// the softmax loss's labels are). An index outside [0, K) is never used to address w or dw: its
// row of y is the bias alone and it adds nothing to dw.
#include "common.cuh"

// idx[i] = x[i] when it is an integer in [0, K) (the reference's trunc(x) == x and the range;
// NaN and the infinities fail), else -1 and bad[0] = 1 (every such thread stores the same 1)
template <typename T>
__global__ void embed_indices(const T* x, long long* idx, int* bad, long long K, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    bool ok = mc::trunc_(v) == v && v >= T(0) && v < T(K);
    idx[i] = ok ? (long long)v : -1;
    if (!ok) bad[0] = 1;
  }
}

// y (M, N): y[m, j] = w[idx[m], j] + b[j] (b read when has_bias), one thread an element
template <typename T>
__global__ void embed_forward(const long long* idx, const T* w, const T* b, T* y, int has_bias,
                              long long N, long long K, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    long long m = mc::div_(i, N), j = i - m * N;
    long long k = idx[m];
    T v = (k >= 0 && k < K) ? w[k * N + j] : T(0);
    y[i] = has_bias ? v + b[j] : v;
  }
}

// dw[idx[m], j] += dy[m, j]: rows sharing an index add up (atomics: in no fixed order)
template <typename T>
__global__ void embed_backward(const T* dy, const long long* idx, T* dw, long long N, long long K,
                               long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    long long m = mc::div_(i, N), j = i - m * N;
    long long k = idx[m];
    if (k >= 0 && k < K) atomicAdd(dw + k * N + j, dy[i]);
  }
}
