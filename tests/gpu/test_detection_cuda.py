"""YOLOv1's detection loss on the GPU against the NumPy reference (loss, delta, statistics)."""

import numpy as np
import pytest

from minicnn.ops.detection import (detection_layout, detection_loss_backward,
                                   detection_loss_forward, detection_truth)

from .conftest import assert_close


def check_forward(gpu, x, truth, **fields):
    """The GPU forward's loss, delta and statistics against the reference's; returns (GPU
    delta, reference delta, tolerance) for a backward check."""
    p = dict(object_scale=1.0, noobject_scale=0.5, class_scale=1.0, coord_scale=5.0, **fields)
    want_loss, want_delta, want_stats = detection_loss_forward.impls["ref"](x, truth, **p)
    loss, delta, stats = detection_loss_forward(gpu.asarray(x), truth, **p)
    tol = 1e-5 if x.dtype == np.float32 else 1e-11
    assert_close(loss, want_loss, tol, "loss")
    assert_close(delta, want_delta, tol, "delta")
    assert_close(stats, want_stats, tol, "stats")
    return delta, want_delta, tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sqrt, rescore", [(True, True), (False, False)])
def test_detection_loss_matches_the_reference(gpu, sqrt, rescore, dtype):
    side, num, classes = 4, 2, 3
    rng = np.random.default_rng(11)
    n = 3
    d = detection_layout(side, num, classes)[0]
    x = rng.uniform(0.05, 0.95, (n, d)).astype(dtype)
    labels = np.full((n, 5, 5), -1.0)
    for b in range(n):
        for k in range(rng.integers(1, 5)):
            labels[b, k] = [rng.integers(classes), *rng.uniform(0.05, 0.95, 2),
                            *rng.uniform(0.1, 0.6, 2)]
    truth = detection_truth(labels, side, classes, dtype=dtype)
    delta, want_delta, tol = check_forward(gpu, x, truth, side=side, num=num, classes=classes,
                                           sqrt=sqrt, rescore=rescore)
    assert_close(detection_loss_backward(delta, 0.5),
                 detection_loss_backward.impls["ref"](want_delta, 0.5), tol, "dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sqrt", [True, False])
def test_detection_loss_picks_the_predictor_as_darknet(gpu, sqrt, dtype):
    """Which predictor of a cell answers for its object: IoU decides once one is positive, the
    RMSE (below 20) while every IoU so far is 0. Cells of two kinds, with boxes placed by hand:
    predictor 0 on the object and predictor 1 far from it (IoU 1, then 0: predictor 0), and both
    far from it, predictor 1 nearer (IoU 0 twice: predictor 1, by RMSE)."""
    side, num, classes = 3, 2, 2
    rng = np.random.default_rng(12)
    n = 2
    d, _, box0 = detection_layout(side, num, classes)
    labels = np.full((n, 4, 5), -1.0)
    for b in range(n):                              # one object in each of 4 distinct cells
        for k, cell in enumerate(rng.choice(side * side, 4, replace=False)):
            row, col = divmod(int(cell), side)
            labels[b, k] = [rng.integers(classes), (col + rng.uniform(0.2, 0.8)) / side,
                            (row + rng.uniform(0.2, 0.8)) / side, *rng.uniform(0.1, 0.3, 2)]
    truth = detection_truth(labels, side, classes, dtype=dtype)
    x = rng.uniform(0.05, 0.95, (n, d)).astype(dtype)
    for b in range(n):
        for cell in np.flatnonzero(truth[b, :, 0]):
            tx, ty, tw, th = truth[b, cell, 1 + classes:]
            size = (np.sqrt(tw), np.sqrt(th)) if sqrt else (tw, th)
            small = (0.2, 0.2) if sqrt else (0.04, 0.04)
            if cell % 2:                            # IoU 1, then 0
                boxes = [(tx, ty, *size), (tx + 3.0, ty, *small)]
            else:                                   # IoU 0 twice, RMSE about 1.2 and 0.7
                boxes = [(tx + 3.5, ty, *small), (tx + 2.2, ty, *small)]
            for j, box in enumerate(boxes):
                start = box0 + (cell * num + j) * 4
                x[b, start:start + 4] = box
    check_forward(gpu, x, truth, side=side, num=num, classes=classes, sqrt=sqrt, rescore=True)
