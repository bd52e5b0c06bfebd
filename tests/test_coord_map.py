"""minicnn.coord_map: pycaffe's coordinate maps and the Crop that aligns two tops."""

import numpy as np
import pytest

import minicnn
from minicnn.coord_map import coord_map_from_to, crop
from minicnn.net_spec import NetSpec
from minicnn.net_spec import layers as L


def fcn_toy(width=16, conv=None, pool=None, deconv=None):
    """FCN-32s in small: a padded convolution, a pooling, a 1x1 score, a learned upsampling."""
    n = NetSpec()
    n.data = L.Input(shape={"dim": [1, 1, 1, width]})
    n.conv = L.Convolution(n.data, num_output=1, bias_term=False, **(conv or {
        "kernel_size": [1, 3], "pad": [0, 100]}))
    n.pool = L.Pooling(n.conv, pool="AVE", **(pool or {"kernel_h": 1, "kernel_w": 2,
                                                       "stride_h": 1, "stride_w": 2}))
    n.score = L.Convolution(n.pool, num_output=1, kernel_size=1, bias_term=False)
    n.upscore = L.Deconvolution(n.score, num_output=1, bias_term=False, **(deconv or {
        "kernel_size": [1, 4], "stride": [1, 2]}))
    return n


def test_maps_worked_out_by_hand():
    # conv k3 p100: top = bottom + 99; AVE pool 2/2: top = (bottom - 0.5) / 2; deconv k4 s2:
    # top = 2 bottom + 1.5. From data: x -> 2 (x + 98.5) / 2 + 1.5 = x + 100
    n = fcn_toy()
    ax, a, b = coord_map_from_to(n.upscore, n.data)
    assert ax == 1 and np.all(a == 1) and list(b) == [0, -100]
    n.cropped = crop(n.upscore, n.data)
    param = n.to_proto().layer[-1]
    assert param.type == "Crop" and list(param.bottom) == ["upscore", "data"]
    assert param.crop_param.axis == 2 and list(param.crop_param.offset) == [0, 100]
    # a dilated 3x3 (extent 5) without padding: top = bottom - 2, so the data is cut at 2
    n = NetSpec()
    n.data = L.Input(shape={"dim": [1, 1, 9, 9]})
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, dilation=2)
    assert list(coord_map_from_to(n.data, n.conv)[2]) == [-2]
    assert list(crop(n.data, n.conv).to_proto().layer[-1].crop_param.offset) == [2]
    # through elementwise layers and a crop: a Crop follows its first bottom
    n.relu = L.ReLU(n.conv, in_place=True)
    n.back = crop(n.data, n.relu)
    n.sum = L.Eltwise(n.back, n.relu)
    assert list(coord_map_from_to(n.sum, n.data)[2]) == [2]        # data = sum + 2
    assert list(coord_map_from_to(n.back, n.conv)[2]) == [0]       # not through the 2nd bottom
    # a padded deconvolution: top = 2 bottom + 1.5 - 1, so the offset is 99
    n = fcn_toy(deconv={"kernel_size": [1, 4], "stride": [1, 2], "pad": [0, 1]})
    assert list(coord_map_from_to(n.upscore, n.data)[2]) == [0, -99]


@pytest.mark.parametrize("deconv_pad", [0, 1])
def test_the_crop_aligns_the_pixels(deconv_pad):
    """A column ramp through the toy FCN comes back onto itself: the offset is the engine's."""
    width = 16
    n = fcn_toy(width, deconv={"kernel_size": [1, 4], "stride": [1, 2], "pad": [0, deconv_pad]})
    n.score_crop = crop(n.upscore, n.data)
    net = minicnn.Net(n.to_proto(), minicnn.TEST, dtype=np.float64)
    net.params["conv"][0].data[...] = [0, 1, 0]                   # a centred delta: a copy
    net.params["score"][0].data[...] = 1
    net.params["upscore"][0].data[...] = [0.25, 0.75, 0.75, 0.25]   # linear upsampling by 2
    ramp = np.arange(width, dtype=np.float64)
    out = net.forward(data=ramp.reshape(1, 1, 1, width))["score_crop"].ravel()
    assert out.shape == (width,)
    # the first and last pixels see the convolution's zero padding through the pooling
    np.testing.assert_allclose(out[2:-2], ramp[2:-2], rtol=0, atol=1e-12)
    assert not np.allclose(out[:1], ramp[:1])


def test_crops_that_cannot_align_are_refused():
    n = fcn_toy(deconv={"kernel_size": [1, 4], "stride": [1, 4]})
    with pytest.raises(ValueError, match="differ in scale"):
        crop(n.upscore, n.data)
    n = NetSpec()
    n.data = L.Input(shape={"dim": [1, 1, 9, 9]})
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3)
    with pytest.raises(ValueError, match="starts inside the other"):
        crop(n.conv, n.data)                                      # conv is the smaller one
    n.even = L.Convolution(n.data, num_output=1, kernel_size=2)
    with pytest.raises(ValueError, match="not a whole number of pixels"):
        crop(n.data, n.even)
    n.fc = L.InnerProduct(n.data, num_output=4)
    with pytest.raises(ValueError, match="no common blob"):
        crop(n.fc, n.conv)
    n.other = L.Input(shape={"dim": [1, 1, 9, 9]})
    with pytest.raises(ValueError, match="no common blob"):
        crop(n.other, n.data)
    n.glob = L.Pooling(n.data, global_pooling=True)
    with pytest.raises(ValueError, match="no common blob"):
        crop(n.glob, n.data)


def test_pycaffes_conv_params_and_crop_params():
    """coord_map's public helpers: (axis, stride, dilated kernel extent, pad) and (axis,
    offset), with Caffe's defaults."""
    from minicnn.coord_map import conv_params, crop_params
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 16, 16]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, dilation=2, pad=1, stride=2)
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2)
    n.crop = L.Crop(n.pool, n.data, crop_param=dict(offset=[3]))
    axis, stride, extent, pad = conv_params(n.conv.fn)
    assert axis == 1 and stride.tolist() == [2] and extent.tolist() == [5] and pad.tolist() == [1]
    axis, stride, extent, pad = conv_params(n.pool.fn)
    assert stride.tolist() == [2] and extent.tolist() == [2] and pad.tolist() == [0]
    axis, offset = crop_params(n.crop.fn)
    assert axis == 2 and offset.tolist() == [3]
    assert crop_params(L.Crop(n.pool, n.data).fn)[1].tolist() == [0]
