// im2col_rows / col2im_rows: the window columns of a chunk of images and their adjoint, shared by
// csrc/im2col.cpp (the BLAS path, float64) and csrc/conv_gemm.cpp (its col2im).
//
//     cols (C*kh*kw, nb*oh*ow)   row (c, i, j), column (n, y, z):
//         cols[(c, i, j), (n, y, z)] = x[n0 + n, c, y*sh + i*dh - ph, z*sw + j*dw - pw]  (0 on padding)
#pragma once

#include <cstring>

#include "common.h"

namespace minicnn {

struct Geometry {
    std::int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

template <typename T>
MINICNN_VECTOR_CLONES static void im2col_rows(const T* xs, T* out, std::int64_t C, std::int64_t H,
                                              std::int64_t W, std::int64_t n0, std::int64_t nb,
                                              const Geometry& g, std::int64_t oh,
                                              std::int64_t ow) {
    const std::int64_t P = oh * ow, rows = C * g.kh * g.kw;
#pragma omp parallel for collapse(2) schedule(static) if (rows * nb * P > (1 << 16))
    for (std::int64_t row = 0; row < rows; ++row) {
        for (std::int64_t n = 0; n < nb; ++n) {
            const std::int64_t c = row / (g.kh * g.kw), i = (row / g.kw) % g.kh, j = row % g.kw;
            const std::int64_t off_w = j * g.dw - g.pw;
            std::int64_t lo, hi;
            valid_range(W, g.sw, off_w, ow, lo, hi);
            const T* plane = xs + ((n0 + n) * C + c) * H * W;
            T* dst = out + row * nb * P + n * P;
            for (std::int64_t y = 0; y < oh; ++y, dst += ow) {
                const std::int64_t r = y * g.sh + i * g.dh - g.ph;
                if (r < 0 || r >= H || lo == hi) {
                    std::memset(dst, 0, sizeof(T) * ow);
                    continue;
                }
                const T* src = plane + r * W + off_w;
                for (std::int64_t z = 0; z < lo; ++z) dst[z] = T(0);
                if (g.sw == 1) {
                    std::memcpy(dst + lo, src + lo, sizeof(T) * (hi - lo));
                } else {
                    for (std::int64_t z = lo; z < hi; ++z) dst[z] = src[z * g.sw];
                }
                for (std::int64_t z = hi; z < ow; ++z) dst[z] = T(0);
            }
        }
    }
}

template <typename T>
MINICNN_VECTOR_CLONES static void col2im_rows(const T* in, T* xs, std::int64_t C, std::int64_t H,
                                              std::int64_t W, std::int64_t n0, std::int64_t nb,
                                              const Geometry& g, std::int64_t oh,
                                              std::int64_t ow) {
    const std::int64_t P = oh * ow;
    // One (image, channel) plane per task: the taps of one channel all land on its own plane,
    // so no two threads ever add to the same pixel.
#pragma omp parallel for collapse(2) schedule(static) if (nb * C * g.kh * g.kw * P > (1 << 16))
    for (std::int64_t n = 0; n < nb; ++n) {
        for (std::int64_t c = 0; c < C; ++c) {
            T* plane = xs + ((n0 + n) * C + c) * H * W;
            std::memset(plane, 0, sizeof(T) * H * W);
            for (std::int64_t i = 0; i < g.kh; ++i) {
                for (std::int64_t j = 0; j < g.kw; ++j) {
                    const std::int64_t off_w = j * g.dw - g.pw;
                    std::int64_t lo, hi;
                    valid_range(W, g.sw, off_w, ow, lo, hi);
                    const T* src = in + ((c * g.kh + i) * g.kw + j) * nb * P + n * P;
                    for (std::int64_t y = 0; y < oh; ++y, src += ow) {
                        const std::int64_t r = y * g.sh + i * g.dh - g.ph;
                        if (r < 0 || r >= H) continue;
                        T* dst = plane + r * W + off_w;
                        if (g.sw == 1) {
                            for (std::int64_t z = lo; z < hi; ++z) dst[z] += src[z];
                        } else {
                            for (std::int64_t z = lo; z < hi; ++z) dst[z * g.sw] += src[z];
                        }
                    }
                }
            }
        }
    }
}

}  // namespace minicnn
