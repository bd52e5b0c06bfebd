"""debug_info (NetParameter and SolverParameter): Caffe's per-layer mean |value| lines after
each forward and backward, and the parameters' L1/L2 norms after a whole backward."""

import re

import numpy as np
import pytest

import minicnn
from minicnn.proto import caffe_pb2, parse_text
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

NET = """
debug_info: true
layer { name: "x" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc"
        param { name: "w" } param { lr_mult: 2 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "loss" }
"""


def test_lines_and_values_worked_out_with_numpy():
    minicnn.set_random_seed(5)
    net = minicnn.Net(parse_text(NET), minicnn.TRAIN, dtype=np.float64)
    lines = []
    net.debug_log = lines.append
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    w, b = net.params["fc"][0].data.copy(), net.params["fc"][1].data.copy()
    net.forward(x=x, y=y)
    net.backward()

    fc = x @ w.T + b
    relu = np.maximum(fc, 0)
    loss = ((relu - y) ** 2).sum() / 4 / 2
    d_relu = (relu - y) / 4
    d_fc = d_relu * (fc > 0)
    dw, db = d_fc.T @ x, d_fc.sum(axis=0)

    def mean(a):
        return f"{np.abs(a).mean():.6g}"
    assert lines == [
        f"    [Forward] Layer x, top blob x data: {mean(x)}",
        f"    [Forward] Layer x, top blob y data: {mean(y)}",
        f"    [Forward] Layer fc, top blob fc data: {mean(fc)}",      # before ReLU rewrites it
        f"    [Forward] Layer fc, param blob w data: {mean(w)}",       # named param
        f"    [Forward] Layer fc, param blob 1 data: {mean(b)}",       # unnamed: its index
        f"    [Forward] Layer relu, top blob fc data: {mean(relu)}",
        f"    [Forward] Layer loss, top blob loss data: {loss:.6g}",
        f"    [Backward] Layer loss, bottom blob fc diff: {mean(d_relu)}",   # y needs none
        f"    [Backward] Layer relu, bottom blob fc diff: {mean(d_fc)}",
        f"    [Backward] Layer fc, param blob 0 diff: {mean(dw)}",
        f"    [Backward] Layer fc, param blob 1 diff: {mean(db)}",
        "    [Backward] All net params (data, diff): L1 norm = "
        f"({np.abs(w).sum() + np.abs(b).sum():.6g}, {np.abs(dw).sum() + np.abs(db).sum():.6g}); "
        f"L2 norm = ({np.sqrt((w ** 2).sum() + (b ** 2).sum()):.6g}, "
        f"{np.sqrt((dw ** 2).sum() + (db ** 2).sum()):.6g})"]
    lines.clear()
    net.debug_info = False
    net.forward(x=x, y=y)
    net.backward()
    assert lines == []


def test_fused_chains_are_unfused_so_every_layer_reports():
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 dim: 3 dim: 3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }"""
    x = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32) + 3
    plain = minicnn.Net(parse_text(text), minicnn.TEST)
    reference = plain.forward(x=x)["x"].copy()
    net = minicnn.Net(parse_text(text), minicnn.TEST)
    lines = []
    net.debug_info, net.debug_log = True, lines.append
    out = net.forward(x=x)["x"]
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
    forward = [line.split(",")[0].strip() for line in lines if "top blob" in line]
    assert forward == ["[Forward] Layer x", "[Forward] Layer bn", "[Forward] Layer sc",
                       "[Forward] Layer relu"]


@pytest.mark.parametrize("debug_info", [True, False])
def test_a_solver_prints_them_on_display_iterations_and_for_its_test_nets(debug_info):
    net = parse_text(NET.replace("debug_info: true", ""))
    param = caffe_pb2.SolverParameter(net_param=net, base_lr=0.01, lr_policy="fixed", display=2,
                                      max_iter=4,
                                      test_iter=[1], test_interval=3, debug_info=debug_info,
                                      test_initialization=False)
    lines = []
    solver = minicnn.SGDSolver(param, log=lines.append)
    solver.step(4)
    marks = [line.split(" (")[0].split(",")[0] if line.startswith("Iteration") else line[:14]
             for line in lines if line.startswith(("Iteration", "    [Forward]", "    [Backward]"))]
    if not debug_info:
        assert not any(m.startswith("    [") for m in marks)
        return
    # Caffe's order: the debug lines of iterations 0 and 2, then their display lines; the
    # test net (debug_info from the solver) reports its forward at iteration 3
    order = []
    for m in marks:
        if not order or order[-1] != m:
            order.append(m)
    assert order == ["    [Forward] ", "    [Backward]", "Iteration 0", "    [Forward] ",
                     "    [Backward]", "Iteration 2", "Iteration 3", "    [Forward] "]


def test_the_gpu_prints_what_the_cpu_prints(gpu):
    def lines_of(device):
        minicnn.set_random_seed(5)
        net = minicnn.Net(parse_text(NET), minicnn.TRAIN, device=device)
        lines = []
        net.debug_log = lines.append
        rng = np.random.default_rng(0)
        net.forward(x=rng.standard_normal((4, 3)).astype(np.float32),
                    y=rng.standard_normal((4, 2)).astype(np.float32))
        net.backward()
        return lines
    cpu, device = lines_of(None), lines_of("cuda:0")
    assert len(cpu) == len(device) == 12
    number = re.compile(r"-?\d[\d.e+-]*")
    for a, b in zip(cpu, device):
        assert number.sub("#", a) == number.sub("#", b)
        for x, y in zip(number.findall(a), number.findall(b)):
            assert float(y) == pytest.approx(float(x), rel=1e-5)
