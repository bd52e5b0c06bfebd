// Tile's backward (minicnn/ops/tile.py): dx[m, d] = the sum over t of dy[m, t, d] with dy seen
// as (M, tiles, D), added copy by copy in Caffe's order (t = 0, 1, ...), as the reference does,
// so the GPU's result is the CPU's bit for bit. One thread per element of dx.
#include "common.cuh"

template <typename T>
__global__ void tile_backward(const T* dy, T* dx, int tiles, long long inner, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    long long m = mc::div_(i, inner), d = i - m * inner;
    const T* row = dy + m * tiles * inner + d;
    T sum = row[0];
    for (int t = 1; t < tiles; ++t) sum += row[t * inner];
    dx[i] = sum;
  }
}
