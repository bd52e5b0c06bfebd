// LRN across channels (minicnn/ops/lrn.py), n = local_size, h = (n - 1) / 2:
//
//     s_c  = k + (alpha / n) * sum_{c' = c-h .. c+h} x_c'^2
//     y_c  = x_c * s_c^-beta
//     dx_c = dy_c * s_c^-beta - (2 alpha beta / n) * x_c * sum_{j = c-h .. c+h} dy_j * y_j / s_j
//
// Each window sum is added up afresh, channel c - h to c + h in order, as the reference does.
// (Caffe's CPU path slides it instead, adding the channel entering and subtracting the one
// leaving: O(C) per pixel whatever n is, but one inf in x^2 then leaves inf - inf or, with FMA,
// inf in every later channel, and a large x^2 leaving cancels the small ones still inside.)
// Pixels are processed in blocks of BLOCK so the per-channel rows of a block stay in cache and
// every inner loop runs over contiguous pixels.
// s^-beta is two square roots for Caffe's beta = 0.75 (and one for 0.5) instead of a pow.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace minicnn {

namespace {

constexpr std::int64_t BLOCK = 256;

struct Lrn {
    std::int64_t N, C, HW, size;
    double alpha, beta, k;
};

template <typename T>
inline T inv_pow(T s, double beta) {        // s^-beta
    if (beta == 0.75) {
        const T r = T(1) / std::sqrt(s);
        return r * std::sqrt(r);
    }
    if (beta == 0.5) return T(1) / std::sqrt(s);
    if (beta == 1.0) return T(1) / s;
    return std::pow(s, T(-beta));
}

}  // namespace

// scale[c * len + p] = s_c of pixel p of the block starting at x (channel stride HW).
template <typename T>
MINICNN_VECTOR_CLONES static void block_scale(const T* x, T* scale, std::int64_t len,
                                              const Lrn& L) {
    const std::int64_t half = (L.size - 1) / 2;
    const T a = T(L.alpha / L.size), k = T(L.k);
    for (std::int64_t c = 0; c < L.C; ++c) {
        T* s = scale + c * len;
        std::fill(s, s + len, T(0));
        for (std::int64_t j = std::max<std::int64_t>(c - half, 0);
             j <= std::min(c + half, L.C - 1); ++j) {
            const T* row = x + j * L.HW;
            for (std::int64_t p = 0; p < len; ++p) s[p] += row[p] * row[p];
        }
        for (std::int64_t p = 0; p < len; ++p) s[p] = k + a * s[p];
    }
}

template <typename T>
MINICNN_VECTOR_CLONES static void block_forward(const T* x, T* y, T* scale, std::int64_t len,
                                                const Lrn& L) {
    block_scale<T>(x, scale, len, L);
    for (std::int64_t c = 0; c < L.C; ++c) {
        const T *in = x + c * L.HW, *s = scale + c * len;
        T* out = y + c * L.HW;
        for (std::int64_t p = 0; p < len; ++p) out[p] = in[p] * inv_pow(s[p], L.beta);
    }
}

template <typename T>
MINICNN_VECTOR_CLONES static void block_backward(const T* dy, const T* x, T* dx, T* scale,
                                                 T* ratio, std::int64_t len, const Lrn& L) {
    block_scale<T>(x, scale, len, L);
    const std::int64_t half = (L.size - 1) / 2;
    for (std::int64_t c = 0; c < L.C; ++c) {                    // ratio_c = dy_c * y_c / s_c
        const T *g = dy + c * L.HW, *in = x + c * L.HW;
        T *s = scale + c * len, *r = ratio + c * len;
        for (std::int64_t p = 0; p < len; ++p) {
            const T power = inv_pow(s[p], L.beta);
            r[p] = g[p] * (in[p] * power) / s[p];
            s[p] = power;                                       // keep s^-beta for below
        }
    }
    const T factor = T(2 * L.alpha * L.beta / L.size);
    std::vector<T> sum(len);
    for (std::int64_t c = 0; c < L.C; ++c) {
        std::fill(sum.begin(), sum.end(), T(0));
        for (std::int64_t j = std::max<std::int64_t>(c - half, 0);
             j <= std::min(c + half, L.C - 1); ++j)
            for (std::int64_t p = 0; p < len; ++p) sum[p] += ratio[j * len + p];
        const T *g = dy + c * L.HW, *in = x + c * L.HW, *power = scale + c * len;
        T* out = dx + c * L.HW;
        for (std::int64_t p = 0; p < len; ++p)
            out[p] = g[p] * power[p] - factor * in[p] * sum[p];
    }
}

// Tasks are (image, block of pixels); each writes only its own pixels of every channel.
template <typename T>
static void lrn_forward(const T* x, T* y, const Lrn& L) {
    const std::int64_t blocks = (L.HW + BLOCK - 1) / BLOCK;
#pragma omp parallel if (L.N * L.C * L.HW * L.size > PARALLEL_WORK)
    {
        std::vector<T> scale(L.C * BLOCK);
#pragma omp for collapse(2) schedule(static)
        for (std::int64_t n = 0; n < L.N; ++n)
            for (std::int64_t b = 0; b < blocks; ++b) {
                const std::int64_t off = n * L.C * L.HW + b * BLOCK;
                block_forward<T>(x + off, y + off, scale.data(),
                                 std::min(BLOCK, L.HW - b * BLOCK), L);
            }
    }
}

template <typename T>
static void lrn_backward(const T* dy, const T* x, T* dx, const Lrn& L) {
    const std::int64_t blocks = (L.HW + BLOCK - 1) / BLOCK;
#pragma omp parallel if (L.N * L.C * L.HW * L.size > PARALLEL_WORK)
    {
        std::vector<T> scale(L.C * BLOCK), ratio(L.C * BLOCK);
#pragma omp for collapse(2) schedule(static)
        for (std::int64_t n = 0; n < L.N; ++n)
            for (std::int64_t b = 0; b < blocks; ++b) {
                const std::int64_t off = n * L.C * L.HW + b * BLOCK;
                block_backward<T>(dy + off, x + off, dx + off, scale.data(), ratio.data(),
                                  std::min(BLOCK, L.HW - b * BLOCK), L);
            }
    }
}

static Lrn lrn_of(const py::array& x, std::int64_t size, double alpha, double beta, double k) {
    require(x.ndim() >= 2, "lrn: x must be (N, C, ...)");
    require(size >= 1 && size % 2 == 1, "lrn: local_size must be odd");
    const std::int64_t N = x.shape(0), C = x.shape(1);
    return Lrn{N, C, (N * C) != 0 ? static_cast<std::int64_t>(x.size()) / (N * C) : 0, size,
               alpha, beta, k};
}

REGISTER_NATIVE(m) {
    m.def("lrn_forward", [](const py::array& x, py::array& y, std::int64_t local_size,
                            double alpha, double beta, double k) {
        const Lrn L = lrn_of(x, local_size, alpha, beta, k);
        require(y.size() == x.size(), "lrn_forward: y must have x's shape");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(y, "y");
            Release release;
            lrn_forward<T>(in, out, L);
        });
    }, "y <- LRN across channels of x (N, C, ...)");
    m.def("lrn_backward", [](const py::array& dy, const py::array& x, py::array& dx,
                             std::int64_t local_size, double alpha, double beta, double k) {
        const Lrn L = lrn_of(x, local_size, alpha, beta, k);
        require(dy.size() == x.size() && dx.size() == x.size(),
                "lrn_backward: dy and dx must have x's shape");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T *g = in_ptr<T>(dy, "dy"), *in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(dx, "dx");
            Release release;
            lrn_backward<T>(g, in, out, L);
        });
    }, "dx <- the gradient of LRN across channels, s recomputed from x");
}

}  // namespace minicnn
