// InnerProduct (minicnn/ops/inner_product.py) on minicnn's GEMM, float32. With X (M x K) the
// batch, W stored (N x K) (or (K x N) when transposed) and dY (M x N):
//
//     forward         Y (M x N)    = X W^T          (dot products of rows: W streams through
//                                                    once, straight from the blob)
//     backward data   dX (M x K)   = dY W           (same for W)
//     backward filter dW (N x K)  += dY^T X         (added straight into the parameter's diff:
//                                                    no temporary the size of W)
//
// A fully connected layer of CaffeNet holds 38M weights and sees 16 images: every pass is one
// read (or read and write) of W, and these shapes keep it at exactly one.
#include "common.h"
#include "gemm.h"

namespace minicnn {

namespace {

// --- C (M x N) = A (M x L) B^T, B given as (N x L): every entry a dot product of two rows ------
//
// Tiles of 4 rows of A by 4 rows of B keep 16 running sums in vector registers; a task takes 4
// rows of B (a 4-row slice of W) through every row of A, so W is read from memory once.

#ifdef MINICNN_X86
// acc (4 x 4 sums of 16 lanes, kept in memory between calls) += a[i][l..] . b[j][l..] for l in
// [l0, l1); `ahead` (4 rows, or null) are prefetched over the same stretch, for the next call.
__attribute__((target("avx512f"))) void dot_tile_avx512(const float* const* a,
                                                        const float* const* b, std::int64_t l0,
                                                        std::int64_t l1, float* acc_mem,
                                                        const float* const* ahead) {
    __m512 acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_load_ps(acc_mem + (i * 4 + j) * 16);
    std::int64_t l = l0;
    for (; l + 16 <= l1; l += 16) {
        if (ahead)
            for (int j = 0; j < 4; ++j)
                _mm_prefetch(reinterpret_cast<const char*>(ahead[j] + l), _MM_HINT_T0);
        __m512 va[4], vb[4];
        for (int i = 0; i < 4; ++i) va[i] = _mm512_loadu_ps(a[i] + l);
        for (int j = 0; j < 4; ++j) vb[j] = _mm512_loadu_ps(b[j] + l);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(va[i], vb[j], acc[i][j]);
    }
    if (l < l1) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (l1 - l)) - 1);
        __m512 va[4], vb[4];
        for (int i = 0; i < 4; ++i) va[i] = _mm512_maskz_loadu_ps(mask, a[i] + l);
        for (int j = 0; j < 4; ++j) vb[j] = _mm512_maskz_loadu_ps(mask, b[j] + l);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(va[i], vb[j], acc[i][j]);
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) _mm512_store_ps(acc_mem + (i * 4 + j) * 16, acc[i][j]);
}
#endif

void dot_tile_generic(const float* const* a, const float* const* b, std::int64_t L,
                      float* out) {
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            float total = 0.0f;
#pragma omp simd reduction(+ : total)
            for (std::int64_t l = 0; l < L; ++l) total += a[i][l] * b[j][l];
            out[i * 4 + j] = total;
        }
}

// C (M x N) = A B^T + bias, B given as (N x L). A task is a group of 4 rows of B (of W) against
// every row of A, in stretches of L: a stretch of A's rows and of the group's stays in L1 while
// each 4-row block of A passes over it (over the whole of L, 4 rows of A and 4 of W are 150 KB
// for CaffeNet's fc6, which only L2 holds, and L2 could not feed the multiply-adds). The running
// sums wait in memory between stretches; the next stretch of W is prefetched meanwhile.
void dot_products(std::int64_t M, std::int64_t N, std::int64_t L, const float* A, const float* B,
                  const float* bias, float* C) {
#ifdef MINICNN_X86
    const bool wide = __builtin_cpu_supports("avx512f") && !std::getenv("MINICNN_GEMM_KERNEL");
#else
    const bool wide = false;
#endif
    constexpr std::int64_t stretch = 256;
    const std::int64_t groups = (M + 3) / 4;
#pragma omp parallel for schedule(static) if (M * N * L > PARALLEL_WORK)
    for (std::int64_t j0 = 0; j0 < N; j0 += 4) {
        const float* b[4];
        for (int j = 0; j < 4; ++j) b[j] = B + std::min(j0 + j, N - 1) * L;   // pad: repeat
        float out[16];
#ifdef MINICNN_X86
        if (wide) {
            thread_local std::vector<float> sums;
            sums.assign(groups * 256 + 16, 0.0f);
            float* acc = reinterpret_cast<float*>(
                (reinterpret_cast<std::uintptr_t>(sums.data()) + 63) & ~std::uintptr_t(63));
            const float* ahead[4];                   // + l: the stretch after the one at l
            for (int j = 0; j < 4; ++j) ahead[j] = b[j] + stretch;
            for (std::int64_t l0 = 0; l0 < L; l0 += stretch) {
                const std::int64_t l1 = std::min(L, l0 + stretch);
                for (std::int64_t g = 0; g < groups; ++g) {
                    const float* a[4];
                    for (int i = 0; i < 4; ++i) a[i] = A + std::min(g * 4 + i, M - 1) * L;
                    dot_tile_avx512(a, b, l0, l1, acc + g * 256,
                                    g == 0 && l1 < L ? ahead : nullptr);
                }
            }
            for (std::int64_t g = 0; g < groups; ++g) {
                for (int t = 0; t < 16; ++t) {
                    float total = 0.0f;
                    for (int lane = 0; lane < 16; ++lane) total += acc[g * 256 + t * 16 + lane];
                    out[t] = total;
                }
                for (int i = 0; i < 4 && g * 4 + i < M; ++i)
                    for (int j = 0; j < 4 && j0 + j < N; ++j)
                        C[(g * 4 + i) * N + j0 + j] = out[i * 4 + j] + (bias ? bias[j0 + j] : 0.0f);
            }
            continue;
        }
#endif
        for (std::int64_t i0 = 0; i0 < M; i0 += 4) {
            const float* a[4];
            for (int i = 0; i < 4; ++i) a[i] = A + std::min(i0 + i, M - 1) * L;
            dot_tile_generic(a, b, L, out);
            for (int i = 0; i < 4 && i0 + i < M; ++i)
                for (int j = 0; j < 4 && j0 + j < N; ++j)
                    C[(i0 + i) * N + j0 + j] = out[i * 4 + j] + (bias ? bias[j0 + j] : 0.0f);
        }
    }
}

// B panels from a row-major (rows x cols) matrix b, or from its transpose (b is (cols x rows)):
// Bp[q][k][t] = B[l0 + k][j0 + q*nr + t]. Read in b's own order (row by row, or for the
// transpose column by column), so a weight matrix streams from memory: walking it panel by
// panel jumps between rows every 32 values and ran at half the memory's speed.
MINICNN_VECTOR_CLONES void pack_b(const float* b, std::int64_t ld, bool transposed,
                                  std::int64_t j0, std::int64_t n, std::int64_t l0,
                                  std::int64_t kc, std::int64_t nr, float* Bp) {
    const std::int64_t panels = (n + nr - 1) / nr;
    if (!transposed) {
        for (std::int64_t k = 0; k < kc; ++k) {
            const float* src = b + (l0 + k) * ld + j0;
            for (std::int64_t q = 0; q < panels; ++q) {
                float* dst = Bp + (q * kc + k) * nr;
                const std::int64_t width = std::min(nr, n - q * nr);
                for (std::int64_t t = 0; t < width; ++t) dst[t] = src[q * nr + t];
                for (std::int64_t t = width; t < nr; ++t) dst[t] = 0.0f;
            }
        }
        return;
    }
    for (std::int64_t q = 0; q < panels; ++q) {
        const std::int64_t width = std::min(nr, n - q * nr);
        float* panel = Bp + q * nr * kc;
        for (std::int64_t t = 0; t < nr; ++t) {
            if (t >= width) {
                for (std::int64_t k = 0; k < kc; ++k) panel[k * nr + t] = 0.0f;
                continue;
            }
            const float* src = b + (j0 + q * nr + t) * ld + l0;     // a row of the stored b
            for (std::int64_t k = 0; k < kc; ++k) panel[k * nr + t] = src[k];
        }
    }
}

// A panels from a row-major (rows x cols) matrix a, or from its transpose.
MINICNN_VECTOR_CLONES void pack_a(const float* a, std::int64_t ld, bool transposed, std::int64_t i0, std::int64_t m,
            std::int64_t l0, std::int64_t kc, float* Ap) {
    const std::int64_t MR = gemm::MR;
    for (std::int64_t p = 0; p * MR < m; ++p) {
        const std::int64_t rows = std::min(MR, m - p * MR);
        float* panel = Ap + p * MR * kc;
        if (transposed) {
            for (std::int64_t k = 0; k < kc; ++k) {
                const float* src = a + (l0 + k) * ld + i0 + p * MR;
                for (std::int64_t r = 0; r < rows; ++r) panel[k * MR + r] = src[r];
                for (std::int64_t r = rows; r < MR; ++r) panel[k * MR + r] = 0.0f;
            }
        } else {
            for (std::int64_t r = 0; r < MR; ++r) {
                const float* src = a + (i0 + p * MR + r) * ld + l0;
                for (std::int64_t k = 0; k < kc; ++k) panel[k * MR + r] = r < rows ? src[k] : 0.0f;
            }
        }
    }
}

// C (M x N) (+)= op(A) op(B) with A (M x L) and B (L x N) given as row-major arrays or
// transposes; C stored row-major (accumulate: added to what it holds).
void product(std::int64_t M, std::int64_t N, std::int64_t L, const float* a, std::int64_t lda,
             bool a_t, const float* b, std::int64_t ldb, bool b_t, float* c, bool accumulate) {
    gemm::run(
        M, N, L, gemm::Blocking{48, 1024, 256},
        [&](std::int64_t i0, std::int64_t m, std::int64_t l0, std::int64_t kc, float* Ap) {
            pack_a(a, lda, a_t, i0, m, l0, kc, Ap);
            return gemm::Panels{Ap, kc * gemm::MR};
        },
        [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t kc, std::int64_t nr,
            float* Bp) { pack_b(b, ldb, b_t, j0, n, l0, kc, nr, Bp); },
        [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n, const float* C,
            std::int64_t ldc) {
            for (std::int64_t r = 0; r < m; ++r) {
                float* dst = c + (i0 + r) * N + j0;
                const float* src = C + r * ldc;
                if (accumulate) {
                    for (std::int64_t t = 0; t < n; ++t) dst[t] += src[t];
                } else {
                    for (std::int64_t t = 0; t < n; ++t) dst[t] = src[t];
                }
            }
        });
}

// C (R x S) += A^T B with A (L x R) and B (L x S) row-major, L small (the batch): the filter
// gradient of a fully connected layer. The general product cuts C into column blocks, and with
// L this small each tile is mostly loading and storing C: here C (the parameter's diff, tens
// of MB) streams through once in its own order instead. B is packed whole once (L x S: 590 KB
// for CaffeNet's fc6 at batch 16), threads take blocks of MR rows of C, and every full MR x nr
// tile is multiplied into C in place; the edges go through a scratch tile.
void rank_update(std::int64_t R, std::int64_t S, std::int64_t L, const float* a, const float* b,
                 float* c) {
    const gemm::Kernel& K = gemm::kernel();
    const std::int64_t MR = gemm::MR, nr = K.nr, panels = (S + nr - 1) / nr;
    std::vector<float> packed(panels * nr * L + 16);
    float* Bp = reinterpret_cast<float*>(
        (reinterpret_cast<std::uintptr_t>(packed.data()) + 63) & ~std::uintptr_t(63));
    pack_b(b, S, false, 0, S, 0, L, nr, Bp);                    // Bp[q][k][t] = b[k][q*nr+t]
    const std::int64_t row_panels = (R + MR - 1) / MR;
#pragma omp parallel for schedule(static) if (R * S * L > PARALLEL_WORK)
    for (std::int64_t p = 0; p < row_panels; ++p) {
        const std::int64_t i0 = p * MR, rows = std::min(MR, R - i0);
        float* Ap = gemm::scratch(0, MR * L);
        float* tile = gemm::scratch(1, MR * nr);
        pack_a(a, R, true, i0, rows, 0, L, Ap);                 // Ap[k][r] = a[k][i0 + r]
        for (std::int64_t q = 0; q < panels; ++q) {
            const std::int64_t j0 = q * nr, cols = std::min(nr, S - j0);
            if (rows == MR && cols == nr) {
                K.run(L, Ap, Bp + q * nr * L, c + i0 * S + j0, S, true);
                continue;
            }
            K.run(L, Ap, Bp + q * nr * L, tile, nr, false);
            for (std::int64_t r = 0; r < rows; ++r)
                for (std::int64_t t = 0; t < cols; ++t) c[(i0 + r) * S + j0 + t] += tile[r * nr + t];
        }
    }
}

}  // namespace

REGISTER_NATIVE(m) {
    m.def("ip_forward", [](const py::array& x, const py::array& w, py::object b, py::array& y,
                           bool transpose) {
        require(x.ndim() == 2 && w.ndim() == 2 && y.ndim() == 2, "ip_forward: 2-D arrays");
        const std::int64_t M = x.shape(0), K = x.shape(1);
        const std::int64_t N = transpose ? w.shape(1) : w.shape(0);
        require((transpose ? w.shape(0) : w.shape(1)) == K && y.shape(0) == M && y.shape(1) == N,
                "ip_forward: shapes do not match");
        const float* xs = in_ptr<float>(x, "x");
        const float* ws = in_ptr<float>(w, "w");
        const float* bs = opt_in_ptr<float>(b, "b");
        if (bs) require(py::len(b) == static_cast<size_t>(N), "ip_forward: bias size");
        float* ys = out_ptr<float>(y, "y");
        py::gil_scoped_release release;
        if (!transpose) {            // w (N x K): y[i][j] = x[i] . w[j]
            dot_products(M, N, K, xs, ws, bs, ys);
            return;
        }
        product(M, N, K, xs, K, false, ws, N, false, ys, false);   // w (K x N): y = x w
        if (bs)
            for (std::int64_t i = 0; i < M; ++i)
                for (std::int64_t j = 0; j < N; ++j) ys[i * N + j] += bs[j];
    }, "y <- x w^T + b (x w + b when transpose), float32");
    m.def("ip_backward_data", [](const py::array& dy, const py::array& w, py::array& dx,
                                 bool transpose) {
        require(dy.ndim() == 2 && w.ndim() == 2 && dx.ndim() == 2, "ip_backward_data: 2-D");
        const std::int64_t M = dy.shape(0), N = dy.shape(1), K = dx.shape(1);
        require(dx.shape(0) == M && w.size() == N * K, "ip_backward_data: shapes do not match");
        const float* g = in_ptr<float>(dy, "dy");
        const float* ws = in_ptr<float>(w, "w");
        float* out = out_ptr<float>(dx, "dx");
        py::gil_scoped_release release;
        // dx (M x K) = dy (M x N) . W (N x K)   [W^T . when w is stored (K x N)]
        product(M, K, N, g, N, false, ws, transpose ? N : K, transpose, out, false);
    }, "dx <- dy w (dy w^T when transpose), float32");
    m.def("ip_backward_filter", [](const py::array& dy, const py::array& x, py::array& dw,
                                   bool transpose) {
        require(dy.ndim() == 2 && x.ndim() == 2 && dw.ndim() == 2, "ip_backward_filter: 2-D");
        const std::int64_t M = dy.shape(0), N = dy.shape(1), K = x.shape(1);
        require(x.shape(0) == M && dw.size() == N * K, "ip_backward_filter: shapes do not match");
        const float* g = in_ptr<float>(dy, "dy");
        const float* xs = in_ptr<float>(x, "x");
        float* out = out_ptr<float>(dw, "dw");
        py::gil_scoped_release release;
        if (M <= 64) {   // a batch: C streams through once, in its own order
            if (transpose)
                rank_update(K, N, M, xs, g, out);
            else
                rank_update(N, K, M, g, xs, out);
        } else if (transpose) {   // dw (K x N) += x^T (K x M) . dy (M x N)
            product(K, N, M, xs, K, true, g, N, false, out, true);
        } else {                  // dw (N x K) += dy^T (N x M) . x (M x K)
            product(N, K, M, g, N, true, xs, K, false, out, true);
        }
    }, "dw += dy^T x (x^T dy when transpose), float32: accumulated in place");
}

}  // namespace minicnn
