// MAX and AVE pooling (minicnn/ops/pool.py), Caffe's window rules, one (image, channel) plane
// per task. Window (y, z) covers rows y*sh - ph .. +kh and columns z*sw - pw .. +kw, clipped to
// the image; the AVE divisor counts padding but not the overhang past it (computed before
// clipping). A window with no pixel of the image gives MAX -FLT_MAX with mask -1 and AVE 0,
// exactly as the reference does.
#include <algorithm>
#include <cfloat>
#include <cstring>

#include "common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MINICNN_POOL_X86 1
#endif

namespace minicnn {

namespace {

struct Window {
    std::int64_t H, W, oh, ow, kh, kw, sh, sw, ph, pw;
};

Window window_of(const py::array& x, const py::array& y, const py::tuple& geom) {
    require(geom.size() == 6, "pool geometry must be (kh, kw, sh, sw, ph, pw)");
    require(x.ndim() == 4 && y.ndim() == 4 && x.shape(0) == y.shape(0) &&
                x.shape(1) == y.shape(1), "pool: x and y must be (N, C, ...) of one N and C");
    Window w{x.shape(2), x.shape(3), y.shape(2), y.shape(3),
             geom[0].cast<std::int64_t>(), geom[1].cast<std::int64_t>(),
             geom[2].cast<std::int64_t>(), geom[3].cast<std::int64_t>(),
             geom[4].cast<std::int64_t>(), geom[5].cast<std::int64_t>()};
    require(w.kh >= 1 && w.kw >= 1 && w.sh >= 1 && w.sw >= 1 && w.ph >= 0 && w.pw >= 0,
            "pool: invalid geometry");
    return w;
}

}  // namespace

#ifdef MINICNN_POOL_X86
// Float windows of one output row, 16 at a time (the last group masked) from oz to hi (the
// windows whose columns all lie inside the image), at a stride of 1 or 2 along the row: a
// tap's inputs are one vector load, or two and a permutation picking the even lanes, loading
// no value past the last window's. Same rule and order as the loop below (the taps row by row;
// strictly larger replaces, so the first maximum wins and NaN never does).
__attribute__((target("avx512f"))) static void max_row16_avx512(
        const float* in, const Window& g, std::int64_t h0, std::int64_t h1, std::int64_t oz,
        std::int64_t hi, float* out, std::int64_t* arg) {
    // Prefetch the input rows two output rows on (past the plane's end: the next plane's first
    // rows). CaffeNet's pool1 reading its 19 MB from memory: 2.25 -> 0.84 ms; the hardware
    // prefetcher alone did not keep up. (Past the array's end a prefetch does not fault.)
    for (std::int64_t at = (h1 + 2 * g.sh) * g.W, end = (h1 + 3 * g.sh) * g.W; at < end; at += 16)
        _mm_prefetch(reinterpret_cast<const char*>(in + at), _MM_HINT_T0);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(static_cast<int>(g.sw)));
    auto low_bits = [](std::int64_t n) {            // a mask of the first n lanes (n <= 16)
        return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << std::max<std::int64_t>(n, 0)) - 1);
    };
    for (; oz < hi; oz += 16) {
        const std::int64_t n = std::min<std::int64_t>(16, hi - oz);
        const std::int64_t reach = (n - 1) * g.sw + 1;      // values a tap reads for n windows
        const __mmask16 first16 = low_bits(reach), next16 = low_bits(reach - 16);
        __m512 best = _mm512_set1_ps(-FLT_MAX);
        __m512i where = _mm512_set1_epi32(-1);
        for (std::int64_t h = h0; h < h1; ++h)
            for (std::int64_t j = 0; j < g.kw; ++j) {
                const std::int64_t first = h * g.W + j - g.pw + oz * g.sw;
                const __m512 a = _mm512_maskz_loadu_ps(first16, in + first);
                const __m512 v = g.sw == 1 ? a : _mm512_permutex2var_ps(
                    a, step, _mm512_maskz_loadu_ps(next16, in + first + 16));
                const __mmask16 larger = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
                best = _mm512_mask_mov_ps(best, larger, v);
                where = _mm512_mask_mov_epi32(
                    where, larger, _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first)),
                                                    step));
            }
        _mm512_mask_storeu_ps(out + oz, low_bits(n), best);
        _mm512_mask_storeu_epi64(arg + oz, static_cast<__mmask8>(low_bits(n)),
                                 _mm512_cvtepi32_epi64(_mm512_castsi512_si256(where)));
        _mm512_mask_storeu_epi64(arg + oz + 8, static_cast<__mmask8>(low_bits(n - 8)),
                                 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(where, 1)));
    }
}

// The same with 8 windows a vector (AVX2): at a stride of 2 a tap's 8 inputs are the even
// lanes of two loads. Masked loads read nothing past the last window's values; whole vectors
// are stored plainly (AMD's masked stores are microcoded: with them every row took 1.5x as
// long). V vectors side by side, for as many independent compare-and-select chains (each
// waits on its compare and blend at every tap). ResNet-50's pool1 at batch 8, one thread,
// alternated in one process: the scalar loop below 8.36 ms, one vector 4.89, two 4.57.
__attribute__((target("avx2"))) static inline __m256i first_lanes(std::int64_t n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);   // lanes 0 .. n - 1 set
    return _mm256_cmpgt_epi32(
        _mm256_set1_epi32(static_cast<int>(std::clamp<std::int64_t>(n, 0, 8))), lanes);
}
// windows oz .. oz + n - 1 (n <= 8 V) of the row whose window rows are h0 .. h1 - 1
template <int V>
__attribute__((target("avx2"))) static inline void max_windows8(
        const float* in, const Window& g, std::int64_t h0, std::int64_t h1, std::int64_t oz,
        std::int64_t n, float* out, std::int64_t* arg) {
    const __m256i step = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                            _mm256_set1_epi32(static_cast<int>(g.sw)));
    __m256 best[V];
    __m256i where[V], first8[V], next8[V];
    for (int v = 0; v < V; ++v) {
        const std::int64_t reach = (std::min<std::int64_t>(8, n - 8 * v) - 1) * g.sw + 1;
        first8[v] = first_lanes(reach);                     // the values a tap reads
        next8[v] = first_lanes(reach - 8);
        best[v] = _mm256_set1_ps(-FLT_MAX);
        where[v] = _mm256_set1_epi32(-1);
    }
    for (std::int64_t h = h0; h < h1; ++h)
        for (std::int64_t j = 0; j < g.kw; ++j) {
            const std::int64_t first = h * g.W + j - g.pw + oz * g.sw;
            const __m256i at = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first)), step);
            for (int v = 0; v < V; ++v) {
                const float* src = in + first + 8 * v * g.sw;
                __m256 x = _mm256_maskload_ps(src, first8[v]);
                if (g.sw == 2) {          // a0 a2 b0 b2 | a4 a6 b4 b6, then the middle swapped
                    const __m256 b = _mm256_maskload_ps(src + 8, next8[v]);
                    x = _mm256_castpd_ps(_mm256_permute4x64_pd(
                        _mm256_castps_pd(_mm256_shuffle_ps(x, b, 0x88)), 0xD8));
                }
                const __m256 larger = _mm256_cmp_ps(x, best[v], _CMP_GT_OQ);
                best[v] = _mm256_blendv_ps(best[v], x, larger);
                const __m256i at_v =
                    _mm256_add_epi32(at, _mm256_set1_epi32(static_cast<int>(8 * v * g.sw)));
                where[v] = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(where[v]), _mm256_castsi256_ps(at_v), larger));
            }
        }
    for (int v = 0; v < V; ++v) {
        const std::int64_t o = oz + 8 * v;
        if (n - 8 * v >= 8) {                         // a whole vector
            _mm256_storeu_ps(out + o, best[v]);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg + o),
                                _mm256_cvtepi32_epi64(_mm256_castsi256_si128(where[v])));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg + o + 4),
                                _mm256_cvtepi32_epi64(_mm256_extracti128_si256(where[v], 1)));
            continue;
        }
        const __m256i keep = first_lanes(n - 8 * v);
        _mm256_maskstore_ps(out + o, keep, best[v]);
        _mm256_maskstore_epi64(reinterpret_cast<long long*>(arg + o),
                               _mm256_cvtepi32_epi64(_mm256_castsi256_si128(keep)),
                               _mm256_cvtepi32_epi64(_mm256_castsi256_si128(where[v])));
        _mm256_maskstore_epi64(reinterpret_cast<long long*>(arg + o + 4),
                               _mm256_cvtepi32_epi64(_mm256_extracti128_si256(keep, 1)),
                               _mm256_cvtepi32_epi64(_mm256_extracti128_si256(where[v], 1)));
    }
}
__attribute__((target("avx2"))) static void max_row8_avx2(
        const float* in, const Window& g, std::int64_t h0, std::int64_t h1, std::int64_t oz,
        std::int64_t hi, float* out, std::int64_t* arg) {
    for (std::int64_t at = (h1 + 2 * g.sh) * g.W, end = (h1 + 3 * g.sh) * g.W; at < end; at += 16)
        _mm_prefetch(reinterpret_cast<const char*>(in + at), _MM_HINT_T0);
    for (; oz + 16 <= hi; oz += 16) max_windows8<2>(in, g, h0, h1, oz, 16, out, arg);
    for (; oz < hi; oz += 8)
        max_windows8<1>(in, g, h0, h1, oz, std::min<std::int64_t>(8, hi - oz), out, arg);
}
#endif

// The windows [lo, hi) of a row the vector loop above took: returns hi, or lo where it does not
// run (then the loop below takes them four at a time).
template <typename T>
static std::int64_t max_row_fast(const T*, const Window&, std::int64_t, std::int64_t,
                                 std::int64_t lo, std::int64_t, T*, std::int64_t*) {
    return lo;
}
template <>
std::int64_t max_row_fast<float>(const float* in, const Window& g, std::int64_t h0,
                                 std::int64_t h1, std::int64_t lo, std::int64_t hi, float* out,
                                 std::int64_t* arg) {
#ifdef MINICNN_POOL_X86
    // simd_level (csrc/simd_level.h): MINICNN_GEMM_KERNEL picks the AVX2 or the scalar loop
    if (simd_level() == 2 && (g.sw == 1 || g.sw == 2) && g.H * g.W < (std::int64_t(1) << 31)) {
        max_row16_avx512(in, g, h0, h1, lo, hi, out, arg);
        return hi;
    }
    if (simd_level() == 1 && (g.sw == 1 || g.sw == 2) && g.H * g.W < (std::int64_t(1) << 31)) {
        max_row8_avx2(in, g, h0, h1, lo, hi, out, arg);
        return hi;
    }
#endif
    (void)in, (void)g, (void)h0, (void)h1, (void)hi, (void)out, (void)arg;
    return lo;
}

template <typename T>
static void max_forward(const T* x, T* y, std::int64_t* mask, std::int64_t planes,
                        const Window& g) {
    // Windows whose columns are all inside the image: [lo, hi). Float rows at a stride of 1
    // or 2 go 16 at a time through AVX-512 (max_row_fast: CaffeNet's pool1 on 2 cores 2.0 ->
    // 0.8 ms, pool2 1.3 -> 0.55, ResNet-50's pool1 at batch 8 2.9 -> 1.3), or 8 at a time
    // through AVX2 (max_row8_avx2). Otherwise they are
    // taken four at a time, tap by tap in the window's order (rows, then columns), so each
    // window still keeps the first maximum, and four compare-and-select chains interleave
    // instead of each window's taps waiting on the one before (pool1: 2.9 -> 2.1 ms; 8 at a
    // time 2.2 ms, 16 at a time 2.9 ms in scalar code).
    const std::int64_t lo = std::min(g.ow, (g.pw + g.sw - 1) / g.sw);
    const std::int64_t hi = std::max(lo, std::min(g.ow, g.W + g.pw - g.kw >= 0
                                                            ? (g.W + g.pw - g.kw) / g.sw + 1
                                                            : 0));
#pragma omp parallel for schedule(static) if (planes * g.oh * g.ow * g.kh * g.kw > PARALLEL_WORK)
    for (std::int64_t p = 0; p < planes; ++p) {
        const T* in = x + p * g.H * g.W;
        for (std::int64_t oy = 0; oy < g.oh; ++oy) {
            T* out = y + (p * g.oh + oy) * g.ow;
            std::int64_t* arg = mask + (p * g.oh + oy) * g.ow;
            const std::int64_t h0 = std::max<std::int64_t>(oy * g.sh - g.ph, 0);
            const std::int64_t h1 = std::min(oy * g.sh - g.ph + g.kh, g.H);
            constexpr std::int64_t B = 4;               // windows at a time
            const std::int64_t from = max_row_fast<T>(in, g, h0, h1, lo, hi, out, arg);
            const std::int64_t end = from + (hi - from) / B * B;
            for (std::int64_t oz0 = from; oz0 < end; oz0 += B) {
                T best[B];
                std::int64_t where[B];
                for (int u = 0; u < B; ++u) best[u] = T(-FLT_MAX), where[u] = -1;
                for (std::int64_t h = h0; h < h1; ++h)
                    for (std::int64_t j = 0; j < g.kw; ++j) {
                        const std::int64_t first = h * g.W + j - g.pw + oz0 * g.sw;
                        for (int u = 0; u < B; ++u) {
                            const std::int64_t at = first + u * g.sw;
                            const T v = in[at];
                            const bool larger = v > best[u];    // strict: the first maximum wins
                            best[u] = larger ? v : best[u];
                            where[u] = larger ? at : where[u];
                        }
                    }
                for (int u = 0; u < B; ++u) out[oz0 + u] = best[u], arg[oz0 + u] = where[u];
            }
            // the windows clipped at the sides, and those left over from the groups of four
            auto one = [&](std::int64_t oz) {
                const std::int64_t w0 = std::max<std::int64_t>(oz * g.sw - g.pw, 0);
                const std::int64_t w1 = std::min(oz * g.sw - g.pw + g.kw, g.W);
                T best = T(-FLT_MAX);
                std::int64_t where = -1;
                for (std::int64_t h = h0; h < h1; ++h)
                    for (std::int64_t w = w0; w < w1; ++w)
                        if (in[h * g.W + w] > best) {
                            best = in[h * g.W + w];
                            where = h * g.W + w;
                        }
                out[oz] = best;
                arg[oz] = where;
            };
            for (std::int64_t oz = 0; oz < lo; ++oz) one(oz);
            for (std::int64_t oz = end; oz < g.ow; ++oz) one(oz);
        }
    }
}

// Returns false (dx then undefined) when a mask entry lies past its plane; checked plane by
// plane as it goes, in the threads, rather than in a serial pass over the whole mask first.
template <typename T>
static bool max_backward(const T* dy, const std::int64_t* mask, T* dx, std::int64_t planes,
                         std::int64_t in_size, std::int64_t out_size) {
    bool in_range = true;
#pragma omp parallel for schedule(static) reduction(&& : in_range) \
    if (planes * (in_size + out_size) > PARALLEL_WORK)
    for (std::int64_t p = 0; p < planes; ++p) {
        T* plane = dx + p * in_size;
        std::memset(plane, 0, sizeof(T) * in_size);
        const T* g = dy + p * out_size;
        const std::int64_t* arg = mask + p * out_size;
        bool ok = true;
        for (std::int64_t i = 0; i < out_size; ++i) ok &= arg[i] < in_size;
        if (!ok) {
            in_range = false;
            continue;
        }
        for (std::int64_t i = 0; i < out_size; ++i)
            if (arg[i] >= 0) plane[arg[i]] += g[i];
    }
    return in_range;
}

// The divisor of window (oy, oz), as Caffe's pool_size: before clipping to the image.
inline std::int64_t ave_divisor(const Window& g, std::int64_t oy, std::int64_t oz) {
    const std::int64_t h0 = oy * g.sh - g.ph, w0 = oz * g.sw - g.pw;
    const std::int64_t size = (std::min(h0 + g.kh, g.H + g.ph) - h0) *
                              (std::min(w0 + g.kw, g.W + g.pw) - w0);
    return size > 0 ? size : 1;        // <= 0 only for a window wholly outside: its sum is 0
}

template <typename T>
static void ave_forward(const T* x, T* y, std::int64_t planes, const Window& g) {
#pragma omp parallel for schedule(static) if (planes * g.oh * g.ow * g.kh * g.kw > PARALLEL_WORK)
    for (std::int64_t p = 0; p < planes; ++p) {
        const T* in = x + p * g.H * g.W;
        T* out = y + p * g.oh * g.ow;
        for (std::int64_t oy = 0; oy < g.oh; ++oy) {
            const std::int64_t h0 = std::max<std::int64_t>(oy * g.sh - g.ph, 0);
            const std::int64_t h1 = std::min(oy * g.sh - g.ph + g.kh, g.H);
            for (std::int64_t oz = 0; oz < g.ow; ++oz) {
                const std::int64_t w0 = std::max<std::int64_t>(oz * g.sw - g.pw, 0);
                const std::int64_t w1 = std::min(oz * g.sw - g.pw + g.kw, g.W);
                T total = 0;                           // tap order as the reference: rows, then
                for (std::int64_t h = h0; h < h1; ++h)  // columns of the window
                    for (std::int64_t w = w0; w < w1; ++w) total += in[h * g.W + w];
                out[oy * g.ow + oz] = total / T(ave_divisor(g, oy, oz));
            }
        }
    }
}

template <typename T>
static void ave_backward(const T* dy, T* dx, std::int64_t planes, const Window& g) {
#pragma omp parallel for schedule(static) if (planes * g.oh * g.ow * g.kh * g.kw > PARALLEL_WORK)
    for (std::int64_t p = 0; p < planes; ++p) {
        T* plane = dx + p * g.H * g.W;
        std::memset(plane, 0, sizeof(T) * g.H * g.W);
        const T* grad = dy + p * g.oh * g.ow;
        for (std::int64_t oy = 0; oy < g.oh; ++oy) {
            const std::int64_t h0 = std::max<std::int64_t>(oy * g.sh - g.ph, 0);
            const std::int64_t h1 = std::min(oy * g.sh - g.ph + g.kh, g.H);
            for (std::int64_t oz = 0; oz < g.ow; ++oz) {
                const std::int64_t w0 = std::max<std::int64_t>(oz * g.sw - g.pw, 0);
                const std::int64_t w1 = std::min(oz * g.sw - g.pw + g.kw, g.W);
                const T share = grad[oy * g.ow + oz] / T(ave_divisor(g, oy, oz));
                for (std::int64_t h = h0; h < h1; ++h)
                    for (std::int64_t w = w0; w < w1; ++w) plane[h * g.W + w] += share;
            }
        }
    }
}

REGISTER_NATIVE(m) {
    m.def("max_pool_forward", [](const py::array& x, py::array& y, py::array& mask,
                                 const py::tuple& geom) {
        const Window g = window_of(x, y, geom);
        require(mask.ndim() == 4 && mask.size() == y.size(), "max_pool_forward: mask shape");
        std::int64_t* arg = out_ptr<std::int64_t>(mask, "mask");
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(y, "y");
            Release release;
            max_forward<T>(in, out, arg, x.shape(0) * x.shape(1), g);
        });
    }, "y, mask (int64 h*W + w, or -1) <- MAX pooling of x; geom = (kh, kw, sh, sw, ph, pw)");
    m.def("max_pool_backward", [](const py::array& dy, const py::array& mask, py::array& dx) {
        require(dy.ndim() == 4 && dx.ndim() == 4 && mask.size() == dy.size() &&
                    dy.shape(0) == dx.shape(0) && dy.shape(1) == dx.shape(1),
                "max_pool_backward: shapes do not match");
        const std::int64_t* arg = in_ptr<std::int64_t>(mask, "mask");
        const std::int64_t in_size = dx.shape(2) * dx.shape(3), out_size = dy.shape(2) * dy.shape(3);
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T* g = in_ptr<T>(dy, "dy");
            T* out = out_ptr<T>(dx, "dx");
            const std::int64_t planes = dy.shape(0) * dy.shape(1);
            bool in_range;
            {
                Release release;
                in_range = max_backward<T>(g, arg, out, planes, in_size, out_size);
            }
            require(in_range, "max_pool_backward: mask index out of range");
        });
    }, "dx <- each dy added at its window's argmax (mask)");
    m.def("ave_pool_forward", [](const py::array& x, py::array& y, const py::tuple& geom) {
        const Window g = window_of(x, y, geom);
        by_dtype(x, [&](auto tag) {
            using T = decltype(tag);
            const T* in = in_ptr<T>(x, "x");
            T* out = out_ptr<T>(y, "y");
            Release release;
            ave_forward<T>(in, out, x.shape(0) * x.shape(1), g);
        });
    }, "y <- AVE pooling of x; geom = (kh, kw, sh, sw, ph, pw)");
    m.def("ave_pool_backward", [](const py::array& dy, py::array& dx, const py::tuple& geom) {
        const Window g = window_of(dx, dy, geom);
        by_dtype(dy, [&](auto tag) {
            using T = decltype(tag);
            const T* grad = in_ptr<T>(dy, "dy");
            T* out = out_ptr<T>(dx, "dx");
            Release release;
            ave_backward<T>(grad, out, dx.shape(0) * dx.shape(1), g);
        });
    }, "dx <- dy / divisor spread over each window's pixels");
}

}  // namespace minicnn
