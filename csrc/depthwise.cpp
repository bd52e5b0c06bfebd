// Direct depthwise convolution (minicnn/ops/conv.py, the case C/G == 1): each output channel f
// reads one input channel, c = f / m, where m = F / C is the channel multiplier.
//
//     y[n, f, y, z] = b[f] + sum_{i,j} w[f, 0, i, j] * x[n, f/m, y*sh + i*dh - ph, z*sw + j*dw - pw]
//
// im2col + GEMM would multiply a (m x kh*kw) by a (kh*kw x oh*ow) matrix per channel: far too
// thin for BLAS, and memory bound on the columns. Here the three passes (forward, backward-data,
// backward-filter) each read their inputs once, in one of two ways: float32 3x3 "same" planes
// with wide rows by loops along each plane's rows (the first half of this file), everything
// else eight channels at a time with the channels innermost (the channel blocks, the second
// half; rows_path says which). Channels (or filters) are split across threads, so no two
// threads write one value.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace minicnn {

namespace {

struct Shape {
    std::int64_t N, C, H, W, F, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

}  // namespace

constexpr std::int64_t V = 16;      // output columns accumulated together in registers

// V floats as one value of GCC's generic vector type: one zmm register on AVX-512 (two ymm,
// four xmm elsewhere), whatever the loops around it look like to the auto-vectorizer.
typedef float floatv __attribute__((vector_size(V * sizeof(float))));

inline floatv load_v(const float* p) {
    floatv v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// out (oh x ow) (+)= the taps of w over the plane x (H x W), for one (image, filter) pair:
//     out[y, z] = [out[y, z] +] bias + sum_{i,j} w[i, j] * x[y*sh + i*dh - ph, z*sw + j*dw - pw]
// Stride 1: the columns where every tap reads inside the row are done V at a time with the V
// sums kept in registers (one load per tap, one store per V outputs); the few columns next to
// the padding, and other strides, go tap by tap. (Used for the rows [y0, y1) of a "same" plane
// whose windows leave the image; correlate_plane_masked does the others.)
template <typename T>
MINICNN_VECTOR_CLONES static void correlate_rows(const T* __restrict x, const T* __restrict w,
                                                 T bias, T* __restrict out, bool accumulate,
                                                 const Shape& s, std::int64_t y0,
                                                 std::int64_t y1) {
    thread_local std::vector<std::int64_t> lo_of, hi_of;   // columns inside, per tap column
    lo_of.resize(s.kw);
    hi_of.resize(s.kw);
    std::int64_t zlo = 0, zhi = s.ow;                 // columns inside for every tap
    for (std::int64_t j = 0; j < s.kw; ++j) {
        valid_range(s.W, s.sw, j * s.dw - s.pw, s.ow, lo_of[j], hi_of[j]);
        zlo = std::max(zlo, lo_of[j]);
        zhi = std::min(zhi, hi_of[j]);
    }
    if (s.sw != 1 || zhi < zlo) zlo = zhi = 0;       // no vector interior: all tap by tap
    for (std::int64_t oy = y0; oy < y1; ++oy) {
        T* row_out = out + oy * s.ow;
        std::int64_t z = zlo;
        while (zhi - zlo >= V && z < zhi) {
            // the last chunk ends at zhi, overlapping the previous one: its lanes before z are
            // done already and are not stored again
            const std::int64_t start = std::min(z, zhi - V), first = z - start;
            T acc[V];
#pragma omp simd
            for (std::int64_t t = 0; t < V; ++t) acc[t] = accumulate ? row_out[start + t] : bias;
            for (std::int64_t i = 0; i < s.kh; ++i) {
                const std::int64_t r = oy * s.sh + i * s.dh - s.ph;
                if (r < 0 || r >= s.H) continue;
                const T* row = x + r * s.W + start - s.pw;
                if (s.kw == 3) {            // the usual 3x3: taps unrolled, no loop overhead
                    const T t0 = w[i * 3], t1 = w[i * 3 + 1], t2 = w[i * 3 + 2];
                    const T *s0 = row, *s1 = row + s.dw, *s2 = row + 2 * s.dw;
#pragma omp simd
                    for (std::int64_t t = 0; t < V; ++t)
                        acc[t] += t0 * s0[t] + t1 * s1[t] + t2 * s2[t];
                    continue;
                }
                for (std::int64_t j = 0; j < s.kw; ++j) {
                    const T tap = w[i * s.kw + j];
                    const T* src = row + j * s.dw;
#pragma omp simd
                    for (std::int64_t t = 0; t < V; ++t) acc[t] += tap * src[t];
                }
            }
            if (first == 0) {                 // (a partial store would become a memcpy call)
#pragma omp simd
                for (std::int64_t t = 0; t < V; ++t) row_out[start + t] = acc[t];
            } else {
                for (std::int64_t t = first; t < V; ++t) row_out[start + t] = acc[t];
            }
            z = start + V;
        }
        // everything else: [0, zlo), [z, ow), tap by tap with the window clipped
        const std::int64_t spans[2][2] = {{0, zlo}, {z, s.ow}};
        for (const auto& span : spans) {
            const std::int64_t z0 = span[0], z1 = span[1];
            if (z0 >= z1) continue;
            if (!accumulate)
                for (std::int64_t q = z0; q < z1; ++q) row_out[q] = bias;
            for (std::int64_t i = 0; i < s.kh; ++i) {
                const std::int64_t r = oy * s.sh + i * s.dh - s.ph;
                if (r < 0 || r >= s.H) continue;
                const T* row = x + r * s.W;
                for (std::int64_t j = 0; j < s.kw; ++j) {
                    const std::int64_t off = j * s.dw - s.pw;
                    const std::int64_t lo = std::max(lo_of[j], z0), hi = std::min(hi_of[j], z1);
                    const T tap = w[i * s.kw + j];
                    for (std::int64_t q = lo; q < hi; ++q) row_out[q] += tap * row[q * s.sw + off];
                }
            }
        }
    }
}

// "Same" geometry (stride 1, output the size of the input): every output row whose window rows
// are all inside the image is computed over the flat index p = y*W + z, one long vector loop
// per plane, tap offsets (i*dh - ph)*W + j*dw - pw, with the lanes that would read across a
// row's edge masked (correlate_plane_masked); the top and bottom rows, whose windows leave the
// image, by correlate_rows.
inline bool same_geometry(const Shape& s) {
    return s.sh == 1 && s.sw == 1 && s.oh == s.H && s.ow == s.W && s.kh * s.kw <= 49;
}

// The flat loops' tap offsets: tap (i, j) of the output at p reads x[p + off[i*kw + j]].
inline void flat_offsets(const Shape& s, std::int64_t* off) {
    for (std::int64_t i = 0; i < s.kh; ++i)
        for (std::int64_t j = 0; j < s.kw; ++j)
            off[i * s.kw + j] = (i * s.dh - s.ph) * s.W + j * s.dw - s.pw;
}

// One output of a "same" plane computed plainly, with the window clipped to the image.
template <typename T>
inline T correlate_point(const T* x, const T* w, T start, const Shape& s, std::int64_t y,
                         std::int64_t z) {
    T acc = start;
    for (std::int64_t i = 0; i < s.kh; ++i) {
        const std::int64_t r = y + i * s.dh - s.ph;
        if (r < 0 || r >= s.H) continue;
        for (std::int64_t j = 0; j < s.kw; ++j) {
            const std::int64_t c = z + j * s.dw - s.pw;
            if (c >= 0 && c < s.W) acc += w[i * s.kw + j] * x[r * s.W + c];
        }
    }
    return acc;
}

typedef std::int32_t intv __attribute__((vector_size(V * sizeof(std::int32_t))));

// For the flat loops of "same" geometry over whole rows: per (chunk phase, tap), which of the V
// lanes read inside their row. A lane whose tap column lies in the padding would read the
// neighbouring row; its input is masked to 0 instead. Chunk c of a loop starting at p0 covers
// columns (p0 + c*V + t) % W, which repeat every period = W / gcd(W, V) chunks. The same for
// every plane of a call: made again only when the geometry changes. Taps whose lanes are all
// inside in every phase (the centre column) are left unmasked.
struct EdgeMasks {
    struct alignas(64) Lanes { std::int32_t v[V]; };
    std::vector<Lanes> masks;          // (phase, tap)
    std::vector<char> needs;           // tap -> masked at all
    std::int64_t taps = 0;
    std::int64_t key[10] = {-1};

    floatv apply(floatv in, std::int64_t k, std::int64_t phase) const {
        if (!needs[k]) return in;
        intv keep;
        std::memcpy(&keep, masks[phase * taps + k].v, sizeof keep);
        return (floatv)((intv)in & keep);
    }
};

inline const EdgeMasks& edge_masks(const Shape& s, std::int64_t period, std::int64_t p0) {
    thread_local EdgeMasks e;
    const std::int64_t W = s.W;
    const std::int64_t now[10] = {W, s.kh, s.kw, s.dh, s.dw, s.ph, s.pw, p0 % W, period, 1};
    if (!std::equal(now, now + 10, e.key)) {
        std::copy(now, now + 10, e.key);
        e.taps = s.kh * s.kw;
        e.masks.resize(period * e.taps);
        e.needs.assign(e.taps, 0);
        for (std::int64_t c = 0; c < period; ++c)
            for (std::int64_t k = 0; k < e.taps; ++k)
                for (std::int64_t t = 0; t < V; ++t) {
                    const std::int64_t z = (p0 + c * V + t) % W;
                    const std::int64_t col = z + (k % s.kw) * s.dw - s.pw;
                    const bool inside = col >= 0 && col < W;
                    e.masks[c * e.taps + k].v[t] = inside ? -1 : 0;
                    if (!inside) e.needs[k] = 1;
                }
    }
    return e;
}

// The flat range of a "same" plane: interior rows [ylo, yhi), and within them [p0, p1), the
// whole chunks whose reads stay inside the plane. period = 0 where the columns under a chunk
// repeat too slowly for a mask table (the caller then takes another path).
struct FlatRange {
    std::int64_t ylo, yhi, p0, p1, period;
};

inline FlatRange flat_range(const Shape& s) {
    const std::int64_t W = s.W;
    std::int64_t g = W, v = V;
    while (v) { const std::int64_t t = g % v; g = v; v = t; }
    FlatRange r;
    r.period = (W / g <= 16 && s.kw <= 7 && s.kh * s.kw <= 49) ? W / g : 0;
    const std::int64_t min_off = -s.ph * W - s.pw;
    const std::int64_t max_off = ((s.kh - 1) * s.dh - s.ph) * W + (s.kw - 1) * s.dw - s.pw;
    r.ylo = std::min(s.H, s.ph);
    r.yhi = std::max(r.ylo, s.H - ((s.kh - 1) * s.dh - s.ph));
    const std::int64_t r0 = r.ylo * W, r1 = r.yhi * W;
    r.p0 = std::min(r1, std::max(r0, -min_off));
    const std::int64_t p1 = std::max(r.p0, std::min(r1, s.H * W - max_off));
    r.p1 = r.p0 + (p1 - r.p0) / V * V;
    return r;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
// The 3x3 loop below with AVX-512 masked loads: a lane whose tap reads across the row's edge
// is zeroed by the load itself (a mask register per chunk phase) instead of an AND of the
// loaded vector, which competed with the multiply-adds for the vector pipes. Four chunks at a
// time; each output's sum in the same order as the portable loop (bias, then the taps row by
// row), so the results are the same bits. Returns where it stopped (a multiple of V before p1).
__attribute__((target("avx512f"))) static std::int64_t dw3x3_masked_avx512(
        const float* __restrict x, const float* __restrict w, float bias, float* __restrict out,
        bool accumulate, const std::int64_t* off, const EdgeMasks& edge, std::int64_t period,
        std::int64_t p, std::int64_t p1, std::int64_t& phase) {
    __mmask16 left[16], right[16];
    for (std::int64_t q = 0; q < period; ++q) {
        const __m512i l = _mm512_load_si512(edge.masks[q * 9 + 0].v);
        const __m512i r = _mm512_load_si512(edge.masks[q * 9 + 2].v);
        left[q] = _mm512_test_epi32_mask(l, l);
        right[q] = _mm512_test_epi32_mask(r, r);
    }
    __m512 t[9];
    for (int k = 0; k < 9; ++k) t[k] = _mm512_set1_ps(w[k]);
    const std::int64_t d = off[1] - off[0];
    const __m512 b = _mm512_set1_ps(bias);
    for (; p + 4 * V <= p1; p += 4 * V) {
        std::int64_t ph[4];
        for (int c = 0; c < 4; ++c) {
            ph[c] = phase;
            phase = phase + 1 == period ? 0 : phase + 1;
        }
        __m512 a[4];
        for (int c = 0; c < 4; ++c) a[c] = accumulate ? _mm512_loadu_ps(out + p + c * V) : b;
        for (int i = 0; i < 3; ++i) {
            const float* src = x + p + off[3 * i];
            for (int c = 0; c < 4; ++c) {
                const float* at = src + c * V;
                a[c] = _mm512_fmadd_ps(t[3 * i], _mm512_maskz_loadu_ps(left[ph[c]], at), a[c]);
                a[c] = _mm512_fmadd_ps(t[3 * i + 1], _mm512_loadu_ps(at + d), a[c]);
                a[c] = _mm512_fmadd_ps(t[3 * i + 2],
                                       _mm512_maskz_loadu_ps(right[ph[c]], at + 2 * d), a[c]);
            }
        }
        for (int c = 0; c < 4; ++c) _mm512_storeu_ps(out + p + c * V, a[c]);
    }
    return p;
}

// The same with AVX2 and FMA: a chunk of V is two ymm halves, an edge lane is zeroed by an AND
// with the phase's mask, two chunks at a time (four sums and the nine taps fill the sixteen
// registers). The same order and fused multiply-adds as above: the same bits.
__attribute__((target("avx2,fma"))) static std::int64_t dw3x3_masked_avx2(
        const float* __restrict x, const float* __restrict w, float bias, float* __restrict out,
        bool accumulate, const std::int64_t* off, const EdgeMasks& edge, std::int64_t period,
        std::int64_t p, std::int64_t p1, std::int64_t& phase) {
    static_assert(V == 16, "a chunk is two ymm halves");
    __m256 t[9];
    for (int k = 0; k < 9; ++k) t[k] = _mm256_set1_ps(w[k]);
    const std::int64_t d = off[1] - off[0];
    const __m256 b = _mm256_set1_ps(bias);
    for (; p + 2 * V <= p1; p += 2 * V) {
        const std::int64_t q0 = phase, q1 = phase + 1 == period ? 0 : phase + 1;
        phase = q1 + 1 == period ? 0 : q1 + 1;
        const std::int64_t q[4] = {q0, q0, q1, q1};         // the phase of each ymm quarter
        __m256 a[4];
        for (int c = 0; c < 4; ++c) a[c] = accumulate ? _mm256_loadu_ps(out + p + 8 * c) : b;
        for (int i = 0; i < 3; ++i) {
            const float* src = x + p + off[3 * i];
            for (int c = 0; c < 4; ++c) {
                const float* at = src + 8 * c;
                const float* left = reinterpret_cast<const float*>(edge.masks[q[c] * 9].v);
                const float* right = reinterpret_cast<const float*>(edge.masks[q[c] * 9 + 2].v);
                const __m256 l = _mm256_and_ps(_mm256_loadu_ps(at),
                                               _mm256_load_ps(left + 8 * (c & 1)));
                const __m256 r = _mm256_and_ps(_mm256_loadu_ps(at + 2 * d),
                                               _mm256_load_ps(right + 8 * (c & 1)));
                a[c] = _mm256_fmadd_ps(t[3 * i], l, a[c]);
                a[c] = _mm256_fmadd_ps(t[3 * i + 1], _mm256_loadu_ps(at + d), a[c]);
                a[c] = _mm256_fmadd_ps(t[3 * i + 2], r, a[c]);
            }
        }
        for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + p + 8 * c, a[c]);
    }
    return p;
}
#endif

// The float flat loop without edge fix-ups, when the columns under a chunk of V outputs repeat
// with a short period (P = W / gcd(W, V) chunks: 7 for MobileNet's 112, 56, 28, 14 and 7):
// whole rows go through the vector loop, and a lane whose tap would read across the row's
// edge (the neighbouring row, where the padding should be) has that tap's input masked to 0,
// by a mask looked up per (chunk phase, tap column). Returns false where P is too long.
MINICNN_VECTOR_CLONES static bool correlate_plane_masked(const float* __restrict x,
                                                         const float* __restrict w, float bias,
                                                         float* __restrict out, bool accumulate,
                                                         const Shape& s) {
    const std::int64_t W = s.W, taps = s.kh * s.kw;
    const FlatRange range = flat_range(s);
    const std::int64_t period = range.period, ylo = range.ylo, yhi = range.yhi;
    const std::int64_t r0 = ylo * W, r1 = yhi * W, p0 = range.p0, p1 = range.p1;
    if (period == 0) return false;
    std::int64_t off[49];
    flat_offsets(s, off);
    const EdgeMasks& edge = edge_masks(s, period, p0);
    for (std::int64_t p = r0; p < p0; ++p)
        out[p] = correlate_point<float>(x, w, accumulate ? out[p] : bias, s, p / W, p % W);
    // four chunks at a time: four independent sums keep the multiply-adds from waiting
    auto masked = [&](std::int64_t p, std::int64_t k, std::int64_t phase) {
        return edge.apply(load_v(x + p + off[k]), k, phase);
    };
    std::int64_t p = p0, phase = 0;
    const floatv start = floatv{} + bias;     // once: GCC builds it through the stack on AVX2
    if (s.kh == 3 && s.kw == 3) {
        // The usual 3x3, unrolled: the nine taps in registers and, per chunk, one mask for the
        // left column and one for the right (the same for the three rows; the centre column
        // of a "same" geometry never leaves the row), two chunks at a time. The one chunk
        // that may be left goes to the loops below.
        const floatv zero{};
        floatv t[9];
        for (std::int64_t k = 0; k < 9; ++k) t[k] = zero + w[k];
        auto lanes = [&](std::int64_t k, std::int64_t q) {
            intv m;
            std::memcpy(&m, edge.masks[q * taps + k].v, sizeof m);
            return m;
        };
        const std::int64_t d = off[1] - off[0];                  // the dilation along a row
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        static const int simd = simd_level();
        if (simd == 2 && period <= 16)
            p = dw3x3_masked_avx512(x, w, bias, out, accumulate, off, edge, period, p, p1, phase);
        else if (simd >= 1)
            p = dw3x3_masked_avx2(x, w, bias, out, accumulate, off, edge, period, p, p1, phase);
#endif
        // two chunks at a time, written here rather than as a lambda: a lambda is a function
        // of its own, compiled for the default target and not cloned, so its multiply-adds were
        // not fused where the hand-written loops' are (other bits on the same machine)
        for (; p + 2 * V <= p1; p += 2 * V) {
            const std::int64_t q = phase + 1 == period ? 0 : phase + 1;
            const intv left0 = lanes(0, phase), right0 = lanes(2, phase);
            const intv left1 = lanes(0, q), right1 = lanes(2, q);
            floatv a0 = accumulate ? load_v(out + p) : start;
            floatv a1 = accumulate ? load_v(out + p + V) : start;
            for (std::int64_t i = 0; i < 3; ++i) {
                const float* src = x + p + off[3 * i];
                a0 += t[3 * i] * (floatv)((intv)load_v(src) & left0);
                a1 += t[3 * i] * (floatv)((intv)load_v(src + V) & left1);
                a0 += t[3 * i + 1] * load_v(src + d);
                a1 += t[3 * i + 1] * load_v(src + V + d);
                a0 += t[3 * i + 2] * (floatv)((intv)load_v(src + 2 * d) & right0);
                a1 += t[3 * i + 2] * (floatv)((intv)load_v(src + V + 2 * d) & right1);
            }
            std::memcpy(out + p, &a0, sizeof a0);
            std::memcpy(out + p + V, &a1, sizeof a1);
            phase = q + 1 == period ? 0 : q + 1;
        }
    }
    for (; p + 4 * V <= p1; p += 4 * V) {
        const std::int64_t q1 = phase + 1 == period ? 0 : phase + 1;
        const std::int64_t q2 = q1 + 1 == period ? 0 : q1 + 1;
        const std::int64_t q3 = q2 + 1 == period ? 0 : q2 + 1;
        floatv a0, a1, a2, a3;
        if (accumulate) {
            a0 = load_v(out + p), a1 = load_v(out + p + V);
            a2 = load_v(out + p + 2 * V), a3 = load_v(out + p + 3 * V);
        } else {
            a0 = a1 = a2 = a3 = start;
        }
        for (std::int64_t k = 0; k < taps; ++k) {
            const float tap = w[k];
            a0 += tap * masked(p, k, phase);
            a1 += tap * masked(p + V, k, q1);
            a2 += tap * masked(p + 2 * V, k, q2);
            a3 += tap * masked(p + 3 * V, k, q3);
        }
        std::memcpy(out + p, &a0, sizeof a0);
        std::memcpy(out + p + V, &a1, sizeof a1);
        std::memcpy(out + p + 2 * V, &a2, sizeof a2);
        std::memcpy(out + p + 3 * V, &a3, sizeof a3);
        phase = q3 + 1 == period ? 0 : q3 + 1;
    }
    for (; p + V <= p1; p += V) {
        floatv acc = accumulate ? load_v(out + p) : start;
        for (std::int64_t k = 0; k < taps; ++k) acc += w[k] * masked(p, k, phase);
        std::memcpy(out + p, &acc, sizeof acc);
        if (++phase == period) phase = 0;
    }
    for (std::int64_t p = p1; p < r1; ++p)
        out[p] = correlate_point<float>(x, w, accumulate ? out[p] : bias, s, p / W, p % W);
    correlate_rows<float>(x, w, bias, out, accumulate, s, 0, ylo);
    correlate_rows<float>(x, w, bias, out, accumulate, s, yhi, s.H);
    return true;
}

// The border rows' part of a plane's filter gradient: rows [0, ylo) and [yhi, H), one dot
// product per (row, tap), added into edge.
template <typename T>
MINICNN_VECTOR_CLONES static void filter_border_rows(const T* dy, const T* x, const Shape& s,
                                                     std::int64_t ylo, std::int64_t yhi,
                                                     T* edge) {
    const std::int64_t W = s.W;
    for (std::int64_t y = 0; y < s.H; ++y) {
        if (y == ylo) y = std::max(y, yhi);
        if (y >= s.H) break;
        const T* gy = dy + y * W;
        for (std::int64_t i = 0; i < s.kh; ++i) {
            const std::int64_t r = y + i * s.dh - s.ph;
            if (r < 0 || r >= s.H) continue;
            for (std::int64_t j = 0; j < s.kw; ++j) {
                const std::int64_t shift = j * s.dw - s.pw;
                std::int64_t lo, hi;
                valid_range(W, 1, shift, W, lo, hi);
                const T* src = x + r * W + shift;
                T dot = 0;
#pragma omp simd reduction(+ : dot)
                for (std::int64_t z = lo; z < hi; ++z) dot += gy[z] * src[z];
                edge[i * s.kw + j] += dot;
            }
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The 3x3 loop of backward_filter_plane_masked below with AVX2 and FMA. Nine sums of V lanes
// are eighteen ymm registers, two more than there are, so the chunks' low halves are summed
// in one pass over the range and their high halves in a second (the range is in cache): each
// lane adds the same products in the same order, fused, as the one-pass loop. lanes[k][t]
// <- tap k's sum in lane t.
__attribute__((target("avx2,fma"))) static void dw3x3_filter_masked_avx2(
        const float* __restrict dy, const float* __restrict x, const std::int64_t* off,
        const EdgeMasks& edge, std::int64_t period, std::int64_t p0, std::int64_t p1,
        float (*lanes)[V]) {
    static_assert(V == 16, "a chunk is two ymm halves");
    for (int half = 0; half < 2; ++half) {
        __m256 l0 = _mm256_setzero_ps(), l1 = l0, l2 = l0, l3 = l0, l4 = l0, l5 = l0, l6 = l0,
               l7 = l0, l8 = l0;
        std::int64_t phase = 0;
        for (std::int64_t p = p0 + 8 * half; p < p1; p += V) {
            const __m256 gv = _mm256_loadu_ps(dy + p);
            const float* b = x + p;
            const float* masks = reinterpret_cast<const float*>(edge.masks[phase * 9].v);
            const __m256 left = _mm256_load_ps(masks + 8 * half);
            const __m256 right = _mm256_load_ps(masks + 2 * V + 8 * half);   // tap 2's lanes
            l0 = _mm256_fmadd_ps(gv, _mm256_and_ps(_mm256_loadu_ps(b + off[0]), left), l0);
            l1 = _mm256_fmadd_ps(gv, _mm256_loadu_ps(b + off[1]), l1);
            l2 = _mm256_fmadd_ps(gv, _mm256_and_ps(_mm256_loadu_ps(b + off[2]), right), l2);
            l3 = _mm256_fmadd_ps(gv, _mm256_and_ps(_mm256_loadu_ps(b + off[3]), left), l3);
            l4 = _mm256_fmadd_ps(gv, _mm256_loadu_ps(b + off[4]), l4);
            l5 = _mm256_fmadd_ps(gv, _mm256_and_ps(_mm256_loadu_ps(b + off[5]), right), l5);
            l6 = _mm256_fmadd_ps(gv, _mm256_and_ps(_mm256_loadu_ps(b + off[6]), left), l6);
            l7 = _mm256_fmadd_ps(gv, _mm256_loadu_ps(b + off[7]), l7);
            l8 = _mm256_fmadd_ps(gv, _mm256_and_ps(_mm256_loadu_ps(b + off[8]), right), l8);
            if (++phase == period) phase = 0;
        }
        const __m256 sums[9] = {l0, l1, l2, l3, l4, l5, l6, l7, l8};
        for (int k = 0; k < 9; ++k) _mm256_storeu_ps(lanes[k] + 8 * half, sums[k]);
    }
}
#endif

// The float filter gradient of a "same" plane with the edge masks (see EdgeMasks): the flat
// loop covers the interior rows whole, each tap's sum kept in V lanes, a tap's lanes that
// would read across the row's edge masked to 0; then the few points at the ends of that
// range and the border rows. Returns false where the mask table does not apply.
MINICNN_VECTOR_CLONES static bool backward_filter_plane_masked(const float* __restrict dy,
                                                               const float* __restrict x,
                                                               double* acc, const Shape& s) {
    const std::int64_t W = s.W, taps = s.kh * s.kw;
    const FlatRange range = flat_range(s);
    const std::int64_t period = range.period, p0 = range.p0, p1 = range.p1;
    if (period == 0) return false;
    std::int64_t off[49];
    flat_offsets(s, off);
    const EdgeMasks& edge = edge_masks(s, period, p0);
    floatv lanes[49];
    for (std::int64_t k = 0; k < taps; ++k) lanes[k] = floatv{};
    std::int64_t phase = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const int simd = simd_level();
    if (s.kh == 3 && s.kw == 3 && simd == 1) {
        float sums[9][V];
        dw3x3_filter_masked_avx2(dy, x, off, edge, period, p0, p1, sums);
        for (std::int64_t k = 0; k < 9; ++k) std::memcpy(&lanes[k], sums[k], sizeof lanes[k]);
    } else
#endif
    if (s.kh == 3 && s.kw == 3) {             // 3x3: nine sums that stay in registers
        // only the left and right kernel columns can fall in the padding ("same" geometry:
        // the centre column never leaves the row): one mask each per chunk
        floatv l0{}, l1{}, l2{}, l3{}, l4{}, l5{}, l6{}, l7{}, l8{};
        auto mask = [&](std::int64_t k) {
            intv m;
            std::memcpy(&m, edge.masks[phase * taps + k].v, sizeof m);
            return m;
        };
        auto keep = [](floatv v, intv m) { return (floatv)((intv)v & m); };
        for (std::int64_t p = p0; p < p1; p += V) {
            const floatv gv = load_v(dy + p);
            const float* b = x + p;
            const intv left = mask(0), right = mask(2);
            l0 += gv * keep(load_v(b + off[0]), left);
            l1 += gv * load_v(b + off[1]);
            l2 += gv * keep(load_v(b + off[2]), right);
            l3 += gv * keep(load_v(b + off[3]), left);
            l4 += gv * load_v(b + off[4]);
            l5 += gv * keep(load_v(b + off[5]), right);
            l6 += gv * keep(load_v(b + off[6]), left);
            l7 += gv * load_v(b + off[7]);
            l8 += gv * keep(load_v(b + off[8]), right);
            if (++phase == period) phase = 0;
        }
        lanes[0] = l0, lanes[1] = l1, lanes[2] = l2, lanes[3] = l3, lanes[4] = l4;
        lanes[5] = l5, lanes[6] = l6, lanes[7] = l7, lanes[8] = l8;
    } else {
        for (std::int64_t p = p0; p < p1; p += V) {
            const floatv gv = load_v(dy + p);
            for (std::int64_t k = 0; k < taps; ++k)
                lanes[k] += gv * edge.apply(load_v(x + p + off[k]), k, phase);
            if (++phase == period) phase = 0;
        }
    }
    double sums[49] = {};
    for (std::int64_t k = 0; k < taps; ++k)
        for (std::int64_t t = 0; t < V; ++t) sums[k] += lanes[k][t];
    // the ends of the interior rows' range, point by point with the window clipped
    const std::int64_t ends[2][2] = {{range.ylo * W, p0}, {p1, range.yhi * W}};
    for (const auto& span : ends)
        for (std::int64_t q = span[0]; q < span[1]; ++q) {
            const std::int64_t y = q / W, z = q % W;
            for (std::int64_t i = 0; i < s.kh; ++i) {
                const std::int64_t r = y + i * s.dh - s.ph;
                if (r < 0 || r >= s.H) continue;
                for (std::int64_t j = 0; j < s.kw; ++j) {
                    const std::int64_t c = z + j * s.dw - s.pw;
                    if (c >= 0 && c < W) sums[i * s.kw + j] += double(dy[q]) * x[r * W + c];
                }
            }
        }
    float border[49] = {};
    filter_border_rows<float>(dy, x, s, range.ylo, range.yhi, border);
    for (std::int64_t k = 0; k < taps; ++k) acc[k] += sums[k] + border[k];
    return true;
}

// --- channel blocks: eight channels at a time, channels innermost -------------------------------
// The loops above vectorize along a row, which a small plane starves (a 7x7 output is one short
// partial vector per row, and every plane pays its edge handling again), and a stride (every
// sw-th input) or a kernel other than 3x3 leaves scalar or worse. Here B planes are transposed
// into one buffer with the channels innermost, [row][column][B], zeros all around (the
// padding), so every tap of every output is one B-lane multiply-add with no edge case, at any
// kernel, stride and dilation, and the results are transposed back. The transposes cost a
// pass over the input and the output each, which the row loops do not pay: they stay for
// float32 3x3 "same" planes whose rows are wide (rows_path). Measured on the Zen 3 (AVX2), one
// thread, batch 8, row loops -> channel blocks, forward / input gradient / filter gradient in
// ms: MobileNet's 1024 channels at 7x7 4.12 / 4.04 / 3.88 -> 0.56 / 0.56 / 0.48, 512 at 14x14
// 2.51 / 2.56 / 2.50 -> 0.98 / 0.94 / 0.82, 256 at 28x28 stride 2 2.34 / 2.71 / 3.33 -> 0.90 /
// 1.12 / 0.84, 64 at 112x112 stride 2 5.98 / 14.99 / 7.69 -> 3.72 / 4.46 / 3.19; 64 channels at
// 57x57 (no mask table: W / gcd(W, 16) > 16) 13.1 / 13.2 / 5.1 -> 1.9 / 1.8 / 1.6; a 5x5
// "same" at 56x56 30.4 / 30.3 / 52.6 -> 4.6 / 3.5 / 5.7. The row loops stayed faster for the
// 3x3 "same" planes from 40 columns on (64 at 56x56: 1.11 against 1.57 ms forward; 128 at 40x40
// 2.34 against 2.74), the blocks up to 32 (128 at 32x32: 1.78 against 2.00): ROWS_FROM is 33.
constexpr std::int64_t B = 8;                   // channels per block: one ymm register of floats
constexpr std::int64_t ROWS_FROM = 33;          // output columns

// The row loops: float32, 3x3, "same", stride 1, rows of ROWS_FROM columns and more, and a mask
// table for the width (flat_range's period).
inline bool rows_path(const Shape& s) {
    return s.kh == 3 && s.kw == 3 && same_geometry(s) && s.ow >= ROWS_FROM &&
           flat_range(s).period > 0;
}

// The padded plane of a block: big enough for every tap of every output (Caffe's output size
// never reads past the padding, but oh and ow come from the caller).
struct Padded {
    std::int64_t rows, cols;
    explicit Padded(const Shape& s)
        : rows(std::max(s.H + 2 * s.ph, (s.oh - 1) * s.sh + (s.kh - 1) * s.dh + 1)),
          cols(std::max(s.W + 2 * s.pw, (s.ow - 1) * s.sw + (s.kw - 1) * s.dw + 1)) {}
    std::int64_t size() const { return rows * cols * B; }
};

// Tap k = i*kw + j of output (y, z) reads the padded buffer at element
// (y*sh*cols + z*sw)*B + offsets[k].
inline const std::int64_t* blocked_offsets(const Shape& s, const Padded& pad) {
    thread_local std::vector<std::int64_t> off;
    off.resize(s.kh * s.kw);
    for (std::int64_t i = 0; i < s.kh; ++i)
        for (std::int64_t j = 0; j < s.kw; ++j)
            off[i * s.kw + j] = (i * s.dh * pad.cols + j * s.dw) * B;
    return off.data();
}

typedef float float8 __attribute__((vector_size(B * sizeof(float))));
typedef std::int32_t int8v __attribute__((vector_size(B * sizeof(std::int32_t))));

inline float8 load8(const float* p) {
    float8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store8(float* p, float8 v) { std::memcpy(p, &v, sizeof v); }

// r[i] lane j <- r[j] lane i: an 8 x 8 block transposed in registers (GCC's shuffles:
// unpacks, then pairs, then halves).
inline void transpose8(float8 r[8]) {
    float8 t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = __builtin_shuffle(r[k], r[k + 1], int8v{0, 8, 1, 9, 4, 12, 5, 13});
        t[k + 1] = __builtin_shuffle(r[k], r[k + 1], int8v{2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = __builtin_shuffle(t[k], t[k + 2], int8v{0, 1, 8, 9, 4, 5, 12, 13});
        u[k + 1] = __builtin_shuffle(t[k], t[k + 2], int8v{2, 3, 10, 11, 6, 7, 14, 15});
        u[k + 2] = __builtin_shuffle(t[k + 1], t[k + 3], int8v{0, 1, 8, 9, 4, 5, 12, 13});
        u[k + 3] = __builtin_shuffle(t[k + 1], t[k + 3], int8v{2, 3, 10, 11, 6, 7, 14, 15});
    }
    for (int k = 0; k < 4; ++k) {
        r[k] = __builtin_shuffle(u[k], u[k + 4], int8v{0, 1, 2, 3, 8, 9, 10, 11});
        r[k + 4] = __builtin_shuffle(u[k], u[k + 4], int8v{4, 5, 6, 7, 12, 13, 14, 15});
    }
}

// Where pixel q of a plane (rows of `width`) sits in a blocked buffer whose rows are `pitch`
// elements apart: (q / width)*pitch + (q % width)*B. Stepped along, without the divisions.
struct BlockedRows {
    std::int64_t width, pitch, row = 0, col = 0;
    BlockedRows(std::int64_t width_, std::int64_t pitch_) : width(width_), pitch(pitch_) {}
    std::int64_t at() const { return row * pitch + col * B; }
    void next() {
        if (++col == width) col = 0, ++row;
    }
};

// dst at pixel q's place <- planes[l][q] for q < count, l < lanes (0 for the lanes beyond).
template <typename T>
MINICNN_VECTOR_CLONES static void to_blocked(const T* const* planes, std::int64_t lanes,
                                             std::int64_t count, BlockedRows place,
                                             T* __restrict dst) {
    std::int64_t q = 0;
    if constexpr (std::is_same_v<T, float>) {
        if (lanes == B) {
            for (; q + B <= count; q += B) {
                float8 r[B];
                for (std::int64_t l = 0; l < B; ++l) r[l] = load8(planes[l] + q);
                transpose8(r);
                for (std::int64_t l = 0; l < B; ++l, place.next()) store8(dst + place.at(), r[l]);
            }
        }
    }
    for (; q < count; ++q, place.next())
        for (std::int64_t l = 0; l < B; ++l) dst[place.at() + l] = l < lanes ? planes[l][q] : T(0);
}

// planes[l][q] <- src at pixel q's place, for q < count, l < lanes.
template <typename T>
MINICNN_VECTOR_CLONES static void from_blocked(const T* __restrict src, std::int64_t count,
                                               BlockedRows place, T* const* planes,
                                               std::int64_t lanes) {
    std::int64_t q = 0;
    if constexpr (std::is_same_v<T, float>) {
        if (lanes == B) {
            for (; q + B <= count; q += B) {
                float8 r[B];
                for (std::int64_t l = 0; l < B; ++l, place.next()) r[l] = load8(src + place.at());
                transpose8(r);
                for (std::int64_t l = 0; l < B; ++l) store8(planes[l] + q, r[l]);
            }
        }
    }
    for (; q < count; ++q, place.next())
        for (std::int64_t l = 0; l < lanes; ++l) planes[l][q] = src[place.at() + l];
}

// buf <- the planes (H x W each) at row ph, column pw of the padded buffer, zeros around.
template <typename T>
static void pad_blocked(const T* const* planes, std::int64_t lanes, const Shape& s,
                        const Padded& pad, T* buf) {
    const std::int64_t pitch = pad.cols * B, right = pad.cols - s.W - s.pw;
    std::memset(buf, 0, sizeof(T) * s.ph * pitch);
    std::memset(buf + (s.ph + s.H) * pitch, 0, sizeof(T) * (pad.rows - s.ph - s.H) * pitch);
    for (std::int64_t r = 0; r < s.H; ++r) {
        T* line = buf + (s.ph + r) * pitch;
        std::memset(line, 0, sizeof(T) * s.pw * B);
        std::memset(line + (s.pw + s.W) * B, 0, sizeof(T) * right * B);
    }
    to_blocked<T>(planes, lanes, s.H * s.W, BlockedRows(s.W, pitch),
                  buf + (s.ph * pad.cols + s.pw) * B);
}

// out[(y*ow + z)*B + l] = bias[l] + sum_k w[k*B + l] * buf[(y*sh*cols + z*sw)*B + off[k] + l]
// over the padded buffer; four outputs at a time, so four sums are in flight.
template <typename T>
MINICNN_VECTOR_CLONES static void correlate_blocked(const T* __restrict buf, const T* __restrict w,
                                                    const T* __restrict bias, T* __restrict out,
                                                    const Shape& s, const Padded& pad) {
    constexpr std::int64_t U = 4;
    const std::int64_t taps = s.kh * s.kw, step = s.sw * B;
    const std::int64_t* off = blocked_offsets(s, pad);
    for (std::int64_t y = 0; y < s.oh; ++y) {
        const T* row = buf + y * s.sh * pad.cols * B;
        T* dst = out + y * s.ow * B;
        std::int64_t z = 0;
        for (; z + U <= s.ow; z += U) {
            T acc[U][B];
            for (std::int64_t u = 0; u < U; ++u)
#pragma omp simd
                for (std::int64_t l = 0; l < B; ++l) acc[u][l] = bias[l];
            for (std::int64_t k = 0; k < taps; ++k) {
                const T* src = row + z * step + off[k];
                for (std::int64_t u = 0; u < U; ++u)
#pragma omp simd
                    for (std::int64_t l = 0; l < B; ++l)
                        acc[u][l] += w[k * B + l] * src[u * step + l];
            }
            for (std::int64_t u = 0; u < U; ++u)
#pragma omp simd
                for (std::int64_t l = 0; l < B; ++l) dst[(z + u) * B + l] = acc[u][l];
        }
        for (; z < s.ow; ++z) {
            T acc[B];
#pragma omp simd
            for (std::int64_t l = 0; l < B; ++l) acc[l] = bias[l];
            for (std::int64_t k = 0; k < taps; ++k) {
                const T* src = row + z * step + off[k];
#pragma omp simd
                for (std::int64_t l = 0; l < B; ++l) acc[l] += w[k * B + l] * src[l];
            }
#pragma omp simd
            for (std::int64_t l = 0; l < B; ++l) dst[z * B + l] = acc[l];
        }
    }
}

// float: the same with the eight lanes as one vector value, so the four sums stay in registers
// (GCC kept the arrays above in memory). Not one template for both types: eight doubles are
// two ymm registers, which GCC handles through the stack on AVX2 (such a version measured
// float64 2x slower than the arrays above).
template <>
MINICNN_VECTOR_CLONES void correlate_blocked<float>(const float* __restrict buf,
                                                    const float* __restrict w,
                                                    const float* __restrict bias,
                                                    float* __restrict out, const Shape& s,
                                                    const Padded& pad) {
    const std::int64_t taps = s.kh * s.kw, step = s.sw * B;
    const std::int64_t* off = blocked_offsets(s, pad);
    const float8 b = load8(bias);
    for (std::int64_t y = 0; y < s.oh; ++y) {
        const float* row = buf + y * s.sh * pad.cols * B;
        float* dst = out + y * s.ow * B;
        std::int64_t z = 0;
        for (; z + 4 <= s.ow; z += 4) {
            float8 a0 = b, a1 = b, a2 = b, a3 = b;
            const float* at = row + z * step;
            for (std::int64_t k = 0; k < taps; ++k) {
                const float8 tap = load8(w + k * B);
                const float* src = at + off[k];
                a0 += tap * load8(src);
                a1 += tap * load8(src + step);
                a2 += tap * load8(src + 2 * step);
                a3 += tap * load8(src + 3 * step);
            }
            store8(dst + z * B, a0);
            store8(dst + (z + 1) * B, a1);
            store8(dst + (z + 2) * B, a2);
            store8(dst + (z + 3) * B, a3);
        }
        for (; z < s.ow; ++z) {
            float8 a = b;
            const float* at = row + z * step;
            for (std::int64_t k = 0; k < taps; ++k) a += load8(w + k * B) * load8(at + off[k]);
            store8(dst + z * B, a);
        }
    }
}

// buf (the padded dx planes) += the adjoint of correlate_blocked: each output's gradient
// scattered onto the taps it read. (No sums to keep in registers: GCC's vectorized loop over
// the lanes measured as fast as a float version with vector values.)
template <typename T>
MINICNN_VECTOR_CLONES static void scatter_blocked(const T* __restrict g, const T* __restrict w,
                                                  T* __restrict buf, const Shape& s,
                                                  const Padded& pad) {
    const std::int64_t taps = s.kh * s.kw;
    const std::int64_t* off = blocked_offsets(s, pad);
    for (std::int64_t y = 0; y < s.oh; ++y) {
        for (std::int64_t z = 0; z < s.ow; ++z) {
            const T* gz = g + (y * s.ow + z) * B;
            T* base = buf + (y * s.sh * pad.cols + z * s.sw) * B;
            for (std::int64_t k = 0; k < taps; ++k) {
                T* dst = base + off[k];
#pragma omp simd
                for (std::int64_t l = 0; l < B; ++l) dst[l] += w[k * B + l] * gz[l];
            }
        }
    }
}

// acc[k*B + l] += sum_{y,z} g[(y*ow + z)*B + l] * buf[(y*sh*cols + z*sw)*B + off[k] + l] for
// each tap k; sums[l] (unless null) += the sum of g's lane l (the bias gradient). A tap sums in
// T over the plane, four partial sums apart, and adds onto the double totals once.
template <typename T>
MINICNN_VECTOR_CLONES static void filter_blocked(const T* __restrict g, const T* __restrict buf,
                                                 double* __restrict acc, double* __restrict sums,
                                                 const Shape& s, const Padded& pad) {
    constexpr std::int64_t U = 4;
    const std::int64_t taps = s.kh * s.kw, step = s.sw * B, P = s.oh * s.ow;
    const std::int64_t* off = blocked_offsets(s, pad);
    for (std::int64_t k = 0; k < taps; ++k) {
        T part[U][B] = {};
        for (std::int64_t y = 0; y < s.oh; ++y) {
            const T* src = buf + y * s.sh * pad.cols * B + off[k];
            const T* gy = g + y * s.ow * B;
            std::int64_t z = 0;
            for (; z + U <= s.ow; z += U)
                for (std::int64_t u = 0; u < U; ++u)
#pragma omp simd
                    for (std::int64_t l = 0; l < B; ++l)
                        part[u][l] += gy[(z + u) * B + l] * src[(z + u) * step + l];
            for (; z < s.ow; ++z)
#pragma omp simd
                for (std::int64_t l = 0; l < B; ++l) part[0][l] += gy[z * B + l] * src[z * step + l];
        }
        for (std::int64_t l = 0; l < B; ++l)
            acc[k * B + l] += double(part[0][l] + part[1][l]) + double(part[2][l] + part[3][l]);
    }
    if (!sums) return;
    T part[U][B] = {};
    std::int64_t p = 0;
    for (; p + U <= P; p += U)
        for (std::int64_t u = 0; u < U; ++u)
#pragma omp simd
            for (std::int64_t l = 0; l < B; ++l) part[u][l] += g[(p + u) * B + l];
    for (; p < P; ++p)
#pragma omp simd
        for (std::int64_t l = 0; l < B; ++l) part[0][l] += g[p * B + l];
    for (std::int64_t l = 0; l < B; ++l)
        sums[l] += double(part[0][l] + part[1][l]) + double(part[2][l] + part[3][l]);
}

// float: vector values again; the 3x3's nine sums stay in registers, each output's gradient
// loaded once for all of them (one load per multiply-add instead of two).
template <>
MINICNN_VECTOR_CLONES void filter_blocked<float>(const float* __restrict g,
                                                 const float* __restrict buf,
                                                 double* __restrict acc,
                                                 double* __restrict sums, const Shape& s,
                                                 const Padded& pad) {
    const std::int64_t taps = s.kh * s.kw, step = s.sw * B, P = s.oh * s.ow;
    const std::int64_t* off = blocked_offsets(s, pad);
    auto add = [&](std::int64_t k, float8 sum) {
        for (std::int64_t l = 0; l < B; ++l) acc[k * B + l] += double(sum[l]);
    };
    if (taps == 9) {
        float8 p0 = {}, p1 = {}, p2 = {}, p3 = {}, p4 = {}, p5 = {}, p6 = {}, p7 = {}, p8 = {};
        for (std::int64_t y = 0; y < s.oh; ++y) {
            const float* row = buf + y * s.sh * pad.cols * B;
            const float* gy = g + y * s.ow * B;
            for (std::int64_t z = 0; z < s.ow; ++z) {
                const float8 gz = load8(gy + z * B);
                const float* src = row + z * step;
                p0 += gz * load8(src + off[0]);
                p1 += gz * load8(src + off[1]);
                p2 += gz * load8(src + off[2]);
                p3 += gz * load8(src + off[3]);
                p4 += gz * load8(src + off[4]);
                p5 += gz * load8(src + off[5]);
                p6 += gz * load8(src + off[6]);
                p7 += gz * load8(src + off[7]);
                p8 += gz * load8(src + off[8]);
            }
        }
        add(0, p0), add(1, p1), add(2, p2), add(3, p3), add(4, p4);
        add(5, p5), add(6, p6), add(7, p7), add(8, p8);
    } else {
        for (std::int64_t k = 0; k < taps; ++k) {
            float8 p0 = {}, p1 = {}, p2 = {}, p3 = {};
            for (std::int64_t y = 0; y < s.oh; ++y) {
                const float* src = buf + y * s.sh * pad.cols * B + off[k];
                const float* gy = g + y * s.ow * B;
                std::int64_t z = 0;
                for (; z + 4 <= s.ow; z += 4) {
                    p0 += load8(gy + z * B) * load8(src + z * step);
                    p1 += load8(gy + (z + 1) * B) * load8(src + (z + 1) * step);
                    p2 += load8(gy + (z + 2) * B) * load8(src + (z + 2) * step);
                    p3 += load8(gy + (z + 3) * B) * load8(src + (z + 3) * step);
                }
                for (; z < s.ow; ++z) p0 += load8(gy + z * B) * load8(src + z * step);
            }
            add(k, (p0 + p1) + (p2 + p3));
        }
    }
    if (!sums) return;
    float8 p0 = {}, p1 = {}, p2 = {}, p3 = {};
    std::int64_t p = 0;
    for (; p + 4 <= P; p += 4) {
        p0 += load8(g + p * B);
        p1 += load8(g + (p + 1) * B);
        p2 += load8(g + (p + 2) * B);
        p3 += load8(g + (p + 3) * B);
    }
    for (; p < P; ++p) p0 += load8(g + p * B);
    const float8 total = (p0 + p1) + (p2 + p3);
    for (std::int64_t l = 0; l < B; ++l) sums[l] += double(total[l]);
}

// Taps (or biases) laid out per block of B lanes: out[(block*taps + k)*B + l] = the value of
// lane l's filter (filter_of(lane index over all blocks)), 0 for lanes past `count`.
template <typename T, typename FilterOf>
static std::vector<T> by_lanes(const T* w, std::int64_t count, std::int64_t taps,
                               FilterOf filter_of, bool flip = false) {
    const std::int64_t blocks = (count + B - 1) / B;
    std::vector<T> out(blocks * taps * B, T(0));
    for (std::int64_t c = 0; w && c < count; ++c)
        for (std::int64_t k = 0; k < taps; ++k)
            out[((c / B) * taps + k) * B + c % B] =
                w[filter_of(c) * taps + (flip ? taps - 1 - k : k)];
    return out;
}

inline std::int64_t lanes_of(std::int64_t count, std::int64_t block) {
    return std::min(B, count - block * B);
}

// Forward by blocks of B filters: lane l of block k is filter k*B + l, reading its channel's
// plane. (flip: the taps reversed, for the input gradient at stride 1.)
template <typename T>
static void forward_blocked(const T* x, const T* w, const T* b, T* y, const Shape& s,
                            bool flip = false) {
    const std::int64_t taps = s.kh * s.kw, blocks = (s.F + B - 1) / B, m = s.F / s.C;
    auto same = [](std::int64_t f) { return f; };
    const std::vector<T> wb = by_lanes(w, s.F, taps, same, flip);
    const std::vector<T> bias = by_lanes(b, s.F, 1, same);
    const Padded pad(s);
#pragma omp parallel for collapse(2) schedule(static) \
    if (s.N * s.F * s.oh * s.ow * taps > PARALLEL_WORK)
    for (std::int64_t n = 0; n < s.N; ++n) {
        for (std::int64_t blk = 0; blk < blocks; ++blk) {
            thread_local std::vector<T> buf, out;
            buf.resize(pad.size());
            out.resize(s.oh * s.ow * B);
            const std::int64_t lanes = lanes_of(s.F, blk);
            const T* in[B];
            T* planes[B];
            for (std::int64_t l = 0; l < lanes; ++l) {
                const std::int64_t f = blk * B + l;
                in[l] = x + (n * s.C + f / m) * s.H * s.W;
                planes[l] = y + (n * s.F + f) * s.oh * s.ow;
            }
            pad_blocked<T>(in, lanes, s, pad, buf.data());
            correlate_blocked<T>(buf.data(), wb.data() + blk * taps * B, bias.data() + blk * B,
                                 out.data(), s, pad);
            from_blocked<T>(out.data(), s.oh * s.ow, BlockedRows(s.ow, s.ow * B), planes, lanes);
        }
    }
}

// Input gradient by blocks of B channels: each of a channel's m filters scatters its gradient
// onto the channel's padded plane, whose inside is then transposed back.
template <typename T>
static void backward_data_blocked(const T* dy, const T* w, T* dx, const Shape& s) {
    const std::int64_t taps = s.kh * s.kw, blocks = (s.C + B - 1) / B, m = s.F / s.C;
    std::vector<std::vector<T>> wb(m);              // per r: lane c holds filter c*m + r
    for (std::int64_t r = 0; r < m; ++r)
        wb[r] = by_lanes(w, s.C, taps, [&](std::int64_t c) { return c * m + r; });
    const Padded pad(s);
#pragma omp parallel for collapse(2) schedule(static) \
    if (s.N * s.F * s.oh * s.ow * taps > PARALLEL_WORK)
    for (std::int64_t n = 0; n < s.N; ++n) {
        for (std::int64_t blk = 0; blk < blocks; ++blk) {
            thread_local std::vector<T> buf, g;
            buf.assign(pad.size(), T(0));
            g.resize(s.oh * s.ow * B);
            const std::int64_t lanes = lanes_of(s.C, blk);
            const T* grads[B];
            T* planes[B];
            for (std::int64_t r = 0; r < m; ++r) {
                for (std::int64_t l = 0; l < lanes; ++l)
                    grads[l] = dy + (n * s.F + (blk * B + l) * m + r) * s.oh * s.ow;
                to_blocked<T>(grads, lanes, s.oh * s.ow, BlockedRows(s.ow, s.ow * B), g.data());
                scatter_blocked<T>(g.data(), wb[r].data() + blk * taps * B, buf.data(), s, pad);
            }
            for (std::int64_t l = 0; l < lanes; ++l)
                planes[l] = dx + (n * s.C + blk * B + l) * s.H * s.W;
            from_blocked<T>(buf.data() + (s.ph * pad.cols + s.pw) * B, s.H * s.W,
                            BlockedRows(s.W, pad.cols * B), planes, lanes);
        }
    }
}

// Filter gradient by blocks of B filters, summed over the images in double (per plane in T).
template <typename T>
static void backward_filter_blocked(const T* dy, const T* x, T* dw, T* db, const Shape& s) {
    const std::int64_t taps = s.kh * s.kw, blocks = (s.F + B - 1) / B, m = s.F / s.C;
    const Padded pad(s);
#pragma omp parallel for schedule(static) \
    if (s.N * s.F * s.oh * s.ow * taps > PARALLEL_WORK)
    for (std::int64_t blk = 0; blk < blocks; ++blk) {
        thread_local std::vector<T> buf, g;
        buf.resize(pad.size());
        g.resize(s.oh * s.ow * B);
        std::vector<double> acc(taps * B, 0.0), sums(B, 0.0);
        const std::int64_t lanes = lanes_of(s.F, blk);
        for (std::int64_t n = 0; n < s.N; ++n) {
            const T* in[B];
            const T* grads[B];
            for (std::int64_t l = 0; l < lanes; ++l) {
                const std::int64_t f = blk * B + l;
                in[l] = x + (n * s.C + f / m) * s.H * s.W;
                grads[l] = dy + (n * s.F + f) * s.oh * s.ow;
            }
            pad_blocked<T>(in, lanes, s, pad, buf.data());
            to_blocked<T>(grads, lanes, s.oh * s.ow, BlockedRows(s.ow, s.ow * B), g.data());
            filter_blocked<T>(g.data(), buf.data(), acc.data(), db ? sums.data() : nullptr, s,
                              pad);
        }
        for (std::int64_t l = 0; l < lanes; ++l) {
            const std::int64_t f = blk * B + l;
            for (std::int64_t k = 0; k < taps; ++k) dw[f * taps + k] = T(acc[k * B + l]);
            if (db) db[f] = T(sums[l]);
        }
    }
}

// --- the three passes ------------------------------------------------------------------------
// (The row loops' float functions below return false only without a mask table, which
// rows_path has ruled out.)

static void forward_rows(const float* x, const float* w, const float* b, float* y,
                         const Shape& s) {
    const std::int64_t m = s.F / s.C;
#pragma omp parallel for collapse(2) schedule(static) \
    if (s.N * s.F * s.oh * s.ow * s.kh * s.kw > PARALLEL_WORK)
    for (std::int64_t n = 0; n < s.N; ++n)
        for (std::int64_t f = 0; f < s.F; ++f)
            correlate_plane_masked(x + (n * s.C + f / m) * s.H * s.W, w + f * s.kh * s.kw,
                                   b ? b[f] : 0.0f, y + (n * s.F + f) * s.oh * s.ow, false, s);
}

template <typename T>
static void depthwise_forward(const T* x, const T* w, const T* b, T* y, const Shape& s) {
    if constexpr (std::is_same_v<T, float>)
        if (rows_path(s)) return forward_rows(x, w, b, y, s);
    forward_blocked<T>(x, w, b, y, s);
}

// The stride-1 input gradient on the row loops: dy correlated with the flipped kernels (the
// shape t), the filters of one channel accumulating onto its plane.
static void backward_data_rows(const float* dy, const float* w, float* dx, const Shape& s,
                               const Shape& t) {
    const std::int64_t m = s.F / s.C, taps = s.kh * s.kw;
    std::vector<float> flipped(s.F * taps);
    for (std::int64_t f = 0; f < s.F; ++f)
        for (std::int64_t k = 0; k < taps; ++k) flipped[f * taps + k] = w[f * taps + taps - 1 - k];
#pragma omp parallel for collapse(2) schedule(static) \
    if (s.N * s.F * s.oh * s.ow * s.kh * s.kw > PARALLEL_WORK)
    for (std::int64_t n = 0; n < s.N; ++n) {
        for (std::int64_t c = 0; c < s.C; ++c) {
            float* plane = dx + (n * s.C + c) * s.H * s.W;
            for (std::int64_t f = c * m; f < (c + 1) * m; ++f)
                correlate_plane_masked(dy + (n * s.F + f) * s.oh * s.ow,
                                       flipped.data() + f * taps, 0.0f, plane, f > c * m, t);
        }
    }
}

// Stride 1: dx is a correlation of dy with the flipped kernel, padded by (k - 1)*d - p, so the
// forward's loops do it. Otherwise (or where that pad would be negative, or a channel has
// several filters and the row loops do not apply) the blocks scatter.
template <typename T>
static void depthwise_backward_data(const T* dy, const T* w, T* dx, const Shape& s) {
    Shape t = s;                                    // the flipped problem: dy in, dx out
    t.H = s.oh, t.W = s.ow, t.oh = s.H, t.ow = s.W;
    t.ph = (s.kh - 1) * s.dh - s.ph, t.pw = (s.kw - 1) * s.dw - s.pw;
    const bool flip = s.sh == 1 && s.sw == 1 && t.ph >= 0 && t.pw >= 0;
    if constexpr (std::is_same_v<T, float>)
        if (flip && rows_path(t)) return backward_data_rows(dy, w, dx, s, t);
    if (flip && s.F == s.C) return forward_blocked<T>(dy, w, nullptr, dx, t, true);
    backward_data_blocked<T>(dy, w, dx, s);
}

// The sum of a plane that is in cache: four vector sums, so the adds do not wait on each other.
template <typename T>
MINICNN_VECTOR_CLONES static double plane_sum(const T* g, std::int64_t P) {
    constexpr std::int64_t L = 64 / sizeof(T);           // one cache line per sum and step
    T part[4][L] = {};
    std::int64_t p = 0;
    for (; p + 4 * L <= P; p += 4 * L)
        for (int a = 0; a < 4; ++a)
#pragma omp simd
            for (std::int64_t t = 0; t < L; ++t) part[a][t] += g[p + a * L + t];
    double total = 0;
    for (; p < P; ++p) total += g[p];
    for (int a = 0; a < 4; ++a)
        for (std::int64_t t = 0; t < L; ++t) total += part[a][t];
    return total;
}

// db (unless null) <- the bias gradient too, each dy plane summed while it is still in cache
// (a pass over dy fewer than channel_sums).
static void backward_filter_rows(const float* dy, const float* x, float* dw, float* db,
                                 const Shape& s) {
    const std::int64_t m = s.F / s.C, taps = s.kh * s.kw, P = s.oh * s.ow;
#pragma omp parallel for schedule(static) \
    if (s.N * s.F * s.oh * s.ow * s.kh * s.kw > PARALLEL_WORK)
    for (std::int64_t f = 0; f < s.F; ++f) {
        std::vector<double> acc(taps, 0.0);
        double bias_total = 0;
        for (std::int64_t n = 0; n < s.N; ++n) {
            const float* g = dy + (n * s.F + f) * P;
            backward_filter_plane_masked(g, x + (n * s.C + f / m) * s.H * s.W, acc.data(), s);
            if (db) bias_total += plane_sum<float>(g, P);
        }
        for (std::int64_t k = 0; k < taps; ++k) dw[f * taps + k] = float(acc[k]);
        if (db) db[f] = float(bias_total);
    }
}

template <typename T>
static void depthwise_backward_filter(const T* dy, const T* x, T* dw, T* db, const Shape& s) {
    if constexpr (std::is_same_v<T, float>)
        if (rows_path(s)) return backward_filter_rows(dy, x, dw, db, s);
    backward_filter_blocked<T>(dy, x, dw, db, s);
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
            Release release;
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
            Release release;
            depthwise_backward_data<T>(g, ws, out, s);
        });
    }, "dx <- d(loss)/dx of the depthwise convolution, from dy");
    m.def("depthwise_backward_filter", [](const py::array& dy, const py::array& x, py::array& dw,
                                          const py::tuple& geom, py::object db) {
        require(dy.ndim() == 4, "depthwise: dy must be 4-D");
        const Shape s = shape_of(x, dw, geom, dy.shape(2), dy.shape(3));
        check_4d(dy, s.N, s.F, s.oh, s.ow, "dy");
        require(db.is_none() || db.cast<py::array>().size() == s.F, "depthwise: db must be (F,)");
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T *g = in_ptr<T>(dy, "dy"), *xs = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(dw, "dw");
            T* bias = opt_out_ptr<T>(db, "db");
            Release release;
            depthwise_backward_filter<T>(g, xs, out, bias, s);
        });
    }, "dw (F, 1, kh, kw) <- d(loss)/dw of the depthwise convolution, from dy and x; db (F,) "
       "<- the sums of dy per filter too, unless None");
}

}  // namespace minicnn
