"""models/yolo: the committed prototxts are make_nets.py's output, they build, the solvers
parse, and the convolutional head lays its output out exactly as Darknet's."""

import importlib.util
import os

import numpy as np

import minicnn
from minicnn.proto import read_prototxt

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                    "yolo")
NETS = ["digits_train_val", "digits_deploy", "tiny_yolov1_train_val", "tiny_yolov1_deploy"]


def test_committed_prototxts_are_make_nets_output(tmp_path):
    spec = importlib.util.spec_from_file_location("make_nets", os.path.join(HERE,
                                                                            "make_nets.py"))
    make_nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_nets)
    make_nets.main(["--out", str(tmp_path)])
    for name in NETS:
        with open(os.path.join(HERE, name + ".prototxt")) as f:
            assert f.read() == (tmp_path / f"{name}.prototxt").read_text(), name


def test_solvers_and_nets_parse():
    for name in ("digits_solver", "tiny_yolov1_solver"):
        solver = read_prototxt(os.path.join(HERE, name + ".prototxt"), "SolverParameter")
        assert solver.net == f"models/yolo/{name.replace('_solver', '_train_val')}.prototxt"
    for name in NETS:
        read_prototxt(os.path.join(HERE, name + ".prototxt"))


def test_conv_head_output_is_darknets_layout():
    net = minicnn.Net(os.path.join(HERE, "digits_deploy.prototxt"), phase=minicnn.TEST)
    x = np.random.default_rng(0).random((2, 3, 112, 112), np.float32)
    out = net.forward(data=x)["detection"]
    conv = net.blobs["detection_conv"].data                 # (N, 10 + 2 + 8, 7, 7)
    assert out.shape == (2, 7 * 7 * 20) and conv.shape == (2, 20, 7, 7)
    for n, row, col in ((0, 0, 0), (1, 3, 5), (1, 6, 6)):
        cell = row * 7 + col
        for c in range(10):
            assert out[n, cell * 10 + c] == conv[n, c, row, col]
        for j in range(2):
            assert out[n, 490 + cell * 2 + j] == conv[n, 10 + j, row, col]
            for k in range(4):
                assert out[n, 490 + 98 + (cell * 2 + j) * 4 + k] == conv[n, 12 + j * 4 + k,
                                                                         row, col]


def test_tiny_yolov1_deploy_shapes():
    net = minicnn.Net(os.path.join(HERE, "tiny_yolov1_deploy.prototxt"), phase=minicnn.TEST)
    assert net.blobs["data"].shape == (1, 3, 448, 448)
    assert net.blobs["conv9"].shape == (1, 1024, 7, 7)
    assert net.blobs["detection"].shape == (1, 980)
    convs = [layer for layer in net.layers if layer.type == "Convolution"]
    assert len(convs) == 9
