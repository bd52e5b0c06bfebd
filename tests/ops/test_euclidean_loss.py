"""EuclideanLoss op: definition and finite differences."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minicnn.ops.euclidean_loss import euclidean_loss_backward, euclidean_loss_forward
from minicnn.testing import numerical_grad


@given(st.integers(1, 4), st.integers(1, 5), st.floats(0.1, 3), st.integers(0, 2**31))
def test_forward_and_gradient(n, d, weight, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    loss, diff = euclidean_loss_forward.impls["ref"](a, b)
    np.testing.assert_allclose(loss, np.sum((a - b) ** 2) / (2 * n), rtol=1e-12)
    grad = euclidean_loss_backward.impls["ref"](diff, weight)
    numeric = numerical_grad(lambda: weight * float(euclidean_loss_forward(a, b)[0]), a)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_float32_stays_float32():
    a = np.ones((2, 3), np.float32)
    loss, diff = euclidean_loss_forward(a, a * 0)
    assert loss.dtype == np.float32 and euclidean_loss_backward(diff, 0.5).dtype == np.float32
