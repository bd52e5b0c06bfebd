"""SENet's Axpy (top = a * X + Y, a per image and channel): against PyTorch float64 and its
autograd, finite differences, the same SE block written with BVLC layers (Scale with two
bottoms at axis 0, then Eltwise SUM), and its errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import AxpyLayer
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient

torch = pytest.importorskip("torch")


@st.composite
def cases(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    rest = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
    a_shape = (n, c, 1, 1) if len(rest) == 2 and draw(st.booleans()) else (n, c)
    return a_shape, (n, c, *rest), draw(st.integers(0, 2**32 - 1))


@given(cases())
def test_matches_pytorch_and_finite_differences(case):
    a_shape, x_shape, seed = case
    rng = np.random.default_rng(seed)
    a, x, y = rng.standard_normal(a_shape), rng.standard_normal(x_shape), \
        rng.standard_normal(x_shape)
    bottom = [Blob.from_array(v, np.float64) for v in (a, x, y)]
    top = [Blob((), np.float64)]
    layer = AxpyLayer()
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    ta, tx, ty = (torch.tensor(v, requires_grad=True) for v in (a, x, y))
    want = ta.reshape(x_shape[:2] + (1,) * (len(x_shape) - 2)) * tx + ty
    np.testing.assert_allclose(top[0].data, want.detach().numpy(), rtol=1e-14, atol=1e-14)
    dtop = rng.standard_normal(x_shape)
    want.backward(torch.tensor(dtop))
    top[0].diff[...] = dtop
    layer.backward(top, [True, True, True], bottom)
    for blob, t in zip(bottom, (ta, tx, ty)):
        np.testing.assert_allclose(blob.diff, t.grad.numpy(), rtol=1e-13, atol=1e-13)
    check_layer_gradient(AxpyLayer, [a, x, y])


SE_TAIL = """force_backward: true
input: "x" input_shape { dim: 2 dim: 4 dim: 3 dim: 5 }
input: "shortcut" input_shape { dim: 2 dim: 4 dim: 3 dim: 5 }
layer { name: "pool" type: "Pooling" bottom: "x" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sig" type: "Sigmoid" bottom: "fc" top: "sig" }
%s
"""
WITH_AXPY = """layer { name: "axpy" type: "Axpy" bottom: "sig" bottom: "x" bottom: "shortcut"
        top: "out" }"""
WITH_BVLC = """layer { name: "scale" type: "Scale" bottom: "x" bottom: "sig" top: "scaled"
        scale_param { axis: 0 } }
layer { name: "sum" type: "Eltwise" bottom: "scaled" bottom: "shortcut" top: "out" }"""


def test_se_block_equals_scale_and_eltwise():
    """The SE block's tail as SENet writes it (Axpy) and as BVLC layers can (Scale with the
    excitation as its second bottom at axis 0, Eltwise SUM): the same output and gradients."""
    rng = np.random.default_rng(7)
    x, shortcut = rng.standard_normal((2, 4, 3, 5)), rng.standard_normal((2, 4, 3, 5))
    results = []
    for tail in (WITH_AXPY, WITH_BVLC):
        net = minicnn.Net(parse_text(SE_TAIL % tail), dtype=np.float64)
        net.params["fc"][0].data[...] = np.linspace(-1, 1, 16).reshape(4, 4)
        net.forward(x=x, shortcut=shortcut)
        out = net.blobs["out"]
        value = out.data.copy()
        out.diff[...] = np.linspace(-2, 3, out.count).reshape(out.shape)
        net.backward()
        results.append((value, net.blobs["x"].diff.copy(), net.blobs["shortcut"].diff.copy(),
                        net.params["fc"][0].diff.copy()))
    assert np.abs(results[0][3]).sum() > 0
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shapes, match", [
    (((2, 3), (2, 3, 4), (2, 3, 5)), "must have one shape"),
    (((2, 4), (2, 3, 4), (2, 3, 4)), r"a \(bottom 0, shape \(2, 4\)\) must be N x C"),
    (((2, 3, 2), (2, 3, 4), (2, 3, 4)), "must be N x C or N x C x 1 x 1"),
])
def test_shape_errors_name_the_bottoms(shapes, match):
    bottom = [Blob.from_array(np.zeros(s)) for s in shapes]
    with pytest.raises(LayerError, match=match):
        AxpyLayer().setup(bottom, [Blob(())])


def test_not_in_place():
    bottom = [Blob.from_array(np.zeros(s)) for s in ((1, 2), (1, 2, 3), (1, 2, 3))]
    for b in bottom:
        with pytest.raises(LayerError, match="does not allow in-place computation"):
            AxpyLayer().setup(bottom, [b])


@pytest.mark.parametrize("down", [(a, x, y) for a in (False, True) for x in (False, True)
                                  for y in (False, True) if a or x or y])
def test_propagate_down_fills_exactly_the_diffs_asked_for(down):
    """Each bottom asked for gets its own gradient (as with all three asked for); the others keep
    whatever diff they had."""
    rng = np.random.default_rng(3)
    a, x, y = rng.standard_normal((2, 3)), rng.standard_normal((2, 3, 4)), \
        rng.standard_normal((2, 3, 4))
    dtop = rng.standard_normal((2, 3, 4))
    want = (np.sum(dtop * x, axis=2), a[:, :, None] * dtop, dtop)
    bottom = [Blob.from_array(v, np.float64) for v in (a, x, y)]
    top = [Blob((), np.float64)]
    layer = AxpyLayer()
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    stale = [np.full(b.shape, 7.0) for b in bottom]
    for b, s in zip(bottom, stale):
        b.diff[...] = s
    top[0].diff[...] = dtop
    layer.backward(top, list(down), bottom)
    for b, asked, grad, s in zip(bottom, down, want, stale):
        np.testing.assert_allclose(b.diff, grad if asked else s, rtol=1e-14, atol=1e-14)
