"""Whole nets on the GPU: a Net(device=...) and a Solver on the device compute what the CPU
computes (float32 tolerance), with the data layer on the host and every other layer on the
device; LeNet training steps, a net of many layer types forward and backward, snapshots and
weights in and out, and the errors when no GPU can be had."""

import os

import numpy as np
import pytest

import minicnn
from minicnn import cuda
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text

from .conftest import rel_error

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lenet_memory_data(batch=16):
    """Caffe's LeNet (models/lenet) with its Data layers replaced by one MemoryData layer."""
    with open(os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")) as f:
        net = parse_text(f.read(), "NetParameter")
    layers = [layer for layer in net.layer if layer.type != "Data"]
    net.ClearField("layer")
    net.layer.add().CopyFrom(parse_text(f"""
        name: "mnist" type: "MemoryData" top: "data" top: "label"
        memory_data_param {{ batch_size: {batch} channels: 1 height: 24 width: 24 }}""",
                                        "LayerParameter"))
    for layer in layers:
        net.layer.add().CopyFrom(layer)
    return net


def digits(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 24, 24)).astype(np.float32), \
        rng.integers(0, 10, n).astype(np.float32)


def lenet_solver(device):
    param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                                      lr_policy="inv", gamma=0.0001, power=0.75, max_iter=100,
                                      random_seed=1701, snapshot_after_train=False)
    param.net_param.CopyFrom(lenet_memory_data())
    solver = minicnn.SGDSolver(param, log=lambda m: None, device=device)
    solver.net.set_input_arrays(*digits())
    return solver


def test_lenet_training_steps_equal_the_cpu(gpu):
    cpu, dev = lenet_solver(None), lenet_solver("cuda:0")
    assert dev.net.device == 0 and cpu.net.device is None
    assert all(cuda.is_device_array(b.data) for b in dev.net.learnable_params)
    assert not cuda.is_device_array(dev.net._mirrors[0][1][0].data)   # the data layer's tops
    for _ in range(3):
        cpu.step(1)
        dev.step(1)
        assert abs(cpu.smoothed_loss - dev.smoothed_loss) <= 1e-5 * abs(cpu.smoothed_loss)
    for i, (a, b) in enumerate(zip(cpu.net.learnable_params, dev.net.learnable_params)):
        assert rel_error(cuda.to_host(b.data), a.data) < 1e-5, f"parameter {i}"
    for a, b in zip(cpu.history, dev.history):
        assert rel_error(cuda.to_host(b), a) < 1e-4


def test_snapshot_and_weights_round_trip(gpu, tmp_path):
    dev = lenet_solver("cuda")
    dev.param.snapshot_prefix = str(tmp_path / "lenet")
    dev.step(2)
    model, state = dev.snapshot()
    cpu = minicnn.Net(lenet_memory_data(), model, minicnn.TRAIN)
    for a, b in zip(cpu.learnable_params, dev.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data.get())
    again = lenet_solver(0)
    again.restore(state)
    assert again.iter == 2
    for a, b in zip(again.history, dev.history):
        np.testing.assert_array_equal(a.get(), b.get())


ZOO = """
name: "zoo" force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw"
        convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 2 dilation: 2
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "lrn" type: "LRN" bottom: "dw" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 } }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "lrn2" type: "LRN" bottom: "pool" top: "lrn2"
        lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL } }
layer { name: "sum" type: "Eltwise" bottom: "lrn" bottom: "lrn2" top: "sum"
        eltwise_param { coeff: 1 coeff: -0.5 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "conv1" top: "cat" }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2" }
layer { name: "max" type: "Eltwise" bottom: "s1" bottom: "s2" top: "max"
        eltwise_param { operation: MAX } }
layer { name: "tanh" type: "TanH" bottom: "max" top: "tanh" }
layer { name: "ave" type: "Pooling" bottom: "tanh" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "ave" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "interp" type: "Interp" bottom: "up" top: "interp" interp_param { height: 7 width: 5 } }
layer { name: "drop" type: "Dropout" bottom: "interp" top: "interp" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip" type: "InnerProduct" bottom: "interp" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "prelu" type: "PReLU" bottom: "ip" top: "prelu" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "prelu" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "prelu" bottom: "label" top: "acc" }
"""


def test_many_layer_types_forward_and_backward_as_on_the_cpu(gpu):
    param = parse_text(ZOO, "NetParameter")
    minicnn.set_random_seed(5)
    cpu = minicnn.Net(param, phase=minicnn.TRAIN)
    minicnn.set_random_seed(5)
    dev = minicnn.Net(param, phase=minicnn.TRAIN, device="cuda:0")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    label = np.array([1, 3], np.float32)
    for net in (cpu, dev):
        minicnn.set_random_seed(9)                        # the same dropout mask
        net.forward(data=x, label=label)
        net.backward()
    for name, blob in cpu.blobs.items():
        other = dev.blobs[name]
        assert cuda.is_device_array(other.data), name
        assert rel_error(other.data.get(), blob.data) < 1e-5, f"{name} data"
        if name != "label":
            assert rel_error(other.diff.get(), blob.diff) < 1e-4, f"{name} diff"
    for layer in cpu.params:
        for k, (a, b) in enumerate(zip(cpu.params[layer], dev.params[layer])):
            # conv1's bias gets no gradient through BatchNorm: both sides are rounding noise
            assert rel_error(b.diff.get(), a.diff, floor=1e-3) < 1e-4, f"{layer} param {k} diff"
            assert rel_error(b.data.get(), a.data) < 1e-5, f"{layer} param {k} data"


def test_python_and_argmax_layers_run_on_host_copies(gpu, tmp_path):
    (tmp_path / "double_layer.py").write_text(
        "import numpy as np\n"
        "import minicnn\n"
        "class Double(minicnn.PythonLayerBase):\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].shape)\n"
        "    def forward(self, bottom, top):\n"
        "        assert isinstance(bottom[0].data, np.ndarray)\n"
        "        top[0].data[...] = 2 * bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom):\n"
        "        bottom[0].diff[...] = 2 * top[0].diff\n")
    (tmp_path / "net.prototxt").write_text("""
        force_backward: true
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 5 } } }
        layer { name: "py" type: "Python" bottom: "data" top: "py"
                python_param { module: "double_layer" layer: "Double" } }
        layer { name: "sig" type: "Sigmoid" bottom: "py" top: "sig" }
        layer { name: "arg" type: "ArgMax" bottom: "sig" top: "arg" argmax_param { top_k: 2 } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "sig" bottom: "data" top: "loss" }""")
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    cpu = minicnn.Net(str(tmp_path / "net.prototxt"), phase=minicnn.TRAIN)
    dev = minicnn.Net(str(tmp_path / "net.prototxt"), phase=minicnn.TRAIN, device=0)
    assert sorted(dev.layers[i].type for i in dev._mirrors) == ["ArgMax", "Python"]
    for net in (cpu, dev):
        net.forward(data=x)
        net.backward()
    for name in ("py", "sig", "arg", "loss"):
        assert rel_error(cuda.to_host(dev.blobs[name].data), cpu.blobs[name].data) < 1e-6
    assert rel_error(dev.blobs["data"].diff.get(), cpu.blobs["data"].diff) < 1e-5


FORK_UNITS = """
force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 6 dim: 9 dim: 7 } } }
layer { name: "g1" type: "Convolution" bottom: "data" top: "g1"
        convolution_param { num_output: 6 kernel_size: 1 group: 3
                            weight_filler { type: "gaussian" std: 2 } } }
layer { name: "r6" type: "ReLU6" bottom: "g1" top: "g1" }
layer { name: "bn" type: "BN" bottom: "g1" top: "g1"
        bn_param { slope_filler { type: "gaussian" std: 1 }
                   bias_filler { type: "constant" value: 0.5 } } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "g1" top: "shuffled"
        shuffle_channel_param { group: 3 } }
layer { name: "pool" type: "Pooling" bottom: "shuffled" top: "pool" top: "mask"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool" type: "Upsample" bottom: "pool" bottom: "mask" top: "unpooled"
        upsample_param { scale: 2 pad_out_h: true pad_out_w: true } }
layer { name: "nearest" type: "Upsample" bottom: "pool" top: "nearest" upsample_param { scale: 2 } }
"""


def test_fork_layers_as_on_the_cpu(gpu):
    """ReLU6, the PSPNet fork's BN (batch statistics) and ShuffleChannel on the device, SegNet's
    and the YOLOv3 ports' Upsample on host copies of the Pooling's mask and values: the same
    tops, BN's running statistics and slope gradient, and bottom gradient as the CPU's."""
    param = parse_text(FORK_UNITS, "NetParameter")
    minicnn.set_random_seed(3)
    cpu = minicnn.Net(param, phase=minicnn.TRAIN)
    minicnn.set_random_seed(3)
    dev = minicnn.Net(param, phase=minicnn.TRAIN, device="cuda:0")
    assert sorted(dev.layers[i].type for i in dev._mirrors) == ["Upsample", "Upsample"]
    x = np.random.default_rng(4).standard_normal((2, 6, 9, 7)).astype(np.float32)
    for net in (cpu, dev):
        net.forward(data=x)
        for name in ("unpooled", "nearest"):
            net.blobs[name].diff[...] = 1
        net.backward()
    for name in ("g1", "shuffled", "pool", "mask", "unpooled", "nearest"):
        assert rel_error(cuda.to_host(dev.blobs[name].data), cpu.blobs[name].data) < 1e-6, name
    assert rel_error(cuda.to_host(dev.blobs["data"].diff), cpu.blobs["data"].diff) < 1e-5
    for k in (0, 2, 3):
        assert rel_error(cuda.to_host(dev.params["bn"][k].data), cpu.params["bn"][k].data) < 1e-6
    assert rel_error(cuda.to_host(dev.params["bn"][0].diff), cpu.params["bn"][0].diff) < 1e-4


def test_global_gpu_mode_and_set_device(gpu):
    minicnn.set_device(0)
    minicnn.set_mode_gpu()
    try:
        net = minicnn.Net(lenet_memory_data(), phase=minicnn.TRAIN)
        assert net.device == 0 and cuda.mode() == "GPU"
        assert minicnn.Net(lenet_memory_data(), phase=minicnn.TRAIN, device="cpu").device is None
    finally:
        minicnn.set_mode_cpu()
    assert minicnn.Net(lenet_memory_data(), phase=minicnn.TRAIN).device is None


@pytest.mark.parametrize("bn_in_place, global_stats, slope", [
    (True, False, 0.1), (False, False, 0.1), (True, True, 0.1), (False, False, None),
    (True, False, 0.0)])
def test_the_batchnorm_chain_runs_fused_on_the_gpu(gpu, monkeypatch, bn_in_place,
                                                   global_stats, slope):
    """BatchNorm -> Scale (-> ReLU) in place (minicnn/fusion.py's training chain): forward,
    BatchNorm's y only into its kept buffer and Scale (+ ReLU) as one kernel from there into
    the top; backward in two passes (chain_backward_*). The same values as layer by layer
    (MINICNN_FUSE=0) and as the CPU, with BatchNorm in place or not (then the blob between
    keeps Scale's dx), batch or global statistics, with and without the ReLU (slope None), a
    leaky one or a plain one (slope 0: the top of every negative input is exactly 0, where
    the backward's mask must block the gradient)."""
    import minicnn.fusion as fusion

    from .test_host_calls_cuda import net_param
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype(np.float32)
    label = np.array([1, 3], np.float32)
    relu = slope is not None
    param = net_param(2, bn_in_place, global_stats, relu)
    for layer in param.layer:
        if layer.type == "ReLU":
            layer.relu_param.negative_slope = slope
    calls = []
    real = fusion.bn_scale_relu_backward_cuda
    monkeypatch.setattr(fusion, "bn_scale_relu_backward_cuda",
                        lambda *a: calls.append(a) or real(*a))
    runs = {}
    for name, device, fuse in (("fused", 0, "1"), ("layers", 0, "0"), ("cpu", None, "1")):
        monkeypatch.setenv("MINICNN_FUSE", fuse)
        minicnn.set_random_seed(3)
        net = minicnn.Net(param, phase=minicnn.TRAIN, device=device)
        if global_stats:                       # stored statistics to normalize with
            for layer in ("bn0", "bn1"):
                stats = net.layer_dict[layer].blobs
                stats[0].data = np.array([0.1, -0.2, 0.3, 0.0, 0.5, -0.1], np.float32)
                stats[1].data = np.array([1.5, 0.7, 2.0, 1.0, 0.9, 1.2], np.float32)
                stats[2].data = np.ones(1, np.float32)
        net.forward(data=x, label=label)
        for layer in ("sc0", "sc1"):                 # parameter gradients add onto their diffs
            for blob in net.layer_dict[layer].blobs:
                blob.diff = np.ones(blob.shape, np.float32)
        net.backward()
        runs[name] = net
    fused = runs["fused"]
    chains = [c for c in fused._fusions.values() if isinstance(c, fusion.TrainingBatchNormChain)]
    assert [c.count for c in chains] == [3 if relu else 2] * 2
    assert fused.layer_dict["sc0"]._x is fused.layer_dict["bn0"]._y      # kept once
    assert len(calls) == 2                                           # both chains' backward
    assert not runs["layers"]._fusions
    for name, blob in fused.blobs.items():
        for other in (runs["layers"], runs["cpu"]):
            want = other.blobs[name]
            assert rel_error(cuda.to_host(blob.data), cuda.to_host(want.data)) < 1e-6, name
            if name != "label":
                assert rel_error(cuda.to_host(blob.diff), cuda.to_host(want.diff),
                                 floor=1e-3) < 1e-5, name
    for layer, blobs in fused.params.items():
        for k, blob in enumerate(blobs):
            if layer.startswith("conv") and k == 1:
                continue           # no gradient through BatchNorm: rounding noise, 1e-8 or so
            for other in (runs["layers"], runs["cpu"]):
                want = other.params[layer][k]
                assert rel_error(cuda.to_host(blob.diff), cuda.to_host(want.diff),
                                 floor=1e-3) < 1e-5, f"{layer} parameter {k}"
                assert rel_error(cuda.to_host(blob.data), cuda.to_host(want.data)) < 1e-5


LOSSES = """
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label" top: "target"
        input_param { shape { dim: 6 dim: 5 } shape { dim: 6 } shape { dim: 6 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "softmax" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "softmax"
        loss_weight: 2 loss_param { ignore_label: 4 } }
layer { name: "sigmoid" type: "SigmoidCrossEntropyLoss" bottom: "ip" bottom: "target"
        top: "sigmoid" loss_weight: 0.5 loss_param { ignore_label: 1 normalization: VALID } }
layer { name: "euclid" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "euclid"
        loss_weight: 3 }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
"""


def _loss_inputs():
    rng = np.random.default_rng(4)
    target = rng.random((6, 5)).astype(np.float32)
    target[::2, 1] = 1                                   # ignored by the sigmoid loss
    return dict(data=rng.standard_normal((6, 5)).astype(np.float32),
                label=np.array([0, 4, 2, 4, 1, 3], np.float32), target=target)


def test_losses_with_weights_and_ignored_labels_as_on_the_cpu(gpu):
    """Each loss's normalizer (VALID counts on the device) and its loss_weight (the top's diff,
    read on the device) as on the CPU: the loss, the accuracy and the gradient."""
    param = parse_text(LOSSES, "NetParameter")
    minicnn.set_random_seed(2)
    cpu = minicnn.Net(param, phase=minicnn.TRAIN)
    minicnn.set_random_seed(2)
    dev = minicnn.Net(param, phase=minicnn.TRAIN, device=0)
    inputs = _loss_inputs()
    losses = []
    for net in (cpu, dev):
        net._set_blobs(inputs, "data")
        losses.append(net.forward_backward())
    assert abs(losses[1] - losses[0]) <= 1e-6 * abs(losses[0])
    for name in ("softmax", "sigmoid", "euclid", "acc"):
        assert rel_error(dev.blobs[name].data.get(), cpu.blobs[name].data) < 1e-6, name
    assert rel_error(dev.blobs["ip"].diff.get(), cpu.blobs["ip"].diff) < 1e-5
    assert rel_error(dev.params["ip"][0].diff.get(), cpu.params["ip"][0].diff) < 1e-5


@pytest.mark.parametrize("bad, shown", [(7.0, "label 7 at index (3,)"),
                                        (2.5, "label 2.5 at index (3,)"),
                                        (np.nan, "label nan at index (3,)"),
                                        (-1.0, "label -1 at index (3,)")])
@pytest.mark.parametrize("where", ["forward", "solver", "loss weight 0"])
def test_a_bad_label_on_the_gpu_stops_the_step_with_the_host_error(gpu, bad, shown, where):
    """Labels on the GPU are checked by a kernel and the flag read with the loss (no wait for
    the GPU mid-step): the error is the host's, raised before any update is applied, even for
    a loss that does not count (loss_weight 0) and for Accuracy."""
    text = LOSSES.replace("loss_weight: 2", "loss_weight: 0") if where == "loss weight 0" \
        else LOSSES
    inputs = _loss_inputs()
    inputs["label"][3] = bad
    if where == "solver":
        param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=5,
                                          snapshot_after_train=False)
        param.net_param.CopyFrom(parse_text(text, "NetParameter"))
        solver = minicnn.SGDSolver(param, log=lambda m: None, device=0)
        solver.net._set_blobs(inputs, "data")
        before = solver.net.params["ip"][0].data.get()
        with pytest.raises(minicnn.NetError) as e:
            solver.step(1)
        np.testing.assert_array_equal(solver.net.params["ip"][0].data.get(), before)
        assert solver.iter == 0
    else:
        net = minicnn.Net(parse_text(text, "NetParameter"), phase=minicnn.TRAIN, device=0)
        with pytest.raises(minicnn.NetError) as e:
            net.forward(**inputs)
    message = str(e.value)
    assert "'softmax'" in message and shown in message and "[0, 5) or the ignore_label 4" \
        in message, message
    net = minicnn.Net(parse_text(text.replace("top: \"softmax\"\n", "top: \"softmax\" "
                                              "include { phase: TRAIN }\n"), "NetParameter"),
                      phase=minicnn.TEST, device=0)
    assert "softmax" not in net.layer_dict
    with pytest.raises(minicnn.NetError, match=r"'acc'.*" + shown.replace("(", r"\(")
                       .replace(")", r"\)")):
        net.forward(**inputs)


NEGATIVE_SLOPE = """
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: -0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_in_place_relu_with_a_negative_slope_keeps_its_mask_on_the_device(gpu):
    """ReLU in place with negative_slope < 0 keeps a mask of x > 0 (a device array here) for
    its backward and stays out of the fused BatchNorm chain: the CPU's values and gradients."""
    import warnings
    param = parse_text(NEGATIVE_SLOPE, "NetParameter")
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 5)).astype(np.float32)
    label = np.array([0, 2], np.float32)
    nets = []
    for device in (None, "cuda:0"):
        minicnn.set_random_seed(4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # Caffe's gradient would differ: said
            net = minicnn.Net(param, phase=minicnn.TRAIN, device=device)
        net.forward(data=x, label=label)
        net.backward()
        nets.append(net)
    cpu, dev = nets
    assert cuda.is_device_array(dev.layer_dict["relu"].positive)
    for name, blob in cpu.blobs.items():
        assert rel_error(cuda.to_host(dev.blobs[name].data), blob.data) < 1e-5, name
        if name != "label":
            assert rel_error(cuda.to_host(dev.blobs[name].diff), blob.diff,
                             floor=1e-3) < 1e-4, name
    for layer in cpu.params:
        for k, (a, b) in enumerate(zip(cpu.params[layer], dev.params[layer])):
            if layer == "conv" and k == 1:
                continue                    # no gradient through BatchNorm: rounding noise
            assert rel_error(cuda.to_host(b.diff), a.diff, floor=1e-3) < 1e-4, (layer, k)
