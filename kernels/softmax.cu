// Softmax, the softmax loss and top-k accuracy along one axis (minicnn/ops/softmax.py): x is
// (outer, C, inner), one thread per (outer, inner) position walking the C values at stride
// inner (coalesced across threads when inner > 1, e.g. segmentation maps); for inner == 1 and
// many classes, a block per row (softmax_*_rows). Each position's values are all read before
// any is written, so softmax is safe in place.
#include "common.cuh"

template <typename T>
__global__ void softmax_forward(const T* x, T* y, int C, long long inner, long long n) {
  MINICNN_KERNEL_LOOP(pos, n) {               // n = outer * inner
    long long base = mc::div_(pos, inner) * C * inner + mc::mod_(pos, inner);
    T m = x[base];
    for (int c = 1; c < C; ++c) m = mc::max_(m, x[base + c * inner]);
    T sum = T(0);
    for (int c = 0; c < C; ++c) {
      T e = mc::exp_(x[base + c * inner] - m);    // the max keeps exp from overflowing
      y[base + c * inner] = e;
      sum += e;
    }
    for (int c = 0; c < C; ++c) y[base + c * inner] /= sum;
  }
}

// dx = y (dy - sum_c dy y)
template <typename T>
__global__ void softmax_backward(const T* dy, const T* y, T* dx, int C, long long inner,
                                 long long n) {
  MINICNN_KERNEL_LOOP(pos, n) {
    long long base = mc::div_(pos, inner) * C * inner + mc::mod_(pos, inner);
    T dot = T(0);
    for (int c = 0; c < C; ++c) dot += dy[base + c * inner] * y[base + c * inner];
    for (int c = 0; c < C; ++c) {
      long long i = base + c * inner;
      dx[i] = y[i] * (dy[i] - dot);
    }
  }
}

// The same two for long rows (inner == 1: a classifier's N x C scores, where a thread per
// position would leave the GPU nearly idle): a block per row, its threads over the C values.
template <typename T>
__global__ void softmax_forward_rows(const T* x, T* y, int C, long long rows) {
  __shared__ T shared[256];
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    T m = xr[0];
    for (int c = threadIdx.x; c < C; c += blockDim.x) m = mc::max_(m, xr[c]);
    m = mc::block_max(m, shared);
    T sum = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      T e = mc::exp_(xr[c] - m);
      yr[c] = e;
      sum += e;
    }
    sum = mc::block_sum(sum, shared);
    for (int c = threadIdx.x; c < C; c += blockDim.x) yr[c] /= sum;
  }
}

template <typename T>
__global__ void softmax_backward_rows(const T* dy, const T* y, T* dx, int C, long long rows) {
  __shared__ T shared[256];
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long base = r * C;
    T dot = T(0);
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += dy[base + c] * y[base + c];
    dot = mc::block_sum(dot, shared);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      dx[base + c] = y[base + c] * (dy[base + c] - dot);
  }
}

// A label as a class index: the label (a float holding an integer, as Caffe stores them) when
// it is one of the C classes, LABEL_IGNORED for ignore_label, LABEL_BAD for anything else (a
// fraction, out of range, NaN, infinite). The host checks labels before its kernels run; on the
// GPU the check is find_bad_labels, read later (with the loss), so the kernels below leave bad
// labels out of their sums and never index the scores with one.
#define MINICNN_LABEL_IGNORED (-1)
#define MINICNN_LABEL_BAD (-2)
template <typename T>
__device__ __forceinline__ long long label_class(T v, int C, int has_ignore,
                                                 long long ignore_label) {
  if (!(mc::trunc_(v) == v && mc::abs_(v) < T(4.0e18))) return MINICNN_LABEL_BAD;
  long long l = (long long)v;
  if (has_ignore && l == ignore_label) return MINICNN_LABEL_IGNORED;
  return (l >= 0 && l < C) ? l : MINICNN_LABEL_BAD;
}

// bad[0] = 1 if any label is LABEL_BAD (every thread that sees one stores the same value)
template <typename T>
__global__ void find_bad_labels(const T* label, int* bad, int C, int has_ignore,
                                long long ignore_label, long long n) {
  MINICNN_KERNEL_LOOP(pos, n) {
    if (label_class(label[pos], C, has_ignore, ignore_label) == MINICNN_LABEL_BAD) bad[0] = 1;
  }
}

// Per position: nll = -log(max(p[label], FLT_MIN)) and valid = 1, or 0 and 0 where the label
// is ignore_label (or bad).
template <typename T>
__global__ void softmax_loss_forward(const T* prob, const T* label, T* nll, int* valid, int C,
                                     long long inner, int has_ignore, long long ignore_label,
                                     long long n) {
  MINICNN_KERNEL_LOOP(pos, n) {
    long long l = label_class(label[pos], C, has_ignore, ignore_label);
    bool ok = l >= 0;
    T p = ok ? prob[mc::div_(pos, inner) * C * inner + l * inner + mc::mod_(pos, inner)] : T(1);
    nll[pos] = ok ? -mc::log_(mc::max_(p, T(MINICNN_FLT_MIN))) : T(0);
    valid[pos] = ok ? 1 : 0;
  }
}

// dx = (p - onehot(label)) * scale[0], 0 at ignored positions; one thread per element. The
// scale (loss weight / normalizer) is read on the device: it comes from the loss top's diff.
template <typename T>
__global__ void softmax_loss_backward(const T* prob, const T* label, T* dx, int C,
                                      long long inner, int has_ignore, long long ignore_label,
                                      const T* scale, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {                 // n = outer * C * inner
    long long in = mc::mod_(i, inner);
    long long c = mc::mod_(mc::div_(i, inner), C);
    long long pos = mc::div_(mc::div_(i, inner), C) * inner + in;
    long long l = label_class(label[pos], C, has_ignore, ignore_label);
    dx[i] = l >= 0 ? (prob[i] - (c == l ? T(1) : T(0))) * scale[0] : T(0);
  }
}

// Accuracy counts: a valid position is correct when fewer than top_k other classes score >= the
// labelled one; per class, seen[l] and hits[l] count positions and correct ones (atomically).
template <typename T>
__global__ void accuracy_forward(const T* x, const T* label, int* seen, int* hits, int C,
                                 long long inner, int top_k, int has_ignore,
                                 long long ignore_label, long long n) {
  MINICNN_KERNEL_LOOP(pos, n) {
    long long l = label_class(label[pos], C, has_ignore, ignore_label);
    if (l < 0) continue;
    long long base = mc::div_(pos, inner) * C * inner + mc::mod_(pos, inner);
    T truth = x[base + l * inner];
    int at_least = 0;
    for (int c = 0; c < C; ++c)
      if (x[base + c * inner] >= truth) ++at_least;
    atomicAdd(seen + l, 1);
    if (at_least - 1 < top_k) atomicAdd(hits + l, 1);
  }
}
