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

// out[p .. p+V) (+)= sum_k w[k] * x[p + off[k] .. ] for the flat loop below; double: plainly.
template <typename T>
inline void flat_chunk(const T* x, const T* w, const std::int64_t* off, std::int64_t taps,
                       std::int64_t p, T bias, bool accumulate, T* out) {
    for (std::int64_t t = 0; t < V; ++t) {
        T acc = accumulate ? out[p + t] : bias;
        for (std::int64_t k = 0; k < taps; ++k) acc += w[k] * x[p + t + off[k]];
        out[p + t] = acc;
    }
}

template <>
inline void flat_chunk<float>(const float* x, const float* w, const std::int64_t* off,
                              std::int64_t taps, std::int64_t p, float bias, bool accumulate,
                              float* out) {
    floatv acc = accumulate ? load_v(out + p) : floatv{} + bias;
    for (std::int64_t k = 0; k < taps; ++k) acc += w[k] * load_v(x + p + off[k]);
    std::memcpy(out + p, &acc, sizeof acc);
}

// Four chunks at once: four independent sums, so the multiply-adds do not wait on each other.
template <typename T>
inline void flat_chunks4(const T* x, const T* w, const std::int64_t* off, std::int64_t taps,
                         std::int64_t p, T bias, bool accumulate, T* out) {
    for (std::int64_t c = 0; c < 4; ++c)
        flat_chunk<T>(x, w, off, taps, p + c * V, bias, accumulate, out);
}

template <>
inline void flat_chunks4<float>(const float* x, const float* w, const std::int64_t* off,
                                std::int64_t taps, std::int64_t p, float bias, bool accumulate,
                                float* out) {
    floatv a0, a1, a2, a3;
    if (accumulate) {
        a0 = load_v(out + p), a1 = load_v(out + p + V);
        a2 = load_v(out + p + 2 * V), a3 = load_v(out + p + 3 * V);
    } else {
        a0 = a1 = a2 = a3 = floatv{} + bias;
    }
    for (std::int64_t k = 0; k < taps; ++k) {
        const float tap = w[k];
        const float* src = x + p + off[k];
        a0 += tap * load_v(src);
        a1 += tap * load_v(src + V);
        a2 += tap * load_v(src + 2 * V);
        a3 += tap * load_v(src + 3 * V);
    }
    std::memcpy(out + p, &a0, sizeof a0);
    std::memcpy(out + p + V, &a1, sizeof a1);
    std::memcpy(out + p + 2 * V, &a2, sizeof a2);
    std::memcpy(out + p + 3 * V, &a3, sizeof a3);
}

// out (oh x ow) (+)= the taps of w over the plane x (H x W), for one (image, filter) pair:
//     out[y, z] = [out[y, z] +] bias + sum_{i,j} w[i, j] * x[y*sh + i*dh - ph, z*sw + j*dw - pw]
// Stride 1: the columns where every tap reads inside the row are done V at a time with the V
// sums kept in registers (one load per tap, one store per V outputs); the few columns next to
// the padding, and other strides, go tap by tap.
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

template <typename T>
static void correlate_plane(const T* x, const T* w, T bias, T* out, bool accumulate,
                            const Shape& s) {
    correlate_rows<T>(x, w, bias, out, accumulate, s, 0, s.oh);
}

// "Same" geometry (stride 1, output the size of the input): every output row whose window rows
// are all inside the image is computed over the flat index p = y*W + z, one long vector loop
// per plane, tap offsets (i*dh - ph)*W + j*dw - pw. Near the left and right edges that reads
// the neighbouring row instead of padding, so those few columns are then redone exactly (and
// the top and bottom rows, whose windows leave the image, by correlate_plane's path). float32
// planes of the usual widths take correlate_plane_masked instead, which needs no redoing.
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
// Which hand-written loop below this CPU runs: 2 AVX-512, 1 AVX2 with FMA, 0 the portable one.
// MINICNN_GEMM_KERNEL=avx2|generic narrows it as it narrows the GEMM's micro-kernel, so the
// tests run every version on one machine.
static int simd_level() {
    const char* wanted = std::getenv("MINICNN_GEMM_KERNEL");
    const std::string choice = wanted ? wanted : "";
    __builtin_cpu_init();
    if ((choice.empty() || choice == "avx512") && __builtin_cpu_supports("avx512f")) return 2;
    if ((choice.empty() || choice == "avx512" || choice == "avx2") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
    return 0;
}

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
        auto chunks2 = [&](std::int64_t at, std::int64_t q, std::int64_t r) {
            const intv left0 = lanes(0, q), right0 = lanes(2, q);
            const intv left1 = lanes(0, r), right1 = lanes(2, r);
            floatv a0 = accumulate ? load_v(out + at) : start;
            floatv a1 = accumulate ? load_v(out + at + V) : start;
            for (std::int64_t i = 0; i < 3; ++i) {
                const float* src = x + at + off[3 * i];
                a0 += t[3 * i] * (floatv)((intv)load_v(src) & left0);
                a1 += t[3 * i] * (floatv)((intv)load_v(src + V) & left1);
                a0 += t[3 * i + 1] * load_v(src + d);
                a1 += t[3 * i + 1] * load_v(src + V + d);
                a0 += t[3 * i + 2] * (floatv)((intv)load_v(src + 2 * d) & right0);
                a1 += t[3 * i + 2] * (floatv)((intv)load_v(src + V + 2 * d) & right1);
            }
            std::memcpy(out + at, &a0, sizeof a0);
            std::memcpy(out + at + V, &a1, sizeof a1);
        };
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        static const int simd = simd_level();
        if (simd == 2 && period <= 16)
            p = dw3x3_masked_avx512(x, w, bias, out, accumulate, off, edge, period, p, p1, phase);
        else if (simd >= 1)
            p = dw3x3_masked_avx2(x, w, bias, out, accumulate, off, edge, period, p, p1, phase);
#endif
        for (; p + 2 * V <= p1; p += 2 * V) {
            const std::int64_t q = phase + 1 == period ? 0 : phase + 1;
            chunks2(p, phase, q);
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

template <typename T>
MINICNN_VECTOR_CLONES static void correlate_plane_flat(const T* __restrict x,
                                                       const T* __restrict w, T bias,
                                                       T* __restrict out, bool accumulate,
                                                       const Shape& s) {
    if constexpr (std::is_same_v<T, float>)
        if (correlate_plane_masked(x, w, bias, out, accumulate, s)) return;
    const std::int64_t taps = s.kh * s.kw, W = s.W;
    std::int64_t off[49];
    flat_offsets(s, off);
    // rows whose window rows all lie inside: [ylo, yhi); columns away from the edges:
    // [zlo, zhi). The flat loop starts zlo into row ylo and stops short of the last row's
    // right edge, so it never reads outside the plane.
    const std::int64_t ylo = std::min(s.H, s.ph);
    const std::int64_t yhi = std::max(ylo, s.H - ((s.kh - 1) * s.dh - s.ph));
    const std::int64_t zlo = std::min(W, s.pw);
    const std::int64_t zhi = std::max(zlo, W - ((s.kw - 1) * s.dw - s.pw));
    thread_local std::vector<T> saved;              // accumulate: the edges' values before
    if (accumulate && yhi > ylo) {
        saved.resize((yhi - ylo) * (zlo + W - zhi));
        T* keep = saved.data();
        for (std::int64_t y = ylo; y < yhi; ++y) {
            for (std::int64_t z = 0; z < zlo; ++z) *keep++ = out[y * W + z];
            for (std::int64_t z = zhi; z < W; ++z) *keep++ = out[y * W + z];
        }
    }
    const std::int64_t p1 = yhi > ylo ? yhi * W - (W - zhi) : 0;
    std::int64_t p = ylo * W + zlo;
    for (; p + 4 * V <= p1; p += 4 * V) flat_chunks4<T>(x, w, off, taps, p, bias, accumulate, out);
    for (; p + V <= p1; p += V) flat_chunk<T>(x, w, off, taps, p, bias, accumulate, out);
    for (; p < p1; ++p) {
        T acc = accumulate ? out[p] : bias;
        for (std::int64_t k = 0; k < taps; ++k) acc += w[k] * x[p + off[k]];
        out[p] = acc;
    }
    // now exactly: the edge columns of those rows (the flat loop read the neighbouring row
    // there), with their valid kernel columns worked out once per column ...
    thread_local std::vector<std::int64_t> edges;   // (z, first j, end j) per edge column
    edges.clear();
    for (std::int64_t z = 0; z < W; ++z) {
        if (z == zlo) z = zhi;                           // the middle is done
        if (z >= W) break;
        std::int64_t jlo = 0, jhi = s.kw;                 // taps j with 0 <= z + j*dw - pw < W
        while (jlo < s.kw && z + jlo * s.dw - s.pw < 0) ++jlo;
        while (jhi > jlo && z + (jhi - 1) * s.dw - s.pw >= W) --jhi;
        edges.insert(edges.end(), {z, jlo, jhi});
    }
    const T* keep = saved.data();
    for (std::int64_t y = ylo; y < yhi; ++y) {
        for (std::size_t e = 0; e < edges.size(); e += 3) {
            const std::int64_t z = edges[e], jlo = edges[e + 1], jhi = edges[e + 2];
            T acc = accumulate ? *keep++ : bias;
            for (std::int64_t i = 0; i < s.kh; ++i) {
                const T* row = x + (y + i * s.dh - s.ph) * W + z - s.pw;
                for (std::int64_t j = jlo; j < jhi; ++j) acc += w[i * s.kw + j] * row[j * s.dw];
            }
            out[y * W + z] = acc;
        }
    }
    // ... and the rows whose windows leave the image, row by row
    correlate_rows<T>(x, w, bias, out, accumulate, s, 0, ylo);
    correlate_rows<T>(x, w, bias, out, accumulate, s, yhi, s.H);
}

// dx plane += the adjoint of the forward for one filter, scattering tap by tap (any stride).
template <typename T>
MINICNN_VECTOR_CLONES static void backward_data_plane(const T* dy, const T* w, T* dx,
                                                      const Shape& s) {
    thread_local std::vector<std::int64_t> lo_of, hi_of;
    lo_of.resize(s.kw);
    hi_of.resize(s.kw);
    for (std::int64_t j = 0; j < s.kw; ++j)
        valid_range(s.W, s.sw, j * s.dw - s.pw, s.ow, lo_of[j], hi_of[j]);
    for (std::int64_t oy = 0; oy < s.oh; ++oy) {
        const T* g = dy + oy * s.ow;
        for (std::int64_t i = 0; i < s.kh; ++i) {
            const std::int64_t r = oy * s.sh + i * s.dh - s.ph;
            if (r < 0 || r >= s.H) continue;
            T* row = dx + r * s.W;
            for (std::int64_t j = 0; j < s.kw; ++j) {
                const std::int64_t off = j * s.dw - s.pw;
                const std::int64_t lo = lo_of[j], hi = hi_of[j];
                const T tap = w[i * s.kw + j];
                T* dst = row + off;
                for (std::int64_t z = lo; z < hi; ++z) dst[z * s.sw] += tap * g[z];
            }
        }
    }
}

// acc[i*kw + j] += sum_{y,z} dy[y, z] * x[y*sh + i*dh - ph, z*sw + j*dw - pw] for one plane;
// each tap sums into V lanes over the whole plane and reduces once.
template <typename T>
MINICNN_VECTOR_CLONES static void backward_filter_plane(const T* dy, const T* x, double* acc,
                                                        const Shape& s) {
    for (std::int64_t i = 0; i < s.kh; ++i) {
        for (std::int64_t j = 0; j < s.kw; ++j) {
            const std::int64_t off = j * s.dw - s.pw;
            std::int64_t lo, hi;
            valid_range(s.W, s.sw, off, s.ow, lo, hi);
            T lanes[V] = {};
            T rest = 0;
            for (std::int64_t oy = 0; oy < s.oh; ++oy) {
                const std::int64_t r = oy * s.sh + i * s.dh - s.ph;
                if (r < 0 || r >= s.H) continue;
                const T* g = dy + oy * s.ow;
                const T* src = x + r * s.W + off;
                std::int64_t z = lo;
                if (s.sw == 1) {
                    for (; z + V <= hi; z += V) {
#pragma omp simd
                        for (std::int64_t t = 0; t < V; ++t) lanes[t] += g[z + t] * src[z + t];
                    }
                }
                for (; z < hi; ++z) rest += g[z] * src[z * s.sw];
            }
            double total = rest;
            for (std::int64_t t = 0; t < V; ++t) total += lanes[t];
            acc[i * s.kw + j] += total;
        }
    }
}

// sums[k] += sum over whole V-chunks of p in [p0, p1) of g[p] * x[p + off[k]]; returns where
// the chunks stopped. float: one register of partial sums per tap.
template <typename T>
inline std::int64_t filter_flat_range(const T* g, const T* x, const std::int64_t* off,
                                      std::int64_t taps, std::int64_t p0, std::int64_t p1,
                                      double* sums) {
    std::int64_t p = p0;
    for (; p + V <= p1; p += V)
        for (std::int64_t k = 0; k < taps; ++k)
            for (std::int64_t t = 0; t < V; ++t) sums[k] += double(g[p + t]) * x[p + t + off[k]];
    return p;
}

template <>
inline std::int64_t filter_flat_range<float>(const float* g, const float* x,
                                             const std::int64_t* off, std::int64_t taps,
                                             std::int64_t p0, std::int64_t p1, double* sums) {
    floatv lanes[49];
    for (std::int64_t k = 0; k < taps; ++k) lanes[k] = floatv{};
    std::int64_t p = p0;
    if (taps == 9) {            // 3x3: nine sums that stay in registers
        floatv l0{}, l1{}, l2{}, l3{}, l4{}, l5{}, l6{}, l7{}, l8{};
        for (; p + V <= p1; p += V) {
            const floatv gv = load_v(g + p);
            const float* b = x + p;
            l0 += gv * load_v(b + off[0]), l1 += gv * load_v(b + off[1]);
            l2 += gv * load_v(b + off[2]), l3 += gv * load_v(b + off[3]);
            l4 += gv * load_v(b + off[4]), l5 += gv * load_v(b + off[5]);
            l6 += gv * load_v(b + off[6]), l7 += gv * load_v(b + off[7]);
            l8 += gv * load_v(b + off[8]);
        }
        lanes[0] = l0, lanes[1] = l1, lanes[2] = l2, lanes[3] = l3, lanes[4] = l4;
        lanes[5] = l5, lanes[6] = l6, lanes[7] = l7, lanes[8] = l8;
    }
    for (; p + V <= p1; p += V) {
        const floatv gv = load_v(g + p);
        for (std::int64_t k = 0; k < taps; ++k) lanes[k] += gv * load_v(x + p + off[k]);
    }
    for (std::int64_t k = 0; k < taps; ++k)
        for (std::int64_t t = 0; t < V; ++t) sums[k] += lanes[k][t];
    return p;
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

// The filter gradient of one plane for "same" geometry: the flat range of positions against
// every tap at once (one load of dy per V positions), with dy's edge columns masked to 0 there
// (the flat reads wrap into the next row), then the edge columns and the border rows exactly.
template <typename T>
MINICNN_VECTOR_CLONES static void backward_filter_plane_flat(const T* __restrict dy,
                                                             const T* __restrict x, double* acc,
                                                             const Shape& s) {
    if constexpr (std::is_same_v<T, float>)
        if (backward_filter_plane_masked(dy, x, acc, s)) return;
    const std::int64_t taps = s.kh * s.kw, W = s.W;
    std::int64_t off[49];
    flat_offsets(s, off);
    const std::int64_t ylo = std::min(s.H, s.ph);
    const std::int64_t yhi = std::max(ylo, s.H - ((s.kh - 1) * s.dh - s.ph));
    const std::int64_t zlo = std::min(W, s.pw);
    const std::int64_t zhi = std::max(zlo, W - ((s.kw - 1) * s.dw - s.pw));
    const std::int64_t p0 = ylo * W + zlo, p1 = yhi > ylo ? yhi * W - (W - zhi) : p0;
    thread_local std::vector<T> g;                   // dy with the edge columns zeroed
    g.assign(dy, dy + s.H * W);
    for (std::int64_t y = ylo; y < yhi; ++y) {
        for (std::int64_t z = 0; z < zlo; ++z) g[y * W + z] = 0;
        for (std::int64_t z = zhi; z < W; ++z) g[y * W + z] = 0;
    }
    double sums[49] = {};
    const std::int64_t p = filter_flat_range<T>(g.data(), x, off, taps, p0, p1, sums);
    for (std::int64_t q = p; q < p1; ++q)
        for (std::int64_t k = 0; k < taps; ++k) sums[k] += double(g[q]) * x[q + off[k]];
    for (std::int64_t k = 0; k < taps; ++k) acc[k] += sums[k];
    // exactly: the edge columns of the inner rows (their valid kernel columns found once) ...
    T edge[49] = {};
    for (std::int64_t z = 0; z < W; ++z) {
        if (z == zlo) z = zhi;
        if (z >= W) break;
        std::int64_t jlo = 0, jhi = s.kw;
        while (jlo < s.kw && z + jlo * s.dw - s.pw < 0) ++jlo;
        while (jhi > jlo && z + (jhi - 1) * s.dw - s.pw >= W) --jhi;
        for (std::int64_t y = ylo; y < yhi; ++y) {
            const T gy = dy[y * W + z];
            for (std::int64_t i = 0; i < s.kh; ++i) {
                const T* row = x + (y + i * s.dh - s.ph) * W + z - s.pw;
                for (std::int64_t j = jlo; j < jhi; ++j) edge[i * s.kw + j] += gy * row[j * s.dw];
            }
        }
    }
    // ... and the border rows, one dot product per (row, tap)
    filter_border_rows<T>(dy, x, s, ylo, yhi, edge);
    for (std::int64_t k = 0; k < taps; ++k) acc[k] += edge[k];
}

// --- strided filter gradient: the padded input split into its stride phases ------------------
// At stride (sh, sw), tap (i, j) of output (y, z) reads the zero-padded input at row
// y*sh + i*dh, column z*sw + j*dw. Phase (a, b) of the padded plane holds its rows a, a + sh, ...
// and columns b, b + sw, ...; the tap reads phase ((i*dh) % sh, (j*dw) % sw) at row
// y + (i*dh) / sh, column z + (j*dw) / sw. So once the plane is split (one pass), each tap's
// sum is a dot product of dy's rows with contiguous rows of one phase (backward_filter_plane
// gathers every sw-th value, and its vector loop is for stride 1 only). Measured on the Zen 3,
// one thread, MobileNet's stride-2 3x3 depthwise layers at batch 8: 64 channels at 112x112
// 14.2-14.3 -> 5.1-5.2 ms, 128 at 56x56 7.1-8.4 -> 4.0, 256 at 28x28 3.9 -> 3.7-3.8; with 7x7
// outputs (512 at 14x14) 2.5 -> 3.6, so rows shorter than PHASES_MIN_WIDTH stay with the
// gather. The
// forward and the input gradient measured no faster this way (the input gradient slower:
// spreading onto the phases costs a pass more than the scatter).
constexpr std::int64_t PHASES_MIN_WIDTH = 12;
struct Phases {
    std::int64_t rows, cols;          // of one phase: the outputs plus the taps' reach
    std::int64_t size() const { return rows * cols; }

    explicit Phases(const Shape& s)
        : rows(s.oh + (s.kh - 1) * s.dh / s.sh), cols(s.ow + (s.kw - 1) * s.dw / s.sw) {}

    // Where tap (i, j) of output (0, 0) reads, as an offset into the phases' array.
    std::int64_t tap(const Shape& s, std::int64_t i, std::int64_t j) const {
        const std::int64_t a = i * s.dh % s.sh, b = j * s.dw % s.sw;
        return (a * s.sw + b) * size() + i * s.dh / s.sh * cols + j * s.dw / s.sw;
    }
};

// phases[(a*sw + b)][r][c] <- the padded plane at (r*sh + a, c*sw + b) (0 in the padding).
template <typename T>
MINICNN_VECTOR_CLONES static void split_phases(const T* __restrict x, const Shape& s,
                                               const Phases& ph, T* __restrict phases) {
    for (std::int64_t a = 0; a < s.sh; ++a)
        for (std::int64_t b = 0; b < s.sw; ++b) {
            std::int64_t lo, hi;                      // phase columns inside the image
            valid_range(s.W, s.sw, b - s.pw, ph.cols, lo, hi);
            T* dst = phases + (a * s.sw + b) * ph.size();
            for (std::int64_t r = 0; r < ph.rows; ++r, dst += ph.cols) {
                const std::int64_t xr = r * s.sh + a - s.ph;
                if (xr < 0 || xr >= s.H || hi <= lo) {
                    std::fill(dst, dst + ph.cols, T(0));
                    continue;
                }
                const T* src = x + xr * s.W + b - s.pw;
                std::fill(dst, dst + lo, T(0));
                if (s.sw == 2) {                          // (a constant stride vectorizes)
                    for (std::int64_t c = lo; c < hi; ++c) dst[c] = src[2 * c];
                } else {
                    for (std::int64_t c = lo; c < hi; ++c) dst[c] = src[c * s.sw];
                }
                std::fill(dst + hi, dst + ph.cols, T(0));
            }
        }
}

// acc[i*kw + j] += sum_{y,z} dy[y, z] * (tap (i, j)'s window on the split plane), a row's
// products summed in T, the rows in double.
template <typename T>
MINICNN_VECTOR_CLONES static void filter_phases(const T* __restrict dy,
                                                const T* __restrict phases, double* acc,
                                                const Shape& s, const Phases& ph) {
    for (std::int64_t i = 0; i < s.kh; ++i)
        for (std::int64_t j = 0; j < s.kw; ++j) {
            const T* src = phases + ph.tap(s, i, j);
            double total = 0;
            for (std::int64_t oy = 0; oy < s.oh; ++oy) {
                const T* g = dy + oy * s.ow;
                const T* in = src + oy * ph.cols;
                T dot = 0;
#pragma omp simd reduction(+ : dot)
                for (std::int64_t z = 0; z < s.ow; ++z) dot += g[z] * in[z];
                total += dot;
            }
            acc[i * s.kw + j] += total;
        }
}

inline bool strided(const Shape& s) { return s.sh > 1 || s.sw > 1; }

template <typename T>
static void depthwise_forward(const T* x, const T* w, const T* b, T* y, const Shape& s) {
    const std::int64_t m = s.F / s.C;
#pragma omp parallel for collapse(2) schedule(static) \
    if (s.N * s.F * s.oh * s.ow * s.kh * s.kw > PARALLEL_WORK)
    for (std::int64_t n = 0; n < s.N; ++n) {
        for (std::int64_t f = 0; f < s.F; ++f) {
            const T* in = x + (n * s.C + f / m) * s.H * s.W;
            T* out = y + (n * s.F + f) * s.oh * s.ow;
            if (same_geometry(s))
                correlate_plane_flat<T>(in, w + f * s.kh * s.kw, b ? b[f] : T(0), out, false, s);
            else
                correlate_plane<T>(in, w + f * s.kh * s.kw, b ? b[f] : T(0), out, false, s);
        }
    }
}

// Stride 1: dx is a correlation of dy with the flipped kernel, padded by (k - 1)*d - p, so the
// register-blocked forward does it (the filters of one channel accumulate). Otherwise scatter.
template <typename T>
static void depthwise_backward_data(const T* dy, const T* w, T* dx, const Shape& s) {
    const std::int64_t m = s.F / s.C, taps = s.kh * s.kw;
    const bool flip = s.sh == 1 && s.sw == 1;
    Shape t = s;                                    // the flipped problem: dy in, dx out
    t.H = s.oh, t.W = s.ow, t.oh = s.H, t.ow = s.W;
    t.ph = (s.kh - 1) * s.dh - s.ph, t.pw = (s.kw - 1) * s.dw - s.pw;
    std::vector<T> flipped(flip ? s.F * taps : 0);
    for (std::int64_t f = 0; flip && f < s.F; ++f)
        for (std::int64_t k = 0; k < taps; ++k) flipped[f * taps + k] = w[f * taps + taps - 1 - k];
#pragma omp parallel for collapse(2) schedule(static) \
    if (s.N * s.F * s.oh * s.ow * s.kh * s.kw > PARALLEL_WORK)
    for (std::int64_t n = 0; n < s.N; ++n) {
        for (std::int64_t c = 0; c < s.C; ++c) {
            T* plane = dx + (n * s.C + c) * s.H * s.W;
            if (!flip) std::memset(plane, 0, sizeof(T) * s.H * s.W);
            for (std::int64_t f = c * m; f < (c + 1) * m; ++f) {
                const T* g = dy + (n * s.F + f) * s.oh * s.ow;
                if (flip && same_geometry(t))
                    correlate_plane_flat<T>(g, flipped.data() + f * taps, T(0), plane, f > c * m,
                                            t);
                else if (flip)
                    correlate_plane<T>(g, flipped.data() + f * taps, T(0), plane, f > c * m, t);
                else
                    backward_data_plane<T>(g, w + f * taps, plane, s);
            }
        }
    }
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
template <typename T>
static void depthwise_backward_filter(const T* dy, const T* x, T* dw, T* db, const Shape& s) {
    const std::int64_t m = s.F / s.C, taps = s.kh * s.kw, P = s.oh * s.ow;
#pragma omp parallel for schedule(static) \
    if (s.N * s.F * s.oh * s.ow * s.kh * s.kw > PARALLEL_WORK)
    for (std::int64_t f = 0; f < s.F; ++f) {
        std::vector<double> acc(taps, 0.0);
        double bias_total = 0;
        const bool flat = same_geometry(s);
        const Phases ph(s);
        for (std::int64_t n = 0; n < s.N; ++n) {
            const T* g = dy + (n * s.F + f) * P;
            const T* in = x + (n * s.C + f / m) * s.H * s.W;
            if (flat) {
                backward_filter_plane_flat<T>(g, in, acc.data(), s);
            } else if (strided(s) && s.ow >= PHASES_MIN_WIDTH) {
                thread_local std::vector<T> phases;
                phases.resize(s.sh * s.sw * ph.size());
                split_phases<T>(in, s, ph, phases.data());
                filter_phases<T>(g, phases.data(), acc.data(), s, ph);
            } else {
                backward_filter_plane<T>(g, in, acc.data(), s);
            }
            if (db) bias_total += plane_sum<T>(g, P);
        }
        for (std::int64_t t = 0; t < taps; ++t) dw[f * taps + t] = T(acc[t]);
        if (db) db[f] = T(bias_total);
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
            py::gil_scoped_release release;
            depthwise_backward_filter<T>(g, xs, out, bias, s);
        });
    }, "dw (F, 1, kh, kw) <- d(loss)/dw of the depthwise convolution, from dy and x; db (F,) "
       "<- the sums of dy per filter too, unless None");
}

}  // namespace minicnn
