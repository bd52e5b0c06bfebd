"""Fillers: each FillerParameter type against its definition (values or statistics)."""

import math

import numpy as np
import pytest

from minicnn.errors import MinicnnError
from minicnn.fillers import fill
from minicnn.proto.caffe_pb2 import FillerParameter


def filled(shape=(64, 32, 3, 3), seed=0, **fields):
    return fill(FillerParameter(**fields), shape, np.float64, np.random.default_rng(seed))


def test_default_is_constant_zero_like_caffe():
    assert np.all(filled(shape=(3, 4)) == 0)
    assert np.all(filled(shape=(3, 4), type="constant", value=0.25) == 0.25)


def test_uniform_range():
    v = filled(type="uniform", min=-0.5, max=2.0)
    assert v.min() >= -0.5 and v.max() < 2.0 and abs(v.mean() - 0.75) < 0.05


def test_gaussian_mean_std_and_sparse():
    v = filled(type="gaussian", mean=1.0, std=0.5)
    assert abs(v.mean() - 1.0) < 0.01 and abs(v.std() - 0.5) < 0.01
    sparse = filled(type="gaussian", std=1.0, sparse=16)        # keep p = 16 / 64 per weight
    assert abs(np.mean(sparse != 0) - 0.25) < 0.02


@pytest.mark.parametrize("norm, n", [("FAN_IN", 32 * 9), ("FAN_OUT", 64 * 9),
                                     ("AVERAGE", (32 * 9 + 64 * 9) / 2)])
def test_xavier_and_msra_variance_follow_variance_norm(norm, n):
    xavier = filled(type="xavier", variance_norm=norm)
    scale = math.sqrt(3 / n)
    assert np.abs(xavier).max() <= scale and abs(xavier.var() - 1 / n) < 0.05 / n
    msra = filled(type="msra", variance_norm=norm)
    assert abs(msra.var() - 2 / n) < 0.05 * 2 / n


def test_positive_unitball_rows_sum_to_one():
    v = filled(shape=(5, 3, 2, 2), type="positive_unitball")
    assert np.all(v >= 0)
    np.testing.assert_allclose(v.reshape(5, -1).sum(axis=1), 1)


def test_bilinear_matches_caffe_formula_and_upsamples():
    v = filled(shape=(2, 1, 4, 4), type="bilinear")
    f, c = 2, 3 / 4                                  # f = ceil(4/2), c = (4-1)/(2f)
    taps = [1 - abs(x / f - c) for x in range(4)]
    np.testing.assert_allclose(v[0, 0], np.outer(taps, taps))
    np.testing.assert_allclose(v[1, 0], v[0, 0])
    with pytest.raises(MinicnnError, match="square 4-D"):
        filled(shape=(1, 1, 3, 4), type="bilinear")


@pytest.mark.parametrize("k, taps", [
    (3, [0.5, 1.0, 0.5]),                            # f 2, c 1/2
    (6, [1 / 6, 1 / 2, 5 / 6, 5 / 6, 1 / 2, 1 / 6]),  # f 3, c 5/6
    (7, [0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25])])   # f 4, c 3/4
def test_bilinear_kernels_outside_the_recipe_are_symmetric_as_bvlcs(k, taps):
    """BVLC's test_filler.cpp checks c = (k - 1) / (2f) for k = 6 and 7; the 2015 formula that
    ports copied, (2f - 1 - f % 2) / (2f), gives 0.25, 0.75, 0.75 for k = 3."""
    v = filled(shape=(1, 1, k, k), type="bilinear")
    np.testing.assert_allclose(v[0, 0], np.outer(taps, taps), rtol=1e-6)


def test_unknown_filler_lists_the_known_ones():
    with pytest.raises(MinicnnError, match="unknown filler type 'xaviar'.*xavier"):
        filled(type="xaviar")


def test_dtype_and_reproducibility():
    a = fill(FillerParameter(type="gaussian"), (3, 3), np.float32, np.random.default_rng(7))
    b = fill(FillerParameter(type="gaussian"), (3, 3), np.float32, np.random.default_rng(7))
    assert a.dtype == np.float32 and np.array_equal(a, b)
