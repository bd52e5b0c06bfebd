"""YOLOv1's detection loss on the GPU against the NumPy reference (loss, delta, statistics)."""

import numpy as np
import pytest

from minicnn.ops.detection import (detection_layout, detection_loss_backward,
                                   detection_loss_forward, detection_truth)

from .conftest import assert_close


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
    p = dict(side=side, num=num, classes=classes, sqrt=sqrt, rescore=rescore,
             object_scale=1.0, noobject_scale=0.5, class_scale=1.0, coord_scale=5.0)
    want_loss, want_delta, want_stats = detection_loss_forward.impls["ref"](x, truth, **p)
    loss, delta, stats = detection_loss_forward(gpu.asarray(x), truth, **p)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    assert_close(loss, want_loss, tol, "loss")
    assert_close(delta, want_delta, tol, "delta")
    assert_close(stats, want_stats, tol, "stats")
    assert_close(detection_loss_backward(delta, 0.5),
                 detection_loss_backward.impls["ref"](want_delta, 0.5), tol, "dx")
