// Inverted dropout (minicnn/ops/dropout.py): y = x * mask * scale with scale = 1 / (1 - ratio).
// The keep-mask comes from the layer's generator (drawn on the host, so a GPU run draws exactly
// what a CPU run would) as bytes; elementwise, so safe in place.
#include "common.cuh"

template <typename T>
__global__ void dropout_forward(const T* x, const bool* mask, T* y, T scale, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = x[i] * T(mask[i] ? 1 : 0) * scale; }
}
