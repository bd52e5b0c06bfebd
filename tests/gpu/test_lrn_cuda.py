"""LRN on the GPU, both regions, against the NumPy reference; in place too (out = x, out = dy)."""

import numpy as np
import pytest

from minicnn.ops.lrn import lrn_backward, lrn_forward

from .conftest import assert_close, poisoned

SETTINGS = [dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0),        # CaffeNet's
            dict(local_size=3, alpha=2.0, beta=0.6, k=2.0),
            dict(local_size=7, alpha=0.5, beta=1.3, k=1.5)]           # window wider than C


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("settings", SETTINGS)
def test_lrn_matches_the_reference(gpu, settings, region, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 6, 7)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    kw = dict(settings, norm_region=region)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    want_y = lrn_forward.impls["ref"](x, **kw)
    y = poisoned(gpu, x.shape, dtype)
    assert lrn_forward(gpu.asarray(x), **kw, out=y) is y
    assert_close(y, want_y, tol, "y")
    want_dx = lrn_backward.impls["ref"](dy, x, **kw)
    dx = poisoned(gpu, x.shape, dtype)
    assert lrn_backward(gpu.asarray(dy), gpu.asarray(x), **kw, out=dx) is dx
    assert_close(dx, want_dx, tol * 10, "dx")
    x_d = gpu.asarray(x)                                          # in place
    assert lrn_forward(x_d, **kw, out=x_d) is x_d
    assert_close(x_d, want_y, tol, "y in place")
    dy_d = gpu.asarray(dy)
    lrn_backward(dy_d, gpu.asarray(x), **kw, out=dy_d)
    assert_close(dy_d, want_dx, tol * 10, "dx in place")
