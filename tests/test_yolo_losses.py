"""YOLOv2's Region and YOLOv3's Yolo training losses (minicnn.ops.yolo_losses) against Darknet's
own forward_region_layer / forward_yolo_layer (Debian's libdarknet, its layer delta and printed
figures read through a small C shim compiled here), finite differences of the loss, and small
converted YOLOv2 / YOLOv3 nets that train."""

import ctypes
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import minicnn
from minicnn.errors import LayerError
from minicnn.layers.detection import RegionLayer, YoloLayer
from minicnn.ops.yolo_losses import _region_loss_forward_ref, _yolo_loss_forward_ref, darknet_truth
from minicnn.testing import check_layer_gradient
from tests.test_darknet import LIB, _floats, darknet

HEADER = "/usr/lib/darknet/include/darknet.h"
needs_darknet = pytest.mark.skipif(
    not (os.path.exists(LIB) and os.path.exists(HEADER) and shutil.which("gcc")),
    reason="Debian's darknet package or gcc is not installed")

SHIM = r"""
#include <stdio.h>
#include "darknet.h"
float *shim_delta(network *net, int i) { return net->layers[i].delta; }
float shim_cost(network *net, int i) { return *net->layers[i].cost; }
void shim_forward(network *net, float *input, float *truth, size_t seen, int w, int h)
{
    float *in = net->input, *tr = net->truth;
    *net->seen = seen;
    net->w = w;
    net->h = h;
    net->input = input;
    net->truth = truth;
    net->train = 1;
    forward_network(net);
    fflush(stdout);
    net->input = in;
    net->truth = tr;
}
void shim_params(network *net, int i, float *out)
{
    layer l = net->layers[i];
    float v[] = {l.thresh, l.ignore_thresh, l.truth_thresh, l.object_scale, l.noobject_scale,
                 l.class_scale, l.coord_scale, l.rescore, l.bias_match, l.max_boxes, l.truths};
    int k;
    for (k = 0; k < 11; ++k) out[k] = v[k];
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shim")
    (folder / "shim.c").write_text(SHIM)
    so = folder / "shim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-I", os.path.dirname(HEADER),
                    str(folder / "shim.c"), "-o", str(so), LIB], check=True)
    lib = darknet()                        # loads libdarknet, puts the FP environment back
    sh = ctypes.CDLL(str(so))
    sh.shim_delta.restype = ctypes.POINTER(ctypes.c_float)
    sh.shim_delta.argtypes = [ctypes.c_void_p, ctypes.c_int]
    sh.shim_cost.restype = ctypes.c_float
    sh.shim_cost.argtypes = [ctypes.c_void_p, ctypes.c_int]
    sh.shim_forward.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_int,
                                ctypes.c_int]
    sh.shim_params.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    return lib, sh


def darknet_layer_loss(shim, capfd, cfg_path, x, truths, seen=0, net_wh=None):
    """Darknet's one-layer net on x (N, C, H, W): (delta, cost, printed figures, its params)."""
    lib, sh = shim
    net = lib.parse_network_cfg(str(cfg_path).encode())
    try:
        n = x.shape[0]
        per = net.contents.truths
        buf = np.zeros((n, per), np.float32)
        for b, boxes in enumerate(truths):
            flat = boxes.reshape(-1)[:per]
            buf[b, :flat.size] = flat
        xin = np.ascontiguousarray(x, np.float32)
        capfd.readouterr()
        w, h = net_wh or (net.contents.w, net.contents.h)
        sh.shim_forward(net, _floats(xin), _floats(buf), seen, w, h)
        printed = capfd.readouterr().out
        delta = np.ctypeslib.as_array(sh.shim_delta(net, 0), (x.size,)).copy().reshape(x.shape)
        cost = sh.shim_cost(net, 0)
        params = np.zeros(11, np.float32)
        sh.shim_params(net, 0, _floats(params))
    finally:
        lib.free_network(net)
    line = printed.strip().splitlines()[-1]
    figures = [float(v) for v in re.findall(r":\s*(-?nan|-?[\d.]+)", line.split("Avg IOU")[1])]
    return delta, cost, np.array(figures), params


def random_truths(rng, n, classes, w, h, boxes=6):
    """Box lists (N, K, 5): several boxes per image, two sharing a cell, one tiny, padding."""
    labels = np.full((n, boxes + 2, 5), -1.0)
    for b in range(n):
        for k in range(boxes):
            labels[b, k] = [rng.integers(classes), *rng.uniform(0.04, 0.96, 2),
                            *rng.uniform(0.05, 0.7, 2)]
        labels[b, 1, 1:3] = labels[b, 0, 1:3] + 0.2 / max(w, h) * rng.uniform(-1, 1, 2)
        labels[b, 2, 3:] = rng.uniform(0.002, 0.02, 2)               # tiny
        labels[b, 1, 1:3] = np.clip(labels[b, 1, 1:3], 0.04, 0.96)
    return labels


def plant(x, a, e, k, j, i, box, cell_w, cell_h, aw, ah):
    """Make anchor k at (j, i) predict ``box`` (x, y, w, h relative) in x (N=1 view)."""
    tx, ty = box[0] * cell_w - i, box[1] * cell_h - j
    x[0, k * e + 0, j, i] = np.log(tx / (1 - tx))
    x[0, k * e + 1, j, i] = np.log(ty / (1 - ty))
    x[0, k * e + 2, j, i] = np.log(box[2] / aw)
    x[0, k * e + 3, j, i] = np.log(box[3] / ah)


# --- Region ------------------------------------------------------------------------------------

REGION_ANCHORS = [[0.6, 1.1], [2.2, 1.9], [1.3, 3.5]]


@needs_darknet
@pytest.mark.parametrize("seen, rescore, softmax, bias_match",
                         [(64, 1, 1, 1), (20000, 1, 1, 1), (64, 0, 0, 0), (20000, 0, 0, 1),
                          (12799, 1, 0, 0), (12800, 1, 0, 0)])   # the warm-up's last image
def test_region_loss_matches_darknet(tmp_path, shim, capfd, seen, rescore, softmax, bias_match):
    n, a, classes, h, w = 3, 3, 4, 5, 6
    e = 5 + classes
    anchors = ", ".join(f"{p:g}" for p in np.ravel(REGION_ANCHORS))
    cfg = tmp_path / "region.cfg"
    cfg.write_text(f"[net]\nbatch={n}\nheight={h}\nwidth={w}\nchannels={a * e}\n[region]\n"
                   f"anchors={anchors}\nclasses={classes}\ncoords=4\nnum={a}\n"
                   f"softmax={softmax}\nrescore={rescore}\nbias_match={bias_match}\n"
                   "object_scale=5\nnoobject_scale=.7\nclass_scale=1.5\ncoord_scale=1.2\n"
                   "thresh=.45\n")
    rng = np.random.default_rng(seen + 10 * rescore + softmax)
    x = rng.normal(0, 1, (n, a * e, h, w)).astype(np.float32)
    labels = random_truths(rng, n, classes, w, h)
    truths = darknet_truth(labels, 30, classes)
    # an anchor that predicts a truth closely: its noobject delta is ignored (IoU > thresh)
    tb = truths[0][0]
    plant(x, a, e, 1, int(tb[1] * h), int(tb[0] * w), tb[:4] * [1, 1, 1.05, 0.95], w, h,
          REGION_ANCHORS[1][0] / w, REGION_ANCHORS[1][1] / h)
    want, cost, printed, params = darknet_layer_loss(shim, capfd, cfg, x, truths, seen)
    assert list(params[[0, 3, 4, 5, 6, 7, 8, 10]]) == pytest.approx(
        [0.45, 5, 0.7, 1.5, 1.2, rescore, bias_match, 150])
    loss, grad, delta, figures = _region_loss_forward_ref(
        x, truths, anchors=np.array(REGION_ANCHORS), classes=classes, softmax=bool(softmax),
        object_scale=5, noobject_scale=0.7, class_scale=1.5, coord_scale=1.2, thresh=0.45,
        rescore=bool(rescore), bias_match=bool(bias_match), seen=seen)
    assert sum(len(t) for t in truths) >= 15
    assert np.count_nonzero(want) > 0
    np.testing.assert_allclose(delta, want, rtol=1e-4, atol=2e-6)
    assert cost == pytest.approx(float(np.sum(want.astype(np.float64) ** 2)), rel=1e-5)
    np.testing.assert_allclose(figures, printed, rtol=0, atol=2e-6)
    # the gradient: -delta / N, through the logistic for x, y and the objectness
    y = 1 / (1 + np.exp(-x.astype(np.float64)))
    chain = np.ones((a, e))
    chain[:, [0, 1, 4]] = 0
    chain = chain.reshape(1, -1, 1, 1) + (1 - chain.reshape(1, -1, 1, 1)) * y * (1 - y)
    np.testing.assert_allclose(grad, -want * chain / n, rtol=1e-3, atol=1e-6)
    assert np.isfinite(loss) and loss > 0


def region_layer(softmax=True, rescore=False, bias_match=True, seen=0):
    return RegionLayer(classes=3, num=3, anchors=list(np.ravel(REGION_ANCHORS)), softmax=softmax,
                       rescore=rescore, bias_match=bias_match, object_scale=5,
                       noobject_scale=0.5, class_scale=1.5, coord_scale=2, seen=seen)


@pytest.mark.parametrize("softmax, seen", [(True, 0), (False, 0), (True, 50000),
                                           (False, 50000)])
def test_region_loss_gradient(softmax, seen):
    """Finite differences of the loss away from decisions (bias_match fixes the responsible
    anchor; no rescore)."""
    rng = np.random.default_rng(11 + softmax + seen)
    x = rng.normal(0, 1, (2, 3 * 8, 3, 4))
    labels = random_truths(rng, 2, 3, 4, 3, boxes=4)
    check_layer_gradient(lambda: region_layer(softmax=softmax, seen=seen), [x, labels],
                         check_bottoms=[0], tops=[0], rtol=1e-5, atol=1e-8)


def test_region_layer_counts_images_for_the_warmup():
    layer = region_layer(seen=12790)
    x = np.zeros((4, 24, 3, 4), np.float32)
    labels = np.full((4, 1, 5), -1.0, np.float32)
    bottom = [minicnn.Blob.from_array(x), minicnn.Blob.from_array(labels)]
    top = [minicnn.Blob(()), minicnn.Blob(())]
    layer.setup(bottom, top)
    layer.forward(bottom, top)                     # seen 12794: pulled to the priors
    assert layer.images_seen == 12794 and float(top[0].data) > 0
    layer.forward(bottom, top)                     # 12798
    layer.forward(bottom, top)                     # 12802: no truth, no prior: only noobject
    assert layer.images_seen == 12802
    y = 1 / (1 + np.exp(-0.0))
    assert float(top[0].data) == pytest.approx(0.5 * 0.5 * y * y * 3 * 12, rel=1e-6)
    assert list(top[1].data) == [0, 0, 0, 0.5, 0, 0]


# --- Yolo --------------------------------------------------------------------------------------

YOLO_ANCHORS = [[3, 4], [6, 9], [12, 7], [10, 14], [20, 18], [30, 24]]


@needs_darknet
@pytest.mark.parametrize("mask, truth_thresh, net_wh", [
    ([3, 4, 5], 1.0, (64, 48)), ([0, 1, 2], 1.0, (64, 48)), ([1, 4], 0.6, (48, 40)),
    ([0, 1, 2, 3, 4, 5], 0.7, (64, 64))])
def test_yolo_loss_matches_darknet(tmp_path, shim, capfd, mask, truth_thresh, net_wh):
    n, classes, h, w = 2, 3, 4, 5
    a, e = len(mask), 5 + classes
    anchors = ", ".join(f"{p:g}" for p in np.ravel(YOLO_ANCHORS))
    cfg = tmp_path / "yolo.cfg"
    cfg.write_text(f"[net]\nbatch={n}\nheight={h}\nwidth={w}\nchannels={a * e}\n[yolo]\n"
                   f"mask={','.join(map(str, mask))}\nanchors={anchors}\nclasses={classes}\n"
                   f"num=6\nignore_thresh=.4\ntruth_thresh={truth_thresh}\nmax=5\n")
    rng = np.random.default_rng(len(mask) + int(10 * truth_thresh))
    x = rng.normal(0, 1, (n, a * e, h, w)).astype(np.float32)
    labels = random_truths(rng, n, classes, w, h, boxes=7)
    labels[:, :, 3:] *= 0.6
    labels[:, 3, 3] = 0.0005                                   # too narrow: dropped
    truths = darknet_truth(labels, 5, classes)
    assert all(len(t) == 4 for t in truths)                  # 5 kept, then 1 dropped
    tb = truths[0][0]                                          # a prediction close to a truth
    plant(x, a, e, 0, int(tb[1] * h), int(tb[0] * w), tb[:4] * [1, 1, 1.02, 0.98], w, h,
          YOLO_ANCHORS[mask[0]][0] / net_wh[0], YOLO_ANCHORS[mask[0]][1] / net_wh[1])
    want, cost, printed, params = darknet_layer_loss(shim, capfd, cfg, x, truths, 0, net_wh)
    assert list(params[[1, 2, 9, 10]]) == pytest.approx([0.4, truth_thresh, 5, 450])
    loss, grad, delta, figures = _yolo_loss_forward_ref(
        x, truths, anchors=np.array(YOLO_ANCHORS, float), mask=mask, classes=classes,
        net_width=net_wh[0], net_height=net_wh[1], ignore_thresh=0.4, truth_thresh=truth_thresh)
    np.testing.assert_allclose(delta, want, rtol=1e-4, atol=2e-6)
    assert cost == pytest.approx(float(np.sum(want.astype(np.float64) ** 2)), rel=1e-5)
    np.testing.assert_allclose(figures, printed, rtol=0, atol=2e-6)
    np.testing.assert_allclose(grad, -want / n, rtol=1e-5, atol=1e-7)
    assert np.isfinite(loss) and loss > 0


def yolo_layer(mask=(1, 4), ignore=0.4, truth=1.0):
    return YoloLayer(classes=3, anchors=list(np.ravel(YOLO_ANCHORS)), mask=list(mask),
                     ignore_thresh=ignore, truth_thresh=truth, net_width=40, net_height=32)


@pytest.mark.parametrize("mask, truth", [((1, 4), 1.0), ((0, 2, 3), 0.6), ((5,), 0.5)])
def test_yolo_loss_gradient(mask, truth):
    rng = np.random.default_rng(len(mask))
    x = rng.normal(0, 1, (2, len(mask) * 8, 4, 5))
    labels = random_truths(rng, 2, 3, 5, 4, boxes=5)
    check_layer_gradient(lambda: yolo_layer(mask, truth=truth), [x, labels], check_bottoms=[0],
                         tops=[0], rtol=1e-5, atol=1e-8)


# --- truths, errors ----------------------------------------------------------------------------

def test_darknet_truth_by_hand():
    labels = np.array([[[2, 0.5, 0.5, 0.2, 0.4], [-1, 0, 0, 0, 0], [0, 0.05, 0.9, 0.3, 0.4],
                        [1, 0.5, 0.5, 0.0005, 0.3], [1, 0.3, 0.3, 0.1, 0.1]]])
    (t,) = darknet_truth(labels, 3, 3)
    # the box crossing the left and bottom edges is clipped: x in [0, .2], y in [.7, 1]
    np.testing.assert_allclose(t, [[0.5, 0.5, 0.2, 0.4, 2], [0.1, 0.85, 0.2, 0.3, 0]],
                               atol=1e-7)
    assert darknet_truth(labels, 4, 3)[0].shape == (3, 5)     # the 4th box is in the cap
    with pytest.raises(LayerError, match=r"box 0 of item 0 has class 2"):
        darknet_truth(labels, 3, 2)


def test_errors():
    x = np.zeros((2, 24, 3, 4))
    with pytest.raises(LayerError, match=r"box lists \(shape \(3, 2, 5\)\) must be \(N, K, 5\)"):
        region_layer().setup([minicnn.Blob.from_array(x), minicnn.Blob.from_array(
            np.zeros((3, 2, 5)))], [minicnn.Blob(())])
    with pytest.raises(LayerError, match="loss .* needs region_param coords 4 and background"):
        RegionLayer(classes=3, num=1, coords=5).setup(
            [minicnn.Blob.from_array(np.zeros((2, 9, 3, 4))),
             minicnn.Blob.from_array(np.zeros((2, 2, 5)))], [minicnn.Blob(())])
    layer = YoloLayer(classes=3, anchors=[2, 3])
    with pytest.raises(LayerError, match="needs yolo_param net_width and net_height"):
        layer.setup([minicnn.Blob.from_array(np.zeros((2, 8, 3, 4))),
                     minicnn.Blob.from_array(np.zeros((2, 2, 5)))], [minicnn.Blob(())])
    with pytest.raises(LayerError, match="without labels .* has one top"):
        region_layer().setup([minicnn.Blob.from_array(x)], [minicnn.Blob(()), minicnn.Blob(())])


# --- converted YOLOv2 / YOLOv3 nets as train nets --------------------------------------------------

def rectangle_images(folder, n=4, size=32):
    """Black images with two bright rectangles each (two classes), and their exact boxes."""
    from minicnn.data.datum import encode_image
    from minicnn.data.detection import write_labels
    rng = np.random.default_rng(5)
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    lines = []
    for i in range(n):
        image = np.zeros((3, size, size), np.uint8)
        boxes = []
        for k in range(2):
            x0, y0 = (int(v) for v in rng.integers(0, size - 14, 2))
            x1, y1 = x0 + int(rng.integers(5, 14)), y0 + int(rng.integers(5, 14))
            image[k, y0:y1, x0:x1] = 255
            boxes.append([k, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size,
                          (y1 - y0) / size])
        (folder / "images" / f"{i}.png").write_bytes(encode_image(image, "png"))
        write_labels(str(folder / "labels" / f"{i}.txt"), boxes)
        lines.append(f"images/{i}.png")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "list.txt")


def train_prototxt(deploy, source, n):
    """The converted deploy net with a DetectionData layer for its Input and the boxes as each
    head's second bottom, its loss (and figures) as tops."""
    text = re.sub(r'layer \{\n  name: "data"\n  type: "Input".*?\n\}\n', f'''layer {{
  name: "data" type: "DetectionData" top: "data" top: "boxes"
  transform_param {{ scale: 0.00392156862745098 }}
  detection_data_param {{ source: "{source}" batch_size: {n} max_boxes: 4 }}
}}
''', deploy, count=1, flags=re.DOTALL)
    assert "DetectionData" in text
    return re.sub(r'(type: "(?:Region|Yolo)"\n  bottom: "[^"]+"\n)  top: "([^"]+)"',
                  r'\1  bottom: "boxes"\n  top: "\2_loss"\n  top: "\2_figures"\n'
                  r'  loss_weight: 1\n  loss_weight: 0', text)


@pytest.mark.parametrize("which", ["v2", "v3"])
def test_converted_yolo_nets_train(tmp_path, which):
    """A converted small YOLOv2 / YOLOv3 (tests/test_darknet.py's cfgs, with their training
    keys) trained on four images by minicnn's SGD: the losses are finite and fall, the figures
    count the boxes."""
    from minicnn.darknet import convert_darknet
    from minicnn.proto import caffe_pb2
    from minicnn.proto.text import parse_text
    from tests.test_darknet import V2_CFG, V3_CFG, random_weights
    cfg_text = V2_CFG.replace("rescore=1\n", "rescore=1\nobject_scale=5\nnoobject_scale=1\n"
                              "class_scale=1\ncoord_scale=1\nbias_match=1\nthresh=.6\nabsolute=0\n") \
        if which == "v2" else V3_CFG.replace("ignore_thresh = .7\n",
                                             "ignore_thresh = .7\ntruth_thresh = 1\nmax=40\n")
    cfg = tmp_path / "net.cfg"
    cfg.write_text(cfg_text)
    random_weights(str(cfg), str(tmp_path / "net.weights"), dead=False)
    prototxt, caffemodel = convert_darknet(str(cfg), str(tmp_path / "net.weights"),
                                           str(tmp_path / "out"))
    with open(prototxt) as f:
        deploy = f.read()
    if which == "v2":
        assert ("object_scale: 5.0" in deploy and "thresh: 0.6" in deploy
                and "bias_match: true" in deploy and "rescore: true" in deploy
                and "absolute: false" in deploy and "seen: 12345" in deploy)
    else:
        assert deploy.count("net_width: 32 net_height: 32") == 2
        assert "ignore_thresh: 0.7 truth_thresh: 1.0 max_boxes: 40" in deploy
    text = train_prototxt(deploy, rectangle_images(tmp_path), 4)
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.002,
                                      lr_policy="fixed", momentum=0.9, max_iter=12)
    solver = minicnn.SGDSolver(param, log=lambda message: None)
    solver.net.copy_from(caffemodel)
    heads = [layer.name for layer in solver.net.layers if layer.type in ("Region", "Yolo")]
    assert len(heads) == (1 if which == "v2" else 2)
    losses = []
    for _ in range(12):
        solver.step(1)
        losses.append(sum(float(solver.net.blobs[f"{h}_loss"].data) for h in heads))
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    counts = sum(float(solver.net.blobs[f"{h}_figures"].data[-1]) for h in heads)
    assert counts == 8                   # each box counted once (v3: by one of the two heads)
    if which == "v2":
        assert solver.net.layer_dict[heads[0]].images_seen == 12345 + 12 * 4
