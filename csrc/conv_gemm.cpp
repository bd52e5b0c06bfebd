// Convolution as matrix products on minicnn's own GEMM (csrc/gemm.h), float32, per group g:
//
//   forward          y_g (F/G x NP)        = w_g (F/G x Kg)   * cols_g (Kg x NP)
//   backward data    dcols_g (Kg x NP)     = w_g^T (Kg x F/G) * dy_g (F/G x NP)   then col2im
//   backward filter  dw_g^T (Kg x F/G)    += cols_g (Kg x NP) * dy_g^T (NP x F/G)
//
// with Kg = C/G*kh*kw window taps (row t = (c, i, j)) and NP = images * oh * ow output
// positions (column = (n, y, z)). cols is never stored: the packing routines read the
// windows straight from x (implicit im2col), dy is read in place (NCHW), and y goes to its
// (N, F, oh, ow) blob with the bias added as the tile is stored. Columns are walked in
// "runs": stretches of output positions on one output row of one image, which read one input
// row (contiguously when the stride is 1).
#include <vector>

#include "common.h"
#include "gemm.h"

namespace minicnn {

namespace {

struct Conv {
    std::int64_t N, C, H, W, F, G, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
    std::int64_t cg() const { return C / G; }
    std::int64_t fg() const { return F / G; }
    std::int64_t taps() const { return cg() * kh * kw; }
    std::int64_t P() const { return oh * ow; }
};

// Output positions j0 .. j0 + n - 1 split at row and image ends: (offset, length, image,
// output row, first output column) for each run. A pointwise convolution (1x1, stride 1, no
// pad) reads whole images contiguously, so its runs only end at image ends.
struct Run {
    std::int64_t offset, length, n, y, z;
};

bool pointwise(const Conv& cv) {
    return cv.kh == 1 && cv.kw == 1 && cv.sh == 1 && cv.sw == 1 && cv.ph == 0 && cv.pw == 0;
}

void runs_of(const Conv& cv, std::int64_t j0, std::int64_t n, std::vector<Run>& out) {
    out.clear();
    const std::int64_t P = cv.P();
    const bool whole_images = pointwise(cv);
    std::int64_t j = j0, end = j0 + n;
    while (j < end) {
        const std::int64_t img = j / P, rem = j % P, y = rem / cv.ow, z = rem % cv.ow;
        const std::int64_t len = std::min(end - j, whole_images ? P - rem : cv.ow - z);
        out.push_back({j - j0, len, img, y, z});
        j += len;
    }
}

// dst[t] = src[t * stride] for t < n. The usual strides get a loop of their own, with the
// stride a constant the compiler turns into vector loads and shuffles (conv1's stride-4 gather
// was a third of its forward time as a scalar loop).
MINICNN_VECTOR_CLONES static void strided_copy(float* __restrict dst, const float* __restrict src,
                                               std::int64_t n, std::int64_t stride) {
    switch (stride) {
        case 2:
            for (std::int64_t t = 0; t < n; ++t) dst[t] = src[2 * t];
            break;
        case 4:
            for (std::int64_t t = 0; t < n; ++t) dst[t] = src[4 * t];
            break;
        default:
            for (std::int64_t t = 0; t < n; ++t) dst[t] = src[t * stride];
    }
}

// The runs of a block of positions, with, for every kernel column j, the stretch [lo, hi) of
// each run that reads inside the image: computed once per block, outside the tap loops.
struct Columns {
    std::vector<Run> runs;
    std::vector<std::int64_t> lo, hi;        // [run * kw + j]

    void build(const Conv& cv, std::int64_t j0, std::int64_t n) {
        runs_of(cv, j0, n, runs);
        lo.resize(runs.size() * cv.kw);
        hi.resize(runs.size() * cv.kw);
        const bool whole = pointwise(cv);                  // runs may span rows: all inside
        for (std::size_t r = 0; r < runs.size(); ++r)
            for (std::int64_t j = 0; j < cv.kw; ++j) {
                if (whole) {
                    lo[r * cv.kw + j] = 0;
                    hi[r * cv.kw + j] = runs[r].length;
                } else {
                    valid_range(cv.W, cv.sw, runs[r].z * cv.sw - cv.pw + j * cv.dw,
                                runs[r].length, lo[r * cv.kw + j], hi[r * cv.kw + j]);
                }
            }
    }

    // dst[t * step] <- tap (c, i, j) of the windows of run r (0 where they read padding).
    // kStrided: step 1 and a stride above 1 (its own instance keeps the stride-1 packing as
    // it was: a branch more in that loop measured 4% slower on CaffeNet conv3).
    template <bool kStrided = false>
    void gather(const Conv& cv, const float* x, std::size_t r, std::int64_t c, std::int64_t i,
                std::int64_t j, float* dst, std::int64_t step) const {
        const Run& run = runs[r];
        const std::int64_t row = run.y * cv.sh - cv.ph + i * cv.dh;
        if (row < 0 || row >= cv.H) {
            for (std::int64_t t = 0; t < run.length; ++t) dst[t * step] = 0.0f;
            return;
        }
        const float* src = x + ((run.n * cv.C + c) * cv.H + row) * cv.W + run.z * cv.sw -
                           cv.pw + j * cv.dw;
        const std::int64_t a = lo[r * cv.kw + j], b = hi[r * cv.kw + j];
        for (std::int64_t t = 0; t < a; ++t) dst[t * step] = 0.0f;
        if (step == 1 && cv.sw == 1) {
            for (std::int64_t t = a; t < b; ++t) dst[t] = src[t];
        } else if (kStrided) {
            strided_copy(dst + a, src + a * cv.sw, b - a, cv.sw);
        } else {
            for (std::int64_t t = a; t < b; ++t) dst[t * step] = src[t * cv.sw];
        }
        for (std::int64_t t = b; t < run.length; ++t) dst[t * step] = 0.0f;
    }
};

// Taps in order (c, i, j) from tap t0 on, without divisions in the loop.
struct TapWalk {
    std::int64_t c, i, j, kh, kw;
    TapWalk(const Conv& cv, std::int64_t g, std::int64_t t0)
        : c(g * cv.cg() + t0 / (cv.kh * cv.kw)), i((t0 / cv.kw) % cv.kh), j(t0 % cv.kw),
          kh(cv.kh), kw(cv.kw) {}
    void next() {
        if (++j == kw) {
            j = 0;
            if (++i == kh) {
                i = 0;
                ++c;
            }
        }
    }
};

// Bp[q][k][t] <- line[q*nr + t] for one k: a gathered row of the block dealt into its panels.
inline void deal(const float* line, std::int64_t n, std::int64_t k, std::int64_t kc,
                 std::int64_t nr, float* Bp) {
    for (std::int64_t q = 0; q * nr < n; ++q) {
        float* dst = Bp + (q * kc + k) * nr;
        const std::int64_t width = std::min(nr, n - q * nr);
        std::memcpy(dst, line + q * nr, sizeof(float) * width);
        for (std::int64_t t = width; t < nr; ++t) dst[t] = 0.0f;
    }
}

// B panels of the implicit im2col: Bp[q][k][t] = cols[tap l0 + k][position j0 + q*nr + t].
// Each tap's row of the whole block is gathered run by run (long runs: little overhead per
// value), then dealt into the panels.
template <bool kStrided>
void pack_im2col(const Conv& cv, const float* x, std::int64_t g, std::int64_t j0,
                 std::int64_t n, std::int64_t l0, std::int64_t kc, std::int64_t nr, float* Bp) {
    thread_local Columns cols;
    thread_local std::vector<float> line;
    cols.build(cv, j0, n);
    line.resize(n);
    TapWalk tap(cv, g, l0);
    for (std::int64_t k = 0; k < kc; ++k, tap.next()) {
        for (std::size_t r = 0; r < cols.runs.size(); ++r)
            cols.template gather<kStrided>(cv, x, r, tap.c, tap.i, tap.j,
                                           line.data() + cols.runs[r].offset, 1);
        deal(line.data(), n, k, kc, nr, Bp);
    }
}

// B panels whose column jj = output position (n, p) reads v[n][row0 + l0 + k][p] of an
// (N, rows_total, P) array (dy for backward data).
void pack_positions(const Conv& cv, const float* v, std::int64_t rows_total, std::int64_t row0,
                    std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t kc,
                    std::int64_t nr, float* Bp) {
    thread_local std::vector<float> line;
    line.resize(n);
    const std::int64_t P = cv.P();
    for (std::int64_t k = 0; k < kc; ++k) {
        for (std::int64_t j = j0, end = j0 + n; j < end;) {        // split at image ends
            const std::int64_t img = j / P, p = j % P, len = std::min(end - j, P - p);
            std::memcpy(line.data() + (j - j0), v + (img * rows_total + row0 + l0 + k) * P + p,
                        sizeof(float) * len);
            j += len;
        }
        deal(line.data(), n, k, kc, nr, Bp);
    }
}

// A panels from a row-major matrix: Ap[p][k][MR] = a[(i0 + p*MR + r) * lda + l0 + k].
void pack_rows(const float* a, std::int64_t lda, std::int64_t i0, std::int64_t m,
               std::int64_t l0, std::int64_t kc, float* Ap) {
    const std::int64_t MR = gemm::MR;
    for (std::int64_t p = 0; p * MR < m; ++p)
        for (std::int64_t r = 0; r < MR; ++r) {
            float* dst = Ap + p * MR * kc + r;
            if (p * MR + r < m) {
                const float* src = a + (i0 + p * MR + r) * lda + l0;
                for (std::int64_t k = 0; k < kc; ++k) dst[k * MR] = src[k];
            } else {
                for (std::int64_t k = 0; k < kc; ++k) dst[k * MR] = 0.0f;
            }
        }
}

}  // namespace

// Groups side by side: with as many groups as threads or a multiple (CaffeNet's conv2, 4, 5 on
// two cores), each thread runs whole groups (the GEMM inside then runs on that thread alone:
// OpenMP does not nest), which balances better than splitting one group's columns in uneven
// blocks. Otherwise the groups run in turn, each GEMM on every thread.
static bool groups_in_parallel(const Conv& cv) {
    const std::int64_t threads = max_threads();
    return threads > 1 && cv.G >= threads && cv.G % threads == 0;
}

// body(g) for every group g; no parallel region at all otherwise (an inactive one around the
// products' own parallel loops measured 30% slower on conv3's backward).
template <typename Body>
static void for_each_group(const Conv& cv, Body&& body) {
    if (groups_in_parallel(cv)) {
#pragma omp parallel for schedule(static)
        for (std::int64_t g = 0; g < cv.G; ++g) body(g);
    } else {
        for (std::int64_t g = 0; g < cv.G; ++g) body(g);
    }
}

// --- forward ----------------------------------------------------------------------------------

static void conv_forward(const Conv& cv, const float* x, const float* w, const float* b,
                         float* y) {
    const std::int64_t fg = cv.fg(), taps = cv.taps(), NP = cv.N * cv.P(), P = cv.P();
    const gemm::Blocking blocking{48, 1024, 256};
    for_each_group(cv, [&](std::int64_t g) {
        // the weights are read in place by the micro-kernel: packing them whole each call cost
        // as much as the products at batch 1 (ResNet-50's 7x7 maps: 49 columns per weight)
        const float* wg = w + g * fg * taps;
        gemm::run(
            fg, NP, taps, blocking,
            [&](std::int64_t i0, std::int64_t, std::int64_t l0, std::int64_t, float*) {
                return gemm::Panels{wg + i0 * taps + l0, 0, taps};
            },
            [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t kc,
                std::int64_t nr, float* Bp) {
                if (cv.sw > 1)
                    pack_im2col<true>(cv, x, g, j0, n, l0, kc, nr, Bp);
                else
                    pack_im2col<false>(cv, x, g, j0, n, l0, kc, nr, Bp);
            },
            [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n, const float* C,
                std::int64_t ldc) {
                thread_local std::vector<Run> runs;
                runs_of(cv, j0, n, runs);
                for (std::int64_t r = 0; r < m; ++r) {
                    const std::int64_t f = g * fg + i0 + r;
                    const float bias = b ? b[f] : 0.0f;
                    const float* src = C + r * ldc;
                    for (const Run& run : runs) {
                        float* dst = y + (run.n * cv.F + f) * P + run.y * cv.ow + run.z;
                        for (std::int64_t t = 0; t < run.length; ++t)
                            dst[t] = src[run.offset + t] + bias;
                    }
                }
            });
    });
}

// --- backward data ---------------------------------------------------------------------------
//
// dx = col2im(w^T dy): each finished tile of w^T dy (rows = taps (c, i, j), columns = output
// positions) is added straight onto the input pixels its taps read, so the columns are never
// stored. Two tasks never add to one pixel: every task owns whole images (its columns) and
// whole channels (its rows). A pointwise convolution's columns are dx itself: stored, not added.

static void conv_backward_data(const Conv& cv, const float* dy, const float* w, float* dx) {
    const std::int64_t fg = cv.fg(), taps = cv.taps(), P = cv.P(), NP = cv.N * P;
    const bool direct = pointwise(cv);
    gemm::Blocking blocking{48, 1024, 256};
    blocking.col_align = P;                      // whole images
    blocking.row_align = cv.kh * cv.kw;          // whole channels
    if (!direct) {
        const std::int64_t total = cv.N * cv.C * cv.H * cv.W;
#pragma omp parallel for schedule(static) if (total > PARALLEL_WORK)
        for (std::int64_t i = 0; i < total; i += 65536)
            std::memset(dx + i, 0, sizeof(float) * std::min<std::int64_t>(65536, total - i));
    }
    for_each_group(cv, [&](std::int64_t g) {
        // A = w_g^T (taps x F/G): w_g is (F/G x taps), read transposed
        const std::vector<float> A = gemm::pack_all(w + g * fg * taps, taps, fg, taps, true);
        gemm::run(
            taps, NP, fg, blocking,
            [&](std::int64_t i0, std::int64_t, std::int64_t l0, std::int64_t, float*) {
                return gemm::packed_panels(A, fg, i0, l0);
            },
            [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t kc,
                std::int64_t nr, float* Bp) {
                pack_positions(cv, dy, cv.F, g * fg, j0, n, l0, kc, nr, Bp);
            },
            [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n,
                const float* Cb, std::int64_t ldc) {
                thread_local Columns cols;
                cols.build(cv, j0, n);
                TapWalk tap(cv, g, i0);
                for (std::int64_t r = 0; r < m; ++r, tap.next()) {
                    const float* src = Cb + r * ldc;
                    for (std::size_t k = 0; k < cols.runs.size(); ++k) {
                        const Run& run = cols.runs[k];
                        if (direct) {
                            std::memcpy(dx + (run.n * cv.C + tap.c) * P + run.y * cv.ow + run.z,
                                        src + run.offset, sizeof(float) * run.length);
                            continue;
                        }
                        const std::int64_t row = run.y * cv.sh - cv.ph + tap.i * cv.dh;
                        if (row < 0 || row >= cv.H) continue;
                        float* dst = dx + ((run.n * cv.C + tap.c) * cv.H + row) * cv.W +
                                     run.z * cv.sw - cv.pw + tap.j * cv.dw;
                        const float* from = src + run.offset;
                        const std::int64_t lo = cols.lo[k * cv.kw + tap.j];
                        const std::int64_t hi = cols.hi[k * cv.kw + tap.j];
                        if (cv.sw == 1) {
                            for (std::int64_t t = lo; t < hi; ++t) dst[t] += from[t];
                        } else {
                            for (std::int64_t t = lo; t < hi; ++t) dst[t * cv.sw] += from[t];
                        }
                    }
                }
            });
    });
}

// --- backward filter: dw (F, C/G, kh, kw) += the filter gradient ------------------------------

#ifdef MINICNN_X86
// One run of dy dealt into a 32-filter B panel: panel[s][t] = src[t * P + s] for s < length
// and t < width (0 for t >= width), 16 filters at a time by a gather. The scalar loop wrote
// one value per cache line of the panel at a time (a transpose): it was as slow as the
// products on 1x1 convolutions.
__attribute__((target("avx512f"))) static void dy_panel_avx512(const float* src, std::int64_t P,
                                                               std::int64_t width,
                                                               std::int64_t length,
                                                               float* panel) {
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(static_cast<int>(P)));
    const __mmask16 lo = width >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << width) - 1);
    const __mmask16 hi = width >= 32 ? 0xFFFF
                         : width <= 16 ? 0
                                       : static_cast<__mmask16>((1u << (width - 16)) - 1);
    const float* upper = src + 16 * P;
    for (std::int64_t s = 0; s < length; ++s) {
        const __m512 a = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lo, rows, src + s, 4);
        const __m512 b = hi ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), hi, rows, upper + s, 4)
                            : _mm512_setzero_ps();
        _mm512_storeu_ps(panel + s * 32, a);
        _mm512_storeu_ps(panel + s * 32 + 16, b);
    }
}
#endif

//
// The product's columns are the filters (fg) and its inner dimension the output positions (NP,
// tens of thousands): with fewer filters than NC per thread, splitting columns or rows between
// threads would have every thread pack the same dy block. Then the positions are split instead:
// each thread multiplies its share into its own partial dw, and the partials are added in
// thread order (the same sums whatever the timing).
static void conv_backward_filter(const Conv& cv, const float* dy, const float* x, float* dw) {
    const std::int64_t fg = cv.fg(), taps = cv.taps(), NP = cv.N * cv.P(), P = cv.P();
    const gemm::Blocking blocking{96, 384, 384};
#ifdef MINICNN_X86
    static const bool wide = __builtin_cpu_supports("avx512f");
#endif
    // dw_g (fg x taps rows) += the product over positions [p0, p0 + np)
    auto product = [&](std::int64_t g, std::int64_t p0, std::int64_t np, float* dwg) {
        gemm::run(
            taps, fg, np, blocking,
            [&](std::int64_t i0, std::int64_t m, std::int64_t l0, std::int64_t kc, float* Ap) {
                // Ap[p][k][r] = cols[tap i0 + p*MR + r][position l0 + k]
                const std::int64_t MR = gemm::MR;
                thread_local Columns cols;
                cols.build(cv, p0 + l0, kc);
                TapWalk tap(cv, g, i0);
                for (std::int64_t p = 0; p * MR < m; ++p)
                    for (std::int64_t r = 0; r < MR; ++r) {
                        float* dst = Ap + p * MR * kc + r;
                        if (p * MR + r >= m) {
                            for (std::int64_t k = 0; k < kc; ++k) dst[k * MR] = 0.0f;
                            continue;
                        }
                        for (std::size_t s = 0; s < cols.runs.size(); ++s)
                            cols.gather(cv, x, s, tap.c, tap.i, tap.j,
                                        dst + cols.runs[s].offset * MR, MR);
                        tap.next();
                    }
                return gemm::Panels{Ap, kc * MR};
            },
            [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t kc,
                std::int64_t nr, float* Bp) {
                // Bp[q][k][t] = dy[position p0 + l0 + k][filter g*fg + j0 + q*nr + t]
                thread_local std::vector<Run> runs;
                runs_of(cv, p0 + l0, kc, runs);
#ifdef MINICNN_X86
                if (nr == 32 && wide && P < (std::int64_t(1) << 27)) {   // int32 offsets
                    for (std::int64_t q = 0; q * nr < n; ++q)
                        for (const Run& run : runs)
                            dy_panel_avx512(dy + (run.n * cv.F + g * fg + j0 + q * nr) * P +
                                                run.y * cv.ow + run.z,
                                            P, std::min(nr, n - q * nr), run.length,
                                            Bp + (q * kc + run.offset) * nr);
                    return;
                }
#endif
                for (std::int64_t q = 0; q * nr < n; ++q) {
                    float* panel = Bp + q * nr * kc;
                    for (std::int64_t t = 0; t < nr; ++t) {
                        const std::int64_t f = j0 + q * nr + t;
                        if (f >= j0 + n) {
                            for (std::int64_t k = 0; k < kc; ++k) panel[k * nr + t] = 0.0f;
                            continue;
                        }
                        for (const Run& run : runs) {
                            const float* src = dy + (run.n * cv.F + g * fg + f) * P +
                                               run.y * cv.ow + run.z;
                            float* dst = panel + run.offset * nr + t;
                            for (std::int64_t s = 0; s < run.length; ++s) dst[s * nr] = src[s];
                        }
                    }
                }
            },
            [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n, const float* C,
                std::int64_t ldc) {
                for (std::int64_t t = 0; t < n; ++t) {      // C is dw^T: walk dw's rows
                    float* dst = dwg + (j0 + t) * taps + i0;
                    for (std::int64_t r = 0; r < m; ++r) dst[r] += C[r * ldc + t];
                }
            });
    };
    const std::int64_t threads = max_threads(), size = fg * taps;
    const bool split = threads > 1 && !groups_in_parallel(cv) &&
                       fg <= blocking.nc * (threads - 1) && NP >= 512 * threads;
    if (!split) {
        for_each_group(cv, [&](std::int64_t g) { product(g, 0, NP, dw + g * size); });
        return;
    }
#ifdef _OPENMP
    thread_local std::vector<float> parts;              // threads 1.. (thread 0 adds to dw)
    parts.resize((threads - 1) * size);
    float* const partials = parts.data();               // (thread_local: this thread's)
    for (std::int64_t g = 0; g < cv.G; ++g) {
        float* dwg = dw + g * size;
        std::int64_t used = 1;
#pragma omp parallel num_threads(threads)
        {
            const std::int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
            if (t == 0) used = T;
            float* mine = t == 0 ? dwg : partials + (t - 1) * size;
            if (t > 0) std::fill(mine, mine + size, 0.0f);
            product(g, NP * t / T, NP * (t + 1) / T - NP * t / T, mine);
        }
#pragma omp parallel for schedule(static) if (size * used > (1 << 16))
        for (std::int64_t i = 0; i < size; ++i)
            for (std::int64_t t = 1; t < used; ++t) dwg[i] += partials[(t - 1) * size + i];
    }
#endif
}

// --- bindings ---------------------------------------------------------------------------------

static Conv conv_of(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                    const py::array& w, std::int64_t G, const py::tuple& geom, std::int64_t oh,
                    std::int64_t ow) {
    require(geom.size() == 8, "geometry must be (kh, kw, sh, sw, ph, pw, dh, dw)");
    require(w.ndim() == 4, "conv_gemm: w must be 4-D");
    Conv cv{N, C, H, W, w.shape(0), G, oh, ow,
            geom[0].cast<std::int64_t>(), geom[1].cast<std::int64_t>(),
            geom[2].cast<std::int64_t>(), geom[3].cast<std::int64_t>(),
            geom[4].cast<std::int64_t>(), geom[5].cast<std::int64_t>(),
            geom[6].cast<std::int64_t>(), geom[7].cast<std::int64_t>()};
    require(G >= 1 && cv.C % G == 0 && cv.F % G == 0, "conv_gemm: bad group");
    require(w.shape(1) == cv.C / G && w.shape(2) == cv.kh && w.shape(3) == cv.kw,
            "conv_gemm: w has the wrong shape");
    require(cv.kh >= 1 && cv.kw >= 1 && cv.sh >= 1 && cv.sw >= 1 && cv.dh >= 1 && cv.dw >= 1 &&
                cv.ph >= 0 && cv.pw >= 0 && oh >= 1 && ow >= 1, "conv_gemm: invalid geometry");
    return cv;
}

static Conv conv_of(const py::array& x, const py::array& w, std::int64_t G, const py::tuple& geom,
                    std::int64_t oh, std::int64_t ow) {
    require(x.ndim() == 4, "conv_gemm: x must be 4-D");
    return conv_of(x.shape(0), x.shape(1), x.shape(2), x.shape(3), w, G, geom, oh, ow);
}

static void check_shape(const py::array& a, std::initializer_list<std::int64_t> shape,
                        const char* name) {
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    std::int64_t d = 0;
    for (std::int64_t s : shape) ok = ok && a.shape(d++) == s;
    require(ok, std::string("conv_gemm: ") + name + " has the wrong shape");
}

REGISTER_NATIVE(m) {
    m.def("gemm_kernel", [] { return std::string(gemm::kernel().name); },
          "the micro-kernel minicnn's GEMM picked for this CPU");
    m.def("gemm", [](const py::array& a, const py::array& b, py::array& c, std::int64_t mc,
                     std::int64_t nc, std::int64_t kc) {
        require(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2 && a.shape(1) == b.shape(0) &&
                    c.shape(0) == a.shape(0) && c.shape(1) == b.shape(1),
                "gemm: c (M, N) = a (M, L) b (L, N)");
        const std::int64_t M = a.shape(0), L = a.shape(1), N = b.shape(1);
        const float* as = in_ptr<float>(a, "a");
        const float* bs = in_ptr<float>(b, "b");
        float* cs = out_ptr<float>(c, "c");
        py::gil_scoped_release release;
        gemm::run(
            M, N, L, gemm::Blocking{mc, nc, kc},
            [&](std::int64_t i0, std::int64_t m, std::int64_t l0, std::int64_t k, float* Ap) {
                pack_rows(as, L, i0, m, l0, k, Ap);
                return gemm::Panels{Ap, k * gemm::MR};
            },
            [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t k,
                std::int64_t nr, float* Bp) {
                for (std::int64_t q = 0; q * nr < n; ++q) {
                    const std::int64_t cols = std::min(nr, n - q * nr);
                    for (std::int64_t kk = 0; kk < k; ++kk) {
                        float* dst = Bp + (q * k + kk) * nr;
                        const float* src = bs + (l0 + kk) * N + j0 + q * nr;
                        for (std::int64_t t = 0; t < cols; ++t) dst[t] = src[t];
                        for (std::int64_t t = cols; t < nr; ++t) dst[t] = 0.0f;
                    }
                }
            },
            [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n, const float* C,
                std::int64_t ldc) {
                for (std::int64_t r = 0; r < m; ++r)
                    std::memcpy(cs + (i0 + r) * N + j0, C + r * ldc, sizeof(float) * n);
            });
    }, "c <- a @ b (float32, row-major) on minicnn's GEMM; for tests and tuning");
    m.def("conv_gemm_forward", [](const py::array& x, const py::array& w, py::object b,
                                  py::array& y, std::int64_t group, const py::tuple& geom) {
        require(y.ndim() == 4, "conv_gemm: y must be 4-D");
        const Conv cv = conv_of(x, w, group, geom, y.shape(2), y.shape(3));
        check_shape(y, {cv.N, cv.F, cv.oh, cv.ow}, "y");
        const float* xs = in_ptr<float>(x, "x");
        const float* ws = in_ptr<float>(w, "w");
        const float* bs = opt_in_ptr<float>(b, "b");
        if (bs) require(py::len(b) == static_cast<size_t>(cv.F), "conv_gemm: bias size");
        float* ys = out_ptr<float>(y, "y");
        py::gil_scoped_release release;
        conv_forward(cv, xs, ws, bs, ys);
    }, "y <- conv(x, w) + b, float32, on minicnn's GEMM with implicit im2col");
    m.def("conv_gemm_backward_data", [](const py::array& dy, const py::array& w, py::array& dx,
                                        std::int64_t group, const py::tuple& geom) {
        require(dy.ndim() == 4 && dx.ndim() == 4, "conv_gemm: dy and dx must be 4-D");
        const Conv cv = conv_of(dx, w, group, geom, dy.shape(2), dy.shape(3));
        check_shape(dy, {cv.N, cv.F, cv.oh, cv.ow}, "dy");
        const float* g = in_ptr<float>(dy, "dy");
        const float* ws = in_ptr<float>(w, "w");
        float* out = out_ptr<float>(dx, "dx");
        py::gil_scoped_release release;
        conv_backward_data(cv, g, ws, out);
    }, "dx <- the input gradient of conv(x, w) for dy, float32 (w^T dy, then col2im)");
    m.def("conv_gemm_backward_filter", [](const py::array& dy, const py::array& x,
                                          py::array& dw, std::int64_t group,
                                          const py::tuple& geom) {
        require(dy.ndim() == 4, "conv_gemm: dy must be 4-D");
        const Conv cv = conv_of(x, dw, group, geom, dy.shape(2), dy.shape(3));
        check_shape(dy, {cv.N, cv.F, cv.oh, cv.ow}, "dy");
        const float* g = in_ptr<float>(dy, "dy");
        const float* xs = in_ptr<float>(x, "x");
        float* out = out_ptr<float>(dw, "dw");
        py::gil_scoped_release release;
        conv_backward_filter(cv, g, xs, out);
    }, "dw += the filter gradient of conv(x, w) for dy, float32");
}

}  // namespace minicnn
