// The elementwise neurons of minicnn/ops/neurons.py, each the reference's formula per element.
// Parameters derived on the host (ln(base) * scale, ...) arrive ready, in the array's type.
// Every kernel reads and writes element i only, so in-place use is safe.
#include "common.cuh"

// PReLU: the slope of channel (i / inner) % channels, or slope[0] when shared (channels 1).
template <typename T>
__global__ void prelu_forward(const T* x, const T* slope, T* y, int channels, long long inner,
                              long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    y[i] = v > T(0) ? v : v * slope[mc::mod_(mc::div_(i, inner), channels)];
  }
}

// dx, and each element's share of dslope (dy * x where x <= 0), summed per channel afterwards.
template <typename T>
__global__ void prelu_backward(const T* dy, const T* x, const T* slope, T* dx, T* contrib,
                               int channels, long long inner, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i], g = dy[i];
    bool neg = v <= T(0);
    dx[i] = neg ? g * slope[mc::mod_(mc::div_(i, inner), channels)] : g;
    contrib[i] = neg ? g * v : T(0);
  }
}

template <typename T>
__global__ void elu_forward(const T* x, T* y, T alpha, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    y[i] = v > T(0) ? v : alpha * mc::expm1_(mc::min_(v, T(0)));
  }
}

template <typename T>
__global__ void elu_backward(const T* dy, const T* x, const T* y, T* dx, T alpha, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T g = dy[i];
    dx[i] = x[i] > T(0) ? g : g * (y[i] + alpha);
  }
}

template <typename T>
__global__ void sigmoid_forward(const T* x, T* y, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = T(0.5) * mc::tanh_(T(0.5) * x[i]) + T(0.5); }
}

template <typename T>
__global__ void sigmoid_backward(const T* dy, const T* y, T* dx, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T s = y[i];
    dx[i] = dy[i] * s * (T(1) - s);
  }
}

template <typename T>
__global__ void tanh_forward(const T* x, T* y, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = mc::tanh_(x[i]); }
}

template <typename T>
__global__ void tanh_backward(const T* dy, const T* y, T* dx, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T t = y[i];
    dx[i] = dy[i] * (T(1) - t * t);
  }
}

template <typename T>
__global__ void absval_forward(const T* x, T* y, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = mc::abs_(x[i]); }
}

// sign(0) = 0, as caffe_cpu_sign
template <typename T>
__global__ void absval_backward(const T* dy, const T* x, T* dx, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    T s = v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0));
    dx[i] = dy[i] * s;
  }
}

// y = (shift + scale x)^power; power * scale == 0 is handled on the host (a constant)
template <typename T>
__global__ void power_forward(const T* x, T* y, T power, T scale, T shift, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = mc::pow_(shift + scale * x[i], power); }
}

// dx = dy * (power * scale) * (shift + scale x)^(power - 1); power == 1 and power * scale == 0
// are handled on the host
template <typename T>
__global__ void power_backward(const T* dy, const T* x, T* dx, T power, T scale, T shift,
                               long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * (power * scale * mc::pow_(shift + scale * x[i], power - T(1)));
  }
}

// y = exp(x * a + b) with a = ln(base) scale, b = ln(base) shift
template <typename T>
__global__ void exp_forward(const T* x, T* y, T a, T b, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = mc::exp_(x[i] * a + b); }
}

// dx = dy * y * c with c = ln(base) scale
template <typename T>
__global__ void exp_backward(const T* dy, const T* y, T* dx, T c, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { dx[i] = dy[i] * y[i] * c; }
}

// y = log(shift + scale x) * inv_ln (inv_ln = 1 / ln(base); skipped when apply_inv is 0)
template <typename T>
__global__ void log_forward(const T* x, T* y, T scale, T shift, T inv_ln, int apply_inv,
                            long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = mc::log_(shift + scale * x[i]);
    y[i] = apply_inv ? v * inv_ln : v;
  }
}

// dx = dy * c / (shift + scale x) with c = scale / ln(base)
template <typename T>
__global__ void log_backward(const T* dy, const T* x, T* dx, T c, T scale, T shift,
                             long long n) {
  MINICNN_KERNEL_LOOP(i, n) { dx[i] = dy[i] * c / (shift + scale * x[i]); }
}

// log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)
template <typename T>
__global__ void bnll_forward(const T* x, T* y, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    y[i] = mc::max_(v, T(0)) + mc::log1p_(mc::exp_(-mc::abs_(v)));
  }
}

// e = exp(min(x, 50)) (Caffe's kBNLL_THRESHOLD); dx = dy e / (e + 1)
template <typename T>
__global__ void bnll_backward(const T* dy, const T* x, T* dx, T threshold, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T e = mc::exp_(mc::min_(x[i], threshold));
    dx[i] = dy[i] * (e / (e + T(1)));
  }
}

template <typename T>
__global__ void threshold_forward(const T* x, T* y, T threshold, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = x[i] > threshold ? T(1) : T(0); }
}

// Clip: Caffe's CPU std::max(min, std::min(x, max)), comparison for comparison, so NaN gives
// min (std::min keeps the NaN, std::max(min, NaN) returns min) and min > max gives min.
template <typename T>
__global__ void clip_forward(const T* x, T* y, T lo, T hi, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    T below = hi < v ? hi : v;
    y[i] = lo < below ? below : lo;
  }
}

// dy where lo <= x <= hi, both ends included (NaN and everything when lo > hi: 0)
template <typename T>
__global__ void clip_backward(const T* dy, const T* x, T* dx, T lo, T hi, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    dx[i] = (v >= lo && v <= hi) ? dy[i] : T(0);
  }
}

// Swish: s = sigmoid(beta x) in the reference's order (beta x rounded first, then Caffe's tanh
// form), y = x s; both written, the backward reads them.
template <typename T>
__global__ void swish_forward(const T* x, T* y, T* s, T beta, long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i];
    T bx = v * beta;
    T sig = T(0.5) * mc::tanh_(T(0.5) * bx) + T(0.5);
    s[i] = sig;
    y[i] = v * sig;
  }
}

// dx = dy (beta y + s (1 - beta y)): reads y and s only, so in place is safe
template <typename T>
__global__ void swish_backward(const T* dy, const T* y, const T* s, T* dx, T beta,
                               long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T by = beta * y[i], sig = s[i];
    dx[i] = dy[i] * (by + sig * (T(1) - by));
  }
}
