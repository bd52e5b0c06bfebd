"""Softmax, the losses (softmax, sigmoid cross-entropy, Euclidean) and accuracy on the GPU
against the NumPy reference: channel and spatial layouts, ignore_label, every normalization."""

import numpy as np
import pytest

from minicnn.ops.euclidean_loss import euclidean_loss_backward, euclidean_loss_forward
from minicnn.ops.sigmoid_cross_entropy import (sigmoid_cross_entropy_backward,
                                               sigmoid_cross_entropy_forward)
from minicnn.ops.softmax import (accuracy_forward, softmax_backward, softmax_forward,
                                 softmax_loss_backward, softmax_loss_forward)

from .conftest import assert_close

SHAPES = [((6, 10), 1), ((2, 5, 3, 4), 1), ((3, 4, 7), 2), ((4, 1000), 1),
          ((7, 70), 1)]                  # the last two: a block per row of classes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", SHAPES)
def test_softmax_matches_the_reference(gpu, shape, axis, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    y = softmax_forward(gpu.asarray(x), axis=axis)
    want = softmax_forward.impls["ref"](x, axis)
    assert_close(y, want, 1e-6, "y")
    dy = rng.standard_normal(shape).astype(dtype)
    assert_close(softmax_backward(gpu.asarray(dy), y, axis=axis),
                 softmax_backward.impls["ref"](dy, want, axis), 1e-5, "dx")


def _labels(rng, shape, axis, ignore):
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    labels = rng.integers(0, shape[axis], outer * inner).astype(np.float64)
    if ignore is not None:
        labels[::3] = ignore
    return labels.reshape((outer,) + shape[axis + 1:])


@pytest.mark.parametrize("normalization", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("shape, axis", SHAPES)
def test_softmax_loss_matches_the_reference(gpu, shape, axis, ignore, normalization):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    labels = _labels(rng, shape, axis, ignore).astype(np.float32)
    kw = dict(axis=axis, ignore_label=ignore, normalization=normalization)
    want_loss, want_prob = softmax_loss_forward.impls["ref"](x, labels, **kw)
    loss, prob = softmax_loss_forward(gpu.asarray(x), gpu.asarray(labels), **kw)
    assert_close(loss, want_loss, 1e-6, "loss")
    assert_close(prob, want_prob, 1e-6, "prob")
    assert_close(softmax_loss_backward(prob, gpu.asarray(labels), loss_weight=0.5, **kw),
                 softmax_loss_backward.impls["ref"](want_prob, labels, loss_weight=0.5, **kw),
                 1e-6, "dx")


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("ignore", [None, 4])
@pytest.mark.parametrize("shape, axis", SHAPES[:3])
def test_accuracy_matches_the_reference(gpu, shape, axis, ignore, top_k):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, shape).astype(np.float32)            # ties count against the label
    labels = _labels(rng, shape, axis, ignore).astype(np.float32)
    kw = dict(axis=axis, top_k=top_k, ignore_label=ignore)
    want_acc, want_per_class = accuracy_forward.impls["ref"](x, labels, **kw)
    acc, per_class = accuracy_forward(gpu.asarray(x), gpu.asarray(labels), **kw)
    assert_close(acc, want_acc, 1e-7, "accuracy")
    assert_close(per_class, want_per_class, 1e-7, "per class")


@pytest.mark.parametrize("normalization", ["BATCH_SIZE", "VALID", "FULL"])
@pytest.mark.parametrize("ignore", [None, 0])
def test_sigmoid_cross_entropy_matches_the_reference(gpu, ignore, normalization):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5, 7)) * 10).astype(np.float32)
    x[0, :3] = [1000, -1000, 0]
    t = rng.random((5, 7)).astype(np.float32)
    t[1] = rng.integers(0, 2, 7)
    kw = dict(ignore_label=ignore, normalization=normalization)
    want_loss, want_p = sigmoid_cross_entropy_forward.impls["ref"](x, t, **kw)
    loss, p = sigmoid_cross_entropy_forward(gpu.asarray(x), gpu.asarray(t), **kw)
    assert_close(loss, want_loss, 1e-6, "loss")
    assert_close(p, want_p, 1e-6, "p")
    assert_close(sigmoid_cross_entropy_backward(p, gpu.asarray(t), loss_weight=2.0, **kw),
                 sigmoid_cross_entropy_backward.impls["ref"](want_p, t, loss_weight=2.0, **kw),
                 1e-6, "dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_euclidean_loss_matches_the_reference(gpu, dtype):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((4, 6)).astype(dtype), rng.standard_normal((4, 6, 1)).astype(dtype)
    want_loss, want_diff = euclidean_loss_forward.impls["ref"](a, b)
    loss, diff = euclidean_loss_forward(gpu.asarray(a), gpu.asarray(b))
    assert_close(loss, want_loss, 1e-6, "loss")
    assert_close(euclidean_loss_backward(diff, 0.7),
                 euclidean_loss_backward.impls["ref"](want_diff, 0.7), 1e-6, "da")
