"""minicnn.testing's gradient check must be able to fail: a backward that leaves part of a
bottom diff as it was, or assigns a parameter diff instead of adding to it (CONTRIBUTING.md,
I1), is caught even where its values are the gradient's."""

import numpy as np
import pytest

from minicnn.layer import Layer
from minicnn.layers.python_layer import PythonLayerBase
from minicnn.testing import GradientMismatch, check_layer_gradient


class _PadBias(Layer):
    """y = x[:, :2] + b, one learned b (x has 3 columns). ``writes_all``: backward writes every
    element of the bottom diff (the zero column too); ``adds``: it adds to b's diff."""
    exact_num_bottom = exact_num_top = 1

    def __init__(self, writes_all=True, adds=True):
        super().__init__()
        self.writes_all, self.adds = writes_all, adds

    def layer_setup(self, bottom, top):
        self.init_param(0, (1,))

    def reshape(self, bottom, top):
        top[0].reshape((bottom[0].shape[0], 2))

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[:, :2] + self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            if self.writes_all:
                bottom[0].diff[...] = 0
            bottom[0].diff[:, :2] = top[0].diff
        grad = top[0].diff.sum()
        if self.adds:
            self.blobs[0].diff += grad
        else:
            self.blobs[0].diff[...] = grad


def test_a_correct_backward_passes():
    assert check_layer_gradient(lambda: _PadBias(), [np.arange(6.0).reshape(2, 3)]) < 1e-6


@pytest.mark.parametrize("fields, where", [({"writes_all": False}, r"bottom\[0\] element \(0, 2\)"),
                                           ({"adds": False}, r"blobs\[0\] element \(0,\)")])
def test_stale_bottom_diffs_and_assigned_parameter_diffs_fail(fields, where):
    with pytest.raises(GradientMismatch, match=where):
        check_layer_gradient(lambda: _PadBias(**fields), [np.arange(6.0).reshape(2, 3)])


class _PyScale(PythonLayerBase):
    """A Python layer (pycaffe's protocol): y = x * w with one learned w; ``bug`` drops the 2
    from dL/dx = 2 * w * dy of y = 2 * x * w."""
    bug = False

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data * self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += 2 * np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = (1 if self.bug else 2) * top[0].diff * self.blobs[0].data


def test_a_python_layer_is_checked_and_its_bug_caught():
    x = np.arange(6.0).reshape(2, 3) - 2.5
    assert check_layer_gradient(_PyScale, [x]) < 1e-6
    assert check_layer_gradient(_PyScale(), [x]) < 1e-6           # an object, not a class
    plain = type("Plain", (), dict(vars(_PyScale)))               # a Net takes it too
    assert check_layer_gradient(plain, [x]) < 1e-6
    buggy = type("Buggy", (_PyScale,), {"bug": True})
    with pytest.raises(GradientMismatch, match=r"^Buggy bottom\[0\] element \(0, 0\)"):
        check_layer_gradient(buggy, [x])            # named as the user's class, not the wrapper
