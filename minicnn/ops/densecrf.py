"""DeepLab's DenseCRF: mean-field inference in a fully connected CRF (Krähenbühl and Koltun,
"Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011), as the
DeepLab fork runs it (densecrf_layer.cpp over its copy of Krähenbühl's 2011 code:
util/permutohedral.cpp, util/densecrf_pairwise.cpp, util/densecrf_util.hpp).

What a dense CRF does. Every pixel i has a label; the energy of a labelling x is

    E(x) = sum_i U_i(x_i) + sum_{i<j} [x_i != x_j] * sum_k w_k * exp(-|f_i^k - f_j^k|^2 / 2)

with U = -score (the net's scores after Interp) and, for each kernel k, a feature vector per
pixel: the "positional" (Gaussian) kernel f = (x, y) / pos_xy_std, the "bilateral" kernel
f = (x / bi_xy_std, y / bi_xy_std, b / bi_rgb_std, g / bi_rgb_std, r / bi_rgb_std), so pixels
near each other (and of like colour) want the same label. Every pixel pairs with every other:
N^2 pairs. Mean field keeps a distribution Q_i over labels per pixel and repeats

    Q_i(l) proportional to exp( score_i(l) + sum_k w_k * norm_k(i) * sum_j k(f_i, f_j) Q_j(l) )

starting from Q = softmax(score). The inner sum over j is a Gaussian filter of Q in feature
space; the permutohedral lattice (Adams et al. 2010) does it in O(N) instead of O(N^2):

    splat  each pixel's value onto the d+1 vertices of the lattice simplex around its feature
           point (d = feature dimensions), weighted by its barycentric coordinates;
    blur   along each of the d+1 lattice axes with the kernel [1/2, 1, 1/2] (a vertex without a
           neighbour on an axis reads 0);
    slice  back: each pixel takes the barycentric-weighted sum of its vertices, times
           alpha = 1 / (1 + 2^-d).

The result approximates sum_j exp(-|f_i - f_j|^2 / 2) v_j (the self term j = i included) up to
a scale; norm_k(i) = 1 / (the same filter applied to all ones), the fork's per-pixel
normalisation (Krähenbühl's PottsPotential), so a Potts message is a weighted average of Q.

This file follows the fork's arithmetic step by step, in float32 as its buffers are: the SSE
build's lattice (x86-64 compilers define __SSE__, so that is the code DeepLab ran): rounding to
the nearest (even) integer, scale factors computed in double then stored as float, slice
weights barycentric * alpha; splat sums in the fork's order (pixel by pixel, vertex by vertex);
the message added as (w * norm) * filtered; and the scalar fast_exp of densecrf_util.hpp in the
normalisation (a polynomial with range reduction: an argument below -20 gives exactly 0). The
hash table only numbers the lattice vertices, which changes nothing computed: here vertices
are numbered by np.unique of their integer keys (int64; the fork's are shorts, which overflow
past +-32767 lattice units, far beyond any image). Impls: ref only (the layer runs on the host).
"""

import numpy as np

from minicnn.ops._dispatch import Op

__all__ = ["dense_crf_forward"]

F32 = np.float32
dense_crf_forward = Op("dense_crf_forward")

# --- densecrf_util.hpp: fast_exp ------------------------------------------------------------

_POLY = [F32(c) for c in (0.9999999995, 0.4999999206, 0.1666653019, 0.0416573475, 0.0083013598,
                          0.0013298820, 0.0001413161)]


def fast_exp(x):
    """exp(x) as the fork's scalar fast_exp: |x| > 20 gives 0; otherwise |x| is halved (by 8,
    4 and 2, while above 0.69 * 8, 0.69 * 4 and 0.69, compared in double) into [0, 0.69], a
    7th-degree polynomial gives exp(-|x|) there, squaring undoes the halving, and x >= 0 takes
    the reciprocal. float32 in, float32 out."""
    x = np.asarray(x, F32)
    a = np.abs(x)
    mult = np.zeros(x.shape, np.int64)
    for limit, div, step in ((0.69 * 2 * 2 * 2, 8, 3), (0.69 * 2 * 2, 4, 2), (0.69, 2, 1)):
        while True:
            big = a.astype(np.float64) > limit
            if not big.any():
                break
            a[big] = a[big] / F32(div)
            mult[big] += step
    v = _POLY[6]
    for c in _POLY[5::-1]:
        v = c - a * v
    v = F32(1) - a * v                                       # ~exp(-a) on [0, 0.69]
    for k in range(int(mult.max(initial=0))):
        sq = mult > k
        v = np.where(sq, v * v, v)
    with np.errstate(divide="ignore"):
        out = np.where(x < 0, v, F32(1) / v)
    return np.where(np.abs(x) > 20, F32(0), out).astype(F32)


def exp_and_normalize(b, scale):
    """The fork's ExpAndNormalize: per row of ``b`` (N, M), softmax of scale * b with the max
    subtracted, fast_exp, and the sum taken class by class in float32."""
    sb = F32(scale) * np.asarray(b, F32)
    v = fast_exp(sb - sb.max(axis=1, keepdims=True))
    total = v[:, 0].copy()
    for j in range(1, v.shape[1]):
        total += v[:, j]
    return v / total[:, None]


# --- permutohedral.cpp: the lattice --------------------------------------------------------

class Permutohedral:
    """The permutohedral lattice of ``features`` (N, d), float32: ``compute(values)`` filters
    values (N, V) with a Gaussian of unit standard deviation in feature space, approximately."""

    def __init__(self, features):
        f = np.ascontiguousarray(features, F32)
        n, d = f.shape
        self.d = d
        inv_std_dev = F32(np.sqrt(2.0 / 3.0) * (d + 1))
        # the diagonal of the elevation matrix E (Adams et al. 2010, p.5), made in double
        scale = [F32(1.0 / np.sqrt((i + 2) * (i + 1)) * np.float64(inv_std_dev))
                 for i in range(d)]
        down, up = F32(F32(1) / F32(d + 1)), F32(d + 1)

        # elevate the point onto the plane x_0 + ... + x_d = 0 of R^(d+1)
        elevated = np.empty((d + 1, n), F32)
        sm = np.zeros(n, F32)
        for j in range(d, 0, -1):
            cf = f[:, j - 1] * scale[j - 1]
            elevated[j] = sm - F32(j) * cf
            sm = sm + cf
        elevated[0] = sm

        # a nearby remainder-0 lattice point: each coordinate rounded to a multiple of d+1 (the
        # SSE build rounds half to even; which way a tie goes changes nothing: the rank and
        # wrap-around below land in the same simplex, even from np.floor)
        v = np.rint(down * elevated)
        rem0 = v * up
        total = v.sum(axis=0).astype(np.int64)                # whole numbers, exactly
        # rank[i]: how many coordinates of the residual exceed coordinate i (ties: the later)
        rank = np.zeros((d + 1, n), np.int64)
        for i in range(d):
            di = elevated[i] - rem0[i]
            for j in range(i + 1, d + 1):
                c = di < elevated[j] - rem0[j]
                rank[i] += c
                rank[j] += ~c
        # back onto the plane when the rounded point is off it (total != 0)
        rank += total
        add, sub = rank < 0, rank >= d + 1
        rank += (d + 1) * (add.astype(np.int64) - sub)
        rem0 = rem0 + up * (add.astype(F32) - sub.astype(F32))

        # barycentric coordinates of the point in its simplex (p.10)
        bary = np.zeros((n, d + 2), F32)
        rows = np.arange(n)
        for i in range(d + 1):
            w = (elevated[i] - rem0[i]) * down
            p = d - rank[i]
            bary[rows, p] += w
            bary[rows, p + 1] -= w
        bary[:, 0] += F32(1) + bary[:, d + 1]

        # the d+1 vertices: remainder-r vertex = rem0 + canonical simplex column r
        keys = np.empty((n, d + 1, d), np.int64)
        rem0i = rem0.astype(np.int64)
        for r in range(d + 1):
            canonical = np.where(rank[:d] <= d - r, r, r - (d + 1))     # (d, n)
            keys[:, r, :] = (rem0i[:d] + canonical).T
        flat = keys.reshape(-1, d)
        self._pack = _KeyPacker(flat, margin=d + 1)
        uniq, inverse = np.unique(self._pack(flat), return_inverse=True)
        self.offset = inverse.reshape(n, d + 1)               # vertex index per (pixel, r)
        self.barycentric = bary[:, :d + 1]
        self.m = len(uniq)

        # blur neighbours along lattice axis j: key -1 everywhere but +d at j (and +1, -d)
        vertex_keys = np.empty((self.m, d), np.int64)
        vertex_keys[inverse] = flat
        self.neighbors = []
        for j in range(d + 1):
            n1, n2 = vertex_keys - 1, vertex_keys + 1
            if j < d:
                n1[:, j] = vertex_keys[:, j] + d
                n2[:, j] = vertex_keys[:, j] - d
            self.neighbors.append((_lookup(uniq, self._pack(n1)), _lookup(uniq, self._pack(n2))))
        self.alpha = F32(F32(1) / (F32(1) + F32(np.power(F32(2), F32(-d)))))

    def compute(self, values):
        """Splat (N, V) values onto the lattice, blur along each axis, slice back: (N, V)."""
        values = np.asarray(values, F32)
        n, nv = values.shape
        d = self.d
        # row 0 stands for "no such vertex" and stays 0, as the fork's shifted buffers
        lattice = np.zeros((self.m + 1, nv), F32)
        weighted = self.barycentric[:, :, None] * values[:, None, :]
        np.add.at(lattice, self.offset.reshape(-1) + 1, weighted.reshape(-1, nv))
        for n1, n2 in self.neighbors:
            blurred = np.zeros_like(lattice)
            blurred[1:] = lattice[1:] + F32(0.5) * (lattice[n1 + 1] + lattice[n2 + 1])
            lattice = blurred
        out = np.zeros((n, nv), F32)
        for j in range(d + 1):
            out += (self.barycentric[:, j] * self.alpha)[:, None] * lattice[self.offset[:, j] + 1]
        return out


class _KeyPacker:
    """Integer keys (K, d) -> one int64 each (mixed radix over the keys' range plus a margin
    for the neighbours looked up later)."""

    def __init__(self, keys, margin):
        self.lo = keys.min(axis=0) - margin
        span = keys.max(axis=0) + margin - self.lo + 1
        if np.prod(span.astype(np.float64)) >= 2.0 ** 62:
            raise ValueError("the lattice keys span too wide a range to pack into int64: "
                             "features of very different scales (a tiny std?)")
        self.radix = np.concatenate([np.cumprod(span[::-1])[::-1][1:], [1]]).astype(np.int64)

    def __call__(self, keys):
        return (keys - self.lo) @ self.radix


def _lookup(sorted_keys, keys):
    """Index of each key in sorted_keys, or -1 where absent (the hash table's find)."""
    at = np.searchsorted(sorted_keys, keys)
    at = np.minimum(at, len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == keys, at, -1)


# --- densecrf_pairwise.cpp: the Potts potential ----------------------------------------------

def potts_potential(features, w):
    """A Potts kernel on ``features`` (N, d) with weight ``w``: returns message(Q) (N, M),
    the term added to every label's score: w * norm_i * filter(Q)_i, with the per-pixel
    normalisation norm = 1 / (filter(ones) + 1e-20)."""
    lattice = Permutohedral(features)
    norm = lattice.compute(np.ones((len(features), 1), F32))[:, 0]
    wnorm = F32(w) * (F32(1) / (norm + F32(1e-20)))
    return lambda q: wnorm[:, None] * lattice.compute(q)


# --- the layer's inference (densecrf_layer.cpp) ------------------------------------------------

def crf_features(h, w, xy_std, image=None, rgb_std=None):
    """The fork's features for an h x w crop: (x, y) / xy_std per pixel, row by row; with
    ``image`` (3, >=h, >=w), its three channels / rgb_std after them (in the blob's order,
    BGR for ImageSegData). float32 (N, 2) or (N, 5)."""
    ys, xs = np.mgrid[0:h, 0:w]
    cols = [xs.reshape(-1).astype(F32) / F32(xy_std), ys.reshape(-1).astype(F32) / F32(xy_std)]
    if image is not None:
        im = np.asarray(image)[:3, :h, :w]
        cols += [(im[c] / im.dtype.type(rgb_std)).reshape(-1).astype(F32) for c in range(3)]
    return np.stack(cols, axis=1)


@dense_crf_forward.impl("ref")
def _dense_crf_forward_ref(scores, image=None, *, max_iter=10, pos_w=(), pos_xy_std=(),
                           bi_w=(), bi_xy_std=(), bi_rgb_std=()):
    """Mean-field marginals Q (M, h, w), float32, of one image: ``scores`` (M, h, w) (the
    unary is -scores), ``image`` (3, h', w') with h' >= h, w' >= w, or None for no bilateral
    kernel. One Potts kernel per pos_w (positional) and per bi_w (bilateral), in that order."""
    m, h, w = scores.shape
    unary = -np.asarray(scores, F32).reshape(m, h * w).T           # (N, M), pixel-major
    kernels = [potts_potential(crf_features(h, w, s), wk) for wk, s in zip(pos_w, pos_xy_std)]
    if image is not None:
        kernels += [potts_potential(crf_features(h, w, s, image, c), wk)
                    for wk, s, c in zip(bi_w, bi_xy_std, bi_rgb_std)]
    q = exp_and_normalize(unary, -1.0)
    for _ in range(max_iter):
        nxt = -unary
        for message in kernels:
            nxt = nxt + message(q)
        q = exp_and_normalize(nxt, 1.0)
    return q.T.reshape(m, h, w)
