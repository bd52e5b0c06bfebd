// The scalar expressions of Caffe 1.0 that tests/test_caffe_scalars.py checks minicnn against,
// each with the C++ types Caffe gives its operands: caffe.proto's float fields, int iterations
// and sizes, the net's Dtype. The headers come in Caffe's order (common.hpp's <cmath>, then
// util/mkl_alternate.hpp's <math.h>, which with libstdc++ >= 6 makes std's float overloads of
// pow and exp visible to unqualified calls) and the calls are unqualified, inside namespace
// caffe, as in Caffe's sources. Input: one case a line (floats in hex); output: a line each,
// the results' bit patterns in hex.
#include <cmath>
#include <math.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace caffe {

// The SolverParameter fields as caffe.proto types them.
struct SolverFields {
  float base_lr, gamma, power;
  int stepsize, max_iter;
};

// SGDSolver<Dtype>::GetLearningRate's expressions (iter_ and current_step_ are ints).
template <typename Dtype>
Dtype learning_rate(const std::string& policy, const SolverFields& p, int iter, int step) {
  Dtype rate = 0;
  if (policy == "fixed") {
    rate = p.base_lr;
  } else if (policy == "step" || policy == "multistep") {
    rate = p.base_lr * pow(p.gamma, step);
  } else if (policy == "exp") {
    rate = p.base_lr * pow(p.gamma, iter);
  } else if (policy == "inv") {
    rate = p.base_lr * pow(Dtype(1) + p.gamma * iter, -p.power);
  } else if (policy == "poly") {
    rate = p.base_lr * pow(Dtype(1.) - (Dtype(iter) / Dtype(p.max_iter)), p.power);
  } else if (policy == "sigmoid") {
    const Dtype e = exp(-p.gamma * (Dtype(iter) - Dtype(p.stepsize)));
    rate = p.base_lr * (Dtype(1.) / (Dtype(1.) + e));
  }
  return rate;
}

// AdamSolver<Dtype>::ComputeUpdateValue's bias correction (beta1, beta2: Dtype; t: int).
template <typename Dtype>
Dtype adam_correction(Dtype beta1, Dtype beta2, int t) {
  return std::sqrt(Dtype(1) - pow(beta2, t)) / (Dtype(1.) - pow(beta1, t));
}

}  // namespace caffe

static std::string hex_bits(float v) {
  std::uint32_t b;
  std::memcpy(&b, &v, 4);
  char s[32];
  std::snprintf(s, sizeof s, "%x", b);
  return s;
}

static std::string hex_bits(double v) {
  std::uint64_t b;
  std::memcpy(&b, &v, 8);
  char s[32];
  std::snprintf(s, sizeof s, "%llx", static_cast<unsigned long long>(b));
  return s;
}

static float f(const std::string& s) { return std::strtof(s.c_str(), nullptr); }
static double d(const std::string& s) { return std::strtod(s.c_str(), nullptr); }

template <typename Dtype>
static Dtype as(const std::string& s);
template <> float as<float>(const std::string& s) { return f(s); }
template <> double as<double>(const std::string& s) { return d(s); }

template <typename Dtype>
static std::string run(const std::string& what, std::istringstream& in) {
  std::string a, b, c;
  if (what == "lr") {  // policy base_lr gamma power stepsize max_iter iter current_step
    std::string policy;
    caffe::SolverFields p;
    int iter, step;
    in >> policy >> a >> b >> c >> p.stepsize >> p.max_iter >> iter >> step;
    p.base_lr = f(a), p.gamma = f(b), p.power = f(c);
    return hex_bits(caffe::learning_rate<Dtype>(policy, p, iter, step));
  }
  if (what == "adam") {  // momentum momentum2 t
    int t;
    in >> a >> b >> t;
    return hex_bits(caffe::adam_correction<Dtype>(f(a), f(b), t));
  }
  if (what == "clip") {  // clip_gradients n sumsq_1 .. sumsq_n (each blob's sumsq_diff)
    int n;
    in >> a >> n;
    const Dtype clip_gradients = f(a);
    Dtype sumsq_diff = 0;
    for (int i = 0; i < n; ++i) {
      in >> b;
      sumsq_diff += as<Dtype>(b);
    }
    const Dtype l2norm_diff = std::sqrt(sumsq_diff);
    if (l2norm_diff > clip_gradients) {
      const Dtype scale_factor = clip_gradients / l2norm_diff;
      return hex_bits(l2norm_diff) + " " + hex_bits(scale_factor);
    }
    return hex_bits(l2norm_diff) + " none";
  }
  if (what == "bn") {  // m moving_average_fraction scale_factor (blobs_[2])
    int m;
    in >> m >> a >> b;
    const Dtype fraction = f(a);               // moving_average_fraction_ is a Dtype
    const Dtype factor = as<Dtype>(b);
    const Dtype correction = m > 1 ? Dtype(m) / (m - 1) : 1;
    Dtype updated = factor;
    updated *= fraction;
    updated += 1;
    const Dtype inverse = factor == 0 ? 0 : 1 / factor;
    return hex_bits(correction) + " " + hex_bits(updated) + " " + hex_bits(inverse);
  }
  if (what == "power") {  // power shift, with scale 0 (diff_scale_ == 0)
    in >> a >> b;
    const Dtype power = f(a), shift = f(b);  // power_, shift_: Dtype members
    const Dtype value = (power == 0) ? Dtype(1) : pow(shift, power);
    return hex_bits(value);
  }
  return "unknown case " + what;
}

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string what, dtype;
    in >> what >> dtype;
    std::cout << (dtype == "f" ? run<float>(what, in) : run<double>(what, in)) << "\n";
  }
}
