// Sigmoid cross-entropy loss (minicnn/ops/sigmoid_cross_entropy.py), one thread per element.
#include "common.cuh"

// term = x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])) (exp's argument never positive);
// nll = -term where the target is used, else 0; prob = sigmoid(x) in Caffe's tanh form.
// An element is ignored when its target, truncated to an integer, equals ignore_label.
template <typename T>
__global__ void sigmoid_cross_entropy_forward(const T* x, const T* target, T* nll, T* prob,
                                              int* valid, int has_ignore, T ignore_label,
                                              long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T v = x[i], t = target[i];
    T pos = v >= T(0) ? T(1) : T(0);
    T term = v * (t - pos) - mc::log1p_(mc::exp_(v - T(2) * v * pos));
    bool ok = !(has_ignore && mc::trunc_(t) == ignore_label);
    nll[i] = ok ? -term : T(0);
    valid[i] = ok ? 1 : 0;
    prob[i] = T(0.5) * mc::tanh_(T(0.5) * v) + T(0.5);
  }
}

// dx = (p - t) * scale[0] where the target is used, else 0 (scale: the loss weight / the
// normalizer, on the device)
template <typename T>
__global__ void sigmoid_cross_entropy_backward(const T* prob, const T* target, T* dx,
                                               int has_ignore, T ignore_label, const T* scale,
                                               long long n) {
  MINICNN_KERNEL_LOOP(i, n) {
    T t = target[i];
    bool ok = !(has_ignore && mc::trunc_(t) == ignore_label);
    dx[i] = ok ? (prob[i] - t) * scale[0] : T(0);
  }
}
