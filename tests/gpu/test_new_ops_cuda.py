"""Clip, Swish, Reduction, Tile and Embed on the GPU against the NumPy reference, float32 and
float64 (outputs poisoned where the op takes out=): Clip's NaN and min > max, Embed's repeated
indices and its bad ones (a device flag, read with the loss); and a net of all five on the
device against the CPU net."""

import numpy as np
import pytest

from minicnn.ops import neurons as nr
from minicnn.ops.reduction import reduction_backward, reduction_forward
from minicnn.ops.tile import tile_backward, tile_forward

from .conftest import assert_close

DTYPES = [np.float32, np.float64]


def _tol(dtype, f32=1e-6):
    return f32 if dtype == np.float32 else 1e-12


# --- Clip, Swish ------------------------------------------------------------------------------

CLIPS = [(-0.5, 0.75), (0.25, 0.25), (1.0, -1.0)]      # an interval, a point, min > max


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo, hi", CLIPS, ids=["interval", "point", "min>max"])
def test_clip(gpu, lo, hi, dtype):
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (3, 4, 7)).astype(dtype)
    x.flat[:6] = [lo, hi, np.nan, np.inf, -np.inf, -0.0]    # the ends, NaN -> min, the infinities
    dy = rng.standard_normal(x.shape).astype(dtype)
    want = nr.clip_forward.impls["ref"](x, lo, hi)
    y = nr.clip_forward(gpu.asarray(x), lo, hi)
    assert_close(y, want, 0, "y")
    assert y.dtype == dtype and float(y.get().flat[2]) == lo                 # NaN -> min
    want_dx = nr.clip_backward.impls["ref"](dy, x, lo, hi)
    dx = nr.clip_backward(gpu.asarray(dy), gpu.asarray(x), lo, hi)
    assert_close(dx, want_dx, 0, "dx")
    if lo <= hi:
        assert dx.get().flat[0] == dy.flat[0] and dx.get().flat[1] == dy.flat[1]   # ends pass


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [1.0, 0.5, -2.0])
def test_swish(gpu, beta, dtype):
    rng = np.random.default_rng(3)
    x = rng.uniform(-12, 12, (2, 5, 9)).astype(dtype)
    x.flat[:3] = [0.0, 60.0, -60.0]
    dy = rng.standard_normal(x.shape).astype(dtype)
    want_y, want_s = nr.swish_forward.impls["ref"](x, beta)
    y, s = nr.swish_forward(gpu.asarray(x), beta)
    assert_close(y, want_y, _tol(dtype), "y")
    assert_close(s, want_s, _tol(dtype), "s")
    assert_close(nr.swish_backward(gpu.asarray(dy), y, s, beta),
                 nr.swish_backward.impls["ref"](dy, want_y, want_s, beta), _tol(dtype), "dx")


# --- Reduction, Tile ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("operation", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, -0.7), (3, 2.5)])
def test_reduction(gpu, operation, axis, coeff, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    x.flat[::7] = 0                                             # ASUM's sign(0) = 0
    want = reduction_forward.impls["ref"](x, operation, axis, coeff)
    y = reduction_forward(gpu.asarray(x), operation, axis, coeff)
    assert y.shape == want.shape == x.shape[:axis]
    assert_close(y, want, _tol(dtype, 1e-5), "y")               # CuPy's order of the sums
    dy = rng.standard_normal(want.shape).astype(dtype)
    dx = reduction_backward(gpu.asarray(dy), gpu.asarray(x), operation, axis, coeff)
    assert_close(dx, reduction_backward.impls["ref"](dy, x, operation, axis, coeff), 0, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis, tiles", [((2, 3, 4), 1, 3), ((5,), 0, 4),
                                                ((2, 3, 4), 2, 1), ((3, 2, 2, 5), 0, 7)])
def test_tile(gpu, shape, axis, tiles, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    want = tile_forward.impls["ref"](x, axis, tiles)
    y = tile_forward(gpu.asarray(x), axis, tiles)
    assert_close(y, want, 0, "y")
    dy = rng.standard_normal(want.shape).astype(dtype)
    dx = tile_backward(gpu.asarray(dy), axis, tiles)
    assert_close(dx, tile_backward.impls["ref"](dy, axis, tiles), 0, "dx")  # Caffe's order
