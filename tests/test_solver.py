"""Solver: every update rule and lr policy against the update written out by hand in NumPy,
weight decay (L1/L2, decay_mult), lr_mult, iter_size, clipping, test nets, snapshots, divergence.

The net is linear least squares, y = x W^T + b with EuclideanLoss, so its gradient is known in
closed form: dL/dy = (y - t) / N, dW = dy^T x, db = sum over the batch of dy.
"""

import math
import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import MinicnnError, NetError
from minicnn.layer import Layer, register
from minicnn.proto import caffe_pb2, parse_text, read_binary, write_binary
from minicnn.rng import get_rng
from minicnn.solver import learning_rate

N, D, K = 4, 3, 2
LINEAR = f"""
name: "linear"
input: "x" input_shape {{ dim: {N} dim: {D} }}
input: "t" input_shape {{ dim: {N} dim: {K} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "x" top: "y"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: {K} weight_filler {{ type: "gaussian" std: 0.5 }}
                         bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }}
"""
RNG = np.random.default_rng(42)
X, T = RNG.standard_normal((N, D)), RNG.standard_normal((N, K))


def make_solver(solver_type="SGD", **fields):
    fields = {"base_lr": 0.1, "lr_policy": "fixed", "max_iter": 100,
              "snapshot_after_train": False, **fields}
    param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), type=solver_type, **fields)
    solver = minicnn.get_solver(param, dtype=np.float64, log=lambda message: None)
    solver.net.blobs["x"].data[...] = X
    solver.net.blobs["t"].data[...] = T
    return solver


def gradients(w, b):
    dy = (X @ w.T + b - T) / N
    return dy.T @ X, dy.sum(axis=0)


def hand_updates(solver_type, w, b, steps, p):
    """The updates of ``steps`` iterations as Caffe writes them, for (W, b) with lr_mult 1 and
    2 and decay_mult 1 and 0."""
    params, lr_mults, decay_mults = [w.copy(), b.copy()], [1, 2], [1, 0]
    hist = [np.zeros_like(a) for a in params] * 2
    hist = [h.copy() for h in hist]
    for it in range(steps):
        grads = list(gradients(*params))
        for i in range(2):
            g = grads[i] + p["weight_decay"] * decay_mults[i] * (
                params[i] if p.get("reg", "L2") == "L2" else np.sign(params[i]))
            lr = learning_rate_of(p, it) * lr_mults[i]
            m, delta = p.get("momentum", 0.0), p.get("delta", 1e-8)
            if solver_type == "SGD":
                hist[i] = m * hist[i] + lr * g
                step = hist[i]
            elif solver_type == "Nesterov":
                old = hist[i].copy()
                hist[i] = m * hist[i] + lr * g
                step = (1 + m) * hist[i] - m * old
            elif solver_type == "AdaGrad":
                hist[i] = hist[i] + g * g
                step = lr * g / (np.sqrt(hist[i]) + delta)
            elif solver_type == "RMSProp":
                r = p["rms_decay"]
                hist[i] = r * hist[i] + (1 - r) * g * g
                step = lr * g / (np.sqrt(hist[i]) + delta)
            elif solver_type == "AdaDelta":
                hist[i] = m * hist[i] + (1 - m) * g * g
                u = g * np.sqrt((hist[2 + i] + delta) / (hist[i] + delta))
                hist[2 + i] = m * hist[2 + i] + (1 - m) * u * u
                step = lr * u
            elif solver_type == "Adam":
                b1, b2 = m, p["momentum2"]
                hist[i] = b1 * hist[i] + (1 - b1) * g
                hist[2 + i] = b2 * hist[2 + i] + (1 - b2) * g * g
                t = it + 1
                step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * hist[i] / (
                    np.sqrt(hist[2 + i]) + delta)
            params[i] = params[i] - step
    return params


def learning_rate_of(p, it):
    """Caffe's SGDSolver<double> rate: inv in double, but for gamma() * iter_ (a float product)."""
    gamma_iter = float(np.float32(p.get("gamma", 0)) * np.float32(it))
    return p["base_lr"] * (1 + gamma_iter) ** -p["power"] if p.get("lr_policy") == "inv" \
        else p["base_lr"]


F32 = lambda v: float(np.float32(v))          # noqa: E731  (solver fields hold float32 values)

CASES = {
    "SGD": dict(momentum=0.9, weight_decay=0.01),
    "Nesterov": dict(momentum=0.8, weight_decay=0.02),
    "AdaGrad": dict(weight_decay=0.01, delta=1e-6),
    "RMSProp": dict(weight_decay=0.01, rms_decay=0.95, delta=1e-6),
    "AdaDelta": dict(momentum=0.95, weight_decay=0.0, delta=1e-6, base_lr=1.0),
    "Adam": dict(momentum=0.9, momentum2=0.999, weight_decay=0.001, delta=1e-8, base_lr=0.01),
}


@pytest.mark.parametrize("solver_type", sorted(CASES))
def test_each_solver_type_matches_the_hand_written_update(solver_type):
    fields = dict(CASES[solver_type])
    solver = make_solver(solver_type, **fields)
    w0, b0 = (blob.data.copy() for blob in solver.net.params["fc"])
    p = {"base_lr": 0.1, **{k: F32(v) for k, v in fields.items()}}
    p["base_lr"] = F32(p["base_lr"])
    solver.step(4)
    w, b = hand_updates(solver_type, w0, b0, 4, p)
    np.testing.assert_allclose(solver.net.params["fc"][0].data, w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(solver.net.params["fc"][1].data, b, rtol=1e-10, atol=1e-12)
    assert solver.iter == 4


@pytest.mark.skipif(minicnn.native.lib is None, reason="minicnn._native was not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fields", [
    dict(type="SGD", momentum=0.9, weight_decay=0.01),
    dict(type="SGD", momentum=0.0, weight_decay=0.0),
    dict(type="Nesterov", momentum=0.8, weight_decay=0.02, regularization_type="L1"),
    dict(type="SGD", momentum=0.9, weight_decay=0.005, iter_size=3, lr_policy="inv",
         gamma=0.1, power=0.75),
])
def test_fast_momentum_update_is_bit_for_bit_the_numpy_rule(fields, dtype, monkeypatch):
    """csrc/solver.cpp's one-pass SGD/Nesterov update (and, in float32, the InnerProduct's step
    in its backward, csrc/inner_product.cpp) against normalize + regularize +
    compute_update_value + Net.update in NumPy: identical weights and histories."""
    fields = dict(fields)
    solver_type = fields.pop("type")

    def run():
        param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), type=solver_type,
                                          base_lr=0.1, max_iter=100, random_seed=7,
                                          snapshot_after_train=False,
                                          **{"lr_policy": "fixed", **fields})
        solver = minicnn.get_solver(param, dtype=dtype, log=lambda message: None)
        solver.net.blobs["x"].data[...] = X
        solver.net.blobs["t"].data[...] = T
        solver.step(5)
        return [b.data.copy() for b in solver.net.learnable_params] + solver.history

    fast = run()
    monkeypatch.setattr(minicnn.sgd_solvers._Rule, "_momentum_update",
                        lambda self, param_id, rate, nesterov: False)
    monkeypatch.setattr(minicnn.sgd_solvers._Rule, "_momentum_step",   # nor the layer's step
                        lambda self, param_id, rate, nesterov: None)
    slow = run()
    for a, b in zip(fast, slow):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)


def test_legacy_solver_type_enum_selects_the_solver():
    param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), solver_type="ADAM",
                                      base_lr=0.01, lr_policy="fixed")
    assert isinstance(minicnn.get_solver(param, log=lambda m: None), minicnn.AdamSolver)


def test_solver_type_and_type_both_given_are_refused_even_when_they_agree(tmp_path):
    # Caffe 1.0's UpgradeSolverType CHECKs that only one of them is set
    both = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), solver_type="ADAM",
                                     type="Adam", base_lr=0.01, lr_policy="fixed")
    with pytest.raises(NetError, match="both the old enum 'solver_type'"):
        minicnn.get_solver(both, log=lambda m: None)
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.01\ntype: "SGD"\nsolver_type: SGD\n')
    with pytest.raises(NetError, match=rf"^{re.escape(str(path))}:3: .*give only 'type'"):
        minicnn.get_solver(str(path), log=lambda m: None)


def test_l1_regularization_and_inv_policy():
    fields = dict(momentum=0.9, weight_decay=0.05, regularization_type="L1", lr_policy="inv",
                  gamma=0.1, power=0.75)
    solver = make_solver("SGD", **fields)
    w0, b0 = (blob.data.copy() for blob in solver.net.params["fc"])
    solver.step(3)
    p = {"base_lr": F32(0.1), "momentum": F32(0.9), "weight_decay": F32(0.05), "reg": "L1",
         "lr_policy": "inv", "gamma": F32(0.1), "power": F32(0.75)}
    w, b = hand_updates("SGD", w0, b0, 3, p)
    np.testing.assert_allclose(solver.net.params["fc"][0].data, w, rtol=1e-10)
    np.testing.assert_allclose(solver.net.params["fc"][1].data, b, rtol=1e-10)


def test_inv_policy_is_computed_in_the_nets_float():
    """SGDSolver<Dtype>::GetLearningRate's inv: base_lr() * pow(Dtype(1) + gamma() * iter_,
    -power()), where gamma() * iter_ is a float product: a double net's rate is a double (not
    the float32 rate, 1e-8 off, that would pull a whole float64 run off Caffe's and PyTorch's,
    tests/test_torch_training.py), a float net's a float."""
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="inv", gamma=1e-4, power=0.75)
    base, gamma, power = F32(0.01), np.float32(1e-4), F32(0.75)
    for it in (0, 1, 7, 1000, 12345):
        product = float(gamma * np.float32(it))
        assert learning_rate(param, it, 0, dtype=np.float64)[0] == pytest.approx(
            base * (1 + product) ** -power, rel=1e-15, abs=0)
        f32 = np.float32
        assert learning_rate(param, it, 0)[0] == float(f32(base) * (f32(1) + f32(product))
                                                       ** -f32(power))


def test_iter_size_averages_and_clipping_scales_the_summed_gradient():
    plain, accumulated = make_solver(momentum=0.0), make_solver(momentum=0.0, iter_size=3)
    for s in (plain, accumulated):
        for blob, value in zip(s.net.params["fc"], (np.ones((K, D)), np.zeros(K))):
            blob.data[...] = value
        s.step(1)
    np.testing.assert_allclose(accumulated.net.params["fc"][0].data,
                               plain.net.params["fc"][0].data, rtol=1e-12)
    # the same data in each of the 3 passes: the loss shown is their mean, as Caffe's Step
    assert accumulated.smoothed_loss == pytest.approx(plain.smoothed_loss, rel=1e-12)
    clipped = make_solver(momentum=0.0, clip_gradients=0.01, iter_size=2)
    w0, b0 = (blob.data.copy() for blob in clipped.net.params["fc"])
    dw, db = gradients(w0, b0)
    summed = 2 * np.sqrt(np.sum(dw ** 2) + np.sum(db ** 2))      # iter_size 2: diffs add up
    clipped.step(1)
    scale = F32(0.01) / summed / 2                                 # clip, then divide by 2
    np.testing.assert_allclose(clipped.net.params["fc"][0].data, w0 - F32(0.1) * 2 * dw * scale,
                               rtol=1e-9)
    np.testing.assert_allclose(clipped.net.params["fc"][1].data,        # every blob, lr_mult 2
                               b0 - F32(0.1) * 2 * 2 * db * scale, rtol=1e-9)


def test_clip_gradients_zero_scales_every_gradient_to_zero():
    """Caffe returns early only for clip_gradients < 0; 0 scales the gradients by 0 / norm."""
    solver = make_solver(momentum=0.0, clip_gradients=0.0)
    before = [blob.data.copy() for blob in solver.net.params["fc"]]
    solver.step(1)
    for blob, value in zip(solver.net.params["fc"], before):
        np.testing.assert_array_equal(blob.data, value)


def test_lr_mult_zero_freezes_and_decay_mult_applies_per_blob():
    text = LINEAR.replace("param {{ lr_mult: 2 decay_mult: 0 }}".format(),
                          "param { lr_mult: 0 decay_mult: 0 }")
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.1, lr_policy="fixed",
                                      weight_decay=0.1)
    solver = minicnn.get_solver(param, dtype=np.float64, log=lambda m: None)
    bias = solver.net.params["fc"][1].data.copy()
    solver.step(2)
    np.testing.assert_array_equal(solver.net.params["fc"][1].data, bias)


# --- learning-rate policies ----------------------------------------------------------------------

@pytest.mark.parametrize("policy, fields, iteration, expected", [
    ("fixed", {}, 7, 0.1),
    ("step", {"gamma": 0.5, "stepsize": 3}, 7, 0.1 * 0.5 ** 2),
    ("step", {"gamma": 0.5, "stepsize": 4}, 7, 0.1 * 0.5),        # floor(7 / 4): one step
    ("exp", {"gamma": 0.9}, 4, 0.1 * 0.9 ** 4),
    ("inv", {"gamma": 1e-4, "power": 0.75}, 1000, 0.1 * (1 + 1e-4 * 1000) ** -0.75),
    ("poly", {"power": 2.0, "max_iter": 10}, 4, 0.1 * (1 - 0.4) ** 2),
    ("sigmoid", {"gamma": 0.5, "stepsize": 6}, 4, 0.1 / (1 + math.exp(-0.5 * (4 - 6)))),
    # gamma < 0: caffe.proto's "sigmod decay" (Caffe checks nothing), down to 0 without overflow
    ("sigmoid", {"gamma": -0.5, "stepsize": 6}, 8, 0.1 / (1 + math.exp(0.5 * (8 - 6)))),
    ("sigmoid", {"gamma": -1.0, "stepsize": 2}, 5000, 0.0),
])
def test_lr_policies(policy, fields, iteration, expected):
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy=policy, **fields)
    assert learning_rate(param, iteration, 0)[0] == pytest.approx(expected, rel=1e-6)


def test_multistep_advances_at_most_one_step_per_iteration():
    param = caffe_pb2.SolverParameter(base_lr=1.0, lr_policy="multistep", gamma=0.1,
                                      stepvalue=[2, 3, 3])
    step, rates = 0, []
    for it in range(6):
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
    g = float(F32(0.1))                 # Caffe: pow(gamma, step) in double, then a Dtype
    assert rates == [float(F32(g ** k)) for k in (0, 0, 1, 2, 3, 3)]


@pytest.mark.parametrize("fields, message", [
    ({"lr_policy": "step", "gamma": 0.1}, "needs stepsize"),
    ({"lr_policy": "cosine"}, "unknown lr_policy 'cosine'"),
    ({}, "gives no lr_policy"),
])
def test_lr_policy_errors(fields, message):
    with pytest.raises(MinicnnError, match=message):
        learning_rate(caffe_pb2.SolverParameter(base_lr=0.1, **fields), 5, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fields, iteration, message", [
    # Caffe's rate past max_iter: NaN (power 0.9), negative (power 1: gradient ascent)
    ({"lr_policy": "poly", "power": 0.9, "max_iter": 100}, 101, "iteration 101 is past it"),
    ({"lr_policy": "poly", "power": 1.0, "max_iter": 100}, 150, "max_iter 100; iteration 150"),
    ({"lr_policy": "poly", "power": -1.0, "max_iter": 100}, 100, r"lr = inf at iteration 100 "
     r"\(base_lr 0.1, power -1, max_iter 100\)"),
    ({"lr_policy": "exp", "gamma": 1.5}, 2000, r"'exp' gives lr = inf at iteration 2000 "
     r"\(base_lr 0.1, gamma 1.5\)"),
    ({"lr_policy": "step", "gamma": 10.0, "stepsize": 1}, 400, "lr = inf"),
    ({"lr_policy": "inv", "gamma": -0.01, "power": 0.75}, 101, "'inv' gives lr = nan"),
])
def test_a_rate_that_is_no_decay_or_not_finite_is_an_error(fields, iteration, message, dtype):
    """Caffe trains on with a NaN, inf or (poly past max_iter) negative rate: the weights
    turn NaN, or climb the loss, and minicnn's divergence check would blame base_lr."""
    with pytest.raises(MinicnnError, match=message):
        learning_rate(caffe_pb2.SolverParameter(base_lr=0.1, **fields), iteration, 0,
                      dtype=dtype)


def test_stepping_past_a_poly_policys_max_iter_stops_with_the_reason():
    solver = make_solver(lr_policy="poly", power=0.9, max_iter=3)
    solver.step(3)
    with pytest.raises(MinicnnError, match="'poly' reaches lr 0 at max_iter 3; iteration 4"):
        solver.step(2)                           # iteration 3's rate is 0, 4's past it
    assert solver.iter == 4
    assert all(np.isfinite(blob.data).all() for blob in solver.net.params["fc"])


# --- test nets ------------------------------------------------------------------------------------

@register("TestCounter")
class CounterLayer(Layer):
    """Outputs 1, 2, 3, ... on successive forward passes (test-only)."""
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.count = 0

    def reshape(self, bottom, top):
        top[0].reshape((1,))

    def forward(self, bottom, top):
        self.count += 1
        top[0].data[...] = self.count


def test_test_outputs_are_averaged_over_test_iter_and_share_weights():
    net = parse_text(LINEAR + 'layer { name: "c" type: "TestCounter" top: "count" '
                              'include { phase: TEST } }')
    param = caffe_pb2.SolverParameter(net_param=net, base_lr=0.1, lr_policy="fixed",
                                      test_iter=[4], test_interval=2, max_iter=4,
                                      snapshot_after_train=False)
    solver = minicnn.get_solver(param, log=lambda m: None)
    results = []
    solver.on_test.append(lambda s, index, outputs: results.append((s.iter, outputs["count"])))
    for net_ in [solver.net] + solver.test_nets:
        net_.blobs["x"].data[...] = X
    solver.solve()
    assert results == [(0, 2.5), (2, 6.5), (4, 10.5)]               # means of 1..4, 5..8, 9..12
    assert solver.test_nets[0].params["fc"][0].data is not None
    np.testing.assert_array_equal(solver.test_nets[0].params["fc"][0].data,
                                  solver.net.params["fc"][0].data)


def test_solver_needs_exactly_one_train_net_and_test_iters():
    with pytest.raises(MinicnnError, match="exactly one train net"):
        minicnn.get_solver(caffe_pb2.SolverParameter(base_lr=1), log=lambda m: None)
    param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), test_iter=[1], base_lr=0.1,
                                      lr_policy="fixed",
                                      max_iter=2, snapshot_after_train=False)
    # Caffe's InitTestNets: CHECK_GT(param_.test_interval(), 0) once there are test nets
    with pytest.raises(MinicnnError, match=r"1 test net\(s\) \(test_iter\) but test_interval "
                                           "is 0: give test_interval > 0"):
        minicnn.get_solver(param, log=lambda m: None)
    param = caffe_pb2.SolverParameter(train_net_param=parse_text(LINEAR), test_iter=[1])
    with pytest.raises(MinicnnError, match="once per test net"):
        minicnn.get_solver(param, log=lambda m: None)


# --- snapshots ----------------------------------------------------------------------------------

def test_snapshot_names_contents_and_copy_from(tmp_path):
    solver = make_solver(momentum=0.9, snapshot=2, snapshot_prefix=str(tmp_path / "lin"))
    solver.step(4)
    names = sorted(os.listdir(tmp_path))
    assert names == ["lin_iter_2.caffemodel", "lin_iter_2.solverstate",
                     "lin_iter_4.caffemodel", "lin_iter_4.solverstate"]
    state = read_binary(tmp_path / "lin_iter_4.solverstate", "SolverState")
    assert state.iter == 4 and state.learned_net == str(tmp_path / "lin_iter_4.caffemodel")
    assert len(state.history) == 2
    np.testing.assert_array_equal(state.history[0].double_data.reshape(K, D), solver.history[0])
    net = minicnn.Net(parse_text(LINEAR), dtype=np.float64)
    net.copy_from(tmp_path / "lin_iter_4.caffemodel")
    np.testing.assert_array_equal(net.params["fc"][0].data, solver.net.params["fc"][0].data)


def test_first_snapshot_removes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    """A snapshot write killed mid-way (SIGKILL) leaves its temporary file; the next run's
    first snapshot removes it, but not a temporary of a process still running, nor others."""
    import signal
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.Popen(
        [sys.executable, "-c",
         "import os, signal, sys; from minicnn.proto.wire import atomic_write\n"
         "with atomic_write(sys.argv[1]) as f:\n"
         "    f.write(b'half a caffemodel'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)",
         str(tmp_path / "lin_iter_6.caffemodel")], env=env)
    assert killed.wait() == -signal.SIGKILL
    (left,) = os.listdir(tmp_path)
    from minicnn.proto.wire import _host_tag
    host = _host_tag()
    assert left.startswith(f"lin_iter_6.caffemodel.{killed.pid}-{host}.") \
        and left.endswith(".tmp")
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [f"lin_iter_8.solverstate.{running.pid}-{host}.abc123.tmp",  # being written
                f"lin_iter_4.caffemodel.{killed.pid}-{other_host}.x.tmp",   # another machine's
                f"other_iter_2.caffemodel.{killed.pid}-{host}.abc.tmp",     # another prefix
                "lin_iter_2.caffemodel.notes.tmp"]                          # no writer's name
        for name in kept:
            (tmp_path / name).write_bytes(b"")
        messages = []
        solver = make_solver(snapshot=2, snapshot_prefix=str(tmp_path / "lin"))
        solver._log = messages.append
        solver.step(4)
    finally:
        running.kill()
        running.wait()
    assert sorted(os.listdir(tmp_path)) == sorted(
        kept + ["lin_iter_2.caffemodel", "lin_iter_2.solverstate",
                "lin_iter_4.caffemodel", "lin_iter_4.solverstate"])
    assert [m for m in messages if m.startswith("Removed")] == [
        f"Removed {tmp_path / left}: an unfinished snapshot file of a run that was killed "
        "while writing it"]


def test_a_stale_temporary_that_cannot_be_removed_is_left(tmp_path, monkeypatch):
    """Removing a killed writer's file is a cleanup: a PermissionError leaves it, the
    snapshot goes on."""
    from minicnn.proto import wire
    stale = tmp_path / f"lin_iter_2.caffemodel.999999999-{wire._host_tag()}.x.tmp"
    stale.write_bytes(b"")
    real = os.unlink

    def refuse(path, *args, **kw):
        if os.fspath(path) == str(stale):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *args, **kw)
    monkeypatch.setattr(wire.os, "unlink", refuse)
    assert wire.remove_stale_temporaries(str(tmp_path / "lin_iter_")) == []
    assert stale.exists()


def test_hdf5_snapshots_are_caffes_layout_and_restore(tmp_path):
    h5py = pytest.importorskip("h5py")
    solver = make_solver("Adam", snapshot=2, snapshot_format="HDF5",
                         snapshot_prefix=str(tmp_path / "lin"))
    solver.step(4)
    assert sorted(os.listdir(tmp_path)) == ["lin_iter_2.caffemodel.h5", "lin_iter_2.solverstate.h5",
                                            "lin_iter_4.caffemodel.h5", "lin_iter_4.solverstate.h5"]
    with h5py.File(tmp_path / "lin_iter_4.solverstate.h5", "r") as h5:
        assert h5["iter"][()] == 4 and h5["current_step"][()] == 0
        assert h5["learned_net"][()].decode() == str(tmp_path / "lin_iter_4.caffemodel.h5")
        assert sorted(h5["history"]) == ["0", "1", "2", "3"]        # Adam: m and v per blob
        for k, h in enumerate(solver.history):
            np.testing.assert_array_equal(h5["history"][str(k)][()], h)
    with h5py.File(tmp_path / "lin_iter_4.caffemodel.h5", "r") as h5:
        np.testing.assert_array_equal(h5["data/fc/0"][()], solver.net.params["fc"][0].data)
    # weights by content, as Caffe's CopyTrainedLayersFrom: Net(model, weights) and copy_from
    net = minicnn.Net(parse_text(LINEAR), str(tmp_path / "lin_iter_4.caffemodel.h5"),
                      dtype=np.float64)
    np.testing.assert_array_equal(net.params["fc"][1].data, solver.net.params["fc"][1].data)

    # what Caffe writes (no minicnn dataset) restores too; then both run on alike
    caffe_state = tmp_path / "caffe.solverstate.h5"
    with h5py.File(tmp_path / "lin_iter_4.solverstate.h5", "r") as src, \
            h5py.File(caffe_state, "w") as dst:
        for name in ("iter", "learned_net", "current_step", "history"):
            src.copy(name, dst)
    resumed = make_solver("Adam")
    resumed.restore(str(caffe_state))
    assert resumed.iter == 4
    solver.step(2)
    resumed.step(2)
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data,
                                  solver.net.params["fc"][0].data)
    with pytest.raises(MinicnnError, match="4 history blobs, but the SGD solver on this net "
                                           "keeps 2"):
        make_solver().restore(str(caffe_state))


def test_hdf5_solver_state_reads_as_caffes_hdf5_util_reads_it(tmp_path):
    # caffe/util/hdf5.cpp: hdf5_load_string reads learned_net with the file's own string type
    # into a buffer of that type's size and takes the C string there, so the NUL must be part
    # of the stored value (H5LTmake_dataset_string: NULLTERM, strlen + 1); hdf5_save_int writes
    # one-element int datasets. (h5py's fixed strings are NULLPAD without the NUL: Caffe read
    # past its buffer.)
    h5py = pytest.importorskip("h5py")
    solver = make_solver(momentum=0.9, snapshot_format="HDF5", snapshot_prefix=str(tmp_path / "s"))
    solver.step(3)
    model, state_path = solver.snapshot()
    with h5py.File(state_path, "r") as h5:
        string_type = h5["learned_net"].id.get_type()
        assert string_type.get_strpad() == h5py.h5t.STR_NULLTERM
        buffer = np.zeros((), f"V{string_type.get_size()}")           # Caffe's new char[size]
        h5["learned_net"].id.read(h5py.h5s.ALL, h5py.h5s.ALL, buffer, mtype=string_type)
        assert bytes(buffer).split(b"\0")[0] == model.encode() and bytes(buffer)[-1:] == b"\0"
        for name, value in (("iter", 3), ("current_step", 0)):
            assert h5[name].shape == (1,) and h5[name].dtype == np.int32 and h5[name][0] == value
    resumed = make_solver(momentum=0.9)
    resumed.restore(state_path)
    assert resumed.iter == 3


@pytest.mark.parametrize("spoil,message", [
    (lambda h5: h5.pop("iter"), "'iter' should be a single integer \\(missing\\)"),
    (lambda h5: h5.pop("history"), "no 'history' group"),
    (lambda h5: h5["history"].move("1", "7"), "'history/1' is not a float dataset"),
    (lambda h5: (h5.pop("minicnn"), h5.create_dataset("minicnn", data=np.void(b"\\xff\\xff"))),
     "solverstate.h5:minicnn"),
])
def test_a_damaged_hdf5_solver_state_is_named_and_changes_nothing(tmp_path, spoil, message):
    h5py = pytest.importorskip("h5py")
    solver = make_solver(momentum=0.9, snapshot_format="HDF5", snapshot_prefix=str(tmp_path / "s"))
    solver.step(2)
    _, state_path = solver.snapshot()
    with h5py.File(state_path, "a") as h5:
        spoil(h5)
    fresh = make_solver(momentum=0.9)
    before = fresh.net.params["fc"][0].data.copy()
    with pytest.raises(MinicnnError, match=message):
        fresh.restore(state_path)
    assert fresh.iter == 0
    np.testing.assert_array_equal(fresh.net.params["fc"][0].data, before)
    (tmp_path / "plain.solverstate.h5").write_bytes(b"not hdf5")
    with pytest.raises(MinicnnError, match="not a readable HDF5 solver state"):
        fresh.restore(str(tmp_path / "plain.solverstate.h5"))


def test_snapshot_prefix_defaults_like_caffe(tmp_path):
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(LINEAR)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    assert minicnn.get_solver(str(solver_file), log=lambda m: None).param.snapshot_prefix == \
        str(tmp_path / "solver")
    (tmp_path / "snaps").mkdir()
    solver_file.write_text(f'net: "net.prototxt" snapshot_prefix: "{tmp_path / "snaps"}"')
    assert minicnn.get_solver(str(solver_file), log=lambda m: None).param.snapshot_prefix == \
        str(tmp_path / "snaps" / "solver")


def test_a_failed_snapshot_write_keeps_the_previous_file(tmp_path, monkeypatch):
    solver = make_solver(snapshot_prefix=str(tmp_path / "lin"))
    solver.step(1)
    model, _ = solver.snapshot()
    before = open(model, "rb").read()
    import minicnn.proto.wire as wire

    def broken_write(self, msg, out):
        out.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(wire._Writer, "write", broken_write)
    solver.iter -= 1                                   # same file name as before
    with pytest.raises(OSError, match="disk full"):
        solver.snapshot()
    assert open(model, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["lin_iter_1.caffemodel", "lin_iter_1.solverstate"]


@pytest.mark.parametrize("snapshot_format", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("failing", ["caffemodel", "solverstate"])
def test_a_snapshot_that_cannot_be_written_stops_training_and_says_where(
        tmp_path, monkeypatch, snapshot_format, failing):
    # a full disk mid-snapshot: Caffe stops (its write is a CHECK); the error names the file,
    # the OS error, the iteration and the snapshot to resume from, which is left intact
    import errno
    from minicnn.errors import SnapshotError
    solver = make_solver(snapshot_prefix=str(tmp_path / "lin"), snapshot=2,
                         snapshot_format=snapshot_format)
    solver.step(2)
    ext = ".h5" if snapshot_format == "HDF5" else ""
    first = {n: open(tmp_path / n, "rb").read() for n in os.listdir(tmp_path)}
    assert sorted(first) == [f"lin_iter_2.caffemodel{ext}", f"lin_iter_2.solverstate{ext}"]
    real_fsync = os.fsync

    def full_disk(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f"lin_iter_4.{failing}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(SnapshotError) as caught:
        solver.step(4)
    message = str(caught.value)
    target = tmp_path / f"lin_iter_4.{failing}{ext}"
    assert message == (f"{target}: cannot write the snapshot: No space left on device. Training "
                       f"stopped at iteration 4; the last snapshot, "
                       f"{tmp_path / f'lin_iter_2.caffemodel{ext}'}, is kept")
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert solver.iter == 4 and solver.last_snapshot_iter == 2
    left = sorted(os.listdir(tmp_path))            # no temporary file, no half-written file
    assert left == sorted(first) + ([f"lin_iter_4.caffemodel{ext}"]
                                    if failing == "solverstate" else [])
    assert all(open(tmp_path / n, "rb").read() == data for n, data in first.items())


def test_a_snapshot_prefix_that_cannot_be_written_is_an_error_at_the_start(tmp_path,
                                                                          monkeypatch):
    # Caffe's Solver::Init checks it (CheckSnapshotWritePermissions); minicnn used to train
    # until the first snapshot and fail there
    import errno
    import tempfile
    (tmp_path / "afile").write_text("")
    with pytest.raises(MinicnnError, match=f"snapshot_prefix '{tmp_path / 'afile' / 'x' / 'lin'}'"
                       f": {tmp_path / 'afile'} is a file, not a folder"):
        make_solver(snapshot=2, snapshot_prefix=str(tmp_path / "afile" / "x" / "lin"))

    def read_only(*args, **kwargs):          # a chmod 555 folder (root ignores the mode)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(MinicnnError, match=f"cannot write a file in {tmp_path} "
                       r"\(Permission denied\)"):
        make_solver(snapshot=2, snapshot_prefix=str(tmp_path / "lin"))
    solver = make_solver(snapshot_prefix=str(tmp_path / "lin"), max_iter=3,
                         snapshot_after_train=True)       # snapshot 0: checked by solve()
    with pytest.raises(MinicnnError, match="Make sure that the folder exists"):
        solver.solve()
    assert solver.iter == 0
    monkeypatch.undo()
    make_solver(snapshot=2, snapshot_prefix=str(tmp_path / "new" / "lin"))     # can be made
    assert sorted(os.listdir(tmp_path)) == ["afile"]        # the probe file went


TWO_LAYERS = """
name: "two"
input: "x" input_shape { dim: 2 dim: 3 }
input: "t" input_shape { dim: 2 dim: 3 }
layer { name: "fc1" type: "InnerProduct" bottom: "x" top: "h" param { name: "shared" }
  inner_product_param { num_output: 3 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "fc2" type: "InnerProduct" bottom: "h" top: "h2" param { name: "shared" }
  inner_product_param { num_output: 3 bias_term: false } }
layer { name: "fc3" type: "InnerProduct" bottom: "h2" top: "y"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


@pytest.mark.parametrize("snapshot_format", ["BINARYPROTO", "HDF5"])
def test_a_resume_whose_weights_lack_a_layer_is_an_error(tmp_path, snapshot_format):
    # a .caffemodel cut short at a layer's end parses as the layers before the cut: the resume
    # went on with fc3 at its filler values and the saved momentum, silently
    h5py = pytest.importorskip("h5py") if snapshot_format == "HDF5" else None
    param = caffe_pb2.SolverParameter(net_param=parse_text(TWO_LAYERS), base_lr=0.1,
                                      momentum=0.9, lr_policy="fixed", max_iter=4,
                                      snapshot_prefix=str(tmp_path / "two"),
                                      snapshot_format=snapshot_format)
    solver = minicnn.get_solver(param, log=lambda message: None)
    solver.step(2)
    model, state = solver.snapshot()
    fresh = minicnn.get_solver(param, log=lambda message: None)
    fresh.restore(state)                  # whole: every layer, fc2 through its shared blob
    assert np.array_equal(fresh.net.params["fc3"][0].data, solver.net.params["fc3"][0].data)
    if h5py is None:
        whole = read_binary(model, "NetParameter")
        del whole.layer[-2:]                # fc3 and loss: the file as a copy cut short left it
        write_binary(whole, model)
    else:
        with h5py.File(model, "r+") as f:
            del f["data/fc3"]
    before = fresh.net.params["fc3"][0].data.copy()
    with pytest.raises(MinicnnError, match=f"{model}: no weights there for layer 'fc3' of "
                       "this net; resuming would train it from the filler's values"):
        fresh.restore(state)
    assert np.array_equal(fresh.net.params["fc3"][0].data, before)     # as it was
    fresh.net.copy_from(model)              # not a resume: Caffe's partial copy, as before


def test_resuming_from_hdf5_weights_says_they_are_weights(tmp_path):
    pytest.importorskip("h5py")
    solver = make_solver(snapshot_prefix=str(tmp_path / "lin"), snapshot_format="HDF5")
    model, _ = solver.snapshot()
    with pytest.raises(MinicnnError, match=f"{model}: it looks like HDF5 weights .*, not a "
                       "solver state: resume from the .solverstate.h5 written beside it"):
        solver.restore(model)


MEMORY_NET = """
name: "memory"
layer { name: "d" type: "MemoryData" top: "x" top: "label"
  memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("arrays_first", [True, False])
def test_memory_data_resumes_its_position_whether_arrays_come_before_or_after_restore(
        tmp_path, arrays_first):
    data = RNG.standard_normal((10, 3, 1, 1))
    labels = np.arange(10) % 2

    def solver():
        param = caffe_pb2.SolverParameter(net_param=parse_text(MEMORY_NET), base_lr=0.5,
                                          momentum=0.9, lr_policy="fixed", max_iter=10,
                                          random_seed=4, snapshot_prefix=str(tmp_path / "m"))
        return minicnn.get_solver(param, dtype=np.float64, log=lambda message: None)

    straight = solver()
    straight.net.set_input_arrays(data, labels)
    straight.step(6)
    first = solver()
    first.net.set_input_arrays(data, labels)
    first.step(3)
    _, state = first.snapshot()
    resumed = solver()
    if arrays_first:
        resumed.net.set_input_arrays(data, labels)
    resumed.restore(state)
    if not arrays_first:                 # pycaffe order: restore, then give the arrays
        resumed.net.set_input_arrays(data, labels)
    assert resumed.net.layer_dict["d"].data_state()["batches_served"] == 3
    resumed.step(3)
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data,
                                  straight.net.params["fc"][0].data)
    resumed.net.set_input_arrays(data, labels)        # new arrays later: from the first batch
    assert resumed.net.layer_dict["d"].data_state()["batches_served"] == 0


def test_restoring_another_solver_types_state_is_noted(tmp_path):
    # Caffe restores any state whose history count fits; minicnn does too, but says so when
    # its own record of the writer's type differs (AdaGrad's sums of g^2 become SGD's velocity)
    writer = make_solver("AdaGrad", snapshot_prefix=str(tmp_path / "a"))
    writer.step(2)
    _, state = writer.snapshot()
    for solver_type, noted in (("SGD", True), ("AdaGrad", False)):
        lines = []
        param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), type=solver_type,
                                          base_lr=0.1, lr_policy="fixed")
        reader = minicnn.get_solver(param, dtype=np.float64, log=lines.append)
        reader.restore(state)
        assert reader.iter == 2
        notes = [line for line in lines if "was written by the AdaGrad solver" in line]
        assert bool(notes) == noted, lines
        if noted:
            assert "taken as SGD's" in notes[0]


def test_restore_reads_caffe_style_state_without_minicnn_fields(tmp_path):
    solver = make_solver(momentum=0.9, snapshot_prefix=str(tmp_path / "lin"))
    solver.step(3)
    model, state_path = solver.snapshot()
    state = read_binary(state_path, "SolverState")
    state.ClearField("minicnn")                       # what Caffe itself would have written
    caffe_state = tmp_path / "caffe.solverstate"
    minicnn.proto.write_binary(state, caffe_state)
    resumed = make_solver(momentum=0.9)
    resumed.restore(str(caffe_state))
    assert resumed.iter == 3
    np.testing.assert_array_equal(resumed.history[0], solver.history[0])
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data,
                                  solver.net.params["fc"][0].data)
    with pytest.raises(MinicnnError, match="history blobs"):
        make_solver("Adam").restore(str(caffe_state))


def test_restore_of_a_history_blob_with_a_bad_shape_names_the_file(tmp_path):
    solver = make_solver(momentum=0.9, snapshot_prefix=str(tmp_path / "lin"))
    solver.step(1)
    _, state_path = solver.snapshot()
    state = read_binary(state_path, "SolverState")
    state.history[1].shape.dim[0] = 3                 # 2 values stored
    minicnn.proto.write_binary(state, state_path)
    with pytest.raises(MinicnnError, match=f"^{state_path}: history blob 1: blob of shape "
                                           r"\(3,\) holds 2 data values, expected 3$"):
        make_solver(momentum=0.9).restore(state_path)


@pytest.mark.parametrize("spoil", ["weights of another shape", "rng state", "data position"])
def test_a_failed_restore_leaves_the_solver_as_it_was(tmp_path, spoil):
    """Everything in the state is checked before anything is restored: no half-restored solver
    (history from the file, weights or generator or iteration from before)."""
    solver = make_solver(momentum=0.9, snapshot_prefix=str(tmp_path / "lin"))
    solver.step(2)
    model, state_path = solver.snapshot()
    state = read_binary(state_path, "SolverState")
    if spoil == "weights of another shape":
        net = minicnn.Net(parse_text(LINEAR.replace(f"num_output: {K}", f"num_output: {K + 1}")
                                     .replace(f"dim: {K} }}", f"dim: {K + 1} }}")),
                          dtype=np.float64)
        net.save(model)
    elif spoil == "rng state":
        state.minicnn.rng_state = '{"bit_generator": "PCG64", "state": {}}'
    else:
        state.minicnn.data_state.add(net="train", layer="fc", seed=1, batches_served=2)
    minicnn.proto.write_binary(state, state_path)
    other = make_solver(momentum=0.9)
    other.step(1)
    before = ([b.data.copy() for b in other.net.learnable_params],
              [h.copy() for h in other.history], other.iter, get_rng().bit_generator.state)
    with pytest.raises(MinicnnError, match=str(state_path) if spoil != "weights of another "
                       "shape" else "shape mismatch"):
        other.restore(state_path)
    for a, b in zip(before[0] + before[1], [b.data for b in other.net.learnable_params]
                    + other.history):
        np.testing.assert_array_equal(a, b)
    assert other.iter == before[2] and get_rng().bit_generator.state == before[3]


@pytest.mark.parametrize("rng_state", ['{"bit_generator": "PCG64", "sta', '{"bit_generator": 1}',
                                       '{"bit_generator": "PCG64", "state": {}}', "[" * 100000],
                         ids=["cut short", "another generator", "keys missing", "nested deeply"])
def test_restore_of_a_corrupt_rng_state_names_the_file(tmp_path, rng_state):
    solver = make_solver(snapshot_prefix=str(tmp_path / "lin"))
    solver.step(1)
    _, state_path = solver.snapshot()
    state = read_binary(state_path, "SolverState")
    state.minicnn.rng_state = rng_state
    minicnn.proto.write_binary(state, state_path)
    with pytest.raises(MinicnnError, match=f"{state_path}: the saved random generator state "
                                           r"\(minicnn.rng_state\) is corrupt"):
        make_solver().restore(state_path)


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    folder = tmp_path_factory.mktemp("state")
    solver = make_solver(momentum=0.9, snapshot_prefix=str(folder / "lin"))
    solver.step(1)
    _, state_path = solver.snapshot()
    with open(state_path, "rb") as f:
        return folder, f.read()


@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                      max_size=4))
@settings(max_examples=150, deadline=None)
def test_restore_of_a_mutated_solverstate_raises_only_minicnn_errors(saved_state, edits):
    folder, good = saved_state
    data = bytearray(good)
    for pos, value in edits:
        data[pos % len(data)] = value
    path = folder / "mutated.solverstate"
    path.write_bytes(bytes(data))
    rng_state = get_rng().bit_generator.state
    try:
        make_solver(momentum=0.9).restore(str(path))
    except MinicnnError:
        pass
    finally:
        get_rng().bit_generator.state = rng_state      # a mutated but valid state was set


# --- divergence ---------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_nan_loss_stops_training_naming_the_iteration_and_layer(tmp_path):
    solver = make_solver(base_lr=10.0, momentum=0.9, snapshot=2,
                         snapshot_prefix=str(tmp_path / "lin"), max_iter=200,
                         snapshot_after_train=True)
    solver.net.blobs["x"].data[...] = X * 1e3
    with pytest.raises(minicnn.TrainingDiverged) as info:
        solver.solve()
    message = str(info.value)
    assert f"iteration {solver.iter}: the loss is" in message
    assert "layer 'loss' (EuclideanLoss) is the first whose output 'loss' is not finite" in message
    assert "the last snapshot" in message and "a lower base_lr" in message
    snapshots = sorted(os.listdir(tmp_path))
    assert f"lin_iter_{solver.iter}.caffemodel" not in snapshots     # the bad weights: not saved
    last = max(int(n.split("_iter_")[1].split(".")[0]) for n in snapshots)
    net = minicnn.Net(parse_text(LINEAR), dtype=np.float64)
    net.copy_from(tmp_path / f"lin_iter_{last}.caffemodel")
    assert np.all(np.isfinite(net.params["fc"][0].data))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("max_iter, snapshot, why", [
    (1, 0, r"the update to iteration 1 left param \d of layer 'fc' not finite, so it is not "
           "written as a snapshot"),
    (3, 1, r"the loss is nan; parameter \d of layer 'fc' \(InnerProduct\) is not finite"),
])
def test_an_update_that_leaves_weights_not_finite_is_never_a_snapshot(tmp_path, max_iter,
                                                                      snapshot, why):
    # the loss is checked at each forward, and the weights before each snapshot: after the
    # last update (no forward follows) that check stops the run; at an earlier snapshot it
    # skips the snapshot and the next forward's loss stops the run
    param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), base_lr=1e38,
                                      lr_policy="fixed", snapshot=snapshot, max_iter=max_iter,
                                      snapshot_prefix=str(tmp_path / "lin"))
    solver = minicnn.get_solver(param, log=lambda message: None)       # float32: inf weights
    solver.net.blobs["x"].data[...] = X * 1e3
    solver.net.blobs["t"].data[...] = T
    with pytest.raises(minicnn.TrainingDiverged, match=f"iteration 1: {why}. Training stopped "
                                                       "and no snapshot was written"):
        solver.solve()
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_snapshot_whose_weights_give_the_nan_loss_is_named_as_such(tmp_path):
    solver = make_solver(base_lr=0.1, snapshot=1, snapshot_prefix=str(tmp_path / "lin"),
                         max_iter=5)
    solver.step(1)                                     # lin_iter_1 written
    solver.net.params["fc"][0].data[...] = 1e200       # finite, but the loss overflows
    solver.step(1)
    assert "iteration 1: the loss is inf" in solver.diverged
    assert f"the last snapshot, {tmp_path}/lin_iter_1.caffemodel, holds the weights whose " \
           "loss this is" in solver.diverged


@pytest.mark.parametrize("solver_type, field, value, must", [
    ("RMSProp", "rms_decay", -0.5, r"in \[0, 1\)"),
    ("RMSProp", "rms_decay", 1.5, r"in \[0, 1\)"),
    ("RMSProp", "momentum", 0.9, "0: RMSProp takes no momentum"),
    ("AdaGrad", "momentum", 0.9, "0: AdaGrad takes no momentum"),
    ("AdaDelta", "momentum", 1.5, r"in \[0, 1\] \(AdaDelta's decay rate\)"),
    ("Adam", "momentum", 1.0, r"in \[0, 1\) \(Adam's beta1\)"),
    ("Adam", "momentum2", 1.5, r"in \[0, 1\) \(Adam's beta2\)"),
    ("SGD", "average_loss", 0, ">= 1"),
    ("SGD", "iter_size", 0, ">= 1"),
    ("SGD", "iter_size", -1, ">= 1"),
])
def test_values_the_update_rules_cannot_take_name_the_solver_file_line(tmp_path, solver_type,
                                                                       field, value, must):
    (tmp_path / "net.prototxt").write_text(LINEAR)
    path = tmp_path / "solver.prototxt"
    extra = "" if field == "momentum" or solver_type not in ("RMSProp", "AdaGrad") else \
        "momentum: 0\n"
    path.write_text(f'net: "net.prototxt"\ntype: "{solver_type}"\nbase_lr: 0.1\n'
                    f'lr_policy: "fixed"\n{extra}{field}: {value}\nmax_iter: 1\n')
    line = 5 + bool(extra)
    with pytest.raises(MinicnnError, match=f"{path}:{line}: {field} must be {must}.*; it is "
                                           f"{value:g}$"):
        minicnn.get_solver(str(path), log=lambda m: None)


def test_a_missing_lr_policy_value_names_the_solver_file_line(tmp_path):
    (tmp_path / "net.prototxt").write_text(LINEAR)
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "step"\n')
    solver = minicnn.get_solver(str(path), dtype=np.float64, log=lambda m: None)
    with pytest.raises(MinicnnError, match=f"{path}:3: lr_policy 'step' needs gamma"):
        solver.step(1)


def test_a_moved_snapshot_folder_still_resumes(tmp_path, monkeypatch):
    # learned_net is the relative path the run wrote ("snap/lin_iter_1.caffemodel"); after
    # `mv snap moved` it names nothing, but the weights sit beside the .solverstate
    monkeypatch.chdir(tmp_path)
    solver = make_solver(snapshot_prefix="snap/lin")
    solver.step(1)
    solver.snapshot()
    os.rename(tmp_path / "snap", tmp_path / "moved")
    resumed = make_solver()
    resumed.restore("moved/lin_iter_1.solverstate")
    assert resumed.iter == 1
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data,
                                  solver.net.params["fc"][0].data)
    os.remove(tmp_path / "moved" / "lin_iter_1.caffemodel")
    with pytest.raises(MinicnnError, match="weights file .learned_net. of moved/lin_iter_1"):
        make_solver().restore("moved/lin_iter_1.solverstate")


def test_a_same_named_snapshot_of_another_run_is_not_paired_with_the_state(tmp_path,
                                                                           monkeypatch):
    # learned_net "snap/lin_iter_1.caffemodel" is relative; resumed from another folder that
    # has a snap/lin_iter_1.caffemodel of its own run, Caffe's rule (the current folder first)
    # would pair this state with those weights: the weights written beside the state win
    monkeypatch.chdir(tmp_path)
    solver = make_solver(snapshot_prefix="snap/lin")
    solver.step(1)
    solver.snapshot()
    os.rename(tmp_path / "snap", tmp_path / "run1")
    other = make_solver(snapshot_prefix="snap/lin", base_lr=0.5)
    other.step(1)
    other.snapshot()
    assert not np.array_equal(other.net.params["fc"][0].data, solver.net.params["fc"][0].data)
    resumed = make_solver()
    with pytest.warns(UserWarning, match=r"run1/lin_iter_1.solverstate: its learned_net "
                      r"'snap/lin_iter_1.caffemodel' names snap/lin_iter_1.caffemodel from the "
                      r"current folder, but .*run1/lin_iter_1.caffemodel sits beside the state"):
        resumed.restore("run1/lin_iter_1.solverstate")
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data,
                                  solver.net.params["fc"][0].data)
    with warnings.catch_warnings():              # the usual case: one file, no warning
        warnings.simplefilter("error")
        make_solver().restore("snap/lin_iter_1.solverstate")


def test_an_absolute_learned_net_is_read_as_it_names(tmp_path):
    # an absolute learned_net names one file, whatever the current folder: a same-named file
    # beside a state copied elsewhere does not replace it (Caffe reads the named one too)
    solver = make_solver(snapshot_prefix=str(tmp_path / "a" / "lin"))
    solver.step(1)
    _, state = solver.snapshot()
    other = make_solver(snapshot_prefix=str(tmp_path / "b" / "lin"), base_lr=0.5)
    other.step(1)
    other.snapshot()
    assert not np.array_equal(other.net.params["fc"][0].data, solver.net.params["fc"][0].data)
    os.replace(state, tmp_path / "b" / "lin_iter_1.solverstate")
    resumed = make_solver()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.restore(str(tmp_path / "b" / "lin_iter_1.solverstate"))
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data,
                                  solver.net.params["fc"][0].data)


def test_weights_and_states_given_for_each_other_say_so(tmp_path):
    solver = make_solver(snapshot_prefix=str(tmp_path / "lin"))
    solver.step(1)
    model, state = solver.snapshot()
    with pytest.raises(MinicnnError, match="it looks like weights, not a solver state"):
        make_solver().restore(model)
    with pytest.raises(MinicnnError, match="it looks like a solver state, not weights"):
        make_solver().net.copy_from(state)


def test_a_solverstate_with_a_negative_iteration_is_refused(tmp_path):
    solver = make_solver(snapshot_prefix=str(tmp_path / "lin"))
    solver.step(1)
    _, state_path = solver.snapshot()
    state = read_binary(state_path, "SolverState")
    state.iter = -5
    write_binary(state, state_path)
    with pytest.raises(MinicnnError, match="iter -5 and current_step 0: neither can be negative"):
        make_solver().restore(state_path)


def test_messages_from_signal_handlers_wait_for_the_main_flow():
    """A handler's message is queued, not written from inside whatever the main flow was
    writing (a signal during a write to the log file made Python raise "reentrant call"); the
    next log line or the end of the iteration writes it."""
    lines = []

    def write(message):
        lines.append(message)
        if message == "first":
            solver.log_from_signal("from a handler")       # a signal arriving mid-write
            assert lines == ["first"]

    param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR), base_lr=0.1,
                                      lr_policy="fixed", max_iter=10, display=0,
                                      snapshot_after_train=False)
    solver = minicnn.get_solver(param, dtype=np.float64, log=write)
    lines.clear()
    solver.log("first")
    assert lines == ["first"]
    solver.log("second")
    assert lines == ["first", "from a handler", "second"]
    solver.log_from_signal("during a step")
    solver.step(1)
    assert lines[-1] == "during a step"


TEST_ONLY = """
layer { name: "fc_test" type: "InnerProduct" bottom: "x" top: "z" include { phase: TEST }
  inner_product_param { num_output: 1 } }
"""


def _weights_file(path, scale):
    """A caffemodel of LINEAR + TEST_ONLY with every parameter value ``scale``."""
    net = minicnn.Net(parse_text(LINEAR + TEST_ONLY), phase=minicnn.TEST, dtype=np.float64)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = scale
    net.save(path)
    return path


def test_the_solver_files_weights_are_loaded_into_every_net(tmp_path, monkeypatch):
    """Caffe's SolverParameter.weights (Solver::InitTrainNet/InitTestNets, LoadNetWeights):
    each entry a comma-separated list, copied in order into the train and the test nets."""
    (tmp_path / "net.prototxt").write_text(LINEAR + TEST_ONLY)
    _weights_file(tmp_path / "one.caffemodel", 1.0)
    _weights_file(tmp_path / "two.caffemodel", 2.0)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" test_iter: 1 '
                           'test_interval: 10 weights: "one.caffemodel,two.caffemodel"')
    monkeypatch.chdir(tmp_path.parent)                 # found next to the solver file
    solver = minicnn.get_solver(str(solver_file), log=lambda m: None)
    assert np.all(solver.net.params["fc"][0].data == 2) and "fc_test" not in solver.net.params
    assert np.all(solver.test_nets[0].params["fc_test"][0].data == 2)
    assert np.all(solver.test_nets[0].params["fc"][1].data == 2)
    solver_file.write_text('net: "net.prototxt" weights: "one.caffemodel" weights: "nope"')
    with pytest.raises(MinicnnError, match="weights file not found.*nope"):
        minicnn.get_solver(str(solver_file), log=lambda m: None)


A_SOFTMAX = """
input: "x" input_shape { dim: 4 dim: 6 }
input: "label" input_shape { dim: 4 }
layer { name: "fc" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "fc"
        margin_inner_product_param { num_output: 3 type: QUADRUPLE base: 1000 gamma: 0.12
                                     power: 1 lambda_min: 5
                                     weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_layer_counters_are_snapshotted_so_a_resume_is_exact(tmp_path):
    """SphereFace's lambda anneals with the iterations its layer has counted: a resumed run
    must continue that count, or its lambda (and so its weights) differ from an uninterrupted
    run's. The solverstate keeps Layer.counters; a counter naming a layer the net lacks is an
    error."""
    rng = np.random.default_rng(3)
    x, label = rng.standard_normal((4, 6)), np.array([0, 1, 2, 1], float)

    def solver():
        param = caffe_pb2.SolverParameter(net_param=parse_text(A_SOFTMAX), base_lr=0.05,
                                          lr_policy="fixed", max_iter=100,
                                          snapshot_prefix=str(tmp_path / "a"),
                                          snapshot_after_train=False)
        s = minicnn.get_solver(param, dtype=np.float64, log=lambda message: None)
        s.net.blobs["x"].data[...], s.net.blobs["label"].data[...] = x, label
        return s
    whole = solver()
    whole.step(3)
    _, state = whole.snapshot()
    weights = whole.net.params["fc"][0].data.copy()
    whole.step(3)
    resumed = solver()
    resumed.net.params["fc"][0].data[...] = 0              # restore brings the weights back
    resumed.restore(state)
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data, weights)
    assert resumed.net.layer_dict["fc"].iter == 3
    resumed.step(3)
    assert resumed.net.layer_dict["fc"].iter == whole.net.layer_dict["fc"].iter == 6
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data,
                                  whole.net.params["fc"][0].data)
    saved = read_binary(state, "SolverState")
    saved.minicnn.layer_counter[0].layer = "gone"
    spoiled = tmp_path / "spoiled.solverstate"
    spoiled.write_bytes(saved.SerializeToString())
    with pytest.raises(MinicnnError, match="counter 'iter' names layer 'gone' of the train net"):
        solver().restore(str(spoiled))
    from minicnn.layers import RegionLayer
    assert RegionLayer.counters == ("images_seen",)


def test_share_weights_gives_a_net_the_train_nets_parameters():
    # pycaffe's solver.share_weights(net), as for a test net made by hand
    solver = make_solver()
    other = minicnn.Net(parse_text(LINEAR), dtype=np.float64)
    solver.share_weights(other)
    solver.step(1)
    assert np.shares_memory(other.params["fc"][0].data, solver.net.params["fc"][0].data)
    np.testing.assert_array_equal(other.params["fc"][1].data, solver.net.params["fc"][1].data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_parameters_lr_is_the_rate_as_a_dtype_times_its_lr_mult(dtype):
    """Caffe: Dtype rate = GetLearningRate(); Dtype local_rate = rate * net_params_lr[i]. With a
    float32 net the policy's double result is rounded before the lr_mult multiplies it: base_lr
    0.01, gamma 0.1 at step 1 and lr_mult 10 (fine-tuning's usual new-layer setting) give
    0.010000001 there, where one rounding after the lr_mult gives 0.01."""
    net = caffe_pb2.NetParameter()
    net.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add(dim=[1, 2])
    ip = net.layer.add(name="ip", type="InnerProduct", bottom=["x"], top=["y"])
    ip.inner_product_param.num_output = 1
    ip.param.add(lr_mult=10)
    ip.param.add(lr_mult=0.7)
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=1,
                                      net_param=net)
    solver = minicnn.SGDSolver(param, dtype=dtype, log=lambda m: None)
    solver.iter = 1
    for blob in solver.net.params["ip"]:
        blob.diff[...] = 1
    rate = solver.apply_update()
    t = np.dtype(dtype).type
    assert rate == float(t(float(F32(0.01)) * float(F32(0.1))))
    for blob, mult, history in zip(solver.net.params["ip"], (10, 0.7), solver.history):
        lr = t(t(rate) * float(F32(mult)))       # momentum 0: the history is lr * 1
        assert history.dtype == dtype and np.all(history == lr), (history, lr)
    if dtype == np.float32:
        assert solver.history[0][0, 0] == F32(0.010000001) != F32(0.01)


def test_train_batch_size_reaches_every_data_layer_or_is_an_error():
    """`minicnn train --batch-size` (Solver's train_batch_size) sets each data layer's
    batch_size, WindowData's included; a train net with none (DummyData, Input) is an error,
    not a flag silently ignored."""
    from minicnn.solver import set_batch_size
    net = parse_text('''
state { phase: TRAIN }
layer { name: "w" type: "WindowData" top: "x" top: "y" include { phase: TRAIN }
        window_data_param { source: "windows.txt" batch_size: 4 } }
layer { name: "t" type: "Data" top: "x" top: "y" include { phase: TEST }
        data_param { source: "test_lmdb" batch_size: 4 } }''')
    assert set_batch_size(net, 16) == 1                  # the TEST layer is set, not counted
    assert [net.layer[0].window_data_param.batch_size,
            net.layer[1].data_param.batch_size] == [16, 16]
    v1 = parse_text('layers { name: "d" type: DATA top: "x" data_param { source: "db" '
                    'batch_size: 4 } }')
    assert set_batch_size(v1, 16) == 1 and v1.layer[0].data_param.batch_size == 16
    dummy = parse_text('''
layer { name: "d" type: "DummyData" top: "x" top: "y" dummy_data_param {
        shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 } } }
layer { name: "t" type: "Data" top: "x" top: "y" include { phase: TEST }
        data_param { source: "test_lmdb" batch_size: 4 } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc"
        inner_product_param { num_output: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "loss" }''')
    param = caffe_pb2.SolverParameter(train_net_param=dummy, base_lr=0.1, max_iter=1)
    assert minicnn.SGDSolver(param, log=lambda m: None).net.blobs["x"].shape == (4, 3)
    with pytest.raises(MinicnnError, match=r"batch size of 8 .*--batch-size.* no data layer"):
        minicnn.SGDSolver(param, train_batch_size=8, log=lambda m: None)


def _ten_image_net(tmp_path):
    """A net whose ImageData reads 10 images in batches of 4 (3 batches read them once)."""
    import cv2
    lines = []
    for i in range(10):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((4, 4), 20 * i, np.uint8))
        lines.append(f"{i}.png {i % 2}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return f"""
        layer {{ name: "data" type: "ImageData" top: "data" top: "label"
          image_data_param {{ source: "{tmp_path / 'list.txt'}" root_folder: "{tmp_path}/"
                              batch_size: 4 is_color: false }} }}
        layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
          inner_product_param {{ num_output: 2 }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label"
          top: "loss" }}"""


@pytest.mark.parametrize("test_iter, note", [(3, None), (2, "leaves some of them out"),
                                             (4, "scores some of them more than once")])
def test_a_test_iter_that_does_not_read_the_test_set_once_is_noted(tmp_path, test_iter, note):
    """Caffe's recipe: test_iter x batch_size should cover the test set once (10 images in
    batches of 4: 3 batches). Fewer leave images out of each test, more score some twice;
    Caffe does either silently."""
    messages = []
    param = caffe_pb2.SolverParameter(net_param=parse_text(_ten_image_net(tmp_path)),
                                      base_lr=0.1, lr_policy="fixed", test_iter=[test_iter],
                                      test_interval=1, max_iter=0)
    minicnn.get_solver(param, log=messages.append)
    notes = [m for m in messages if "test_iter" in m]
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and note in notes[0], messages
        assert "'data' reads its 10 samples" in notes[0] and "test_iter: 3" in notes[0]


@pytest.mark.parametrize("iterations, note", [(3, None), (50, "more than once")])
def test_minicnn_test_notes_iterations_that_do_not_read_the_data_once(tmp_path, capsys,
                                                                     iterations, note):
    from minicnn.cli import main
    (tmp_path / "net.prototxt").write_text(_ten_image_net(tmp_path))
    assert main(["test", str(tmp_path / "net.prototxt"), "--iterations", str(iterations)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "batches per test" in line]
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and note in notes[0] and "--iterations 3 " in notes[0]
