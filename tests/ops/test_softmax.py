"""Softmax, softmax loss and accuracy ops: reference against loops over positions written here,
finite differences (float64), and hand-made cases for normalization, clamping, ties and top_k."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn.ops.softmax import (
    FLT_MIN,
    accuracy_forward,
    find_bad_label,
    loss_normalizer,
    resolve_normalization,
    softmax_backward,
    softmax_forward,
    softmax_loss_backward,
    softmax_loss_forward,
)
from minicnn.testing import numerical_grad

MODES = ["FULL", "VALID", "BATCH_SIZE", "NONE"]
softmax = softmax_forward.impls["ref"]
loss_forward, loss_backward = softmax_loss_forward.impls["ref"], softmax_loss_backward.impls["ref"]
accuracy = accuracy_forward.impls["ref"]


def around(shape, axis):
    axis %= len(shape)
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


@st.composite
def scores_and_axis(draw, max_ndim=4):
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return 2 * rng.standard_normal(shape), axis, rng


@st.composite
def loss_cases(draw):
    """(x, labels of shape (outer, inner), axis, ignore_label, normalization)."""
    x, axis, rng = draw(scores_and_axis())
    outer, c, inner = around(x.shape, axis)
    labels = rng.integers(0, c, (outer, inner)).astype(np.float64)
    ignore = draw(st.sampled_from([None, 0, -1, 255]))
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.3] = ignore
    return x, labels, axis, ignore, draw(st.sampled_from(MODES))


# --- softmax ------------------------------------------------------------------------------------

def naive_softmax(x, axis):
    moved = np.moveaxis(x, axis, -1)
    y = np.empty_like(moved)
    for pos in np.ndindex(*moved.shape[:-1]):
        e = [math.exp(v) for v in moved[pos]]
        y[pos] = [v / sum(e) for v in e]
    return np.moveaxis(y, -1, axis)


@given(scores_and_axis())
def test_softmax_matches_definition(case):
    x, axis, _ = case
    np.testing.assert_allclose(softmax(x, axis), naive_softmax(x, axis), rtol=1e-12)


@given(scores_and_axis())
def test_softmax_backward_matches_finite_differences(case):
    x, axis, rng = case
    dy = rng.standard_normal(x.shape)
    dx = softmax_backward.impls["ref"](dy, softmax(x, axis), axis)
    numeric = numerical_grad(lambda: float(np.sum(softmax(x, axis) * dy)), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_softmax_is_stable_for_large_scores():
    y = softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32), 1)
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0]])
    assert y.dtype == np.float32


# --- softmax loss -------------------------------------------------------------------------------

def naive_softmax_loss(x, labels, axis, ignore, mode):
    outer, c, inner = around(x.shape, axis)
    x3, lab = x.reshape(outer, c, inner), labels.reshape(outer, inner)
    total, valid = 0.0, 0
    for o in range(outer):
        for i in range(inner):
            if ignore is not None and lab[o, i] == ignore:
                continue
            e = [math.exp(v) for v in x3[o, :, i]]
            total -= math.log(max(e[int(lab[o, i])] / sum(e), FLT_MIN))
            valid += 1
    d = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return total / max(1, d)


@given(loss_cases())
def test_softmax_loss_matches_definition(case):
    x, labels, axis, ignore, mode = case
    loss, prob = loss_forward(x, labels, axis=axis, ignore_label=ignore, normalization=mode)
    assert loss.shape == () and loss.dtype == np.float64
    np.testing.assert_allclose(loss, naive_softmax_loss(x, labels, axis, ignore, mode),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(prob, naive_softmax(x, axis), rtol=1e-12)


@given(loss_cases(), st.sampled_from([1.0, 0.5, -3.0]))
def test_softmax_loss_backward_matches_finite_differences(case, loss_weight):
    x, labels, axis, ignore, mode = case
    kw = {"axis": axis, "ignore_label": ignore, "normalization": mode}
    _, prob = loss_forward(x, labels, **kw)
    dx = loss_backward(prob, labels, loss_weight=loss_weight, **kw)
    numeric = numerical_grad(lambda: loss_weight * float(loss_forward(x, labels, **kw)[0]), x)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)
    if ignore is not None:                   # ignored positions get no gradient at all
        outer, c, inner = around(x.shape, axis)
        ignored = labels.reshape(outer, inner) == ignore
        assert not np.any(dx.reshape(outer, c, inner).transpose(0, 2, 1)[ignored])


def test_normalizer_for_each_mode():
    # 2 x 3 positions, 2 of them ignored
    assert loss_normalizer("FULL", 2, 3, 4) == 6        # ignored positions count
    assert loss_normalizer("VALID", 2, 3, 4) == 4
    assert loss_normalizer("BATCH_SIZE", 2, 3, 4) == 2
    assert loss_normalizer("NONE", 2, 3, 4) == 1
    assert loss_normalizer("VALID", 2, 3, 0) == 1       # everything ignored: max(1, 0)


def test_all_ignored_gives_zero_loss_and_gradient():
    x, labels = np.random.default_rng(0).standard_normal((3, 4)), np.full(3, 7.0)
    loss, prob = loss_forward(x, labels, ignore_label=7)
    assert loss == 0 and not np.signbit(loss)         # +0 as Caffe's sum from 0 (not "-0")
    assert not np.any(loss_backward(prob, labels, ignore_label=7))


def test_deprecated_normalize_counts_only_without_normalization():
    assert resolve_normalization() == "VALID"
    assert resolve_normalization(normalize=True) == "VALID"
    assert resolve_normalization(normalize=False) == "BATCH_SIZE"
    assert resolve_normalization("FULL", normalize=False) == "FULL"
    assert resolve_normalization("NONE", normalize=True) == "NONE"
    with pytest.raises(ValueError, match="MEAN"):
        resolve_normalization("MEAN")


def test_probability_is_clamped_at_flt_min():
    # p(label) underflows to 0; Caffe's max(p, FLT_MIN) keeps the loss finite, in both dtypes
    for dtype in (np.float32, np.float64):
        loss, _ = loss_forward(np.array([[0.0, -1000.0]], dtype), np.array([1.0]))
        assert loss.dtype == dtype
        np.testing.assert_allclose(loss, -math.log(FLT_MIN), rtol=1e-6)


def test_gradient_is_prob_minus_onehot_over_valid_count():
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [3.0, 1.0, 0.0]])
    labels = np.array([2.0, 9.0, 0.0])
    _, prob = loss_forward(x, labels, ignore_label=9)
    dx = loss_backward(prob, labels, ignore_label=9, loss_weight=2.0)
    expected = (prob - np.eye(3)[[2, 0, 0]]) * 2.0 / 2     # 2 valid rows
    expected[1] = 0
    np.testing.assert_allclose(dx, expected)


def test_float32_stays_float32():
    x, labels = np.zeros((2, 3), np.float32), np.array([0.0, 2.0], np.float32)
    loss, prob = softmax_loss_forward(x, labels)
    assert loss.dtype == prob.dtype == np.float32
    assert softmax_loss_backward(prob, labels, loss_weight=np.float32(1)).dtype == np.float32
    assert softmax_backward(x, x).dtype == np.float32


# --- labels -------------------------------------------------------------------------------------

def test_find_bad_label():
    assert find_bad_label(np.array([0.0, 1.0, 2.0]), 3) is None
    assert find_bad_label(np.array([0.0, 3.0]), 3) == (1, 3.0)
    assert find_bad_label(np.array([0.0, -1.0]), 3) == (1, -1.0)
    assert find_bad_label(np.array([1.5, 0.0]), 3) == (0, 1.5)
    bad = find_bad_label(np.array([0.0, np.nan]), 3)
    assert bad[0] == 1 and math.isnan(bad[1])
    assert find_bad_label(np.array([0.0, 255.0, -1.0]), 3, ignore_label=255) == (2, -1.0)
    assert find_bad_label(np.array([[0.0, 255.0]]), 3, ignore_label=255) is None


# --- accuracy -----------------------------------------------------------------------------------

def naive_accuracy(x, labels, axis, top_k, ignore):
    outer, c, inner = around(x.shape, axis)
    x3, lab = x.reshape(outer, c, inner), labels.reshape(outer, inner)
    hits, count, seen, class_hits = 0, 0, np.zeros(c), np.zeros(c)
    for o in range(outer):
        for i in range(inner):
            if ignore is not None and lab[o, i] == ignore:
                continue
            true = int(lab[o, i])
            others = sum(1 for k in range(c) if k != true and x3[o, k, i] >= x3[o, true, i])
            seen[true] += 1
            count += 1
            if others < top_k:
                hits += 1
                class_hits[true] += 1
    per_class = [h / s if s else 0.0 for h, s in zip(class_hits, seen)]
    return (hits / count if count else 0.0), per_class


@given(loss_cases(), st.integers(1, 3))
def test_accuracy_matches_definition(case, top_k):
    x, labels, axis, ignore, _ = case
    x = np.round(x)                                  # small integers: plenty of ties
    acc, per_class = accuracy(x, labels, axis=axis, top_k=top_k, ignore_label=ignore)
    want, want_per_class = naive_accuracy(x, labels, axis, top_k, ignore)
    np.testing.assert_allclose(acc, want, rtol=1e-12)
    np.testing.assert_allclose(per_class, want_per_class, rtol=1e-12)


def test_accuracy_ties_count_against_the_true_class():
    x = np.array([[1.0, 1.0, 0.0],      # label 0 ties with class 1: wrong at top 1
                  [0.0, 2.0, 1.0],      # label 2 is second: wrong at top 1, right at top 2
                  [5.0, 5.0, 5.0],      # label 1 ties with both others: wrong even at top 2
                  [0.0, 1.0, 3.0]])     # label 2 is best: right
    labels = np.array([0.0, 2.0, 1.0, 2.0])
    acc, per_class = accuracy(x, labels, top_k=1)
    assert acc == 0.25
    np.testing.assert_array_equal(per_class, [0.0, 0.0, 0.5])
    acc, per_class = accuracy(x, labels, top_k=2)
    assert acc == 0.75                  # row 0: one other class >= -> still within top 2
    np.testing.assert_array_equal(per_class, [1.0, 0.0, 1.0])
    assert accuracy(x, labels, top_k=3)[0] == 1.0


def test_accuracy_per_class_is_zero_for_absent_classes_and_skips_ignored():
    x = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 2.0, 0.0, 0.0]])
    labels = np.array([0.0, 1.0, 255.0])
    acc, per_class = accuracy(x, labels, ignore_label=255)
    assert acc == 0.5
    np.testing.assert_array_equal(per_class, [1.0, 0.0, 0.0, 0.0])
    acc, per_class = accuracy(x, np.full(3, 255.0), ignore_label=255)
    assert acc == 0 and not per_class.any()


def test_accuracy_along_a_spatial_axis():
    # N=1, C=2, H=1, W=3: the class axis is 1, one label per pixel
    x = np.array([[[[1.0, 0.0, 3.0]], [[0.0, 1.0, 2.0]]]])
    acc, _ = accuracy(x, np.array([[[0.0, 0.0, 0.0]]]), axis=1)
    np.testing.assert_allclose(acc, 2 / 3)
    acc, _ = accuracy(np.moveaxis(x, 1, -1), np.array([[[0.0, 0.0, 0.0]]]), axis=-1)
    np.testing.assert_allclose(acc, 2 / 3)
