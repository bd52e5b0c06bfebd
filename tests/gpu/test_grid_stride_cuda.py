"""The kernels' grid-stride loops on the GPU. minicnn.cuda caps a grid at MAX_BLOCKS blocks (the
1-D launches, softmax's block per row, the solver's chunks) and each kernel's loop covers the
rest; at the real cap (65,536 blocks of 256 threads) only arrays of 16.7 million values take a
second lap, which no other test reaches. Here the cap is lowered to a block or three, so that
small arrays take many laps, and the ops must still equal the reference: a loop that stops after
its first lap, or a block reduction whose shared memory is reused too early by the next row of
a block, fails."""

import numpy as np
import pytest

from minicnn import cuda
from minicnn.ops.conv import ConvGeometry, conv2d_backward, conv2d_forward
from minicnn.ops.pool import PoolGeometry, max_pool2d_backward, max_pool2d_forward
from minicnn.ops.relu import relu_backward, relu_forward
from minicnn.ops.softmax import (softmax_backward, softmax_forward, softmax_loss_backward,
                                 softmax_loss_forward)

from .conftest import assert_close
from .test_solver_cuda import blobs, momentum_step_numpy

CAPS = [1, 3]


@pytest.mark.parametrize("cap", CAPS)
def test_elementwise_conv_and_pooling_loops_cover_every_element(gpu, monkeypatch, cap):
    monkeypatch.setattr(cuda, "MAX_BLOCKS", cap)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 13, 11)).astype(np.float32)         # 858 values a launch
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert_close(relu_forward(gpu.asarray(x), 0.1), relu_forward.impls["ref"](x, 0.1), 0, "relu")
    assert_close(relu_backward(gpu.asarray(dy), gpu.asarray(x), 0.1),
                 relu_backward.impls["ref"](dy, x, 0.1), 0, "relu dx")

    geom = ConvGeometry(3, 1, 1)                                        # im2col, col2im, bias
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    want_y = conv2d_forward.impls["ref"](x, w, b, geom=geom)
    assert_close(conv2d_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b), geom=geom),
                 want_y, 2e-5, "conv y")
    dyc = rng.standard_normal(want_y.shape).astype(np.float32)
    for name, got, want in zip(("dx", "dw", "db"),
                               conv2d_backward(gpu.asarray(dyc), gpu.asarray(x), gpu.asarray(w),
                                               geom=geom),
                               conv2d_backward.impls["ref"](dyc, x, w, geom=geom)):
        assert_close(got, want, 2e-5, f"conv {name}")

    pool = PoolGeometry((3, 3), (2, 2))
    want_p, want_mask = max_pool2d_forward.impls["ref"](x, geom=pool)
    got_p, mask = max_pool2d_forward(gpu.asarray(x), geom=pool)
    assert_close(got_p, want_p, 0, "pool y")
    dyp = rng.standard_normal(want_p.shape).astype(np.float32)
    assert_close(max_pool2d_backward(gpu.asarray(dyp), mask, x.shape, geom=pool),
                 max_pool2d_backward.impls["ref"](dyp, want_mask, x.shape), 0, "pool dx")


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("shape", [(7, 100), (2, 4, 5, 6)])    # a block per row; a thread each
def test_softmax_and_its_loss_cover_every_row(gpu, monkeypatch, cap, shape):
    monkeypatch.setattr(cuda, "MAX_BLOCKS", cap)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = softmax_forward(gpu.asarray(x), axis=1)
    want_y = softmax_forward.impls["ref"](x, 1)
    assert_close(y, want_y, 1e-6, "softmax y")
    assert_close(softmax_backward(gpu.asarray(dy), y, axis=1),
                 softmax_backward.impls["ref"](dy, want_y, 1), 1e-5, "softmax dx")
    label = rng.integers(0, shape[1], (shape[0], *shape[2:])).astype(np.float32)
    loss, prob = softmax_loss_forward(gpu.asarray(x), gpu.asarray(label), axis=1)
    want_loss, want_prob = softmax_loss_forward.impls["ref"](x, label, axis=1)
    assert_close(loss, want_loss, 1e-5, "loss")
    assert_close(softmax_loss_backward(prob, gpu.asarray(label), axis=1),
                 softmax_loss_backward.impls["ref"](want_prob, label, axis=1), 1e-5, "loss dx")


@pytest.mark.parametrize("cap", CAPS)
def test_the_solver_covers_every_chunk(gpu, monkeypatch, cap):
    monkeypatch.setattr(cuda, "MAX_BLOCKS", cap)
    host = blobs([20000, 9000, 5], np.float32, seed=5)                 # 3 + 2 + 1 chunks
    mults = [(1.0, 0.0005), (2.0, 0.0), (1.0, 0.0005)]
    device = [tuple(gpu.asarray(a) for a in (data, diff, history))
              for diff, data, history in host]
    cuda.momentum_step(device, mults, 0.01, 0.9, 1.0, 1, False)
    for i, ((diff, data, history), (d_data, d_diff, d_history)) in enumerate(zip(host, device)):
        decay = mults[i][1]
        step, new_data, v = momentum_step_numpy(diff, data, history, 0.01 * mults[i][0], 0.9,
                                                decay, 1 if decay else 0, 1.0, False)
        np.testing.assert_array_equal(d_data.get(), new_data, err_msg=f"data of blob {i}")
        np.testing.assert_array_equal(d_history.get(), v, err_msg=f"history of blob {i}")
    arrays = [gpu.asarray(np.ones(n, np.float32)) for n in (20000, 9000, 5)]
    cuda.zero_fill(arrays)
    for a in arrays:
        assert not a.get().any()
