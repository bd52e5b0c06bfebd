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


def test_pycaffes_label_colour_and_lr_mult_helpers():
    """caffe.draw's helpers, with pycaffe's strings: the label is quoted for pydot and joined by
    a literal backslash-n (Graphviz's line break) left-right, by spaces top-bottom."""
    from minicnn import draw
    net = read_prototxt(LENET)
    conv1, pool1, ip1, relu1 = (next(ly for ly in net.layer if ly.name == name)
                                for name in ("conv1", "pool1", "ip1", "relu1"))
    assert draw.get_layer_label(conv1, "LR") == \
        r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"'
    assert draw.get_layer_label(pool1, "TB") == \
        '"pool1 (Pooling MAX) kernel size: 2 stride: 2 pad: 0"'
    assert draw.get_layer_label(ip1, "BT", display_lrm=True) == \
        '"ip1 (InnerProduct) lr mult: 1.0, 2.0"'
    assert [draw.get_edge_label(layer) for layer in net.layer[:3]] == \
        ["Batch 64", "Batch 100", "20"]
    assert draw.get_edge_label(relu1) == '""'
    assert [draw.choose_color_by_layertype(t) for t in
            ("Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU")] == \
        ["#FF5050", "#FF5050", "#FF9900", "#CC33FF", "#6495ED"]
    assert draw.get_layer_lr_mult(conv1) == (1.0, 2.0)
    bare = caffe_pb2.LayerParameter(name="fc", type="InnerProduct")
    assert draw.get_layer_lr_mult(bare) == (1.0, 1.0)
    bare.param.add(lr_mult=0)
    assert draw.get_layer_lr_mult(bare) == (0.0, 1.0)
    assert draw.get_layer_label(bare, "TB", display_lrm=True) == \
        '"fc (InnerProduct) lr mult: 0.0, 1.0"'
    with pytest.raises(ValueError, match="ReLU layers do not have"):
        draw.get_layer_lr_mult(relu1)
    pools = draw.get_pooling_types_dict()
    assert pools == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    assert pools[pool1.pooling_param.pool] == "MAX"       # the field's value looks it up too


def test_pycaffes_get_pydot_graph(tmp_path):
    """get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False)
    gives an object with pydot.Dot's calls; phase takes pycaffe's numbers (caffe.TRAIN is 0)."""
    from minicnn.draw import get_pydot_graph
    net = read_prototxt(LENET)
    graph = get_pydot_graph(net, "TB", phase=0)
    source = graph.to_string()
    assert "accuracy" not in source and "rankdir=TB" in source
    assert '[label="Batch 64"]' in source and "[label=500]" in source
    assert "accuracy" in get_pydot_graph(net, "LR").to_string()        # None: every phase
    assert "accuracy" in get_pydot_graph(net, "LR", phase=1).to_string()
    assert "label=500" not in get_pydot_graph(net, "LR", label_edges=False).to_string()
    assert "lr_mult" in get_pydot_graph(net, "LR", display_lrm=True).to_string()
    graph.write(str(tmp_path / "net.raw"))                            # pydot's default: source
    assert (tmp_path / "net.raw").read_text() == source
    assert graph.create(format="raw").decode() == source
    if shutil.which("dot"):
        assert graph.create(format="png")[:8] == graph.create_png()[:8] == b"\x89PNG\r\n\x1a\n"
        graph.write_svg(str(tmp_path / "net.svg"))
        assert b"<svg" in (tmp_path / "net.svg").read_bytes()


def test_pycaffes_phase_zero_is_train(tmp_path):
    """caffe.TRAIN is 0: draw_net and draw_net_to_file took it for 'no phase' and drew all."""
    from minicnn.draw import draw_net
    net = read_prototxt(LENET)
    assert b"accuracy" not in draw_net(net, "LR", "dot", 0)
    assert b"accuracy" not in draw_net(net, rankdir="LR", ext="dot", phase=0)
    draw_net_to_file(net, str(tmp_path / "train.raw"), "LR", 0)   # .raw: the source, as
    source = (tmp_path / "train.raw").read_text()                # pycaffe's docstring says
    assert source.startswith("digraph") and "accuracy" not in source


def test_draw_refuses_an_unknown_rankdir_and_a_net_it_cannot_read(tmp_path):
    """A rankdir Graphviz does not know is an error (Graphviz ignored it and drew top to bottom,
    'lr' included); a Net object or None is a TypeError saying what draw takes, not open()'s."""
    from minicnn import draw
    from minicnn.proto import caffe_pb2
    net = caffe_pb2.NetParameter(name="n")
    for rankdir in ("XX", "lr"):
        with pytest.raises(ValueError, match=f"rankdir '{rankdir}': one of LR, TB, BT, RL"):
            draw.get_pydot_graph(net, rankdir)
        with pytest.raises(ValueError, match=f"rankdir '{rankdir}'"):
            draw.draw_net(net, str(tmp_path / "n.dot"), rankdir=rankdir)
    assert not (tmp_path / "n.dot").exists()

    class Net:                      # what draw sees of a minicnn.Net: no path, no NetParameter
        blobs = {}
    for model, said in ((Net(), r"not Net \(draw the prototxt"), (None, "not NoneType")):
        with pytest.raises(TypeError, match=f"a prototxt path or a NetParameter, {said}"):
            draw.draw_net(model, str(tmp_path / "n.dot"))
