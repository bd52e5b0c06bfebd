"""Clip, Swish, Reduction, Tile and Embed on the GPU against the NumPy reference, float32 and
float64 (outputs poisoned where the op takes out=): Clip's NaN and min > max, Embed's repeated
indices and its bad ones (a device flag, read with the loss); and a net of all five on the
device against the CPU net."""

import numpy as np
import pytest

from minicnn.ops import neurons as nr

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
