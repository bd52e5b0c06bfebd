"""models/spp and models/deeplab: the committed nets are their make_nets.py's output; the SPP
net keeps its output length over input sizes; the DeepLab nets' ASPP branches have the shapes
the design says (atrous separable vs plain), their scores come back at the input's size for any
size, and the train nets run on a small segmentation-digits set."""

import importlib.util
import os

import numpy as np
import pytest

import minicnn
from minicnn.data.segmentation_digits import prepare_segmentation_digits
from minicnn.proto import read_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPP = os.path.join(REPO, "models", "spp")
DEEPLAB = os.path.join(REPO, "models", "deeplab")


def load_script(folder):
    spec = importlib.util.spec_from_file_location(f"make_nets_{os.path.basename(folder)}",
                                                  os.path.join(folder, "make_nets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("folder", [SPP, DEEPLAB])
def test_committed_nets_are_what_make_nets_writes(folder, tmp_path):
    load_script(folder).main(["--out", str(tmp_path)])
    written = sorted(os.listdir(tmp_path))
    assert written and written == sorted(f for f in os.listdir(folder)
                                         if f.endswith(".prototxt"))
    for name in written:
        with open(os.path.join(folder, name)) as a, open(tmp_path / name) as b:
            assert a.read() == b.read(), f"{name} differs from make_nets.py's output: run it"


@pytest.mark.parametrize("folder", [SPP, DEEPLAB])
def test_make_nets_makes_its_out_folder(folder, tmp_path):
    # models/deeplab/README.md's ablation: make_nets.py --out /tmp/dl/w50 on a fresh machine
    out = tmp_path / "dl" / "w50"
    load_script(folder).main(["--out", str(out)])
    assert any(name.endswith("_solver.prototxt") for name in os.listdir(out))


def deploy(folder, name):
    """The deploy net with fresh weights and unit BatchNorm statistics (mean 0, variance 1; the
    stored ones start at 0, which would divide by sqrt(eps) at every layer)."""
    minicnn.set_random_seed(0)
    net = minicnn.Net(os.path.join(folder, name))
    for layer in net.layers:
        if layer.type == "BatchNorm":
            for blob, value in zip(layer.blobs, (0.0, 1.0, 1.0)):
                blob.data[...] = value
    return net


# --- SPP --------------------------------------------------------------------------------------------

def test_spp_net_gives_ten_scores_for_any_canvas():
    net = deploy(SPP, "spp_deploy.prototxt")
    assert net.layer_dict["spp"].levels == [1, 2, 3, 6]
    assert net.layer_dict["spp"].rule == "sppnet"
    rng = np.random.default_rng(0)
    for hw in ((24, 24), (24, 48), (48, 32), (37, 29), (100, 60)):
        prob = net.forward(data=rng.random((1, 1, *hw), np.float32))["prob"]
        assert prob.shape == (1, 10) and np.isclose(prob.sum(), 1)
        assert net.blobs["spp"].shape == (1, 64 * 50)
    with pytest.raises(minicnn.NetError, match="layer 'spp'.*needs at least 6 pixels"):
        net.forward(data=np.zeros((1, 1, 20, 24), np.float32))


def test_spp_train_nets_read_variable_or_warped_images():
    variable = read_prototxt(os.path.join(SPP, "spp_variable_train_test.prototxt"),
                             "NetParameter")
    fixed = read_prototxt(os.path.join(SPP, "spp_fixed_train_test.prototxt"), "NetParameter")
    train_v = [l for l in variable.layer if l.type == "ImageData"][0].image_data_param
    train_f = [l for l in fixed.layer if l.type == "ImageData"][0].image_data_param
    assert train_v.bucket_by_size and not train_v.new_height
    assert (train_f.new_height, train_f.new_width) == (32, 32) and not train_f.bucket_by_size
    body = lambda p: [(l.name, l.type) for l in p.layer if l.type != "ImageData"]  # noqa: E731
    assert body(variable) == body(fixed)


# --- DeepLab ----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["deeplab", "deeplab_nodec", "deeplab_plain"])
@pytest.mark.parametrize("hw", [(97, 97), (65, 65), (33, 49), (50, 70)])
def test_deeplab_scores_come_back_at_the_input_size(variant, hw):
    net = deploy(DEEPLAB, f"{variant}_deploy.prototxt")
    x = np.random.default_rng(1).standard_normal((1, 3, *hw)).astype(np.float32)
    prob = net.forward(data=x)["prob"]
    assert prob.shape == (1, 13, *hw)
    stride8 = tuple((s - 1) // 8 + 1 for s in hw)            # three 3x3 stride-2, pad-1 convs
    assert net.blobs["conv7"].shape == (1, 128, *stride8)
    assert net.blobs["aspp_fuse"].shape == (1, 64, *stride8)


def test_aspp_branches_by_design():
    net = deploy(DEEPLAB, "deeplab_deploy.prototxt")
    net.forward(data=np.zeros((2, 3, 97, 97), np.float32))
    layers = net.layer_dict
    for rate in (2, 4, 6):
        dw = layers[f"aspp_rate{rate}_dw"]
        assert dw.type == "ConvolutionDepthwise" and dw.group == 128
        assert dw.geom.dilation == (rate, rate) and dw.geom.pad == (rate, rate)
        assert net.params[f"aspp_rate{rate}_dw"][0].shape == (128, 1, 3, 3)
        assert net.params[f"aspp_rate{rate}_pw"][0].shape == (64, 128, 1, 1)
        assert net.blobs[f"aspp_rate{rate}_pw"].shape == (2, 64, 13, 13)
    assert net.blobs["aspp_1x1"].shape == (2, 64, 13, 13)
    assert net.blobs["aspp_pool"].shape == (2, 128, 1, 1)
    assert net.blobs["aspp_pool_up"].shape == (2, 64, 13, 13)
    assert net.blobs["aspp_concat"].shape == (2, 5 * 64, 13, 13)
    # the image-pooling branch is constant over the map: Interp of a 1 x 1 blob
    up = net.blobs["aspp_pool_up"].data
    np.testing.assert_allclose(up, np.broadcast_to(up[:, :, :1, :1], up.shape), rtol=1e-6)
    # decoder: ASPP output to the stride-4 low-level map, concatenated with its 1x1 reduction
    assert net.blobs["block3_pw"].shape == (2, 64, 25, 25)
    assert net.blobs["decoder_up"].shape == (2, 64, 25, 25)
    assert net.blobs["decoder_concat"].shape == (2, 64 + 24, 25, 25)
    assert net.blobs["score"].shape == (2, 13, 25, 25)
    plain = deploy(DEEPLAB, "deeplab_plain_deploy.prototxt")
    for rate in (2, 4, 6):
        conv = plain.layer_dict[f"aspp_rate{rate}"]
        assert conv.type == "Convolution" and conv.group == 1 and conv.geom.dilation == (rate,
                                                                                         rate)
        assert plain.params[f"aspp_rate{rate}"][0].shape == (64, 128, 3, 3)
    nodec = deploy(DEEPLAB, "deeplab_nodec_deploy.prototxt")
    assert "decoder_up" not in nodec.blobs


def count_params(net):
    return sum(b.count for layer in net.layers if layer.type != "BatchNorm"
               for b in layer.blobs)


def test_separable_aspp_has_fewer_parameters_than_plain():
    sep = count_params(deploy(DEEPLAB, "deeplab_deploy.prototxt"))
    plain = count_params(deploy(DEEPLAB, "deeplab_plain_deploy.prototxt"))
    nodec = count_params(deploy(DEEPLAB, "deeplab_nodec_deploy.prototxt"))
    # each plain branch 64*128*9 weights against 128*9 + 64*128 (+ one more BN/Scale pair)
    assert plain - sep == 3 * (64 * 128 * 9 - 128 * 9 - 64 * 128 - 2 * 128)
    assert nodec < sep


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    prepare_segmentation_digits(str(out), train=8, val=4, test=2, verbose=False)
    return str(out)


@pytest.mark.parametrize("variant", ["deeplab", "deeplab_plain"])
def test_deeplab_train_net_runs_on_segmentation_digits(small_set, variant):
    param = read_prototxt(os.path.join(DEEPLAB, f"{variant}_train_test.prototxt"),
                          "NetParameter")
    for layer in param.layer:
        if layer.type == "SegmentationData":
            p = layer.segmentation_data_param
            p.source = p.source.replace("data/segmentation_digits", small_set)
            p.batch_size = 2
    minicnn.set_random_seed(2)
    net = minicnn.Net(param, phase="TRAIN")
    loss = net.forward_backward()
    assert net.blobs["data"].shape == (2, 3, 65, 65)
    assert net.blobs["score_up"].shape == (2, 13, 65, 65)
    assert np.isfinite(loss) and 1.0 < loss < 10.0              # about log(13) at the start
    assert np.abs(net.params["conv1"][0].diff).sum() > 0
    test = minicnn.Net(param, phase="TEST")
    test.share_with(net)
    test.forward_from_to()
    assert test.blobs["score_up"].shape == (2, 13, 97, 97)
    assert 0 <= float(test.blobs["accuracy"].data) <= 1
    # the digit-only loss sees the digit pixels' labels and ignores (255) every other pixel
    label = net.blobs["label"].data
    np.testing.assert_array_equal(net.blobs["label_digits"].data,
                                  np.where((label >= 1) & (label <= 10), label, 255))
    assert (label == 0).any() and ((label >= 1) & (label <= 10)).any()
    assert float(net.blobs["loss_digits"].data) > 0
    assert "loss_digits" not in test.blobs
