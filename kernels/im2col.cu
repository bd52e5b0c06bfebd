// Convolution as im2col + GEMM (minicnn/ops/conv.py): the column matrices and helpers around
// the cuBLAS products.
//
// Column layout, general enough for both uses: the entry of image n, row r = (c * kh + i) * kw + j
// (channel c, tap i, j) and output position p = y * ow + z sits at
//     cols[n * col_n_stride + r * col_row_stride + p]
// image-major (n, C*kh*kw, P): col_n_stride = C*kh*kw*P, col_row_stride = P (forward: one
// batched GEMM writes NCHW directly); row-major over the chunk (C*kh*kw, nb*P):
// col_n_stride = P, col_row_stride = nb*P (backward: one GEMM sums over every image).
#include "common.cuh"

// one thread per (image, channel, output position), looping over the kh x kw taps
template <typename T>
__global__ void im2col(const T* x, T* cols, int C, int H, int W, int kh, int kw, int sh, int sw,
                       int ph, int pw, int dh, int dw, int oh, int ow, long long col_n_stride,
                       long long col_row_stride, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {               // n = images * C * oh * ow
    int z = (int)mc::mod_(idx, ow);
    long long t = mc::div_(idx, ow);
    int y = (int)mc::mod_(t, oh);
    t = mc::div_(t, oh);
    int c = (int)mc::mod_(t, C);
    long long img = mc::div_(t, C);
    const T* xp = x + (img * C + c) * (long long)H * W;
    T* out = cols + img * col_n_stride + (long long)c * kh * kw * col_row_stride +
             (long long)y * ow + z;
    int h0 = y * sh - ph, w0 = z * sw - pw;
    for (int i = 0; i < kh; ++i) {
      int h = h0 + i * dh;
      bool row_in = h >= 0 && h < H;
      for (int j = 0; j < kw; ++j) {
        int w = w0 + j * dw;
        *out = (row_in && w >= 0 && w < W) ? xp[(long long)h * W + w] : T(0);
        out += col_row_stride;
      }
    }
  }
}

// The adjoint: each pixel gathers the column entries read from it (taps in im2col's order, no
// atomics); entries on padding are dropped. Assigns x (every pixel is written).
template <typename T>
__global__ void col2im(const T* cols, T* x, int C, int H, int W, int kh, int kw, int sh, int sw,
                       int ph, int pw, int dh, int dw, int oh, int ow, long long col_n_stride,
                       long long col_row_stride, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {               // n = images * C * H * W
    int w = (int)mc::mod_(idx, W);
    long long t = mc::div_(idx, W);
    int h = (int)mc::mod_(t, H);
    t = mc::div_(t, H);
    int c = (int)mc::mod_(t, C);
    long long img = mc::div_(t, C);
    const T* base = cols + img * col_n_stride + (long long)c * kh * kw * col_row_stride;
    T acc = T(0);
    for (int i = 0; i < kh; ++i) {
      int hp = h + ph - i * dh;               // = y * sh for the window y that reads (h, w)
      if (hp < 0 || hp % sh) continue;
      int y = hp / sh;
      if (y >= oh) continue;
      for (int j = 0; j < kw; ++j) {
        int wp = w + pw - j * dw;
        if (wp < 0 || wp % sw) continue;
        int z = wp / sw;
        if (z >= ow) continue;
        acc += base[(long long)(i * kw + j) * col_row_stride + (long long)y * ow + z];
      }
    }
    x[idx] = acc;
  }
}

// y[n, f, p] += b[f]: the bias of a convolution (P = oh * ow) or an inner product (P = 1)
template <typename T>
__global__ void channel_bias_add(T* y, const T* b, int F, long long P, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] += b[mc::mod_(mc::div_(i, P), F)]; }
}

// dst[f, m, p] = src[m, f, p]: (images, F, P) -> (F, images, P), so that a GEMM over
// (F, images * P) sums over every image of the chunk at once
template <typename T>
__global__ void nfp_to_fnp(const T* src, T* dst, int F, long long P, long long images,
                           long long n) {
  MINICNN_KERNEL_LOOP(i, n) {                 // i indexes dst
    long long p = mc::mod_(i, P);
    long long t = mc::div_(i, P);
    long long img = mc::mod_(t, images);
    long long f = mc::div_(t, images);
    dst[i] = src[(img * F + f) * P + p];
  }
}
