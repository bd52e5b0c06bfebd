"""Steps taken by the layers (Solver._layer_steps): an InnerProduct's backward that also takes the
solver's SGD/Nesterov step of its weights in one pass (csrc/inner_product.cpp) must leave every
weight, momentum history and diff bit-identical to the backward followed by the solver's update,
and the solver must fall back wherever that cannot hold."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.native import lib
from minicnn.proto import caffe_pb2, parse_text

pytestmark = pytest.mark.skipif(lib is None, reason="minicnn._native was not built")

# The one-pass step needs AVX-512 (elsewhere the op declines and the solver updates as before).
FUSED_HERE = lib is not None and lib.gemm_kernel().startswith("avx512")


def aligned_zeros(shape, offset=0):
    """Zeros starting ``offset`` floats after a 64-byte boundary (0: the streaming stores run)."""
    count = math.prod(shape)
    buffer = np.zeros(count + 32, np.float32)
    start = (-buffer.ctypes.data % 64) // 4 + offset
    return buffer[start:start + count].reshape(shape)


# --- the kernel against the separate passes ------------------------------------------------------

@st.composite
def step_cases(draw):
    m = draw(st.sampled_from([1, 2, 7, 8, 9, 16, 33, 64]))
    n = draw(st.integers(1, 9))                        # odd counts leave a single last row
    k = draw(st.sampled_from([1, 15, 16, 17, 95, 96, 97, 150, 192, 200]))
    return dict(m=m, n=n, k=k, regularization=draw(st.sampled_from([0, 1, 2])),
                nesterov=draw(st.booleans()), with_dx=draw(st.booleans()),
                offset=draw(st.sampled_from([0, 1, 3])), seed=draw(st.integers(0, 2**31)),
                momentum=draw(st.sampled_from([0.0, 0.9, 0.99])),
                lr=draw(st.sampled_from([1e-3, 0.1, 1.7])),
                decay=draw(st.sampled_from([0.0, 5e-4, 0.3])))


@pytest.mark.skipif(not FUSED_HERE, reason="the one-pass step needs AVX-512")
@settings(max_examples=60, deadline=None)
@given(case=step_cases())
def test_one_pass_step_is_the_backward_then_the_update(case):
    m, n, k = case["m"], case["n"], case["k"]
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((m, k), dtype=np.float32)
    dy = rng.standard_normal((m, n), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    w[rng.random((n, k)) < 0.1] = 0.0                  # sign(0) = 0 under L1, -0.0 too
    w[rng.random((n, k)) < 0.05] = -0.0
    history = rng.standard_normal((n, k), dtype=np.float32)
    args = (case["lr"], case["momentum"], case["decay"], case["regularization"],
            case["nesterov"])

    w1, h1, d1 = w.copy(), history.copy(), np.zeros((n, k), np.float32)
    dx1 = np.empty((m, k), np.float32)
    lib.ip_backward_data(dy, w1, dx1, False)
    lib.ip_backward_filter(dy, x, d1, False)
    lib.momentum_update(d1, w1, h1, *args[:4], 1.0, args[4])

    w2, h2 = w.copy(), history.copy()
    d2 = aligned_zeros((n, k), case["offset"])
    d2[...] = np.nan                                     # every value must be written
    dx2 = np.full((m, k), np.nan, np.float32) if case["with_dx"] else None
    assert lib.ip_backward_step(dy, x, w2, h2, d2, dx2, *args)
    for a, b in ((w1, w2), (h1, h2), (d1, d2)) + (((dx1, dx2),) if case["with_dx"] else ()):
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
    w3, h3 = w.copy(), history.copy()                    # no diff: the same weights and history
    assert lib.ip_backward_step(dy, x, w3, h3, None, None, *args)
    for a, b in ((w1, w3), (h1, h3)):
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.skipif(not FUSED_HERE, reason="the one-pass step needs AVX-512")
def test_one_pass_step_declines_a_batch_over_64_and_writes_nothing():
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((65, 10), dtype=np.float32), np.ones((65, 3), np.float32)
    w, h, d = np.ones((3, 10), np.float32), np.ones((3, 10), np.float32), np.ones((3, 10),
                                                                                   np.float32)
    assert not lib.ip_backward_step(dy, x, w, h, d, None, 0.1, 0.9, 0.0, 0, False)
    assert (w == 1).all() and (h == 1).all() and (d == 1).all()


def test_one_pass_step_checks_its_arguments():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="shapes do not match"):
        lib.ip_backward_step(a, np.zeros((2, 4), np.float32), a.copy(), a.copy(), a.copy(),
                             None, 0.1, 0.9, 0.0, 0, False)
    with pytest.raises(ValueError, match="regularization"):
        lib.ip_backward_step(np.zeros((2, 3), np.float32), np.zeros((2, 5), np.float32),
                             np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32),
                             np.zeros((3, 5), np.float32), None, 0.1, 0.9, 0.0, 3, False)


# --- whole training runs ---------------------------------------------------------------------------

def mlp(batch):
    """Inner products the solver hands steps to (fc1, fc2) and ones it must not: transposed,
    sharing one weight blob, frozen (lr_mult 0, no gradient computed). "side" is handed a step
    its backward never takes (its output reaches no loss): its diff stays 0 and the solver
    applies the step (weight decay alone) as before."""
    filler = 'weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "gaussian" std: 0.1 }'
    return parse_text(f"""
    name: "mlp"
    input: "x" input_shape {{ dim: {batch} dim: 2 dim: 5 dim: 15 }}
    input: "t" input_shape {{ dim: {batch} dim: 5 }}
    layer {{ name: "fc1" type: "InnerProduct" bottom: "x" top: "h1"
      param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
      inner_product_param {{ num_output: 33 {filler} }} }}
    layer {{ name: "relu1" type: "ReLU" bottom: "h1" top: "h1" }}
    layer {{ name: "side" type: "InnerProduct" bottom: "h1" top: "side"
      inner_product_param {{ num_output: 3 {filler} }} }}
    layer {{ name: "fc2" type: "InnerProduct" bottom: "h1" top: "h2"
      param {{ lr_mult: 0.5 decay_mult: 2 }}
      inner_product_param {{ num_output: 20 bias_term: false {filler} }} }}
    layer {{ name: "fc2t" type: "InnerProduct" bottom: "h2" top: "h3"
      inner_product_param {{ num_output: 17 transpose: true {filler} }} }}
    layer {{ name: "fc3a" type: "InnerProduct" bottom: "h3" top: "h4" param {{ name: "w3" }}
      inner_product_param {{ num_output: 17 {filler} }} }}
    layer {{ name: "fc3b" type: "InnerProduct" bottom: "h4" top: "h5" param {{ name: "w3" }}
      inner_product_param {{ num_output: 17 {filler} }} }}
    layer {{ name: "frozen" type: "InnerProduct" bottom: "h5" top: "h6"
      param {{ lr_mult: 0 }} param {{ lr_mult: 0 }}
      inner_product_param {{ num_output: 5 {filler} }} }}
    layer {{ name: "loss" type: "EuclideanLoss" bottom: "h6" bottom: "t" top: "loss" }}
    """)


def train(fields, monkeypatch, fuse, batch=6, steps=4, x_scale=1.0, read_diffs_every=0):
    """Weights, histories and diffs after ``steps`` iterations, and the layers that took a
    step (name, number of times). ``read_diffs_every``: also the diffs after every so many
    iterations (a deferred diff, Blob.defer_diff, is copied when read)."""
    monkeypatch.setenv("MINICNN_FUSE", "1" if fuse else "0")
    fields = {"base_lr": 0.05, "lr_policy": "step", "stepsize": 2, "gamma": 0.5,
              "max_iter": 100, "random_seed": 3, "snapshot_after_train": False,
              "momentum": 0.9, "weight_decay": 0.01, **fields}
    param = caffe_pb2.SolverParameter(net_param=mlp(batch), **fields)
    solver = minicnn.get_solver(param, log=lambda message: None)
    rng = np.random.default_rng(1)
    solver.net.blobs["x"].data[...] = rng.standard_normal((batch, 2, 5, 15)) * x_scale
    solver.net.blobs["t"].data[...] = rng.standard_normal((batch, 5))
    taken = {}
    original = minicnn.ops.inner_product.inner_product_backward_step

    def spy(dy, x, w, diff, step, **kwargs):
        done = original(dy, x, w, diff, step, **kwargs)
        if done:
            name = next(layer.name for layer in solver.net.layers
                        if layer.blobs and layer.blobs[0].data is w)
            taken[name] = taken.get(name, 0) + 1
        return done

    monkeypatch.setattr(minicnn.ops, "inner_product_backward_step", spy)
    seen = []
    for _ in range(steps // read_diffs_every if read_diffs_every else 1):
        solver.step(read_diffs_every or steps)
        if read_diffs_every:
            seen += [blob.diff.copy() for blob in solver.net.learnable_params]
    error = solver.diverged                 # step() stops at a non-finite loss (solve() raises)
    arrays = [a.copy() for blob in solver.net.learnable_params for a in (blob.data, blob.diff)]
    return seen + arrays + [h.copy() for h in solver.history], taken, error, solver


def assert_same_training(fields, monkeypatch, **kwargs):
    fused, taken, error, _ = train(fields, monkeypatch, True, **kwargs)
    plain, none, plain_error, _ = train(fields, monkeypatch, False, **kwargs)
    assert none == {} and error == plain_error
    for a, b in zip(fused, plain):
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))
    return taken


@pytest.mark.parametrize("fields", [
    dict(type="SGD"),
    dict(type="SGD", momentum=0.0, weight_decay=0.0),
    dict(type="Nesterov", regularization_type="L1", weight_decay=0.02),
    dict(type="Nesterov", momentum=0.95, lr_policy="inv", gamma=0.1, power=0.75),
])
def test_steps_taken_in_the_backward_train_bit_for_bit_as_the_solver_alone(fields, monkeypatch):
    taken = assert_same_training(fields, monkeypatch)
    # handed only to the layers that own their weights, are not transposed and compute them
    assert taken == ({"fc1": 4, "fc2": 4} if FUSED_HERE else {})


@pytest.mark.parametrize("fields", [
    dict(type="SGD", iter_size=2),                 # every gradient first: no step handed over
    dict(type="SGD", clip_gradients=0.5),
    dict(type="Adam", momentum=0.9, momentum2=0.999, base_lr=0.001),
])
def test_no_steps_are_handed_over_where_the_update_needs_every_gradient(fields, monkeypatch):
    assert assert_same_training(fields, monkeypatch) == {}


@pytest.mark.parametrize("every", [1, 3])
def test_a_deferred_diff_holds_each_iterations_step_when_read(every, monkeypatch):
    """Plain SGD's step is the new history: the layer leaves the diff to be copied from it when
    read (Blob.defer_diff). Read after every iteration or now and then, it holds the step."""
    taken = assert_same_training(dict(type="SGD"), monkeypatch, steps=6, read_diffs_every=every)
    assert taken == ({"fc1": 6, "fc2": 6} if FUSED_HERE else {})


@pytest.mark.skipif(not FUSED_HERE, reason="the one-pass step needs AVX-512")
def test_training_never_copies_a_deferred_diff_nobody_reads(monkeypatch):
    """The copy is for readers: the solver's own iterations (handing the next step over
    included) leave fc1's and fc2's diffs deferred."""
    _, _, _, solver = train(dict(type="SGD"), monkeypatch, True, steps=3)
    copies = []
    copyto = np.copyto

    def spy(dst, src, *args, **kwargs):
        copies.append(dst.shape)
        return copyto(dst, src, *args, **kwargs)

    monkeypatch.setattr(np, "copyto", spy)
    solver.step(3)
    assert copies == []
    deferred = {layer.name for layer in solver.net.layers
                if layer.blobs and layer.blobs[0]._diff_source is not None}
    assert deferred == {"fc1", "fc2"}
    solver.net.params["fc1"][0].diff
    assert copies == [solver.net.params["fc1"][0].data.shape]


def test_a_deferred_diff_survives_a_restore(monkeypatch, tmp_path):
    """Restoring a solver state overwrites the histories in place; a diff deferred to one keeps
    the step it held (as Caffe's diff does)."""
    def restored_diffs(fuse):
        _, _, _, solver = train(dict(type="SGD"), monkeypatch, fuse, steps=3)
        solver.param.snapshot_prefix = str(tmp_path / ("fused" if fuse else "plain"))
        solver.snapshot()
        before = [blob.diff.copy() for blob in solver.net.learnable_params]
        solver.step(2)                                   # the histories move on, unread
        solver.restore(str(tmp_path / ("fused" if fuse else "plain")) + "_iter_3.solverstate")
        return before, [blob.diff.copy() for blob in solver.net.learnable_params]
    fused_before, fused_after = restored_diffs(True)
    plain_before, plain_after = restored_diffs(False)
    for a, b in zip(fused_before + fused_after, plain_before + plain_after):
        np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


def test_blob_defer_diff():
    blob = minicnn.Blob((2, 3))
    source = np.arange(6, dtype=np.float32)
    blob.defer_diff(source)
    source[0] = 7.0                                      # the copy is taken when read
    np.testing.assert_array_equal(blob.diff.reshape(-1), [7, 1, 2, 3, 4, 5])
    source[1] = 9.0                                      # and only once
    assert blob.diff[0, 1] == 1.0
    blob.defer_diff(source)
    blob.diff = np.zeros((2, 3))                         # a write cancels it
    assert not blob.diff.any()
    blob.defer_diff(source)
    blob.reshape(3, 2)                                   # so does a new shape
    assert not blob.diff.any()
    with pytest.raises(minicnn.MinicnnError, match="defer_diff"):
        blob.defer_diff(np.zeros(5, np.float32))


def test_a_declined_step_still_clears_the_diff(monkeypatch):
    """A batch over 64: the layer declines the step the solver handed it (whose diff was not
    cleared) and must zero the diff before adding its gradient."""
    assert assert_same_training(dict(type="SGD"), monkeypatch, batch=65) == {}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_iteration_leaves_the_weights_as_the_solver_alone_would(monkeypatch):
    fields = dict(type="SGD", base_lr=40.0)
    taken = assert_same_training(fields, monkeypatch, steps=30, x_scale=30.0)
    _, _, diverged, solver = train(fields, monkeypatch, True, steps=30, x_scale=30.0)
    assert diverged and solver.iter < 30
    # steps were taken before the loss went bad, none in the iteration it did
    assert taken == ({"fc1": solver.iter, "fc2": solver.iter} if FUSED_HERE else {})
