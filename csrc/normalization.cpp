// BatchNorm and per-channel Scale (minicnn/ops/batch_norm.py, minicnn/ops/scale.py), on arrays
// viewed as (N, C, S): channel c's values are x[n, c, :] for every n. One thread per channel,
// so every per-channel sum is a private running total (in double) and no two threads write one
// value. NumPy spends a temporary array and a pass over memory on every operator of these
// formulas; here each formula is one pass.
//
//   batch_norm_forward   mean, var (biased) over (N, S) unless given; std = sqrt(var + eps);
//                        y = (x - mean) / std
//   batch_norm_backward  dx = (dy - mean(dy) - y * mean(dy * y)) / std   (batch statistics)
//                        dx = dy / std                                   (global statistics)
//   scale_forward        y = x * scale[c] + bias[c]
//   scale_backward       dx = dy * scale[c]; dscale[c] += sum dy * x; dbias[c] += sum dy
#include <cmath>

#include "common.h"
#include "exact_fp.h"     // the fused inference kernel below gives the layers' own bits
#include "nontrapping_fp.h"   // the ReLU selects below vectorize on AVX2

namespace minicnn {

namespace {

struct View {
    std::int64_t N, C, S;
    std::int64_t at(std::int64_t n, std::int64_t c) const { return (n * C + c) * S; }
};

View view_of(const py::array& a, std::int64_t channels) {
    require(a.ndim() >= 1, "normalization: arrays need at least one axis");
    const std::int64_t N = a.shape(0);
    const std::int64_t C = a.ndim() > 1 ? a.shape(1) : 1;
    require(C == channels, "normalization: the channel count does not match");
    return View{N, C, (N * C) != 0 ? static_cast<std::int64_t>(a.size()) / (N * C) : 0};
}

}  // namespace

// BatchNorm backward's two pieces, shared by bn_backward and the training chain's kernel (so
// both give the same bits): the sums of dy and dy * y over one row, and channel c's dx from
// their means. The sums are forced inline: a helper is compiled for the default target, not
// cloned, and where GCC called it instead (bn_backward<double> did) its loops ran two lanes
// wide inside the AVX-512 clone, summing in another order than the chain's inlined copy.
template <typename T>
__attribute__((always_inline)) inline void bn_row_sums(const T* g, const T* yy, std::int64_t S,
                                                       double& a, double& b) {
    T pa = 0, pb = 0;
#pragma omp simd reduction(+ : pa, pb)
    for (std::int64_t s = 0; s < S; ++s) {
        pa += g[s];
        pb += g[s] * yy[s];
    }
    a += pa;
    b += pb;
}

template <typename T>
inline void bn_dx_channel(const T* dy, const T* y, T* dx, T mean_dy, T mean_dyy, T inv,
                          std::int64_t c, const View& v) {
    for (std::int64_t n = 0; n < v.N; ++n) {
        const T *g = dy + v.at(n, c), *yy = y + v.at(n, c);
        T* out = dx + v.at(n, c);
#pragma omp simd          // out may be g (an in-place chain): GCC's overlap check ran it scalar
        for (std::int64_t s = 0; s < v.S; ++s) out[s] = (g[s] - mean_dy - yy[s] * mean_dyy) * inv;
    }
}

// Scale backward's sums over one row: of dy * x (for dscale) and of dy (for dbias). Forced
// inline as bn_row_sums, for the same reason.
template <typename T>
__attribute__((always_inline)) inline void scale_row_sums(const T* g, const T* in,
                                                          std::int64_t S, bool want_dyx,
                                                          bool want_dy, double& sum_dyx,
                                                          double& sum_dy) {
    T p_dyx = 0, p_dy = 0;
    if (want_dyx)
#pragma omp simd reduction(+ : p_dyx)
        for (std::int64_t s = 0; s < S; ++s) p_dyx += g[s] * in[s];
    if (want_dy)
#pragma omp simd reduction(+ : p_dy)
        for (std::int64_t s = 0; s < S; ++s) p_dy += g[s];
    sum_dyx += p_dyx;
    sum_dy += p_dy;
}

template <typename T>
MINICNN_VECTOR_CLONES static void bn_forward(const T* x, T* y, T* y2, T* mean, T* var,
                                             T* std_out, bool batch_stats, double eps,
                                             const View& v) {
#pragma omp parallel for schedule(static) if (v.N * v.C * v.S > PARALLEL_WORK)
    for (std::int64_t c = 0; c < v.C; ++c) {
        if (batch_stats) {
            double total = 0;
            for (std::int64_t n = 0; n < v.N; ++n) {
                const T* row = x + v.at(n, c);
                T part = 0;
#pragma omp simd reduction(+ : part)
                for (std::int64_t s = 0; s < v.S; ++s) part += row[s];
                total += part;
            }
            const double m = total / double(v.N * v.S);
            double squares = 0;                       // two passes: no cancellation
            for (std::int64_t n = 0; n < v.N; ++n) {
                const T* row = x + v.at(n, c);
                const T mt = T(m);
                T part = 0;
#pragma omp simd reduction(+ : part)
                for (std::int64_t s = 0; s < v.S; ++s) part += (row[s] - mt) * (row[s] - mt);
                squares += part;
            }
            mean[c] = T(m);
            var[c] = T(squares / double(v.N * v.S));
        }
        const T sd = std::sqrt(var[c] + T(eps));
        std_out[c] = sd;
        const T m = mean[c], inv = T(1) / sd;    // a product: a divide per element costs more
        for (std::int64_t n = 0; n < v.N; ++n) {                // than the memory traffic
            const T* in = x + v.at(n, c);
            T* out = y + v.at(n, c);
            if (y2) {             // a second copy in the same pass (in may be out2: same index)
                T* out2 = y2 + v.at(n, c);
#pragma omp simd
                for (std::int64_t s = 0; s < v.S; ++s) {
                    const T t = (in[s] - m) * inv;
                    out[s] = t;
                    out2[s] = t;
                }
            } else {
#pragma omp simd
                for (std::int64_t s = 0; s < v.S; ++s) out[s] = (in[s] - m) * inv;
            }
        }
    }
}

template <typename T>
MINICNN_VECTOR_CLONES static void bn_backward(const T* dy, const T* y, const T* sd, T* dx,
                                              bool global_stats, const View& v) {
#pragma omp parallel for schedule(static) if (v.N * v.C * v.S > PARALLEL_WORK)
    for (std::int64_t c = 0; c < v.C; ++c) {
        T mean_dy = 0, mean_dyy = 0;
        if (!global_stats) {
            double a = 0, b = 0;
            for (std::int64_t n = 0; n < v.N; ++n)
                bn_row_sums(dy + v.at(n, c), y + v.at(n, c), v.S, a, b);
            mean_dy = T(a / double(v.N * v.S));
            mean_dyy = T(b / double(v.N * v.S));
        }
        bn_dx_channel(dy, y, dx, mean_dy, mean_dyy, T(1) / sd[c], c, v);
    }
}

template <typename T>
MINICNN_VECTOR_CLONES static void scale_forward(const T* x, const T* scale, const T* bias, T* y,
                                                T* keep, bool relu, T slope, const View& v) {
#pragma omp parallel for collapse(2) schedule(static) if (v.N * v.C * v.S > PARALLEL_WORK)
    for (std::int64_t n = 0; n < v.N; ++n) {
        for (std::int64_t c = 0; c < v.C; ++c) {
            const T* in = x + v.at(n, c);
            T* out = y + v.at(n, c);
            const T a = scale[c], b = bias ? bias[c] : T(0);
            if (keep) {          // x kept for backward in the same pass (y may be x: in place)
                T* kept = keep + v.at(n, c);
#pragma omp simd
                for (std::int64_t s = 0; s < v.S; ++s) {
                    const T t = in[s];
                    kept[s] = t;
                    out[s] = t * a + b;
                }
            } else if (relu) {   // the ReLU after it, as relu_forward computes it
#pragma omp simd
                for (std::int64_t s = 0; s < v.S; ++s) {
                    const T t = in[s] * a + b;
                    out[s] = t > T(0) ? t : t * slope;
                }
            } else {
#pragma omp simd
                for (std::int64_t s = 0; s < v.S; ++s) out[s] = in[s] * a + b;
            }
        }
    }
}

template <typename T>
MINICNN_VECTOR_CLONES static void scale_backward(const T* dy, const T* x, const T* scale, T* dx,
                                                 T* dscale, T* dbias, const View& v) {
#pragma omp parallel for schedule(static) if (v.N * v.C * v.S > PARALLEL_WORK)
    for (std::int64_t c = 0; c < v.C; ++c) {
        double sum_dyx = 0, sum_dy = 0;
        const T a = scale[c];
        for (std::int64_t n = 0; n < v.N; ++n) {
            const T* g = dy + v.at(n, c);
            const T* in = x + v.at(n, c);
            scale_row_sums(g, in, v.S, dscale != nullptr, dbias != nullptr, sum_dyx, sum_dy);
            if (dx) {
                T* out = dx + v.at(n, c);
                for (std::int64_t s = 0; s < v.S; ++s) out[s] = g[s] * a;
            }
        }
        if (dscale) dscale[c] += T(sum_dyx);
        if (dbias) dbias[c] += T(sum_dy);
    }
}

// Training (minicnn/fusion.py): the backward of ReLU (optional), Scale and BatchNorm of one
// chain, where Scale's x is BatchNorm's y (the chain keeps one array for both). Per channel,
// the first sweep does, row by row and while the row is in L1, what relu_backward,
// scale_backward and bn_backward's sums do, loop for loop (so the bits are theirs), and leaves
// g = Scale's dx in g_out (the chain's top diff); the second sweep writes BatchNorm's dx from
// g and y, still in L2. Four streams over memory instead of nine.
template <typename T>
MINICNN_VECTOR_CLONES static void bn_scale_relu_backward(
        const T* dy, const T* top, T slope, const T* y, const T* sd, const T* scale,
        T* g_out, T* dx, T* dscale, T* dbias, bool global_stats, const View& v) {
#pragma omp parallel for schedule(static) if (v.N * v.C * v.S > PARALLEL_WORK)
    for (std::int64_t c = 0; c < v.C; ++c) {
        double sum_dyx = 0, sum_dy = 0, a_sum = 0, b_sum = 0;
        const T a = scale[c];
        for (std::int64_t n = 0; n < v.N; ++n) {
            const T *d = dy + v.at(n, c), *yy = y + v.at(n, c);
            T* g = g_out + v.at(n, c);
            if (top) {                                        // relu_backward, into g
                const T* t = top + v.at(n, c);
#pragma omp simd
                for (std::int64_t s = 0; s < v.S; ++s) g[s] = t[s] > T(0) ? d[s] : d[s] * slope;
            } else if (g != d) {
#pragma omp simd
                for (std::int64_t s = 0; s < v.S; ++s) g[s] = d[s];
            }
            scale_row_sums(g, yy, v.S, dscale != nullptr, dbias != nullptr, sum_dyx,  // Scale's
                           sum_dy);
            for (std::int64_t s = 0; s < v.S; ++s) g[s] = g[s] * a;
            if (!global_stats) bn_row_sums(g, yy, v.S, a_sum, b_sum);   // bn_backward's sums
        }
        if (dscale) dscale[c] += T(sum_dyx);
        if (dbias) dbias[c] += T(sum_dy);
        T mean_dy = 0, mean_dyy = 0;
        if (!global_stats) {
            mean_dy = T(a_sum / double(v.N * v.S));
            mean_dyy = T(b_sum / double(v.N * v.S));
        }
        bn_dx_channel(g_out, y, dx, mean_dy, mean_dyy, T(1) / sd[c], c, v);
    }
}

// Inference (minicnn/fusion.py): BatchNorm with stored statistics, the per-channel Scale after
// it and, if it follows, the (leaky) ReLU, in one pass: the same operations as bn_forward,
// scale_forward and relu_forward one after the other, so the same bits come out.
template <typename T>
MINICNN_VECTOR_CLONES static void bn_scale_relu(const T* x, T* y, const T* mean, const T* var,
                                                T* std_out, double eps, const T* scale,
                                                const T* bias, bool relu, T slope,
                                                const View& v) {
    for (std::int64_t c = 0; c < v.C; ++c) std_out[c] = std::sqrt(var[c] + T(eps));
#pragma omp parallel for collapse(2) schedule(static) if (v.N * v.C * v.S > PARALLEL_WORK)
    for (std::int64_t n = 0; n < v.N; ++n) {
        for (std::int64_t c = 0; c < v.C; ++c) {
            const T* in = x + v.at(n, c);
            T* out = y + v.at(n, c);
            const T m = mean[c], inv = T(1) / std_out[c];
            const T a = scale[c], b = bias ? bias[c] : T(0);
            if (relu) {
                for (std::int64_t s = 0; s < v.S; ++s) {
                    const T t = ((in[s] - m) * inv) * a + b;
                    out[s] = t > T(0) ? t : t * slope;
                }
            } else {
                for (std::int64_t s = 0; s < v.S; ++s) out[s] = ((in[s] - m) * inv) * a + b;
            }
        }
    }
}

REGISTER_NATIVE(m) {
    m.def("bn_scale_relu", [](const py::array& x, py::array& y, const py::array& mean,
                              const py::array& var, py::array& std_out, double eps,
                              const py::array& scale, py::object bias, bool relu,
                              double slope) {
        const std::int64_t C = mean.size();
        const View v = view_of(x, C);
        require(y.size() == x.size() && var.size() == C && std_out.size() == C &&
                    scale.size() == C && (bias.is_none() || py::len(bias) == size_t(C)),
                "bn_scale_relu: shapes do not match");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(y, "y");
            const T *mp = in_ptr<T>(mean, "mean"), *vp = in_ptr<T>(var, "var");
            const T *sp = in_ptr<T>(scale, "scale"), *bp = opt_in_ptr<T>(bias, "bias");
            T* sd = out_ptr<T>(std_out, "std");
            Release release;
            bn_scale_relu<T>(in, out, mp, vp, sd, eps, sp, bp, relu, T(slope), v);
        });
    }, "y <- relu(((x - mean) / sqrt(var + eps)) * scale[c] + bias[c]) per channel, as the "
       "three layers compute it (inference)");
    m.def("bn_forward", [](const py::array& x, py::array& y, py::array& mean, py::array& var,
                           py::array& std_out, bool batch_stats, double eps, py::object y2) {
        const std::int64_t C = mean.size();
        const View v = view_of(x, C);
        require(y.size() == x.size() && var.size() == C && std_out.size() == C &&
                    (y2.is_none() || y2.cast<py::array>().size() == x.size()),
                "bn_forward: shapes do not match");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(y, "y");
            T* out2 = opt_out_ptr<T>(y2, "y2");
            T* mp = out_ptr<T>(mean, "mean");
            T* vp = out_ptr<T>(var, "var");
            T* sp = out_ptr<T>(std_out, "std");
            Release release;
            bn_forward<T>(in, out, out2, mp, vp, sp, batch_stats, eps, v);
        });
    }, "y (and y2, unless None) <- (x - mean) / sqrt(var + eps) per channel; batch_stats: "
       "mean, var computed first");
    m.def("bn_backward", [](const py::array& dy, const py::array& y, const py::array& sd,
                            py::array& dx, bool global_stats) {
        const View v = view_of(dy, sd.size());
        require(y.size() == dy.size() && dx.size() == dy.size(), "bn_backward: shapes differ");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T *g = in_ptr<T>(dy, "dy"), *yy = in_ptr<T>(y, "y"), *s = in_ptr<T>(sd, "std");
            T* out = out_ptr<T>(dx, "dx");
            Release release;
            bn_backward<T>(g, yy, s, out, global_stats, v);
        });
    }, "dx <- the BatchNorm input gradient from dy, the normalized y and std");
    m.def("scale_forward", [](const py::array& x, const py::array& scale, py::object bias,
                              py::array& y, py::object keep, bool relu, double slope) {
        const View v = view_of(x, scale.size());
        require(y.size() == x.size() &&
                    (keep.is_none() || keep.cast<py::array>().size() == x.size()),
                "scale_forward: y (and keep) must have x's size");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T *in = in_ptr<T>(x, "x"), *s = in_ptr<T>(scale, "scale");
            const T* b = opt_in_ptr<T>(bias, "bias");
            if (b) require(py::len(bias) == static_cast<size_t>(v.C), "scale_forward: bias");
            T* out = out_ptr<T>(y, "y");
            T* kept = opt_out_ptr<T>(keep, "keep");
            Release release;
            scale_forward<T>(in, s, b, out, kept, relu && !kept, T(slope), v);
        });
    }, "y <- x * scale[c] (+ bias[c]) per channel (axis 1); keep (unless None) <- x first; "
       "relu (without keep): then the leaky ReLU of that");
    m.def("bn_scale_relu_backward", [](const py::array& dy, py::object top, double slope,
                                       const py::array& y, const py::array& sd,
                                       const py::array& scale, py::array& g, py::array& dx,
                                       py::object dscale, py::object dbias, bool global_stats) {
        const std::int64_t C = sd.size();
        const View v = view_of(dy, C);
        require(y.size() == dy.size() && g.size() == dy.size() && dx.size() == dy.size() &&
                    scale.size() == C &&
                    (top.is_none() || top.cast<py::array>().size() == dy.size()) &&
                    (dscale.is_none() || dscale.cast<py::array>().size() == C) &&
                    (dbias.is_none() || dbias.cast<py::array>().size() == C),
                "bn_scale_relu_backward: shapes do not match");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T *d = in_ptr<T>(dy, "dy"), *t = opt_in_ptr<T>(top, "top");
            const T *yy = in_ptr<T>(y, "y"), *s = in_ptr<T>(sd, "std");
            const T* a = in_ptr<T>(scale, "scale");
            T *gp = out_ptr<T>(g, "g"), *out = out_ptr<T>(dx, "dx");
            T *ds = opt_out_ptr<T>(dscale, "dscale"), *db = opt_out_ptr<T>(dbias, "dbias");
            Release release;
            bn_scale_relu_backward<T>(d, t, T(slope), yy, s, a, gp, out, ds, db, global_stats,
                                      v);
        });
    }, "backward of a training chain BatchNorm -> Scale (-> ReLU, given its top): g <- Scale's "
       "dx, dscale/dbias += their sums, dx <- BatchNorm's dx (g may be dy, dx may be g)");
    m.def("scale_backward", [](const py::array& dy, const py::array& x, const py::array& scale,
                               py::object dx, py::object dscale, py::object dbias) {
        const View v = view_of(dy, scale.size());
        require(x.size() == dy.size(), "scale_backward: x must have dy's size");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T *g = in_ptr<T>(dy, "dy"), *in = in_ptr<T>(x, "x");
            const T* s = in_ptr<T>(scale, "scale");
            T* out = opt_out_ptr<T>(dx, "dx");
            T* ds = opt_out_ptr<T>(dscale, "dscale");
            T* db = opt_out_ptr<T>(dbias, "dbias");
            if (out) require(dx.cast<py::array>().size() == dy.size(), "scale_backward: dx");
            if (ds) require(dscale.cast<py::array>().size() == v.C, "scale_backward: dscale");
            if (db) require(dbias.cast<py::array>().size() == v.C, "scale_backward: dbias");
            Release release;
            scale_backward<T>(g, in, s, out, ds, db, v);
        });
    }, "dx <- dy * scale[c]; dscale[c] += sum(dy * x); dbias[c] += sum(dy) (each optional)");
}

}  // namespace minicnn
