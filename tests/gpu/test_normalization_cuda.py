"""BatchNorm (batch and global statistics, running sums), Scale and Bias on the GPU against the
NumPy reference; in place and accumulating into parameter diffs as the layers do."""

import numpy as np
import pytest

from minicnn.ops.batch_norm import (batch_norm_backward, batch_norm_forward,
                                    batch_norm_global_stats, batch_norm_update_stats)
from minicnn.ops.bias import bias_backward, bias_forward
from minicnn.ops.scale import scale_backward, scale_forward

from .conftest import assert_close, poisoned


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 5), (6,), (3, 2, 40, 40),
                                   (40, 3, 5, 5)])      # short rows over 4 splits
def test_batch_norm_matches_the_reference(gpu, shape, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    want = batch_norm_forward.impls["ref"](x, 1e-5)
    y = poisoned(gpu, shape, dtype)
    got = batch_norm_forward(gpu.asarray(x), 1e-5, out=y)
    assert got[0] is y
    for name, g, w in zip(("y", "mean", "var", "std"), got, want):
        assert_close(g, w, tol, name)
    dy = rng.standard_normal(shape).astype(dtype)
    for use_global in (False, True):
        assert_close(batch_norm_backward(gpu.asarray(dy), got[0], got[3], use_global),
                     batch_norm_backward.impls["ref"](dy, want[0], want[3], use_global),
                     tol * 10, f"dx (global {use_global})")
    dy_d = gpu.asarray(dy)                                          # in place, as the layer
    batch_norm_backward(dy_d, got[0], got[3], False, out=dy_d)
    assert_close(dy_d, batch_norm_backward.impls["ref"](dy, want[0], want[3]), tol * 10, "in place")
    mean, var = want[1], want[2]
    stats = [rng.random(mean.shape).astype(dtype) for _ in range(2)] + [np.array([3.0], dtype)]
    new = batch_norm_update_stats(*(gpu.asarray(s) for s in stats), got[1], got[2], 120, 0.9)
    for g, w in zip(new, batch_norm_update_stats.impls["ref"](*stats, mean, var, 120, 0.9)):
        assert_close(g, w, tol)
    for g, w in zip(batch_norm_global_stats(*(gpu.asarray(s) for s in stats)),
                    batch_norm_global_stats.impls["ref"](*stats)):
        assert_close(g, w, tol)
    # the running sums rounded as the host rounds them: equal bit for bit on the same inputs,
    # in place into the accumulators as the layer updates them, and with a factor of 0
    want_new = batch_norm_update_stats.impls["ref"](*stats, mean, var, 120, 0.9)
    accumulators = [gpu.asarray(s) for s in stats]
    assert batch_norm_update_stats(*accumulators, gpu.asarray(mean), gpu.asarray(var), 120, 0.9,
                                   out=accumulators) == tuple(accumulators)
    for g, w in zip(accumulators, want_new):
        np.testing.assert_array_equal(g.get(), w)
    for factor in (stats[2], np.zeros(1, dtype)):
        for g, w in zip(batch_norm_global_stats(gpu.asarray(stats[0]), gpu.asarray(stats[1]),
                                                gpu.asarray(factor)),
                        batch_norm_global_stats.impls["ref"](stats[0], stats[1], factor)):
            np.testing.assert_array_equal(g.get(), w)
    strided = [gpu.asarray(np.repeat(a, 2))[::2] for a in stats]   # not contiguous: copied
    assert batch_norm_update_stats(*(gpu.asarray(s) for s in stats), gpu.asarray(mean),
                                   gpu.asarray(var), 120, 0.9, out=strided) == tuple(strided)
    for g, w in zip(strided, want_new):
        np.testing.assert_array_equal(g.get(), w)
    given_mean = batch_norm_forward(gpu.asarray(x), 1e-5, gpu.asarray(mean))   # var from it
    for name, g, w in zip(("y", "mean", "var", "std"), given_mean,
                          batch_norm_forward.impls["ref"](x, 1e-5, mean)):
        assert_close(g, w, tol, f"{name}, mean given")
    y_global = batch_norm_forward(gpu.asarray(x), 1e-5, gpu.asarray(mean), gpu.asarray(var))
    assert_close(y_global[0], batch_norm_forward.impls["ref"](x, 1e-5, mean, var)[0], tol)


CASES = [((4, 3, 5), (3,), 1), ((2, 3, 4, 5), (4, 5), 2), ((3, 4), (), 0), ((2, 3, 4), (2, 3), 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, p_shape, axis", CASES)
def test_scale_and_bias_match_the_reference(gpu, shape, p_shape, axis, dtype):
    rng = np.random.default_rng(2)
    x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    scale, bias = (rng.standard_normal(p_shape).astype(dtype) for _ in range(2))
    tol = 1e-5 if dtype == np.float32 else 1e-11
    y = poisoned(gpu, shape, dtype)
    assert scale_forward(gpu.asarray(x), gpu.asarray(scale), gpu.asarray(bias), axis,
                         out=y) is y
    assert_close(y, scale_forward.impls["ref"](x, scale, bias, axis), tol, "y")
    acc_s, acc_b = np.ones(p_shape, dtype), np.full(p_shape, 2, dtype)
    want = scale_backward.impls["ref"](dy, x, scale, axis, True, dscale_acc=acc_s.copy(),
                                       dbias_acc=acc_b.copy())
    dacc_s, dacc_b = gpu.asarray(acc_s), gpu.asarray(acc_b)
    dx_out = poisoned(gpu, shape, dtype)
    got = scale_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(scale), axis, True,
                         dx_out=dx_out, dscale_acc=dacc_s, dbias_acc=dacc_b)
    assert got[0] is dx_out and got[1] is dacc_s and got[2] is dacc_b
    for name, g, w in zip(("dx", "dscale", "dbias"), got, want):
        assert_close(g, w, tol, name)
    fresh = scale_backward(gpu.asarray(dy), gpu.asarray(x), gpu.asarray(scale), axis, True)
    alone = scale_backward.impls["ref"](dy, x, scale, axis, True)
    for name, g, w in zip(("dx", "dscale", "dbias"), fresh, alone):
        assert_close(g, w, tol, f"{name} (no accumulator)")
    assert_close(bias_forward(gpu.asarray(x), gpu.asarray(bias), axis),
                 bias_forward.impls["ref"](x, bias, axis), tol, "bias y")
    for name, g, w in zip(("dx", "dbias"), bias_backward(gpu.asarray(dy), len(p_shape), axis),
                          bias_backward.impls["ref"](dy, len(p_shape), axis)):
        assert_close(g, w, tol, f"bias {name}")
