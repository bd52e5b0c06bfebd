"""Darknet import (minicnn.darknet, `minicnn convert darknet`) and the detection loss, against
Darknet itself where Debian's libdarknet is installed (.ci/run installs the `darknet` package),
and against NumPy renderings of Darknet's formulas everywhere."""

import ctypes
import os
import re

import numpy as np
import pytest

import minicnn
from minicnn.cli import main
from minicnn.darknet import (DarknetError, WeightsReader, build, convert_darknet,
                             darknet_resize, read_cfg)
from minicnn.ops.detection import detection_loss_forward, detection_truth

LIB = "/usr/lib/darknet/libdarknet.so"
CFG_DIR = "/usr/share/darknet/cfg"
needs_darknet = pytest.mark.skipif(not os.path.exists(LIB),
                                   reason="Debian's darknet package is not installed")

# the [dropout], [connected] and [detection] ending of YOLOv1's cfgs, at 3 classes on a 2 x 2 grid
DETECTION_HEAD = """[dropout]
probability=.5

[connected]
output=52
activation=linear

[detection]
classes=3
coords=4
rescore=1
side=2
num=2
softmax=0
sqrt=1
object_scale=1
noobject_scale=.5
class_scale=1
coord_scale=5
"""
SMALL_CFG = """[net]
batch=1
height=20
width=20
channels=3

[convolutional]
batch_normalize=1
filters=6
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=5
size=3
stride=2
pad=1
activation=logistic

[connected]
batch_normalize=1
output=16
activation=leaky

""" + DETECTION_HEAD


# --- random .weights for a cfg, laid out by the converter's own reading order --------------------

class _Recorder:
    """Stands in for WeightsReader: records what is read where, returns placeholders."""
    transpose = False
    path = "<recorder>"

    def __init__(self):
        self.offset, self.reads = 0, []

    def read(self, count, what):
        self.reads.append((self.offset, count, what))
        self.offset += count
        return np.ones(count, np.float32)


def random_weights(cfg, path, seed=0, header=(0, 2, 0), dead=True):
    """Write random Darknet weights for ``cfg``: He-scaled filters, positive variances, and in
    each batch norm one nearly dead channel (variance 1e-10, small scale), where the placement
    of the epsilon matters."""
    rng = np.random.default_rng(seed)
    rec = _Recorder()
    build(read_cfg(cfg), rec)
    values = np.zeros(rec.offset, np.float32)
    n = 1
    for offset, count, what in sorted(rec.reads):
        if what.startswith("the batch norm"):
            continue                      # skipped over first, read as the three arrays below
        if what.startswith("the biases"):
            v, n = rng.normal(0, 0.1, count), count
        elif what.startswith("the weights"):
            v = rng.normal(0, np.sqrt(2 / (count // n)), count)
        elif what.startswith("the scales"):
            v = rng.normal(1, 0.2, count)
            if dead:
                v[0] = 1e-5
        elif what.startswith("the rolling mean"):
            v = rng.normal(0, 0.1, count)
        elif what.startswith("the rolling variance"):
            v = rng.uniform(0.5, 2, count)
            if dead:
                v[0] = 1e-10
        else:
            raise AssertionError(what)
        values[offset:offset + count] = v
    major, minor, revision = header
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    with open(path, "wb") as f:
        f.write(np.array([major, minor, revision], "<i4").tobytes())
        f.write(np.array([12345], "<u8" if wide else "<i4").tobytes())
        f.write(values.tobytes())
    return values


def converted(tmp_path, cfg_text, **kwargs):
    cfg = tmp_path / "net.cfg"
    cfg.write_text(cfg_text)
    weights = tmp_path / "net.weights"
    values = random_weights(str(cfg), str(weights), **kwargs)
    paths = convert_darknet(str(cfg), str(weights), str(tmp_path / "out"))
    net = minicnn.Net(paths[0], weights=paths[1], phase=minicnn.TEST)
    return str(cfg), str(weights), net, values


# --- Darknet through ctypes ----------------------------------------------------------------------

class Network(ctypes.Structure):
    """darknet.h's `struct network` (CPU build) up to its last field."""
    _fields_ = [("n", ctypes.c_int), ("batch", ctypes.c_int),
                ("seen", ctypes.POINTER(ctypes.c_size_t)), ("t", ctypes.POINTER(ctypes.c_int)),
                ("epoch", ctypes.c_float), ("subdivisions", ctypes.c_int),
                ("layers", ctypes.c_void_p), ("output", ctypes.POINTER(ctypes.c_float)),
                ("policy", ctypes.c_int)]
    _fields_ += [(k, ctypes.c_float) for k in ("learning_rate", "momentum", "decay", "gamma",
                                               "scale", "power")]
    _fields_ += [("time_steps", ctypes.c_int), ("step", ctypes.c_int),
                 ("max_batches", ctypes.c_int), ("scales", ctypes.POINTER(ctypes.c_float)),
                 ("steps", ctypes.POINTER(ctypes.c_int)), ("num_steps", ctypes.c_int),
                 ("burn_in", ctypes.c_int), ("adam", ctypes.c_int), ("B1", ctypes.c_float),
                 ("B2", ctypes.c_float), ("eps", ctypes.c_float)]
    _fields_ += [(k, ctypes.c_int) for k in ("inputs", "outputs", "truths", "notruth", "h", "w",
                                             "c", "max_crop", "min_crop")]
    _fields_ += [("max_ratio", ctypes.c_float), ("min_ratio", ctypes.c_float),
                 ("center", ctypes.c_int)]
    _fields_ += [(k, ctypes.c_float) for k in ("angle", "aspect", "exposure", "saturation",
                                               "hue")]
    _fields_ += [("random", ctypes.c_int), ("gpu_index", ctypes.c_int),
                 ("hierarchy", ctypes.c_void_p)]
    _fields_ += [(k, ctypes.POINTER(ctypes.c_float)) for k in ("input", "truth", "delta",
                                                               "workspace")]
    _fields_ += [("train", ctypes.c_int), ("index", ctypes.c_int),
                 ("cost", ctypes.POINTER(ctypes.c_float)), ("clip", ctypes.c_float)]


def darknet():
    lib = ctypes.CDLL(LIB)
    # Debian builds libdarknet with -Ofast: loading it runs crtfastmath's constructor, which
    # flushes subnormal floats to zero (FTZ/DAZ) for the whole process, so every test after
    # this one would compute differently. Put the default floating-point environment back.
    libm = ctypes.CDLL("libm.so.6")
    libm.fesetenv.argtypes = [ctypes.c_void_p]
    libm.fesetenv(ctypes.c_void_p(-1))                            # FE_DFL_ENV
    assert np.float32(1e-40) * np.float32(1) != 0, "subnormals still flushed after darknet"
    lib.load_network.restype = ctypes.POINTER(Network)
    lib.load_network.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    lib.parse_network_cfg.restype = ctypes.POINTER(Network)
    lib.parse_network_cfg.argtypes = [ctypes.c_char_p]
    lib.network_predict.restype = ctypes.POINTER(ctypes.c_float)
    lib.network_predict.argtypes = [ctypes.POINTER(Network), ctypes.POINTER(ctypes.c_float)]
    lib.forward_network.argtypes = [ctypes.POINTER(Network)]
    lib.backward_network.argtypes = [ctypes.POINTER(Network)]
    lib.free_network.argtypes = [ctypes.POINTER(Network)]
    return lib


def _floats(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def darknet_forward(cfg, weights, x):
    """Darknet's network_predict on one CHW float32 image."""
    lib = darknet()
    net = lib.load_network(cfg.encode(), weights.encode(), 0)
    try:
        n = net.contents.outputs
        x = np.ascontiguousarray(x, np.float32)
        return np.ctypeslib.as_array(lib.network_predict(net, _floats(x)), (n,)).copy()
    finally:
        lib.free_network(net)


@needs_darknet
def test_small_net_matches_darknet(tmp_path):
    """Every converted piece at once: conv + BN + leaky, maxpool, strided conv with bias and
    logistic, connected + BN + leaky, dropout, connected, detection; a nearly dead channel in
    each batch norm (Caffe's eps-inside-sqrt would be off by a factor of 300 there)."""
    cfg, weights, net, _ = converted(tmp_path, SMALL_CFG)
    x = np.random.default_rng(1).random((3, 20, 20), np.float32)
    want = darknet_forward(cfg, weights, x)
    got = net.forward(data=x[None])["detection"][0]
    assert want.shape == got.shape == (52,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@needs_darknet
@pytest.mark.parametrize("header", [(0, 1, 0), (0, 2, 0), (1001, 0, 0)],
                         ids=["seen-int32", "seen-int64", "transposed"])
def test_weights_headers_match_darknet(tmp_path, header):
    text = "[net]\nheight=4\nwidth=4\nchannels=2\n[connected]\noutput=6\nactivation=linear\n"
    cfg, weights, net, _ = converted(tmp_path, text, header=header)
    x = np.random.default_rng(2).random((2, 4, 4), np.float32)
    np.testing.assert_allclose(net.forward(data=x[None])["fc0"][0],
                               darknet_forward(cfg, weights, x), rtol=1e-5, atol=1e-6)


@needs_darknet
def test_yolov1_tiny_layout_matches_darknet(tmp_path):
    """Debian's yolov1-tiny.cfg (BN convs 16..1024, 256, connected 1470, detection), at a
    64 x 64 input to stay quick: the same layers, weights and file layout as at 448."""
    with open(os.path.join(CFG_DIR, "yolov1-tiny.cfg")) as f:
        text = f.read()
    text = re.sub(r"(?m)^(height|width)=448", r"\1=64", text)
    cfg, weights, net, _ = converted(tmp_path, text)
    types = [layer.type for layer in net.layers]
    assert types.count("Convolution") == 8 and types.count("BatchNorm") == 8
    assert types[-2:] == ["InnerProduct", "Detection"]
    x = np.random.default_rng(3).random((3, 64, 64), np.float32)
    want = darknet_forward(cfg, weights, x)
    got = net.forward(data=x[None])["detection"][0]
    assert got.shape == (1470,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@needs_darknet
@pytest.mark.parametrize("rescore, sqrt", [(1, 1), (0, 0)])
def test_loss_matches_darknets_detection_layer(tmp_path, rescore, sqrt):
    """Darknet's own forward_detection_layer (forward and backward of a net of one [detection]
    layer): its delta is minus N times minicnn's gradient and its cost sum(delta^2)."""
    side, num, classes, batch = 3, 2, 4, 3
    d = side * side * (classes + num * 5)
    cfg = tmp_path / "det.cfg"
    cfg.write_text(f"[net]\nbatch={batch}\nheight=1\nwidth=1\nchannels={d}\n[detection]\n"
                   f"classes={classes}\ncoords=4\nrescore={rescore}\nside={side}\nnum={num}\n"
                   f"sqrt={sqrt}\nobject_scale=1.5\nnoobject_scale=.5\nclass_scale=1\n"
                   "coord_scale=5\n")
    rng = np.random.default_rng(4)
    labels = np.full((batch, 5, 5), -1.0)
    for b in range(batch):
        for k in range(b + 2):
            labels[b, k] = [rng.integers(classes), *rng.uniform(0.05, 0.95, 2),
                            *rng.uniform(0.05, 0.6, 2)]
    truth = detection_truth(labels, side, classes).astype(np.float32)
    x = rng.uniform(0.05, 0.95, (batch, d)).astype(np.float32)
    lib = darknet()
    net = lib.parse_network_cfg(str(cfg).encode())
    address = (lambda p: ctypes.cast(p, ctypes.c_void_p).value)   # a copy, not a view
    own = address(net.contents.input), address(net.contents.truth)  # free_network frees them
    try:
        assert (net.contents.n, net.contents.batch, net.contents.inputs) == (1, batch, d)
        delta = np.zeros((batch, d), np.float32)
        net.contents.input, net.contents.truth = _floats(x), _floats(truth)
        net.contents.delta = _floats(delta)
        net.contents.train = 1
        lib.forward_network(net)                 # the loss, into the layer's delta and cost
        lib.backward_network(net)                # the delta, added into net->delta
        cost = net.contents.cost[0]
    finally:
        net.contents.input, net.contents.truth = (ctypes.cast(a, ctypes.POINTER(ctypes.c_float))
                                                  for a in own)
        net.contents.delta = None
        lib.free_network(net)
    _, ours, _ = detection_loss_forward(x, truth, side=side, num=num, classes=classes,
                                           sqrt=bool(sqrt), rescore=bool(rescore),
                                           object_scale=1.5, noobject_scale=0.5,
                                           class_scale=1.0, coord_scale=5.0)
    assert truth[:, :, 0].sum() >= 6
    np.testing.assert_allclose(ours, delta, rtol=1e-5, atol=1e-6)
    assert cost == pytest.approx(float(np.sum(delta.astype(np.float64) ** 2)), rel=1e-5)


@needs_darknet
def test_truth_grid_matches_darknets_fill_truth_region(tmp_path):
    """Darknet's truth of one label file (no jitter, no flip): boxes crossing the image's edges
    are clipped before they are placed, tiny ones (after clipping) dropped."""
    lib = darknet()
    lib.fill_truth_region.argtypes = ([ctypes.c_char_p, ctypes.POINTER(ctypes.c_float)]
                                      + [ctypes.c_int] * 3 + [ctypes.c_float] * 4)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    side, classes = 4, 3
    rng = np.random.default_rng(6)
    for k in range(40):
        box = [k % classes, *np.round(rng.uniform(-0.1, 1.1, 2), 6),
               *np.round(rng.uniform(0.003, 0.9, 2), 6)]
        (tmp_path / "labels" / "a.txt").write_text(" ".join(map(str, box)) + "\n")
        want = np.zeros((1, side * side, 5 + classes), np.float32)
        lib.fill_truth_region(str(tmp_path / "images" / "a.jpg").encode(), _floats(want),
                              classes, side, 0, 0, 0, 1, 1)
        got = detection_truth(np.array([[box]], np.float32), side, classes)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=str(box))


# --- without Darknet: the formulas -------------------------------------------------------------

def _leaky(v):
    return np.where(v > 0, v, 0.1 * v)


def test_batch_norm_folding_is_exact(tmp_path):
    """conv + BN (eps after the square root) + leaky, computed as Darknet's forward does."""
    text = ("[net]\nheight=5\nwidth=5\nchannels=2\n[convolutional]\nbatch_normalize=1\n"
            "filters=3\nsize=1\nstride=1\npad=1\nactivation=leaky\n")
    _, _, net, values = converted(tmp_path, text)
    biases, scales, mean, var = (values[3 * k:3 * k + 3].astype(np.float64) for k in range(4))
    w = values[12:].reshape(3, 2).astype(np.float64)
    assert var[0] == np.float32(1e-10)                        # the nearly dead channel
    x = np.random.default_rng(5).random((1, 2, 5, 5))
    conv = np.einsum("fc,nchw->nfhw", w, x)
    norm = (conv - mean[:, None, None]) / (np.sqrt(var) + 1e-6)[:, None, None]
    want = _leaky(norm * scales[:, None, None] + biases[:, None, None])
    got = net.forward(data=x.astype(np.float32))["conv0"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    caffe_eps = (conv - mean[:, None, None]) / np.sqrt(var + 1e-5)[:, None, None]
    assert not np.allclose(caffe_eps[:, 0] * scales[0], norm[:, 0] * scales[0], rtol=0.5)


def test_transposed_connected_weights(tmp_path):
    text = "[net]\nheight=1\nwidth=1\nchannels=3\n[connected]\noutput=2\nactivation=linear\n"
    _, _, net, values = converted(tmp_path, text, header=(1001, 0, 0))
    stored = values[2:].reshape(3, 2)                        # (inputs, outputs) when transposed
    np.testing.assert_array_equal(net.params["fc0"][0].data, stored.T)


def test_header_sizes(tmp_path):
    for header, offset, seen in (((0, 1, 0), 16, 12345), ((0, 2, 0), 20, 12345),
                                 ((1, 0, 0), 20, 12345), ((1001, 0, 0), 16, 12345)):
        path = tmp_path / "w"
        major, minor, _ = header
        wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
        path.write_bytes(np.array(header, "<i4").tobytes()
                         + np.array([seen], "<u8" if wide else "<i4").tobytes() + bytes(8))
        r = WeightsReader(str(path))
        assert (r.offset, r.seen, r.transpose) == (offset, seen, major > 1000)


def test_header_cut_inside_a_64_bit_seen(tmp_path):
    """16 to 19 bytes: enough for an int32 seen but not for the int64 one of version 0.2."""
    path = tmp_path / "w"
    for extra in (0, 3):
        path.write_bytes(np.array([0, 2, 0, 7], "<i4").tobytes() + bytes(extra))
        with pytest.raises(DarknetError, match=f"ends at byte {16 + extra} inside the header"):
            WeightsReader(str(path))


def test_errors_name_the_place(tmp_path):
    cfg = tmp_path / "a.cfg"
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=1\n[convolutional]\nfilters=2\nsize=3\n")
    weights = tmp_path / "a.weights"
    weights.write_bytes(np.array([0, 2, 0, 0, 0], "<i4").tobytes() + bytes(4 * 5))
    with pytest.raises(DarknetError, match=r"ends at byte 40 while reading the weights of "
                                           "conv0 \\(18 floats"):
        convert_darknet(str(cfg), str(weights), str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o" / "a.prototxt")
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=1\n\n[deconvolutional]\nsize=3\n")
    with pytest.raises(DarknetError, match=r"a\.cfg:6: \[deconvolutional\]: this kind of section"):
        convert_darknet(str(cfg), str(weights), str(tmp_path / "o"))
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=1\nfilters 3\n")
    with pytest.raises(DarknetError, match=r"a\.cfg:5: expected \[section\] or key=value"):
        read_cfg(str(cfg))
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=1\n[maxpool]\nsize=1\nstride=1\n"
                   "padding=1\n")
    with pytest.raises(DarknetError, match="gives 9x9 in Darknet; Caffe's pooling cannot"):
        convert_darknet(str(cfg), str(weights), str(tmp_path / "o"))
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=1\n[convolutional]\nactivation=swish\n")
    weights.write_bytes(np.array([0, 2, 0, 0, 0], "<i4").tobytes() + bytes(4 * 2))
    with pytest.raises(DarknetError, match="activation=swish"):
        convert_darknet(str(cfg), str(weights), str(tmp_path / "o"))


LOCAL_CFG = """[net]
height=12
width=10
channels=8

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[local]
size=3
stride=1
pad=1
filters=5
activation=leaky

[local]
size=2
stride=2
pad=0
filters=3
activation=linear

[connected]
output=7
activation=linear
"""


@needs_darknet
def test_local_layers_match_darknet(tmp_path):
    """[local] with pad=1 (size 3, the shape YOLOv1 uses) and without padding at stride 2:
    weights per place and a bias per output value, in Darknet's order. (8 input channels: a
    [local] in Darknet does not size the shared workspace, so the convolution before must.)"""
    cfg, weights, net, _ = converted(tmp_path, LOCAL_CFG, dead=False)
    assert [layer.type for layer in net.layers].count("Local") == 2
    assert net.params["local1"][0].shape == (120, 5, 36)
    assert net.params["local2"][1].shape == (3, 6, 5)
    x = np.random.default_rng(13).random((8, 12, 10), np.float32)
    want = darknet_forward(cfg, weights, x)
    np.testing.assert_allclose(net.forward(data=x[None])["fc3"][0], want, rtol=1e-5,
                               atol=1e-6)


@needs_darknet
def test_yolov1_full_cfg_matches_darknet(tmp_path):
    """Debian's yolov1.cfg (24 convolutions, the [local] layer, dropout, connected 1715,
    detection), at a 64 x 64 input to stay quick: its [local] then works on a 1 x 1 map."""
    with open(os.path.join(CFG_DIR, "yolov1.cfg")) as f:
        text = re.sub(r"(?m)^(height|width)=448", r"\1=64", f.read())
    cfg, weights, net, _ = converted(tmp_path, text, dead=False)
    types = [layer.type for layer in net.layers]
    assert types.count("Local") == 1 and types[-1] == "Detection"
    x = np.random.default_rng(14).random((3, 64, 64), np.float32)
    want = darknet_forward(cfg, weights, x)
    got = net.forward(data=x[None])["detection"][0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_convert_command(tmp_path, capsys):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    random_weights(str(cfg), str(tmp_path / "small.weights"))
    assert main(["convert", "darknet", str(cfg), str(tmp_path / "small.weights"),
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "small.prototxt" in out and "small.caffemodel" in out and "--rgb" in out
    net = minicnn.Net(str(tmp_path / "out" / "small.prototxt"),
                      weights=str(tmp_path / "out" / "small.caffemodel"), phase=minicnn.TEST)
    p = net.layer_dict["detection"].param.detection_param
    assert (p.side, p.num, p.classes, p.sqrt, p.rescore) == (2, 2, 3, True, True)
    assert (p.noobject_scale, p.coord_scale) == (0.5, 5.0)
    # values that six significant digits would round: Darknet keeps float(atof(text))
    cfg.write_text(SMALL_CFG.replace("probability=.5", "probability=.123456789")
                   .replace("noobject_scale=.5", "noobject_scale=0.30000012"))
    assert main(["convert", "darknet", str(cfg), str(tmp_path / "small.weights"),
                 str(tmp_path / "out")]) == 0
    net = minicnn.Net(str(tmp_path / "out" / "small.prototxt"), phase=minicnn.TEST)
    assert net.layer_dict["detection"].param.detection_param.noobject_scale == \
        np.float32(0.30000012)
    drop = next(layer for layer in net.layers if layer.type == "Dropout")
    assert drop.param.dropout_param.dropout_ratio == np.float32(0.123456789)
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nheight=1\n")
    assert main(["convert", "darknet", str(bad), str(tmp_path / "small.weights"),
                 str(tmp_path / "out")]) == 1
    assert "bad.cfg" in capsys.readouterr().err


# --- YOLOv2 and YOLOv3 nets, and Darknet classifiers ---------------------------------------------

V2_CFG = """[net]
height=32
width=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[maxpool]
size=2
stride=2

[route]
layers=-3

[convolutional]
filters=4
size=1
stride=1
pad=1
activation=leaky

[reorg]
stride=2

[route]
layers=-1,-4

[convolutional]
filters=30
size=1
stride=1
pad=1
activation=linear

[region]
anchors = 0.6,1.1, 2.2,1.9, 1.3,3.5
classes=5
coords=4
num=3
softmax=1
jitter=.3
rescore=1
"""

V3_CFG = """[net]
height=32
width=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=4
size=1
stride=1
pad=1
activation=leaky

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[shortcut]
from=-3
activation=leaky

[convolutional]
filters=12
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-7
activation=linear

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[shortcut]
from=-2
alpha=0.5
beta=2

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 2,3
anchors = 4,5, 7,9, 12,8, 10,14, 20,18
classes=4
num=5
jitter=.3
ignore_thresh = .7

[route]
layers = -3

[upsample]
stride=2

[route]
layers = -1, 6

[convolutional]
filters=27
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 0,1,4
anchors = 4,5, 7,9, 12,8, 10,14, 20,18
classes=4
num=5
"""

CLASSIFIER_CFG = """[net]
height=16
width=16
channels=3

[convolutional]
filters=6
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=3
stride=2
padding=0

[convolutional]
filters=10
size=1
stride=1
pad=1
activation=linear

[avgpool]

[softmax]
groups=1

[cost]
type=sse
"""


def _outputs_of_darknet_layers(cfg_text, tmp_path, cut_after):
    """A cfg ending after section ``cut_after`` (0-based, after [net]): Darknet's output there."""
    sections = re.split(r"(?m)^(?=\[)", cfg_text)
    return "".join(sections[:cut_after + 3])        # "" before [net], [net], 0..cut_after


@needs_darknet
@pytest.mark.parametrize("which", ["v2", "v3-first-head", "v3", "classifier"])
def test_yolov2_v3_and_classifier_pieces_match_darknet(tmp_path, which):
    """route (one layer and a concat), reorg, maxpool size 2 stride 1 (Darknet pads only the
    bottom and right: a padded Caffe pooling and a Crop) and size 3 stride 2 without padding
    (Darknet's floor: round_mode FLOOR), region with softmax; shortcuts of equal shapes, from
    fewer channels (the rest pass), from more (cut), from a larger map (every 2nd place),
    alpha/beta, activation after; upsample; yolo heads with masks; avgpool, softmax, cost."""
    text = {"v2": V2_CFG, "v3": V3_CFG, "classifier": CLASSIFIER_CFG,
            "v3-first-head": _outputs_of_darknet_layers(V3_CFG, tmp_path, 11)}[which]
    cfg, weights, net, _ = converted(tmp_path, text, dead=False)
    x = np.random.default_rng(7).random((3, 32, 32) if "v" in which else (3, 16, 16),
                                        np.float32)
    want = darknet_forward(cfg, weights, x)
    last = net.layers[-1]
    got = net.forward(data=x[None])[net.top_names[last.name][0]][0].ravel()
    expected_type = {"v2": "Region", "v3": "Yolo", "v3-first-head": "Yolo",
                     "classifier": "Softmax"}[which]
    assert last.type == expected_type and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    types = [layer.type for layer in net.layers]
    if which == "classifier":
        assert net.layer_dict["pool1"].param.pooling_param.round_mode == "FLOOR"
    if which == "v2":
        assert types.count("Crop") == 1 and types.count("Reorg") == 1 and "Concat" in types
    if which == "v3":
        assert types.count("Yolo") == 2 and {"Slice", "Crop", "Upsample"} <= set(types)


@needs_darknet
@pytest.mark.parametrize("name", ["yolov2-tiny-voc.cfg", "yolov3-tiny.cfg"])
def test_debian_yolo_cfgs_match_darknet(tmp_path, name):
    """Debian's tiny YOLOv2 (VOC) and YOLOv3 cfgs at a 64 x 64 input (their layers, weights
    layout and heads as at 416)."""
    with open(os.path.join(CFG_DIR, name)) as f:
        text = re.sub(r"(?m)^(height|width)=\d+", r"\1=64", f.read())
    cfg, weights, net, _ = converted(tmp_path, text, dead=False)
    x = np.random.default_rng(8).random((3, 64, 64), np.float32)
    want = darknet_forward(cfg, weights, x)
    outs = net.forward(data=x[None])
    got = outs[net.top_names[net.layers[-1].name][0]].ravel()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert len(outs) == (2 if "v3" in name else 1)


class Box(ctypes.Structure):
    _fields_ = [(k, ctypes.c_float) for k in ("x", "y", "w", "h")]


class Detection(ctypes.Structure):
    _fields_ = [("bbox", Box), ("classes", ctypes.c_int), ("prob", ctypes.POINTER(ctypes.c_float)),
                ("mask", ctypes.POINTER(ctypes.c_float)), ("objectness", ctypes.c_float),
                ("sort_class", ctypes.c_int)]


class Image(ctypes.Structure):
    _fields_ = [("w", ctypes.c_int), ("h", ctypes.c_int), ("c", ctypes.c_int),
                ("data", ctypes.POINTER(ctypes.c_float))]


def detector_api(lib):
    """``lib`` with the types of `detector test`'s calls (letterbox_image, get_network_boxes,
    do_nms_sort and the frees) declared."""
    lib.letterbox_image.restype = Image
    lib.letterbox_image.argtypes = [Image, ctypes.c_int, ctypes.c_int]
    lib.get_network_boxes.restype = ctypes.POINTER(Detection)
    lib.get_network_boxes.argtypes = [ctypes.POINTER(Network), ctypes.c_int, ctypes.c_int,
                                      ctypes.c_float, ctypes.c_float, ctypes.c_void_p,
                                      ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.do_nms_sort.argtypes = [ctypes.POINTER(Detection), ctypes.c_int, ctypes.c_int,
                                ctypes.c_float]
    lib.free_detections.argtypes = [ctypes.POINTER(Detection), ctypes.c_int]
    lib.free_image.argtypes = [Image]
    return lib


def darknet_detect(cfg, weights, rgb, thresh, nms, classes):
    """Darknet's `detector test` on an H x W x 3 uint8 RGB image: letterbox_image,
    network_predict, get_network_boxes (relative), do_nms_sort; the boxes in pixels that
    draw_detections would report: [(class, prob, x0, y0, x1, y1)]."""
    lib = detector_api(darknet())
    h, w, _ = rgb.shape
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / np.float32(255)
    im = Image(w, h, 3, _floats(planes))
    net = lib.load_network(cfg.encode(), weights.encode(), 0)
    try:
        sized = lib.letterbox_image(im, net.contents.w, net.contents.h)
        lib.network_predict(net, sized.data)
        lib.free_image(sized)
        count = ctypes.c_int(0)
        dets = lib.get_network_boxes(net, w, h, thresh, 0.5, None, 1, ctypes.byref(count))
        total, found = count.value, []                  # (a region's dets leave classes 0:
        lib.do_nms_sort(dets, total, classes, nms)       # detector.c passes the last layer's)
        for k in range(total):
            b = dets[k].bbox
            for j in range(classes):
                if dets[k].prob[j] > thresh:
                    corners = np.clip([(b.x - b.w / 2) * w, (b.y - b.h / 2) * h,
                                       (b.x + b.w / 2) * w, (b.y + b.h / 2) * h], 0, [w, h, w, h])
                    found.append((j, dets[k].prob[j], *corners))
        lib.free_detections(dets, total)
        return sorted(found)
    finally:
        lib.free_network(net)


@needs_darknet
def test_resize_matches_darknets_resize_image():
    """minicnn.darknet.darknet_resize against libdarknet's resize_image, bit for bit: up, down,
    one row or column in, and sizes whose last row's source rounds below the edge."""
    lib = darknet()
    lib.resize_image.restype = Image
    lib.resize_image.argtypes = [Image, ctypes.c_int, ctypes.c_int]
    lib.free_image.argtypes = [Image]
    rng = np.random.default_rng(10)
    for (h, w), (oh, ow) in [((29, 45), (32, 49)), ((29, 45), (12, 20)), ((7, 3), (300, 416)),
                             ((1, 5), (4, 9)), ((6, 1), (3, 7)), ((5, 8), (2, 2)),
                             ((8, 9), (24, 42)),       # (7/23) * 23 < 7 in float32, so do the
                             ((9, 8), (42, 24)),       # last row and column's sources
                             ((375, 500), (312, 416)), ((480, 640), (312, 416))]:
        image = rng.random((3, h, w), np.float32)
        resized = lib.resize_image(Image(w, h, 3, _floats(image)), ow, oh)
        want = np.ctypeslib.as_array(resized.data, (3 * oh * ow,)).reshape(3, oh, ow).copy()
        lib.free_image(resized)
        np.testing.assert_array_equal(darknet_resize(image, oh, ow), want, err_msg=f"{h}x{w}")
    lib.letterbox_image.restype = Image                      # and the whole input of a net
    lib.letterbox_image.argtypes = [Image, ctypes.c_int, ctypes.c_int]
    rgb = rng.integers(0, 256, (3, 29, 45), dtype=np.uint8)
    planes = rgb.astype(np.float32) / np.float32(255)          # stb_image's pixel / 255.
    boxed = lib.letterbox_image(Image(45, 29, 3, _floats(planes)), 64, 48)
    want = np.ctypeslib.as_array(boxed.data, (3 * 48 * 64,)).reshape(3, 48, 64).copy()
    lib.free_image(boxed)
    got = minicnn.detection.net_input(rgb, 48, 64, letterbox=True, darknet_resize=True)
    np.testing.assert_array_equal(got, want)


def assert_same_detections(got, want, unsuppressed=None):
    """minicnn.detect's list against darknet_detect's rows, one to one: each of Darknet's
    (class, prob, corners) has one of minicnn's with the same class within 1e-4 (equal scores
    make the order of the two lists arbitrary). The engines' outputs differ in the last bits
    (summation order), so two boxes of a class whose scores are closer than that could swap
    in NMS: the images are chosen so the scores before NMS (``unsuppressed``) are 1e-6 apart
    or equal (boxes over the letterbox's flat gray: equal in both engines, kept in the same
    order by the stable sorts of both, glibc's qsort being a merge sort)."""
    for c in {d["class"] for d in unsuppressed or []}:
        gaps = np.diff(np.sort([d["score"] for d in unsuppressed if d["class"] == c]))
        assert not np.any((gaps > 0) & (gaps <= 1e-6)), "a near-tie: NMS could go either way"
    left = [(d["class"], d["score"], *d["box"]) for d in got]
    assert len(left) == len(want)
    for row in want:
        same = [g for g in left if g[0] == row[0]]
        assert same, row
        best = min(same, key=lambda g: np.abs(np.subtract(g[1:], row[1:])).max())
        np.testing.assert_allclose(best[1:], row[1:], rtol=1e-4, atol=1e-3)
        left.remove(best)


@needs_darknet
@pytest.mark.parametrize("which", ["v2", "v3"])
def test_detections_match_darknets_detector_test(tmp_path, which):
    """minicnn.detect on a converted net against Darknet's own pipeline, on an image whose
    letterbox needs no resizing (64 x 32 into 32 x 32 would; 32 x 16 does not), so both feed
    the same input: the boxes (anchors, masks, letterbox correction), the thresholding and the
    per-class NMS agree, and some boxes are suppressed."""
    cfg, weights, net, _ = converted(tmp_path, V2_CFG if which == "v2" else V3_CFG, dead=False)
    rgb = np.random.default_rng(10).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    thresh, nms = (0.1 if which == "v2" else 0.3), 0.3
    want = darknet_detect(cfg, weights, rgb, thresh, nms, 5 if which == "v2" else 4)
    got = minicnn.detect(net, rgb, thresh=thresh, nms=nms, rgb=True)
    assert len(want) >= 3, want
    unsuppressed = minicnn.detect(net, rgb, thresh=thresh, nms=1.0, rgb=True)
    assert_same_detections(got, want, unsuppressed)
    assert len(unsuppressed) > len(got)
    odd = np.random.default_rng(14).integers(0, 256, (29, 45, 3), dtype=np.uint8)
    want_odd = darknet_detect(cfg, weights, odd, thresh, nms, 5 if which == "v2" else 4)
    assert len(want_odd) >= 3                                  # resized as Darknet resizes:
    assert_same_detections(minicnn.detect(net, odd, thresh=thresh, nms=nms, rgb=True), want_odd,
                           minicnn.detect(net, odd, thresh=thresh, nms=1.0, rgb=True))
    from PIL import Image as PILImage
    PILImage.fromarray(rgb).save(tmp_path / "street.png")
    assert main(["detect", "--model", str(tmp_path / "out" / "net.prototxt"), "--weights",
                 str(tmp_path / "out" / "net.caffemodel"), "--rgb", "--thresh", str(thresh),
                 "--nms", str(nms), "--out", str(tmp_path / "found"),
                 str(tmp_path / "street.png")]) == 0
    import json
    with open(tmp_path / "found" / "detections.json") as f:
        assert len(json.load(f)[0]["detections"]) == len(want)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    PILImage.fromarray(rgb).save(tmp_path / "images" / "a.png")
    best = max(((d["class"], d["score"], *d["box"]) for d in got), key=lambda g: g[1])
    # a truth where the best box is: AP 1 there
    x0, y0, x1, y1 = (v / s for v, s in zip(best[2:], (32, 16, 32, 16)))
    (tmp_path / "labels" / "a.txt").write_text(
        f"{best[0]} {(x0 + x1) / 2} {(y0 + y1) / 2} {x1 - x0} {y1 - y0}\n")
    result, _ = minicnn.detection.evaluate_images(net, [str(tmp_path / "images" / "a.png")],
                                                  rgb=True, progress=False)
    ap = {e["class"]: e["ap_allpoint"] for e in result["classes"]}
    assert ap[best[0]] == 1.0 and len(ap) == (5 if which == "v2" else 4)


def test_errors_of_the_v2_v3_sections(tmp_path):
    def build_text(text):
        cfg = tmp_path / "e.cfg"
        cfg.write_text(text)
        return build(read_cfg(str(cfg)), _Recorder())
    head = "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=4\nsize=1\n"
    with pytest.raises(DarknetError, match=r"e\.cfg:8: \[route\]: layer -3 \(index -2\) is not "
                                           r"an earlier layer"):
        build_text(head + "[route]\nlayers=-3\n")
    with pytest.raises(DarknetError, match=r"\[region\]: num 1 x \(coords 4 \+ 1 \+ classes "
                                           r"20\) channels, but the layer before gives 4x8x8"):
        build_text(head + "[region]\n")
    with pytest.raises(DarknetError, match=r"mask 0,5 names anchors outside 0\.\.1"):
        build_text(head + "[yolo]\nmask=0,5\nnum=2\n")
    with pytest.raises(DarknetError, match=r"e\.cfg:8: \[region\]: tree=data/9k\.tree: no such "
                                           "file"):
        build_text(head + "[region]\ntree=data/9k.tree\n")
    with pytest.raises(DarknetError, match=r"adds a 4x4x4 output to a 4x8x8 one.* the same size "
                                           "or a whole multiple"):
        build_text(head + "[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0\n[shortcut]\n"
                   "from=-2\n")
    with pytest.raises(DarknetError, match=r"adds a 4x8x8 output to a 4x3x3 one"):
        build_text(head + "[maxpool]\nsize=3\nstride=3\n[shortcut]\nfrom=0\n")


def test_detect_reads_a_loss_form_head_as_its_deploy_twin(tmp_path):
    """A Region/Yolo head given the box lists is a loss whose top is the loss: detect
    activates its bottom instead, and finds what the deploy net finds."""
    for name, text in (("v2", V2_CFG), ("v3", V3_CFG)):
        folder = tmp_path / name
        folder.mkdir()
        _, _, deploy, _ = converted(folder, text, dead=False)
        prototxt = (folder / "out" / "net.prototxt").read_text()
        heads = re.findall(r'type: "(?:Region|Yolo)"\n  bottom: "[^"]+"', prototxt)
        assert heads
        for head in heads:
            prototxt = prototxt.replace(head, head + '\n  bottom: "boxes"')
        prototxt = prototxt.replace('layer {\n  name: "data"', 'input: "boxes" input_shape { '
                                    'dim: 1 dim: 2 dim: 5 }\nlayer {\n  name: "data"', 1)
        (folder / "train.prototxt").write_text(prototxt)
        train = minicnn.Net(str(folder / "train.prototxt"),
                            weights=str(folder / "out" / "net.caffemodel"), phase=minicnn.TEST)
        assert all(layer.is_loss for layer in train.layers if layer.type in ("Region", "Yolo"))
        rgb = np.random.default_rng(12).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        thresh = 0.1 if name == "v2" else 0.3
        want = minicnn.detect(deploy, rgb, thresh=thresh, rgb=True)
        assert want and minicnn.detect(train, rgb, thresh=thresh, rgb=True) == want


TYPO_CFG = """[net]
height=8
width=8
channels=3

[convolutional]
filter=4
size=3
stride=1
pad=1
dot=0.1
activation=leaky

[maxpool]
size=2
stide=2

[connected]
ouput=5
activation=linear

[softmax]
spatial=0
"""


@needs_darknet
def test_misspelt_keys_warn_as_darknets_unused_field(tmp_path, capfd):
    # a misspelt key takes the default silently (filters=1 for 'filter=4'); Darknet prints
    # "Unused field: 'filter = 4'" for each key its parser did not read, minicnn warns for the
    # same keys with the cfg's line
    cfg = tmp_path / "typo.cfg"
    cfg.write_text(TYPO_CFG)
    lib = darknet()
    lib.parse_network_cfg(str(cfg).encode())
    unused = re.findall(r"Unused field: '(\w+) = (\S+)'", capfd.readouterr().err)
    assert unused == [("filter", "4"), ("stide", "2"), ("ouput", "5")]
    weights = tmp_path / "typo.weights"
    with pytest.warns(UserWarning):                   # random_weights builds the net too
        random_weights(str(cfg), str(weights))
    with pytest.warns(UserWarning) as record:
        convert_darknet(str(cfg), str(weights), str(tmp_path / "out"))
    lines = {"filter": 7, "stide": 16, "ouput": 19}
    kinds = {"filter": "convolutional", "stide": "maxpool", "ouput": "connected"}
    assert [str(w.message) for w in record] == [
        f"{cfg}:{lines[k]}: [{kinds[k]}]: unused field '{k}={v}' (not a key of this section "
        "that minicnn converts: misspelt? Darknet prints 'Unused field' too)" for k, v in unused]


def test_debian_cfgs_have_no_unused_fields_and_wrong_inputs_say_so(tmp_path):
    import warnings
    if os.path.isdir(CFG_DIR):
        for name in sorted(os.listdir(CFG_DIR)):
            if name.endswith(".cfg"):
                with warnings.catch_warnings(record=True) as record:
                    warnings.simplefilter("always")
                    try:
                        build(read_cfg(os.path.join(CFG_DIR, name)), _Recorder())
                    except DarknetError:
                        pass                      # rnn.cfg, ...: refused, not warned
                assert not [w for w in record if "unused field" in str(w.message)], name
    cfg = tmp_path / "a.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=1\n[convolutional]\nflipped=1\n")
    with pytest.raises(DarknetError, match=r"a\.cfg:5: \[convolutional\]: flipped=1"):
        build(read_cfg(str(cfg)), _Recorder())
    weights = tmp_path / "a.weights"           # the arguments swapped: the .weights as the cfg
    weights.write_bytes(np.array([0, 2, 0, 0, 0], "<i4").tobytes()
                        + np.arange(-9, 1, dtype="<f4").tobytes())
    with pytest.raises(DarknetError, match=r"a\.weights: this is not a text cfg \(a binary "
                                           r"file: the \.weights\? the arguments are: cfg "
                                           r"weights outdir\)"):
        convert_darknet(str(weights), str(cfg), str(tmp_path / "o"))
    with pytest.raises(DarknetError, match=r"model\.prototxt: the third argument is a folder"):
        convert_darknet(str(cfg), str(weights), str(tmp_path / "model.prototxt"))
    assert not (tmp_path / "model.prototxt").exists()
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=1\n[convolutional]\nfilters=2\n"
                   "batch_normalize=1\n")
    with pytest.raises(DarknetError, match=r"a\.weights: layer conv0 has a negative rolling "
                                           r"variance: the weights do not match the cfg"):
        convert_darknet(str(cfg), str(weights), str(tmp_path / "o"))


def test_a_cfg_saved_by_a_windows_editor_reads_the_same(tmp_path):
    # Notepad writes a UTF-8 byte order mark and CRLF line ends; the prototxt reader takes the
    # mark, the cfg reader said "a.cfg:1: expected [section] or key=value, got '\ufeff[net]'"
    plain, windows = tmp_path / "plain.cfg", tmp_path / "windows.cfg"
    plain.write_text(SMALL_CFG)
    windows.write_bytes(b"\xef\xbb\xbf" + SMALL_CFG.replace("\n", "\r\n").encode())
    want, got = (build(read_cfg(str(p)), _Recorder())[0] for p in (plain, windows))
    assert got.replace("windows", "plain") == want and "Convolution" in want


def test_convert_command_on_a_classifier_names_classifys_flags(tmp_path, capsys):
    # a converted classifier takes RGB in [0, 1]: `minicnn classify` with those flags runs it
    # (the hint was `minicnn detect --rgb`, a detector's command; classify's defaults feed
    # BGR x 255 minus ImageNet's mean, silently)
    cfg = tmp_path / "c.cfg"
    cfg.write_text(CLASSIFIER_CFG)
    random_weights(str(cfg), str(tmp_path / "c.weights"))
    assert main(["convert", "darknet", str(cfg), str(tmp_path / "c.weights"),
                 str(tmp_path / "out")]) == 0
    hint = "minicnn classify --channel-swap none --raw-scale 1 --mean none"
    out = capsys.readouterr().out
    header = (tmp_path / "out" / "c.prototxt").read_text().split("\nname:")[0]
    for said in (out, header):
        assert hint in said and "detect --rgb" not in said, said

def test_detect_without_rgb_on_a_converted_net_says_to_give_it(tmp_path, capsys):
    # a converted net takes RGB; forgetting --rgb feeds BGR and gives other boxes, silently
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    random_weights(str(cfg), str(tmp_path / "small.weights"))
    assert main(["convert", "darknet", str(cfg), str(tmp_path / "small.weights"),
                 str(tmp_path / "out")]) == 0
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), np.uint8)).save(image)
    model = str(tmp_path / "out" / "small.prototxt")
    argv = ["detect", "--model", model, "--weights", str(tmp_path / "out" / "small.caffemodel"),
            str(image), "--out", str(tmp_path / "d")]
    for flags, noted in (([], True), (["--rgb"], False)):
        capsys.readouterr()
        assert main(argv + flags) == 0
        assert (f"note: {model} was converted from Darknet, whose nets take RGB: give --rgb"
                in capsys.readouterr().err) == noted
    plain = tmp_path / "plain.prototxt"                     # the same net, not the converter's
    plain.write_text((tmp_path / "out" / "small.prototxt").read_text().split("\n", 2)[2])
    argv[2] = str(plain)
    assert main(argv) == 0 and "give --rgb" not in capsys.readouterr().err


@needs_darknet
@pytest.mark.parametrize("which", ["v2", "v3"])
def test_detect_defaults_are_darknets_detector_test(tmp_path, which):
    # `darknet detector test` runs thresh .5 and nms .45 (detector.c); detect's NMS default was
    # YOLOv1's 0.4 for every net, so its boxes differed from Darknet's unless --nms was given
    cfg, weights, net, _ = converted(tmp_path, V2_CFG if which == "v2" else V3_CFG, dead=False)
    classes = 5 if which == "v2" else 4
    kept = {}
    for seed in range(40):                          # an image where 0.4 and 0.45 differ
        rgb = np.random.default_rng(seed).integers(0, 256, (16, 32, 3), dtype=np.uint8)
        for thresh in (0.5, 0.2):
            kept = {nms: minicnn.detect(net, rgb, thresh=thresh, nms=nms, rgb=True)
                    for nms in (0.4, 0.45)}
            if len(kept[0.4]) != len(kept[0.45]):
                break
        else:
            continue
        break
    assert len(kept[0.4]) != len(kept[0.45]), "no image tells 0.4 from 0.45"
    want = darknet_detect(cfg, weights, rgb, thresh, 0.45, classes)
    got = minicnn.detect(net, rgb, thresh=thresh, rgb=True)               # NMS by default
    assert_same_detections(got, want, minicnn.detect(net, rgb, thresh=thresh, nms=1.0, rgb=True))
    if thresh == 0.5:
        assert_same_detections(minicnn.detect(net, rgb, rgb=True), want)   # thresh too
