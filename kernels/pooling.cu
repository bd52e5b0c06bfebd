// Max and average pooling with Caffe's window rules (minicnn/ops/pool.py): window (y, z) covers
// rows y sh - ph .. y sh - ph + kh - 1 clipped to the image (the output size, with Caffe's
// rounding and drop-last rule, is decided on the host). Planes = N * C; one thread per output
// element forward, and backward one per input element (a gather: every dx written, no atomics;
// MAX without its geometry falls back to a scatter through the mask).
#include "common.cuh"

// MAX: y starts at -FLT_MAX and takes a value only if strictly greater, scanning the window in
// row-major order (ties go to the first maximum); mask = h * W + w of the maximum, -1 if none.
template <typename T>
__global__ void max_pool2d_forward(const T* x, T* y, long long* mask, int H, int W, int oh,
                                   int ow, int kh, int kw, int sh, int sw, int ph, int pw,
                                   long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {               // n = planes * oh * ow
    int z = (int)mc::mod_(idx, ow);
    long long t = mc::div_(idx, ow);
    int yy = (int)mc::mod_(t, oh);
    long long plane = mc::div_(t, oh);
    int h0 = yy * sh - ph, w0 = z * sw - pw;
    int hs = mc::max_(h0, 0), he = mc::min_(h0 + kh, H);
    int ws = mc::max_(w0, 0), we = mc::min_(w0 + kw, W);
    const T* xp = x + plane * H * W;
    T best = T(-MINICNN_FLT_MAX);
    long long arg = -1;
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) {
        T v = xp[(long long)h * W + w];
        if (v > best) {
          best = v;
          arg = (long long)h * W + w;
        }
      }
    y[idx] = best;
    mask[idx] = arg;
  }
}

// The windows y in [ys, ye), z in [zs, ze) whose rows and columns cover input pixel (h, w)
// (Caffe's phstart/phend): the range each backward gather walks
struct Covering {
  int ys, ye, zs, ze;
};

__device__ __forceinline__ Covering covering(int h, int w, int oh, int ow, int kh, int kw,
                                             int sh, int sw, int ph, int pw) {
  Covering c;
  c.ys = (h + ph < kh) ? 0 : (h + ph - kh) / sh + 1;
  c.ye = mc::min_((h + ph) / sh + 1, oh);
  c.zs = (w + pw < kw) ? 0 : (w + pw - kw) / sw + 1;
  c.ze = mc::min_((w + pw) / sw + 1, ow);
  return c;
}

// dx = the sum of dy over the windows whose maximum is this pixel, one thread per input element
// (Caffe's MaxPoolBackward): a gather over the windows that cover the pixel, in row-major window
// order, so overlapping windows (3x3 stride 2) add up in the order the CPU adds them, bit for
// bit, and every run alike. oh, ow: dy's own size (SPP's levels keep only their first windows).
template <typename T>
__global__ void max_pool2d_backward_gather(const T* dy, const long long* mask, T* dx, int H,
                                           int W, int oh, int ow, int kh, int kw, int sh, int sw,
                                           int ph, int pw, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {               // n = planes * H * W
    int w = (int)mc::mod_(idx, W);
    long long t = mc::div_(idx, W);
    int h = (int)mc::mod_(t, H);
    long long plane = mc::div_(t, H);
    const Covering c = covering(h, w, oh, ow, kh, kw, sh, sw, ph, pw);
    const long long here = (long long)h * W + w, first = plane * oh * ow;
    T acc = T(0);
    for (int yy = c.ys; yy < c.ye; ++yy)
      for (int z = c.zs; z < c.ze; ++z) {
        long long o = first + (long long)yy * ow + z;
        if (mask[o] == here) acc += dy[o];
      }
    dx[idx] = acc;
  }
}

// The same without the geometry (the op called with a mask alone): dx += dy at each window's
// maximum, dx zeroed first, a scatter whose overlapping windows add up atomically, in no fixed
// order (float sums may then differ in their last bits from run to run).
template <typename T>
__global__ void max_pool2d_backward(const T* dy, const long long* mask, T* dx, long long plane_in,
                                    long long plane_out, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {               // n = planes * oh * ow
    long long m = mask[idx];
    if (m >= 0) atomicAdd(dx + mc::div_(idx, plane_out) * plane_in + m, dy[idx]);
  }
}

// AVE: the window's divisor counts padding but not the overhang past it, taken before clipping;
// a window wholly outside the image (divisor <= 0) gives 0.
__device__ __forceinline__ int ave_divisor(int y, int z, int H, int W, int kh, int kw, int sh,
                                           int sw, int ph, int pw) {
  int h0 = y * sh - ph, w0 = z * sw - pw;
  int d = (mc::min_(h0 + kh, H + ph) - h0) * (mc::min_(w0 + kw, W + pw) - w0);
  return d > 0 ? d : 1;
}

template <typename T>
__global__ void ave_pool2d_forward(const T* x, T* y, int H, int W, int oh, int ow, int kh,
                                   int kw, int sh, int sw, int ph, int pw, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {
    int z = (int)mc::mod_(idx, ow);
    long long t = mc::div_(idx, ow);
    int yy = (int)mc::mod_(t, oh);
    long long plane = mc::div_(t, oh);
    int h0 = yy * sh - ph, w0 = z * sw - pw;
    int hs = mc::max_(h0, 0), he = mc::min_(h0 + kh, H);
    int ws = mc::max_(w0, 0), we = mc::min_(w0 + kw, W);
    const T* xp = x + plane * H * W;
    T total = T(0);
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) total += xp[(long long)h * W + w];
    y[idx] = total / T(ave_divisor(yy, z, H, W, kh, kw, sh, sw, ph, pw));
  }
}

template <typename T>
__global__ void ave_pool2d_backward(const T* dy, T* dx, int H, int W, int oh, int ow, int kh,
                                    int kw, int sh, int sw, int ph, int pw, long long n) {
  MINICNN_KERNEL_LOOP(idx, n) {
    int w = (int)mc::mod_(idx, W);
    long long t = mc::div_(idx, W);
    int h = (int)mc::mod_(t, H);
    long long plane = mc::div_(t, H);
    const Covering c = covering(h, w, oh, ow, kh, kw, sh, sw, ph, pw);
    const T* dyp = dy + plane * oh * ow;
    T acc = T(0);
    for (int yy = c.ys; yy < c.ye; ++yy)
      for (int z = c.zs; z < c.ze; ++z)
        acc += dyp[(long long)yy * ow + z] / T(ave_divisor(yy, z, H, W, kh, kw, sh, sw, ph, pw));
    dx[idx] = acc;
  }
}
