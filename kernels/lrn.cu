// Local response normalization (minicnn/ops/lrn.py), both regions. Window sums are direct loops
// in the reference's order (zero beyond the ends), one thread per element, reading from a
// separate input: the scale s (or b) goes to a temporary first, so y = x s^-beta and the
// backward formula are elementwise afterwards and safe in place.
#include "common.cuh"

// ACROSS_CHANNELS: s = k + alpha_n * sum of x^2 over channels c - half .. c + half
template <typename T>
__global__ void lrn_scale_across(const T* x, T* s, int C, long long inner, int half, T alpha_n,
                                 T k, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {               // n = N * C * inner
    long long pos = mc::mod_(idx, inner);
    int c = (int)mc::mod_(mc::div_(idx, inner), C);
    const T* base = x + mc::div_(mc::div_(idx, inner), C) * C * inner + pos;
    T sum = T(0);
    for (int j = c - half; j <= c + half; ++j)
      if (j >= 0 && j < C) {
        T v = base[(long long)j * inner];
        sum += v * v;
      }
    s[idx] = k + alpha_n * sum;
  }
}

// WITHIN_CHANNEL: b = 1 + alpha * (sum of x^2 over the n x n neighbourhood) / n^2, summed as
// the reference does (along H first, then those sums along W)
template <typename T>
__global__ void lrn_scale_within(const T* x, T* s, int H, int W, int half, T alpha, T area,
                                 long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {               // n = N * C * H * W
    int w = (int)mc::mod_(idx, W);
    int h = (int)mc::mod_(mc::div_(idx, W), H);
    const T* plane = x + mc::div_(idx, ((long long)H * W)) * H * W;
    T sum = T(0);
    for (int dw = -half; dw <= half; ++dw) {
      int ww = w + dw;
      if (ww < 0 || ww >= W) continue;
      T column = T(0);
      for (int dh = -half; dh <= half; ++dh) {
        int hh = h + dh;
        if (hh >= 0 && hh < H) {
          T v = plane[(long long)hh * W + ww];
          column += v * v;
        }
      }
      sum += column;
    }
    s[idx] = T(1) + alpha * (sum / area);
  }
}

// y = x s^-beta
template <typename T>
__global__ void lrn_apply(const T* x, const T* s, T* y, T beta, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = x[i] * mc::pow_(s[i], -beta); }
}

// r = dy y / s with y = x s^-beta: the terms the backward window sums
template <typename T>
__global__ void lrn_ratio(const T* dy, const T* x, const T* s, T* r, T beta, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { r[i] = dy[i] * (x[i] * mc::pow_(s[i], -beta)) / s[i]; }
}

// dx = dy s^-beta - coef x sum over the channel window of r   (coef = 2 alpha beta / n)
template <typename T>
__global__ void lrn_backward_across(const T* dy, const T* x, const T* s, const T* r, T* dx,
                                    int C, long long inner, int half, T beta, T coef,
                                    long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {
    long long pos = mc::mod_(idx, inner);
    int c = (int)mc::mod_(mc::div_(idx, inner), C);
    const T* base = r + mc::div_(mc::div_(idx, inner), C) * C * inner + pos;
    T sum = T(0);
    for (int j = c - half; j <= c + half; ++j)
      if (j >= 0 && j < C) sum += base[(long long)j * inner];
    dx[idx] = dy[idx] * mc::pow_(s[idx], -beta) - coef * x[idx] * sum;
  }
}

// dx = dy b^-beta - coef x (sum of r over the n x n neighbourhood)   (coef = 2 alpha beta / n^2)
template <typename T>
__global__ void lrn_backward_within(const T* dy, const T* x, const T* s, const T* r, T* dx,
                                    int H, int W, int half, T beta, T coef, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {
    int w = (int)mc::mod_(idx, W);
    int h = (int)mc::mod_(mc::div_(idx, W), H);
    const T* plane = r + mc::div_(idx, ((long long)H * W)) * H * W;
    T sum = T(0);
    for (int dw = -half; dw <= half; ++dw) {
      int ww = w + dw;
      if (ww < 0 || ww >= W) continue;
      T column = T(0);
      for (int dh = -half; dh <= half; ++dh) {
        int hh = h + dh;
        if (hh >= 0 && hh < H) column += plane[(long long)hh * W + ww];
      }
      sum += column;
    }
    dx[idx] = dy[idx] * mc::pow_(s[idx], -beta) - coef * x[idx] * sum;
  }
}
