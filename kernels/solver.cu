// The solver's work on every parameter of a net in one launch each (minicnn/sgd_solvers.py,
// Net.clear_param_diffs): a ResNet-50 has hundreds of parameter blobs, and one launch (plus a
// few CuPy operations) per blob would cost more host time than the GPU spends on them.
//
// The blobs are segments of a table built once (minicnn.cuda.segment_table): segment s is the
// row segments[s * width ...] = (count, address of array 0, address of array 1, ...), and the
// work is cut into chunks of `chunk` elements, chunks[2c], chunks[2c + 1] = (segment, first
// element). A block takes a chunk at a time, its threads the chunk's elements.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T* segment_array(const long long* segments, long long s, int width,
                                            int k) {
  return reinterpret_cast<T*>(segments[s * width + 1 + k]);
}

// every array of the table (width 2: count, address) <- 0: Caffe's ClearParamDiffs
template <typename T>
__global__ void zero_segments(const long long* segments, const long long* chunks,
                              long long n_chunks, int chunk) {
  for (long long c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    long long s = chunks[2 * c], start = chunks[2 * c + 1];
    long long end = start + chunk < segments[2 * s] ? start + chunk : segments[2 * s];
    T* a = segment_array<T>(segments, s, 2, 0);
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) a[i] = T(0);
  }
}

// SGD (nesterov 0) or Nesterov's step of every parameter (width 4: count, data, diff, history),
// as csrc/solver.cpp's momentum_update takes it, rounding for rounding:
//   g = diff (* scale when iter_size > 1) + decay * data (L2; L1: decay * sign(data); nothing
//       where the decay is 0)
//   v = momentum * history + lr * g;  history = v
//   step = v (Nesterov: (1 + momentum) v - momentum * the old history);  diff = step;
//   data -= step
// Per segment, lr = T(rate * mults[2s]) (rate times the lr_mult) and decay = T(mults[2s + 1])
// (weight_decay * decay_mult), each computed in double and rounded once, as the host does.
template <typename T>
__global__ void momentum_step_segments(const long long* segments, const double* mults,
                                       const long long* chunks, long long n_chunks, int chunk,
                                       double rate, T momentum, T scale, int apply_scale,
                                       int regularization, int nesterov) {
  const T one_plus = mc::add_rn(T(1), momentum);
  for (long long c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    long long s = chunks[2 * c], start = chunks[2 * c + 1];
    long long end = start + chunk < segments[4 * s] ? start + chunk : segments[4 * s];
    T* data = segment_array<T>(segments, s, 4, 0);
    T* diff = segment_array<T>(segments, s, 4, 1);
    T* history = segment_array<T>(segments, s, 4, 2);
    const T lr = T(rate * mults[2 * s]), decay = T(mults[2 * s + 1]);
    const int decays = mults[2 * s + 1] != 0.0 ? regularization : 0;     // no decay: g as is
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
      T g = diff[i];
      if (apply_scale) g = mc::mul_rn(g, scale);
      const T w = data[i];
      if (decays == 1) {
        g = mc::add_rn(g, mc::mul_rn(decay, w));
      } else if (decays == 2) {
        const T sign = w > T(0) ? T(1) : (w < T(0) ? T(-1) : w);   // NaN stays NaN
        g = mc::add_rn(g, mc::mul_rn(decay, sign));
      }
      const T old = history[i];
      const T v = mc::add_rn(mc::mul_rn(momentum, old), mc::mul_rn(lr, g));
      history[i] = v;
      const T step = nesterov ? mc::sub_rn(mc::mul_rn(one_plus, v), mc::mul_rn(momentum, old))
                              : v;
      diff[i] = step;
      data[i] = mc::sub_rn(w, step);
    }
  }
}
