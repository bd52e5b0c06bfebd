"""Inference fusion (minicnn/fusion.py): BatchNorm -> Scale (-> ReLU) run as one native pass
must leave every blob bit-identical to running the layers one by one, and must stay out of
the way whenever a layer needs backward."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.native import lib
from minicnn.proto import parse_text

pytestmark = pytest.mark.skipif(lib is None, reason="minicnn._native was not built")


def chain_net(c, relu1=True, slope=0.0, bias1=True, bn2_in_place=False, relu2=True,
              force_backward=False, loss=False):
    """Input -> conv -> BN/Scale(/ReLU) in place -> conv -> BN (maybe not in place) -> Scale ->
    ReLU(slope) -> BN -> Scale -> pooling (a chain of two at the end)."""
    bn2_top = "c2" if bn2_in_place else "b2"
    text = f"""
    force_backward: {str(force_backward).lower()}
    layer {{ name: "data" type: "Input" top: "data"
             input_param {{ shape {{ dim: 2 dim: 3 dim: 7 dim: 9 }} }} }}
    layer {{ name: "c1" type: "Convolution" bottom: "data" top: "c1"
             convolution_param {{ num_output: {c} kernel_size: 3 pad: 1
                                  weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
    layer {{ name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1" }}
    layer {{ name: "s1" type: "Scale" bottom: "c1" top: "c1"
             scale_param {{ bias_term: {str(bias1).lower()} }} }}
    {'layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }' if relu1 else ''}
    layer {{ name: "c2" type: "Convolution" bottom: "c1" top: "c2"
             convolution_param {{ num_output: {c} kernel_size: 1
                                  weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
    layer {{ name: "bn2" type: "BatchNorm" bottom: "c2" top: "{bn2_top}" }}
    layer {{ name: "s2" type: "Scale" bottom: "{bn2_top}" top: "{bn2_top}"
             scale_param {{ bias_term: true }} }}
    {f'layer {{ name: "r2" type: "ReLU" bottom: "{bn2_top}" top: "{bn2_top}" '
     f'relu_param {{ negative_slope: {slope} }} }}' if relu2 else ''}
    layer {{ name: "bn3" type: "BatchNorm" bottom: "{bn2_top}" top: "{bn2_top}" }}
    layer {{ name: "s3" type: "Scale" bottom: "{bn2_top}" top: "{bn2_top}"
             scale_param {{ bias_term: true }} }}
    layer {{ name: "pool" type: "Pooling" bottom: "{bn2_top}" top: "pool"
             pooling_param {{ pool: AVE global_pooling: true }} }}
    """
    if loss:
        text = text.replace('dim: 2 dim: 3 dim: 7 dim: 9 } } }',
                            f'dim: 2 dim: 3 dim: 7 dim: 9 }} shape {{ dim: 2 dim: {c} '
                            'dim: 1 dim: 1 } } }').replace('top: "data"\n', 'top: "data" top: "t"\n')
        text += 'layer { name: "loss" type: "EuclideanLoss" bottom: "pool" bottom: "t" ' \
                'top: "loss" }'
    return parse_text(text)


def randomize(net, seed):
    """Random weights, stored statistics (BatchNorm's sums and scale factor), random input."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].data.shape[0]
            factor = rng.uniform(0.5, 2.0)
            layer.blobs[0].data[...] = rng.standard_normal(c) * factor
            layer.blobs[1].data[...] = rng.uniform(0.01, 3.0, c) * factor
            layer.blobs[2].data[...] = factor
        else:
            for blob in layer.blobs:
                blob.data[...] = rng.standard_normal(blob.data.shape)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].data.shape)


def run_both(param, seed, monkeypatch):
    fused = minicnn.Net(param)
    randomize(fused, seed)
    fused.forward()
    monkeypatch.setenv("MINICNN_FUSE", "0")
    plain = minicnn.Net(param)
    randomize(plain, seed)
    plain.forward()
    monkeypatch.delenv("MINICNN_FUSE")
    return fused, plain


def chains(net):
    return {net.layers[i].name: chain.count for i, chain in net._fusions.items()}


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 5), relu1=st.booleans(), slope=st.sampled_from([0.0, 0.1, 0.25]),
       bias1=st.booleans(), bn2_in_place=st.booleans(), relu2=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_fused_forward_is_bit_identical(c, relu1, slope, bias1, bn2_in_place, relu2, seed):
    param = chain_net(c, relu1, slope, bias1, bn2_in_place, relu2)
    with pytest.MonkeyPatch.context() as monkeypatch:
        fused, plain = run_both(param, seed, monkeypatch)
    assert chains(fused) == {"bn1": 3 if relu1 else 2, "bn2": 3 if relu2 else 2, "bn3": 2}
    assert plain._fusions == {}
    for name in plain.blobs:
        np.testing.assert_array_equal(fused.blobs[name].data, plain.blobs[name].data,
                                      err_msg=name)
    assert np.all(np.isfinite(fused.blobs["pool"].data))


def test_partial_forward_runs_a_cut_chain_layer_by_layer(monkeypatch):
    param = chain_net(3)
    fused, plain = run_both(param, 5, monkeypatch)
    fused.forward(end="s1")                     # stops inside the bn1 chain: no fusion there
    plain.forward(end="s1")
    np.testing.assert_array_equal(fused.blobs["c1"].data, plain.blobs["c1"].data)


@pytest.mark.parametrize("kwargs", [dict(force_backward=True), dict(loss=True)])
def test_no_fusion_when_backward_needs_the_layers(kwargs):
    net = minicnn.Net(chain_net(3, **kwargs), phase="TEST")
    randomize(net, 1)
    net.forward()
    assert net._fusions == {}
    net.backward()                              # and backward still has what it needs


def test_no_fusion_with_batch_statistics():
    net = minicnn.Net(chain_net(2), phase="TRAIN")   # BatchNorm on the batch's own statistics
    randomize(net, 2)
    net.forward()
    assert net._fusions == {}


def test_float64_blobs_fall_back_to_the_layers(monkeypatch):
    """A chain whose arrays the kernel does not take (here: float64 parameters against
    float32 data) runs layer by layer, with the layers' own results."""
    param = chain_net(2)
    fused, plain = run_both(param, 3, monkeypatch)
    for net in (fused, plain):
        net.layers[[l.name for l in net.layers].index("s1")].blobs[0].data = \
            net.layers[[l.name for l in net.layers].index("s1")].blobs[0].data.astype(np.float64)
        net.forward()
    np.testing.assert_array_equal(fused.blobs["c1"].data, plain.blobs["c1"].data)
