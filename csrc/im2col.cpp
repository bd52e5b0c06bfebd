// im2col / col2im and the layout moves around the convolution's GEMM (minicnn/ops/conv.py).
//
// The fast convolution folds a chunk of nb images into one matrix product per group:
//
//     cols (C*kh*kw, nb*oh*ow)   row (c, i, j), column (n, y, z):
//         cols[(c, i, j), (n, y, z)] = x[n0 + n, c, y*sh + i*dh - ph, z*sw + j*dw - pw]  (0 on padding)
//     y_t (F, nb*oh*ow) = w (F, C*kh*kw) @ cols                       (per group, by BLAS)
//
// so the products are large even at 13x13 maps, where Caffe's one GEMM per image is small.
// im2col_rows fills cols; col2im_rows is its adjoint (adds each column entry back onto the
// pixel it was read from). fnp_to_nfp moves y_t into the (N, F, oh, ow) output adding the bias,
// nfp_to_fnp moves dy the other way and sums it per filter (the bias gradient) on the way.
//
// phases_gather / phases_scatter move planes to and from the "space to batch" split of a
// dilated convolution (minicnn/ops/conv.py, _atrous_forward): the phase of residues (a, b)
// holds every dh-th row from row a and every dw-th column from column b of the padded plane.
#include <cstring>
#include <string>

#include "im2col.h"

namespace minicnn {

// y[n0 + n, f, :] = y_t[f, n, :] + bias[f]   for y_t (F, nb*P) and y (N, F, ...P).
template <typename T>
static void fnp_to_nfp(const T* s, T* d, const T* b, std::int64_t F, std::int64_t P,
                       std::int64_t n0, std::int64_t nb) {
#pragma omp parallel for collapse(2) schedule(static) if (nb * F * P > PARALLEL_WORK)
    for (std::int64_t n = 0; n < nb; ++n) {
        for (std::int64_t f = 0; f < F; ++f) {
            const T* from = s + (f * nb + n) * P;
            T* to = d + ((n0 + n) * F + f) * P;
            if (b) {
                const T add = b[f];
                for (std::int64_t p = 0; p < P; ++p) to[p] = from[p] + add;
            } else {
                std::memcpy(to, from, sizeof(T) * P);
            }
        }
    }
}

// dy_t[f, n, :] = dy[n0 + n, f, :]; sums[f] += the sum of those values when sums is given.
template <typename T>
static void nfp_to_fnp(const T* s, T* d, T* total, std::int64_t F, std::int64_t P,
                       std::int64_t n0, std::int64_t nb) {
#pragma omp parallel for schedule(static) if (nb * F * P > PARALLEL_WORK)
    for (std::int64_t f = 0; f < F; ++f) {
        double acc = 0;
        for (std::int64_t n = 0; n < nb; ++n) {
            const T* from = s + ((n0 + n) * F + f) * P;
            T* to = d + (f * nb + n) * P;
            std::memcpy(to, from, sizeof(T) * P);
            if (total) {
                T part = 0;
#pragma omp simd reduction(+ : part)
                for (std::int64_t p = 0; p < P; ++p) part += from[p];
                acc += part;
            }
        }
        if (total) total[f] += T(acc);
    }
}

// --- bindings: shapes are checked here, once; the loops above trust them -------------------------

static Geometry geometry(const py::tuple& t) {
    require(t.size() == 8, "geometry must be (kh, kw, sh, sw, ph, pw, dh, dw)");
    Geometry g{t[0].cast<std::int64_t>(), t[1].cast<std::int64_t>(), t[2].cast<std::int64_t>(),
               t[3].cast<std::int64_t>(), t[4].cast<std::int64_t>(), t[5].cast<std::int64_t>(),
               t[6].cast<std::int64_t>(), t[7].cast<std::int64_t>()};
    require(g.kh >= 1 && g.kw >= 1 && g.sh >= 1 && g.sw >= 1 && g.dh >= 1 && g.dw >= 1 &&
                g.ph >= 0 && g.pw >= 0, "invalid convolution geometry");
    return g;
}

static void check_cols(const py::array& image, const py::array& cols, std::int64_t n0,
                       std::int64_t nb, const Geometry& g, std::int64_t oh, std::int64_t ow,
                       const char* who) {
    require(image.ndim() == 4 && cols.ndim() == 2, std::string(who) + ": image 4-D, cols 2-D");
    require(n0 >= 0 && nb >= 1 && n0 + nb <= image.shape(0) && oh >= 1 && ow >= 1,
            std::string(who) + ": image range out of bounds");
    require(cols.shape(0) == image.shape(1) * g.kh * g.kw && cols.shape(1) == nb * oh * ow,
            std::string(who) + ": cols has the wrong shape");
}

// sums[f] = sum of v[n, f, ...] over n and the trailing axes (a bias gradient), in double.
template <typename T>
static void channel_sums(const T* v, T* sums, std::int64_t N, std::int64_t F, std::int64_t P) {
#pragma omp parallel for schedule(static) if (N * F * P > PARALLEL_WORK)
    for (std::int64_t f = 0; f < F; ++f) {
        double total = 0;
        for (std::int64_t n = 0; n < N; ++n) {
            const T* row = v + (n * F + f) * P;
            T part = 0;
#pragma omp simd reduction(+ : part)
            for (std::int64_t p = 0; p < P; ++p) part += row[p];
            total += part;
        }
        sums[f] = T(total);
    }
}

// The split's index map, both directions: phase image p = (ia * count_w + ib) * N + n holds
//     image[p, k, i, j] = plane[n, k, a0 + ia + dh*i - off_h, b0 + ib + dw*j - off_w]
// gather reads it (0 outside the plane: the padding), scatter writes it back (dropping the
// image's values that fall outside the plane).
struct PhaseMap {
    std::int64_t N, K, H, W, count_h, count_w, sh, sw, dh, dw, a0, b0, off_h, off_w;
};

template <bool gather>   // gather: from = planes, to = images; scatter: the other way round
static void phases_move(const PhaseMap& m, const float* from, float* to) {
    const std::int64_t planes = m.N * m.K, phases = m.count_h * m.count_w;
    // plane by plane (each read or written once, from cache), every phase of it in turn
#pragma omp parallel for schedule(static) if (planes * phases * m.sh * m.sw > PARALLEL_WORK)
    for (std::int64_t nk = 0; nk < planes; ++nk) {
        const std::int64_t plane = nk * m.H * m.W;
        for (std::int64_t phase = 0; phase < phases; ++phase) {
            const std::int64_t row0 = m.a0 + phase / m.count_w - m.off_h;
            const std::int64_t col0 = m.b0 + phase % m.count_w - m.off_w;
            const std::int64_t image = (phase * planes + nk) * m.sh * m.sw;   // (phase, n, k)
            for (std::int64_t i = 0; i < m.sh; ++i) {
                const std::int64_t r = row0 + m.dh * i;
                for (std::int64_t j = 0; j < m.sw; ++j) {
                    const std::int64_t c = col0 + m.dw * j;
                    const bool inside = r >= 0 && r < m.H && c >= 0 && c < m.W;
                    const std::int64_t at = plane + r * m.W + c, pixel = image + i * m.sw + j;
                    if (gather)
                        to[pixel] = inside ? from[at] : 0.0f;
                    else if (inside)
                        to[at] = from[pixel];
                }
            }
        }
    }
}

static PhaseMap phase_map(const py::array& planes, const py::array& images,
                          const py::tuple& split, const char* what) {
    require(planes.ndim() == 4 && images.ndim() == 4 && py::len(split) == 8,
            std::string(what) + ": planes and images 4-D, split (count_h, count_w, dh, dw, a0, "
            "b0, off_h, off_w)");
    auto at = [&](int i) { return split[i].cast<std::int64_t>(); };
    const PhaseMap m{planes.shape(0), planes.shape(1), planes.shape(2), planes.shape(3),
                     at(0), at(1), images.shape(2), images.shape(3), at(2), at(3), at(4), at(5),
                     at(6), at(7)};
    require(m.count_h >= 1 && m.count_w >= 1 && m.dh >= 1 && m.dw >= 1 &&
                images.shape(0) == m.count_h * m.count_w * m.N && images.shape(1) == m.K,
            std::string(what) + ": images must be (count_h * count_w * N, K, rows, columns)");
    return m;
}

REGISTER_NATIVE(m) {
    m.def("phases_gather", [](const py::array& planes, py::array& images,
                              const py::tuple& split) {
        const PhaseMap p = phase_map(planes, images, split, "phases_gather");
        const float* src = in_ptr<float>(planes, "planes");
        float* dst = out_ptr<float>(images, "images");
        Release release;
        phases_move<true>(p, src, dst);
    }, "images[(ia*count_w + ib)*N + n, k, i, j] <- planes[n, k, a0 + ia + dh*i - off_h, "
       "b0 + ib + dw*j - off_w] (0 outside), float32; split = (count_h, count_w, dh, dw, a0, b0, "
       "off_h, off_w)");
    m.def("phases_scatter", [](const py::array& images, py::array& planes,
                               const py::tuple& split) {
        const PhaseMap p = phase_map(planes, images, split, "phases_scatter");
        const float* src = in_ptr<float>(images, "images");
        float* dst = out_ptr<float>(planes, "planes");
        Release release;
        phases_move<false>(p, src, dst);
    }, "the inverse of phases_gather: planes at the images' places <- images (values outside "
       "the planes dropped)");
    m.def("channel_sums", [](const py::array& v, py::array& sums) {
        require(v.ndim() >= 2 && sums.size() == v.shape(1), "channel_sums: sums must be (F,)");
        const std::int64_t N = v.shape(0), F = v.shape(1);
        const std::int64_t P = (N * F) != 0 ? v.size() / (N * F) : 0;
        by_dtype(v, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(v, "v");
            T* out = out_ptr<T>(sums, "sums");
            Release release;
            channel_sums<T>(in, out, N, F, P);
        });
    }, "sums[f] <- v[:, f].sum() for v (N, F, ...)");
    m.def("im2col_rows", [](const py::array& x, py::array& cols, std::int64_t n0, std::int64_t nb,
                            const py::tuple& geom, std::int64_t oh, std::int64_t ow) {
        const Geometry g = geometry(geom);
        check_cols(x, cols, n0, nb, g, oh, ow, "im2col_rows");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T* xs = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(cols, "cols");
            Release release;
            im2col_rows<T>(xs, out, x.shape(1), x.shape(2), x.shape(3), n0, nb, g, oh, ow);
        });
    }, "cols (C*kh*kw, nb*oh*ow) <- the windows of images n0..n0+nb-1 of x (N, C, H, W); "
       "geom = (kh, kw, sh, sw, ph, pw, dh, dw)");
    m.def("col2im_rows", [](const py::array& dcols, py::array& dx, std::int64_t n0,
                            std::int64_t nb, const py::tuple& geom, std::int64_t oh,
                            std::int64_t ow) {
        const Geometry g = geometry(geom);
        check_cols(dx, dcols, n0, nb, g, oh, ow, "col2im_rows");
        by_dtype(dcols, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(dcols, "dcols");
            T* out = out_ptr<T>(dx, "dx");
            Release release;
            col2im_rows<T>(in, out, dx.shape(1), dx.shape(2), dx.shape(3), n0, nb, g, oh, ow);
        });
    }, "dx[n0:n0+nb] <- the adjoint of im2col_rows applied to dcols");
    m.def("fnp_to_nfp", [](const py::array& src, py::array& dst, std::int64_t n0, std::int64_t nb,
                           py::object bias) {
        require(dst.ndim() >= 2, "fnp_to_nfp: dst must be (N, F, ...)");
        const std::int64_t N = dst.shape(0), F = dst.shape(1);
        const std::int64_t P = (N * F) != 0 ? dst.size() / (N * F) : 0;
        require(n0 >= 0 && nb >= 1 && n0 + nb <= N && src.size() == F * nb * P,
                "fnp_to_nfp: shapes do not match");
        by_dtype(src, [&](auto tag) {
            using T = decltype(tag);
            const T* s = in_ptr<T>(src, "src");
            T* d = out_ptr<T>(dst, "dst");
            const T* b = opt_in_ptr<T>(bias, "bias");
            if (b) require(py::len(bias) == static_cast<size_t>(F), "fnp_to_nfp: bias size");
            Release release;
            fnp_to_nfp<T>(s, d, b, F, P, n0, nb);
        });
    }, "dst[n0 + n, f] <- src[f, n] (+ bias[f]) for src (F, nb*P), dst (N, F, ...)");
    m.def("nfp_to_fnp", [](const py::array& src, py::array& dst, std::int64_t n0, std::int64_t nb,
                           py::object sums) {
        require(src.ndim() >= 2, "nfp_to_fnp: src must be (N, F, ...)");
        const std::int64_t N = src.shape(0), F = src.shape(1);
        const std::int64_t P = (N * F) != 0 ? src.size() / (N * F) : 0;
        require(n0 >= 0 && nb >= 1 && n0 + nb <= N && dst.size() == F * nb * P,
                "nfp_to_fnp: shapes do not match");
        by_dtype(src, [&](auto tag) {
            using T = decltype(tag);
            const T* s = in_ptr<T>(src, "src");
            T* d = out_ptr<T>(dst, "dst");
            T* total = opt_out_ptr<T>(sums, "sums");
            if (total) require(py::len(sums) == static_cast<size_t>(F), "nfp_to_fnp: sums size");
            Release release;
            nfp_to_fnp<T>(s, d, total, F, P, n0, nb);
        });
    }, "dst[f, n] <- src[n0 + n, f] for src (N, F, ...), dst (F, nb*P); sums[f] += their sum");
}

}  // namespace minicnn
