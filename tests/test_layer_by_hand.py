"""A layer driven by hand (``layer(x)``, ``layer.backprop(dy)``, as README and docs/learn.md
show) answers a mistake with an error naming the layer and the shapes, never with a NumPy
traceback or a silent wrong answer."""

import numpy as np
import pytest

from minicnn.errors import LayerError
from minicnn.layer import Layer
from minicnn.layers import ConvolutionLayer, InnerProductLayer, PoolingLayer, ReLULayer
from minicnn.testing import check_layer_gradient


def test_a_shape_error_names_the_layer_and_its_bottoms():
    conv = ConvolutionLayer(name="c1", num_output=2, kernel_size=3)
    conv(np.ones((1, 1, 5, 5)))
    with pytest.raises(LayerError, match=r"layer 'c1' \(Convolution; bottoms \(1, 3, 5, 5\)\): "
                                         r".*3 channels"):
        conv(np.ones((1, 3, 5, 5)))


def test_backprop_without_a_diff_on_a_layer_that_is_not_a_loss():
    relu = ReLULayer()
    relu(np.array([[-1.0, 2.0]]))
    with pytest.raises(LayerError, match=r"'ReLU'.*not a loss layer.*backprop\(np.ones_like"):
        relu.backprop()                   # it used to return zeros: dL/dtop taken as 0


def test_a_new_dtype_after_setup_is_refused():
    ip = InnerProductLayer(num_output=2)
    ip(np.ones((2, 3), np.float32))
    with pytest.raises(LayerError, match="set up for float32 bottoms.*given float64"):
        ip(np.ones((2, 3)))               # it used to compute in float32 and say nothing
    assert ip(np.ones((2, 3), np.int64)).dtype == np.float32     # integers take its dtype


@pytest.mark.parametrize("x", [np.ones((2, 2), np.complex128), np.array([["a", "b"]], object)])
def test_values_that_are_not_real_numbers_are_refused(x):
    with pytest.raises(LayerError, match=f"'ReLU'.*bottom 0 holds {x.dtype}"):
        ReLULayer()(x)


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_floats_other_than_float32_and_float64_are_refused(dtype):
    # a Net computes in float32 or float64 only; by hand, float16 ran on in half precision
    # (Pooling's -FLT_MAX start overflowed with NumPy's 'overflow encountered in cast')
    from minicnn.layers import PoolingLayer
    with pytest.raises(LayerError, match=f"'Pooling'.*bottom 0 holds {np.dtype(dtype)} values.*"
                                         "float32 or float64"):
        PoolingLayer(kernel_size=2)(np.ones((1, 1, 4, 4), dtype))


class _Scale(Layer):
    """y = x * w, one learned w per column; w filled from a dict, as layers' fields take it."""
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.init_param(0, bottom[0].shape[1:], {"type": "constant", "value": 3.0})

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff += (top[0].diff * bottom[0].data).sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data


def test_init_param_takes_a_filler_as_a_dict():
    layer = _Scale()
    assert (layer(np.ones((2, 3))) == 3.0).all()
    assert check_layer_gradient(_Scale, [np.random.default_rng(0).standard_normal((2, 3))]) < 1e-6


@pytest.mark.parametrize("make, missing", [
    (lambda: ReLULayer(name="r"), "keeps_mask"),
    (lambda: PoolingLayer(name="p", kernel_size=2), "pool"),
    (lambda: InnerProductLayer(name="p", num_output=2), None)])
def test_forward_before_setup_says_setup_makes_what_is_missing(make, missing):
    """setup/reshape/forward/backward called by hand (layer.py's protocol): a forward before
    setup met a bare AttributeError ('ReLULayer' object has no attribute 'negative_slope')."""
    from minicnn.blob import Blob
    from minicnn.errors import LayerNotSetUp
    layer = make()
    bottom, top = [Blob.from_array(np.ones((1, 1, 4, 4)))], [Blob((), np.float64)]
    with pytest.raises(LayerNotSetUp, match=rf"layer '{layer.name}' \({layer.type}\) has no "
                       rf"'{missing or '.*'}' yet: setup\(bottom, top\) makes it"):
        layer.forward(bottom, top)
    assert getattr(layer, "not_made_yet", "default") == "default"   # still an AttributeError
    layer.setup(bottom, top)
    layer.forward(bottom, top)                                       # now it runs
    with pytest.raises(AttributeError) as raised:
        layer.not_made_yet
    assert type(raised.value) is AttributeError         # after setup: a plain missing name
