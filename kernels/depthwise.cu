// Depthwise convolution, direct (minicnn/ops/conv.py with C == group): filter f reads only input
// channel f / M (M = F / C, the channel multiplier); w is (F, 1, kh, kw). No im2col: each output
// is a kh x kw dot product read straight from x (neighbouring threads share most of their
// inputs through the cache), each input gradient a gather over the windows that read it.
#include "common.cuh"

// y[n, f, y, z] = b[f] + sum_{i, j} w[f, i, j] x[n, f / M, y sh + i dh - ph, z sw + j dw - pw]
template <typename T>
__global__ void depthwise_forward(const T* x, const T* w, const T* b, T* y, int C, int H, int W,
                                  int M, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                  int dw, int oh, int ow, int has_bias, long long n) {
  int F = C * M;
  MINICNN_KERNEL_LOOP(idx, n) {               // n = N * F * oh * ow
    int z = (int)(idx % ow);
    long long t = idx / ow;
    int yy = (int)(t % oh);
    t /= oh;
    int f = (int)(t % F);
    long long img = t / F;
    const T* xp = x + (img * C + f / M) * (long long)H * W;
    const T* wp = w + (long long)f * kh * kw;
    int h0 = yy * sh - ph, w0 = z * sw - pw;
    T acc = T(0);
    for (int i = 0; i < kh; ++i) {
      int h = h0 + i * dh;
      if (h < 0 || h >= H) continue;
      for (int j = 0; j < kw; ++j) {
        int ww = w0 + j * dw;
        if (ww >= 0 && ww < W) acc += wp[i * kw + j] * xp[(long long)h * W + ww];
      }
    }
    y[idx] = has_bias ? acc + b[f] : acc;
  }
}

// dx[n, c, h, w] = sum over the M filters of channel c and the taps whose window covers (h, w)
template <typename T>
__global__ void depthwise_backward_data(const T* dy, const T* w, T* dx, int C, int H, int W,
                                        int M, int kh, int kw, int sh, int sw, int ph, int pw,
                                        int dh, int dw, int oh, int ow, long long n) {
  long long P = (long long)oh * ow;
  MINICNN_KERNEL_LOOP(idx, n) {               // n = N * C * H * W
    int ww = (int)(idx % W);
    long long t = idx / W;
    int h = (int)(t % H);
    t /= H;
    int c = (int)(t % C);
    long long img = t / C;
    T acc = T(0);
    for (int m = 0; m < M; ++m) {
      int f = c * M + m;
      const T* dyp = dy + (img * C * M + f) * P;
      const T* wp = w + (long long)f * kh * kw;
      for (int i = 0; i < kh; ++i) {
        int hp = h + ph - i * dh;
        if (hp < 0 || hp % sh) continue;
        int yy = hp / sh;
        if (yy >= oh) continue;
        for (int j = 0; j < kw; ++j) {
          int wq = ww + pw - j * dw;
          if (wq < 0 || wq % sw) continue;
          int z = wq / sw;
          if (z >= ow) continue;
          acc += wp[i * kw + j] * dyp[(long long)yy * ow + z];
        }
      }
    }
    dx[idx] = acc;
  }
}

// dw[f, i, j] += sum over (n, y, z) of dy[n, f, y, z] x[n, f / M, y sh + i dh - ph, z sw + j dw - pw]
// Grid (F * kh * kw, splits), 256 threads: block (f, tap) sums its share of the N * oh * ow
// positions, reduces in shared memory and adds the total to dw (atomically: splits > 1).
template <typename T>
__global__ void depthwise_backward_filter(const T* dy, const T* x, T* dw, int N, int C, int H,
                                          int W, int M, int kh, int kw, int sh, int sw, int ph,
                                          int pw, int dh, int dwid, int oh, int ow) {
  __shared__ T shared[256];
  int taps = kh * kw;
  int f = blockIdx.x / taps, tap = blockIdx.x % taps;
  int i = tap / kw, j = tap % kw;
  int c = f / M;
  long long P = (long long)oh * ow, total = (long long)N * P;
  T acc = T(0);
  for (long long q = (long long)blockIdx.y * blockDim.x + threadIdx.x; q < total;
       q += (long long)blockDim.x * gridDim.y) {
    long long img = q / P;
    int p = (int)(q % P);
    int h = (p / ow) * sh + i * dh - ph, ww = (p % ow) * sw + j * dwid - pw;
    if (h >= 0 && h < H && ww >= 0 && ww < W)
      acc += dy[(img * C * M + f) * P + p] * x[(img * C + c) * (long long)H * W +
                                               (long long)h * W + ww];
  }
  acc = mc::block_sum(acc, shared);
  if (threadIdx.x == 0) atomicAdd(dw + (long long)f * taps + tap, acc);
}
