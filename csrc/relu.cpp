// Leaky ReLU (minicnn/ops/relu.py): y = x > 0 ? x : slope * x, dx = x > 0 ? dy : slope * dy.
// One pass, written straight into the output blob, which may be the input itself (the net's
// in-place ReLU): each element is read before it is written.
#include "common.h"
#include "nontrapping_fp.h"   // the selects below vectorize on AVX2

namespace minicnn {

template <typename T>
MINICNN_VECTOR_CLONES static void relu_forward(const T* x, T* y, std::int64_t n, T slope) {
#pragma omp parallel for simd schedule(static) if (n > PARALLEL_WORK)   // simd: y may be x
    for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : x[i] * slope;
}

template <typename T>
MINICNN_VECTOR_CLONES static void relu_backward(const T* dy, const T* x, T* dx, std::int64_t n,
                                                T slope) {
#pragma omp parallel for simd schedule(static) if (n > PARALLEL_WORK)   // dx may be dy
    for (std::int64_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? dy[i] : dy[i] * slope;
}

REGISTER_NATIVE(m) {
    m.def("relu_forward", [](const py::array& x, py::array& y, double slope) {
        require(x.size() == y.size(), "relu_forward: x and y must have one size");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(y, "y");
            Release release;
            relu_forward<T>(in, out, x.size(), T(slope));
        });
    }, "y <- leaky ReLU of x (y may be x)");
    m.def("relu_backward", [](const py::array& dy, const py::array& x, py::array& dx,
                              double slope) {
        require(x.size() == dy.size() && dx.size() == dy.size(),
                "relu_backward: dy, x and dx must have one size");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T *g = in_ptr<T>(dy, "dy"), *in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(dx, "dx");
            Release release;
            relu_backward<T>(g, in, out, dy.size(), T(slope));
        });
    }, "dx <- dy where x > 0, else slope * dy (dx may be dy)");
}

}  // namespace minicnn
