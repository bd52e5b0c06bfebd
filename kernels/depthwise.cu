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
    int z = (int)mc::mod_(idx, ow);
    long long t = mc::div_(idx, ow);
    int yy = (int)mc::mod_(t, oh);
    t = mc::div_(t, oh);
    int f = (int)mc::mod_(t, F);
    long long img = mc::div_(t, F);
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
    int ww = (int)mc::mod_(idx, W);
    long long t = mc::div_(idx, W);
    int h = (int)mc::mod_(t, H);
    t = mc::div_(t, H);
    int c = (int)mc::mod_(t, C);
    long long img = mc::div_(t, C);
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
// Grid (F, splits) of 256 threads: block (f, s) walks its share of the N * oh * ow positions
// once, reading each dy value once and keeping one sum per tap in registers (a pass covers up
// to MINICNN_DW_TAPS taps: kernels up to 5x5 in one pass), then reduces each sum in shared
// memory and stores it as its split's part, partial[s][f][tap]; depthwise_filter_finish adds
// the parts into dw in split order (atomic adds would sum them in no fixed order: the last
// bits of dw, and so of training, would change from run to run).
#define MINICNN_DW_TAPS 25

template <typename T>
__global__ void depthwise_backward_filter(const T* dy, const T* x, T* partial, int N, int C,
                                          int H, int W, int M, int kh, int kw, int sh, int sw,
                                          int ph, int pw, int dh, int dwid, int oh, int ow) {
  __shared__ T shared[256];
  int f = blockIdx.x, taps = kh * kw;
  long long P = (long long)oh * ow, total = (long long)N * P;
  const T* dyf = dy + (long long)f * P;                     // image n: + n * C * M * P
  const T* xc = x + (long long)(f / M) * H * W;             // image n: + n * C * H * W
  for (int t0 = 0; t0 < taps; t0 += MINICNN_DW_TAPS) {
    T acc[MINICNN_DW_TAPS];
#pragma unroll
    for (int t = 0; t < MINICNN_DW_TAPS; ++t) acc[t] = T(0);
    int i0 = t0 / kw, j0 = t0 % kw;
    for (long long q = (long long)blockIdx.y * blockDim.x + threadIdx.x; q < total;
         q += (long long)blockDim.x * gridDim.y) {
      long long img = mc::div_(q, P);
      int p = (int)mc::mod_(q, P);
      T g = dyf[img * C * M * P + p];
      const T* xi = xc + img * C * (long long)H * W;
      int h0 = (p / ow) * sh - ph, w0 = (p % ow) * sw - pw;
      int i = i0, j = j0;
#pragma unroll
      for (int t = 0; t < MINICNN_DW_TAPS; ++t) {
        if (t0 + t < taps) {
          int h = h0 + i * dh, w = w0 + j * dwid;
          if (h >= 0 && h < H && w >= 0 && w < W) acc[t] += g * xi[(long long)h * W + w];
          if (++j == kw) {
            j = 0;
            ++i;
          }
        }
      }
    }
#pragma unroll
    for (int t = 0; t < MINICNN_DW_TAPS; ++t) {
      if (t0 + t < taps) {                    // the same for every thread: no divergent barrier
        T sum = mc::block_sum(acc[t], shared);
        if (threadIdx.x == 0)
          partial[((long long)blockIdx.y * gridDim.x + f) * taps + t0 + t] = sum;
      }
    }
  }
}

// dw[i] += partial[0][i] + partial[1][i] + ... (the splits' parts in order), i < count = F * taps
template <typename T>
__global__ void depthwise_filter_finish(const T* partial, T* dw, int splits, long long count) {
  MINICNN_KERNEL_LOOP(i, count) {
    T total = T(0);
    for (int s = 0; s < splits; ++s) total += partial[s * count + i];
    dw[i] += total;
  }
}
