// Direct depthwise convolution (minicnn/ops/conv.py, the case C/G == 1): each output channel f
// reads one input channel, c = f / m, where m = F / C is the channel multiplier.
//
//     y[n, f, y, z] = b[f] + sum_{i,j} w[f, 0, i, j] * x[n, f/m, y*sh + i*dh - ph, z*sw + j*dw - pw]
//
// im2col + GEMM would multiply a (m x kh*kw) by a (kh*kw x oh*ow) matrix per channel: far too
// thin for BLAS, and memory bound on the columns. Here every output row is accumulated tap by
// tap in cache, and the three passes (forward, backward-data, backward-filter) each read their
// inputs once. Channels (or filters) are split across threads, so no two threads write one
// value.
#include <cstring>
#include <vector>

#include "common.h"

namespace minicnn {

namespace {

struct Shape {
    std::int64_t N, C, H, W, F, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

}  // namespace

// One output row: out[z] += sum over the taps of row r of the input plane.
template <typename T>
MINICNN_VECTOR_CLONES static void forward_plane(const T* x, const T* w, T bias, T* y,
                                                const Shape& s) {
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
        T* out = y + oy * s.ow;
        for (std::int64_t z = 0; z < s.ow; ++z) out[z] = bias;
        for (std::int64_t i = 0; i < s.kh; ++i) {
            const std::int64_t r = oy * s.sh + i * s.dh - s.ph;
            if (r < 0 || r >= s.H) continue;
            const T* row = x + r * s.W;
            for (std::int64_t j = 0; j < s.kw; ++j) {
                const std::int64_t off = j * s.dw - s.pw;
                std::int64_t lo, hi;
                valid_range(s.W, s.sw, off, s.ow, lo, hi);
                const T tap = w[i * s.kw + j];
                const T* src = row + off;
                if (s.sw == 1) {
                    for (std::int64_t z = lo; z < hi; ++z) out[z] += tap * src[z];
                } else {
                    for (std::int64_t z = lo; z < hi; ++z) out[z] += tap * src[z * s.sw];
                }
            }
        }
    }
}

// dx plane += the adjoint of forward_plane for one filter.
template <typename T>
MINICNN_VECTOR_CLONES static void backward_data_plane(const T* dy, const T* w, T* dx,
                                                      const Shape& s) {
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
        const T* g = dy + oy * s.ow;
        for (std::int64_t i = 0; i < s.kh; ++i) {
            const std::int64_t r = oy * s.sh + i * s.dh - s.ph;
            if (r < 0 || r >= s.H) continue;
            T* row = dx + r * s.W;
            for (std::int64_t j = 0; j < s.kw; ++j) {
                const std::int64_t off = j * s.dw - s.pw;
                std::int64_t lo, hi;
                valid_range(s.W, s.sw, off, s.ow, lo, hi);
                const T tap = w[i * s.kw + j];
                T* dst = row + off;
                if (s.sw == 1) {
                    for (std::int64_t z = lo; z < hi; ++z) dst[z] += tap * g[z];
                } else {
                    for (std::int64_t z = lo; z < hi; ++z) dst[z * s.sw] += tap * g[z];
                }
            }
        }
    }
}

// acc[i*kw + j] += sum_{y,z} dy[y, z] * x[y*sh + i*dh - ph, z*sw + j*dw - pw] for one plane.
template <typename T>
MINICNN_VECTOR_CLONES static void backward_filter_plane(const T* dy, const T* x, double* acc,
                                                        const Shape& s) {
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
        const T* g = dy + oy * s.ow;
        for (std::int64_t i = 0; i < s.kh; ++i) {
            const std::int64_t r = oy * s.sh + i * s.dh - s.ph;
            if (r < 0 || r >= s.H) continue;
            const T* row = x + r * s.W;
            for (std::int64_t j = 0; j < s.kw; ++j) {
                const std::int64_t off = j * s.dw - s.pw;
                std::int64_t lo, hi;
                valid_range(s.W, s.sw, off, s.ow, lo, hi);
                const T* src = row + off;
                T dot = 0;
                if (s.sw == 1) {
#pragma omp simd reduction(+ : dot)
                    for (std::int64_t z = lo; z < hi; ++z) dot += g[z] * src[z];
                } else {
#pragma omp simd reduction(+ : dot)
                    for (std::int64_t z = lo; z < hi; ++z) dot += g[z] * src[z * s.sw];
                }
                acc[i * s.kw + j] += dot;
            }
        }
    }
}

template <typename T>
static void depthwise_forward(const T* x, const T* w, const T* b, T* y, const Shape& s) {
    const std::int64_t m = s.F / s.C;
#pragma omp parallel for collapse(2) schedule(static)
    for (std::int64_t n = 0; n < s.N; ++n) {
        for (std::int64_t f = 0; f < s.F; ++f) {
            forward_plane<T>(x + (n * s.C + f / m) * s.H * s.W, w + f * s.kh * s.kw,
                             b ? b[f] : T(0), y + (n * s.F + f) * s.oh * s.ow, s);
        }
    }
}

template <typename T>
static void depthwise_backward_data(const T* dy, const T* w, T* dx, const Shape& s) {
    const std::int64_t m = s.F / s.C;
#pragma omp parallel for collapse(2) schedule(static)
    for (std::int64_t n = 0; n < s.N; ++n) {
        for (std::int64_t c = 0; c < s.C; ++c) {
            T* plane = dx + (n * s.C + c) * s.H * s.W;
            std::memset(plane, 0, sizeof(T) * s.H * s.W);
            for (std::int64_t f = c * m; f < (c + 1) * m; ++f)
                backward_data_plane<T>(dy + (n * s.F + f) * s.oh * s.ow, w + f * s.kh * s.kw,
                                       plane, s);
        }
    }
}

template <typename T>
static void depthwise_backward_filter(const T* dy, const T* x, T* dw, const Shape& s) {
    const std::int64_t m = s.F / s.C, taps = s.kh * s.kw;
#pragma omp parallel for schedule(static)
    for (std::int64_t f = 0; f < s.F; ++f) {
        std::vector<double> acc(taps, 0.0);
        for (std::int64_t n = 0; n < s.N; ++n)
            backward_filter_plane<T>(dy + (n * s.F + f) * s.oh * s.ow,
                                     x + (n * s.C + f / m) * s.H * s.W, acc.data(), s);
        for (std::int64_t t = 0; t < taps; ++t) dw[f * taps + t] = T(acc[t]);
    }
}

// --- bindings ----------------------------------------------------------------------------------

static Shape shape_of(const py::array& x, const py::array& w, const py::tuple& geom,
                      std::int64_t oh, std::int64_t ow) {
    require(geom.size() == 8, "geometry must be (kh, kw, sh, sw, ph, pw, dh, dw)");
    require(x.ndim() == 4 && w.ndim() == 4, "depthwise: x and w must be 4-D");
    Shape s{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), oh, ow,
            geom[0].cast<std::int64_t>(), geom[1].cast<std::int64_t>(),
            geom[2].cast<std::int64_t>(), geom[3].cast<std::int64_t>(),
            geom[4].cast<std::int64_t>(), geom[5].cast<std::int64_t>(),
            geom[6].cast<std::int64_t>(), geom[7].cast<std::int64_t>()};
    require(s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.dh >= 1 && s.dw >= 1 &&
                s.ph >= 0 && s.pw >= 0 && oh >= 1 && ow >= 1, "depthwise: invalid geometry");
    require(s.C >= 1 && s.F % s.C == 0 && w.shape(1) == 1 && w.shape(2) == s.kh &&
                w.shape(3) == s.kw, "depthwise: w must be (F, 1, kh, kw) with F a multiple of C");
    return s;
}

static void check_4d(const py::array& a, std::int64_t n, std::int64_t c, std::int64_t h,
                     std::int64_t w, const char* name) {
    require(a.ndim() == 4 && a.shape(0) == n && a.shape(1) == c && a.shape(2) == h &&
                a.shape(3) == w, std::string("depthwise: ") + name + " has the wrong shape");
}

REGISTER_NATIVE(m) {
    m.def("depthwise_forward", [](const py::array& x, const py::array& w, py::object b,
                                  py::array& y, const py::tuple& geom) {
        require(y.ndim() == 4, "depthwise: y must be 4-D");
        const Shape s = shape_of(x, w, geom, y.shape(2), y.shape(3));
        check_4d(y, s.N, s.F, s.oh, s.ow, "y");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T *xs = in_ptr<T>(x, "x"), *ws = in_ptr<T>(w, "w");
            const T* bs = opt_in_ptr<T>(b, "b");
            if (bs) require(py::len(b) == static_cast<size_t>(s.F), "depthwise: bias size");
            T* ys = out_ptr<T>(y, "y");
            py::gil_scoped_release release;
            depthwise_forward<T>(xs, ws, bs, ys, s);
        });
    }, "y <- depthwise convolution of x (N, C, H, W) by w (F, 1, kh, kw) (+ b)");
    m.def("depthwise_backward_data", [](const py::array& dy, const py::array& w, py::array& dx,
                                        const py::tuple& geom) {
        require(dy.ndim() == 4, "depthwise: dy must be 4-D");
        const Shape s = shape_of(dx, w, geom, dy.shape(2), dy.shape(3));
        check_4d(dy, s.N, s.F, s.oh, s.ow, "dy");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T *g = in_ptr<T>(dy, "dy"), *ws = in_ptr<T>(w, "w");
            T* out = out_ptr<T>(dx, "dx");
            py::gil_scoped_release release;
            depthwise_backward_data<T>(g, ws, out, s);
        });
    }, "dx <- d(loss)/dx of the depthwise convolution, from dy");
    m.def("depthwise_backward_filter", [](const py::array& dy, const py::array& x, py::array& dw,
                                          const py::tuple& geom) {
        require(dy.ndim() == 4, "depthwise: dy must be 4-D");
        const Shape s = shape_of(x, dw, geom, dy.shape(2), dy.shape(3));
        check_4d(dy, s.N, s.F, s.oh, s.ow, "dy");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T *g = in_ptr<T>(dy, "dy"), *xs = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(dw, "dw");
            py::gil_scoped_release release;
            depthwise_backward_filter<T>(g, xs, out, s);
        });
    }, "dw (F, 1, kh, kw) <- d(loss)/dw of the depthwise convolution, from dy and x");
}

}  // namespace minicnn
