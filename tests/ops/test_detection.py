"""YOLOv1's detection loss: the reference against a line-by-line NumPy port of Darknet's
forward_detection_layer, against finite differences (float64, away from the points where the
responsible predictor switches), the cpu impl against the reference, and the truth grid."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn.errors import LayerError
from minicnn.ops.detection import (
    detection_layout,
    detection_loss_backward,
    detection_loss_forward,
    detection_truth,
)
from minicnn.testing import numerical_grad

REF = detection_loss_forward.impls["ref"]
FAST = [k for k in detection_loss_forward.impls if k == "cpu"]   # "cuda": tests/gpu


# --- Darknet's forward_detection_layer, ported line by line (src/detection_layer.c) ------------

def _overlap(x1, w1, x2, w2):
    left = max(x1 - w1 / 2, x2 - w2 / 2)
    right = min(x1 + w1 / 2, x2 + w2 / 2)
    return right - left


def _iou(a, b):
    w, h = _overlap(a[0], a[2], b[0], b[2]), _overlap(a[1], a[3], b[1], b[3])
    inter = 0 if w < 0 or h < 0 else w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _rmse(a, b):
    return np.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))


def darknet_detection(output, truth, side, n, classes, sqrt, rescore, object_scale,
                      noobject_scale, class_scale, coord_scale):
    """(delta, scale per element) as Darknet computes l.delta; truth is net.truth (flat)."""
    batch, inputs = output.shape
    coords, locations = 4, side * side
    output, truth = output.reshape(-1), truth.reshape(-1)
    delta = np.zeros_like(output)
    scale = np.zeros_like(output)
    for b in range(batch):
        index = b * inputs
        for i in range(locations):
            truth_index = (b * locations + i) * (1 + coords + classes)
            is_obj = truth[truth_index]
            for j in range(n):
                p_index = index + locations * classes + i * n + j
                delta[p_index] = noobject_scale * (0 - output[p_index])
                scale[p_index] = noobject_scale
            best_index, best_iou, best_rmse = -1, 0, 20
            if not is_obj:
                continue
            class_index = index + i * classes
            for j in range(classes):
                delta[class_index + j] = class_scale * (truth[truth_index + 1 + j]
                                                        - output[class_index + j])
                scale[class_index + j] = class_scale
            t = truth[truth_index + 1 + classes:truth_index + 5 + classes]
            tbox = (t[0] / side, t[1] / side, t[2], t[3])
            for j in range(n):
                box_index = index + locations * (classes + n) + (i * n + j) * coords
                o = output[box_index:box_index + 4]
                out = (o[0] / side, o[1] / side, o[2] ** 2 if sqrt else o[2],
                       o[3] ** 2 if sqrt else o[3])
                iou, rmse = _iou(out, tbox), _rmse(out, tbox)
                if best_iou > 0 or iou > 0:
                    if iou > best_iou:
                        best_iou, best_index = iou, j
                else:
                    if rmse < best_rmse:
                        best_rmse, best_index = rmse, j
            box_index = index + locations * (classes + n) + (i * n + best_index) * coords
            tbox_index = truth_index + 1 + classes
            o = output[box_index:box_index + 4]
            out = (o[0] / side, o[1] / side, o[2] ** 2 if sqrt else o[2],
                   o[3] ** 2 if sqrt else o[3])
            iou = _iou(out, tbox)
            p_index = index + locations * classes + i * n + best_index
            delta[p_index] = object_scale * ((iou if rescore else 1.) - output[p_index])
            scale[p_index] = object_scale
            for k in range(4):
                target = truth[tbox_index + k]
                if sqrt and k >= 2:
                    target = np.sqrt(target)
                delta[box_index + k] = coord_scale * (target - output[box_index + k])
                scale[box_index + k] = coord_scale
    return delta.reshape(batch, inputs), scale.reshape(batch, inputs)


# --- cases -------------------------------------------------------------------------------------

@st.composite
def detection_cases(draw):
    side, num, classes = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(1, 4))
    labels = np.full((n, k, 5), -1.0)
    labels[:, :, 1:] = 0
    for b in range(n):
        for j in range(rng.integers(1 if b == 0 else 0, k + 1)):    # item 0 has an object
            labels[b, j] = [rng.integers(classes), *rng.uniform(0, 1, 2), *rng.uniform(0.05, 0.8,
                                                                                         2)]
    d, _, box0 = detection_layout(side, num, classes)
    x = rng.uniform(-0.2, 1.0, (n, d))
    x[:, box0:] = rng.uniform(0.05, 0.95, (n, d - box0))          # boxes: plausible predictions
    params = dict(side=side, num=num, classes=classes, sqrt=draw(st.booleans()),
                  rescore=draw(st.booleans()), object_scale=draw(st.sampled_from([1.0, 2.0])),
                  noobject_scale=draw(st.sampled_from([0.5, 1.0])),
                  class_scale=draw(st.sampled_from([1.0, 0.7])),
                  coord_scale=draw(st.sampled_from([5.0, 1.0])))
    return x, detection_truth(labels, side, classes), params


def _boxes(x, i, p):
    box0 = detection_layout(p["side"], p["num"], p["classes"])[2]
    out = []
    for j in range(p["num"]):
        o = x[box0 + (i * p["num"] + j) * 4:][:4]
        out.append((o[0] / p["side"], o[1] / p["side"], o[2] ** 2 if p["sqrt"] else o[2],
                    o[3] ** 2 if p["sqrt"] else o[3]))
    return out


def switch_margin(x, truth, p):
    """How far the case is from a change of responsible predictor: the smallest gap between the
    best and the runner-up IoU (or RMSE when no IoU is positive) and between a zero IoU and
    overlapping (the distance between the boxes' edges), over every object cell."""
    side, classes = p["side"], p["classes"]
    margin = np.inf
    for b in range(x.shape[0]):
        for i in np.flatnonzero(truth[b, :, 0]):
            t = truth[b, i, 1 + classes:]
            tbox = (t[0] / side, t[1] / side, t[2], t[3])
            boxes = _boxes(x[b], i, p)
            ious = np.array([_iou(o, tbox) for o in boxes])
            for o, iou in zip(boxes, ious):
                if iou <= 0:            # how far from touching: the larger gap along x or y
                    gap = max(-_overlap(o[0], o[2], tbox[0], tbox[2]),
                              -_overlap(o[1], o[3], tbox[1], tbox[3]))
                    margin = min(margin, gap)
            key = np.sort(ious)[::-1] if ious.max() > 0 else \
                np.sort([-_rmse(o, tbox) for o in boxes])[::-1]
            if len(key) > 1:
                margin = min(margin, key[0] - key[1])
    return margin


# --- the reference against Darknet's own loop -----------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(detection_cases())
def test_ref_matches_a_port_of_darknets_loop(case):
    x, truth, p = case
    loss, delta, stats = REF(x, truth, **p)
    want, scale = darknet_detection(x, truth.reshape(-1), p["side"], p["num"], p["classes"],
                                    p["sqrt"], p["rescore"], p["object_scale"],
                                    p["noobject_scale"], p["class_scale"], p["coord_scale"])
    np.testing.assert_allclose(delta, want, rtol=1e-12, atol=1e-12)
    # the Caffe-style loss: 1/(2N) sum scale * (target - x)^2 = 1/(2N) sum delta^2 / scale
    used = scale > 0
    expected = np.sum(want[used] ** 2 / scale[used]) / (2 * x.shape[0])
    assert float(loss) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert stats[5] == truth[:, :, 0].sum()                       # Darknet's count
    dx = detection_loss_backward.impls["ref"](delta, loss_weight=2.0)
    np.testing.assert_allclose(dx, -2.0 * want / x.shape[0], rtol=1e-12)


def test_hand_computed_cell():
    """One cell, one class, one predictor with sqrt and rescore off: every term by hand."""
    p = dict(side=1, num=1, classes=1, sqrt=False, rescore=False, object_scale=1.0,
             noobject_scale=0.5, class_scale=1.0, coord_scale=5.0)
    truth = detection_truth(np.array([[[0, 0.5, 0.5, 0.2, 0.4]]]), 1, 1)
    np.testing.assert_allclose(truth, [[[1, 1, 0.5, 0.5, 0.2, 0.4]]])
    x = np.array([[0.7, 0.6, 0.5, 0.5, 0.2, 0.2]])       # P(c), conf, x, y, w, h
    loss, delta, stats = REF(x, truth, **p)
    np.testing.assert_allclose(delta, [[0.3, 0.4, 0, 0, 0, 1.0]], atol=1e-12)
    # class 0.3^2 + object 0.4^2 + coord 5 * 0.2^2, halved
    assert float(loss) == pytest.approx((0.09 + 0.16 + 5 * 0.04) / 2)
    np.testing.assert_allclose(stats, [0.5, 0.7, 0.7, 0.6, 0.6, 1])   # IoU 0.04 / 0.08


def test_rescore_targets_the_iou_and_sqrt_roots_the_size():
    p = dict(side=1, num=1, classes=1, sqrt=True, rescore=True, object_scale=1.0,
             noobject_scale=0.5, class_scale=1.0, coord_scale=1.0)
    truth = detection_truth(np.array([[[0, 0.5, 0.5, 0.25, 0.16]]]), 1, 1)
    x = np.array([[1.0, 0.9, 0.5, 0.5, 0.5, 0.4]])       # predicted box 0.25 x 0.16: IoU 1
    _, delta, _ = REF(x, truth, **p)
    np.testing.assert_allclose(delta, [[0, 0.1, 0, 0, 0, 0]], atol=1e-12)


@pytest.mark.parametrize("kind", ["ref", *FAST])
def test_best_iou_then_rmse_then_first(kind):
    p = dict(side=1, num=3, classes=1, sqrt=False, rescore=False, object_scale=1.0,
             noobject_scale=1.0, class_scale=1.0, coord_scale=1.0)
    truth = detection_truth(np.array([[[0, 0.5, 0.5, 0.2, 0.2]]]), 1, 1)

    def responsible(boxes):
        x = np.concatenate([[[1.0, 0, 0, 0]], np.array(boxes).reshape(1, -1)], axis=1)
        delta = detection_loss_forward.impls[kind](x, truth, **p)[1]
        return [j for j in range(3) if delta[0, 1 + j] != 0]     # the object's confidence

    # IoU decides: predictor 2 overlaps the truth most
    assert responsible([[0.1, 0.1, 0.1, 0.1], [0.55, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]) == [2]
    # no overlap anywhere: the smallest RMSE (predictor 1 is nearest)
    assert responsible([[0.0, 0.0, 0.1, 0.1], [0.8, 0.5, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]) == [1]
    # a tie keeps the first
    assert responsible([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]) == [0]
    # an IoU beats any RMSE, even when found after a closer non-overlapping box
    assert responsible([[0.7, 0.5, 0.19, 0.19], [0.0, 0.0, 0.9, 0.9], [0, 0, 0, 0]]) == [1]
    # no overlap and every box 20 or more away (Darknet's starting best_rmse): the first
    assert responsible([[30.0, 0, 0.1, 0.1], [0, 25.0, 0.1, 0.1], [21.0, 21.0, 0.1, 0.1]]) == [0]


# --- finite differences ----------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(detection_cases())
def test_ref_gradient_matches_finite_differences(case):
    x, truth, p = case
    assume(switch_margin(x, truth, p) > 1e-3)
    p = dict(p, rescore=False)             # with rescore the IoU target is held constant (below)
    delta = REF(x, truth, **p)[1]
    grad = detection_loss_backward.impls["ref"](delta)
    numeric = numerical_grad(lambda: float(REF(x, truth, **p)[0]), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(detection_cases())
def test_rescore_gradient_holds_the_iou_target_constant(case):
    """With rescore, d loss / d x is exact for every element whose change leaves the IoUs alone
    (classes, confidences, boxes of predictors not responsible); a responsible box gets only
    its coordinate term, as in Darknet (the target IoU is a constant)."""
    x, truth, p = case
    assume(switch_margin(x, truth, p) > 1e-3)
    p = dict(p, rescore=True)
    _, delta = REF(x, truth, **p)[:2]
    grad = detection_loss_backward.impls["ref"](delta)
    numeric = numerical_grad(lambda: float(REF(x, truth, **p)[0]), x)
    box0 = detection_layout(p["side"], p["num"], p["classes"])[2]
    np.testing.assert_allclose(grad[:, :box0], numeric[:, :box0], rtol=1e-5, atol=1e-7)
    free = np.all(delta[:, box0:].reshape(x.shape[0], -1, 4) == 0, axis=2)  # not responsible
    boxes_grad = grad[:, box0:].reshape(x.shape[0], -1, 4)
    boxes_num = numeric[:, box0:].reshape(x.shape[0], -1, 4)
    np.testing.assert_allclose(boxes_grad[free], boxes_num[free], rtol=1e-5, atol=1e-7)


# --- fast impls against the reference -----------------------------------------------------------

@pytest.mark.parametrize("kind", FAST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=25, deadline=None)
@given(case=detection_cases())
def test_fast_matches_ref(kind, dtype, case):
    x, truth, p = case
    want = REF(x.astype(dtype), truth.astype(dtype), **p)
    got = detection_loss_forward.impls[kind](x.astype(dtype), truth.astype(dtype), **p)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_cpu_impl_is_built():
    """CI builds the native extension (MINICNN_REQUIRE_NATIVE=1): the cpu body must be there."""
    import os
    if os.environ.get("MINICNN_REQUIRE_NATIVE") == "1":
        assert "cpu" in detection_loss_forward.impls


# --- the truth grid ----------------------------------------------------------------------------

def test_truth_grid_one_object_per_cell_first_wins():
    labels = np.array([[[3, 0.10, 0.10, 0.2, 0.2],      # cell (0, 0)
                        [1, 0.20, 0.15, 0.3, 0.3],      # cell (0, 0) again: dropped
                        [2, 0.90, 0.60, 0.1, 0.5],      # cell (1, 1) of a 2 x 2 grid
                        [0, 0.40, 0.90, 0.004, 0.5],    # narrower than 0.005: dropped
                        [-1, 0, 0, 0, 0]]])             # padding
    truth = detection_truth(labels, 2, 4)
    assert truth.shape == (1, 4, 9)
    np.testing.assert_allclose(truth[0, 0], [1, 0, 0, 0, 1, 0.2, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(truth[0, 3], [1, 0, 0, 1, 0, 0.8, 0.2, 0.1, 0.5])
    assert truth[0, 1].sum() == truth[0, 2].sum() == 0


def test_truth_grid_clips_boxes_to_the_image():
    """As Darknet's correct_boxes: the edges are limited to [0, 1], the centre and size follow;
    the 0.005 rule applies after clipping. Values from Debian's libdarknet (fill_truth_region)."""
    labels = np.array([[[0, 0.95, 0.5, 0.3, 0.2],       # 0.8 .. 1.1 -> 0.8 .. 1: cell (1, 2)
                        [0, 0.1, 0.05, 0.1, 0.3],       # -0.1 .. 0.2 -> 0 .. 0.2: cell (0, 0)
                        [0, 0.4, 1.2, 0.1, 0.404]]])    # 0.998 .. 1.402 -> 0.998 .. 1: dropped
    truth = detection_truth(labels, 3, 1)
    np.testing.assert_allclose(truth[0, 5], [1, 1, 0.7, 0.5, 0.2, 0.2], atol=1e-12)
    np.testing.assert_allclose(truth[0, 0], [1, 1, 0.3, 0.3, 0.1, 0.2], atol=1e-12)
    assert truth[0, :, 0].sum() == 2
    truth = detection_truth(np.array([[[0, 1.0, 1.0, 0.5, 0.5]]]), 3, 1)   # the far corner
    np.testing.assert_allclose(truth[0, 8], [1, 1, 0.625, 0.625, 0.25, 0.25], atol=1e-12)


@pytest.mark.parametrize("labels, match", [
    (np.zeros((2, 5)), "shape"),
    (np.array([[[2.0, 0.5, 0.5, 0.1, 0.1]]]), "class 2"),
    (np.array([[[0.5, 0.5, 0.5, 0.1, 0.1]]]), "integers"),
    (np.array([[[0, np.nan, 0.5, 0.1, 0.1]]]), "non-finite"),
])
def test_truth_grid_errors(labels, match):
    with pytest.raises(LayerError, match=match):
        detection_truth(labels, 2, 2)


def test_shape_errors_name_the_layout():
    with pytest.raises(LayerError, match=r"\(N, 30\)"):
        REF(np.zeros((1, 29)), np.zeros((1, 1, 7)), side=1, num=2, classes=20)
    with pytest.raises(LayerError, match="truth grid"):
        REF(np.zeros((1, 11)), np.zeros((1, 2, 6)), side=1, num=2, classes=1)
