"""minicnn draw: the graph of a net, by phase, as Graphviz source or a picture."""

import os
import re
import shutil

import pytest

from minicnn.cli import main
from minicnn.draw import draw_net_to_file, net_to_dot
from minicnn.errors import MinicnnError
from minicnn.proto import caffe_pb2, read_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")


def blob_nodes(source, name):
    return len(re.findall(rf'label="?{name}"? fillcolor="#E0E0E0"', source))


def test_layers_blobs_and_in_place_nodes():
    source = net_to_dot(read_prototxt(LENET), phase="TRAIN").source
    assert "conv1\n(Convolution)\nnum_output: 20\nkernel_size: 5" in source
    assert "accuracy" not in source                     # TEST-only layer left out
    assert blob_nodes(source, "ip1") == 2               # relu1 rewrites ip1 in place
    assert blob_nodes(source, "conv1") == 1 and "rankdir=LR" in source


def test_all_phases_and_options(tmp_path):
    source = net_to_dot(read_prototxt(LENET), rankdir="TB", phase="ALL",
                        display_lrm=True).source
    assert "accuracy" in source and "rankdir=TB" in source and "lr_mult: 1, 2" in source
    assert blob_nodes(source, "data") == 1               # TRAIN and TEST data share the node


def test_command_writes_dot_source_without_graphviz(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "")
    out = tmp_path / "net.dot"
    assert main(["draw", LENET, str(out), "--phase", "TEST"]) == 0
    assert out.read_text().startswith("digraph")
    assert main(["draw", LENET, str(tmp_path / "net.png")]) == 1
    assert "needs Graphviz's 'dot' program" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_command_writes_a_png(tmp_path):
    out = tmp_path / "lenet.png"
    assert main(["draw", LENET, str(out), "--rankdir", "TB"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["lenet.png"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_picture_named_after_the_prototxt_keeps_it(tmp_path):
    net = tmp_path / "lenet.prototxt"             # Graphviz's render wrote its source to the
    shutil.copy(LENET, net)                       # output path less .png, then deleted it
    (tmp_path / "out").write_text("mine")
    assert main(["draw", str(net), str(net) + ".png"]) == 0
    assert main(["draw", str(net), str(tmp_path / "out.svg")]) == 0
    assert net.read_text() == open(LENET).read() and (tmp_path / "out").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["lenet.prototxt", "lenet.prototxt.png", "out",
                                            "out.svg"]


def test_missing_extension_is_an_error(tmp_path):
    from minicnn.draw import draw_net
    with pytest.raises(MinicnnError, match="file extension"):
        draw_net(LENET, tmp_path / "picture")


def test_pycaffes_draw_net_to_file_draws_every_phase_by_default(tmp_path):
    draw_net_to_file(read_prototxt(LENET), tmp_path / "all.dot")
    assert "accuracy" in (tmp_path / "all.dot").read_text()
    draw_net_to_file(read_prototxt(LENET), tmp_path / "train.dot", rankdir="TB", phase="TRAIN")
    source = (tmp_path / "train.dot").read_text()
    assert "accuracy" not in source and "rankdir=TB" in source


def test_pycaffes_draw_net_returns_the_picture():
    """pycaffe's caffe.draw.draw_net(caffe_net, rankdir, ext='png', phase=None) returns the
    image's bytes (notebooks show it with IPython's Image); phase None draws every phase."""
    from minicnn.draw import draw_net
    net = read_prototxt(LENET)
    png = draw_net(net, "LR")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    source = draw_net(net, "TB", "dot").decode()
    assert "rankdir=TB" in source and "accuracy" in source
    source = draw_net(net, "BT", ext="dot", phase=caffe_pb2.Phase.TRAIN).decode()
    assert "rankdir=BT" in source and "accuracy" not in source
    svg = draw_net(net, "RL", "svg", None, True)                # display_lrm
    assert svg.lstrip().startswith(b"<?xml") and b"lr_mult" in svg
