"""Pooling (MAX with its mask, AVE) and SPP on the GPU against the NumPy reference, with
Caffe's rounding: CEIL and FLOOR, padding, global pooling, windows wholly outside the image,
ties in MAX (the first maximum wins), overlapping windows in backward (MAX's gather, given the
geometry, bit for bit the reference's sums)."""

import numpy as np
import pytest

from minicnn.ops.pool import (PoolGeometry, ave_pool2d_backward, ave_pool2d_forward,
                              max_pool2d_backward, max_pool2d_forward)
from minicnn.ops.spp import spp_backward, spp_forward

from .conftest import assert_close, poisoned

GEOMETRIES = [   # (N, C, H, W), geometry
    ((2, 3, 8, 8), PoolGeometry((2, 2), (2, 2))),
    ((2, 3, 13, 13), PoolGeometry((3, 3), (2, 2))),                     # CaffeNet's overlap
    ((1, 2, 7, 9), PoolGeometry((3, 2), (2, 3), (1, 1))),               # padding, CEIL
    ((1, 2, 7, 9), PoolGeometry((3, 3), (2, 2), (1, 1), ceil=False)),   # FLOOR
    ((2, 2, 5, 6), PoolGeometry(None)),                                 # global
    ((1, 2, 5, 5), PoolGeometry((1, 1), (3, 3))),                       # stride > kernel
    ((1, 1, 4, 4), PoolGeometry((2, 2), (3, 3))),                       # a window outside
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, geom", GEOMETRIES)
def test_max_pooling_matches_the_reference(gpu, shape, geom, dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, shape).astype(dtype)            # many ties
    want_y, want_mask = max_pool2d_forward.impls["ref"](x, geom=geom)
    y = poisoned(gpu, want_y.shape, dtype)
    got_y, mask = max_pool2d_forward(gpu.asarray(x), geom=geom, out=y)
    assert got_y is y
    assert_close(y, want_y, 0, "y")
    np.testing.assert_array_equal(mask.get(), want_mask)
    dy = rng.standard_normal(want_y.shape).astype(dtype)
    want_dx = max_pool2d_backward.impls["ref"](dy, want_mask, shape)
    dx = poisoned(gpu, shape, dtype)
    assert max_pool2d_backward(gpu.asarray(dy), mask, shape, out=dx) is dx     # the scatter
    assert_close(dx, want_dx, 1e-6, "dx")
    # with the geometry (as the Pooling layer calls it): the gather, whose overlapping windows
    # add up in the reference's order, so bit for bit and the same on every run
    dx = poisoned(gpu, shape, dtype)
    assert max_pool2d_backward(gpu.asarray(dy), mask, shape, geom=geom, out=dx) is dx
    np.testing.assert_array_equal(dx.get(), want_dx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, geom", GEOMETRIES)
def test_average_pooling_matches_the_reference(gpu, shape, geom, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(dtype)
    want_y = ave_pool2d_forward.impls["ref"](x, geom=geom)
    y = poisoned(gpu, want_y.shape, dtype)
    assert ave_pool2d_forward(gpu.asarray(x), geom=geom, out=y) is y
    assert_close(y, want_y, 1e-6, "y")
    dy = rng.standard_normal(want_y.shape).astype(dtype)
    dx = poisoned(gpu, shape, dtype)
    assert ave_pool2d_backward(gpu.asarray(dy), shape, geom=geom, out=dx) is dx
    assert_close(dx, ave_pool2d_backward.impls["ref"](dy, shape, geom=geom), 1e-6, "dx")


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("levels, rule, hw", [([1, 2, 4], "caffe", (13, 11)),
                                              ([1, 2, 3, 6], "sppnet", (17, 13))])
def test_spp_matches_the_reference(gpu, pool, levels, rule, hw):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, *hw)).astype(np.float32)
    want_y, want_masks = spp_forward.impls["ref"](x, levels=levels, pool=pool, rule=rule)
    y, masks = spp_forward(gpu.asarray(x), levels=levels, pool=pool, rule=rule)
    assert_close(y, want_y, 1e-6, "y")
    dy = rng.standard_normal(want_y.shape).astype(np.float32)
    want_dx = spp_backward.impls["ref"](dy, x.shape, levels=levels, pool=pool, masks=want_masks,
                                        rule=rule)
    assert_close(spp_backward(gpu.asarray(dy), x.shape, levels=levels, pool=pool, masks=masks,
                              rule=rule), want_dx, 1e-6, "dx")
