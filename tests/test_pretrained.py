"""Pretrained models: Yahoo's open_nsfw ResNet-50-1by2 on real photos against OpenCV's Caffe
importer, blob by blob; V1-format models the test writes; clear errors for wrong files."""

import os

import numpy as np
import pytest

import minicnn
from minicnn.errors import MinicnnError, WireFormatError
from minicnn.io import preprocess
from minicnn.proto import caffe_pb2, parse_text, read_binary, to_text, write_binary
from minicnn.proto.upgrade import V1_TYPE_NAMES

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]


@pytest.fixture(scope="module")
def photos():
    """The scikit-image photos, preprocessed as Caffe's ImageNet recipe (BGR, 0..255, mean)."""
    return np.stack([preprocess(getattr(skimage_data, name)().astype(np.float32) / 255)
                     for name in PHOTOS])


def test_open_nsfw_on_real_photos_agrees_with_opencv_blob_by_blob(open_nsfw, photos):
    deploy, weights = open_nsfw
    net = minicnn.Net(deploy, weights, minicnn.TEST)
    probs = net.forward(data=photos)["prob"].copy()
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)

    cv_net = cv2.dnn.readNetFromCaffe(deploy, weights)
    cv_net.enableFusion(False)
    cv_net.setInput(photos)
    last_writer = {}
    for layer, tops in net.top_names.items():
        if not layer.endswith("_split") and net.layer_dict[layer].type != "Input":
            for top in tops:
                last_writer[top] = layer
    layers = list(dict.fromkeys(last_writer.values()))
    outputs = dict(zip(layers, cv_net.forward(layers)))
    np.testing.assert_allclose(probs, outputs["prob"].reshape(4, 2), atol=1e-5)
    worst = 0.0
    for blob, layer in last_writer.items():
        ours, theirs = net.blobs[blob].data, outputs[layer].reshape(net.blobs[blob].shape)
        worst = max(worst, np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    assert len(last_writer) == 73 and worst <= 1e-5, worst


def test_the_caffemodel_holds_the_training_net_and_loads_by_name(open_nsfw):
    deploy, weights = open_nsfw
    model = read_binary(weights)
    types = {layer.type for layer in model.layer}
    assert {"MemoryData", "Split", "SoftmaxWithLoss"} <= types        # not in the deploy net
    net = minicnn.Net(deploy, weights, minicnn.TEST)
    source = {layer.name: layer for layer in model.layer}
    for name, blobs in net.params.items():
        for k, blob in enumerate(blobs):
            np.testing.assert_array_equal(blob.data.reshape(-1), source[name].blobs[k].data)
    assert net.layer_dict["bn_1"].blobs[2].data[0] != 0             # BatchNorm's scale factor


def test_wrong_and_truncated_weight_files_say_what_is_wrong(open_nsfw, tmp_path):
    deploy, weights = open_nsfw
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(open(weights, "rb").read()[:5_000_000])
    with pytest.raises(WireFormatError, match=r"truncated.caffemodel: byte \d+ while reading "
                                              r"NetParameter"):
        minicnn.Net(deploy, str(truncated), minicnn.TEST)
    with pytest.raises(MinicnnError, match="deploy.prototxt: byte"):
        minicnn.Net(deploy, deploy, minicnn.TEST)           # a prototxt is not a caffemodel
    other = minicnn.Net(os.path.join(REPO, "models", "lenet", "lenet.prototxt"))
    other.params["conv1"][0].data[...] = 1
    other.save(tmp_path / "lenet.caffemodel")
    lenet_shaped = parse_text(open(deploy).read())
    lenet_shaped.layer[1].name = "conv1"                   # same name, different shape
    net = minicnn.Net(lenet_shaped, phase=minicnn.TEST)
    with pytest.raises(MinicnnError, match="shape mismatch.*rename the layer"):
        net.copy_from(str(tmp_path / "lenet.caffemodel"))


def to_v1(net_param):
    """The same net in Caffe's V1 format (layers {} with enum types, blobs_lr/weight_decay)."""
    names = {v: k for k, v in V1_TYPE_NAMES.items()}
    v1 = caffe_pb2.NetParameter(name=net_param.name)
    for layer in net_param.layer:
        if layer.type == "Input":
            v1.input.append(layer.top[0])
            v1.input_dim.extend(layer.input_param.shape[0].dim)
            continue
        old = v1.layers.add(name=layer.name, type=names[layer.type], bottom=list(layer.bottom),
                            top=list(layer.top))
        old.blobs_lr.extend(spec.lr_mult for spec in layer.param)
        for field in ("convolution_param", "pooling_param", "inner_product_param"):
            if layer.HasField(field):
                getattr(old, field).CopyFrom(getattr(layer, field))
        old.blobs.extend(b.copy() for b in layer.blobs)
    return v1


def test_v1_format_prototxt_and_caffemodel_written_by_the_test(tmp_path):
    lenet = os.path.join(REPO, "models", "lenet", "lenet.prototxt")
    minicnn.set_random_seed(0)
    net = minicnn.Net(lenet, minicnn.TEST)
    v1 = to_v1(net.to_proto())
    assert v1.layers[0].type == "CONVOLUTION" and not v1.layer
    write_binary(v1, tmp_path / "v1.caffemodel")
    v1_text = caffe_pb2.NetParameter()
    v1_text.CopyFrom(v1)
    for layer in v1_text.layers:
        layer.ClearField("blobs")
    (tmp_path / "v1.prototxt").write_text(to_text(v1_text))
    assert "layers {" in (tmp_path / "v1.prototxt").read_text()
    x = np.random.default_rng(1).random(net.blobs["data"].shape).astype(np.float32)
    expected = net.forward(data=x)["prob"].copy()
    for model in (lenet, str(tmp_path / "v1.prototxt")):
        loaded = minicnn.Net(model, str(tmp_path / "v1.caffemodel"), minicnn.TEST)
        np.testing.assert_array_equal(loaded.forward(data=x)["prob"], expected)
