// A float32 matrix product, C (M x N) = A (M x L) * B (L x N), in the BLIS style, for the
// convolution kernels (csrc/conv_gemm.cpp).
//
// Why not just call BLAS: a convolution's matrices are never stored. B is the im2col of the
// input (or a transposed gradient), and C goes to an (N, F, H, W) blob with a bias. Here the
// caller supplies the packing of A and B and the store of C, so the im2col happens while
// packing a cache-sized block, and the result is written once, to its final place. It also
// keeps every thread in one OpenMP pool (BLAS and OpenMP pools spinning against each other on
// two cores cost more than either).
//
// Blocking (Goto / BLIS): for each macro tile of C (MC rows x NC columns, one per task), for
// each block of the inner dimension (KC):
//     pack A block  (MC x KC) into MR-row panels:    Ap[panel][k][MR]
//     pack B block  (KC x NC) into NR-column panels: Bp[panel][k][NR]
//     every (MR x NR) tile of the macro tile += Ap panel * Bp panel   (the micro-kernel)
// and the finished macro tile is handed to the store. The micro-kernel keeps its MR x NR tile
// of C in registers: AVX-512 6 x 32 (12 zmm accumulators), AVX2 6 x 16, or a portable loop.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MINICNN_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd_level.h"

namespace minicnn {
namespace gemm {

constexpr std::int64_t MR = 6;

// --- micro-kernels: c (MR x nr, row stride ldc) (+)= a panel (kc x MR) * b panel (kc x nr) ---

using MicroKernel = void (*)(std::int64_t kc, const float* a, const float* b, float* c,
                             std::int64_t ldc, bool accumulate);
// The same product with A read in place from a row-major matrix (row stride lda; rows past
// ``rows`` repeat the last one, whose results the caller drops): no packing, for an A that
// each call would otherwise pack whole for a few columns of B (a convolution's weights at
// batch 1).
using MicroKernelRows = void (*)(std::int64_t kc, const float* a, std::int64_t lda,
                                 std::int64_t rows, const float* b, float* c, std::int64_t ldc,
                                 bool accumulate);
// A's rows at base + off[r], read at inner indices pos[k] (TapRowsA), B a packed panel.
using MicroKernelTaps = void (*)(std::int64_t kc, const float* base, const std::int64_t* off,
                                 std::int64_t rows, const std::int64_t* pos, const float* b,
                                 float* c, std::int64_t ldc, bool accumulate);
// A in place as above, and B read straight from memory: row k of the B panel is the nr values
// at base + off[k] (the direct convolution's taps, csrc/conv_gemm.cpp).
using MicroKernelOffsets = void (*)(std::int64_t kc, const float* a, std::int64_t lda,
                                    std::int64_t rows, const float* base,
                                    const std::int64_t* off, float* c, std::int64_t ldc,
                                    bool accumulate);

// How a micro-kernel reads a[k][r] (k along the inner dimension, r < MR along the tile's
// rows): from a packed panel, or from MR rows of a matrix.
struct PanelA {
    const float* a;
    float at(std::int64_t k, int r) const { return a[k * MR + r]; }
};
struct RowsA {
    const float* row[MR];
    RowsA(const float* a, std::int64_t lda, std::int64_t rows) {
        for (int r = 0; r < MR; ++r) row[r] = a + std::min<std::int64_t>(r, rows - 1) * lda;
    }
    float at(std::int64_t k, int r) const { return row[r][k]; }
};

// MR rows at offsets of their own from one base (rows past ``rows`` repeat the last), read at
// the inner indices a table gives: a[k][r] = base[off[r] + pos[k]]. The taps of the direct
// convolution's filter gradient (csrc/conv_gemm.cpp): row r = tap r, pos[k] = where output
// position k lies on the padded rows, so the positions the forward computes and drops are
// never visited; and the other way round in its kept positions' forward: row r = an output
// position, pos[k] = tap k's offset.
struct TapRowsA {
    const float* row[MR];
    const std::int64_t* pos;
    TapRowsA(const float* base, const std::int64_t* off, std::int64_t rows,
             const std::int64_t* positions)
        : pos(positions) {
        for (int r = 0; r < MR; ++r) row[r] = base + off[std::min<std::int64_t>(r, rows - 1)];
    }
    float at(std::int64_t k, int r) const { return row[r][pos[k]]; }
};

// How a micro-kernel finds b[k][0 .. nr): a packed panel (rows nr apart), or, for the direct
// convolution (csrc/conv_gemm.cpp), nr consecutive values of a padded input at the tap's
// offset: b[k] = base + off[k] (unaligned).
template <int NR>
struct PanelB {
    const float* b;
    const float* at(std::int64_t k) const { return b + k * NR; }
};
struct OffsetB {
    const float* base;
    const std::int64_t* off;
    const float* at(std::int64_t k) const { return base + off[k]; }
};

#ifdef MINICNN_X86
template <typename A, typename B>
__attribute__((target("avx512f"))) inline void micro_avx512_t(std::int64_t kc, const A a,
                                                              const B b, float* c,
                                                              std::int64_t ldc, bool accumulate) {
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (accumulate) {
        c00 = _mm512_loadu_ps(c + 0 * ldc); c01 = _mm512_loadu_ps(c + 0 * ldc + 16);
        c10 = _mm512_loadu_ps(c + 1 * ldc); c11 = _mm512_loadu_ps(c + 1 * ldc + 16);
        c20 = _mm512_loadu_ps(c + 2 * ldc); c21 = _mm512_loadu_ps(c + 2 * ldc + 16);
        c30 = _mm512_loadu_ps(c + 3 * ldc); c31 = _mm512_loadu_ps(c + 3 * ldc + 16);
        c40 = _mm512_loadu_ps(c + 4 * ldc); c41 = _mm512_loadu_ps(c + 4 * ldc + 16);
        c50 = _mm512_loadu_ps(c + 5 * ldc); c51 = _mm512_loadu_ps(c + 5 * ldc + 16);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 =
            _mm512_setzero_ps();
    }
    for (std::int64_t k = 0; k < kc; ++k) {
        const float* bk = b.at(k);
        const __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16);
        __m512 x = _mm512_set1_ps(a.at(k, 0));
        c00 = _mm512_fmadd_ps(x, b0, c00); c01 = _mm512_fmadd_ps(x, b1, c01);
        x = _mm512_set1_ps(a.at(k, 1));
        c10 = _mm512_fmadd_ps(x, b0, c10); c11 = _mm512_fmadd_ps(x, b1, c11);
        x = _mm512_set1_ps(a.at(k, 2));
        c20 = _mm512_fmadd_ps(x, b0, c20); c21 = _mm512_fmadd_ps(x, b1, c21);
        x = _mm512_set1_ps(a.at(k, 3));
        c30 = _mm512_fmadd_ps(x, b0, c30); c31 = _mm512_fmadd_ps(x, b1, c31);
        x = _mm512_set1_ps(a.at(k, 4));
        c40 = _mm512_fmadd_ps(x, b0, c40); c41 = _mm512_fmadd_ps(x, b1, c41);
        x = _mm512_set1_ps(a.at(k, 5));
        c50 = _mm512_fmadd_ps(x, b0, c50); c51 = _mm512_fmadd_ps(x, b1, c51);
    }
    _mm512_storeu_ps(c + 0 * ldc, c00); _mm512_storeu_ps(c + 0 * ldc + 16, c01);
    _mm512_storeu_ps(c + 1 * ldc, c10); _mm512_storeu_ps(c + 1 * ldc + 16, c11);
    _mm512_storeu_ps(c + 2 * ldc, c20); _mm512_storeu_ps(c + 2 * ldc + 16, c21);
    _mm512_storeu_ps(c + 3 * ldc, c30); _mm512_storeu_ps(c + 3 * ldc + 16, c31);
    _mm512_storeu_ps(c + 4 * ldc, c40); _mm512_storeu_ps(c + 4 * ldc + 16, c41);
    _mm512_storeu_ps(c + 5 * ldc, c50); _mm512_storeu_ps(c + 5 * ldc + 16, c51);
}
__attribute__((target("avx512f"))) inline void micro_avx512(std::int64_t kc, const float* a,
                                                            const float* b, float* c,
                                                            std::int64_t ldc, bool accumulate) {
    micro_avx512_t(kc, PanelA{a}, PanelB<32>{b}, c, ldc, accumulate);
}
__attribute__((target("avx512f"))) inline void micro_avx512_rows(
        std::int64_t kc, const float* a, std::int64_t lda, std::int64_t rows, const float* b,
        float* c, std::int64_t ldc, bool accumulate) {
    micro_avx512_t(kc, RowsA(a, lda, rows), PanelB<32>{b}, c, ldc, accumulate);
}
__attribute__((target("avx512f"))) inline void micro_avx512_taps(
        std::int64_t kc, const float* base, const std::int64_t* off, std::int64_t rows,
        const std::int64_t* pos, const float* b, float* c, std::int64_t ldc, bool accumulate) {
    micro_avx512_t(kc, TapRowsA(base, off, rows, pos), PanelB<32>{b}, c, ldc, accumulate);
}
__attribute__((target("avx512f"))) inline void micro_avx512_offsets(
        std::int64_t kc, const float* a, std::int64_t lda, std::int64_t rows, const float* base,
        const std::int64_t* off, float* c, std::int64_t ldc, bool accumulate) {
    micro_avx512_t(kc, RowsA(a, lda, rows), OffsetB{base, off}, c, ldc, accumulate);
}

// A 6 x 48 tile (18 running sums) with A's rows in place (TapRowsA) and B a 48-wide packed
// panel: the kept positions' product of a convolution with 48 (or 96, 144...) filters a group,
// which 32-wide panels would pad by a third (csrc/conv_gemm.cpp, direct_product_kept).
__attribute__((target("avx512f"))) inline void micro_avx512_taps48(
        std::int64_t kc, const float* base, const std::int64_t* off, std::int64_t rows,
        const std::int64_t* pos, const float* b, float* c, std::int64_t ldc, bool accumulate) {
    const TapRowsA a(base, off, rows, pos);
    // named sums: GCC keeps them in registers (an array of 18 vectors it spills)
#define MINICNN_R(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define MINICNN_DECLARE(r) __m512 c##r##0, c##r##1, c##r##2;
#define MINICNN_LOAD(r)                                                                       \
    if (accumulate) {                                                                         \
        c##r##0 = _mm512_loadu_ps(c + (r) * ldc);                                             \
        c##r##1 = _mm512_loadu_ps(c + (r) * ldc + 16);                                        \
        c##r##2 = _mm512_loadu_ps(c + (r) * ldc + 32);                                        \
    } else {                                                                                  \
        c##r##0 = c##r##1 = c##r##2 = _mm512_setzero_ps();                                    \
    }
#define MINICNN_FMA(r)                                                                        \
    {                                                                                         \
        const __m512 x = _mm512_set1_ps(a.at(k, r));                                          \
        c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0);                                            \
        c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);                                            \
        c##r##2 = _mm512_fmadd_ps(x, b2, c##r##2);                                            \
    }
#define MINICNN_STORE(r)                                                                      \
    _mm512_storeu_ps(c + (r) * ldc, c##r##0);                                                 \
    _mm512_storeu_ps(c + (r) * ldc + 16, c##r##1);                                            \
    _mm512_storeu_ps(c + (r) * ldc + 32, c##r##2);
    MINICNN_R(MINICNN_DECLARE)
    MINICNN_R(MINICNN_LOAD)
    for (std::int64_t k = 0; k < kc; ++k) {
        const float* bk = b + k * 48;
        const __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16),
                     b2 = _mm512_loadu_ps(bk + 32);
        MINICNN_R(MINICNN_FMA)
    }
    MINICNN_R(MINICNN_STORE)
#undef MINICNN_R
#undef MINICNN_DECLARE
#undef MINICNN_LOAD
#undef MINICNN_FMA
#undef MINICNN_STORE
}

template <typename A, typename B>
__attribute__((target("avx2,fma"))) inline void micro_avx2_t(std::int64_t kc, const A a,
                                                             const B b, float* c,
                                                             std::int64_t ldc, bool accumulate) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (accumulate) {
        c00 = _mm256_loadu_ps(c + 0 * ldc); c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
        c10 = _mm256_loadu_ps(c + 1 * ldc); c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc); c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc); c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc); c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc); c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 =
            _mm256_setzero_ps();
    }
    for (std::int64_t k = 0; k < kc; ++k) {
        const float* bk = b.at(k);
        const __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
        __m256 x = _mm256_set1_ps(a.at(k, 0));
        c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_set1_ps(a.at(k, 1));
        c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_set1_ps(a.at(k, 2));
        c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_set1_ps(a.at(k, 3));
        c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_set1_ps(a.at(k, 4));
        c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_set1_ps(a.at(k, 5));
        c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    _mm256_storeu_ps(c + 0 * ldc, c00); _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10); _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20); _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30); _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40); _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50); _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}
__attribute__((target("avx2,fma"))) inline void micro_avx2(std::int64_t kc, const float* a,
                                                           const float* b, float* c,
                                                           std::int64_t ldc, bool accumulate) {
    micro_avx2_t(kc, PanelA{a}, PanelB<16>{b}, c, ldc, accumulate);
}
__attribute__((target("avx2,fma"))) inline void micro_avx2_rows(
        std::int64_t kc, const float* a, std::int64_t lda, std::int64_t rows, const float* b,
        float* c, std::int64_t ldc, bool accumulate) {
    micro_avx2_t(kc, RowsA(a, lda, rows), PanelB<16>{b}, c, ldc, accumulate);
}
__attribute__((target("avx2,fma"))) inline void micro_avx2_taps(
        std::int64_t kc, const float* base, const std::int64_t* off, std::int64_t rows,
        const std::int64_t* pos, const float* b, float* c, std::int64_t ldc, bool accumulate) {
    micro_avx2_t(kc, TapRowsA(base, off, rows, pos), PanelB<16>{b}, c, ldc, accumulate);
}
__attribute__((target("avx2,fma"))) inline void micro_avx2_offsets(
        std::int64_t kc, const float* a, std::int64_t lda, std::int64_t rows, const float* base,
        const std::int64_t* off, float* c, std::int64_t ldc, bool accumulate) {
    micro_avx2_t(kc, RowsA(a, lda, rows), OffsetB{base, off}, c, ldc, accumulate);
}
#endif

// The portable one: 6 x 16, which compilers vectorize on any target.
template <typename A, typename B>
inline void micro_generic_t(std::int64_t kc, const A a, const B b, float* c,
                            std::int64_t ldc, bool accumulate) {
    float acc[MR][16];
    for (int r = 0; r < MR; ++r)
        for (int t = 0; t < 16; ++t) acc[r][t] = accumulate ? c[r * ldc + t] : 0.0f;
    for (std::int64_t k = 0; k < kc; ++k) {
        const float* bk = b.at(k);
        for (int r = 0; r < MR; ++r)
            for (int t = 0; t < 16; ++t) acc[r][t] += a.at(k, r) * bk[t];
    }
    for (int r = 0; r < MR; ++r)
        for (int t = 0; t < 16; ++t) c[r * ldc + t] = acc[r][t];
}
inline void micro_generic(std::int64_t kc, const float* a, const float* b, float* c,
                          std::int64_t ldc, bool accumulate) {
    micro_generic_t(kc, PanelA{a}, PanelB<16>{b}, c, ldc, accumulate);
}
inline void micro_generic_rows(std::int64_t kc, const float* a, std::int64_t lda,
                               std::int64_t rows, const float* b, float* c, std::int64_t ldc,
                               bool accumulate) {
    micro_generic_t(kc, RowsA(a, lda, rows), PanelB<16>{b}, c, ldc, accumulate);
}
inline void micro_generic_taps(std::int64_t kc, const float* base, const std::int64_t* off,
                              std::int64_t rows, const std::int64_t* pos, const float* b,
                              float* c, std::int64_t ldc, bool accumulate) {
    micro_generic_t(kc, TapRowsA(base, off, rows, pos), PanelB<16>{b}, c, ldc, accumulate);
}
inline void micro_generic_offsets(std::int64_t kc, const float* a, std::int64_t lda,
                                  std::int64_t rows, const float* base, const std::int64_t* off,
                                  float* c, std::int64_t ldc, bool accumulate) {
    micro_generic_t(kc, RowsA(a, lda, rows), OffsetB{base, off}, c, ldc, accumulate);
}

struct Kernel {
    MicroKernel run;
    MicroKernelRows run_rows;
    MicroKernelTaps run_taps;
    MicroKernelOffsets run_offsets;
    std::int64_t nr;          // columns of the micro tile
    const char* name;
};

// The widest kernel this CPU runs; MINICNN_GEMM_KERNEL=avx2|generic picks a narrower one (the
// tests check each against the reference).
inline Kernel best_kernel() {
#ifdef MINICNN_X86
    if (simd_level() == 2)
        return {micro_avx512, micro_avx512_rows, micro_avx512_taps, micro_avx512_offsets, 32, "avx512 6x32"};
    if (simd_level() == 1)
        return {micro_avx2, micro_avx2_rows, micro_avx2_taps, micro_avx2_offsets, 16, "avx2 6x16"};
#endif
    return {micro_generic, micro_generic_rows, micro_generic_taps, micro_generic_offsets, 16, "generic 6x16"};
}

inline const Kernel& kernel() {
    static const Kernel k = best_kernel();
    return k;
}

// --- scratch ----------------------------------------------------------------------------------

struct AlignedFree {
    void operator()(float* p) const { std::free(p); }
};

// Per-thread packing buffers, 64-byte aligned, grown on demand and kept.
inline float* scratch(int slot, std::int64_t floats) {
    thread_local std::vector<std::unique_ptr<float, AlignedFree>> buffers;
    thread_local std::vector<std::int64_t> sizes;
    if (static_cast<int>(buffers.size()) <= slot) {
        buffers.resize(slot + 1);
        sizes.resize(slot + 1, 0);
    }
    if (sizes[slot] < floats) {
        const std::int64_t bytes = ((floats * 4 + 63) / 64) * 64;
        buffers[slot].reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
        if (!buffers[slot]) throw std::bad_alloc();
        sizes[slot] = floats;
    }
    return buffers[slot].get();
}

// c (rows x S, row stride ldc) += an MR-row panel Ap (kc deep) times the nr-wide panels Bp of
// S columns (Bp[q][k][t], kc deep each): full tiles added in place by the micro-kernel, the
// edges through a scratch tile (slot 1). A rank-kc update of a large C that streams it once,
// row panel by row panel (InnerProduct's filter gradient, a pointwise one over few positions).
inline void add_panel_products(const Kernel& K, std::int64_t kc, const float* Ap,
                               std::int64_t rows, const float* Bp, std::int64_t S, float* c,
                               std::int64_t ldc) {
    const std::int64_t nr = K.nr;
    for (std::int64_t j0 = 0; j0 < S; j0 += nr) {
        const float* b = Bp + j0 * kc;                  // panel j0 / nr
        const std::int64_t cols = std::min(nr, S - j0);
        if (rows == MR && cols == nr) {
            K.run(kc, Ap, b, c + j0, ldc, true);
            continue;
        }
        float* tile = scratch(1, MR * nr);
        K.run(kc, Ap, b, tile, nr, false);
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t t = 0; t < cols; ++t) c[r * ldc + j0 + t] += tile[r * nr + t];
    }
}

// --- the driver -------------------------------------------------------------------------------
//
//   pack_a(i0, mc, l0, kc, Ap) -> Panels   A's panels for rows i0.. and inner l0..l0+kc:
//       either packed into the scratch Ap as Ap[p][k][MR] (return {Ap, kc * MR}), or found in
//       a buffer packed once beforehand (return {first panel, distance between panels}); rows
//       past mc are 0. Or A itself, row-major: {&a[i0][l0], 0, lda}, read in place
//   pack_b(j0, nc, l0, kc, nr, Bp)   Bp[q][k][nr] for columns j0..; columns past nc 0
//   store(i0, mc, j0, nc, C, ldc)   the finished C[i0 .. i0+mc, j0 .. j0+nc] (row stride ldc)
//   target (optional): where C's tiles can go straight, skipping the buffer and the store:
//       target(i, j) is where C[i][j] lives, with MR rows target.ldc apart and each row's nr
//       columns contiguous there, for every whole tile; target.ldc 0: never. Taken only when
//       the inner dimension is one block (each tile final when the micro-kernel is done) and
//       for whole MR x nr tiles; the other rows of the block go through ``store``.
//
// A task owns a block of NC columns (and, when there are fewer column blocks than threads, a
// share of the rows). For each KC block of the inner dimension it packs its B block once and
// runs it against every MC block of its rows, accumulating into its own C buffer (rows x NC),
// which goes to ``store`` at the end. Every task packs its own blocks: no locks, no sharing.

struct Blocking {
    std::int64_t mc, nc, kc;
    // Tasks (one thread each) own whole stretches: columns from multiples of col_align and
    // rows from multiples of row_align (0: no constraint). A store that scatters into shared
    // memory (col2im) uses this to give every task its own images and channels.
    std::int64_t col_align = 0, row_align = 0;
};

struct Panels {
    const float* first;
    std::int64_t stride;      // floats from one MR-row panel to the next
    std::int64_t lda = 0;     // not 0: A read in place, row-major with this row stride
    const std::int64_t* row_off = nullptr;   // not null: A's rows in place at first + row_off[r],
    const std::int64_t* pos = nullptr;       // read at inner indices pos[k] (TapRowsA)
};

// Threads a product will run on: 1 inside another parallel region (OpenMP does not nest, so
// the tasks are cut for one thread, as the groups of a convolution run side by side).
inline int max_threads() {
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

// One micro tile: panel p of A (rows p*MR.. of the m in this block) against a B panel.
inline void tile(const Kernel& K, const Panels& A, std::int64_t p, std::int64_t m,
                 std::int64_t kc, const float* b, float* c, std::int64_t ldc, bool accumulate) {
    if (A.row_off)
        K.run_taps(kc, A.first, A.row_off + p * MR, std::min(MR, m - p * MR), A.pos, b, c, ldc,
                   accumulate);
    else if (A.lda)
        K.run_rows(kc, A.first + p * MR * A.lda, A.lda, std::min(MR, m - p * MR), b, c, ldc,
                   accumulate);
    else
        K.run(kc, A.first + p * A.stride, b, c, ldc, accumulate);
}

struct NoTarget {
    std::int64_t ldc = 0;
    float* operator()(std::int64_t, std::int64_t) const { return nullptr; }
};

template <typename PackA, typename PackB, typename Store, typename Target = NoTarget>
void run(std::int64_t M, std::int64_t N, std::int64_t L, const Blocking& blocking,
         PackA&& pack_a, PackB&& pack_b, Store&& store, const Target& target = Target{}) {
    if (M <= 0 || N <= 0) return;           // C is empty: nothing to store (no row groups)
    const Kernel& K = kernel();
    const std::int64_t nr = K.nr;
    const std::int64_t mc = std::max<std::int64_t>(MR, (blocking.mc + MR - 1) / MR * MR);
    const std::int64_t nc = std::max<std::int64_t>(nr, (blocking.nc + nr - 1) / nr * nr);
    const std::int64_t kc = std::max<std::int64_t>(1, blocking.kc);
    // column tasks: NC columns, or as many whole col_align stretches as fit in NC (at least 1)
    const std::int64_t ca = blocking.col_align;
    std::int64_t unit = ca > 0 ? ca * std::max<std::int64_t>(1, nc / ca) : nc;
    std::int64_t n_tasks = std::max<std::int64_t>(1, (N + unit - 1) / unit);
    // A few column tasks (under 8 a thread), but not a multiple of the threads: make their
    // count one and their widths equal, or a thread waits on the remainder (2 threads, 2,704
    // columns in NC = 1,024 pieces: 1,024 + 1,024 + 656 run as 1,680 against an even 1,352 per
    // thread; fc6's 9,216 columns in 9 pieces: 5 against 4, 14.2 ms instead of 15.1). Fewer tasks
    // than threads are left to the row groups below, which do not pack the same rows twice.
    const std::int64_t threads = max_threads();
    if (threads > 1 && n_tasks > threads && n_tasks < 8 * threads && n_tasks % threads) {
        std::int64_t want = (n_tasks + threads - 1) / threads * threads;
        if (ca > 0) {
            const std::int64_t items = (N + ca - 1) / ca;             // whole stretches
            want = std::min(want, items);
            unit = ca * ((items + want - 1) / want);
        } else {
            want = std::min(want, (N + nr - 1) / nr);
            unit = ((N + want - 1) / want + nr - 1) / nr * nr;
        }
        n_tasks = (N + unit - 1) / unit;
    }
    // row groups, when the column tasks alone cannot keep every thread busy
    std::int64_t step = MR;
    if (blocking.row_align > 0)
        while (step % blocking.row_align) step += MR;           // a multiple of both
    const std::int64_t row_steps = (M + step - 1) / step;
    const std::int64_t m_groups = std::min<std::int64_t>(
        row_steps, std::max<std::int64_t>(1, (max_threads() + n_tasks - 1) / n_tasks));
    const std::int64_t group_rows = (row_steps + m_groups - 1) / m_groups * step;
#pragma omp parallel for collapse(2) schedule(dynamic) if (M * N * L > (1 << 18))
    for (std::int64_t tg = 0; tg < m_groups; ++tg) {
        for (std::int64_t tj = 0; tj < n_tasks; ++tj) {
            const std::int64_t r0 = tg * group_rows, rows = std::min(group_rows, M - r0);
            if (rows <= 0) continue;
            const std::int64_t row_panels = (rows + MR - 1) / MR;
            for (std::int64_t j0 = tj * unit; j0 < std::min(N, (tj + 1) * unit); j0 += nc) {
                const std::int64_t n = std::min({nc, N - j0, (tj + 1) * unit - j0});
                const std::int64_t n_panels = (n + nr - 1) / nr, ldc = n_panels * nr;
                float* Ap = scratch(0, std::min(mc, row_panels * MR) * kc);
                float* Bp = scratch(1, n_panels * nr * kc);
                if (L <= kc) {    // one inner block: each MC block is final as soon as done
                    float* C = scratch(2, std::min(mc, row_panels * MR) * ldc);
                    if (L > 0) pack_b(j0, n, 0, L, nr, Bp);
                    for (std::int64_t i0 = 0; i0 < rows; i0 += mc) {
                        const std::int64_t m = std::min(mc, rows - i0);
                        const std::int64_t m_panels = (m + MR - 1) / MR;
                        // row panels written straight to the target (whole tiles only)
                        const std::int64_t straight = target.ldc && L > 0 && n % nr == 0
                                                          ? m / MR : 0;
                        if (L == 0) {
                            std::memset(C, 0, sizeof(float) * m_panels * MR * ldc);
                        } else {
                            const Panels A = pack_a(r0 + i0, m, 0, L, Ap);
                            for (std::int64_t q = 0; q < n_panels; ++q)
                                for (std::int64_t p = 0; p < m_panels; ++p) {
                                    const bool there = p < straight;
                                    tile(K, A, p, m, L, Bp + q * nr * L,
                                         there ? target(r0 + i0 + p * MR, j0 + q * nr)
                                               : C + p * MR * ldc + q * nr,
                                         there ? target.ldc : ldc, false);
                                }
                        }
                        if (straight < m_panels)
                            store(r0 + i0 + straight * MR, m - straight * MR, j0, n,
                                  C + straight * MR * ldc, ldc);
                    }
                    continue;
                }
                float* C = scratch(2, row_panels * MR * ldc);
                for (std::int64_t l0 = 0; l0 < L; l0 += kc) {
                    const std::int64_t k = std::min(kc, L - l0);
                    pack_b(j0, n, l0, k, nr, Bp);
                    for (std::int64_t i0 = 0; i0 < rows; i0 += mc) {
                        const std::int64_t m = std::min(mc, rows - i0);
                        const std::int64_t m_panels = (m + MR - 1) / MR;
                        const Panels A = pack_a(r0 + i0, m, l0, k, Ap);
                        for (std::int64_t q = 0; q < n_panels; ++q)
                            for (std::int64_t p = 0; p < m_panels; ++p)
                                tile(K, A, p, m, k, Bp + q * nr * k,
                                     C + (i0 + p * MR) * ldc + q * nr, ldc, l0 > 0);
                    }
                }
                store(r0, rows, j0, n, C, ldc);
            }
        }
    }
}

// --- packing helpers -------------------------------------------------------------------------

#ifdef MINICNN_X86
// r[i] lane j <- r[j] lane i: a 16 x 16 block of floats transposed in registers (pairs
// interleaved, then 2 x 2 blocks, then 128-bit lanes twice).
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

// transposed_panel below with a 32-wide panel: 16 columns of 16 rows loaded as 16 rows
// (each row's values are contiguous) and transposed in registers. (The scalar loop wrote one
// value per cache line of the panel at a time; a gather of 16 rows per column took 13% of
// CaffeNet conv1's filter gradient on Zen 4, this 4.)
__attribute__((target("avx512f"))) inline void transposed_panel_avx512(
        const float* src, std::int64_t P, std::int64_t width, std::int64_t length, float* panel) {
    for (std::int64_t s0 = 0; s0 < length; s0 += 16) {
        const std::int64_t n = std::min<std::int64_t>(16, length - s0);
        const __mmask16 positions = static_cast<__mmask16>((1u << n) - 1);
        for (int half = 0; half < 2; ++half) {
            float* out = panel + s0 * 32 + half * 16;
            if (half * 16 >= width) {                      // no filters here: zeros
                for (std::int64_t s = 0; s < n; ++s)
                    _mm512_storeu_ps(out + s * 32, _mm512_setzero_ps());
                continue;
            }
            __m512 r[16];
            for (int t = 0; t < 16; ++t) {
                const std::int64_t f = half * 16 + t;
                r[t] = f < width ? _mm512_maskz_loadu_ps(positions, src + f * P + s0)
                                 : _mm512_setzero_ps();
            }
            transpose16(r);
            for (std::int64_t s = 0; s < n; ++s) _mm512_storeu_ps(out + s * 32, r[s]);
        }
    }
}

// r[i] lane j <- r[j] lane i: an 8 x 8 block of floats transposed in registers (AVX2).
__attribute__((target("avx2"))) inline void transpose8(__m256 r[8]) {
    __m256 t[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// transposed_panel below with a 16-wide panel (the AVX2 kernel's): 8 positions of 8 filters
// loaded as 8 rows and transposed in registers, then a scalar tail. (The scalar loop, a value a
// store from 16 rows P apart, took a quarter of a 1x1 convolution's filter gradient on Zen 3.)
__attribute__((target("avx2"))) inline void transposed_panel_avx2(
        const float* src, std::int64_t P, std::int64_t width, std::int64_t length, float* panel) {
    std::int64_t s0 = 0;
    for (; s0 + 8 <= length; s0 += 8) {
        for (int half = 0; half < 2; ++half) {
            float* out = panel + s0 * 16 + half * 8;
            __m256 r[8];
            for (int t = 0; t < 8; ++t) {
                const std::int64_t f = half * 8 + t;
                r[t] = f < width ? _mm256_loadu_ps(src + f * P + s0) : _mm256_setzero_ps();
            }
            transpose8(r);
            for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + i * 16, r[i]);
        }
    }
    for (std::int64_t s = s0; s < length; ++s) {
        float* dst = panel + s * 16;
        for (std::int64_t t = 0; t < width; ++t) dst[t] = src[t * P + s];
        for (std::int64_t t = width; t < 16; ++t) dst[t] = 0.0f;
    }
}
#endif

// panel[s][t] = src[t * P + s] for s < length, t < width, 0 for t in [width, nr): ``width``
// rows of a matrix (P apart) dealt into a panel nr wide. The direct filter gradient's dy
// (csrc/conv_gemm.cpp: length positions of width filters) and the Winograd filter gradient's
// transformed tiles (csrc/winograd.cpp).
inline void transposed_panel(const float* src, std::int64_t P, std::int64_t width,
                             std::int64_t length, std::int64_t nr, float* panel) {
#ifdef MINICNN_X86
    if (nr == 32 && simd_level() == 2) {
        transposed_panel_avx512(src, P, width, length, panel);
        return;
    }
    if (nr == 16 && simd_level() >= 1 && width <= 16) {
        transposed_panel_avx2(src, P, width, length, panel);
        return;
    }
#endif
    for (std::int64_t s = 0; s < length; ++s) {
        float* dst = panel + s * nr;
        for (std::int64_t t = 0; t < width; ++t) dst[t] = src[t * P + s];
        for (std::int64_t t = width; t < nr; ++t) dst[t] = 0.0f;
    }
}

// A whole row-major matrix (M x L, row stride lda) packed once as panels Ap[p][l][MR], for
// pack_a callbacks to point into: panel p of rows i0.. at inner l0 is
// packed + ((i0 / MR + p) * L + l0) * MR, panels L * MR apart. ``transposed`` reads a[l][i].
inline std::vector<float> pack_all(const float* a, std::int64_t M, std::int64_t L,
                                   std::int64_t lda, bool transposed) {
    const std::int64_t panels = (M + MR - 1) / MR;
    std::vector<float> packed(panels * L * MR, 0.0f);
    if (transposed) {
        // A panel's MR rows are MR adjacent values of each row of a: read them together, for 8
        // panels (3 cache lines a row) over 32 rows at a time. Gathering one row of the panel
        // at a time walked all of a's rows once per value, a cache line each, 4 KB apart for
        // a pointwise layer of 1024 channels, whose input gradient packs w^T so (MobileNet's
        // conv6/sep at batch 1, one thread, Zen 3: 6.3 ms for its input gradient -> 2.1).
        constexpr std::int64_t panels_together = 8, rows_together = 32;
#pragma omp parallel for schedule(static) if (M * L > (1 << 16))
        for (std::int64_t p0 = 0; p0 < panels; p0 += panels_together)
            for (std::int64_t l0 = 0; l0 < L; l0 += rows_together)
                for (std::int64_t p = p0; p < std::min(panels, p0 + panels_together); ++p) {
                    const std::int64_t width = std::min(MR, M - p * MR);
                    float* dst = packed.data() + p * L * MR;
                    for (std::int64_t l = l0; l < std::min(L, l0 + rows_together); ++l)
                        for (std::int64_t r = 0; r < width; ++r)
                            dst[l * MR + r] = a[l * lda + p * MR + r];
                }
        return packed;
    }
#pragma omp parallel for schedule(static) if (M * L > (1 << 16))
    for (std::int64_t p = 0; p < panels; ++p) {
        float* dst = packed.data() + p * L * MR;
        const std::int64_t rows = std::min(MR, M - p * MR);
        for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t i = p * MR + r;
            for (std::int64_t l = 0; l < L; ++l) dst[l * MR + r] = a[i * lda + l];
        }
    }
    return packed;
}

inline Panels packed_panels(const std::vector<float>& packed, std::int64_t L, std::int64_t i0,
                            std::int64_t l0) {
    return {packed.data() + ((i0 / MR) * L + l0) * MR, L * MR};
}

}  // namespace gemm
}  // namespace minicnn
