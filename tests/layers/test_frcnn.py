"""The Fast/Faster R-CNN fork's layers (caffe-fast-rcnn): ROIPooling and SmoothL1Loss; and
R-FCN's PSROIPooling (against a loop transliterated from its kernel, OpenCV's importer, which
implements it, and finite differences).

ROIPooling is checked against a plain loop written here from the fork's forward, its backward
against the fork's own backward algorithm (each bottom element collects the bins that could
have pooled it), both against small cases worked by hand, against OpenCV's Caffe importer (which
implements ROIPooling for Faster R-CNN), and by finite differences. SmoothL1Loss is checked
against PyTorch (its smooth_l1_loss with beta = 1 / sigma^2, and autograd) and by finite
differences. Both run in nets built from prototxt text, in float32 and float64, and on the GPU
(SmoothL1Loss's CuPy impl; ROIPooling runs on host copies there).
"""

import math
import struct

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layers import PSROIPoolingLayer, ROIPoolingLayer, SmoothL1LossLayer
from minicnn.ops.frcnn import (psroi_pool_backward, psroi_pool_forward, roi_pool_backward,
                                roi_pool_forward)
from minicnn.proto import caffe_pb2, parse_binary, parse_text, read_binary, serialize
from minicnn.testing import check_layer_gradient
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)
from tests.test_wire import field, varint

seeds = st.integers(0, 2**32 - 1)
FLT_MAX = float(np.finfo(np.float32).max)


# --- the fork's fields -------------------------------------------------------------------------

FRCNN_LAYERS = """
name: "frcnn_head"
layer { name: "roi_pool5" type: "ROIPooling" bottom: "conv5_3" bottom: "rois" top: "pool5"
  roi_pooling_param { pooled_w: 7 pooled_h: 6 spatial_scale: 0.0625 } }
layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_inside_weights" bottom: "bbox_outside_weights" top: "loss_bbox"
  loss_weight: 1 smooth_l1_loss_param { sigma: 3.0 } }
"""


def test_prototxt_fields_and_their_wire_numbers():
    net = parse_text(FRCNN_LAYERS)
    pool, loss = net.layer
    p = pool.roi_pooling_param
    assert (p.pooled_h, p.pooled_w, p.spatial_scale) == (6, 7, 0.0625)
    assert loss.smooth_l1_loss_param.sigma == 3.0
    defaults = caffe_pb2.LayerParameter()
    assert (defaults.roi_pooling_param.pooled_h, defaults.roi_pooling_param.pooled_w) == (0, 0)
    assert defaults.roi_pooling_param.spatial_scale == 1.0
    assert defaults.smooth_l1_loss_param.sigma == 1.0
    # the fork's numbers: LayerParameter 8266711 / 8266712; pooled_h 1, pooled_w 2,
    # spatial_scale 3 (float); sigma 1 (float)
    roi = field(1, 0, varint(6)) + field(2, 0, varint(7)) + field(3, 5, struct.pack("<f", 0.0625))
    assert serialize(pool) == (field(1, 2, b"roi_pool5") + field(2, 2, b"ROIPooling") +
                               b"".join(field(3, 2, b) for b in (b"conv5_3", b"rois")) +
                               field(4, 2, b"pool5") + field(8266711, 2, roi))
    sigma = field(1, 5, struct.pack("<f", 3.0))
    assert field(8266712, 2, sigma) in serialize(loss)
    assert parse_binary(serialize(net), "NetParameter") == net


def test_a_caffemodel_with_the_fields_reads_back(tmp_path):
    text = """
input: "conv5_3" input_shape { dim: 1 dim: 2 dim: 8 dim: 8 }
input: "rois" input_shape { dim: 3 dim: 5 }
input: "bbox_pred" input_shape { dim: 3 dim: 8 }
input: "bbox_targets" input_shape { dim: 3 dim: 8 }
input: "bbox_inside_weights" input_shape { dim: 3 dim: 8 }
input: "bbox_outside_weights" input_shape { dim: 3 dim: 8 }
""" + FRCNN_LAYERS
    net = minicnn.Net(parse_text(text))
    path = tmp_path / "frcnn.caffemodel"
    net.save(str(path))
    saved = {layer.name: layer for layer in read_binary(path).layer}
    assert saved["roi_pool5"].roi_pooling_param.spatial_scale == 0.0625
    assert saved["roi_pool5"].roi_pooling_param.pooled_w == 7
    assert saved["loss_bbox"].smooth_l1_loss_param.sigma == 3.0


# --- ROIPooling: the fork's forward and backward, written out plainly ---------------------------

def c_round(v):
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def fork_geometry(roi, scale, ph_count, pw_count):
    """(batch, start_h, start_w, end_h, end_w, bin_h, bin_w) in double, as the fork's CPU code."""
    start_w, start_h = c_round(roi[1] * scale), c_round(roi[2] * scale)
    end_w, end_h = c_round(roi[3] * scale), c_round(roi[4] * scale)
    bin_h = max(end_h - start_h + 1, 1) / ph_count
    bin_w = max(end_w - start_w + 1, 1) / pw_count
    return int(roi[0]), start_h, start_w, end_h, end_w, bin_h, bin_w


def roi_pool_loops(x, rois, ph_count, pw_count, scale):
    """The fork's Forward_cpu, one element at a time (float64 only)."""
    _, channels, height, width = x.shape
    y = np.zeros((len(rois), channels, ph_count, pw_count))
    argmax = np.full(y.shape, -1)
    for r, roi in enumerate(rois):
        b, start_h, start_w, _, _, bin_h, bin_w = fork_geometry(roi, scale, ph_count, pw_count)
        for c in range(channels):
            for ph in range(ph_count):
                for pw in range(pw_count):
                    h0 = min(max(math.floor(ph * bin_h) + start_h, 0), height)
                    h1 = min(max(math.ceil((ph + 1) * bin_h) + start_h, 0), height)
                    w0 = min(max(math.floor(pw * bin_w) + start_w, 0), width)
                    w1 = min(max(math.ceil((pw + 1) * bin_w) + start_w, 0), width)
                    if h1 <= h0 or w1 <= w0:
                        continue
                    best, where = -FLT_MAX, -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if x[b, c, h, w] > best:
                                best, where = x[b, c, h, w], h * width + w
                    y[r, c, ph, pw], argmax[r, c, ph, pw] = best, where
    return y, argmax


def roi_pool_backward_loops(dy, argmax, rois, x_shape, scale):
    """The fork's Backward_cpu: each bottom element inside a roi sums the diffs of the bins
    that could hold it and whose argmax is it."""
    _, channels, height, width = x_shape
    ph_count, pw_count = dy.shape[2:]
    dx = np.zeros(x_shape)
    for r, roi in enumerate(rois):
        b, start_h, start_w, end_h, end_w, bin_h, bin_w = fork_geometry(roi, scale, ph_count,
                                                                        pw_count)
        for c in range(channels):
            for h in range(max(0, start_h), min(height, end_h + 1)):
                for w in range(max(0, start_w), min(width, end_w + 1)):
                    ph0 = min(max(math.floor((h - start_h) / bin_h), 0), ph_count)
                    ph1 = min(max(math.ceil((h - start_h + 1) / bin_h), 0), ph_count)
                    pw0 = min(max(math.floor((w - start_w) / bin_w), 0), pw_count)
                    pw1 = min(max(math.ceil((w - start_w + 1) / bin_w), 0), pw_count)
                    for ph in range(ph0, ph1):
                        for pw in range(pw0, pw1):
                            if argmax[r, c, ph, pw] == h * width + w:
                                dx[b, c, h, w] += dy[r, c, ph, pw]
    return dx


@st.composite
def roi_cases(draw, well_formed=False):
    """Features (distinct values: no ties), rois in image coordinates and a scale. Corners are
    drawn on the feature map and scaled up, with offsets that round back to them, or off the
    map, or (unless well_formed) reversed."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 0.0625]))
    pooled = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(seeds))
    x = (rng.permutation(n * c * height * width) - 20.0).reshape(n, c, height, width) / 7
    rois = []
    for _ in range(draw(st.integers(1, 5))):
        x1, x2 = sorted(draw(st.integers(-3, width + 2)) for _ in range(2))
        y1, y2 = sorted(draw(st.integers(-3, height + 2)) for _ in range(2))
        if not well_formed and draw(st.booleans()):
            x1, x2 = x2, x1
        off = rng.uniform(-0.45, 0.45, 4)
        rois.append([draw(st.integers(0, n - 1)), *((np.array([x1, y1, x2, y2]) + off) / scale)])
    return x, np.array(rois), scale, pooled


@settings(max_examples=40)
@given(roi_cases())
def test_roi_pooling_matches_the_forks_loops(case):
    x, rois, scale, (ph, pw) = case
    y, argmax = roi_pool_forward.impls["ref"](x, rois, pooled_h=ph, pooled_w=pw,
                                              spatial_scale=scale)
    want_y, want_argmax = roi_pool_loops(x, rois, ph, pw, scale)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(argmax, want_argmax)
    dy = np.random.default_rng(0).standard_normal(y.shape)
    dx = roi_pool_backward.impls["ref"](dy, argmax, rois, x.shape, spatial_scale=scale)
    np.testing.assert_allclose(dx, roi_pool_backward_loops(dy, want_argmax, rois, x.shape,
                                                           scale), rtol=1e-13, atol=1e-13)


@settings(max_examples=25)
@given(roi_cases(well_formed=True))
def test_roi_pooling_gradient(case):
    x, rois, scale, (ph, pw) = case              # distinct values 1/7 apart: eps moves no max
    check_layer_gradient(lambda: ROIPoolingLayer(pooled_h=ph, pooled_w=pw, spatial_scale=scale),
                         [x, rois], check_bottoms=[0])


def test_roi_pooling_by_hand():
    x = np.arange(2 * 1 * 4 * 5, dtype=np.float64).reshape(2, 1, 4, 5)   # x[b,0,h,w] = 20b+5h+w
    x[0, 0, 1, 1] = 100                                                    # a max inside a bin

    def pool(rois, ph=2, pw=2, scale=1.0):
        layer = ROIPoolingLayer(pooled_h=ph, pooled_w=pw, spatial_scale=scale)
        return layer(x, np.array(rois, np.float64))

    # the whole map of item 0: rows 0-1 / 2-3, columns [0, 3) / [2, 5) (bin 2.5)
    np.testing.assert_array_equal(pool([[0, 0, 0, 4, 3]])[0, 0], [[100, 9], [17, 19]])
    # item 1: the same roi pools 20 more, no 100
    np.testing.assert_array_equal(pool([[1, 0, 0, 4, 3]])[0, 0], [[27, 29], [37, 39]])
    # partly outside: rows/columns -2..1 (4 wide, bins of 2): the bins at -2..-1 are empty
    np.testing.assert_array_equal(pool([[0, -2, -2, 1, 1]])[0, 0], [[0, 0], [0, 100]])
    # one pixel: every bin pools x[0, 0, 2, 3] = 13
    np.testing.assert_array_equal(pool([[0, 3, 2, 3, 2]], 3, 2)[0, 0], np.full((3, 2), 13))
    # spatial_scale 1/16: (8, 24, 40, 56) -> (0.5, 1.5, 2.5, 3.5) rounds (C's round: halves
    # away from zero) to columns 1..3, rows 2..3 (3.5 -> 4, clipped to the map); NumPy's
    # rounding (halves to even) would give columns 0..2 and 17
    np.testing.assert_array_equal(pool([[0, 8, 24, 40, 56]], 1, 1, 1 / 16)[0, 0], [[18]])
    np.testing.assert_array_equal(pool([[0, 8, 24, 24, 24]], 1, 1, 1 / 16)[0, 0], [[12]])
    # entirely outside the map: zeros
    np.testing.assert_array_equal(pool([[0, 10, 10, 20, 20]])[0, 0], np.zeros((2, 2)))


def test_roi_pooling_backward_by_hand_and_malformed_rois():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    layer = ROIPoolingLayer(pooled_h=2, pooled_w=2)
    # roi 0: the whole map (maxes 5, 7, 13, 15); roi 1: the 1 x 1 roi at (3, 3) pools 15 four
    # times; roi 2: x2 < x1, a malformed roi, pools x[0, 0, 0, 2] = 2 but gets no gradient (the
    # fork's backward walks its columns 2..1: none)
    rois = np.array([[0, 0, 0, 3, 3], [0, 3, 3, 3, 3], [0, 2, 0, 1, 0]], np.float64)
    y = layer(x, rois)
    np.testing.assert_array_equal(y[:, 0], [[[5, 7], [13, 15]], [[15, 15], [15, 15]],
                                            [[2, 2], [2, 2]]])
    dy = np.arange(1, 13, dtype=np.float64).reshape(3, 1, 2, 2)
    dx, drois = layer.backprop(dy)
    want = np.zeros((4, 4))
    want[1, 1], want[1, 3], want[3, 1] = 1, 2, 3
    want[3, 3] = 4 + (5 + 6 + 7 + 8)
    np.testing.assert_array_equal(dx[0, 0], want)
    assert drois is None                         # standalone: no gradient asked for the rois


def test_roi_pooling_ties_and_lowest_values_follow_the_fork():
    # ties: the first max in row-major order; values at or below -FLT_MAX: -FLT_MAX, argmax -1
    x = np.array([[[[1.0, 3.0], [3.0, 3.0]]], [[[-np.inf, -FLT_MAX], [-np.inf, -np.inf]]]])
    y, argmax = roi_pool_forward.impls["ref"](x, np.array([[0, 0, 0, 1, 1], [1, 0, 0, 1, 1.]]),
                                              pooled_h=1, pooled_w=1)
    assert y[:, 0, 0, 0].tolist() == [3.0, -FLT_MAX] and argmax[:, 0, 0, 0].tolist() == [1, -1]


def test_roi_pooling_float32_rounds_float_products():
    # spatial_scale 0.7 is 0.699999988f: 5 * 0.7f is 3.49999994 in double, but rounds to 3.5 in
    # float, as a float net computes it (the fork multiplies two Dtypes): C's round then gives
    # 4 in float and 3 in double. x[0, 0, 0, w] = w, so the 1 x 1 pooling of the columns
    # round(5 * 0.7)..round(15 * 0.7) = 4..11 (float) or 3..10 (double) gives its first.
    x = np.arange(20, dtype=np.float64).reshape(1, 1, 1, 20)
    rois = [[0, 5, 0, 15, 0]]
    for dtype, first in ((np.float32, 4), (np.float64, 3)):
        layer = ROIPoolingLayer(pooled_h=1, pooled_w=8, spatial_scale=0.7)
        y = layer(x.astype(dtype), np.array(rois, dtype))
        assert y.dtype == dtype
        np.testing.assert_array_equal(y[0, 0, 0], np.arange(first, first + 8))
    want, _ = roi_pool_loops(x, np.array(rois, np.float64), 1, 8, float(np.float32(0.7)))
    np.testing.assert_array_equal(want[0, 0, 0], np.arange(3, 11))


@pytest.mark.parametrize("rois_shape", [(3, 5), (3, 5, 1, 1)])
def test_roi_pooling_shapes(rois_shape):
    rois = np.zeros(rois_shape)
    rois.reshape(3, 5)[:, 3:] = 2
    y = ROIPoolingLayer(pooled_h=3, pooled_w=4)(np.ones((2, 5, 6, 7)), rois)
    assert y.shape == (3, 5, 3, 4)


def test_roi_pooling_at_faster_rcnn_sizes_routes_one_gradient_per_bin():
    """VGG16's conv5_3 of a 600 x 800 image and 128 rois (its speed is the benchmarks' to
    measure, not a test's): every bin that covers a cell passes its diff to its one argmax."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 512, 38, 50)).astype(np.float32)
    corners = rng.uniform(0, 600, (128, 2))
    rois = np.hstack([np.zeros((128, 1)), corners, corners + rng.uniform(16, 300, (128, 2))])
    layer = ROIPoolingLayer(pooled_h=7, pooled_w=7, spatial_scale=0.0625)
    y = layer(x, rois.astype(np.float32))
    dx, _ = layer.backprop(np.ones_like(y))
    assert y.shape == (128, 512, 7, 7)
    assert dx.sum() == np.count_nonzero(y) > 0.9 * y.size     # an empty bin gives 0, no diff


@pytest.mark.parametrize("params, shapes, rois, message", [
    (dict(pooled_h=0, pooled_w=2), [(1, 1, 4, 4), (1, 5)], None, r"pooled_h must be > 0"),
    (dict(pooled_h=2, pooled_w=2), [(1, 1, 4, 4), (2, 4)], None, r"R x 5.*\(2, 4\)"),
    (dict(pooled_h=2, pooled_w=2), [(1, 1, 4, 4), (2, 5, 2)], None, r"R x 5.*\(2, 5, 2\)"),
    (dict(pooled_h=2, pooled_w=2), [(2, 1, 4, 4), (2, 5)], [[0, 0, 0, 1, 1], [2, 0, 0, 1, 1]],
     r"roi 1 has batch index 2.*\(2, 1, 4, 4\).*\[0, 2\)"),
    (dict(pooled_h=2, pooled_w=2), [(2, 1, 4, 4), (1, 5)], [[-1, 0, 0, 1, 1]],
     r"roi 0 has batch index -1"),
])
def test_roi_pooling_errors(params, shapes, rois, message):
    bottoms = [np.zeros(s) for s in shapes]
    if rois is not None:
        bottoms[1] = np.array(rois, np.float64)
    with pytest.raises(LayerError, match=message):
        ROIPoolingLayer(**params)(*bottoms)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_roi_pooling_agrees_with_opencv(tmp_path, dtype):
    cv2 = pytest.importorskip("cv2")
    text = """
input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 11 }
input: "rois" input_shape { dim: 40 dim: 5 }
layer { name: "pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.5 } }
"""
    model = tmp_path / "roi.prototxt"
    model.write_text(text)
    net = minicnn.Net(str(model), dtype=dtype)
    weights = str(tmp_path / "roi.caffemodel")
    net.save(weights)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    corners = rng.integers(-6, 26, (40, 4)).astype(np.float32)   # many halves after * 0.5
    rois = np.hstack([rng.integers(0, 2, (40, 1)), corners]).astype(np.float32)
    ours = net.forward(data=x, rois=rois)["pool"]
    cv_net = cv2.dnn.readNetFromCaffe(str(model), weights)
    cv_net.setInput(x, "data")
    cv_net.setInput(rois, "rois")
    np.testing.assert_array_equal(ours, cv_net.forward("pool"))


# --- R-FCN's PSROIPooling -----------------------------------------------------------------------

def psroi_loops(x, rois, output_dim, k, scale, dtype):
    """R-FCN's psroi_pooling_layer.cu, one top element at a time: (y, dx for dy = ones * 1.5).
    Corners rounded then scaled; extent at least 0.1; floor/ceil bins from the float start."""
    f = np.dtype(dtype).type
    n, c, height, width = x.shape
    y = np.zeros((len(rois), output_dim, k, k), dtype)
    dx = np.zeros(x.shape, dtype)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        x1, y1, x2, y2 = (f(c_round(f(v))) for v in roi[1:5])
        x1, y1, x2, y2 = x1 * f(scale), y1 * f(scale), (x2 + f(1)) * f(scale), \
            (y2 + f(1)) * f(scale)
        bin_w, bin_h = max(x2 - x1, f(0.1)) / f(k), max(y2 - y1, f(0.1)) / f(k)
        for o in range(output_dim):
            for i in range(k):
                for j in range(k):
                    h0 = min(max(math.floor(f(i) * bin_h + y1), 0), height)
                    h1 = min(max(math.ceil(f(i + 1) * bin_h + y1), 0), height)
                    w0 = min(max(math.floor(f(j) * bin_w + x1), 0), width)
                    w1 = min(max(math.ceil(f(j + 1) * bin_w + x1), 0), width)
                    if h1 <= h0 or w1 <= w0:
                        continue
                    ch = (o * k + i) * k + j
                    total = f(0)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            total = f(total + x[b, ch, h, w])
                    area = f((h1 - h0) * (w1 - w0))
                    y[r, o, i, j] = total / area
                    dx[b, ch, h0:h1, w0:w1] += f(1.5) / area
    return y, dx


@st.composite
def psroi_cases(draw):
    k, output_dim, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 0.0625]))
    rng = np.random.default_rng(draw(seeds))
    x = rng.standard_normal((n, output_dim * k * k, height, width))
    rois = []
    for _ in range(draw(st.integers(1, 5))):
        corners = rng.uniform(-3, 12, 4) / scale              # fractional, off the map, reversed
        rois.append([draw(st.integers(0, n - 1)), *corners])
    return x, np.array(rois), output_dim, k, scale


@settings(max_examples=30)
@given(psroi_cases(), st.sampled_from([np.float32, np.float64]))
def test_psroi_pooling_matches_the_forks_kernel(case, dtype):
    x, rois, output_dim, k, scale = case
    x = x.astype(dtype)
    layer_args = dict(output_dim=output_dim, group_size=k, spatial_scale=scale)
    y = psroi_pool_forward.impls["ref"](x, rois, **layer_args)
    want_y, want_dx = psroi_loops(x, rois, output_dim, k, scale, dtype)
    np.testing.assert_allclose(y, want_y, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=0)
    dx = psroi_pool_backward.impls["ref"](np.full(y.shape, 1.5, dtype), rois, x.shape,
                                          spatial_scale=scale)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6 if dtype == np.float32 else 1e-13)


@settings(max_examples=15)
@given(psroi_cases())
def test_psroi_pooling_gradient(case):
    x, rois, output_dim, k, scale = case
    check_layer_gradient(lambda: PSROIPoolingLayer(output_dim=output_dim, group_size=k,
                                                   spatial_scale=scale),
                         [x, rois], check_bottoms=[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_psroi_pooling_agrees_with_opencv(tmp_path, dtype):
    """OpenCV's Caffe importer implements PSROIPooling (for R-FCN): the same numbers on 40 rois
    with fractional, reversed and off-map corners."""
    cv2 = pytest.importorskip("cv2")
    text = """
input: "data" input_shape { dim: 2 dim: 18 dim: 9 dim: 11 }
input: "rois" input_shape { dim: 40 dim: 5 }
layer { name: "ps" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "ps"
  psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 3 } }
"""
    model = tmp_path / "psroi.prototxt"
    model.write_text(text)
    net = minicnn.Net(str(model), dtype=dtype)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 18, 9, 11)).astype(np.float32)
    corners = rng.uniform(-6, 26, (40, 4)).astype(np.float32)
    rois = np.hstack([rng.integers(0, 2, (40, 1)), corners]).astype(np.float32)
    ours = net.forward(data=x, rois=rois)["ps"]
    cv_net = cv2.dnn.readNetFromCaffe(str(model))
    cv_net.setInput(x, "data")
    cv_net.setInput(rois, "rois")
    np.testing.assert_allclose(ours, cv_net.forward("ps"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("params, shapes, message", [
    ("output_dim: 2 group_size: 3", ((1, 18, 4, 4), (2, 5)), "spatial_scale required"),
    ("spatial_scale: 1 output_dim: 2 group_size: 3", ((1, 17, 4, 4), (2, 5)),
     r"17 channels .* output_dim 2 x group_size 3\^2 = 18 are needed"),
    ("spatial_scale: 1 output_dim: 0 group_size: 3", ((1, 18, 4, 4), (2, 5)),
     "output_dim must be > 0"),
    ("spatial_scale: 1 output_dim: 2 group_size: 3", ((1, 18, 4, 4), (2, 4)),
     "rois must be R x 5"),
])
def test_psroi_pooling_errors(params, shapes, message):
    text = (f'input: "data" input_shape {{ {" ".join(f"dim: {d}" for d in shapes[0])} }}\n'
            f'input: "rois" input_shape {{ {" ".join(f"dim: {d}" for d in shapes[1])} }}\n'
            'layer { name: "ps" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "ps" '
            f'psroi_pooling_param {{ {params} }} }}')
    with pytest.raises(minicnn.errors.NetError, match=message):
        minicnn.Net(parse_text(text))


# --- SmoothL1Loss ------------------------------------------------------------------------------

@st.composite
def smooth_l1_cases(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)), *draw(st.sampled_from([(), (2, 3)])))
    sigma = draw(st.integers(1, 16)) / 4                  # its square is exact in float
    rng = np.random.default_rng(draw(seeds))
    pred, target = rng.standard_normal(shape) * 2, rng.standard_normal(shape) * 2
    weights = [rng.uniform(0, 2, shape), rng.uniform(0, 2, shape)] if draw(st.booleans()) else []
    return pred, target, weights, sigma


@settings(max_examples=30)
@given(smooth_l1_cases())
def test_smooth_l1_matches_pytorch(case):
    torch = pytest.importorskip("torch")
    pred, target, weights, sigma = case
    layer = SmoothL1LossLayer(sigma=sigma, loss_weight=1.5)
    loss = layer(pred, target, *weights)
    dpred, dtarget = layer.backprop()[:2]
    p = torch.tensor(pred, requires_grad=True)
    t = torch.tensor(target, requires_grad=True)
    inside, outside = (torch.tensor(w) for w in weights) if weights else (1.0, 1.0)
    f = torch.nn.functional.smooth_l1_loss(inside * p, inside * t, beta=1 / sigma**2,
                                           reduction="none")
    want = (outside * f).sum() / pred.shape[0]
    (1.5 * want).backward()
    np.testing.assert_allclose(loss, want.item(), rtol=1e-13)
    np.testing.assert_allclose(dpred, p.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dtarget, t.grad.numpy(), rtol=1e-12, atol=1e-15)


@settings(max_examples=20)
@given(smooth_l1_cases())
def test_smooth_l1_gradient(case):
    pred, target, weights, sigma = case
    x = (pred - target) * (weights[0] if weights else 1)
    assume(np.all(np.abs(np.abs(x) - 1 / sigma**2) > 1e-3))    # f'' jumps there
    check_layer_gradient(lambda: SmoothL1LossLayer(sigma=sigma), [pred, target, *weights],
                         check_bottoms=[0, 1], rtol=1e-6, atol=1e-9)


def test_smooth_l1_by_hand():
    # sigma 2: quadratic 0.5 * 4 * x^2 below |x| = 0.25, else |x| - 0.125
    pred = np.array([[0.1, -0.2, 1.0], [-2.0, 0.0, 0.25]])
    target = np.zeros_like(pred)
    layer = SmoothL1LossLayer(sigma=2)
    f = [2 * 0.01, 2 * 0.04, 1 - 0.125, 2 - 0.125, 0, 0.25 - 0.125]
    assert float(layer(pred, target)) == pytest.approx(sum(f) / 2, rel=1e-15)
    dpred, dtarget = layer.backprop()
    np.testing.assert_allclose(dpred, [[0.2, -0.4, 0.5], [-0.5, 0, 0.5]], rtol=1e-15)
    np.testing.assert_array_equal(dtarget, -dpred)
    # weights: inside scales x (and the gradient), outside scales f; they get no gradient
    inside, outside = np.full_like(pred, 0.5), np.full_like(pred, 3.0)
    layer = SmoothL1LossLayer(sigma=2)
    loss = float(layer(pred, target, inside, outside))
    f = [2 * 0.0025, 2 * 0.01, 0.5 - 0.125, 1 - 0.125, 0, 2 * 0.125 ** 2]
    assert loss == pytest.approx(3 * sum(f) / 2, rel=1e-15)
    diffs = layer.backprop()
    np.testing.assert_allclose(diffs[0], [[0.15, -0.3, 0.75], [-0.75, 0, 0.375]], rtol=1e-15)
    assert diffs[2] is None and diffs[3] is None


def test_smooth_l1_float32_evaluates_f_in_double_as_the_fork():
    # the fork's 0.5 * val * val * sigma2 has double constants: one rounding to float at the
    # end. With sigma 3, 0.03f gives 0.00404999964f that way, 0.00405000011f in float arithmetic
    pred = np.array([[0.03]], np.float32)
    loss = SmoothL1LossLayer(sigma=3)(pred, np.zeros_like(pred))
    v = np.float64(pred[0, 0])
    assert loss.dtype == np.float32 and loss == np.float32(0.5 * v * v * 9.0)
    f = np.float32
    assert loss != f(0.5) * pred[0, 0] * pred[0, 0] * f(9)


@pytest.mark.parametrize("shapes, message", [
    ([(2, 4), (3, 4)], r"same first dimension"),
    ([(2, 4), (2, 5)], r"targets \(shape \(2, 5\)\) must have the shape"),
    ([(2, 4), (2, 4), (2, 4)], r"give both inside_weights and outside_weights"),
    ([(2, 4), (2, 4), (2, 4), (2, 3)], r"outside_weights \(shape \(2, 3\)\)"),
    ([(2, 4), (2, 4), (1, 4), (2, 4)], r"inside_weights \(shape \(1, 4\)\)"),
    ([(2, 4, 1, 1, 1), (2, 4, 1, 1, 1)], r"at most 4"),
])
def test_smooth_l1_errors(shapes, message):
    with pytest.raises(LayerError, match=message):
        SmoothL1LossLayer()(*[np.zeros(s) for s in shapes])


def test_rois_and_weights_get_zero_diffs_when_asked():
    """A net asks for them when they come from layers that need a backward (Faster R-CNN's
    rois and weights come from Python layers above the RPN): the fork leaves them untouched,
    and minicnn, whose bottom diffs are assigned, writes zeros."""
    from minicnn.blob import Blob
    rng = np.random.default_rng(3)
    cases = [(ROIPoolingLayer(pooled_h=2, pooled_w=2),
              [rng.standard_normal((1, 2, 4, 4)), np.array([[0, 0, 0, 3, 3.0]])], [1]),
             (SmoothL1LossLayer(), [rng.standard_normal((2, 3)) for _ in range(4)], [2, 3])]
    for layer, arrays, silent in cases:
        bottom = [Blob.from_array(a) for a in arrays]
        top = [Blob((), np.float64)]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = 1
        for b in bottom:
            b.diff[...] = np.nan
        layer.backward(top, [True] * len(bottom), bottom)
        for i, b in enumerate(bottom):
            assert (not b.diff.any()) if i in silent else np.isfinite(b.diff).all(), (layer, i)
            assert layer.allow_force_backward(i) == (i not in silent)


# --- both in nets ------------------------------------------------------------------------------

HEAD = """
name: "fast_rcnn_head"
force_backward: true
input: "conv5" input_shape {{ dim: 2 dim: 3 dim: 10 dim: 12 }}
input: "rois" input_shape {{ dim: 6 dim: 5 }}
input: "bbox_targets" input_shape {{ dim: 6 dim: 8 }}
input: "bbox_inside_weights" input_shape {{ dim: 6 dim: 8 }}
input: "bbox_outside_weights" input_shape {{ dim: 6 dim: 8 }}
layer {{ name: "roi_pool" type: "ROIPooling" bottom: "conv5" bottom: "rois" top: "pool"
  roi_pooling_param {{ pooled_w: 3 pooled_h: 2 spatial_scale: 0.25 }} }}
layer {{ name: "bbox_pred" type: "InnerProduct" bottom: "pool" top: "bbox_pred"
  inner_product_param {{ num_output: 8 weight_filler {{ type: "gaussian" std: {std} }} }} }}
layer {{ name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_inside_weights" bottom: "bbox_outside_weights" top: "loss_bbox"
  loss_weight: 2 smooth_l1_loss_param {{ sigma: 1.5 }} }}
"""


def head_inputs(rng):
    corners = rng.uniform(0, 30, (6, 2))
    rois = np.hstack([rng.integers(0, 2, (6, 1)), corners, corners + rng.uniform(4, 20, (6, 2))])
    inside = (rng.uniform(size=(6, 8)) > 0.3).astype(np.float64)
    return dict(conv5=rng.standard_normal((2, 3, 10, 12)), rois=rois,
                bbox_targets=rng.standard_normal((6, 8)), bbox_inside_weights=inside,
                bbox_outside_weights=np.full((6, 8), 0.5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_net_forward_and_backward(dtype):
    minicnn.set_random_seed(5)
    net = minicnn.Net(parse_text(HEAD.format(std=0.1)), dtype=dtype)
    inputs = {k: v.astype(dtype) for k, v in head_inputs(np.random.default_rng(1)).items()}
    loss = net.forward(**inputs)["loss_bbox"]
    net.backward()
    assert loss.dtype == dtype and net.blobs["pool"].shape == (6, 3, 2, 3)
    # the same by the layers alone
    pool = ROIPoolingLayer(pooled_h=2, pooled_w=3, spatial_scale=0.25)
    pooled = pool(inputs["conv5"], inputs["rois"])
    w, b = (blob.data for blob in net.params["bbox_pred"])
    pred = pooled.reshape(6, -1) @ w.T + b
    smooth = SmoothL1LossLayer(sigma=1.5, loss_weight=2)
    want = smooth(pred, inputs["bbox_targets"], inputs["bbox_inside_weights"],
                  inputs["bbox_outside_weights"])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, want, rtol=tol)
    dpred = smooth.backprop()[0]
    np.testing.assert_allclose(net.params["bbox_pred"][0].diff,
                               dpred.T @ pooled.reshape(6, -1), rtol=tol, atol=tol)
    dx = pool.backprop((dpred @ w).reshape(pooled.shape))[0]
    np.testing.assert_allclose(net.blobs["conv5"].diff, dx, rtol=tol, atol=tol)
    assert not net.blobs["rois"].diff.any()               # force_backward: a zero diff
    assert not net.blobs["bbox_inside_weights"].diff.any()
    np.testing.assert_allclose(net.blobs["bbox_targets"].diff, -dpred, rtol=tol, atol=tol)


def test_head_net_trains_with_sgd():
    minicnn.set_random_seed(7)
    param = caffe_pb2.SolverParameter(net_param=parse_text(HEAD.format(std=0.01)),
                                      base_lr=0.05, lr_policy="fixed", momentum=0.9, max_iter=30)
    solver = minicnn.get_solver(param, log=lambda message: None)
    for name, value in head_inputs(np.random.default_rng(2)).items():
        solver.net.blobs[name].data[...] = value
    losses = []
    for _ in range(30):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss_bbox"].data))
    assert losses[-1] < 0.5 * losses[0], losses


# --- on the GPU (the emulator here, a GPU where there is one) ----------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_smooth_l1_cuda_impl(gpu, dtype, weighted):
    from minicnn import cuda
    from minicnn.ops.frcnn import smooth_l1_loss_backward, smooth_l1_loss_forward
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal((5, 4, 2, 3)).astype(dtype) for _ in range(2)]
    if weighted:
        arrays += [rng.uniform(0, 2, (5, 4, 2, 3)).astype(dtype) for _ in range(2)]
    want_loss, want_x = smooth_l1_loss_forward.impls["ref"](*arrays, sigma=3)
    want = smooth_l1_loss_backward.impls["ref"](want_x, *arrays[2:], sigma=3, loss_weight=2.0)
    on_device = [gpu.asarray(a) for a in arrays]
    loss, x = smooth_l1_loss_forward(*on_device, sigma=3)
    grad = smooth_l1_loss_backward(x, *on_device[2:], sigma=3,
                                   loss_weight=gpu.full((), 2.0, dtype))
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert cuda.to_host(loss).dtype == dtype and cuda.to_host(grad).dtype == dtype
    np.testing.assert_allclose(cuda.to_host(loss), want_loss, rtol=tol)
    np.testing.assert_allclose(cuda.to_host(grad), want, rtol=tol, atol=tol)


def test_head_net_on_the_gpu_runs_only_roi_pooling_on_the_host(gpu):
    from minicnn import cuda
    inputs = {k: v.astype(np.float32) for k, v in head_inputs(np.random.default_rng(8)).items()}
    nets = []
    for device in (None, "cuda:0"):
        minicnn.set_random_seed(3)
        net = minicnn.Net(parse_text(HEAD.format(std=0.1)), device=device)
        net.forward(**inputs)
        net.backward()
        nets.append(net)
    cpu, dev = nets
    assert sorted(dev.layers[i].type for i in dev._mirrors) == ["ROIPooling"]
    for name in ("loss_bbox", "pool", "bbox_pred"):
        np.testing.assert_allclose(cuda.to_host(dev.blobs[name].data), cpu.blobs[name].data,
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cuda.to_host(dev.blobs["conv5"].diff), cpu.blobs["conv5"].diff,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cuda.to_host(dev.params["bbox_pred"][0].diff),
                               cpu.params["bbox_pred"][0].diff, rtol=1e-5, atol=1e-6)
