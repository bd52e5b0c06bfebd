"""The two bilinear upsamplings of a segmentation net against independent implementations:
Interp (corner-aligned) against SciPy's order-1 map_coordinates and OpenCV's remap, and FCN's
bilinear Deconvolution against OpenCV's resize (half-pixel centres) inside the border, then
aligned by Crop."""

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from minicnn.layers import CropLayer, DeconvolutionLayer, InterpLayer
from minicnn.ops.interp import interp_forward


def corner_aligned_grid(size_in, size_out):
    return np.arange(size_out) * ((size_in - 1) / (size_out - 1)) if size_out > 1 \
        else np.zeros(1)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 20), st.integers(1, 20),
       st.integers(0, 2**32 - 1))
def test_interp_equals_scipy_bilinear_at_corner_aligned_coordinates(h, w, oh, ow, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, h, w))
    y = interp_forward(x, out_hw=(oh, ow))
    rows, cols = np.meshgrid(corner_aligned_grid(h, oh), corner_aligned_grid(w, ow),
                             indexing="ij")
    for n in range(2):
        for c in range(3):
            want = ndimage.map_coordinates(x[n, c], [rows, cols], order=1, mode="nearest")
            np.testing.assert_allclose(y[n, c], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("zoom", [2, 4, 8])
@pytest.mark.parametrize("hw", [(5, 7), (13, 9), (2, 3)])
def test_interp_zoom_equals_opencv_remap(zoom, hw):
    """zoom_factor z puts outputs at multiples of 1/z input pixels: for z a power of two up to
    32 they lie on OpenCV's 1/32 interpolation grid, where remap is exact."""
    x = np.random.default_rng(sum(hw) + zoom).random((1, 2, *hw)).astype(np.float32)
    layer = InterpLayer(zoom_factor=zoom)
    y = layer(x)
    oh, ow = y.shape[2:]
    assert (oh, ow) == tuple(s + (s - 1) * (zoom - 1) for s in hw)
    map_y, map_x = (a.astype(np.float32) for a in np.meshgrid(
        corner_aligned_grid(hw[0], oh), corner_aligned_grid(hw[1], ow), indexing="ij"))
    for c in range(2):
        want = cv2.remap(x[0, c], map_x, map_y, interpolation=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
        np.testing.assert_allclose(y[0, c], want, rtol=1e-5, atol=1e-6)


def test_interp_to_a_second_bottoms_size_off_the_opencv_grid_is_within_its_rounding():
    """Other ratios: OpenCV rounds coordinates to 1/32 pixel, so it agrees to 1/64 of the step
    between neighbours."""
    x = np.random.default_rng(3).random((1, 1, 9, 13)).astype(np.float32)
    y = InterpLayer()(x, np.zeros((1, 1, 23, 31), np.float32))
    map_y, map_x = (a.astype(np.float32) for a in np.meshgrid(
        corner_aligned_grid(9, 23), corner_aligned_grid(13, 31), indexing="ij"))
    want = cv2.remap(x[0, 0], map_x, map_y, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
    np.testing.assert_allclose(y[0, 0], want, atol=1 / 32)
    assert np.abs(y[0, 0] - want).max() > 0              # the grids do differ here


def fcn_upsampling(channels, factor):
    """FCN's bilinear upsampling: kernel 2f - f % 2, stride f, pad ceil((f - 1) / 2), one
    filter per channel (group = channels), bilinear filler, no bias."""
    return DeconvolutionLayer(num_output=channels, group=channels, kernel_size=2 * factor -
                              factor % 2, stride=factor, pad=math.ceil((factor - 1) / 2),
                              bias_term=False, weight_filler={"type": "bilinear"})


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
@pytest.mark.parametrize("hw", [(7, 9), (4, 4), (13, 6)])
def test_bilinear_deconvolution_equals_opencv_resize_inside_the_border(factor, hw):
    """The deconvolution samples the input at half-pixel centres, (o + 0.5) / f - 0.5, like
    cv2.resize; they differ only where that falls outside the input (OpenCV repeats the edge,
    the deconvolution sees zero padding): the first and last ceil((f - 1) / 2) outputs."""
    x = np.random.default_rng(factor).random((1, 3, *hw)).astype(np.float32)
    y = fcn_upsampling(3, factor)(x)
    assert y.shape[2:] == (hw[0] * factor, hw[1] * factor)
    b = math.ceil((factor - 1) / 2)
    for c in range(3):
        want = cv2.resize(x[0, c], (hw[1] * factor, hw[0] * factor),
                          interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(y[0, c, b:-b or None, b:-b or None],
                                   want[b:-b or None, b:-b or None], rtol=1e-5, atol=1e-6)
    if b:
        assert not np.allclose(y[0, 0, 0], cv2.resize(x[0, 0], None, fx=factor, fy=factor)[0])


def test_deconvolution_then_crop_aligns_the_scores_with_the_input():
    """FCN-32s's tail: upsample a stride-4 map by 4 (kernel 8, stride 4, pad 2 gives 4H) and Crop
    it to the input's size; the crop keeps the top-left H x W, equal to OpenCV's resize there
    (inside its border)."""
    x = np.random.default_rng(7).random((1, 2, 6, 5)).astype(np.float32)
    up = fcn_upsampling(2, 4)(x)
    image = np.zeros((1, 3, 21, 19), np.float32)
    cropped = CropLayer(axis=2, offset=[0])(up, image)
    assert cropped.shape == (1, 2, 21, 19)
    want = cv2.resize(x[0, 1], (20, 24), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(cropped[0, 1, 2:21, 2:18], want[2:21, 2:18], rtol=1e-5,
                               atol=1e-6)                    # 18, 19: OpenCV's right border
