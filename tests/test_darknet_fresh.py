"""`minicnn convert darknet CFG OUTDIR` (no .weights): the prototxt's fillers are Darknet's own
random initialisation (Debian's 2018 libdarknet: make_convolutional_layer scale * rand_normal(),
make_connected_layer / make_local_layer scale * rand_uniform(-1, 1), biases 0, batch norm scales
1), so `minicnn train` starts from scratch as `darknet detector train` does without weights."""

import ctypes
import math
import re

import numpy as np
import pytest

import minicnn
from minicnn.cli import main
from minicnn.darknet import DarknetError, WeightsReader, build, convert_darknet, read_cfg
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from tests.test_darknet import DETECTION_HEAD, darknet, needs_darknet

# conv + BN, maxpool, grouped conv with a bias, local, connected + BN, dropout, connected,
# detection (side 2, 3 classes, 2 boxes: 4 * (3 + 2 * 5) = 52 outputs)
FRESH_CFG = """[net]
batch=4
max_batches=100
height=16
width=16
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=64
size=3
stride=2
pad=1
groups=2
activation=leaky

[local]
filters=8
size=3
stride=1
pad=1
activation=leaky

[connected]
batch_normalize=1
output=256
activation=leaky

""" + DETECTION_HEAD

# Darknet's scale of each parametric layer, from the cfg by hand: 3 channels in; the maxpool
# halves 16 x 16 to 8 x 8; conv2 (stride 2, pad 1) gives 64 x 4 x 4; local3 (pad 1) 8 x 4 x 4
SCALES = {"conv0": ("gaussian", math.sqrt(2 / (3 * 3 * 3))),
          "conv2": ("gaussian", math.sqrt(2 / (3 * 3 * 16 // 2))),       # groups=2
          "local3": ("uniform", math.sqrt(2 / (3 * 3 * 64))),
          "fc4": ("uniform", math.sqrt(2 / (8 * 4 * 4))),
          "fc6": ("uniform", math.sqrt(2 / 256))}
BATCH_NORMALIZED = {"conv0", "fc4"}


def fresh(tmp_path):
    cfg = tmp_path / "fresh.cfg"
    cfg.write_text(FRESH_CFG)
    paths = convert_darknet(str(cfg), None, str(tmp_path / "out"))
    return str(cfg), paths


def _param(layer):
    return {"Convolution": layer.convolution_param, "InnerProduct": layer.inner_product_param,
            "Local": layer.local_param}[layer.type]


def test_fillers_are_darknets_rules(tmp_path):
    _, paths = fresh(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["fresh.prototxt", "fresh_train.prototxt",
                                                    "fresh_solver.prototxt"]
    assert not (tmp_path / "out" / "fresh.caffemodel").exists()
    with open(paths[0]) as f:
        text = f.read()
    assert text.startswith("# Converted by minicnn from fresh.cfg without weights")
    layers = {layer.name: layer for layer in parse_text(text, "NetParameter").layer}
    for name, (kind, scale) in SCALES.items():
        p = _param(layers[name])
        assert p.weight_filler.type == kind, name
        if kind == "gaussian":                        # scale * rand_normal()
            assert p.weight_filler.std == np.float32(scale), name
        else:                                         # scale * rand_uniform(-1, 1)
            assert (p.weight_filler.min, p.weight_filler.max) == \
                (-np.float32(scale), np.float32(scale)), name
        # Darknet's weight decay reaches the weights, not the biases or scales
        decays = [spec.decay_mult for spec in layers[name].param]
        assert decays == ([1] if name in BATCH_NORMALIZED else [1, 0]), name
        if name in BATCH_NORMALIZED:                  # the biases are the Scale's
            assert [spec.decay_mult for spec in layers[f"{name}_scale"].param] == [0, 0]
            assert not p.bias_term, name
            bn, sc = layers[f"{name}_bn"].batch_norm_param, layers[f"{name}_scale"].scale_param
            assert not bn.HasField("use_global_stats")        # batch statistics in TRAIN
            assert bn.moving_average_fraction == np.float32(0.99)     # Darknet's .99 / .01
            assert bn.eps == np.float32(1e-12)        # sqrt(var + 1e-12) ~ sqrt(var) + 1e-6
            assert (sc.bias_term, sc.filler.type, sc.filler.value) == (True, "constant", 1)
            assert (sc.bias_filler.type, sc.bias_filler.value) == ("constant", 0)
        else:
            assert p.bias_term, name
            assert (p.bias_filler.type, p.bias_filler.value) == ("constant", 0), name


def test_a_seeded_net_has_darknets_spread(tmp_path):
    _, paths = fresh(tmp_path)
    minicnn.set_random_seed(7)
    net = minicnn.Net(paths[0], phase=minicnn.TRAIN)
    for name, (kind, scale) in SCALES.items():
        w = net.params[name][0].data
        std = scale if kind == "gaussian" else scale / math.sqrt(3)
        if w.size >= 4000:                           # a sample std within ~2 % (1/sqrt(2n))
            assert w.std() == pytest.approx(std, rel=0.04), name
        assert abs(w.mean()) < 4 * std / math.sqrt(w.size), name
        if kind == "uniform":
            assert -scale <= w.min() < -0.99 * scale and 0.99 * scale < w.max() <= scale, name
        elif w.size >= 4000:                         # a normal's tails
            assert np.abs(w).max() > 2.5 * scale, name
        if name in BATCH_NORMALIZED:
            mean, var, factor = (b.data for b in net.params[f"{name}_bn"])
            assert not mean.any() and not var.any() and not factor.any()   # calloc'ed
            gamma, beta = (b.data for b in net.params[f"{name}_scale"])
            assert (gamma == 1).all() and not beta.any()
        else:
            assert not net.params[name][1].data.any(), name


def _train_prototxt(text, batch):
    """The converted deploy net with the boxes fed as the Detection's second bottom."""
    data = re.search(r'layer \{\n  name: "data"\n  type: "Input"\n.*?\n\}\n', text, re.S)
    assert data, text
    dims = re.search(r"dim: 1 (dim: \d+ dim: \d+ dim: \d+)", data.group()).group(1)
    feed = (f'layer {{ name: "data" type: "Input" top: "data" top: "boxes" input_param {{ '
            f'shape {{ dim: {batch} {dims} }} shape {{ dim: {batch} dim: 2 dim: 5 }} }} }}\n')
    text = text.replace(data.group(), feed)
    return text.replace('bottom: "fc6"\n  top: "detection"',
                        'bottom: "fc6"\n  bottom: "boxes"\n  top: "detection"')


def test_trains_from_scratch(tmp_path):
    """The converted net, given the box lists, trains through the solver: the loss on a fixed
    batch falls (dropout off, so that it is the only thing that changes), the batch norms gather
    running statistics, and the deploy prototxt runs the result."""
    _, paths = fresh(tmp_path)
    with open(paths[0]) as f:
        text = _train_prototxt(f.read(), batch=4)
    assert "dropout_ratio: 0.5" in text
    text = text.replace("dropout_ratio: 0.5", "dropout_ratio: 0")
    param = caffe_pb2.SolverParameter(net_param=parse_text(text, "NetParameter"), base_lr=0.001,
                                      momentum=0.9, lr_policy="fixed", max_iter=100,
                                      random_seed=3, snapshot_after_train=False)
    solver = minicnn.get_solver(param, log=lambda message: None)
    rng = np.random.default_rng(5)
    solver.net.blobs["data"].data[...] = rng.random((4, 3, 16, 16), np.float32)
    boxes = np.full((4, 2, 5), -1, np.float32)
    boxes[:, 0] = [[c, *rng.uniform(0.2, 0.8, 2), *rng.uniform(0.2, 0.5, 2)] for c in range(3)]\
        + [[1, 0.5, 0.5, 0.3, 0.3]]
    solver.net.blobs["boxes"].data[...] = boxes
    before = solver.net.params["conv2"][0].data.copy()
    solver.step(1)
    first = float(solver.net.blobs["detection"].data)
    solver.step(9)
    last = float(solver.net.blobs["detection"].data)
    assert np.isfinite(first) and first > 0
    assert last < 0.2 * first, (first, last)
    assert not np.array_equal(solver.net.params["conv2"][0].data, before)
    factor = solver.net.params["conv0_bn"][2].data[0]
    assert factor == pytest.approx(sum(0.99 ** k for k in range(10)), rel=1e-5)
    model = str(tmp_path / "trained.caffemodel")
    solver.net.save(model)
    deploy = minicnn.Net(paths[0], weights=model, phase=minicnn.TEST)
    out = deploy.forward(data=solver.net.blobs["data"].data[:1])["detection"]
    assert out.shape == (1, 52) and np.isfinite(out).all()


@needs_darknet
def test_fillers_match_libdarknets_own_initialisation(tmp_path):
    """Darknet itself (parse_network_cfg, then save_weights): its fresh net's arrays have the
    fillers' spread, biases and rolling statistics 0, batch norm scales 1. Its [local] draws
    only the first place's filters (the one difference, as the converter's docstring says)."""
    cfg, _ = fresh(tmp_path)
    lib = darknet()
    lib.save_weights.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    net = lib.parse_network_cfg(cfg.encode())
    saved = str(tmp_path / "fresh.weights")
    try:
        lib.save_weights(ctypes.cast(net, ctypes.c_void_p), saved.encode())
    finally:
        lib.free_network(net)

    class Arrays(WeightsReader):                   # each array the converter reads, by name
        def read(self, count, what):
            self.arrays[what] = out = super().read(count, what)
            return out
    reader = Arrays.__new__(Arrays)
    reader.arrays = {}
    WeightsReader.__init__(reader, saved)
    build(read_cfg(cfg), reader)
    assert reader.left == 0
    arrays = reader.arrays
    for name, (kind, scale) in SCALES.items():
        w = arrays[f"the weights of {name}"]
        if name == "local3":                        # c * n * size * size of them, the rest 0
            first = 64 * 8 * 3 * 3
            assert not w[first:].any()
            w = w[:first]
        std = scale if kind == "gaussian" else scale / math.sqrt(3)
        if w.size >= 4000:
            assert w.std() == pytest.approx(std, rel=0.04), name
        if kind == "uniform":
            assert np.abs(w).max() <= np.float32(scale) * (1 + 1e-6), name
        elif w.size >= 4000:                        # normal: tails no uniform of this std has
            assert np.abs(w).max() > 2.5 * scale, name
        assert not arrays[f"the biases of {name}"].any(), name
        if name in BATCH_NORMALIZED:
            assert (arrays[f"the scales of {name}"] == 1).all()
            assert not arrays[f"the rolling mean of {name}"].any()
            assert not arrays[f"the rolling variance of {name}"].any()


def test_command_without_weights_and_wrong_combinations(tmp_path, capsys):
    cfg = tmp_path / "fresh.cfg"
    cfg.write_text(FRESH_CFG)
    out = tmp_path / "out"
    assert main(["convert", "darknet", str(cfg), str(out)]) == 0
    said = capsys.readouterr().out
    assert "fresh.prototxt" in said and "No caffemodel" in said and "--rgb" in said
    assert sorted(p.name for p in out.iterdir()) == ["fresh.prototxt", "fresh_solver.prototxt",
                                                     "fresh_train.prototxt"]
    # the weights named without an output folder: refused, nothing written
    assert main(["convert", "darknet", str(cfg), str(tmp_path / "fresh.weights")]) == 1
    assert re.search(r"fresh\.weights: the second argument is the output folder, not a "
                     r"\.weights file: the arguments are cfg \[weights\] outdir",
                     capsys.readouterr().err)
    assert not (tmp_path / "fresh.weights").exists()
    existing = tmp_path / "model.bin"                 # a weights file by another name
    existing.write_bytes(np.zeros(5, "<i4").tobytes())
    with pytest.raises(DarknetError, match=r"model\.bin: the second argument, the output "
                                           r"folder, is a file"):
        convert_darknet(str(cfg), None, str(existing))
    with pytest.raises(DarknetError, match=r"fresh\.cfg: this is a text cfg, not a \.weights "
                                           r"file"):
        convert_darknet(str(cfg), str(cfg), str(out))       # the cfg given twice
    with pytest.raises(SystemExit):
        main(["convert", "darknet", str(cfg)])
    assert "required: outdir" in capsys.readouterr().err
