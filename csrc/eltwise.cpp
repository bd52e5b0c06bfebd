// Eltwise SUM (minicnn/ops/eltwise.py) and its backward on every core: a ResNet adds its
// shortcut into every block, forward (y = x_0 + x_1) and backward (both bottoms get dy, and the
// Split before the block adds the two diffs back up), passes NumPy makes on one thread.
//
//   sum       y = c_0 x_0 + c_1 x_1 + ...   (left to right; without coefficients, plain adds)
//   scatter   dx_k = c_k dy                 (one pass: dy may be one of the dx_k)
//
// No fused multiply-adds (y + c x rounds the product, as NumPy does), so the results are the
// reference's bit for bit.
#include <pybind11/stl.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "exact_fp.h"

namespace minicnn {

template <typename T>
MINICNN_VECTOR_CLONES static void eltwise_sum(const std::vector<const T*>& xs, const T* coeff,
                                              T* y, std::int64_t n) {
    const std::int64_t K = static_cast<std::int64_t>(xs.size());
    constexpr std::int64_t block = 2048;
#pragma omp parallel for schedule(static) if (n > PARALLEL_WORK)
    for (std::int64_t b = 0; b < n; b += block) {
        // the sum of a block is made in L1 and stored at the end: y may be any of the xs
        T acc[block];
        const std::int64_t len = std::min(block, n - b);
        const T* x0 = xs[0] + b;
        const T* x1 = xs[1] + b;
        if (coeff) {
            for (std::int64_t i = 0; i < len; ++i) acc[i] = x0[i] * coeff[0];
            for (std::int64_t k = 1; k < K; ++k) {
                const T* x = xs[k] + b;
                for (std::int64_t i = 0; i < len; ++i) acc[i] = acc[i] + x[i] * coeff[k];
            }
        } else {
            for (std::int64_t i = 0; i < len; ++i) acc[i] = x0[i] + x1[i];
            for (std::int64_t k = 2; k < K; ++k) {
                const T* x = xs[k] + b;
                for (std::int64_t i = 0; i < len; ++i) acc[i] = acc[i] + x[i];
            }
        }
        std::copy(acc, acc + len, y + b);
    }
}

template <typename T>
MINICNN_VECTOR_CLONES static void eltwise_scatter(const T* dy, const std::vector<T*>& outs,
                                                  const std::vector<T>& coeff, std::int64_t n) {
    const std::int64_t K = static_cast<std::int64_t>(outs.size());
#pragma omp parallel for schedule(static) if (n > PARALLEL_WORK)
    for (std::int64_t b = 0; b < n; b += 4096) {
        const std::int64_t e = std::min(n, b + 4096);
        // dy may be one of the outs: every other out is written before that one
        for (std::int64_t k = 0; k < K; ++k) {
            if (outs[k] == dy) continue;
            for (std::int64_t i = b; i < e; ++i) outs[k][i] = dy[i] * coeff[k];
        }
        for (std::int64_t k = 0; k < K; ++k) {
            if (outs[k] != dy) continue;
            for (std::int64_t i = b; i < e; ++i) outs[k][i] = dy[i] * coeff[k];
        }
    }
}

REGISTER_NATIVE(m) {
    m.def("eltwise_sum", [](const py::list& xs, py::object coeff, py::array& y) {
        require(py::len(xs) >= 2, "eltwise_sum: at least two arrays");
        by_dtype(y, [&](auto tag) {
            using T = decltype(tag);
            std::vector<const T*> ptrs;
            for (const py::handle& h : xs) {
                py::array a = h.cast<py::array>();
                require(a.size() == y.size(), "eltwise_sum: the arrays differ in size");
                ptrs.push_back(in_ptr<T>(a, "x"));
            }
            const T* c = opt_in_ptr<T>(coeff, "coeff");
            if (c) require(py::len(coeff) == py::len(xs), "eltwise_sum: one coeff per array");
            T* out = out_ptr<T>(y, "y");
            Release release;
            eltwise_sum<T>(ptrs, c, out, y.size());
        });
    }, "y <- sum_k coeff[k] * xs[k] (left to right; coeff None: plain sums); y may be an x");
    m.def("eltwise_scatter", [](const py::array& dy, const py::list& outs,
                                const std::vector<double>& coeff) {
        require(py::len(outs) == coeff.size(), "eltwise_scatter: one coeff per output");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T* g = in_ptr<T>(dy, "dy");
            std::vector<T*> ptrs;
            for (const py::handle& h : outs) {
                py::array a = h.cast<py::array>();
                require(a.size() == dy.size(), "eltwise_scatter: the arrays differ in size");
                ptrs.push_back(out_ptr<T>(a, "dx"));
            }
            std::vector<T> c(coeff.begin(), coeff.end());
            Release release;
            eltwise_scatter<T>(g, ptrs, c, dy.size());
        });
    }, "outs[k] <- coeff[k] * dy for every k in one pass (dy may be one of the outs)");
}

}  // namespace minicnn
