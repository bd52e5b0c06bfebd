// BatchNorm, Scale and Bias (minicnn/ops/batch_norm.py, scale.py, bias.py). Arrays are viewed as
// (outer, C, inner) around the channel (or the scale's) axis. Per-channel sums run on a grid of
// (C, splits) blocks of 256 threads: each block sums its share of the outer * inner values of
// channel c in double, reduces in shared memory and writes one partial, part[c * splits + s];
// a finishing kernel, one thread a channel, adds them up (no atomics: deterministic).
#include "common.cuh"

// visit(i) for the elements i of channel c that block (c, s) covers: rows o = s, s + splits, ...
// of the (outer, C, inner) view, each row's inner values taken by consecutive threads
// (coalesced, no division) when rows are long; for short rows (inner < 32, e.g. BatchNorm after
// an InnerProduct) a flat walk over the outer * inner values instead.
template <typename F>
__device__ __forceinline__ void channel_visit(int c, int C, long long inner, long long outer,
                                              F visit) {
  if (inner >= 32) {
    for (long long o = blockIdx.y; o < outer; o += gridDim.y) {
      long long base = (o * C + c) * inner;
      for (long long i = threadIdx.x; i < inner; i += blockDim.x) visit(base + i);
    }
  } else {
    for (long long q = (long long)blockIdx.y * blockDim.x + threadIdx.x; q < outer * inner;
         q += (long long)blockDim.x * gridDim.y)
      visit((mc::div_(q, inner) * C + c) * inner + mc::mod_(q, inner));
  }
}

// The sum of value(i) over the elements of channel c that block (c, s) covers, in double
template <typename F>
__device__ __forceinline__ double channel_accumulate(int c, int C, long long inner,
                                                     long long outer, F value) {
  double acc = 0;
  channel_visit(c, C, inner, outer, [&](long long i) { acc += value(i); });
  return acc;
}

// part[c, s] = sum of a over channel c
template <typename T>
__global__ void channel_sum(const T* a, double* part, int C, long long inner, long long outer) {
  __shared__ double shared[256];
  int c = blockIdx.x;
  double acc = channel_accumulate(c, C, inner, outer,
                                  [=](long long i) { return (double)a[i]; });
  acc = mc::block_sum(acc, shared);
  if (threadIdx.x == 0) part[(long long)c * gridDim.y + blockIdx.y] = acc;
}

// part[c, s] = sum of a * b over channel c
template <typename T>
__global__ void channel_dot(const T* a, const T* b, double* part, int C, long long inner,
                            long long outer) {
  __shared__ double shared[256];
  int c = blockIdx.x;
  double acc = channel_accumulate(c, C, inner, outer,
                                  [=](long long i) { return (double)a[i] * (double)b[i]; });
  acc = mc::block_sum(acc, shared);
  if (threadIdx.x == 0) part[(long long)c * gridDim.y + blockIdx.y] = acc;
}

// part[c, s] = sum of (a - mean[c])^2 over channel c (the variance's second pass)
template <typename T>
__global__ void channel_sqdev(const T* a, const double* mean, double* part, int C,
                              long long inner, long long outer) {
  __shared__ double shared[256];
  int c = blockIdx.x;
  double m = mean[c];
  double acc = channel_accumulate(c, C, inner, outer, [=](long long i) {
    double d = (double)a[i] - m;
    return d * d;
  });
  acc = mc::block_sum(acc, shared);
  if (threadIdx.x == 0) part[(long long)c * gridDim.y + blockIdx.y] = acc;
}

// --- per-channel finishes, one thread a channel: the partials' total and what is made of it ----
// (on the device, so a layer costs its launches and no CuPy operations on C-sized arrays)

// the total of channel c's partials, in split order
__device__ __forceinline__ double channel_total(const double* part, int c, int splits) {
  double total = 0;
  for (int s = 0; s < splits; ++s) total += part[(long long)c * splits + s];
  return total;
}

// mean64[c] = total / m in double (the variance's second pass reads it), mean[c] = T(mean64[c])
template <typename T>
__global__ void channel_mean(const double* part, T* mean, double* mean64, int splits, double m,
                             int C) {
  MINICNN_KERNEL_LOOP(c, C) {
    double value = channel_total(part, (int)c, splits) / m;
    mean64[c] = value;
    mean[c] = T(value);
  }
}

// BatchNorm's batch statistics: var[c] = T(total / m), std[c] = sqrt(var[c] + eps) in T
template <typename T>
__global__ void channel_variance(const double* part, T* var, T* std, int splits, double m, T eps,
                                 int C) {
  MINICNN_KERNEL_LOOP(c, C) {
    T v = T(channel_total(part, (int)c, splits) / m);
    var[c] = v;
    std[c] = mc::sqrt_(mc::add_rn(v, eps));
  }
}

// acc[c] += T(total), or acc[c] = T(total) when assign (Scale's and Bias's parameter gradients)
template <typename T>
__global__ void channel_add_total(const double* part, T* acc, int splits, int assign, int C) {
  MINICNN_KERNEL_LOOP(c, C) {
    T total = T(channel_total(part, (int)c, splits));
    acc[c] = assign ? total : mc::add_rn(acc[c], total);
  }
}

// given statistics: std[c] = sqrt(var[c] + eps)
template <typename T>
__global__ void batch_norm_std(const T* var, T* std, T eps, int C) {
  MINICNN_KERNEL_LOOP(c, C) { std[c] = mc::sqrt_(mc::add_rn(var[c], eps)); }
}

// Caffe's moving averages after a training batch: mean_acc' = lam mean_acc + mean,
// var_acc' = lam var_acc + correction var (the unbiased variance), factor' = lam factor + 1.
// Element c is read before it is written, so the outputs may be the inputs.
template <typename T>
__global__ void batch_norm_update_stats(const T* mean_acc, const T* var_acc, const T* factor,
                                        const T* mean, const T* var, T* mean_out, T* var_out,
                                        T* factor_out, T lam, T correction, int C) {
  MINICNN_KERNEL_LOOP(c, C) {
    mean_out[c] = mc::add_rn(mc::mul_rn(mean_acc[c], lam), mean[c]);
    var_out[c] = mc::add_rn(mc::mul_rn(var_acc[c], lam), mc::mul_rn(var[c], correction));
    if (c == 0) factor_out[0] = mc::add_rn(mc::mul_rn(factor[0], lam), T(1));
  }
}

// the global statistics: mean = mean_acc / factor, var = var_acc / factor (0 while the factor is
// 0), as the host computes them: 1 / factor in double, rounded to T, then one product
template <typename T>
__global__ void batch_norm_global_stats(const T* mean_acc, const T* var_acc, const T* factor,
                                        T* mean, T* var, int C) {
  MINICNN_KERNEL_LOOP(c, C) {
    double s = (double)factor[0];
    T inv = T(s == 0.0 ? 0.0 : 1.0 / s);
    mean[c] = mc::mul_rn(mean_acc[c], inv);
    var[c] = mc::mul_rn(var_acc[c], inv);
  }
}

// y = (x - mean[c]) / std[c]
template <typename T>
__global__ void batch_norm_forward(const T* x, const T* mean, const T* std, T* y, int C,
                                   long long inner, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    int c = (int)mc::mod_(mc::div_(i, inner), C);
    y[i] = (x[i] - mean[c]) / std[c];
  }
}

// batch statistics: dx = (dy - E[dy] - y E[dy y]) / std; global statistics: dx = dy / std.
// Reads only element i of dy and y, so dx may be dy.
template <typename T>
__global__ void batch_norm_backward(const T* dy, const T* y, const T* std, const T* mean_dy,
                                    const T* mean_dyy, T* dx, int C, long long inner,
                                    int use_global_stats, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    int c = (int)mc::mod_(mc::div_(i, inner), C);
    dx[i] = use_global_stats ? dy[i] / std[c]
                             : (dy[i] - mean_dy[c] - y[i] * mean_dyy[c]) / std[c];
  }
}

// y = x * scale[s] (+ bias[s]), s = (i / inner) % S; with relu, then y > 0 ? y : y * slope
// (minicnn/fusion.py's training chain runs Scale and an in-place ReLU as this one pass)
template <typename T>
__global__ void scale_forward(const T* x, const T* scale, const T* bias, T* y, int S,
                              long long inner, int has_bias, int relu, T slope, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    int s = (int)mc::mod_(mc::div_(i, inner), S);
    T v = x[i] * scale[s];
    v = has_bias ? v + bias[s] : v;
    y[i] = relu && !(v > T(0)) ? v * slope : v;
  }
}

// dx = dy * scale[s]
template <typename T>
__global__ void scale_backward(const T* dy, const T* scale, T* dx, int S, long long inner,
                               long long n) {
  MINICNN_KERNEL_LOOP(i, n) { dx[i] = dy[i] * scale[mc::mod_(mc::div_(i, inner), S)]; }
}

// y = x + bias[s]
template <typename T>
__global__ void bias_forward(const T* x, const T* bias, T* y, int S, long long inner,
                             long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = x[i] + bias[mc::mod_(mc::div_(i, inner), S)]; }
}

// --- the training chain BatchNorm -> Scale (-> ReLU) backward, in two passes over the blob ----
// (minicnn/fusion.py; csrc/normalization.cpp's bn_scale_relu_backward on the CPU). With
// g = ReLU's dx (dy where top > 0, else slope * dy; dy itself without a ReLU) and dz = g * gamma
// (Scale's dx), the sums are Scale's gradients and BatchNorm's means, and dx is BatchNorm's:
//   dscale += sum g y,  dbias += sum g,  dx = (dz - mean(dz) - y mean(dz y)) / std
// (dz / std with global statistics). y is BatchNorm's output, which Scale read.

template <typename T>
__device__ __forceinline__ T chain_relu_dx(const T* dy, const T* top, int relu, T slope,
                                           long long i) {
  T d = dy[i];
  return relu && !(top[i] > T(0)) ? d * slope : d;
}

// part[(c * splits + s) * 4 + k]: the block's sums of (g y, g, dz, dz y)[k] over channel c
template <typename T>
__global__ void chain_backward_sums(const T* dy, const T* top, const T* y, const T* gamma,
                                    double* part, int relu, T slope, int C, long long inner,
                                    long long outer) {
  __shared__ double shared[256];
  int c = blockIdx.x;
  const T a = gamma[c];
  double gy = 0, g_sum = 0, dz_sum = 0, dzy = 0;
  channel_visit(c, C, inner, outer, [&](long long i) {
    T g = chain_relu_dx(dy, top, relu, slope, i), dz = g * a;
    double yi = (double)y[i];
    gy += (double)g * yi;
    g_sum += (double)g;
    dz_sum += (double)dz;
    dzy += (double)dz * yi;
  });
  double sums[4] = {gy, g_sum, dz_sum, dzy};
  for (int k = 0; k < 4; ++k) {
    double total = mc::block_sum(sums[k], shared);
    if (threadIdx.x == 0) part[((long long)c * gridDim.y + blockIdx.y) * 4 + k] = total;
  }
}

// per channel: dscale += T(sum g y), dbias += T(sum g) (where has_*), and BatchNorm's means
// means[2c] = T(sum dz / m), means[2c + 1] = T(sum dz y / m) (0 with global statistics)
template <typename T>
__global__ void chain_backward_finish(const double* part, int splits, T* dscale, T* dbias,
                                      T* means, int has_dscale, int has_dbias, int global_stats,
                                      double m, int C) {
  MINICNN_KERNEL_LOOP(c, C) {
    double total[4] = {0, 0, 0, 0};
    for (int s = 0; s < splits; ++s)
      for (int k = 0; k < 4; ++k) total[k] += part[(c * splits + s) * 4 + k];
    if (has_dscale) dscale[c] = mc::add_rn(dscale[c], T(total[0]));
    if (has_dbias) dbias[c] = mc::add_rn(dbias[c], T(total[1]));
    means[2 * c] = global_stats ? T(0) : T(total[2] / m);
    means[2 * c + 1] = global_stats ? T(0) : T(total[3] / m);
  }
}

// g_out = dz (Scale's dx, where BatchNorm's bottom is another blob), dx = BatchNorm's dx. Reads
// only element i of dy, top and y, so g_out and dx may be dy.
template <typename T>
__global__ void chain_backward_dx(const T* dy, const T* top, const T* y, const T* std,
                                  const T* gamma, const T* means, T* g_out, T* dx, int relu,
                                  T slope, int global_stats, int write_g, int C, long long inner,
                                  long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    int c = (int)mc::mod_(mc::div_(i, inner), C);
    T dz = chain_relu_dx(dy, top, relu, slope, i) * gamma[c];
    T yi = y[i];
    if (write_g) g_out[i] = dz;
    dx[i] = global_stats ? dz / std[c] : (dz - means[2 * c] - yi * means[2 * c + 1]) / std[c];
  }
}
