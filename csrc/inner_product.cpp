// InnerProduct (minicnn/ops/inner_product.py) on minicnn's GEMM, float32. With X (M x K) the
// batch, W stored (N x K) (or (K x N) when transposed) and dY (M x N):
//
//     forward         Y (M x N)    = X W^T          (dot products of rows: dot_products)
//     backward data   dX (M x K)   = dY W           (W's rows weighted and summed: rows_product)
//     backward filter dW (N x K)  += dY^T X         (added straight into the parameter's diff:
//                                                    no temporary the size of W)
//
// A fully connected layer of CaffeNet holds 38M weights and sees 16 images: every pass is one
// read (or read and write) of W, from memory, and these shapes keep it at exactly one, in W's
// own order, with W's next block prefetched while the current one is multiplied. (A
// transposed W swaps the first two: its forward is rows_product, its input gradient
// dot_products.) Past a batch of 64 the packed GEMM takes the backward passes over, and the
// forward goes through W in stretches.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "gemm.h"

namespace minicnn {

namespace {

// Up to this many rows of X (the batch), products with W stream W row by row (rows_product);
// past it the packed GEMM reuses each packed panel of W often enough to win.
constexpr std::int64_t rows_product_batch = 64;

// --- C (M x N) = A (M x L) B^T, B given as (N x L): every entry a dot product of two rows ------
//
// Tiles of 4 rows of A by 4 rows of B keep 16 running sums in vector registers; a task takes 4
// rows of B (a 4-row slice of W) through every row of A, so W is read from memory once.

#ifdef MINICNN_X86
// acc (4 x 4 sums of 16 lanes, kept in memory between calls) += a[i][l..] . b[j][l..] for l in
// [l0, l1); `ahead` (n_ahead rows, or null) are prefetched over the same stretch, a line of
// each per step, for a later call.
__attribute__((target("avx512f"))) void dot_tile_avx512(const float* const* a,
                                                        const float* const* b, std::int64_t l0,
                                                        std::int64_t l1, float* acc_mem,
                                                        const float* const* ahead,
                                                        int n_ahead = 4) {
    __m512 acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_load_ps(acc_mem + (i * 4 + j) * 16);
    std::int64_t l = l0;
    for (; l + 16 <= l1; l += 16) {
        if (ahead)
            for (int j = 0; j < n_ahead; ++j)
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

#ifdef MINICNN_X86
// out (4 x 4) = a[i] . b[j] over the whole of L, 16 sums in registers, summed lane by lane as
// dot_tile_avx512's callers sum (so both give the same bits); a's rows `lda` apart, b's four
// rows where the pointers say. Each step also prefetches `per_step` lines from `ahead` into L2
// (up to `ahead_end`).
__attribute__((target("avx512f"))) static void dot_rows_avx512(
        const float* a, std::int64_t lda, const float* const* b, std::int64_t L,
        const char*& ahead, const char* ahead_end, int per_step, float out[16]) {
    __m512 acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    std::int64_t l = 0;
    for (; l + 16 <= L; l += 16) {
        for (int p = 0; p < per_step && ahead < ahead_end; ++p, ahead += 64)
            _mm_prefetch(ahead, _MM_HINT_T1);
        __m512 va[4], vb[4];
        for (int i = 0; i < 4; ++i) va[i] = _mm512_loadu_ps(a + i * lda + l);
        for (int j = 0; j < 4; ++j) vb[j] = _mm512_loadu_ps(b[j] + l);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(va[i], vb[j], acc[i][j]);
    }
    if (l < L) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (L - l)) - 1);
        __m512 va[4], vb[4];
        for (int i = 0; i < 4; ++i) va[i] = _mm512_maskz_loadu_ps(mask, a + i * lda + l);
        for (int j = 0; j < 4; ++j) vb[j] = _mm512_maskz_loadu_ps(mask, b[j] + l);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_fmadd_ps(va[i], vb[j], acc[i][j]);
    }
    alignas(64) float lanes[16];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            _mm512_store_ps(lanes, acc[i][j]);
            float total = 0.0f;
            for (int lane = 0; lane < 16; ++lane) total += lanes[lane];
            out[i * 4 + j] = total;
        }
}

// C (M x N) = A B^T + bias for a batch (M <= 64), B (N x L) streamed once, in W's own order:
// each thread takes a contiguous run of blocks of 8 rows of B (8 L floats, contiguous), and
// while its 4 x 4 tiles go through one block (rows in place, from L2), the next block is
// prefetched into L2 line by line, spread over the block's steps.
__attribute__((target("avx512f"))) static void dot_products_blocks(
        std::int64_t M, std::int64_t N, std::int64_t L, const float* A, const float* B,
        const float* bias, float* C) {
    const std::int64_t groups = (M + 3) / 4, lda = L + 16, rows_a = groups * 4;
    // A's rows side by side, 64 bytes more than L apart (rows a 4 KB multiple apart would share
    // L1 sets with each other and with B's rows), 0 past M
    std::vector<float> packed(rows_a * lda + 16, 0.0f);
    float* Ap = reinterpret_cast<float*>(
        (reinterpret_cast<std::uintptr_t>(packed.data()) + 63) & ~std::uintptr_t(63));
    for (std::int64_t r = 0; r < M; ++r) std::copy_n(A + r * L, L, Ap + r * lda);
    constexpr std::int64_t block = 8;
    const std::int64_t blocks = (N + block - 1) / block;
    // a block's steps (2 tiles of rows x the batch's groups x L / 16), over which the next
    // block's lines are prefetched
    const std::int64_t steps = std::max<std::int64_t>(1, 2 * groups * ((L + 15) / 16));
    const int per_step = static_cast<int>((block * L * 4 / 64 + steps - 1) / steps);
#pragma omp parallel if (M * N * L > PARALLEL_WORK)
    {
        const auto [first, last] = my_share(blocks);
        for (std::int64_t k = first; k < last; ++k) {
            const std::int64_t next_rows = k + 1 < last ? std::min(block, N - (k + 1) * block) : 0;
            const char* ahead = reinterpret_cast<const char*>(B + (k + 1) * block * L);
            const char* ahead_end = ahead + (next_rows > 0 ? next_rows * L * 4 : 0);
            for (std::int64_t j0 = k * block; j0 < std::min(N, (k + 1) * block); j0 += 4) {
                const float* b[4];
                for (int j = 0; j < 4; ++j) b[j] = B + std::min(j0 + j, N - 1) * L;
                for (std::int64_t g = 0; g < groups; ++g) {
                    float out[16];
                    dot_rows_avx512(Ap + g * 4 * lda, lda, b, L, ahead, ahead_end, per_step, out);
                    for (int i = 0; i < 4 && g * 4 + i < M; ++i)
                        for (int j = 0; j < 4 && j0 + j < N; ++j)
                            C[(g * 4 + i) * N + j0 + j] =
                                out[i * 4 + j] + (bias ? bias[j0 + j] : 0.0f);
                }
            }
        }
    }
}
#endif

// C (M x N) = A B^T + bias, B given as (N x L). Up to a batch of 64, dot_products_blocks
// above (fc6 at batch 16, 2 cores, Zen 4: 11.0-11.3 ms here, 8.1-9.1 there; the same bits).
// Past it, a task is a group of rows of B (of W) against every row of A, in stretches of L: a stretch of A's rows and of the group's stays in L1 while
// each 4-row block of A passes over it (over the whole of L, 4 rows of A and 4 of W are 150 KB
// for CaffeNet's fc6, which only L2 holds, and L2 could not feed the multiply-adds). The running
// sums wait in memory between stretches; the next stretch of W is prefetched meanwhile.
void product(std::int64_t M, std::int64_t N, std::int64_t L, const float* a, std::int64_t lda,
             bool a_t, const float* b, std::int64_t ldb, bool b_t, float* c, bool accumulate);
void pack_b(const float* b, std::int64_t ld, bool transposed, std::int64_t j0, std::int64_t n,
            std::int64_t l0, std::int64_t kc, std::int64_t nr, float* Bp);

#ifdef MINICNN_X86
// The dot product whose 16 lanes of running sums are (lo, hi), with a[t] * b[t] for t in
// [from, L) added after them: the order both loops below finish their sums in.
__attribute__((target("avx2,fma"))) static inline float finish_dot(
        __m256 lo, __m256 hi, const float* a, const float* b, std::int64_t from, std::int64_t L) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(lo, hi));
    float total = 0.0f;
    for (int k = 0; k < 8; ++k) total += lanes[k];
    for (std::int64_t t = from; t < L; ++t) total += a[t] * b[t];
    return total;
}

// C (M x N) = A B^T + bias for a batch of at most 4 rows (inference, one image at a time) on
// AVX2: each row of B (of W) is read once, in place, and multiplied into the M rows of A at once
// (two 8-lane sums a row, then summed across). The packed GEMM would copy all of W into panels
// for a product this small (CaffeNet's fc6 at batch 1: 28-29 ms against 5-7 for OpenBLAS).
__attribute__((target("avx2,fma"))) static void dot_few_rows_avx2(
        std::int64_t M, std::int64_t N, std::int64_t L, const float* A, const float* B,
        const float* bias, float* C) {
    std::int64_t first = 0;          // rows of B left to the loop below
    if (M == 1) {
        // One image: four rows of B at a time, so four streams of W are in flight (fc6 at
        // batch 1, one thread, Zen 3: 7.25 -> 5.10 ms; OpenBLAS through PyTorch 5.9), each
        // row's sums in the same order as below.
        first = N / 4 * 4;
#pragma omp parallel for schedule(static) if (N * L > PARALLEL_WORK)
        for (std::int64_t j0 = 0; j0 < first; j0 += 4) {
            const float* w = B + j0 * L;
            __m256 acc[4][2];
            for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
            std::int64_t l = 0;
            for (; l + 16 <= L; l += 16) {
                const __m256 a0 = _mm256_loadu_ps(A + l), a1 = _mm256_loadu_ps(A + l + 8);
                for (int r = 0; r < 4; ++r) {
                    acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + r * L + l), a0, acc[r][0]);
                    acc[r][1] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(w + r * L + l + 8), a1, acc[r][1]);
                }
            }
            for (int r = 0; r < 4; ++r)
                C[j0 + r] = finish_dot(acc[r][0], acc[r][1], A, w + r * L, l, L) +
                            (bias ? bias[j0 + r] : 0.0f);
        }
    }
#pragma omp parallel for schedule(static) if (M * (N - first) * L > PARALLEL_WORK)
    for (std::int64_t j = first; j < N; ++j) {
        const float* w = B + j * L;
        __m256 acc[4][2];
        for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        std::int64_t l = 0;
        for (; l + 16 <= L; l += 16) {
            const __m256 w0 = _mm256_loadu_ps(w + l), w1 = _mm256_loadu_ps(w + l + 8);
            for (int i = 0; i < 4; ++i) {
                if (i >= M) break;
                acc[i][0] = _mm256_fmadd_ps(_mm256_loadu_ps(A + i * L + l), w0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(_mm256_loadu_ps(A + i * L + l + 8), w1, acc[i][1]);
            }
        }
        for (std::int64_t i = 0; i < M; ++i)
            C[i * N + j] = finish_dot(acc[i][0], acc[i][1], A + i * L, w, l, L) +
                           (bias ? bias[j] : 0.0f);
    }
}
#endif

// C (M x N) = A B^T + bias without AVX-512, as its transpose C^T = B A^T: B (W, N x L) is
// then the micro-kernel's A operand, read in place six rows at a time, each value once, and the
// batch A^T is the packed operand (L x M; up to 2 MB of it per inner block). The general
// product packed W instead, writing and reading it once more. fc6 (4096 x 9216), one thread, on
// an AVX2 Zen 3: batch 16 39.4-40.4 -> 13.7 ms (OpenBLAS through PyTorch: 27), 64 79.7 -> 51.6
// (67-69), 256 256 -> 212 ms; the same bits (each sum is taken in the same order).
static void dot_products_transposed(std::int64_t M, std::int64_t N, std::int64_t L,
                                    const float* A, const float* B, const float* bias, float* C) {
    const std::int64_t packed_floats = std::int64_t(1) << 19;
    const std::int64_t kc = std::clamp<std::int64_t>(
        packed_floats / std::max<std::int64_t>(M, 16), 256, std::max<std::int64_t>(L, 256));
    gemm::run(
        N, M, L, gemm::Blocking{48, 1024, kc},
        [&](std::int64_t i0, std::int64_t, std::int64_t l0, std::int64_t, float*) {
            return gemm::Panels{B + i0 * L + l0, 0, L};
        },
        [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t k, std::int64_t nr,
            float* Bp) { pack_b(A, L, true, j0, n, l0, k, nr, Bp); },
        [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n, const float* Ct,
            std::int64_t ldc) {
            for (std::int64_t r = 0; r < m; ++r) {
                const float add = bias ? bias[i0 + r] : 0.0f;
                for (std::int64_t t = 0; t < n; ++t)
                    C[(j0 + t) * N + i0 + r] = Ct[r * ldc + t] + add;
            }
        });
}

void dot_products(std::int64_t M, std::int64_t N, std::int64_t L, const float* A, const float* B,
                  const float* bias, float* C) {
#ifdef MINICNN_X86
    const bool wide = __builtin_cpu_supports("avx512f") && !std::getenv("MINICNN_GEMM_KERNEL");
#else
    const bool wide = false;
#endif
#ifdef MINICNN_X86
    if (!wide && M <= 4 && std::strncmp(gemm::kernel().name, "avx2", 4) == 0) {
        dot_few_rows_avx2(M, N, L, A, B, bias, C);        // AVX2 chosen: a few rows, W in place
        return;
    }
#endif
    if (!wide) {
        // Without AVX-512 (or with a kernel picked by MINICNN_GEMM_KERNEL): the GEMM on the
        // widest micro-kernel there is (AVX2's 6 x 16), W read in place. (A 4 x 4 tile of dot
        // products rescanning its rows for each of its 16 sums took fc6's forward to 576 ms of
        // a 1113 ms one-thread CaffeNet inference on an AVX2 Zen 3.)
        dot_products_transposed(M, N, L, A, B, bias, C);
        return;
    }
#ifdef MINICNN_X86
    if (wide && M <= rows_product_batch) {      // a batch: W streamed block by block
        dot_products_blocks(M, N, L, A, B, bias, C);
        return;
    }
#endif
    constexpr std::int64_t stretch = 256;
    const std::int64_t groups = (M + 3) / 4;
    // A copied stretch by stretch (Ap[stretch][row][256], zero past L): rows of a batch can lie
    // a multiple of 4 KB apart in x (9216 floats for fc6), and then their stretches would all
    // fall on the same few sets of L1 (as B's rows would, below).
    std::vector<float> packed;
    float* Ap = nullptr;
    if (wide) {
        const std::int64_t stretches = (L + stretch - 1) / stretch, rows = groups * 4;
        packed.assign(stretches * rows * stretch + 16, 0.0f);
        Ap = reinterpret_cast<float*>(
            (reinterpret_cast<std::uintptr_t>(packed.data()) + 63) & ~std::uintptr_t(63));
        for (std::int64_t s = 0; s < stretches; ++s)
            for (std::int64_t r = 0; r < rows; ++r) {
                const std::int64_t l0 = s * stretch, n = std::min(stretch, L - l0);
                std::copy_n(A + std::min(r, M - 1) * L + l0, n, Ap + (s * rows + r) * stretch);
            }
    }
#ifdef MINICNN_X86
    if (wide) {
        // A task takes 16 rows of B, 4 tiles of 4, so one stretch of A's rows serves 16 rows of
        // B. Each stretch of the 16 rows is copied side by side first, and the next one is
        // prefetched a row or so per tile, spread over the work (fc6 at batch 16, 2 cores:
        // 6.6 ms with the 4 rows read in place and prefetched at once, 7.3 ms with 16 read in
        // place, 5.7 ms as here).
        constexpr std::int64_t tiles = 4;
#pragma omp parallel for schedule(static) if (M * N * L > PARALLEL_WORK)
        for (std::int64_t j0 = 0; j0 < N; j0 += 4 * tiles) {
            const std::int64_t used = std::min(tiles, (N - j0 + 3) / 4);   // tiles within N
            const float* b[4 * tiles];
            for (int j = 0; j < 4 * tiles; ++j) b[j] = B + std::min(j0 + j, N - 1) * L;
            thread_local std::vector<float> sums;
            sums.assign(tiles * groups * 256 + 16, 0.0f);
            float* acc = reinterpret_cast<float*>(
                (reinterpret_cast<std::uintptr_t>(sums.data()) + 63) & ~std::uintptr_t(63));
            thread_local std::vector<float> copied;
            copied.resize(4 * tiles * stretch + 16);
            float* Bs = reinterpret_cast<float*>(
                (reinterpret_cast<std::uintptr_t>(copied.data()) + 63) & ~std::uintptr_t(63));
            for (std::int64_t l0 = 0; l0 < L; l0 += stretch) {
                const std::int64_t l1 = std::min(L, l0 + stretch);
                // This stretch of the 16 rows copied side by side: in B they lie a multiple of
                // 4 KB apart, so 16 lines fall on one set of L1 (12 ways).
                for (int j = 0; j < 4 * tiles; ++j)
                    std::copy_n(b[j] + l0, l1 - l0, Bs + j * stretch);
                // The next stretch of the 16 rows is prefetched a row or so per call, spread
                // over the whole stretch's work (issued all at once, the prefetches stalled).
                const std::int64_t calls = groups * used, rows = 4 * used;
                const std::int64_t per_call = (rows + calls - 1) / calls;
                for (std::int64_t g = 0; g < groups; ++g) {
                    const float* a[4];
                    for (int i = 0; i < 4; ++i)
                        a[i] = Ap + ((l0 / stretch) * groups * 4 + g * 4 + i) * stretch;
                    for (std::int64_t t = 0; t < used; ++t) {
                        const float* bs[4];
                        for (int j = 0; j < 4; ++j) bs[j] = Bs + (t * 4 + j) * stretch;
                        const float* ahead[4];
                        int n = 0;
                        for (std::int64_t r = (g * used + t) * per_call;
                             r < std::min(rows, (g * used + t + 1) * per_call); ++r)
                            ahead[n++] = b[r] + l1;
                        dot_tile_avx512(a, bs, 0, l1 - l0, acc + (t * groups + g) * 256,
                                        l1 < L && n ? ahead : nullptr, n);
                    }
                }
            }
            for (std::int64_t t = 0; t < used; ++t)
                for (std::int64_t g = 0; g < groups; ++g) {
                    const float* sum = acc + (t * groups + g) * 256;
                    for (int i = 0; i < 4 && g * 4 + i < M; ++i)
                        for (int j = 0; j < 4 && j0 + t * 4 + j < N; ++j) {
                            float total = 0.0f;
                            for (int lane = 0; lane < 16; ++lane)
                                total += sum[(i * 4 + j) * 16 + lane];
                            const std::int64_t col = j0 + t * 4 + j;
                            C[(g * 4 + i) * N + col] = total + (bias ? bias[col] : 0.0f);
                        }
                }
        }
        return;
    }
#endif
}

// --- C (M x N) = A (M x L) B, B given as (L x N): few rows of A, B streamed row by row ---------
//
// The input gradient of a fully connected layer (dX = dY W, W stored N x K) and the forward of a
// transposed one. With a batch of 16 a packed GEMM spends as long packing W as multiplying it;
// here each row of B is read where it lies: a task owns a block of 48 columns of C, and for every
// row l of B loads its 48 values once (three vectors) and multiplies them by 8 of A's values
// (broadcast), 24 running sums in registers. A's columns are packed first, 8 rows at a time
// (At[block][l][8]), so the 8 broadcasts of one l come from one cache line.

#ifdef MINICNN_X86
// c (rows x 48 block, masks for the block's three vectors) (+)= at (l0..l1) * b rows l0..l1.
__attribute__((target("avx512f"))) void rows_block_avx512(const float* at, const float* b,
                                                          std::int64_t ldb, std::int64_t l0,
                                                          std::int64_t l1, float* c,
                                                          std::int64_t ldc, int rows,
                                                          const __mmask16* mask, bool add,
                                                          std::int64_t prefetch) {
    // 24 named sums (GCC spills an array of 24 vectors to the stack on every step).
#define MINICNN_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define MINICNN_DECLARE(i) __m512 c##i##0, c##i##1, c##i##2;
#define MINICNN_LOAD(i)                                                                       \
    if (add && (i) < rows) {                                                                  \
        c##i##0 = _mm512_maskz_loadu_ps(mask[0], c + (i) * ldc);                              \
        c##i##1 = _mm512_maskz_loadu_ps(mask[1], c + (i) * ldc + 16);                         \
        c##i##2 = _mm512_maskz_loadu_ps(mask[2], c + (i) * ldc + 32);                         \
    } else {                                                                                  \
        c##i##0 = c##i##1 = c##i##2 = _mm512_setzero_ps();                                    \
    }
#define MINICNN_FMA(i)                                                                        \
    {                                                                                         \
        const __m512 x = _mm512_set1_ps(s[i]);                                                \
        c##i##0 = _mm512_fmadd_ps(w0, x, c##i##0);                                            \
        c##i##1 = _mm512_fmadd_ps(w1, x, c##i##1);                                            \
        c##i##2 = _mm512_fmadd_ps(w2, x, c##i##2);                                            \
    }
#define MINICNN_STORE(i)                                                                      \
    if ((i) < rows) {                                                                         \
        _mm512_mask_storeu_ps(c + (i) * ldc, mask[0], c##i##0);                               \
        _mm512_mask_storeu_ps(c + (i) * ldc + 16, mask[1], c##i##1);                          \
        _mm512_mask_storeu_ps(c + (i) * ldc + 32, mask[2], c##i##2);                          \
    }
    MINICNN_ROWS(MINICNN_DECLARE)
    MINICNN_ROWS(MINICNN_LOAD)
    for (std::int64_t l = l0; l < l1; ++l) {
        const float* row = b + l * ldb;
        if (prefetch)                      // the same row, `prefetch` columns on (a later call)
            for (int v = 0; v < 3; ++v)
                _mm_prefetch(reinterpret_cast<const char*>(row + prefetch + v * 16),
                             _MM_HINT_T0);
        const __m512 w0 = _mm512_maskz_loadu_ps(mask[0], row);
        const __m512 w1 = _mm512_maskz_loadu_ps(mask[1], row + 16);
        const __m512 w2 = _mm512_maskz_loadu_ps(mask[2], row + 32);
        const float* s = at + l * 8;
        MINICNN_ROWS(MINICNN_FMA)
    }
    MINICNN_ROWS(MINICNN_STORE)
#undef MINICNN_ROWS
#undef MINICNN_DECLARE
#undef MINICNN_LOAD
#undef MINICNN_FMA
#undef MINICNN_STORE
}

// at[block][l][8] = a[8 block + i][l] for an (M x L) a, 0 past M: the columns of a, 8 rows at a
// time, so the 8 broadcasts of one l come from one cache line. Returns `at`, 64-byte aligned in
// `buffer` (which keeps `extra` more floats after it, for the caller).
float* pack_columns8(const float* a, std::int64_t M, std::int64_t L, std::int64_t extra,
                     std::vector<float>& buffer) {
    const std::int64_t blocks = (M + 7) / 8;
    buffer.assign(blocks * L * 8 + extra + 32, 0.0f);
    float* at = reinterpret_cast<float*>(
        (reinterpret_cast<std::uintptr_t>(buffer.data()) + 63) & ~std::uintptr_t(63));
    for (std::int64_t k = 0; k < blocks; ++k)
        for (std::int64_t l = 0; l < L; ++l)
            for (std::int64_t i = 0; i < 8; ++i) {
                const std::int64_t row = k * 8 + i;
                at[(k * L + l) * 8 + i] = row < M ? a[row * L + l] : 0.0f;
            }
    return at;
}

// c[i][j0..j1) += sum over g < G of a[i][l + g] * b[l + g][j0..j1) for M rows of c: G rows of B
// (of W) read once, each added into every row of C, weighted by A's value for it.
template <int M, int G>
__attribute__((target("avx2,fma"))) static inline void add_weighted_rows_avx2(
        const float* a, std::int64_t lda, const float* b, std::int64_t ldb, std::int64_t j0,
        std::int64_t j1, float* c, std::int64_t ldc) {
    __m256 weight[M][G];
    for (int i = 0; i < M; ++i)
        for (int g = 0; g < G; ++g) weight[i][g] = _mm256_set1_ps(a[i * lda + g]);
    std::int64_t j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m256 row[G];
        for (int g = 0; g < G; ++g) row[g] = _mm256_loadu_ps(b + g * ldb + j);
        for (int i = 0; i < M; ++i) {
            __m256 sum = _mm256_loadu_ps(c + i * ldc + j);
            for (int g = 0; g < G; ++g) sum = _mm256_fmadd_ps(weight[i][g], row[g], sum);
            _mm256_storeu_ps(c + i * ldc + j, sum);
        }
    }
    for (; j < j1; ++j)                                 // the same fused steps, one lane
        for (int i = 0; i < M; ++i) {
            float sum = c[i * ldc + j];
            for (int g = 0; g < G; ++g) sum = std::fma(a[i * lda + g], b[g * ldb + j], sum);
            c[i * ldc + j] = sum;
        }
}

// C (M x N) = A (M x L) B for one to four rows of A on AVX2. B streams from memory once, in
// its own order, four rows at a time, each added into C's rows; a thread owns a range of C's
// columns (whole rows of its range: shorter stretches, which would keep C in L1, broke B's
// stream into pieces and measured slower).
template <int M>
__attribute__((target("avx2,fma"))) static void rows_few_avx2(std::int64_t N, std::int64_t L,
                                                              const float* a, const float* b,
                                                              float* c) {
    constexpr int G = 4;                       // rows of B at a time (G x M weights held)
#pragma omp parallel if (M * N * L > PARALLEL_WORK)
    {
        const Share lines = my_share((N + 15) / 16);   // 64-byte lines of a row of C
        const std::int64_t j0 = std::min(N, lines.first * 16);
        const std::int64_t j1 = std::min(N, lines.last * 16);
        for (int i = 0; i < M; ++i) std::fill(c + i * N + j0, c + i * N + j1, 0.0f);
        std::int64_t l = 0;
        for (; l + G <= L; l += G)
            add_weighted_rows_avx2<M, G>(a + l, L, b + l * N, N, j0, j1, c, N);
        for (; l < L; ++l) add_weighted_rows_avx2<M, 1>(a + l, L, b + l * N, N, j0, j1, c, N);
    }
}

// Up to this many rows of A on AVX2, C = A B goes through rows_few_avx2, four rows of A a pass
// over B: one image's input gradient (dX = dY W) took the packed product, which copies all of
// W into panels first. CaffeNet's fc6 (dY W, W 4096 x 9216), Zen 3, min of 7, the packed
// product -> passes (PyTorch's OpenBLAS beside), one thread, CPU time, runs on a quiet and on a
// busy machine: batch 1 24.0-33.4 -> 4.6-7.4 ms (4.8-7.4), 4 30.6-33.2 -> 6.3-8.7 (16-32), 8
// 28.7-41.6 -> 12.6-19.1 (18-36); 12 28.8-39.3 -> 19.8-37.1 (three passes read W three times:
// faster on the quiet machine, no faster on the busy one), so past 8 rows the packed product
// stays. Two threads, wall clock: batch 1 12.8-13.0 -> 3.6-4.0 (4.7-5.2), 8 15.1-15.3 -> 8.1
// (18-25).
constexpr std::int64_t rows_passes_batch = 8;

// C = A B for M up to a small batch, or false where this machine has neither AVX-512 nor, for
// up to rows_passes_batch rows, AVX2 (the caller takes the packed product instead).
bool rows_product(std::int64_t M, std::int64_t N, std::int64_t L, const float* a,
                  const float* b, float* c) {
    if (!__builtin_cpu_supports("avx512f") || std::getenv("MINICNN_GEMM_KERNEL")) {
        if (M > rows_passes_batch || std::strncmp(gemm::kernel().name, "avx2", 4) != 0)
            return false;
        for (std::int64_t i0 = 0; i0 < M; i0 += 4) {
            const float* rows = a + i0 * L;
            float* out = c + i0 * N;
            switch (std::min<std::int64_t>(4, M - i0)) {
                case 1: rows_few_avx2<1>(N, L, rows, b, out); break;
                case 2: rows_few_avx2<2>(N, L, rows, b, out); break;
                case 3: rows_few_avx2<3>(N, L, rows, b, out); break;
                default: rows_few_avx2<4>(N, L, rows, b, out); break;
            }
        }
        return true;
    }
    if (L == 0) {                                      // an empty sum: no row of B to stream
        std::fill(c, c + M * N, 0.0f);
        return true;
    }
    constexpr std::int64_t width = 48, chunk = 128;    // chunk: 128 rows x 192 B of B stay in L1
    const std::int64_t blocks = (M + 7) / 8;           // while each 8-row block of A passes
    std::vector<float> packed;
    const float* at = pack_columns8(a, M, L, 0, packed);
    // Each thread owns a contiguous range of column blocks and sweeps it chunk by chunk: within
    // a chunk, the blocks of one row of B are read one after another, so B streams from memory
    // in long runs (a block alone from top to bottom, 192 bytes every 36 KB of CaffeNet's fc6,
    // took 10.9 ms for fc6's input gradient at batch 16 on 2 cores; this order 4.7-4.9 ms).
    const std::int64_t column_blocks = (N + width - 1) / width;
#pragma omp parallel if (M * N * L > PARALLEL_WORK)
    {
        const auto [q_begin, q_end] = my_share(column_blocks);
        for (std::int64_t l0 = 0; l0 < L; l0 += chunk) {
            const std::int64_t l1 = std::min(L, l0 + chunk);
            for (std::int64_t q = q_begin; q < q_end; ++q) {
                const std::int64_t j0 = q * width, cols = std::min(width, N - j0);
                __mmask16 mask[3];
                for (int v = 0; v < 3; ++v) {
                    const std::int64_t n = std::clamp<std::int64_t>(cols - v * 16, 0, 16);
                    mask[v] = static_cast<__mmask16>((1u << n) - 1);
                }
                for (std::int64_t k = 0; k < blocks; ++k)   // the first block pulls B in
                    rows_block_avx512(at + k * L * 8, b + j0, N, l0, l1, c + k * 8 * N + j0, N,
                                      static_cast<int>(std::min<std::int64_t>(8, M - k * 8)),
                                      mask, l0 > 0, k == 0 && q + 2 < q_end ? 2 * width : 0);
            }
        }
    }
    return true;
}
#else
bool rows_product(std::int64_t, std::int64_t, std::int64_t, const float*, const float*, float*) {
    return false;
}
#endif

// --- W's gradient and the solver's SGD step, in one pass over W --------------------------------
//
// A training step of CaffeNet moves fc6's and fc7's weights (218 MB, 89% of its parameters)
// through memory again and again: the diff is cleared, the filter gradient reads and writes it,
// and the solver's update reads it, W and the momentum history V, and writes all three. When the
// solver hands the step to the layer (minicnn/solver.py, Solver._layer_steps: plain SGD or
// Nesterov, one iteration a step, no clipping), one pass over W, V and the diff D does it: each
// tile's gradient is summed in registers and never stored, then W and V are updated and the
// step goes to D (Caffe leaves it there), by streaming stores (D is not read: nothing to bring
// into the cache, and the solver skips the clear), or, for plain SGD, whose step is the new V,
// nowhere: the layer makes the diff a copy of V taken when read (Blob.defer_diff). Every value
// is rounded as the separate passes round it: the gradient summed over the batch in order from 0 (the rank update's order), the
// step in solver.cpp's order, each product and sum rounded on its own.

struct MomentumRule {
    float lr, momentum, decay;
    int regularization;       // 0 none, 1 L2, 2 L1 (solver.cpp's numbering)
    bool nesterov;
};

#ifdef MINICNN_X86
// Rows r < R of W from row l, the 96 columns at j0 (masked): their gradient, g[r] = the sum
// over the batch b of dY[b][l + r] X[b][j0..] (xq: those 96 columns of X packed [b][96]), then
// the step. (Two rows of 96: 12 running sums hide the multiply-adds' latency; more rows, more
// streams from memory, measured slower.)
template <int R>
__attribute__((target("avx512f"))) void gradient_step_tile_avx512(
        const float* at, std::int64_t L, std::int64_t M, const float* xq, std::int64_t K,
        std::int64_t l, std::int64_t j0, const __mmask16* mask, float* w, float* v, float* d,
        const MomentumRule& rule) {
    // explicit rounding: the compiler may not fuse these products and sums into one FMA
    constexpr int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    constexpr std::int64_t ahead = 256;        // floats: how far on W and V are prefetched
    constexpr int V = 6;                       // vectors a row
    __m512 g[R][V];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < V; ++t) g[r][t] = _mm512_setzero_ps();
    for (std::int64_t b = 0; b < M; ++b) {
        __m512 xv[V];
        for (int t = 0; t < V; ++t) xv[t] = _mm512_load_ps(xq + b * 16 * V + 16 * t);
        const float* s = at + ((b >> 3) * L + l) * 8 + (b & 7);      // dY[b][l + r] = s[8 r]
        for (int r = 0; r < R; ++r) {
            const __m512 y = _mm512_set1_ps(s[8 * r]);
            for (int t = 0; t < V; ++t) g[r][t] = _mm512_fmadd_ps(y, xv[t], g[r][t]);
        }
    }
    const __m512 lr = _mm512_set1_ps(rule.lr), momentum = _mm512_set1_ps(rule.momentum);
    const __m512 decay = _mm512_set1_ps(rule.decay);
    const __m512 one_plus = _mm512_set1_ps(1.0f + rule.momentum);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    const __m512 minus_one = _mm512_set1_ps(-1.0f);
    for (int r = 0; r < R; ++r) {
        const std::int64_t row = (l + r) * K + j0;
        for (int t = 0; t < V; ++t) {          // (a prefetch past the end does not fault)
            _mm_prefetch(reinterpret_cast<const char*>(w + row + ahead + 16 * t), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(v + row + ahead + 16 * t), _MM_HINT_T0);
        }
        for (int t = 0; t < V; ++t) {
            float* wp = w + row + 16 * t;
            float* vp = v + row + 16 * t;
            float* dp = d ? d + row + 16 * t : nullptr;
            const __m512 data = _mm512_maskz_loadu_ps(mask[t], wp);
            const __m512 old = _mm512_maskz_loadu_ps(mask[t], vp);
            __m512 grad = g[r][t];
            if (rule.regularization == 1) {
                grad = _mm512_add_round_ps(grad, _mm512_mul_round_ps(decay, data, nearest),
                                           nearest);
            } else if (rule.regularization == 2) {        // sign(data): NaN and zeros kept
                __m512 sign = _mm512_mask_mov_ps(
                    data, _mm512_cmp_ps_mask(data, zero, _CMP_GT_OQ), one);
                sign = _mm512_mask_mov_ps(sign, _mm512_cmp_ps_mask(data, zero, _CMP_LT_OQ),
                                          minus_one);
                grad = _mm512_add_round_ps(grad, _mm512_mul_round_ps(decay, sign, nearest),
                                           nearest);
            }
            const __m512 kept = _mm512_mul_round_ps(momentum, old, nearest);
            const __m512 fresh = _mm512_add_round_ps(kept, _mm512_mul_round_ps(lr, grad, nearest),
                                                     nearest);
            const __m512 step = rule.nesterov
                ? _mm512_sub_round_ps(_mm512_mul_round_ps(one_plus, fresh, nearest), kept,
                                      nearest)
                : fresh;
            _mm512_mask_storeu_ps(vp, mask[t], fresh);
            _mm512_mask_storeu_ps(wp, mask[t], _mm512_sub_round_ps(data, step, nearest));
            if (!d) continue;                           // the caller keeps no diff
            if (mask[t] == 0xFFFF && (reinterpret_cast<std::uintptr_t>(dp) & 63) == 0)
                _mm512_stream_ps(dp, step);
            else
                _mm512_mask_storeu_ps(dp, mask[t], step);
        }
    }
}

// W (N x K) <- its SGD step for the gradient dY^T X, V (N x K) <- the new momentum, D (N x K)
// <- the step (D null: not stored; for SGD the layer lets the diff copy V when read), for a batch of M <= rows_product_batch; false where there is no AVX-512 (the
// caller takes the passes one by one). Threads take pairs of W's rows and sweep them in order:
// W, V and D stream from memory in long runs.
bool gradient_step(std::int64_t M, std::int64_t N, std::int64_t K, const float* dy,
                   const float* x, float* w, float* v, float* d, const MomentumRule& rule) {
    if (!__builtin_cpu_supports("avx512f") || std::getenv("MINICNN_GEMM_KERNEL")) return false;
    constexpr std::int64_t width = 96;
    const std::int64_t blocks = (M + 7) / 8, column_blocks = (K + width - 1) / width;
    // at[block][l][8] = dY[8 block + i][l] (a row's 8 broadcasts from one line); xp[q][b][96] =
    // X[b][96 q + t], 0 past K (CaffeNet's rows of X are 4 KB multiples apart: read in place, a
    // block's 16 rows would share one L1 set)
    std::vector<float> packed;
    float* at = pack_columns8(dy, M, N, column_blocks * M * width + 16, packed);
    float* xp = at + (blocks * N * 8 + 15) / 16 * 16;
    for (std::int64_t q = 0; q < column_blocks; ++q)
        for (std::int64_t b = 0; b < M; ++b)
            for (std::int64_t t = 0; t < width; ++t) {
                const std::int64_t j = q * width + t;
                xp[(q * M + b) * width + t] = j < K ? x[b * K + j] : 0.0f;
            }
    const std::int64_t pairs = (N + 1) / 2;
#pragma omp parallel if (M * N * K > PARALLEL_WORK)
    {
#pragma omp for schedule(static)
        for (std::int64_t pair = 0; pair < pairs; ++pair) {
            const std::int64_t l = 2 * pair;
            for (std::int64_t q = 0; q < column_blocks; ++q) {
                const std::int64_t j0 = q * width, cols = std::min(width, K - j0);
                __mmask16 mask[6];
                for (int t = 0; t < 6; ++t) {
                    const std::int64_t n = std::clamp<std::int64_t>(cols - t * 16, 0, 16);
                    mask[t] = static_cast<__mmask16>((1u << n) - 1);
                }
                const float* xq = xp + q * M * width;
                if (l + 1 < N)
                    gradient_step_tile_avx512<2>(at, N, M, xq, K, l, j0, mask, w, v, d, rule);
                else
                    gradient_step_tile_avx512<1>(at, N, M, xq, K, l, j0, mask, w, v, d, rule);
            }
        }
        _mm_sfence();                          // the streamed stores, before anyone reads D
    }
    return true;
}
#else
bool gradient_step(std::int64_t, std::int64_t, std::int64_t, const float*, const float*, float*,
                   float*, float*, const MomentumRule&) {
    return false;
}
#endif

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
        pack_a(a, R, true, i0, rows, 0, L, Ap);                 // Ap[k][r] = a[k][i0 + r]
        gemm::add_panel_products(K, L, Ap, rows, Bp, S, c + i0 * S, S);
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
        Release release;
        if (!transpose) {            // w (N x K): y[i][j] = x[i] . w[j]
            dot_products(M, N, K, xs, ws, bs, ys);
            return;
        }
        if (M > rows_product_batch || !rows_product(M, N, K, xs, ws, ys))   // w (K x N): y = x w
            product(M, N, K, xs, K, false, ws, N, false, ys, false);
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
        Release release;
        // dx (M x K) = dy (M x N) . W (N x K)   [W^T . when w is stored (K x N)]
        if (M > rows_product_batch)
            product(M, K, N, g, N, false, ws, transpose ? N : K, transpose, out, false);
        else if (transpose)      // w (K x N): dx = dy w^T, dot products of rows like the forward
            dot_products(M, K, N, g, ws, nullptr, out);
        else if (!rows_product(M, K, N, g, ws, out))
            product(M, K, N, g, N, false, ws, K, false, out, false);
    }, "dx <- dy w (dy w^T when transpose), float32");
    m.def("ip_backward_step", [](const py::array& dy, const py::array& x, py::array& w,
                                 py::array& history, py::object diff, py::object dx, double lr,
                                 double momentum, double decay, int regularization,
                                 bool nesterov) {
        require(dy.ndim() == 2 && x.ndim() == 2 && w.ndim() == 2, "ip_backward_step: 2-D arrays");
        const std::int64_t M = dy.shape(0), N = dy.shape(1), K = x.shape(1);
        require(x.shape(0) == M && w.shape(0) == N && w.shape(1) == K &&
                    history.size() == N * K &&
                    (diff.is_none() || diff.cast<py::array>().size() == N * K),
                "ip_backward_step: shapes do not match");
        require(regularization >= 0 && regularization <= 2,
                "ip_backward_step: regularization is 0 (none), 1 (L2) or 2 (L1)");
        const float* g = in_ptr<float>(dy, "dy");
        const float* xs = in_ptr<float>(x, "x");
        float* ws = out_ptr<float>(w, "w");
        float* vs = out_ptr<float>(history, "history");
        float* ds = opt_out_ptr<float>(diff, "diff");
        float* dxs = opt_out_ptr<float>(dx, "dx");
        if (dxs) require(dx.cast<py::array>().size() == M * K, "ip_backward_step: dx size");
        const MomentumRule rule{static_cast<float>(lr), static_cast<float>(momentum),
                                static_cast<float>(decay), regularization, nesterov};
        Release release;
        if (M > rows_product_batch || !__builtin_cpu_supports("avx512f") ||
            std::getenv("MINICNN_GEMM_KERNEL"))
            return false;
        if (dxs && !rows_product(M, K, N, g, ws, dxs)) return false;     // from the old W
        return gradient_step(M, N, K, g, xs, ws, vs, ds, rule);
    }, "dx <- dy w (when dx is not None), then w's gradient dy^T x and the solver's SGD step "
       "(nesterov: Nesterov's) with it, in one pass over w, history and diff: history <- the new "
       "momentum, diff <- the step (not when diff is None), w -= the step. False, with nothing "
       "written, where this "
       "machine has no such pass (no AVX-512, or a batch over 64): take the passes one by one");
    m.def("ip_backward_filter", [](const py::array& dy, const py::array& x, py::array& dw,
                                   bool transpose) {
        require(dy.ndim() == 2 && x.ndim() == 2 && dw.ndim() == 2, "ip_backward_filter: 2-D");
        const std::int64_t M = dy.shape(0), N = dy.shape(1), K = x.shape(1);
        require(x.shape(0) == M && dw.size() == N * K, "ip_backward_filter: shapes do not match");
        const float* g = in_ptr<float>(dy, "dy");
        const float* xs = in_ptr<float>(x, "x");
        float* out = out_ptr<float>(dw, "dw");
        Release release;
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
