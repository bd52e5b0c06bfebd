"""Spellings and conventions met in real deploy prototxts (BVLC's model zoo, SqueezeNet,
MobileNet, SSD, FCN, colorization, ...), each as a minimal net of our own.

An acceptance sweep loaded such files in minicnn and in OpenCV's Caffe importer with random
weights and compared every blob; what broke there is pinned down here.
"""

import numpy as np

import minicnn
from minicnn.proto import parse_text


def test_batch_norm_with_three_param_specs_keeps_their_names_for_sharing():
    """Old BatchNorm prototxts list the three statistics as params (a siamese net names them to
    share them). Caffe's UpgradeNetBatchNorm sets lr_mult and decay_mult to 0 and leaves the
    rest, so the two branches still share one mean, variance and scale factor."""
    specs = ''.join(f'param {{ name: "bn_{k}" lr_mult: 0 decay_mult: 1 }} '
                    for k in ("mean", "var", "factor"))
    net = minicnn.Net(parse_text(
        'input: "a" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 } '
        'input: "b" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 } '
        f'layer {{ name: "bn_a" type: "BatchNorm" bottom: "a" top: "ya" {specs} }} '
        f'layer {{ name: "bn_b" type: "BatchNorm" bottom: "b" top: "yb" {specs} }}'),
        phase=minicnn.TEST)
    for spec in net.layer_dict["bn_b"].param.param:
        assert (spec.lr_mult, spec.decay_mult) == (0, 0)
    mean, var, factor = net.params["bn_a"]
    mean.data[...], var.data[...], factor.data[...] = [1, 2, 3], [4, 4, 4], 2
    for shared, own in zip(net.params["bn_a"], net.params["bn_b"]):
        np.testing.assert_array_equal(shared.data, own.data)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = net.forward(a=x, b=x)
    np.testing.assert_allclose(out["yb"], out["ya"])
    want = (x - np.array([0.5, 1, 1.5])[:, None, None]) / np.sqrt(2 + 1e-5)
    np.testing.assert_allclose(out["yb"], want, rtol=1e-5, atol=1e-6)
