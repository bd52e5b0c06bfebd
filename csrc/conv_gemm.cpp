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
// row (contiguously when the stride is 1). Where it pays, "the direct product" below packs
// nothing at all: the micro-kernel reads each tap's windows in place from a zero-bordered copy
// of the input (split into phases at a stride), through a table of tap offsets.
#include <chrono>
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
    std::int64_t q = 0;
    if (nr == 16)                     // whole panels: copies of a known size, inlined
        for (; (q + 1) * 16 <= n; ++q) std::memcpy(Bp + (q * kc + k) * 16, line + q * 16, 64);
    for (; q * nr < n; ++q) {
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
    TapWalk tap(cv, g, l0);
    if (pointwise(cv) && cols.runs.size() == 1) {     // each tap's row is a stretch of x
        const Run& run = cols.runs[0];
        const float* start = x + (run.n * cv.C * cv.H + run.y) * cv.W + run.z;
        for (std::int64_t k = 0; k < kc; ++k, tap.next())
            deal(start + tap.c * cv.H * cv.W, n, k, kc, nr, Bp);
        return;
    }
    line.resize(n);
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

// --- the direct product ----------------------------------------------------------------------
//
// At stride 1 the windows of consecutive output positions are consecutive input values, once
// the input has its zero border stored (xp, planes Hp x Wp) and the positions are numbered on
// the padded width: position q = y * Wp + z reads tap (c, i, j) at xp[c][q + i*dh*Wp + j*dw].
// So the micro-kernel reads B straight from xp through a table of tap offsets, and nothing is
// packed: im2col cost CaffeNet's and ResNet's 3x3 convolutions a third of their forward time.
// A stride s becomes stride 1 the same way once the padded input is split into its phases:
// phase (a, b) holds every sh-th row from row a and every sw-th column from column b, and tap
// (c, i, j) reads phase ((i*dh) % sh, (j*dw) % sw) at row (i*dh) / sh, column (j*dw) / sw, so
// an 11x11 stride-4 conv1 is 16 phases of 57x57 read by stride-1 windows (only the phases some
// tap reads are stored). At stride 1 a row's right border is the next row's left one, so a
// row is W + pw wide (Direct::width). The positions z >= ow of each row (of Ws = the phase
// width) are computed and dropped (Ws / ow more products: 2% at 56x56, 7% at 14x14), and each
// image's positions are rounded up to whole micro tiles; the filter gradient, whose inner
// dimension the positions are, skips them instead, and so does the forward's other direct
// product (direct_product_kept), which makes the positions the tile's rows, where it pays.

// 0: never, 1: where it pays (the default), 2: at every convolution, 3: the same with the kept
// positions' product in every forward (2 and 3 for the tests)
static int direct_mode = [] {
    const char* v = std::getenv("MINICNN_CONV_DIRECT");
    return v ? std::atoi(v) : 1;
}();

static std::int64_t direct_chunk = std::int64_t(1) << 24;   // floats of padded images at a time

struct Direct {
    std::int64_t Hs, Ws, plane;     // a phase plane of the padded input: rows, columns, floats
    std::int64_t phases = 0;        // the phases some tap reads, stored in order of first use
    std::vector<std::int64_t> slot, phase_row, phase_col;   // slot[a * sw + b]: its place or -1
    std::int64_t image;             // floats an image takes: C * phases * plane
    std::int64_t Q, Qp;             // positions of an image: used (oh rows of Ws), kept (tiles)
    Direct(const Conv& cv, std::int64_t nr)
        : Hs((cv.H + 2 * cv.ph + cv.sh - 1) / cv.sh), Ws(width(cv)), plane(Hs * Ws),
          slot(cv.sh * cv.sw, -1), Q(cv.oh * Ws), Qp((Q + nr - 1) / nr * nr) {
        for (std::int64_t i = 0; i < cv.kh; ++i)
            for (std::int64_t j = 0; j < cv.kw; ++j) {
                const std::int64_t a = (i * cv.dh) % cv.sh, b = (j * cv.dw) % cv.sw;
                if (slot[a * cv.sw + b] < 0) {
                    slot[a * cv.sw + b] = phases++;
                    phase_row.push_back(a);
                    phase_col.push_back(b);
                }
            }
        image = cv.C * phases * plane;
    }
    // A phase row's width. At stride 1 a row's right border and the next row's left border are
    // one run of zeros (pw of them, or as many as keep each row's ow positions apart), read by
    // the windows at both ends: W + pw columns instead of W + 2 pw, and as many fewer
    // positions to compute and drop (a 13x13 map with pad 1: 14 instead of 15 a row).
    static std::int64_t width(const Conv& cv) {
        if (cv.sw != 1) return (cv.W + 2 * cv.pw + cv.sw - 1) / cv.sw;
        return cv.W + std::max(cv.pw, cv.ow - cv.W);
    }
    // where tap (c, i, j) of position 0 is, from the image's first float
    std::int64_t offset(const Conv& cv, std::int64_t c, std::int64_t i, std::int64_t j) const {
        const std::int64_t ii = i * cv.dh, jj = j * cv.dw;
        return (c * phases + slot[(ii % cv.sh) * cv.sw + jj % cv.sw]) * plane +
               (ii / cv.sh) * Ws + jj / cv.sw;
    }
    // every tap of group g, in the weights' order (c, i, j)
    std::vector<std::int64_t> offsets(const Conv& cv, std::int64_t g) const {
        std::vector<std::int64_t> off;
        off.reserve(cv.taps());
        for (std::int64_t c = 0; c < cv.cg(); ++c)
            for (std::int64_t i = 0; i < cv.kh; ++i)
                for (std::int64_t j = 0; j < cv.kw; ++j)
                    off.push_back(offset(cv, g * cv.cg() + c, i, j));
        return off;
    }
    // every group's taps: [g][tap]
    std::vector<std::int64_t> offsets_of_groups(const Conv& cv) const {
        std::vector<std::int64_t> all;
        for (std::int64_t g = 0; g < cv.G; ++g) {
            const std::vector<std::int64_t> off = offsets(cv, g);
            all.insert(all.end(), off.begin(), off.end());
        }
        return all;
    }
    // place[u] for the kept positions u = img * P + y * ow + z of nb images: where position u
    // reads its tap 0 (img * image + y * Ws + z); `size` entries, 0 past nb * P
    void places(const Conv& cv, std::int64_t nb, std::int64_t size,
                std::vector<std::int64_t>& place) const {
        const std::int64_t P = cv.P();
        place.assign(size, 0);
        for (std::int64_t u = 0; u < nb * P; ++u) {
            const std::int64_t p = u % P;
            place[u] = (u / P) * image + (p / cv.ow) * Ws + p % cv.ow;
        }
    }
    // floats a chunk of nb images takes, with room for the last tile's reads past its end
    std::int64_t floats(const Conv& cv, std::int64_t nb, std::int64_t nr) const {
        return nb * image + 2 * nr + (cv.kw - 1) * cv.dw + 16;
    }
};

enum class Pass { forward, filter };

// Whether the direct product's dropped positions (Direct) cost less than the packing saved:
// more products against no packing, whose cost grows with fewer filters to share it and with
// shorter rows. Measured on 2 cores (AMD EPYC, AVX-512), the
// direct product against the packed one, forward: 3x3 with 32-128 filters at 56x56 to 14x14
// (4-14% more products) 1.3-1.5x faster; 7x7 maps (31% more) 1.07-1.24x; 256 filters at
// 56x56 (4% more) 1.0x. With rows sharing their borders (Direct::width): CaffeNet's 5x5
// conv2 (10% more) 1.05-1.2x in all three passes; its 13x13 maps (14% more) with 128-192
// filters a group 1.04-1.2x, with 384 (conv3) 1.0-1.1x; 3x3 at 33x33, 256 filters, rate 2
// (9% more) 1.0-1.09x, rates 4 and 6 (15% and 20% more) 0.9-0.96x.
static bool direct_pays(const Conv& cv) {
    const Direct d(cv, gemm::kernel().nr);
    const double more = static_cast<double>(d.Qp) / cv.P();
    return more <= 1.14 || (cv.fg() <= 128 && more <= 1.2) || (cv.ow <= 8 && more <= 1.35);
}

// Filters a group that 32-wide panels would pad (48, 96 + 48, ...) take 48-wide ones (AVX-512).
static bool kept_panels48(const Conv& cv) {
#ifdef MINICNN_X86
    return gemm::kernel().nr == 32 && cv.fg() % 32 != 0 && cv.fg() % 48 == 0;
#else
    (void)cv;
    return false;
#endif
}

// The shapes the kept positions' product (direct_product_kept) runs well: stride 1 and whole
// panels of filters.
static bool kept_possible(const Conv& cv) {
    return cv.sh == 1 && cv.sw == 1 && !pointwise(cv) &&
           (cv.fg() % gemm::kernel().nr == 0 || kept_panels48(cv));
}
static bool kept_instead(const Conv& cv) {    // where use_kept takes it though direct_pays not
    return kept_possible(cv) && cv.N * cv.P() >= 64 && !direct_pays(cv);
}

// Not so small a map that the dropped positions outweigh the packing saved.
static bool use_direct(const Conv& cv, Pass pass = Pass::forward) {
    if (direct_mode == 0) return false;
    if (direct_mode >= 2) return true;
    if (pointwise(cv)) {
        // 1x1 at stride 1: the input read in place (forward) or copied once (filter gradient)
        // instead of packed. With 32-wide tiles (AVX-512, Zen 4): forward 1.35-1.42x at
        // 56x56, 1.0x at 28x28, 0.6-0.8x at 7x7 (31% more products); filter gradient
        // 1.15-1.34x with 32-64 filters, 0.87-1.02x with more. With 16-wide tiles (AVX2, Zen
        // 3, one thread, batch 8) the packed product won every 1x1 measured: forward 256->256
        // at 56x56 40.0-40.7 against 51.6-51.9 ms, at 28x28 9.9-10.1 against 12.0-12.3,
        // 64->256 at 56x56 12.2-12.6 against 13.5-13.6; filter gradient 256->64 at 56x56
        // 10.7-11.0 against 12.7-12.9. (A tile's inner rows are then one cache line per input
        // channel, a plane apart: a 56x56 plane is 196 lines, so they fall in 16 of L1's 64
        // sets and each of the tile's filter panels reads them again from L2.)
        if (gemm::kernel().nr < 32) return false;
        const Direct d(cv, gemm::kernel().nr);
        const bool whole_tiles = d.Qp * 20 <= cv.P() * 21;         // at most 5% more
        return whole_tiles && (pass == Pass::forward || cv.fg() <= 64);
    }
    // Where the dropped positions cost too much, the kept positions' product (which drops none)
    // can still take a forward or an input gradient: see use_kept.
    return direct_pays(cv) || (pass == Pass::forward && kept_instead(cv));
}

// xp <- images n0 .. n0 + nb of x, padded and split into the phases the taps read; the tail
// zeroed. Phase (a, b) row u, column v = padded x[u*sh + a][v*sw + b].
static void pad_images(const Conv& cv, const Direct& d, const float* x, std::int64_t n0,
                       std::int64_t nb, float* xp, std::int64_t total) {
    const std::int64_t planes = nb * cv.C * d.phases;
#pragma omp parallel for schedule(static) if (planes * d.plane > PARALLEL_WORK)
    for (std::int64_t pl = 0; pl < planes; ++pl) {
        const std::int64_t a = d.phase_row[pl % d.phases], b = d.phase_col[pl % d.phases];
        const float* src = x + (n0 * cv.C + pl / d.phases) * cv.H * cv.W;
        float* dst = xp + pl * d.plane;
        // the columns v whose x column v*sw + b - pw is inside: [lo, hi)
        const std::int64_t first = cv.pw - b, end = cv.W + cv.pw - b;
        const std::int64_t lo = first <= 0 ? 0 : std::min(d.Ws, (first + cv.sw - 1) / cv.sw);
        const std::int64_t hi = end <= 0 ? 0 : std::min(d.Ws, (end + cv.sw - 1) / cv.sw);
        for (std::int64_t u = 0; u < d.Hs; ++u) {
            float* row = dst + u * d.Ws;
            const std::int64_t r = u * cv.sh + a - cv.ph;
            if (r < 0 || r >= cv.H || hi <= lo) {
                std::memset(row, 0, sizeof(float) * d.Ws);
                continue;
            }
            for (std::int64_t v = 0; v < lo; ++v) row[v] = 0.0f;
            const float* from = src + r * cv.W + lo * cv.sw + b - cv.pw;
            if (cv.sw == 1)
                std::memcpy(row + lo, from, sizeof(float) * (hi - lo));
            else
                strided_copy(row + lo, from, hi - lo, cv.sw);
            for (std::int64_t v = hi; v < d.Ws; ++v) row[v] = 0.0f;
        }
    }
    std::memset(xp + planes * d.plane, 0, sizeof(float) * (total - planes * d.plane));
}

// y[n0 .. n0 + nb] (+)= w * xp, one group at a time; bias added when given (not accumulated).
// ``limit``: where xp's readable memory ends, when it is the caller's input read in place (a
// pointwise convolution): a tile that would read past it is packed instead, zeros past the end.
static void direct_product(const Conv& cv, const Direct& d, const float* xp, std::int64_t n0,
                           std::int64_t nb, const float* w, const float* b, float* y,
                           const float* limit = nullptr) {
    const gemm::Kernel& K = gemm::kernel();
    const std::int64_t nr = K.nr, MR = gemm::MR;
    const std::int64_t fg = cv.fg(), taps = cv.taps(), P = cv.P();
    const std::int64_t kc_max = 256, mc = 96, nc_tiles = 512 / nr;
    const std::int64_t tiles = nb * d.Qp / nr;
    for_each_group(cv, [&](std::int64_t g) {
        const std::vector<std::int64_t> off = d.offsets(cv, g);   // tap (c, i, j) of group g
        const float* wg = w + g * fg * taps;
        // tasks: chunks of tiles (an even count per thread when there are a few more than
        // threads), and, when there are fewer chunks than threads, groups of rows (each
        // thread then reads only its rows of the weights: at batch 1 they are the big operand)
        const std::int64_t threads = max_threads();
        std::int64_t chunks = (tiles + nc_tiles - 1) / nc_tiles;
        if (threads > 1 && chunks > threads && chunks < 8 * threads && chunks % threads)
            chunks = std::min(tiles, (chunks + threads - 1) / threads * threads);
        const std::int64_t chunk = (tiles + chunks - 1) / chunks;
        chunks = (tiles + chunk - 1) / chunk;
        const std::int64_t row_steps = (fg + MR - 1) / MR;
        const std::int64_t m_groups = std::min<std::int64_t>(
            row_steps, std::max<std::int64_t>(1, (threads + chunks - 1) / chunks));
        const std::int64_t group_rows = (row_steps + m_groups - 1) / m_groups * MR;
        const std::int64_t blocks = (taps + kc_max - 1) / kc_max;
        const std::int64_t kc = (taps + blocks - 1) / blocks;
#pragma omp parallel for collapse(2) schedule(dynamic) if (fg * tiles * taps > (1 << 13))
        for (std::int64_t tg = 0; tg < m_groups; ++tg) {
            for (std::int64_t tc = 0; tc < chunks; ++tc) {
                const std::int64_t r0 = tg * group_rows, rows = std::min(group_rows, fg - r0);
                const std::int64_t t0 = tc * chunk, t1 = std::min(tiles, t0 + chunk);
                if (rows <= 0 || t0 >= t1) continue;
                const std::int64_t ldc = (t1 - t0) * nr;
                float* C = gemm::scratch(2, (rows + MR - 1) / MR * MR * ldc);
                for (std::int64_t l0 = 0; l0 < taps; l0 += kc) {
                    const std::int64_t k = std::min(kc, taps - l0);
                    for (std::int64_t i0 = 0; i0 < rows; i0 += mc) {
                        const std::int64_t m = std::min(mc, rows - i0);
                        for (std::int64_t t = t0; t < t1; ++t) {
                            const std::int64_t col = t * nr, img = col / d.Qp;
                            const float* base = xp + img * d.image + col % d.Qp;
                            if (t + 1 < t1 && i0 == 0) {
                                // the next tile's rows, one per tap and far apart: more
                                // streams than the hardware prefetcher follows
                                const std::int64_t next = col + nr, nimg = next / d.Qp;
                                // (a prefetch past the array's end does not fault)
                                const float* ahead = xp + nimg * d.image + next % d.Qp;
                                for (std::int64_t kk = l0; kk < l0 + k; ++kk) {
                                    __builtin_prefetch(ahead + off[kk]);
                                    __builtin_prefetch(ahead + off[kk] + nr - 1);
                                }
                            }
                            if (limit && base + off[taps - 1] + nr > limit) {
                                float* Bp = gemm::scratch(1, k * nr);    // the array's tail
                                for (std::int64_t kk = 0; kk < k; ++kk) {
                                    const float* src = base + off[l0 + kk];
                                    const std::int64_t n = std::max<std::int64_t>(
                                        0, std::min<std::int64_t>(nr, limit - src));
                                    std::memcpy(Bp + kk * nr, src, sizeof(float) * n);
                                    std::fill(Bp + kk * nr + n, Bp + (kk + 1) * nr, 0.0f);
                                }
                                for (std::int64_t p = 0; p * MR < m; ++p)
                                    K.run_rows(k, wg + (r0 + i0 + p * MR) * taps + l0, taps,
                                               std::min(MR, m - p * MR), Bp,
                                               C + (i0 + p * MR) * ldc + (t - t0) * nr, ldc,
                                               l0 > 0);
                                continue;
                            }
                            for (std::int64_t p = 0; p * MR < m; ++p)
                                K.run_offsets(k, wg + (r0 + i0 + p * MR) * taps + l0, taps,
                                              std::min(MR, m - p * MR), base, off.data() + l0,
                                              C + (i0 + p * MR) * ldc + (t - t0) * nr, ldc,
                                              l0 > 0);
                        }
                    }
                }
                // store: the kept positions of each padded row, for every filter of the task
                for (std::int64_t col = t0 * nr, end = t1 * nr; col < end;) {
                    const std::int64_t img = col / d.Qp, q = col % d.Qp;
                    const std::int64_t yy = q / d.Ws, zz = q % d.Ws;
                    const std::int64_t next = std::min({end, col - zz + d.Ws, (img + 1) * d.Qp});
                    if (yy < cv.oh && zz < cv.ow) {
                        const std::int64_t len = std::min(next - col, cv.ow - zz);
                        for (std::int64_t r = 0; r < rows; ++r) {
                            const std::int64_t f = g * fg + r0 + r;
                            const float bias = b ? b[f] : 0.0f;
                            const float* src = C + r * ldc + (col - t0 * nr);
                            float* dst = y + ((n0 + img) * cv.F + f) * P + yy * cv.ow + zz;
                            for (std::int64_t s = 0; s < len; ++s) dst[s] = src[s] + bias;
                        }
                    }
                    col = next;
                }
            }
        }
    });
}

// The direct product turned around: the output positions are the tile's rows, each read in
// place at its own place on the padded rows (TapRowsA: row r at xp + place[u], tap k at
// off[k]), and the filters its columns (the weights packed once, transposed, into nr-filter
// panels). Then only the kept positions are computed: none of the z >= ow columns, no image
// rounded up to whole tiles (a tile may span two images): 169 positions of a 13x13 map instead
// of 192. The finished tile is positions x filters, and goes to y transposed.
//
// And the kernel rows that read the zero border are skipped, as oneDNN skips them: a 3x3
// window with pad 1 on a 13x13 map has 5% of its taps on the top and bottom borders (and 5%
// more on the left and right ones, which are computed: skipping those too took the taps in
// the order (i, j, c), a cache line each, and measured slower). For that the taps run in the
// order (i, c, j), so the kernel rows an output row reads inside the input are one run of k,
// and the positions are sorted by that run (KeptOrder): the top rows of every image together,
// then the inner rows, then the bottom ones, so that a micro tile's positions share it. A tile
// computes the kernel rows any of its positions reads (a row beyond the edge reads the stored
// zeros, so a longer run is only slower).
struct KeptOrder {
    std::vector<std::int64_t> target;   // u (sorted) -> img * P + p
    std::vector<std::int64_t> place;    // u (sorted) -> where it reads tap 0
    std::vector<std::int64_t> rows;     // per tile: i0, i1 (the kernel rows i0 <= i < i1)

    KeptOrder(const Conv& cv, const Direct& d, std::int64_t nb, std::int64_t MR) {
        const std::int64_t P = cv.P(), U = nb * P;
        // output rows grouped by the kernel rows [lo, hi) they read inside the input, in order
        std::vector<std::pair<std::int64_t, std::int64_t>> range;
        std::vector<std::vector<std::int64_t>> members;
        for (std::int64_t y = 0; y < cv.oh; ++y) {
            const std::int64_t at = y * cv.sh - cv.ph;         // the input row tap 0 reads
            const std::int64_t lo = std::min(cv.kh, at >= 0 ? 0 : (cv.dh - 1 - at) / cv.dh);
            const std::int64_t hi =
                std::clamp(at >= cv.H ? 0 : (cv.H - at + cv.dh - 1) / cv.dh, lo, cv.kh);
            std::size_t c = 0;
            while (c < range.size() && range[c] != std::make_pair(lo, hi)) ++c;
            if (c == range.size()) {
                range.emplace_back(lo, hi);
                members.emplace_back();
            }
            members[c].push_back(y);
        }
        target.reserve(U);
        place.reserve(U);
        std::vector<std::int64_t> lo, hi;                    // per sorted position
        for (std::size_t c = 0; c < range.size(); ++c)
            for (std::int64_t img = 0; img < nb; ++img)
                for (std::int64_t y : members[c])
                    for (std::int64_t z = 0; z < cv.ow; ++z) {
                        target.push_back(img * P + y * cv.ow + z);
                        place.push_back(img * d.image + y * d.Ws + z);
                        lo.push_back(range[c].first);
                        hi.push_back(range[c].second);
                    }
        const std::int64_t tiles = (U + MR - 1) / MR;
        rows.assign(2 * tiles, 0);
        for (std::int64_t t = 0; t < tiles; ++t) {
            std::int64_t i0 = cv.kh, i1 = 0;
            for (std::int64_t u = t * MR; u < std::min(U, (t + 1) * MR); ++u)
                if (lo[u] < hi[u]) {                           // (else it reads only zeros)
                    i0 = std::min(i0, lo[u]);
                    i1 = std::max(i1, hi[u]);
                }
            rows[2 * t] = std::min(i0, i1);                    // i0 == i1: nothing to compute
            rows[2 * t + 1] = i1;
        }
    }
};

static void direct_product_kept(const Conv& cv, const Direct& d, const float* xp, std::int64_t n0,
                                std::int64_t nb, const float* w, const float* b, float* y) {
    const gemm::Kernel& K = gemm::kernel();
    const bool wide = kept_panels48(cv);
    const std::int64_t nr = wide ? 48 : K.nr, MR = gemm::MR;
    const std::int64_t fg = cv.fg(), cg = cv.cg(), taps = cv.taps(), P = cv.P(), U = nb * P;
    const std::int64_t panels = (fg + nr - 1) / nr, ldc = panels * nr;
    const std::int64_t blocks = (taps + 255) / 256, kc = (taps + blocks - 1) / blocks;
    const std::int64_t per_row = cg * cv.kw;                   // taps of one kernel row
    const KeptOrder order(cv, d, nb, MR);
#ifdef MINICNN_X86
    const gemm::MicroKernelTaps taps48 = gemm::micro_avx512_taps48;
#else
    const gemm::MicroKernelTaps taps48 = K.run_taps;              // (never taken)
#endif
    // tap k = (i * cg + c) * kw + j of every group: offsets[g][k], and the weights packed
    // Wp[g][inner block from l0][q][k][t] = w[g * fg + q * nr + t][c, i, j of l0 + k], 0 past fg
    std::vector<std::int64_t> offsets(cv.G * taps), weight_index(taps);
    for (std::int64_t i = 0; i < cv.kh; ++i)
        for (std::int64_t c = 0; c < cg; ++c)
            for (std::int64_t j = 0; j < cv.kw; ++j) {
                const std::int64_t k = (i * cg + c) * cv.kw + j;
                weight_index[k] = (c * cv.kh + i) * cv.kw + j;
                for (std::int64_t g = 0; g < cv.G; ++g)
                    offsets[g * taps + k] = d.offset(cv, g * cg + c, i, j);
            }
    thread_local std::vector<float> packed;
    packed.resize(cv.G * taps * ldc);
    float* const Wp = packed.data();
    const std::int64_t* const from = weight_index.data();
#pragma omp parallel for collapse(2) schedule(static) if (cv.G * taps * ldc > PARALLEL_WORK)
    for (std::int64_t g = 0; g < cv.G; ++g)
        for (std::int64_t q = 0; q < panels; ++q)
            for (std::int64_t l0 = 0; l0 < taps; l0 += kc) {
                const std::int64_t k = std::min(kc, taps - l0);
                float* dst = Wp + (g * taps + l0) * ldc + q * k * nr;
                for (std::int64_t kk = 0; kk < k; ++kk)
                    for (std::int64_t t = 0; t < nr; ++t) {
                        const std::int64_t f = q * nr + t;
                        dst[kk * nr + t] =
                            f < fg ? w[(g * fg + f) * taps + from[l0 + kk]] : 0.0f;
                    }
            }
    // tasks: (group, stretch of positions, range of filter panels); stretches of whole tiles
    // whose C (positions x ldc) stays near 256 KB, and filter ranges only when there are too
    // few stretches to keep every thread busy
    const std::int64_t threads = max_threads();
    const std::int64_t tiles = (U + MR - 1) / MR;
    std::int64_t per = std::max<std::int64_t>(1, (65536 / ldc) / MR);      // tiles a stretch
    std::int64_t stretches = (tiles + per - 1) / per;
    if (threads > 1 && cv.G * stretches < 8 * threads && (cv.G * stretches) % threads) {
        stretches = std::min(tiles, (cv.G * stretches + threads - 1) / threads * threads / cv.G);
        stretches = std::max<std::int64_t>(1, stretches);
        per = (tiles + stretches - 1) / stretches;
        stretches = (tiles + per - 1) / per;
    }
    const std::int64_t franges = std::min<std::int64_t>(
        panels, std::max<std::int64_t>(1, (threads + cv.G * stretches - 1) / (cv.G * stretches)));
    const std::int64_t per_range = (panels + franges - 1) / franges;
    const std::int64_t tasks = cv.G * stretches * franges;
    const std::int64_t* const place = order.place.data();
    const std::int64_t* const target = order.target.data();
    const std::int64_t* const tile_rows = order.rows.data();
    const std::int64_t* const tap_offsets = offsets.data();
#pragma omp parallel for schedule(dynamic) if (fg * U * taps > (1 << 13))
    for (std::int64_t task = 0; task < tasks; ++task) {
        const std::int64_t g = task / (stretches * franges);
        const std::int64_t s = task / franges % stretches, fr = task % franges;
        const std::int64_t u0 = s * per * MR, u1 = std::min(U, u0 + per * MR);
        const std::int64_t q0 = fr * per_range, q1 = std::min(panels, q0 + per_range);
        if (u0 >= u1 || q0 >= q1) continue;
        float* C = gemm::scratch(2, per * MR * ldc);
        const std::int64_t* off = tap_offsets + g * taps;
        for (std::int64_t l0 = 0; l0 < taps; l0 += kc) {
            const std::int64_t k = std::min(kc, taps - l0);
            const float* Wk = Wp + (g * taps + l0) * ldc;
            for (std::int64_t q = q0; q < q1; ++q)
                for (std::int64_t u = u0; u < u1; u += MR) {
                    // the tile's taps: its kernel rows, cut to this inner block
                    const std::int64_t first = tile_rows[2 * (u / MR)] * per_row;
                    const std::int64_t a = std::max(l0, first);
                    const std::int64_t e = std::min(l0 + k, tile_rows[2 * (u / MR) + 1] * per_row);
                    float* c = C + (u - u0) * ldc + q * nr;
                    if (a < e)
                        (wide ? taps48 : K.run_taps)(e - a, xp, place + u, std::min(MR, u1 - u),
                                                     off + a, Wk + (q * k + a - l0) * nr, c,
                                                     ldc, a > first);
                    else if (l0 == 0 && first == tile_rows[2 * (u / MR) + 1] * per_row)
                        for (std::int64_t r = 0; r < MR; ++r)    // only zeros read: 0
                            std::fill(c + r * ldc, c + r * ldc + nr, 0.0f);
                }
        }
        // store: y[n0 + img][filter][p] = C[u][f], a run of consecutive positions at a time
        const std::int64_t f0 = q0 * nr, f1 = std::min(fg, q1 * nr);
        for (std::int64_t u = u0; u < u1;) {
            std::int64_t len = 1;
            while (u + len < u1 && target[u + len] == target[u] + len &&
                   target[u] % P + len < P)
                ++len;
            const std::int64_t img = target[u] / P, p = target[u] % P;
            for (std::int64_t f = f0; f < f1; ++f) {
                const float bias = b ? b[g * fg + f] : 0.0f;
                const float* src = C + (u - u0) * ldc + f;
                float* dst = y + ((n0 + img) * cv.F + g * fg + f) * P + p;
                for (std::int64_t t = 0; t < len; ++t) dst[t] = src[t * ldc] + bias;
            }
            u += len;
        }
    }
}

// The kept positions' product where it measured faster (2 cores, AMD EPYC, AVX-512): with
// positions to spare for the weights' packing, a full last panel of filters, and 5% or more
// of the positions dropped by the other. CaffeNet conv2 (forward) to conv5 and its 3x3 ASPP
// at 33x33: 5-9% faster; a ResNet 3x3 at 28x28 (6% dropped) 2%; not at a stride (conv1
// 10% slower), 7x7 maps or one image (0.6-0.7 ms -> 0.8 ms: the packing). (Measured on Zen 5;
// skipping the border rows made it 2.5-4% faster again on CaffeNet's shapes, Zen 4.) With 48
// filters a group (conv2's input gradient) 32-wide panels were 20% slower; 48-wide ones
// (kept_panels48) are 10% faster: 37.1-37.4 -> 33.6-33.8 ms (Zen 4, A/B in one process).
//
// And wherever the other direct product does not pay (direct_pays) and this one can run, with
// 64 positions or more to spare for the weights' packing: there the choice was the packed
// product, which it beat on every such shape measured (2 cores, Zen 4, forward and input
// gradient): 3x3 at 33x33 with 256 filters, rates 4, 6 and 12, 51-52 -> 44-47 ms (26 -> 21 ms
// at rate 12, batch 4); 256 filters at 14x14, batch 8, 12.5 -> 8.8 ms, batch 1 1.44/1.68 ->
// 1.34/1.45; 3x3 maps 0.95/1.11 -> 0.80/1.02; 5x5 at 20x20 6.4/4.3 -> 4.2/3.9; 7x7 at 17x17
// 7.6/6.2 -> 3.7/5.7. (512 filters on one 4x4 map, 16 positions: 0.94 -> 2.65 ms.)
static bool use_kept(const Conv& cv, const Direct& d) {
    if (!kept_possible(cv)) return false;
    return (cv.N * cv.P() >= 2048 && d.Qp * 100 >= cv.P() * 105) || kept_instead(cv);
}

// The forward through the direct product, a chunk of images at a time (the padded copy of a
// chunk stays under direct_chunk floats, 16M).
static void conv_forward_direct(const Conv& cv, const float* x, const float* w, const float* b,
                                float* y) {
    const std::int64_t nr = gemm::kernel().nr;
    const Direct d(cv, nr);
    if (pointwise(cv)) {          // x is its own padded input: read in place
        direct_product(cv, d, x, 0, cv.N, w, b, y, x + cv.N * d.image);
        return;
    }
    const std::int64_t per = std::max<std::int64_t>(1, direct_chunk / d.image);
    for (std::int64_t n0 = 0; n0 < cv.N; n0 += per) {
        const std::int64_t nb = std::min(per, cv.N - n0);
        const std::int64_t total = d.floats(cv, nb, nr);
        float* padded = gemm::scratch(3, total);          // this thread's; the others read it
        pad_images(cv, d, x, n0, nb, padded, total);
        if (direct_mode == 3 || (direct_mode == 1 && use_kept(cv, d)))
            direct_product_kept(cv, d, padded, n0, nb, w, b, y);
        else
            direct_product(cv, d, padded, n0, nb, w, b, y);
    }
}

// --- 1x1 at a stride --------------------------------------------------------------------------
//
// A 1x1 convolution at a stride without padding (ResNet's downsampling shortcuts and the 1x1
// that opens each downsampling block) reads only every sh-th row and sw-th column: it is the
// pointwise convolution of that subsampled input, whose every product the packed or direct
// pointwise paths run with no wasted tap. One thread, batch 8, Zen 3 (AVX2), forward, the
// strided convolution (direct product) against subsample + pointwise: 512->1024 at 14x14
// 8.26 against 4.85 ms, 256->512 at 28x28 6.16 against 4.84-4.94; the filter gradient
// 512->1024 at 14x14 5.16 against 4.76-4.86, batch 1 1.13 against 0.64. The input gradient
// measured the same both ways (5.20 against 5.14 ms) and keeps its col2im onto dx.
static bool strided_pointwise(const Conv& cv) {
    return cv.kh == 1 && cv.kw == 1 && cv.ph == 0 && cv.pw == 0 && (cv.sh > 1 || cv.sw > 1);
}

// The pointwise convolution of the subsampled input (dilation means nothing to a 1x1 kernel).
static Conv subsampled(const Conv& cv) {
    return Conv{cv.N, cv.C, cv.oh, cv.ow, cv.F, cv.G, cv.oh, cv.ow, 1, 1, 1, 1, 0, 0, 1, 1};
}

// x[n][c][u*sh][v*sw] for every output position, (N, C, oh, ow), in a buffer of this thread's.
static const float* subsample(const Conv& cv, const float* x) {
    thread_local std::vector<float> out;
    out.resize(cv.N * cv.C * cv.P());
    float* dst = out.data();
    const std::int64_t planes = cv.N * cv.C;
#pragma omp parallel for schedule(static) if (planes * cv.P() > PARALLEL_WORK)
    for (std::int64_t pl = 0; pl < planes; ++pl)
        for (std::int64_t u = 0; u < cv.oh; ++u)
            strided_copy(dst + (pl * cv.oh + u) * cv.ow, x + (pl * cv.H + u * cv.sh) * cv.W,
                         cv.ow, cv.sw);
    return dst;
}

// --- forward ----------------------------------------------------------------------------------

// Where the forward's product C (filters of a group x output positions) lives in y: C[i][j] at
// y[n][g*fg + i][q] for the position j = (n, q), so a tile's rows are a plane (P) apart and its
// nr positions contiguous whenever no tile straddles two images (P a multiple of nr). Then the
// micro-kernel writes y itself (gemm::run's target), without the buffer and the store's copy
// (no bias to add: a bias goes through the store). One thread, batch 8, Zen 3, interleaved in
// one process, bit-identical: 1x1 32 -> 64 at 112x112 7.95 -> 6.96 ms, 64 -> 128 at 56x56 5.95
// -> 5.44, 64 -> 256 at 56x56 12.08 -> 10.26, 256 -> 256 at 28x28 9.61 -> 9.33.
struct OutputTiles {
    float* y;                 // the group's first filter plane of image 0
    std::int64_t P, F, ldc;   // ldc: P, or 0 where tiles straddle images or a bias is added
    OutputTiles(float* y, std::int64_t P, std::int64_t F, bool usable)
        : y(y), P(P), F(F), ldc(usable ? P : 0) {}
    float* operator()(std::int64_t i, std::int64_t j) const {
        return y + ((j / P) * F + i) * P + j % P;
    }
};

static void conv_forward(const Conv& cv, const float* x, const float* w, const float* b,
                         float* y) {
    if (strided_pointwise(cv)) {
        conv_forward(subsampled(cv), subsample(cv, x), w, b, y);
        return;
    }
    if (use_direct(cv)) {
        conv_forward_direct(cv, x, w, b, y);
        return;
    }
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
            },
            OutputTiles{y + g * fg * P, P, cv.F, b == nullptr && P % gemm::kernel().nr == 0});
    });
}

// --- backward data ---------------------------------------------------------------------------
//
// dx = col2im(w^T dy): each finished tile of w^T dy (rows = taps (c, i, j), columns = output
// positions) is added straight onto the input pixels its taps read, so the columns are never
// stored. Two tasks never add to one pixel: every task owns whole images (its columns) and
// whole channels (its rows). A pointwise convolution's columns are dx itself: stored, not added.

// At stride 1 the input gradient is itself a stride-1 convolution: of dy, padded by
// (kh-1)*dh - ph rows and (kw-1)*dw - pw columns, with the filters flipped and their input and
// output channels swapped, w'[c][f][i][j] = w[f][c][kh-1-i][kw-1-j] (per group). Through the
// direct product it is written whole, with no col2im scatter.
static bool backward_data_direct(const Conv& cv, const float* dy, const float* w, float* dx) {
    if (cv.sh != 1 || cv.sw != 1 || pointwise(cv)) return false;
    const Conv full{cv.N, cv.F, cv.oh, cv.ow, cv.C, cv.G, cv.H, cv.W, cv.kh, cv.kw, 1, 1,
                    (cv.kh - 1) * cv.dh - cv.ph, (cv.kw - 1) * cv.dw - cv.pw, cv.dh, cv.dw};
    if (full.ph < 0 || full.pw < 0 || !use_direct(full)) return false;
    const std::int64_t fg = cv.fg(), cg = cv.cg(), kk = cv.kh * cv.kw;
    thread_local std::vector<float> flipped;
    flipped.resize(cv.C * fg * kk);
    float* out = flipped.data();
#pragma omp parallel for schedule(static) if (cv.C * fg * kk > PARALLEL_WORK)
    for (std::int64_t gc = 0; gc < cv.C; ++gc) {            // written in order, rows read in turn
        const std::int64_t g = gc / cg, c = gc % cg;
        for (std::int64_t f = 0; f < fg; ++f) {
            const float* src = w + ((g * fg + f) * cg + c) * kk;
            float* dst = out + (gc * fg + f) * kk;
            for (std::int64_t t = 0; t < kk; ++t) dst[kk - 1 - t] = src[t];
        }
    }
    conv_forward_direct(full, dy, flipped.data(), nullptr, dx);
    return true;
}

static void conv_backward_data(const Conv& cv, const float* dy, const float* w, float* dx) {
    if (backward_data_direct(cv, dy, w, dx)) return;
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

// The filter gradient's A panels of a pointwise convolution, whose taps are its channels:
// Ap[p][k][r] = x[n][c0 + p*MR + r][q] for the positions j0 + k = (n, q). The general packing
// (Columns::gather) writes each row into the panel MR floats apart, a scalar store a value; here
// 8 positions of MR = 6 rows are loaded as 6 vectors, transposed in registers and stored as 8
// rows of the panel (AVX2). 36% of a 1x1 convolution's filter gradient went to that packing
// (32 -> 128 channels at 56x56, Zen 3).
#ifdef MINICNN_X86
// panel[t * 6 + r] = src[r][t] for t < n, r < 6: 8 positions at a time, each stored as 8 floats
// whose last 2 the next position's store overwrites (the eighth stored exactly).
__attribute__((target("avx2"))) static std::int64_t interleave6_avx2(const float* const* src,
                                                                     std::int64_t n,
                                                                     float* panel) {
    static_assert(gemm::MR == 6, "interleave6_avx2 packs 6-row panels");
    std::int64_t t = 0;
    const __m256 zero = _mm256_setzero_ps();
    for (; t + 8 <= n; t += 8) {
        const __m256 a0 = _mm256_loadu_ps(src[0] + t), a1 = _mm256_loadu_ps(src[1] + t);
        const __m256 a2 = _mm256_loadu_ps(src[2] + t), a3 = _mm256_loadu_ps(src[3] + t);
        const __m256 a4 = _mm256_loadu_ps(src[4] + t), a5 = _mm256_loadu_ps(src[5] + t);
        const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
        const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
        const __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
        const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        const __m256 u4 = _mm256_shuffle_ps(t4, zero, 0x44), u5 = _mm256_shuffle_ps(t4, zero, 0xEE);
        const __m256 u6 = _mm256_shuffle_ps(t5, zero, 0x44), u7 = _mm256_shuffle_ps(t5, zero, 0xEE);
        float* out = panel + t * 6;                       // column i: position t + i, rows 0..5
        _mm256_storeu_ps(out + 0, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(out + 6, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(out + 12, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(out + 18, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(out + 30, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(out + 36, _mm256_permute2f128_ps(u2, u6, 0x31));
        const __m256 last = _mm256_permute2f128_ps(u3, u7, 0x31);
        _mm_storeu_ps(out + 42, _mm256_castps256_ps128(last));
        _mm_storel_pi(reinterpret_cast<__m64*>(out + 46), _mm256_extractf128_ps(last, 1));
    }
    return t;
}
#endif

static void pack_pointwise_panels(const Conv& cv, const float* x, std::int64_t c0,
                                  std::int64_t m, std::int64_t j0, std::int64_t kc, float* Ap) {
    const std::int64_t MR = gemm::MR, P = cv.P();
#ifdef MINICNN_X86
    const bool avx2 = simd_level() >= 1;
#endif
    thread_local std::vector<Run> runs;
    runs_of(cv, j0, kc, runs);
    for (std::int64_t p = 0; p * MR < m; ++p) {
        const std::int64_t rows = std::min(MR, m - p * MR);
        float* panel = Ap + p * MR * kc;
        for (const Run& run : runs) {
            const float* src[gemm::MR];
            for (std::int64_t r = 0; r < MR; ++r)       // rows past m: a real row, stored as 0s
                src[r] = x + (run.n * cv.C + c0 + p * MR + std::min(r, rows - 1)) * P +
                         run.y * cv.ow + run.z;
            float* out = panel + run.offset * MR;
            std::int64_t t = 0;
#ifdef MINICNN_X86
            if (avx2 && rows == MR) t = interleave6_avx2(src, run.length, out);
#endif
            for (; t < run.length; ++t)
                for (std::int64_t r = 0; r < MR; ++r) out[t * MR + r] = r < rows ? src[r][t] : 0.0f;
        }
    }
}


#ifdef MINICNN_X86
__attribute__((target("avx512f"))) static void add_transposed_avx512(
        const float* C, std::int64_t ldc, std::int64_t m, std::int64_t n, float* dst,
        std::int64_t ld) {
    std::int64_t r0 = 0;
    for (; r0 + 16 <= m; r0 += 16) {
        std::int64_t t0 = 0;
        for (; t0 + 16 <= n; t0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(C + (r0 + i) * ldc + t0);
            gemm::transpose16(r);                        // r[j]: column t0 + j, rows r0..
            for (int i = 0; i < 16; ++i) {
                float* d = dst + (t0 + i) * ld + r0;
                _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), r[i]));
            }
        }
        for (std::int64_t t = t0; t < n; ++t)
            for (std::int64_t r = r0; r < r0 + 16; ++r) dst[t * ld + r] += C[r * ldc + t];
    }
    for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t r = r0; r < m; ++r) dst[t * ld + r] += C[r * ldc + t];
}

// The same with 8 x 8 blocks (AVX2).
__attribute__((target("avx2"))) static void add_transposed_avx2(
        const float* C, std::int64_t ldc, std::int64_t m, std::int64_t n, float* dst,
        std::int64_t ld) {
    std::int64_t r0 = 0;
    for (; r0 + 8 <= m; r0 += 8) {
        std::int64_t t0 = 0;
        for (; t0 + 8 <= n; t0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(C + (r0 + i) * ldc + t0);
            gemm::transpose8(r);                         // r[j]: column t0 + j, rows r0..
            for (int i = 0; i < 8; ++i) {
                float* d = dst + (t0 + i) * ld + r0;
                _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), r[i]));
            }
        }
        for (std::int64_t t = t0; t < n; ++t)
            for (std::int64_t r = r0; r < r0 + 8; ++r) dst[t * ld + r] += C[r * ldc + t];
    }
    for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t r = r0; r < m; ++r) dst[t * ld + r] += C[r * ldc + t];
}
#endif

// dst[t * ld + r] += C[r * ldc + t] for r < m, t < n: a finished tile of the filter gradient's
// product (taps x filters) added onto dw (filters x taps), 16 x 16 blocks transposed in
// registers (walking C's columns one value a line took 5% of CaffeNet conv3's filter gradient),
// or 8 x 8 with AVX2.
static void add_transposed(const float* C, std::int64_t ldc, std::int64_t m, std::int64_t n,
                           float* dst, std::int64_t ld) {
#ifdef MINICNN_X86
    if (simd_level() == 2) {             // narrowed by MINICNN_GEMM_KERNEL (csrc/simd_level.h)
        add_transposed_avx512(C, ldc, m, n, dst, ld);
        return;
    }
    if (simd_level() == 1) {
        add_transposed_avx2(C, ldc, m, n, dst, ld);
        return;
    }
#endif
    for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t r = 0; r < m; ++r) dst[t * ld + r] += C[r * ldc + t];
}

// dw (fg x taps, per group) += partial products over positions, split between threads when
// few filters leave nothing else to split: product(g, p0, np, dwg) adds the positions
// [p0, p0 + np) of group g into dwg (shares in whole units of positions); each thread adds its
// share into a partial of its own, and the partials are added in thread order (the same sums
// whatever the timing).
template <typename Product>
static void filter_gradient_by_positions(const Conv& cv, std::int64_t positions,
                                         std::int64_t unit, std::int64_t nc, float* dw,
                                         Product&& product) {
    const std::int64_t fg = cv.fg(), taps = cv.taps();
    const std::int64_t threads = max_threads(), size = fg * taps;
    const bool split = threads > 1 && !groups_in_parallel(cv) && fg <= nc * (threads - 1) &&
                       positions >= 512 * threads;
    if (!split) {
        for_each_group(cv, [&](std::int64_t g) { product(g, 0, positions, dw + g * size); });
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
            const std::int64_t units = positions / unit;         // shares in whole units
            const std::int64_t u0 = units * t / T, u1 = units * (t + 1) / T;
            product(g, u0 * unit, (t + 1 == T ? positions : u1 * unit) - u0 * unit, mine);
        }
#pragma omp parallel for schedule(static) if (size * used > (1 << 16))
        for (std::int64_t i = 0; i < size; ++i)
            for (std::int64_t t = 1; t < used; ++t) dwg[i] += partials[(t - 1) * size + i];
    }
#endif
}

// The filter gradient on the padded (phase-split) input of the direct product above: A's
// rows, the taps, are read in place from xp (tap (c, i, j) at output position (y, z) is
// xp[image + Direct::offset(c, i, j) + y * Ws + z]) instead of being gathered 6 taps at a time
// into panels, at the kept positions only: the inner index k runs over dy's own positions
// y * ow + z, and a table gives each one's place y * Ws + z on the padded rows (the positions
// the forward computes and drops, z >= ow, are skipped here: 7% of CaffeNet's 13x13 and 27x27
// maps). dy is dealt into panels straight from its rows.
static void conv_backward_filter_direct(const Conv& cv, const float* dy, const float* x,
                                        float* dw) {
    const std::int64_t nr = gemm::kernel().nr;
    const Direct d(cv, nr);
    const std::int64_t fg = cv.fg(), taps = cv.taps(), P = cv.P();
    const std::int64_t per = std::max<std::int64_t>(1, direct_chunk / d.image);
    const std::vector<std::int64_t> offsets = d.offsets_of_groups(cv);     // [g][tap]
    for (std::int64_t n0 = 0; n0 < cv.N; n0 += per) {
        const std::int64_t nb = std::min(per, cv.N - n0), U = nb * P;
        // the chunk's positions u = img * P + p in inner blocks of kc (at most 384, across
        // images: blocks of one 13x13 image, 169 positions, spent a seventh of their time
        // loading and storing the micro tiles); the few past U are zero rows of dy
        const std::int64_t blocks = (U + 383) / 384, kc = (U + blocks - 1) / blocks;
        const gemm::Blocking blocking{96, 384, kc};
        std::vector<std::int64_t> place;                    // u -> where it reads its taps
        d.places(cv, nb, blocks * kc, place);
        const std::int64_t total = d.floats(cv, nb, nr);
        float* xp = gemm::scratch(3, total);
        pad_images(cv, d, x, n0, nb, xp, total);
        filter_gradient_by_positions(cv, blocks * kc, kc, blocking.nc, dw, [&](std::int64_t g,
                                     std::int64_t u0, std::int64_t nu, float* dwg) {
            const std::int64_t* off = offsets.data() + g * taps;
            gemm::run(
                taps, fg, nu, blocking,
                [&](std::int64_t i0, std::int64_t, std::int64_t l0, std::int64_t, float*) {
                    return gemm::Panels{xp, 0, 0, off + i0, place.data() + u0 + l0};
                },
                [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t k_,
                    std::int64_t nr_, float* Bp) {
                    const std::int64_t first = u0 + l0, kept = std::clamp<std::int64_t>(
                                                            U - first, 0, k_);
                    for (std::int64_t qq = 0; qq * nr_ < n; ++qq) {
                        float* panel = Bp + qq * k_ * nr_;
                        for (std::int64_t u = first; u < first + kept;) {  // an image's run
                            const std::int64_t img = u / P, p = u % P;
                            const std::int64_t len = std::min(first + kept - u, P - p);
                            gemm::transposed_panel(
                                dy + ((n0 + img) * cv.F + g * fg + j0 + qq * nr_) * P + p, P,
                                std::min(nr_, n - qq * nr_), len, nr_, panel + (u - first) * nr_);
                            u += len;
                        }
                        std::memset(panel + kept * nr_, 0, sizeof(float) * (k_ - kept) * nr_);
                    }
                },
                [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n,
                    const float* C, std::int64_t ldc) {
                    add_transposed(C, ldc, m, n, dwg + j0 * taps + i0, taps);   // C is dw^T
                });
        });
    }
}

// The filter gradient of a pointwise convolution over few positions in all (one image at 7x7 or
// 14x14, a batch of 16 at 7x7): dw_g (F/G x C/G) += dy_g (F/G x NP) x_g^T, a rank-NP update of
// a large dw. The general product builds dw^T in a buffer, inner block by inner block, and adds
// it transposed onto dw; here x^T is packed whole once (NP x C/G), each task packs the dy rows
// of 6 filters, and the micro-kernel adds every full tile into dw in place, so dw is read and
// written once, row by row. Zen 3, min of 9, general product -> this, ratio to PyTorch's time:
// one thread, batch 1, 1024 -> 1024 at 7x7: 0.59x -> 0.96-1.16x; 2048 -> 512 at 7x7 0.50x ->
// 0.95-1.02x; 512 -> 512 at 14x14 0.88-0.91x -> 0.99-1.31x; two threads, batch 1 1024 -> 1024
// at 7x7 1.55-1.94 -> 0.83-0.85 ms (PyTorch 0.96-0.99), batch 4 512 -> 512 at 14x14 3.53-3.57 ->
// 2.54 (2.51-2.72), batch 16 1024 -> 1024 at 7x7 9.85-10.13 -> 9.38-9.42 (9.67-9.95). With
// a dw of 256 x 256 at 28x28 the general product was as fast or faster (0.65-0.68 against
// 0.73-0.74 ms on two threads), so smaller filter banks keep it.
static bool few_positions(const Conv& cv) {
    return pointwise(cv) && cv.N * cv.P() <= 1024 && cv.fg() * cv.cg() >= (1 << 17);
}

static void pointwise_filter_gradient_few(const Conv& cv, const float* dy, const float* x,
                                          float* dw) {
    const gemm::Kernel& K = gemm::kernel();
    const std::int64_t MR = gemm::MR, nr = K.nr, P = cv.P(), L = cv.N * P;
    const std::int64_t fg = cv.fg(), cg = cv.cg(), panels = (cg + nr - 1) / nr;
    thread_local std::vector<float> packed;
    packed.resize(panels * nr * L + 16);
    float* Bp = reinterpret_cast<float*>(
        (reinterpret_cast<std::uintptr_t>(packed.data()) + 63) & ~std::uintptr_t(63));
    for (std::int64_t g = 0; g < cv.G; ++g) {
        // Bp[q][k][t] = x[n][g*cg + q*nr + t][position] for k = n*P + position
        for (std::int64_t q = 0; q < panels; ++q)
            for (std::int64_t n = 0; n < cv.N; ++n)
                gemm::transposed_panel(x + (n * cv.C + g * cg + q * nr) * P, P,
                                       std::min(nr, cg - q * nr), P, nr,
                                       Bp + (q * L + n * P) * nr);
        const std::int64_t row_panels = (fg + MR - 1) / MR;
#pragma omp parallel for schedule(static) if (fg * cg * L > PARALLEL_WORK)
        for (std::int64_t p = 0; p < row_panels; ++p) {
            const std::int64_t f0 = p * MR, rows = std::min(MR, fg - f0);
            float* Ap = gemm::scratch(0, MR * L);           // Ap[k][r] = dy[n][f0 + r][position]
            for (std::int64_t r = 0; r < MR; ++r)
                for (std::int64_t n = 0; n < cv.N; ++n) {
                    const float* src = dy + (n * cv.F + g * fg + f0 + std::min(r, rows - 1)) * P;
                    for (std::int64_t s = 0; s < P; ++s)
                        Ap[(n * P + s) * MR + r] = r < rows ? src[s] : 0.0f;
                }
            gemm::add_panel_products(K, L, Ap, rows, Bp, cg, dw + (g * fg + f0) * cg, cg);
        }
    }
}

//
// The product's columns are the filters (fg) and its inner dimension the output positions (NP,
// tens of thousands): with fewer filters than NC per thread, splitting columns or rows between
// threads would have every thread pack the same dy block. Then the positions are split instead:
// each thread multiplies its share into its own partial dw, and the partials are added in
// thread order (the same sums whatever the timing).
static void conv_backward_filter(const Conv& cv, const float* dy, const float* x, float* dw) {
    if (strided_pointwise(cv)) {
        conv_backward_filter(subsampled(cv), dy, subsample(cv, x), dw);
        return;
    }
    if (few_positions(cv)) {
        pointwise_filter_gradient_few(cv, dy, x, dw);
        return;
    }
    if (use_direct(cv, Pass::filter)) {
        conv_backward_filter_direct(cv, dy, x, dw);
        return;
    }
    const std::int64_t fg = cv.fg(), taps = cv.taps(), NP = cv.N * cv.P(), P = cv.P();
    const gemm::Blocking blocking{96, 384, 384};
    // dw_g (fg x taps rows) += the product over positions [p0, p0 + np)
    auto product = [&](std::int64_t g, std::int64_t p0, std::int64_t np, float* dwg) {
        gemm::run(
            taps, fg, np, blocking,
            [&](std::int64_t i0, std::int64_t m, std::int64_t l0, std::int64_t kc, float* Ap) {
                // Ap[p][k][r] = cols[tap i0 + p*MR + r][position l0 + k]
                const std::int64_t MR = gemm::MR;
                if (pointwise(cv)) {
                    pack_pointwise_panels(cv, x, g * cv.cg() + i0, m, p0 + l0, kc, Ap);
                    return gemm::Panels{Ap, kc * MR};
                }
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
                for (std::int64_t q = 0; q * nr < n; ++q)
                    for (const Run& run : runs)
                        gemm::transposed_panel(
                            dy + (run.n * cv.F + g * fg + j0 + q * nr) * P + run.y * cv.ow + run.z,
                            P, std::min(nr, n - q * nr), run.length, nr,
                            Bp + (q * kc + run.offset) * nr);
            },
            [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n, const float* C,
                std::int64_t ldc) {
                add_transposed(C, ldc, m, n, dwg + j0 * taps + i0, taps);   // C is dw^T
            });
    };
    filter_gradient_by_positions(cv, NP, 1, blocking.nc, dw, product);
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

#ifdef MINICNN_X86
// Multiply-adds with nothing but registers: 12 independent AVX-512 sums, as many as the GEMM's
// micro-kernel keeps, so the FLOP/s this reaches is the most the micro-kernel could.
__attribute__((target("avx512f"))) static double fma_loop_avx512(std::int64_t iterations) {
    __m512 a[12];
    for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(float(i));
    const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-7f);
    for (std::int64_t it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], x, y);
    __m512 total = a[0];
    for (int i = 1; i < 12; ++i) total = _mm512_add_ps(total, a[i]);
    static volatile float sink;                          // the sums are used: the loop stays
    sink = _mm512_reduce_add_ps(total);
    return 2.0 * 16 * 12 * iterations;
}
#endif

// GFLOP/s of float32 multiply-adds on every thread at once (the benchmark's "of peak"), or
// 0 where there is no AVX-512.
static double fma_peak_gflops(double seconds) {
#ifdef MINICNN_X86
    if (!__builtin_cpu_supports("avx512f")) return 0.0;
    const std::int64_t per_call = 1 << 20;
    double rate = 0.0;
    for (int round = 0; round < 3; ++round) {        // the best of three (clocks ramp up)
        double flops = 0.0;
        const auto start = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : flops)
        {
            do {
                flops += fma_loop_avx512(per_call);
            } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                         .count() < seconds / 3);
        }
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        rate = std::max(rate, flops / elapsed / 1e9);
    }
    return rate;
#else
    (void)seconds;
    return 0.0;
#endif
}

REGISTER_NATIVE(m) {
    m.def("gemm_kernel", [] { return std::string(gemm::kernel().name); },
          "the micro-kernel minicnn's GEMM picked for this CPU");
    m.def("fma_peak_gflops", [](double seconds) {
        Release release;
        return fma_peak_gflops(seconds);
    }, py::arg("seconds") = 0.6,
       "measured GFLOP/s of float32 AVX-512 multiply-adds on every thread (0 without AVX-512): "
       "the machine's peak, for the benchmark's 'of peak' column");
    m.def("set_conv_direct", [](int mode) {
        require(mode >= 0 && mode <= 3, "set_conv_direct: mode 0, 1, 2 or 3");
        const int was = direct_mode;
        direct_mode = mode;
        return was;
    }, "the direct convolution (no packing): 0 never, 1 where it pays (default), 2 at every "
       "convolution, 3 at every convolution and with its kept positions' product wherever a "
       "forward (or an input gradient) takes the direct one; MINICNN_CONV_DIRECT sets it too. "
       "Returns the previous mode (the tests run every path)");
    m.def("set_conv_direct_chunk", [](std::int64_t floats) {
        require(floats >= 1, "set_conv_direct_chunk: floats >= 1");
        const std::int64_t was = direct_chunk;
        direct_chunk = floats;
        return was;
    }, "floats of padded images the direct convolution holds at a time (default 16M; the "
       "tests make it small to run several chunks); returns the previous value");
    m.def("gemm", [](const py::array& a, const py::array& b, py::array& c, std::int64_t mc,
                     std::int64_t nc, std::int64_t kc) {
        require(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2 && a.shape(1) == b.shape(0) &&
                    c.shape(0) == a.shape(0) && c.shape(1) == b.shape(1),
                "gemm: c (M, N) = a (M, L) b (L, N)");
        const std::int64_t M = a.shape(0), L = a.shape(1), N = b.shape(1);
        const float* as = in_ptr<float>(a, "a");
        const float* bs = in_ptr<float>(b, "b");
        float* cs = out_ptr<float>(c, "c");
        Release release;
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
        Release release;
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
        Release release;
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
        Release release;
        conv_backward_filter(cv, g, xs, out);
    }, "dw += the filter gradient of conv(x, w) for dy, float32");
}

}  // namespace minicnn
