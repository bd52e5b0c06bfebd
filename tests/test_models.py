"""Whole published nets load and run forward and backward: CaffeNet's train_val (TRAIN and TEST),
GoogLeNet and ResNet-50 deploy files; and a small net mixing every core layer type passes an
end-to-end finite-difference check, which tests the Net's wiring as a whole."""

import os

import numpy as np
import pytest

import minicnn
from minicnn.proto import caffe_pb2, parse_text, read_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model(path):
    return os.path.join(REPO, "models", path)


def with_dummy_data(net_param, batch, label):
    """The net with its Data layers (LMDB readers) replaced by DummyData of the same tops, and
    its HDF5Data layers by 16-d features (the files `minicnn extract` writes), or by 64 x 64
    images where a convolution reads them (models/face_area)."""
    for layer in net_param.layer:
        if layer.type == "HDF5Data":
            layer.type = "DummyData"
            layer.ClearField("hdf5_data_param")
            p = layer.dummy_data_param
            images = any(other.type == "Convolution" and layer.top[0] in other.bottom
                         for other in net_param.layer)        # images (models/face_area)
            p.shape.add(dim=[batch, 3, 64, 64] if images else [batch, 16])
            p.shape.add(dim=[batch])
            p.data_filler.add(type="gaussian", std=1)
            p.data_filler.add(type="constant", value=label)
        if layer.type == "Data":
            crop = layer.transform_param.crop_size
            layer.type = "DummyData"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            p = layer.dummy_data_param
            p.shape.add(dim=[batch, 3, crop, crop] if crop else [batch, 1, 28, 28])   # or MNIST
            p.shape.add(dim=[batch])
            p.data_filler.add(type="gaussian", std=50)
            p.data_filler.add(type="constant", value=label)
    return net_param


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_caffenet_train_val_runs_forward_and_backward(phase):
    minicnn.set_random_seed(0)
    param = with_dummy_data(read_prototxt(model("caffenet/train_val.prototxt")), 2, 7)
    net = minicnn.Net(param, phase=phase)
    names = [name for name in net.layer_names if not name.endswith("_split")]
    assert ("accuracy" in names) == (phase == "TEST")
    assert net.blobs["fc8"].shape == (2, 1000)
    assert net.blobs["pool5"].shape == (2, 256, 6, 6)
    loss = net.forward_backward()
    assert np.isfinite(loss) and loss > 0
    assert np.abs(net.params["conv1"][0].diff).sum() > 0
    assert np.abs(net.params["fc8"][1].diff).sum() > 0


def test_googlenet_deploy_forward_and_backward_to_the_image():
    param = read_prototxt(model("googlenet/deploy.prototxt"))
    param.force_backward = True
    net = minicnn.Net(param, minicnn.TEST)
    assert sum(layer.type == "Concat" for layer in net.layers) == 9
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    prob = net.forward(data=x)["prob"]
    assert prob.shape == (1, 1000) and prob.sum() == pytest.approx(1, rel=1e-5)
    assert net.blobs["inception_5b/output"].shape == (1, 1024, 7, 7)
    grad = net.backward(prob=np.eye(1000, dtype=np.float32)[[3]])["data"]
    assert grad.shape == x.shape and np.abs(grad).sum() > 0


def test_mobilenet_deploy_is_depthwise_separable_and_runs_both_ways():
    param = read_prototxt(model("mobilenet/deploy.prototxt"))
    param.force_backward = True
    net = minicnn.Net(param, minicnn.TEST)
    depthwise = [layer for layer in net.layers
                 if layer.type == "Convolution" and layer.name.endswith("/dw")]
    assert len(depthwise) == 13
    for layer in depthwise:                     # one 3x3 filter per channel
        weights = net.params[layer.name][0].data
        assert layer.group == weights.shape[0] and weights.shape[1:] == (1, 3, 3)
    for layer in net.layers:
        if layer.type == "BatchNorm":           # untrained nets have no statistics yet
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    prob = net.forward(data=x)["prob"]
    assert prob.shape == (1, 1000, 1, 1) and prob.sum() == pytest.approx(1, rel=1e-5)
    assert net.blobs["conv6/sep"].shape == (1, 1024, 7, 7)
    grad = net.backward(prob=np.eye(1000, dtype=np.float32)[[3]].reshape(1, 1000, 1, 1))["data"]
    assert grad.shape == x.shape and np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_resnet50_deploy_forward_and_backward():
    param = read_prototxt(model("resnet50/deploy.prototxt"))
    param.force_backward = True
    net = minicnn.Net(param, minicnn.TEST)
    for name, layer in net.layer_dict.items():
        if layer.type == "BatchNorm":                 # untrained nets have no statistics yet
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    out = net.forward(data=np.ones((2, 3, 224, 224), np.float32))
    assert out["prob"].shape == (2, 1000) and np.all(np.isfinite(out["prob"]))
    assert net.blobs["res5c"].shape == (2, 2048, 7, 7)
    grads = net.backward(prob=np.ones((2, 1000), np.float32))
    assert np.all(np.isfinite(grads["data"]))


MIXED = """
name: "mixed"
input: "data" input_shape { dim: 2 dim: 3 dim: 7 dim: 7 }
input: "label" input_shape { dim: 2 }
force_backward: true
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
                      weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw"
  convolution_param { num_output: 4 group: 4 kernel_size: 3 dilation: 2 pad: 2
                      weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "dw" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "norm" type: "LRN" bottom: "pool" top: "norm" lrn_param { local_size: 3 alpha: 0.3 } }
layer { name: "mpool" type: "Pooling" bottom: "sum" top: "mpool"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "norm" bottom: "mpool" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "aux" type: "InnerProduct" bottom: "cat" top: "aux" loss_weight: 0.1
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def test_end_to_end_gradient_of_a_net_mixing_every_core_layer():
    """d(loss)/d(input) and d(loss)/d(every parameter) of the whole Net (splits, in-place
    chains, a second weighted loss) against central differences, in float64."""
    minicnn.set_random_seed(3)
    net = minicnn.Net(parse_text(MIXED), minicnn.TRAIN, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 7))
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = [1, 3]

    def loss():
        return net.forward_from_to()

    for blob in net.learnable_params:
        blob.diff[...] = 0
    loss()
    net.backward()
    checks = [("data", net.blobs["data"])] + [
        (f"{name}[{k}]", blob) for name, blobs in net.params.items()
        for k, blob in enumerate(blobs) if net.layer_dict[name].type != "BatchNorm"]
    for label, blob in checks:
        analytic = blob.diff.copy().reshape(-1)
        values = blob.data.reshape(-1)
        for i in rng.choice(values.size, min(6, values.size), replace=False):
            old = values[i]
            values[i] = old + 1e-6
            plus = loss()
            values[i] = old - 1e-6
            minus = loss()
            values[i] = old
            numeric = (plus - minus) / 2e-6
            assert analytic[i] == pytest.approx(numeric, rel=1e-4, abs=1e-7), (label, i)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """A folder holding a few images of each synthetic set the models read through list files
    (ImageData, SegmentationData, DetectionData), made by `minicnn data` as a user would."""
    from minicnn.cli import main
    root = tmp_path_factory.mktemp("tiny_sets")
    for name in ("detection-digits", "canvas-digits", "segmentation-digits", "sos"):
        # canvas-digits has one size (5,000 images, a few seconds): it takes no counts
        counts = [] if name == "canvas-digits" else ["--train-images", "4", "--val-images", "4",
                                                     "--test-images", "4"]
        assert main(["data", name, "--out", str(root / "data" / name.replace("-", "_")),
                     *counts]) == 0
    return root


def test_every_prototxt_in_models_builds(tiny_sets, monkeypatch, capsys):
    monkeypatch.chdir(tiny_sets)             # data/... paths resolve against the current folder
    for folder, _, files in os.walk(os.path.join(REPO, "models")):
        for name in files:
            if name.endswith(".prototxt") and "solver" not in name:  # nets, not solvers
                param = read_prototxt(os.path.join(folder, name))
                if any(layer.type in ("Data", "HDF5Data") for layer in param.layer):
                    param = with_dummy_data(param, 1, 0)
                # source_dir: Python layers' modules sit next to their prototxt
                assert minicnn.Net(param, phase="TRAIN", source_dir=folder).layers, name


def test_generated_prototxts_are_current():
    """models/generate.py writes googlenet/resnet50/mobilenet; the committed files must be its
    output."""
    import importlib.util
    import tempfile
    spec = importlib.util.spec_from_file_location("generate", model("generate.py"))
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("googlenet", "resnet50", "mobilenet"):
            os.makedirs(os.path.join(tmp, sub))
        generate.HERE = tmp
        generate.googlenet()
        generate.resnet50()
        generate.mobilenet()
        for path in ("googlenet/deploy.prototxt", "resnet50/deploy.prototxt",
                     "mobilenet/deploy.prototxt"):
            assert open(os.path.join(tmp, path)).read() == open(model(path)).read()


def test_caffe_pb2_builds_a_net_in_code():
    net_param = caffe_pb2.NetParameter(name="built")
    net_param.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(
        dim=[1, 2, 4, 4])
    net_param.layer.add(name="conv", type="Convolution", bottom=["data"], top=["conv"],
                        convolution_param={"num_output": 3, "kernel_size": [3]})
    net = minicnn.Net(net_param)
    assert net.blobs["conv"].shape == (1, 3, 2, 2)
