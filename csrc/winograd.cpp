// Stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (and F(2x2, 5x5), below:
// the same tiles with 6x6 input windows), float32, forward,
// input gradient and filter gradient (Lavin & Gray 2015, "Fast Algorithms for Convolutional
// Neural Networks"; cuDNN's and NNPACK's WINOGRAD algorithms).
//
// Cut the output into 2x2 tiles; tile t reads a 4x4 window d_t of the (zero-padded) input.
// With the constant matrices
//
//     B^T = [1  0 -1  0]      G = [ 1    0    0 ]      A^T = [1  1  1  0]
//           [0  1  1  0]          [1/2  1/2  1/2]            [0  1 -1 -1]
//           [0 -1  1  0]          [1/2 -1/2  1/2]
//           [0  1  0 -1]          [ 0    0    1 ]
//
// the 2x2 outputs of filter f are  y_t[f] = A^T ( sum_c (G w[f,c] G^T) . (B^T d_t[c] B) ) A,
// where . multiplies elementwise. Each of the 16 elements e of the 4x4 products is a matrix
// product over the channels:
//
//     M_e (tiles x F)  =  V_e (tiles x C)  *  U_e (C x F)
//     V_e[t][c] = (B^T d_t[c] B)_e      U_e[c][f] = (G w[f,c] G^T)_e
//
// 16 products of tiles x C x F multiply-adds where the direct convolution does 4 * 9 per tile:
// 2.25 times fewer (less the tiles hanging past an odd-sized map: 0.52 of the direct work on
// 13x13, 0.44 on 14x14 or 56x56). The backward passes are the adjoints of the same linear map:
//
//     input gradient   D_e = (A dy_t A^T)_e        dV_e = D_e * U_e^T      dd_t = B dV_t B^T
//     filter gradient  dU_e = V_e^T * D_e          dw[f,c] += G^T dU[c,f] G
//
// (dd_t added onto the input window t read). The transforms only add and halve, so the sums
// differ from the direct product's by a few float32 roundings (the tests hold every pass to
// the NumPy reference); MINICNN_CONV_WINOGRAD=0 turns the algorithm off (minicnn/ops/conv.py
// decides where it runs). The products run on minicnn's micro-kernels (csrc/gemm.h): the
// forward and the input gradient a block of tiles at a time, transformed straight into the
// micro-kernel's panels; the filter gradient, whose inner dimension is the tiles, on the
// transformed tiles of a chunk of images at a time.
#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "gemm.h"

namespace minicnn {

namespace {

// A 5x5 kernel (CaffeNet's conv2) has its own transforms, F(2x2, 5x5): 6x6 input windows, 36
// products per 2x2 tile instead of 100 (below, after F(2x2, 3x3)'s). Any other kernel
// (kh x kw) is cut into 3x3 pieces, piece (p, q) holding taps 3p .. 3p+2 and 3q .. 3q+2 (zeros
// past the kernel's edge): piece s = p * pieces_w + q is a 3x3 convolution of the input
// shifted by (3p, 3q), and all of them add up. So each piece of each channel is one more
// "channel" of a 3x3 Winograd convolution, kg = pieces * C/G of them a group, its tiles read at
// the piece's shift: 7x7 is 9 pieces, 144 products per 2x2 tile instead of 196.
struct Wino {
    std::int64_t N, C, H, W, F, G, kh, kw, ph, pw, oh, ow;
    bool five() const { return kh == 5 && kw == 5; }        // F(2x2, 5x5)
    std::int64_t alpha() const { return five() ? 6 : 4; }   // a tile's input window, a side
    std::int64_t E() const { return alpha() * alpha(); }    // the products: one per element
    std::int64_t th() const { return (oh + 1) / 2; }        // tile rows and columns
    std::int64_t tw() const { return (ow + 1) / 2; }
    std::int64_t tiles() const { return N * th() * tw(); }  // T: every image's tiles
    std::int64_t cg() const { return C / G; }
    std::int64_t fg() const { return F / G; }
    std::int64_t pieces_w() const { return five() ? 1 : (kw + 2) / 3; }
    std::int64_t pieces() const { return five() ? 1 : (kh + 2) / 3 * pieces_w(); }
    std::int64_t kg() const { return pieces() * cg(); }     // the products' channels a group
    // channel k of a group: channel k % cg of piece k / cg, read from (row, column) + shift
    std::int64_t shift_h(std::int64_t k) const { return 3 * (k / cg() / pieces_w()); }
    std::int64_t shift_w(std::int64_t k) const { return 3 * (k / cg() % pieces_w()); }
};

// Scratch kept between calls (the calling thread's own: the GIL is released while we run).
float* buffer(int slot, std::int64_t floats) {
    thread_local std::vector<float> slots[4];
    std::vector<float>& v = slots[slot];
    if (static_cast<std::int64_t>(v.size()) < floats) v.assign(floats, 0.0f);
    return v.data();
}

// --- the forward and the input gradient, a block of tiles at a time ---------------------------
//
// The products run with the tiles as their columns: a block of nr tiles (the micro-kernel's
// width) is transformed straight into one B panel per element, Bp[e][k][nr] (k a channel, or a
// filter for the input gradient), which stays in the cache while every MR-row panel of the
// transformed filters (packed once per call) runs against it into Cb[e][MR][nr]; the MR rows
// of the 16 elements are then turned back into outputs (or input gradients) at once. Nothing
// the size of the whole tensor is ever stored.

// Tiles (n, a, b0 .. b1-1) of one tile row, at columns j .. of their block.
struct Segment {
    std::int64_t n, a, b0, b1, j;
};

void segments_of(const Wino& w, std::int64_t t0, std::int64_t nt, std::vector<Segment>& out) {
    out.clear();
    const std::int64_t th = w.th(), tw = w.tw();
    for (std::int64_t t = t0; t < t0 + nt;) {
        const std::int64_t n = t / (th * tw), a = (t / tw) % th, b = t % tw;
        const std::int64_t len = std::min(tw - b, t0 + nt - t);
        out.push_back({n, a, b, b + len, t - t0});
        t += len;
    }
}

// ``width`` values of image row r from column s0 (zeros outside the image) into dst.
inline void read_row(const float* plane, std::int64_t H, std::int64_t W, std::int64_t r,
                     std::int64_t s0, std::int64_t width, float* dst) {
    std::fill(dst, dst + width, 0.0f);
    if (r < 0 || r >= H) return;
    const std::int64_t lo = std::max<std::int64_t>(0, -s0), hi = std::min(width, W - s0);
    if (hi > lo) std::memcpy(dst + lo, plane + r * W + s0 + lo, sizeof(float) * (hi - lo));
}

// B^T d B of ``len`` tiles side by side: rows holds their 4 input rows (2 len + 2 values each,
// row stride ld); element e of tile b goes to out[e * lde + b].
MINICNN_VECTOR_CLONES static void input_tiles(const float* __restrict rows, std::int64_t ld,
                                              std::int64_t len, float* __restrict t,
                                              float* __restrict out, std::int64_t lde) {
    const std::int64_t width = 2 * len + 2;
    const float *d0 = rows, *d1 = rows + ld, *d2 = rows + 2 * ld, *d3 = rows + 3 * ld;
    float *t0 = t, *t1 = t + ld, *t2 = t + 2 * ld, *t3 = t + 3 * ld;
    for (std::int64_t k = 0; k < width; ++k) {                 // B^T along the rows
        t0[k] = d0[k] - d2[k];
        t1[k] = d1[k] + d2[k];
        t2[k] = d2[k] - d1[k];
        t3[k] = d1[k] - d3[k];
    }
    for (int i = 0; i < 4; ++i) {                              // then along the columns
        const float* ti = t + i * ld;
        float* o = out + i * 4 * lde;
        for (std::int64_t b = 0; b < len; ++b) {
            o[0 * lde + b] = ti[2 * b] - ti[2 * b + 2];
            o[1 * lde + b] = ti[2 * b + 1] + ti[2 * b + 2];
            o[2 * lde + b] = ti[2 * b + 2] - ti[2 * b + 1];
            o[3 * lde + b] = ti[2 * b + 1] - ti[2 * b + 3];
        }
    }
}

#ifdef MINICNN_X86
// The AVX-512 transforms take up to 16 tiles at once from two sources of 16 columns each, a and
// b: tile L reads its columns from pick[L] on (an index past 15 reads b's column pick - 16). A
// tile row of up to 15 tiles is a and b side by side (pick = 2L); two tile rows of up to 7
// (8 for the output gradient) are a and b one above the other (13x13 maps: 7 tiles a row).
// Rows outside the plane and columns outside [0, width) read zeros (masked loads).
__attribute__((target("avx512f"))) inline __m512 load_columns(const float* plane,
                                                              std::int64_t height,
                                                              std::int64_t width,
                                                              std::int64_t r, std::int64_t c) {
    if (r < 0 || r >= height) return _mm512_setzero_ps();
    const std::int64_t lo = std::max<std::int64_t>(0, -c), hi = std::min<std::int64_t>(16, width - c);
    if (hi <= lo) return _mm512_setzero_ps();
    const __mmask16 cols = __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
    return _mm512_maskz_loadu_ps(cols, plane + r * width + c);
}

// input_tiles for the tiles of sources a (rows ra.., columns ca..) and b (rb.., cb..).
__attribute__((target("avx512f"))) static void input_tiles_avx512(
        const float* plane, std::int64_t H, std::int64_t W, std::int64_t ra, std::int64_t ca,
        std::int64_t rb, std::int64_t cb, const std::int32_t* pick, std::int64_t lanes,
        float* out, std::int64_t lde) {
    __m512 ta[4], tb[4];
    for (int src = 0; src < 2; ++src) {
        __m512 d[4];
        for (int i = 0; i < 4; ++i)
            d[i] = load_columns(plane, H, W, (src ? rb : ra) + i, src ? cb : ca);
        __m512* t = src ? tb : ta;                             // B^T along the rows
        t[0] = _mm512_sub_ps(d[0], d[2]);
        t[1] = _mm512_add_ps(d[1], d[2]);
        t[2] = _mm512_sub_ps(d[2], d[1]);
        t[3] = _mm512_sub_ps(d[1], d[3]);
    }
    const __m512i p0 = _mm512_loadu_si512(pick), one = _mm512_set1_epi32(1);
    const __m512i p1 = _mm512_add_epi32(p0, one), p2 = _mm512_add_epi32(p1, one);
    const __m512i p3 = _mm512_add_epi32(p2, one);
    const __mmask16 tiles = __mmask16((1u << lanes) - 1);
    for (int i = 0; i < 4; ++i) {                              // then along the columns
        const __m512 e0 = _mm512_permutex2var_ps(ta[i], p0, tb[i]);
        const __m512 o0 = _mm512_permutex2var_ps(ta[i], p1, tb[i]);
        const __m512 e1 = _mm512_permutex2var_ps(ta[i], p2, tb[i]);
        const __m512 o1 = _mm512_permutex2var_ps(ta[i], p3, tb[i]);
        float* o = out + i * 4 * lde;
        _mm512_mask_storeu_ps(o, tiles, _mm512_sub_ps(e0, e1));
        _mm512_mask_storeu_ps(o + lde, tiles, _mm512_add_ps(o0, e1));
        _mm512_mask_storeu_ps(o + 2 * lde, tiles, _mm512_sub_ps(e1, o0));
        _mm512_mask_storeu_ps(o + 3 * lde, tiles, _mm512_sub_ps(o0, o1));
    }
}

// gradient_tiles for the tiles of sources a (output-gradient rows ra, ra+1, columns ca..) and
// b (rb, rb+1, cb..).
__attribute__((target("avx512f"))) static void gradient_tiles_avx512(
        const float* plane, std::int64_t oh, std::int64_t ow, std::int64_t ra, std::int64_t ca,
        std::int64_t rb, std::int64_t cb, const std::int32_t* pick, std::int64_t lanes,
        float* out, std::int64_t lde) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 za[4], zb[4];
    for (int src = 0; src < 2; ++src) {                        // A along the rows
        const __m512 y0 = load_columns(plane, oh, ow, src ? rb : ra, src ? cb : ca);
        const __m512 y1 = load_columns(plane, oh, ow, (src ? rb : ra) + 1, src ? cb : ca);
        __m512* z = src ? zb : za;
        z[0] = y0;
        z[1] = _mm512_add_ps(y0, y1);
        z[2] = _mm512_sub_ps(y0, y1);
        z[3] = _mm512_sub_ps(zero, y1);
    }
    const __m512i p0 = _mm512_loadu_si512(pick);
    const __m512i p1 = _mm512_add_epi32(p0, _mm512_set1_epi32(1));
    const __mmask16 tiles = __mmask16((1u << lanes) - 1);
    for (int i = 0; i < 4; ++i) {                              // then along the columns
        const __m512 e = _mm512_permutex2var_ps(za[i], p0, zb[i]);
        const __m512 o = _mm512_permutex2var_ps(za[i], p1, zb[i]);
        float* dst = out + i * 4 * lde;
        _mm512_mask_storeu_ps(dst, tiles, e);
        _mm512_mask_storeu_ps(dst + lde, tiles, _mm512_add_ps(e, o));
        _mm512_mask_storeu_ps(dst + 2 * lde, tiles, _mm512_sub_ps(e, o));
        _mm512_mask_storeu_ps(dst + 3 * lde, tiles, _mm512_sub_ps(zero, o));
    }
}
#endif

// Which columns the AVX-512 transforms pick: one tile row (2L), or two rows of ``first`` and
// the rest tiles one above the other.
struct Picks {
    std::int32_t row[16], pair[16];
    explicit Picks(std::int64_t first) {
        for (int L = 0; L < 16; ++L) {
            row[L] = 2 * L;
            pair[L] = L < first ? 2 * L : 16 + 2 * (L - static_cast<int>(first));
        }
    }
};

#ifdef MINICNN_X86
// input_adjoint_tiles for up to 7 tiles, added straight onto the 4 input rows they read
// (columns s0 .. s0 + 2 len + 1, those inside the plane).
__attribute__((target("avx512f"))) static void input_adjoint_tiles7_avx512(
        const float* v, std::int64_t lde, std::int64_t len, float* plane, std::int64_t H,
        std::int64_t W, std::int64_t r0, std::int64_t s0) {
    const __mmask16 tiles = __mmask16((1u << len) - 1);
    const __m512 zero = _mm512_setzero_ps();
    const __m512i interleave = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22,
                                                 7, 23);
    __m512 acc[4];
    for (int i = 0; i < 4; ++i) {              // B along the columns, neighbours overlapping
        const __m512 v0 = _mm512_maskz_loadu_ps(tiles, v + (i * 4 + 0) * lde);
        const __m512 v1 = _mm512_maskz_loadu_ps(tiles, v + (i * 4 + 1) * lde);
        const __m512 v2 = _mm512_maskz_loadu_ps(tiles, v + (i * 4 + 2) * lde);
        const __m512 v3 = _mm512_maskz_loadu_ps(tiles, v + (i * 4 + 3) * lde);
        // tile b gives columns 2b, 2b+1 (first, second) and 2b+2, 2b+3 (third, fourth)
        const __m512 first = v0, second = _mm512_add_ps(_mm512_sub_ps(v1, v2), v3);
        const __m512 third = _mm512_sub_ps(_mm512_add_ps(v1, v2), v0);
        const __m512 fourth = _mm512_sub_ps(zero, v3);
        const __m512 prev3 = _mm512_castsi512_ps(_mm512_alignr_epi32(      // lane b: b-1's
            _mm512_castps_si512(third), _mm512_castps_si512(zero), 15));
        const __m512 prev4 = _mm512_castsi512_ps(_mm512_alignr_epi32(
            _mm512_castps_si512(fourth), _mm512_castps_si512(zero), 15));
        acc[i] = _mm512_permutex2var_ps(_mm512_add_ps(first, prev3), interleave,
                                        _mm512_add_ps(second, prev4));
    }
    const __m512 rows[4] = {acc[0], _mm512_add_ps(_mm512_sub_ps(acc[1], acc[2]), acc[3]),
                            _mm512_sub_ps(_mm512_add_ps(acc[1], acc[2]), acc[0]),
                            _mm512_sub_ps(zero, acc[3])};
    const std::int64_t lo = std::max<std::int64_t>(0, -s0);
    const std::int64_t hi = std::min<std::int64_t>(2 * len + 2, W - s0);
    if (hi <= lo) return;
    const __mmask16 cols = __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
    for (int i = 0; i < 4; ++i) {                // then along the rows, onto the plane
        const std::int64_t r = r0 + i;
        if (r < 0 || r >= H) continue;
        float* dst = plane + r * W + s0;
        _mm512_mask_storeu_ps(dst, cols,
                              _mm512_add_ps(_mm512_maskz_loadu_ps(cols, dst), rows[i]));
    }
}
#endif

// A dy A^T of ``len`` tiles side by side: rows holds their 2 output-gradient rows (2 len values
// each, row stride ld); element e of tile b goes to out[e * lde + b].
MINICNN_VECTOR_CLONES static void gradient_tiles(const float* __restrict rows, std::int64_t ld,
                                                 std::int64_t len, float* __restrict z,
                                                 float* __restrict out, std::int64_t lde) {
    const float *y0 = rows, *y1 = rows + ld;
    float *z1 = z, *z2 = z + ld;                               // z0 = y0, z3 = -y1
    for (std::int64_t k = 0; k < 2 * len; ++k) {               // A along the rows
        z1[k] = y0[k] + y1[k];
        z2[k] = y0[k] - y1[k];
    }
    const float* zr[3] = {y0, z1, z2};
    for (int i = 0; i < 3; ++i) {                              // then along the columns
        const float* zi = zr[i];
        float* o = out + i * 4 * lde;
        for (std::int64_t b = 0; b < len; ++b) {
            o[0 * lde + b] = zi[2 * b];
            o[1 * lde + b] = zi[2 * b] + zi[2 * b + 1];
            o[2 * lde + b] = zi[2 * b] - zi[2 * b + 1];
            o[3 * lde + b] = -zi[2 * b + 1];
        }
    }
    float* o = out + 12 * lde;                                 // row 3 = -y1
    for (std::int64_t b = 0; b < len; ++b) {
        o[0 * lde + b] = -y1[2 * b];
        o[1 * lde + b] = -y1[2 * b] - y1[2 * b + 1];
        o[2 * lde + b] = y1[2 * b + 1] - y1[2 * b];
        o[3 * lde + b] = y1[2 * b + 1];
    }
}

// A^T m A of n tiles: m[e * lde + j] -> out[p * ld + j] for the 2x2 outputs p = 2 i + k.
MINICNN_VECTOR_CLONES static void output_tiles(const float* __restrict m, std::int64_t lde,
                                               std::int64_t n, float* __restrict out,
                                               std::int64_t ld) {
    for (std::int64_t j = 0; j < n; ++j) {
        float t[2][4];
        for (int k = 0; k < 4; ++k) {
            const float m0 = m[(0 + k) * lde + j], m1 = m[(4 + k) * lde + j];
            const float m2 = m[(8 + k) * lde + j], m3 = m[(12 + k) * lde + j];
            t[0][k] = m0 + m1 + m2;
            t[1][k] = m1 - m2 - m3;
        }
        for (int i = 0; i < 2; ++i) {
            out[(2 * i + 0) * ld + j] = t[i][0] + t[i][1] + t[i][2];
            out[(2 * i + 1) * ld + j] = t[i][1] - t[i][2] - t[i][3];
        }
    }
}

// B v B^T of ``len`` tiles side by side, neighbours' overlapping columns summed: v[e * lde + b]
// -> 4 rows of 2 len + 2 values (row stride ld), the gradient of the 4 input rows they read.
MINICNN_VECTOR_CLONES static void input_adjoint_tiles(const float* __restrict v, std::int64_t lde,
                                                      std::int64_t len, float* __restrict r,
                                                      std::int64_t ld) {
    float* acc = r + 4 * ld;                                   // 4 more rows of scratch
    for (int i = 0; i < 4; ++i) {                              // B along the columns
        const float *v0 = v + (i * 4 + 0) * lde, *v1 = v + (i * 4 + 1) * lde;
        const float *v2 = v + (i * 4 + 2) * lde, *v3 = v + (i * 4 + 3) * lde;
        float* a = acc + i * ld;
        a[0] = v0[0];
        a[1] = v1[0] - v2[0] + v3[0];
        for (std::int64_t b = 1; b < len; ++b) {    // tile b's first two columns, b-1's last two
            a[2 * b] = v0[b] + v1[b - 1] + v2[b - 1] - v0[b - 1];
            a[2 * b + 1] = v1[b] - v2[b] + v3[b] - v3[b - 1];
        }
        a[2 * len] = v1[len - 1] + v2[len - 1] - v0[len - 1];
        a[2 * len + 1] = -v3[len - 1];
    }
    const std::int64_t width = 2 * len + 2;
    const float *a0 = acc, *a1 = acc + ld, *a2 = acc + 2 * ld, *a3 = acc + 3 * ld;
    for (std::int64_t k = 0; k < width; ++k) {                 // then along the rows
        r[k] = a0[k];
        r[ld + k] = a1[k] - a2[k] + a3[k];
        r[2 * ld + k] = a1[k] + a2[k] - a0[k];
        r[3 * ld + k] = -a3[k];
    }
}

// G w G^T of n filters (9 taps each, contiguous): element e of filter p goes to u[e * n + p].
MINICNN_VECTOR_CLONES static void filter_tiles(const float* __restrict w, std::int64_t n,
                                               float* __restrict u) {
    for (std::int64_t p = 0; p < n; ++p) {
        float t[4][3];
        for (int j = 0; j < 3; ++j) {
            const float w0 = w[p * 9 + j], w1 = w[p * 9 + 3 + j], w2 = w[p * 9 + 6 + j];
            t[0][j] = w0;
            t[1][j] = 0.5f * (w0 + w1 + w2);
            t[2][j] = 0.5f * (w0 - w1 + w2);
            t[3][j] = w2;
        }
        for (int i = 0; i < 4; ++i) {
            u[(i * 4 + 0) * n + p] = t[i][0];
            u[(i * 4 + 1) * n + p] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
            u[(i * 4 + 2) * n + p] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
            u[(i * 4 + 3) * n + p] = t[i][2];
        }
    }
}

#ifdef MINICNN_X86
// filter_tiles for 16 filters at a time: tap k of the 16 by one gather (9 floats apart).
__attribute__((target("avx512f"))) static void filter_tiles_avx512(const float* w, std::int64_t n,
                                                                   float* u) {
    const __m512i nine = _mm512_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108,
                                           117, 126, 135);
    const __m512 half = _mm512_set1_ps(0.5f);
    std::int64_t p = 0;
    for (; p + 16 <= n; p += 16) {
        __m512 g[9];
        for (int k = 0; k < 9; ++k)
            g[k] = _mm512_i32gather_ps(nine, w + p * 9 + k, 4);
        __m512 t[4][3];
        for (int j = 0; j < 3; ++j) {
            t[0][j] = g[j];
            t[1][j] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(g[j], g[3 + j]), g[6 + j]));
            t[2][j] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(g[j], g[3 + j]), g[6 + j]));
            t[3][j] = g[6 + j];
        }
        for (int i = 0; i < 4; ++i) {
            const __m512 a = t[i][0], b = t[i][1], c = t[i][2];
            _mm512_storeu_ps(u + (i * 4 + 0) * n + p, a);
            _mm512_storeu_ps(u + (i * 4 + 1) * n + p,
                             _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(a, b), c)));
            _mm512_storeu_ps(u + (i * 4 + 2) * n + p,
                             _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(a, b), c)));
            _mm512_storeu_ps(u + (i * 4 + 3) * n + p, c);
        }
    }
    if (p < n) {                                  // the last few: the portable loop's order
        float rest[16 * 16];
        filter_tiles(w + p * 9, n - p, rest);
        for (int e = 0; e < 16; ++e)
            std::memcpy(u + e * n + p, rest + e * (n - p), sizeof(float) * (n - p));
    }
}
#endif

// --- F(2x2, 5x5): the same tiles, 6x6 input windows ---------------------------------------------
//
// With the points 0, 1, -1, 2, -1/2 and infinity (of the sets drawn from 0, +-1/4 .. +-4, one
// of the three whose float32 sums came closest to the exact ones, 1.4-1.5e-6 of the largest
// output on 48 channels, and of those the one with the smallest coefficients; 0, +-1, +-2 gave
// 2.6e-6, F(2x2, 3x3) 2.8e-7, the direct product 3e-7):
//
//   B^T = [1  3/2   -2  -3/2    1  0]     G = [    1     0     0     0     0]
//         [0   -1 -5/2  -1/2    1  0]         [ -1/3  -1/3  -1/3  -1/3  -1/3]
//         [0    1  1/2  -5/2    1  0]         [  1/3  -1/3   1/3  -1/3   1/3]
//         [0 -1/2   -1   1/2    1  0]         [ 1/15  2/15  4/15  8/15 16/15]
//         [0    2   -1    -2    1  0]         [-16/15 8/15 -4/15  2/15 -1/15]
//         [0    1  3/2    -2 -3/2  1]         [    0     0     0     0     1]
//
//   A^T = [1  1  1  1    1  0]
//         [0  1 -1  2 -1/2  1]
//
// Each helper applies one of them (or its transpose, for the adjoints) to one line of values:
// T is a float, or 16 tiles' values at once.

template <class T> inline void bt6(const T* d, T* v) {           // v = B^T d
    v[0] = d[0] + d[4] + 1.5f * (d[1] - d[3]) - 2.0f * d[2];
    v[1] = d[4] - d[1] - 2.5f * d[2] - 0.5f * d[3];
    v[2] = d[4] + d[1] + 0.5f * d[2] - 2.5f * d[3];
    v[3] = d[4] - d[2] + 0.5f * (d[3] - d[1]);
    v[4] = d[4] - d[2] + 2.0f * (d[1] - d[3]);
    v[5] = d[5] + d[1] - 2.0f * d[3] + 1.5f * (d[2] - d[4]);
}

template <class T> inline void b6(const T* v, T* d) {            // d = B v
    d[0] = v[0];
    d[1] = 1.5f * v[0] - v[1] + v[2] - 0.5f * v[3] + 2.0f * v[4] + v[5];
    d[2] = -2.0f * v[0] - 2.5f * v[1] + 0.5f * v[2] - v[3] - v[4] + 1.5f * v[5];
    d[3] = -1.5f * v[0] - 0.5f * v[1] - 2.5f * v[2] + 0.5f * v[3] - 2.0f * v[4] - 2.0f * v[5];
    d[4] = v[0] + v[1] + v[2] + v[3] + v[4] - 1.5f * v[5];
    d[5] = v[5];
}

template <class T> inline void at6(const T* m, T* y) {           // y (2) = A^T m (6)
    y[0] = m[0] + m[1] + m[2] + m[3] + m[4];
    y[1] = m[1] - m[2] + 2.0f * m[3] - 0.5f * m[4] + m[5];
}

template <class T> inline void a6(T y0, T y1, T* z) {            // z (6) = A (y0, y1)
    z[0] = y0;
    z[1] = y0 + y1;
    z[2] = y0 - y1;
    z[3] = y0 + 2.0f * y1;
    z[4] = y0 - 0.5f * y1;
    z[5] = y1;
}

template <class T> inline void g6(const T* w, T* u) {            // u (6) = G w (5)
    constexpr float third = 1.0f / 3.0f, fifteenth = 1.0f / 15.0f;
    u[0] = w[0];
    u[1] = -third * (w[0] + w[1] + w[2] + w[3] + w[4]);
    u[2] = third * (w[0] - w[1] + w[2] - w[3] + w[4]);
    u[3] = fifteenth * (w[0] + 2.0f * w[1] + 4.0f * w[2] + 8.0f * w[3] + 16.0f * w[4]);
    u[4] = fifteenth * (-16.0f * w[0] + 8.0f * w[1] - 4.0f * w[2] + 2.0f * w[3] - w[4]);
    u[5] = w[4];
}

inline void gt6(const float* u, float* w) {                       // w (5) = G^T u (6)
    constexpr float third = 1.0f / 3.0f, fifteenth = 1.0f / 15.0f;
    const float odd = third * (u[2] - u[1]), even = -third * (u[1] + u[2]);   // +-1's rows
    w[0] = u[0] + odd + fifteenth * (u[3] - 16.0f * u[4]);
    w[1] = even + fifteenth * (2.0f * u[3] + 8.0f * u[4]);
    w[2] = odd + fifteenth * (4.0f * u[3] - 4.0f * u[4]);
    w[3] = even + fifteenth * (8.0f * u[3] + 2.0f * u[4]);
    w[4] = odd + fifteenth * (16.0f * u[3] - u[4]) + u[5];
}

// input_tiles for 6x6 windows: rows holds 6 input rows of 2 len + 4 values.
MINICNN_VECTOR_CLONES static void input_tiles6(const float* __restrict rows, std::int64_t ld,
                                               std::int64_t len, float* __restrict t,
                                               float* __restrict out, std::int64_t lde) {
    for (std::int64_t k = 0; k < 2 * len + 4; ++k) {           // B^T along the rows
        float d[6], v[6];
        for (int i = 0; i < 6; ++i) d[i] = rows[i * ld + k];
        bt6(d, v);
        for (int i = 0; i < 6; ++i) t[i * ld + k] = v[i];
    }
    for (int i = 0; i < 6; ++i)                                // then along the columns
        for (std::int64_t b = 0; b < len; ++b) {
            float v[6];
            bt6(t + i * ld + 2 * b, v);
            for (int j = 0; j < 6; ++j) out[(i * 6 + j) * lde + b] = v[j];
        }
}

// gradient_tiles for 6x6 windows (A dy A^T, 36 elements; z unused).
// Eight tiles at a time (AVX2 and AVX-512 alike: GCC's loop vectorizer kept this loop scalar,
// its reads being two interleaved columns), their even and odd columns split by shuffles; the
// last eight end at len, redoing a few tiles with the same values, and fewer than eight tiles
// go one by one.
typedef float float8 __attribute__((vector_size(8 * sizeof(float))));
typedef std::int32_t int8v __attribute__((vector_size(8 * sizeof(std::int32_t))));

MINICNN_VECTOR_CLONES static void gradient_tiles6(const float* __restrict rows, std::int64_t ld,
                                                  std::int64_t len, float* __restrict,
                                                  float* __restrict out, std::int64_t lde) {
    const int8v even = {0, 2, 4, 6, 8, 10, 12, 14}, odd = even + 1;
    for (std::int64_t start = 0; len >= 8 && start < len; start += 8) {
        const std::int64_t b = std::min(start, len - 8);
        float8 y0[2], y1[2];                                    // rows 0 and 1, 16 values each
        std::memcpy(y0, rows + 2 * b, sizeof y0);
        std::memcpy(y1, rows + ld + 2 * b, sizeof y1);
        float8 left[6], right[6], z[6];                         // A along the rows
        a6(__builtin_shuffle(y0[0], y0[1], even), __builtin_shuffle(y1[0], y1[1], even), left);
        a6(__builtin_shuffle(y0[0], y0[1], odd), __builtin_shuffle(y1[0], y1[1], odd), right);
        for (int i = 0; i < 6; ++i) {                           // then along the columns
            a6(left[i], right[i], z);
            for (int j = 0; j < 6; ++j)
                std::memcpy(out + (i * 6 + j) * lde + b, &z[j], sizeof z[j]);
        }
    }
    for (std::int64_t b = 0; len < 8 && b < len; ++b) {
        float left[6], right[6], z[6];                          // A along the rows
        a6(rows[2 * b], rows[ld + 2 * b], left);
        a6(rows[2 * b + 1], rows[ld + 2 * b + 1], right);
        for (int i = 0; i < 6; ++i) {                           // then along the columns
            a6(left[i], right[i], z);
            for (int j = 0; j < 6; ++j) out[(i * 6 + j) * lde + b] = z[j];
        }
    }
}

// output_tiles for 6x6 windows (A^T m A).
MINICNN_VECTOR_CLONES static void output_tiles6(const float* __restrict m, std::int64_t lde,
                                                std::int64_t n, float* __restrict out,
                                                std::int64_t ld) {
    for (std::int64_t j = 0; j < n; ++j) {
        float s[2][6];
        for (int a = 0; a < 6; ++a) {                          // A^T along each row a
            float row[6], y[2];
            for (int b = 0; b < 6; ++b) row[b] = m[(a * 6 + b) * lde + j];
            at6(row, y);
            s[0][a] = y[0];
            s[1][a] = y[1];
        }
        for (int k = 0; k < 2; ++k) {                           // then down the columns
            float y[2];
            at6(s[k], y);
            out[(0 + k) * ld + j] = y[0];
            out[(2 + k) * ld + j] = y[1];
        }
    }
}

// input_adjoint_tiles for 6x6 windows: 6 rows of 2 len + 4 values (6 more rows of scratch).
MINICNN_VECTOR_CLONES static void input_adjoint_tiles6(const float* __restrict v,
                                                       std::int64_t lde, std::int64_t len,
                                                       float* __restrict r, std::int64_t ld) {
    float* acc = r + 6 * ld;
    const std::int64_t width = 2 * len + 4;
    for (int i = 0; i < 6; ++i) {                              // B along the columns
        float* a = acc + i * ld;
        std::fill(a, a + width, 0.0f);
        for (std::int64_t b = 0; b < len; ++b) {              // neighbours overlap by 4
            float e[6], d[6];
            for (int j = 0; j < 6; ++j) e[j] = v[(i * 6 + j) * lde + b];
            b6(e, d);
            for (int j = 0; j < 6; ++j) a[2 * b + j] += d[j];
        }
    }
    for (std::int64_t k = 0; k < width; ++k) {                 // then along the rows
        float e[6], d[6];
        for (int i = 0; i < 6; ++i) e[i] = acc[i * ld + k];
        b6(e, d);
        for (int i = 0; i < 6; ++i) r[i * ld + k] = d[i];
    }
}

// filter_tiles for 5x5 filters (G w G^T, 25 taps each, contiguous, to 36 elements).
MINICNN_VECTOR_CLONES static void filter_tiles6(const float* __restrict w, std::int64_t n,
                                                float* __restrict u) {
    for (std::int64_t p = 0; p < n; ++p) {
        float t[6][5];
        for (int l = 0; l < 5; ++l) {                          // G down each column
            float col[5], g[6];
            for (int k = 0; k < 5; ++k) col[k] = w[p * 25 + k * 5 + l];
            g6(col, g);
            for (int a = 0; a < 6; ++a) t[a][l] = g[a];
        }
        for (int a = 0; a < 6; ++a) {                          // then along each row
            float g[6];
            g6(t[a], g);
            for (int b = 0; b < 6; ++b) u[(a * 6 + b) * n + p] = g[b];
        }
    }
}

// filter_adjoint_rows for 5x5 filters (G^T u G: 36 elements to 25 taps).
MINICNN_VECTOR_CLONES static void filter_adjoint_rows6(const float* __restrict u,
                                                       std::int64_t lde, std::int64_t n,
                                                       float* __restrict d) {
    for (std::int64_t k = 0; k < n; ++k) {
        float s[5][6];
        for (int a = 0; a < 6; ++a) {                          // G^T along each row a
            float row[6], w[5];
            for (int b = 0; b < 6; ++b) row[b] = u[(a * 6 + b) * lde + k];
            gt6(row, w);
            for (int l = 0; l < 5; ++l) s[l][a] = w[l];
        }
        for (int l = 0; l < 5; ++l) {                          // then down each column l
            float w[5];
            gt6(s[l], w);
            for (int i = 0; i < 5; ++i) d[(i * 5 + l) * n + k] = w[i];
        }
    }
}

#ifdef MINICNN_X86
// input_tiles_avx512 for 6x6 windows: up to 14 tiles of one row (their 32 columns), or two
// rows of up to 6.
__attribute__((target("avx512f"))) static void input_tiles6_avx512(
        const float* plane, std::int64_t H, std::int64_t W, std::int64_t ra, std::int64_t ca,
        std::int64_t rb, std::int64_t cb, const std::int32_t* pick, std::int64_t lanes,
        float* out, std::int64_t lde) {
    __m512 ta[6], tb[6];
    for (int src = 0; src < 2; ++src) {
        __m512 d[6];
        for (int i = 0; i < 6; ++i)
            d[i] = load_columns(plane, H, W, (src ? rb : ra) + i, src ? cb : ca);
        bt6(d, src ? tb : ta);                                 // B^T along the rows
    }
    __m512i p[6];
    p[0] = _mm512_loadu_si512(pick);
    for (int k = 1; k < 6; ++k) p[k] = _mm512_add_epi32(p[k - 1], _mm512_set1_epi32(1));
    const __mmask16 tiles = __mmask16((1u << lanes) - 1);
    for (int i = 0; i < 6; ++i) {                              // then along the columns
        __m512 c[6], v[6];
        for (int k = 0; k < 6; ++k) c[k] = _mm512_permutex2var_ps(ta[i], p[k], tb[i]);
        bt6(c, v);
        for (int j = 0; j < 6; ++j) _mm512_mask_storeu_ps(out + (i * 6 + j) * lde, tiles, v[j]);
    }
}

// filter_tiles6 for 16 filters at a time: tap k of the 16 by one gather (25 floats apart).
__attribute__((target("avx512f"))) static void filter_tiles6_avx512(const float* w,
                                                                    std::int64_t n, float* u) {
    const __m512i apart = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(25));
    std::int64_t p = 0;
    for (; p + 16 <= n; p += 16) {
        __m512 t[6][5];
        for (int l = 0; l < 5; ++l) {                          // G down each column
            __m512 col[5], g[6];
            for (int k = 0; k < 5; ++k)
                col[k] = _mm512_i32gather_ps(apart, w + p * 25 + k * 5 + l, 4);
            g6(col, g);
            for (int a = 0; a < 6; ++a) t[a][l] = g[a];
        }
        for (int a = 0; a < 6; ++a) {                          // then along each row
            __m512 g[6];
            g6(t[a], g);
            for (int b = 0; b < 6; ++b) _mm512_storeu_ps(u + (a * 6 + b) * n + p, g[b]);
        }
    }
    if (p < n) {                                  // the last few: the portable loop
        float rest[36 * 16];
        filter_tiles6(w + p * 25, n - p, rest);
        for (int e = 0; e < 36; ++e)
            std::memcpy(u + e * n + p, rest + e * (n - p), sizeof(float) * (n - p));
    }
}

// Lane b of back<s>(x): lane b - s of x (zeros before the first).
template <int s> __attribute__((target("avx512f"))) inline __m512 back(__m512 x) {
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(x), _mm512_setzero_si512(), 16 - s));
}

// input_adjoint_tiles for up to 6 tiles of 6x6 windows, added straight onto the 6 input rows
// they read (columns s0 .. s0 + 2 len + 3, those inside the plane).
__attribute__((target("avx512f"))) static void input_adjoint_tiles6_avx512(
        const float* v, std::int64_t lde, std::int64_t len, float* plane, std::int64_t H,
        std::int64_t W, std::int64_t r0, std::int64_t s0) {
    const __mmask16 tiles = __mmask16((1u << len) - 1);
    const __m512i interleave = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22,
                                                 7, 23);
    __m512 acc[6];
    for (int i = 0; i < 6; ++i) {              // B along the columns, neighbours overlapping
        __m512 e[6], d[6];
        for (int j = 0; j < 6; ++j) e[j] = _mm512_maskz_loadu_ps(tiles, v + (i * 6 + j) * lde);
        b6(e, d);
        // tile b gives columns 2b .. 2b+5: pair b of columns gets its d0, d1, b-1's d2, d3
        // and b-2's d4, d5
        const __m512 even = d[0] + back<1>(d[2]) + back<2>(d[4]);
        const __m512 odd = d[1] + back<1>(d[3]) + back<2>(d[5]);
        acc[i] = _mm512_permutex2var_ps(even, interleave, odd);
    }
    __m512 rows[6];
    b6(acc, rows);                             // then along the rows, onto the plane
    const std::int64_t lo = std::max<std::int64_t>(0, -s0);
    const std::int64_t hi = std::min<std::int64_t>(2 * len + 4, W - s0);
    if (hi <= lo) return;
    const __mmask16 cols = __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
    for (int i = 0; i < 6; ++i) {
        const std::int64_t r = r0 + i;
        if (r < 0 || r >= H) continue;
        float* dst = plane + r * W + s0;
        _mm512_mask_storeu_ps(dst, cols,
                              _mm512_add_ps(_mm512_maskz_loadu_ps(cols, dst), rows[i]));
    }
}
#endif

// The transformed input of a block of tiles (segments), for group g's channels (each piece of
// each): element e of channel k, tile b of segment s at out[(e * kg + k) * ldk + s.j + b].
// With AVX-512, two whole tile rows of an image that follow each other in the block go through
// together when they fit (7 tiles or fewer a row, 6 for 6x6 windows), a longer row 15 (14)
// tiles at a time. tmp: 12 rows of ld.
void input_block(const Wino& w, const float* x, std::int64_t g,
                 const std::vector<Segment>& segments, float* out, std::int64_t ldk, bool wide,
                 float* tmp, std::int64_t ld) {
    const std::int64_t kg = w.kg(), cg = w.cg(), tw = w.tw(), alpha = w.alpha();
    const std::int64_t most = w.five() ? 14 : 15;               // tiles in 32 columns
    const Picks picks(tw);
    const auto tiles = w.five() ? input_tiles6 : input_tiles;
#ifdef MINICNN_X86
    const auto tiles_avx512 = w.five() ? input_tiles6_avx512 : input_tiles_avx512;
#endif
    for (std::size_t i = 0; i < segments.size(); ++i) {
        const Segment& s = segments[i];
        const std::int64_t len = s.b1 - s.b0;
        const bool pair = wide && 2 * tw + alpha - 2 <= 16 && s.b0 == 0 && s.b1 == tw &&
                          i + 1 < segments.size() && segments[i + 1].n == s.n &&
                          segments[i + 1].b1 == tw;     // (the next row: rows run in order)
        for (std::int64_t k = 0; k < kg; ++k) {
            const float* plane = x + (s.n * w.C + g * cg + k % cg) * w.H * w.W;
            float* dst = out + k * ldk + s.j;
            const std::int64_t r0 = 2 * s.a - w.ph + w.shift_h(k);
            const std::int64_t s0 = 2 * s.b0 - w.pw + w.shift_w(k);
#ifdef MINICNN_X86
            if (pair) {
                tiles_avx512(plane, w.H, w.W, r0, s0, r0 + 2, s0, picks.pair, 2 * tw, dst,
                             kg * ldk);
                continue;
            }
            if (wide) {
                for (std::int64_t b = 0; b < len; b += most)
                    tiles_avx512(plane, w.H, w.W, r0, s0 + 2 * b, r0, s0 + 2 * b + 16,
                                 picks.row, std::min(most, len - b), dst + b, kg * ldk);
                continue;
            }
#endif
            for (int r = 0; r < alpha; ++r)
                read_row(plane, w.H, w.W, r0 + r, s0, 2 * len + alpha - 2, tmp + r * ld);
            tiles(tmp, ld, len, tmp + alpha * ld, dst, kg * ldk);
        }
        if (pair) ++i;
    }
}

#ifdef MINICNN_X86
// gradient_tiles6 for the tiles of ``segments`` (as gradient_block), 16 tiles at a time
// whatever rows and images they come from: each of a tile's 4 values by one gather (offsets
// from image n0's plane, int32), the 36 elements stored as runs of 16. (Taken row by row, as
// F(2x2, 3x3)'s, CaffeNet conv2's rows of 14 tiles stored each element in three partial runs a
// block of 32: its input gradient took 22.2-26.3 ms, gathered 20.1-20.5; F(2x2, 3x3)'s
// measured the same either way.)
__attribute__((target("avx512f"))) void gradient_gathered6_avx512(
        const Wino& w, const float* dy, std::int64_t g, const std::vector<Segment>& segments,
        float* out, std::int64_t ldf) {
    const std::int64_t fg = w.fg(), n0 = segments.front().n, plane = w.oh * w.ow;
    const std::int64_t j0 = segments.front().j;
    thread_local std::vector<std::int32_t> offsets;
    thread_local std::vector<std::uint8_t> inside;       // bit 0: second row, 1: second column
    offsets.clear();
    inside.clear();
    for (const Segment& s : segments)
        for (std::int64_t b = s.b0; b < s.b1; ++b) {
            offsets.push_back(static_cast<std::int32_t>((s.n - n0) * w.F * plane +
                                                        2 * s.a * w.ow + 2 * b));
            inside.push_back((2 * s.a + 1 < w.oh ? 1 : 0) | (2 * b + 1 < w.ow ? 2 : 0));
        }
    const std::int64_t total = static_cast<std::int64_t>(offsets.size());
    const __m512 zero = _mm512_setzero_ps();
    for (std::int64_t q = 0; q < total; q += 16) {
        const int lanes = static_cast<int>(std::min<std::int64_t>(16, total - q));
        alignas(64) std::int32_t at[16] = {};
        __mmask16 row = 0, col = 0;
        for (int L = 0; L < lanes; ++L) {
            at[L] = offsets[q + L];
            row |= static_cast<__mmask16>((inside[q + L] & 1) << L);
            col |= static_cast<__mmask16>(((inside[q + L] >> 1) & 1) << L);
        }
        const __mmask16 all = static_cast<__mmask16>((1u << lanes) - 1);
        const __m512i i00 = _mm512_load_si512(at);
        const __m512i i01 = _mm512_add_epi32(i00, _mm512_set1_epi32(1));
        const __m512i i10 = _mm512_add_epi32(i00, _mm512_set1_epi32(static_cast<int>(w.ow)));
        const __m512i i11 = _mm512_add_epi32(i10, _mm512_set1_epi32(1));
        for (std::int64_t f = 0; f < fg; ++f) {
            const float* base = dy + (n0 * w.F + g * fg + f) * plane;
            const __m512 y00 = _mm512_mask_i32gather_ps(zero, all, i00, base, 4);
            const __m512 y01 = _mm512_mask_i32gather_ps(zero, all & col, i01, base, 4);
            const __m512 y10 = _mm512_mask_i32gather_ps(zero, all & row, i10, base, 4);
            const __m512 y11 = _mm512_mask_i32gather_ps(zero, all & row & col, i11, base, 4);
            __m512 left[6], right[6], z[6];                    // A along the rows
            a6(y00, y10, left);
            a6(y01, y11, right);
            float* dst = out + f * ldf + j0 + q;
            for (int i = 0; i < 6; ++i) {                      // then along the columns
                a6(left[i], right[i], z);
                for (int j = 0; j < 6; ++j)
                    _mm512_mask_storeu_ps(dst + (i * 6 + j) * fg * ldf, all, z[j]);
            }
        }
    }
}
#endif

// The transformed output gradient of a block of tiles for group g's filters: element e of
// filter f, tile b of segment s at out[(e * fg + f) * ldf + s.j + b] (with AVX-512, F(2x2,
// 5x5)'s gathered; F(2x2, 3x3)'s two tile rows together when they fit, 8 tiles or fewer a
// row, a longer row 16 tiles at a time).
void gradient_block(const Wino& w, const float* dy, std::int64_t g,
                    const std::vector<Segment>& segments, float* out, std::int64_t ldf,
                    bool wide, float* tmp, std::int64_t ld) {
    const std::int64_t fg = w.fg(), tw = w.tw();
    const Picks picks(tw);
    const auto tiles = w.five() ? gradient_tiles6 : gradient_tiles;
#ifdef MINICNN_X86
    if (wide && w.five() && !segments.empty() &&
        (segments.back().n - segments.front().n + 1) * w.F * w.oh * w.ow < (1ll << 31)) {
        gradient_gathered6_avx512(w, dy, g, segments, out, ldf);
        return;
    }
#endif
    wide = wide && !w.five();                    // (a 5x5 past int32 offsets: the portable loop)
    for (std::size_t i = 0; i < segments.size(); ++i) {
        const Segment& s = segments[i];
        const std::int64_t len = s.b1 - s.b0;
        const bool pair = wide && tw <= 8 && s.b0 == 0 && s.b1 == tw &&
                          i + 1 < segments.size() && segments[i + 1].n == s.n &&
                          segments[i + 1].b1 == tw;
        for (std::int64_t f = 0; f < fg; ++f) {
            const float* plane = dy + (s.n * w.F + g * fg + f) * w.oh * w.ow;
            float* dst = out + f * ldf + s.j;
#ifdef MINICNN_X86
            if (pair) {
                gradient_tiles_avx512(plane, w.oh, w.ow, 2 * s.a, 0, 2 * s.a + 2, 0, picks.pair,
                                      2 * tw, dst, fg * ldf);
                continue;
            }
            if (wide) {
                for (std::int64_t b = 0; b < len; b += 16)
                    gradient_tiles_avx512(plane, w.oh, w.ow, 2 * s.a, 2 * (s.b0 + b), 2 * s.a,
                                          2 * (s.b0 + b) + 16, picks.row,
                                          std::min<std::int64_t>(16, len - b), dst + b,
                                          fg * ldf);
                continue;
            }
#endif
            for (int r = 0; r < 2; ++r)
                read_row(plane, w.oh, w.ow, 2 * s.a + r, 2 * s.b0, 2 * len, tmp + r * ld);
            tiles(tmp, ld, len, tmp + 2 * ld, dst, fg * ldf);
        }
        if (pair) ++i;
    }
}

// The pieces of every filter as 3x3 filters, g[f][k][9] for the channels k of its group.
void cut_filters(const Wino& w, const float* wt, float* pieces) {
    const std::int64_t cg = w.cg(), kg = w.kg();
#pragma omp parallel for schedule(static) if (w.F * kg > 4096)
    for (std::int64_t f = 0; f < w.F; ++f)
        for (std::int64_t k = 0; k < kg; ++k) {
            const float* src = wt + (f * cg + k % cg) * w.kh * w.kw;
            float* dst = pieces + (f * kg + k) * 9;
            const std::int64_t i0 = w.shift_h(k), j0 = w.shift_w(k);
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j)
                    dst[i * 3 + j] = i0 + i < w.kh && j0 + j < w.kw
                                         ? src[(i0 + i) * w.kw + j0 + j] : 0.0f;
        }
}

// The transformed filters as MR-row A panels: for the forward, rows = a group's filters and
// inner index = its channels, Ua[g][e][p][k][MR]; for the input gradient the other way round,
// Ut[g][e][p][f][MR] (either may be null). Rows past the group's end are 0.
void pack_filters(const Wino& w, const float* wt, float* Ua, float* Ut) {
    const std::int64_t MR = gemm::MR, kg = w.kg(), fg = w.fg(), pairs = w.F * kg, E = w.E();
    const std::int64_t Pf = (fg + MR - 1) / MR, Pc = (kg + MR - 1) / MR;
    const std::int64_t taps = w.five() ? 25 : 9;
    if (!w.five() && (w.kh != 3 || w.kw != 3)) {
        float* pieces = buffer(3, pairs * 9);
        cut_filters(w, wt, pieces);
        wt = pieces;
    }
    float* u = buffer(2, E * pairs);                         // u[e][f][k]
    void (*transform)(const float*, std::int64_t, float*) = w.five() ? filter_tiles6
                                                                      : filter_tiles;
#ifdef MINICNN_X86
    if (gemm::kernel().nr == 32)                             // the AVX-512 micro-kernel runs
        transform = w.five() ? filter_tiles6_avx512 : filter_tiles_avx512;
#endif
    const std::int64_t chunk = 1024;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (std::int64_t p0 = 0; p0 < pairs; p0 += chunk) {
            const std::int64_t n = std::min(chunk, pairs - p0);
            float* part = gemm::scratch(6, E * chunk);
            transform(wt + p0 * taps, n, part);
            for (std::int64_t e = 0; e < E; ++e)
                std::memcpy(u + e * pairs + p0, part + e * n, sizeof(float) * n);
        }
#pragma omp for collapse(2) schedule(static)
        for (std::int64_t g = 0; g < w.G; ++g)
            for (std::int64_t e = 0; e < E; ++e) {
                const float* ue = u + e * pairs + g * fg * kg;   // this group's (fg x kg) rows
                if (Ua)
                    for (std::int64_t p = 0; p < Pf; ++p) {
                        float* dst = Ua + ((g * E + e) * Pf + p) * kg * MR;
                        const std::int64_t rows = std::min(MR, fg - p * MR);
                        for (std::int64_t r = 0; r < MR; ++r) {   // rows of u read in order
                            const float* src = ue + (p * MR + r) * kg;
                            for (std::int64_t c = 0; c < kg; ++c)
                                dst[c * MR + r] = r < rows ? src[c] : 0.0f;
                        }
                    }
                if (Ut)
                    for (std::int64_t p = 0; p < Pc; ++p) {
                        float* dst = Ut + ((g * E + e) * Pc + p) * fg * MR;
                        const std::int64_t cols = std::min(MR, kg - p * MR);
                        for (std::int64_t f = 0; f < fg; ++f)
                            for (std::int64_t r = 0; r < MR; ++r)
                                dst[f * MR + r] = r < cols ? ue[f * kg + p * MR + r] : 0.0f;
                    }
            }
    }
}

#ifdef MINICNN_X86
__attribute__((target("avx512f"))) static void store_row_avx512(const float* even,
                                                                const float* odd,
                                                                std::int64_t cols, float bias,
                                                                float* dst) {
    const __m512i interleave = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22,
                                                 7, 23);
    const __m512 b = _mm512_set1_ps(bias);
    for (std::int64_t q = 0; 2 * q < cols; q += 8) {
        const std::int64_t n = std::min<std::int64_t>(16, cols - 2 * q);
        const __mmask16 halves = __mmask16((1u << ((n + 1) / 2)) - 1);
        const __m512 e = _mm512_maskz_loadu_ps(halves, even + q);
        const __m512 o = _mm512_maskz_loadu_ps(halves, odd + q);
        _mm512_mask_storeu_ps(dst + 2 * q, __mmask16((1u << n) - 1),
                              _mm512_add_ps(_mm512_permutex2var_ps(e, interleave, o), b));
    }
}
#endif

inline void store_row(const float* even, const float* odd, std::int64_t cols, float bias,
                      float* dst, bool wide) {
#ifdef MINICNN_X86
    if (wide) {
        store_row_avx512(even, odd, cols, bias, dst);
        return;
    }
#endif
    (void)wide;
    for (std::int64_t q = 0; q < cols; ++q) dst[q] = (q & 1 ? odd[q >> 1] : even[q >> 1]) + bias;
}

void winograd_forward(const Wino& w, const float* x, const float* wt, const float* bias,
                      float* y) {
    const gemm::Kernel& K = gemm::kernel();
    const std::int64_t MR = gemm::MR, NB = K.nr, T = w.tiles(), kg = w.kg(), fg = w.fg();
    const std::int64_t Pf = (fg + MR - 1) / MR, blocks = (T + NB - 1) / NB, E = w.E();
    float* Ua = buffer(0, w.G * E * Pf * MR * kg);
    pack_filters(w, wt, Ua, nullptr);
    const std::int64_t ld = 2 * NB + 8;                        // a row of a segment's window
    const bool wide = NB == 32;                                // the AVX-512 micro-kernel runs
    const auto outputs = w.five() ? output_tiles6 : output_tiles;
#pragma omp parallel if (w.G * blocks > 1)
    {
        std::vector<Segment> segments;
        float* Bp = gemm::scratch(3, E * kg * NB);
        float* Cb = gemm::scratch(4, E * MR * NB);
        float* tmp = gemm::scratch(5, 12 * ld + 4 * NB);
#pragma omp for schedule(dynamic)
        for (std::int64_t gb = 0; gb < w.G * blocks; ++gb) {
            const std::int64_t g = gb / blocks, t0 = gb % blocks * NB;
            const std::int64_t nt = std::min(NB, T - t0);
            segments_of(w, t0, nt, segments);
            if (nt < NB) std::memset(Bp, 0, sizeof(float) * E * kg * NB);
            input_block(w, x, g, segments, Bp, NB, wide, tmp, ld);
            float* out = tmp + 12 * ld;                         // 4 x NB outputs of a filter
            for (std::int64_t p = 0; p < Pf; ++p) {
                for (std::int64_t e = 0; e < E; ++e)
                    K.run(kg, Ua + ((g * E + e) * Pf + p) * kg * MR, Bp + e * kg * NB,
                          Cb + e * MR * NB, NB, false);
                for (std::int64_t r = 0; r < std::min(MR, fg - p * MR); ++r) {
                    const std::int64_t f = g * fg + p * MR + r;
                    const float b0 = bias ? bias[f] : 0.0f;
                    outputs(Cb + r * NB, MR * NB, nt, out, NB);
                    for (const Segment& s : segments) {
                        float* plane = y + (s.n * w.F + f) * w.oh * w.ow;
                        for (int i = 0; i < 2; ++i) {
                            const std::int64_t row = 2 * s.a + i;
                            if (row >= w.oh) break;
                            store_row(out + 2 * i * NB + s.j, out + (2 * i + 1) * NB + s.j,
                                      std::min(2 * (s.b1 - s.b0), w.ow - 2 * s.b0), b0,
                                      plane + row * w.ow + 2 * s.b0, wide);
                        }
                    }
                }
            }
        }
    }
}

// Neighbouring tiles add onto the same input values, so each thread owns whole images.
void winograd_backward_data(const Wino& w, const float* dy, const float* wt, float* dx) {
    const gemm::Kernel& K = gemm::kernel();
    const std::int64_t MR = gemm::MR, NB = K.nr, kg = w.kg(), fg = w.fg(), E = w.E();
    const std::int64_t Pc = (kg + MR - 1) / MR, per_image = w.th() * w.tw();
    float* Ut = buffer(1, w.G * E * Pc * MR * fg);
    pack_filters(w, wt, nullptr, Ut);
    const std::int64_t ld = 2 * NB + 8, alpha = w.alpha();
    const bool wide = NB == 32;                                // the AVX-512 micro-kernel runs
    const auto adjoint = w.five() ? input_adjoint_tiles6 : input_adjoint_tiles;
#ifdef MINICNN_X86
    const auto adjoint_avx512 = w.five() ? input_adjoint_tiles6_avx512
                                         : input_adjoint_tiles7_avx512;
    const std::int64_t most = w.five() ? 6 : 7;                // tiles whose columns fit in 16
#endif
    const std::int64_t chunks = std::min<std::int64_t>(w.N, max_threads());
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (std::int64_t chunk = 0; chunk < chunks; ++chunk) {
        const std::int64_t n0 = w.N * chunk / chunks, n1 = w.N * (chunk + 1) / chunks;
        std::fill(dx + n0 * w.C * w.H * w.W, dx + n1 * w.C * w.H * w.W, 0.0f);
        std::vector<Segment> segments;
        float* Bp = gemm::scratch(3, E * fg * NB);
        float* Cb = gemm::scratch(4, E * MR * NB);
        float* tmp = gemm::scratch(5, 12 * ld);
        for (std::int64_t g = 0; g < w.G; ++g)
            for (std::int64_t t0 = n0 * per_image; t0 < n1 * per_image; t0 += NB) {
                const std::int64_t nt = std::min(NB, n1 * per_image - t0);
                segments_of(w, t0, nt, segments);
                if (nt < NB) std::memset(Bp, 0, sizeof(float) * E * fg * NB);
                gradient_block(w, dy, g, segments, Bp, NB, wide, tmp, ld);
                for (std::int64_t p = 0; p < Pc; ++p) {
                    for (std::int64_t e = 0; e < E; ++e)
                        K.run(fg, Ut + ((g * E + e) * Pc + p) * fg * MR, Bp + e * fg * NB,
                              Cb + e * MR * NB, NB, false);
                    for (std::int64_t r = 0; r < std::min(MR, kg - p * MR); ++r) {
                        const std::int64_t k = p * MR + r;      // a piece of a channel
                        const std::int64_t c = g * w.cg() + k % w.cg();
                        for (const Segment& s : segments) {
                            const std::int64_t len = s.b1 - s.b0;
                            float* plane = dx + (s.n * w.C + c) * w.H * w.W;
                            const std::int64_t r0 = 2 * s.a - w.ph + w.shift_h(k);
                            const std::int64_t s0 = 2 * s.b0 - w.pw + w.shift_w(k);
#ifdef MINICNN_X86
                            if (wide) {         // chunks of 7 (6) tiles, each after the last
                                for (std::int64_t b = 0; b < len; b += most)
                                    adjoint_avx512(Cb + r * NB + s.j + b, MR * NB,
                                                   std::min(most, len - b), plane, w.H, w.W, r0,
                                                   s0 + 2 * b);
                                continue;
                            }
#endif
                            adjoint(Cb + r * NB + s.j, MR * NB, len, tmp, ld);
                            const std::int64_t lo = std::max<std::int64_t>(0, -s0);
                            const std::int64_t hi = std::min(2 * len + alpha - 2, w.W - s0);
                            for (int i = 0; i < alpha; ++i) {
                                const std::int64_t row = r0 + i;
                                if (row < 0 || row >= w.H) continue;
                                float* dst = plane + row * w.W + s0;
                                const float* src = tmp + i * ld;
                                for (std::int64_t q = lo; q < hi; ++q) dst[q] += src[q];
                            }
                        }
                    }
                }
            }
    }
}

// --- the filter gradient: a chunk of images at a time -----------------------------------------
//
// Its inner dimension is the tiles, so the tiles' transforms are stored first, as rows that
// run over the tiles: V[g][e][c][t] from x and D[g][e][f][t] from dy, for a chunk of images
// whose transforms the cache can hold. Then dU_e (F/G x kg) = D_e V_e^T on minicnn's GEMM,
// added up over the chunks: D_e's rows read in place (packing them as panels took CaffeNet
// conv3's filter gradient 17.5-25.1 ms against 16.2-20.0), V_e's packed as B panels.

// V from x and D from dy for images n0 .. n0 + images - 1 (rows of T tiles: theirs, and
// room), an image of a group at a time.
void transform_planes(const Wino& w, const float* x, const float* dy, std::int64_t n0,
                      std::int64_t images, std::int64_t T, float* V, float* D, bool wide) {
    const std::int64_t th = w.th(), tw = w.tw(), kg = w.kg(), fg = w.fg();
    const std::int64_t ld = 2 * tw + 8, E = w.E();
#pragma omp parallel
    {
        float* tmp = gemm::scratch(5, 12 * ld);
        std::vector<Segment> rows;
#pragma omp for collapse(2) schedule(static)
        for (std::int64_t n = n0; n < n0 + images; ++n)
            for (std::int64_t g = 0; g < w.G; ++g) {
                rows.clear();
                for (std::int64_t a = 0; a < th; ++a) rows.push_back({n, a, 0, tw, a * tw});
                const std::int64_t t0 = (n - n0) * th * tw;
                input_block(w, x, g, rows, V + g * E * kg * T + t0, T, wide, tmp, ld);
                gradient_block(w, dy, g, rows, D + g * E * fg * T + t0, T, wide, tmp, ld);
            }
    }
}

// G^T u G for n filters side by side: element e of filter k at u[e * lde + k] (a row of the
// filter gradient's products), tap i of it to d[i * n + k].
MINICNN_VECTOR_CLONES static void filter_adjoint_rows(const float* __restrict u, std::int64_t lde,
                                                      std::int64_t n, float* __restrict d) {
    for (std::int64_t k = 0; k < n; ++k) {
        float t[3][4];
        for (int j = 0; j < 4; ++j) {
            const float u0 = u[j * lde + k], u1 = u[(4 + j) * lde + k];
            const float u2 = u[(8 + j) * lde + k], u3 = u[(12 + j) * lde + k];
            t[0][j] = u0 + 0.5f * (u1 + u2);
            t[1][j] = 0.5f * (u1 - u2);
            t[2][j] = u3 + 0.5f * (u1 + u2);
        }
        for (int i = 0; i < 3; ++i) {
            d[(i * 3 + 0) * n + k] = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
            d[(i * 3 + 1) * n + k] = 0.5f * (t[i][1] - t[i][2]);
            d[(i * 3 + 2) * n + k] = t[i][3] + 0.5f * (t[i][1] + t[i][2]);
        }
    }
}

// Bytes of transformed tiles the filter gradient holds at a time (settable for the tests).
std::int64_t filter_chunk_bytes = std::int64_t(12) << 20;

void winograd_backward_filter(const Wino& w, const float* dy, const float* x, float* dw) {
    if (w.N == 0) return;                                       // no images: nothing to add
    const std::int64_t MR = gemm::MR, kg = w.kg(), fg = w.fg(), per_image = w.th() * w.tw();
    const std::int64_t E = w.E();
    const bool wide = gemm::kernel().nr == 32;
    const std::int64_t per_image_bytes = w.G * E * (kg + fg) * per_image * 4;
    const std::int64_t chunk =
        std::clamp<std::int64_t>(filter_chunk_bytes / per_image_bytes, 1, w.N);
    const std::int64_t Tc = chunk * per_image;                  // the buffers' row length
    float* V = buffer(0, w.G * E * kg * Tc);
    float* D = buffer(1, w.G * E * fg * Tc);
    float* dU = buffer(2, w.G * E * fg * kg);
    for (std::int64_t n0 = 0; n0 < w.N; n0 += chunk) {
        const std::int64_t images = std::min(chunk, w.N - n0), T = images * per_image;
        transform_planes(w, x, dy, n0, images, Tc, V, D, wide);
        // dU_e (+)= D_e V_e^T, the products side by side, each on one thread (OpenMP does not
        // nest: gemm::run sees one thread), so no two threads pack the same panels of V_e
#pragma omp parallel for schedule(dynamic)
        for (std::int64_t ge = 0; ge < w.G * E; ++ge) {
            const float* De = D + ge * fg * Tc;
            const float* Ve = V + ge * kg * Tc;
            float* out = dU + ge * fg * kg;
            gemm::run(
                fg, kg, T, gemm::Blocking{96, 1024, 384},
                [&](std::int64_t i0, std::int64_t, std::int64_t l0, std::int64_t,
                    float*) {                                     // D_e's rows in place
                    return gemm::Panels{De + i0 * Tc + l0, 0, Tc};
                },
                [&](std::int64_t j0, std::int64_t n, std::int64_t l0, std::int64_t kc,
                    std::int64_t nr, float* Bp) {                 // nr rows of V_e a panel
                    for (std::int64_t q = 0; q * nr < n; ++q)
                        gemm::transposed_panel(Ve + (j0 + q * nr) * Tc + l0, Tc,
                                               std::min(nr, n - q * nr), kc, nr,
                                               Bp + q * nr * kc);
                },
                [&](std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n,
                    const float* C, std::int64_t ldc) {
                    for (std::int64_t r = 0; r < m; ++r) {
                        float* dst = out + (i0 + r) * kg + j0;
                        const float* src = C + r * ldc;
                        if (n0 == 0)
                            std::memcpy(dst, src, sizeof(float) * n);
                        else
                            for (std::int64_t q = 0; q < n; ++q) dst[q] += src[q];
                    }
                });
        }
    }
    // dw[f, c] += G^T dU[f][k] G for each piece k of channel c (taps past the kernel dropped)
#pragma omp parallel if (w.F * kg > 4096)
    {
        float* d = gemm::scratch(6, 25 * kg);
#pragma omp for schedule(static)
        for (std::int64_t f = 0; f < w.F; ++f) {
            const std::int64_t g = f / fg, row = f % fg;
            const float* u = dU + (g * E * fg + row) * kg;
            if (w.five()) {                                     // one 5x5 piece
                filter_adjoint_rows6(u, fg * kg, kg, d);
                for (std::int64_t k = 0; k < kg; ++k) {
                    float* out = dw + (f * w.cg() + k) * 25;
                    for (int i = 0; i < 25; ++i) out[i] += d[i * kg + k];
                }
                continue;
            }
            filter_adjoint_rows(u, fg * kg, kg, d);
            for (std::int64_t k = 0; k < kg; ++k) {
                float* out = dw + (f * w.cg() + k % w.cg()) * w.kh * w.kw;
                const std::int64_t i0 = w.shift_h(k), j0 = w.shift_w(k);
                for (int i = 0; i < 3 && i0 + i < w.kh; ++i)
                    for (int j = 0; j < 3 && j0 + j < w.kw; ++j)
                        out[(i0 + i) * w.kw + j0 + j] += d[(i * 3 + j) * kg + k];
            }
        }
    }
}

Wino wino_of(const py::array& x, const py::array& w, std::int64_t G, std::int64_t ph,
             std::int64_t pw, const py::array& y) {
    require(x.ndim() == 4 && w.ndim() == 4 && y.ndim() == 4, "winograd: 4-D arrays");
    Wino v{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), G, w.shape(2),
           w.shape(3), ph, pw, y.shape(2), y.shape(3)};
    require(G >= 1 && v.C % G == 0 && v.F % G == 0 && w.shape(1) == v.C / G,
            "winograd: channels and filters must split into the groups");
    require(ph >= 0 && pw >= 0 && v.kh >= 1 && v.kw >= 1 && v.oh == v.H + 2 * ph - v.kh + 1 &&
                v.ow == v.W + 2 * pw - v.kw + 1 && v.oh >= 1 && v.ow >= 1,
            "winograd: output size must be H + 2 pad - kernel + 1 (stride 1, no dilation)");
    require(y.shape(0) == v.N && y.shape(1) == v.F, "winograd: output shape");
    return v;
}

}  // namespace

REGISTER_NATIVE(m) {
    m.def("winograd_forward", [](const py::array& x, const py::array& w, py::object b,
                                 py::array& y, std::int64_t group, std::int64_t ph,
                                 std::int64_t pw) {
        const Wino v = wino_of(x, w, group, ph, pw, y);
        const float* xs = in_ptr<float>(x, "x");
        const float* ws = in_ptr<float>(w, "w");
        const float* bs = opt_in_ptr<float>(b, "b");
        if (bs) require(py::len(b) == static_cast<size_t>(v.F), "winograd: bias size");
        float* ys = out_ptr<float>(y, "y");
        Release release;
        winograd_forward(v, xs, ws, bs, ys);
    }, "y <- conv(x, w) + b (stride 1, pad (ph, pw)), float32, by Winograd F(2x2, 3x3) (5x5: "
       "F(2x2, 5x5); other kernels in 3x3 pieces)");
    m.def("winograd_backward_data", [](const py::array& dy, const py::array& w, py::array& dx,
                                       std::int64_t group, std::int64_t ph, std::int64_t pw) {
        const Wino v = wino_of(dx, w, group, ph, pw, dy);
        const float* g = in_ptr<float>(dy, "dy");
        const float* ws = in_ptr<float>(w, "w");
        float* out = out_ptr<float>(dx, "dx");
        Release release;
        winograd_backward_data(v, g, ws, out);
    }, "dx <- the input gradient of the stride-1 conv for dy, by Winograd");
    m.def("set_winograd_filter_chunk", [](std::int64_t bytes) {
        require(bytes >= 1, "set_winograd_filter_chunk: bytes >= 1");
        const std::int64_t was = filter_chunk_bytes;
        filter_chunk_bytes = bytes;
        return was;
    }, "bytes of transformed tiles the Winograd filter gradient holds at a time (default "
       "12 MiB; the tests make it small to run one image a chunk); returns the previous value");
    m.def("winograd_backward_filter", [](const py::array& dy, const py::array& x, py::array& dw,
                                         std::int64_t group, std::int64_t ph, std::int64_t pw) {
        const Wino v = wino_of(x, dw, group, ph, pw, dy);
        const float* g = in_ptr<float>(dy, "dy");
        const float* xs = in_ptr<float>(x, "x");
        float* out = out_ptr<float>(dw, "dw");
        Release release;
        winograd_backward_filter(v, g, xs, out);
    }, "dw += the filter gradient of the stride-1 conv for dy, by Winograd");
}

}  // namespace minicnn
