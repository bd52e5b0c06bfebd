"""YOLO9000's softmax tree (Darknet's tree.c; minicnn.ops.softmax_tree, the SoftmaxTree layer and
a Region with region_param.tree_parent): the tree reader, the group softmax and its gradient, the
hierarchical decoding, and Debian's darknet9000.cfg / yolo9000.cfg converted and run against
libdarknet."""

import ctypes
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError
from minicnn.layer import create_layer
from minicnn.ops.softmax_tree import (
    SoftmaxTree,
    _softmax_tree_backward_ref,
    _softmax_tree_forward_ref,
    hierarchy_predictions,
    hierarchy_top_prediction,
)
from minicnn.proto.text import parse_text
from minicnn.testing import check_layer_gradient
from tests.test_darknet import (
    CFG_DIR,
    Image,
    _floats,
    assert_same_detections,
    converted,
    darknet,
    darknet_forward,
    detector_api,
    needs_darknet,
)

TREE = "/usr/share/darknet/data/9k.tree"
needs_tree = pytest.mark.skipif(not os.path.exists(TREE), reason="Debian's darknet data is not "
                                "installed")
SMALL_TREE = [-1, -1, 0, 0, 0, 1, 1, 3, 3]          # groups [0 1] [2 3 4] [5 6] [7 8]


class Tree(ctypes.Structure):
    """darknet.h's tree."""
    _fields_ = [("leaf", ctypes.POINTER(ctypes.c_int)), ("n", ctypes.c_int),
                ("parent", ctypes.POINTER(ctypes.c_int)), ("child", ctypes.POINTER(ctypes.c_int)),
                ("group", ctypes.POINTER(ctypes.c_int)), ("name", ctypes.c_void_p),
                ("groups", ctypes.c_int), ("group_size", ctypes.POINTER(ctypes.c_int)),
                ("group_offset", ctypes.POINTER(ctypes.c_int))]


def darknet_tree(lib, path):
    lib.read_tree.restype = ctypes.POINTER(Tree)
    lib.read_tree.argtypes = [ctypes.c_char_p]
    return lib.read_tree(str(path).encode())


def write_tree(path, parents):
    path.write_text("".join(f"n{i:08d} {p}\n" for i, p in enumerate(parents)))
    return str(path)


# --- the tree and the group softmax, without Darknet ---------------------------------------------

def test_tree_groups_by_hand():
    t = SoftmaxTree(SMALL_TREE)
    assert t.group_offset.tolist() == [0, 2, 5, 7] and t.group_size.tolist() == [2, 3, 2, 2]
    assert t.group.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert t.child.tolist() == [1, 2, -1, 3, -1, -1, -1, -1, -1]
    assert t.leaf.tolist() == [False, False, True, False, True, True, True, True, True]
    # a first node under a parent starts with an empty group 0, as read_tree makes it
    odd = SoftmaxTree([1, -1])
    assert odd.group_size.tolist() == [0, 1, 1] and odd.group.tolist() == [1, 2]
    with pytest.raises(ValueError, match="node 1 names parent 5, outside -1..2"):
        SoftmaxTree([-1, 5, 0])


def _group_softmax_loops(x, tree):
    """Per group and position, Darknet's softmax (tree.c / blas.c) written as loops."""
    y = np.empty_like(x)
    for b in range(x.shape[0]):
        for off, size in zip(tree.group_offset, tree.group_size):
            if size:
                z = x[b, off:off + size]
                e = np.exp(z - z.max(axis=0))
                y[b, off:off + size] = e / e.sum(axis=0)
    return y


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3), hw=st.sampled_from([1, 2, 6]))
def test_group_softmax_forward_and_gradient(seed, n, hw):
    rng = np.random.default_rng(seed)
    parents = [-1] * int(rng.integers(1, 4))
    while len(parents) < 12:                   # siblings in runs, some parents split in two runs
        parents += [int(rng.integers(0, len(parents)))] * int(rng.integers(1, 4))
    tree = SoftmaxTree(parents)
    x = rng.normal(0, 3, (n, tree.n, hw))
    y = _softmax_tree_forward_ref(x, tree=tree, axis=1)
    np.testing.assert_allclose(y, _group_softmax_loops(x, tree), rtol=1e-12)
    sums = np.add.reduceat(y, tree.starts, axis=1)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-12)
    dy = rng.normal(size=x.shape)
    dx = _softmax_tree_backward_ref(dy, y, tree=tree, axis=1)
    eps, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = np.sum(_softmax_tree_forward_ref(x, tree=tree, axis=1) * dy)
        x[i] = old - eps
        down = np.sum(_softmax_tree_forward_ref(x, tree=tree, axis=1) * dy)
        x[i] = old
        num[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


def _layer(text):
    return create_layer(parse_text(text, "LayerParameter"))


def test_softmax_tree_layer_gradient_and_errors():
    parents = ", ".join(map(str, SMALL_TREE))
    text = f'name: "t" type: "SoftmaxTree" softmax_tree_param {{ parent: [{parents}] }}'
    x = np.random.default_rng(3).normal(size=(2, 9, 2, 3))
    check_layer_gradient(lambda: _layer(text), [x])
    check_layer_gradient(lambda: _layer(text.replace("}", "axis: -1 }")),
                         [np.random.default_rng(4).normal(size=(3, 9))])
    with pytest.raises(LayerError, match=r"\(shape \(2, 8\)\) has 8 entries along axis 1, but "
                                         r"the tree has 9 nodes"):
        check_layer_gradient(lambda: _layer(text), [np.zeros((2, 8))])
    with pytest.raises(LayerError, match="softmax_tree_param.parent: node 0 names parent 3"):
        check_layer_gradient(_layer('name: "t" type: "SoftmaxTree" softmax_tree_param { '
                                    'parent: [3, -1] }'), [np.zeros((1, 2))])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ndim=st.integers(1, 4), data=st.data())
def test_softmax_tree_layer_on_drawn_trees_shapes_and_axes(seed, ndim, data):
    """The layer from its prototxt (parents, axis: negative too) against a per-group loop along
    that axis, and finite differences."""
    rng = np.random.default_rng(seed)
    parents = [-1] * int(rng.integers(1, 3))
    while len(parents) < 6:
        parents += [int(rng.integers(0, len(parents)))] * int(rng.integers(1, 3))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    shape = [data.draw(st.integers(1, 2)) for _ in range(ndim)]
    shape[axis] = len(parents)
    x = rng.normal(0, 3, shape)
    text = (f'name: "t" type: "SoftmaxTree" softmax_tree_param {{ '
            f'parent: [{", ".join(map(str, parents))}] axis: {axis} }}')
    y = _layer(text)(x)
    z, want = np.moveaxis(x, axis, 0), np.empty(x.shape)
    out = np.moveaxis(want, axis, 0)                  # a view: the loop fills want
    for off, size in zip(SoftmaxTree(parents).group_offset, SoftmaxTree(parents).group_size):
        e = np.exp(z[off:off + size] - z[off:off + size].max(axis=0))
        out[off:off + size] = e / e.sum(axis=0)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    check_layer_gradient(lambda: _layer(text), [x])


def test_region_with_a_tree_gradient_and_errors():
    parents = ", ".join(map(str, SMALL_TREE))
    body = f"region_param {{ classes: 9 coords: 4 num: 2 softmax: true tree_parent: [{parents}] }}"
    layer = _layer('name: "r" type: "Region" ' + body)
    x = np.random.default_rng(4).normal(size=(2, 2 * 14, 2, 3))
    check_layer_gradient(layer, [x])
    bad = _layer('name: "r" type: "Region" ' + body.replace("classes: 9", "classes: 8"))
    with pytest.raises(LayerError, match="a softmax tree needs one node per class and no "
                                       "background, got 9 nodes for classes 8"):
        check_layer_gradient(bad, [np.zeros((1, 2 * 13, 1, 1))])


def test_region_tree_top_by_hand():
    """One anchor, one place: x, y, objectness logistic, w, h as they are, each group's softmax."""
    from minicnn.ops.yolo_heads import _yolo_head_forward_ref
    tree = SoftmaxTree(SMALL_TREE)
    x = np.arange(14, dtype=np.float64).reshape(1, 14, 1, 1) / 7 - 1
    y = _yolo_head_forward_ref(x, anchors=1, coords=4, classes=9, softmax=True, tree=tree)
    y = y[0, :, 0, 0]
    v = x[0, :, 0, 0]
    sig = 1 / (1 + np.exp(-v))
    np.testing.assert_allclose(y[[0, 1, 4]], sig[[0, 1, 4]])
    np.testing.assert_allclose(y[2:4], v[2:4])
    for lo, hi in ((5, 7), (7, 10), (10, 12), (12, 14)):
        e = np.exp(v[lo:hi])
        np.testing.assert_allclose(y[lo:hi], e / e.sum())


def test_hierarchy_decoding_by_hand():
    tree = SoftmaxTree(SMALL_TREE)
    cond = np.array([0.7, 0.3, 0.1, 0.8, 0.1, 0.6, 0.4, 0.9, 0.1], np.float32)
    absolute = hierarchy_predictions(cond, tree)
    np.testing.assert_allclose(absolute, [0.7, 0.3, 0.07, 0.56, 0.07, 0.18, 0.12, 0.504, 0.056],
                               rtol=1e-6)
    # 0.7 > t -> group 1: 0.7 * 0.56 = 0.392; > 0.3 -> group 3: 0.392 * 0.504 = 0.198 <= 0.3,
    # so the parent of group 3, node 3
    assert hierarchy_top_prediction(absolute, tree, 0.3) == 3
    assert hierarchy_top_prediction(absolute, tree, 0.1) == 7          # down to a leaf
    assert hierarchy_top_prediction(absolute, tree, 0.5) == 0          # group 1 fails: its parent
    assert hierarchy_top_prediction(absolute, tree, 0.8) == 0          # group 0 fails: its best


# --- against libdarknet --------------------------------------------------------------------------

@needs_darknet
@needs_tree
def test_tree_reader_matches_darknets_read_tree(tmp_path):
    lib = darknet()
    for path in (TREE, write_tree(tmp_path / "odd.tree", [2, 2, -1, 0, 0, 1, 2])):
        want = darknet_tree(lib, path).contents
        got = SoftmaxTree.read(path)
        n, g = want.n, want.groups
        assert (got.n, got.groups) == (n, g)
        for name, count in (("parent", n), ("child", n), ("group", n), ("leaf", n),
                            ("group_size", g), ("group_offset", g)):
            np.testing.assert_array_equal(getattr(got, name).astype(int),
                                          np.ctypeslib.as_array(getattr(want, name), (count,)),
                                          err_msg=name)


@needs_darknet
@needs_tree
def test_hierarchy_decoding_matches_darknet():
    """hierarchy_predictions and hierarchy_top_prediction of libdarknet on random group softmax
    outputs of the 9k tree, at several thresholds."""
    lib = darknet()
    ptree = darknet_tree(lib, TREE)
    lib.hierarchy_predictions.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int,
                                          ctypes.POINTER(Tree), ctypes.c_int, ctypes.c_int]
    lib.hierarchy_top_prediction.argtypes = [ctypes.POINTER(ctypes.c_float),
                                             ctypes.POINTER(Tree), ctypes.c_float, ctypes.c_int]
    lib.hierarchy_top_prediction.restype = ctypes.c_int
    tree = SoftmaxTree.read(TREE)
    rng = np.random.default_rng(5)
    for k in range(12):
        logits = rng.normal(0, 1 + k, (1, tree.n)).astype(np.float32)
        cond = _softmax_tree_forward_ref(logits, tree=tree, axis=1)[0].astype(np.float32)
        want = cond.copy()
        lib.hierarchy_predictions(_floats(want), tree.n, ptree, 0, 1)
        got = hierarchy_predictions(cond, tree)
        np.testing.assert_array_equal(got, want)
        for thresh in (0.05, 0.3, 0.5, 0.9):
            assert hierarchy_top_prediction(got, tree, thresh) == \
                lib.hierarchy_top_prediction(_floats(want), ptree, thresh, 1)


def _debian_cfg(name, size):
    with open(os.path.join(CFG_DIR, name)) as f:
        return re.sub(r"(?m)^(height|width)=\d+", rf"\1={size}", f.read())


def darknet_predict(lib, net, x):
    n = net.contents.outputs * net.contents.batch
    x = np.ascontiguousarray(x, np.float32)
    return np.ctypeslib.as_array(lib.network_predict(net, _floats(x)), (n,))


def darknet_tree_softmax(lib, tmp_path, z):
    """libdarknet's [softmax] tree=9k.tree (forward_softmax_layer) on each row of z (B, 9418)."""
    cfg = tmp_path / "tree_softmax.cfg"
    cfg.write_text(f"[net]\nbatch={len(z)}\nheight=1\nwidth=1\nchannels={z.shape[1]}\n"
                   f"[softmax]\ntree={TREE}\n")
    net = lib.parse_network_cfg(str(cfg).encode())
    try:
        return darknet_predict(lib, net, z).copy().reshape(z.shape)
    finally:
        lib.free_network(net)


@needs_darknet
@needs_tree
def test_darknet9000_matches_darknet(tmp_path):
    """Debian's darknet9000.cfg (Darknet-19 to 9418 classes, avgpool, [softmax] tree=9k.tree) at a
    64 x 64 input: network_predict's 9418 probabilities, each group summing to 1."""
    cfg, weights, net, _ = converted(tmp_path, _debian_cfg("darknet9000.cfg", 64), dead=False)
    last = net.layers[-1]
    assert last.type == "SoftmaxTree" and last.tree.n == 9418 and last.tree.groups == 1846
    x = np.random.default_rng(6).random((3, 64, 64), np.float32)
    want = darknet_forward(cfg, weights, x)
    got = net.forward(data=x[None])[net.top_names[last.name][0]].ravel()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.add.reduceat(got, last.tree.starts) == pytest.approx(1, rel=1e-5)
    text = (tmp_path / "out" / "net.prototxt").read_text()
    assert TREE not in text and "# 9k.tree: 9418 classes in 1846 groups" in text  # self-contained


def _logistic(v):
    return 1 / (1 + np.exp(-v))


def darknet_region_detections(lib, net, rgb, thresh, hier, nms, classes, region_top):
    """Darknet's `detector test` path on an image whose letterbox needs no resizing, with the
    region layer's output (network_predict's buffer) replaced by ``region_top`` before
    get_network_boxes (hier thresh) and do_nms_sort read it: [(class, prob, x0, y0, x1, y1)]."""
    detector_api(lib)
    h, w, _ = rgb.shape
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32) / np.float32(255)
    sized = lib.letterbox_image(Image(w, h, 3, _floats(planes)), net.contents.w, net.contents.h)
    out = np.ctypeslib.as_array(lib.network_predict(net, sized.data), (net.contents.outputs,))
    lib.free_image(sized)
    raw = out.copy()
    out[:] = region_top.ravel()
    count = ctypes.c_int(0)
    dets = lib.get_network_boxes(net, w, h, thresh, hier, None, 1, ctypes.byref(count))
    total, found = count.value, []
    lib.do_nms_sort(dets, total, classes, nms)
    for k in range(total):
        b = dets[k].bbox
        for j in range(classes):
            if dets[k].prob[j] > thresh:
                corners = np.clip([(b.x - b.w / 2) * w, (b.y - b.h / 2) * h,
                                   (b.x + b.w / 2) * w, (b.y + b.h / 2) * h], 0, [w, h, w, h])
                found.append((j, dets[k].prob[j], *corners))
    lib.free_detections(dets, total)
    return sorted(found), raw


@needs_darknet
@needs_tree
def test_yolo9000_matches_darknet(tmp_path):
    """Debian's yolo9000.cfg (3 anchors x (5 + 9418) channels, [region] tree=9k.tree
    map=coco9k.map) at a 64 x 64 input (a 2 x 2 grid). The region's input is libdarknet's
    (the cfg cut before [region]); its top is the logistic of x, y, objectness and libdarknet's
    own [softmax] tree over each anchor's classes at each place (Darknet's GPU path: Debian's
    CPU region computes NaN there, shown below). The detections: libdarknet's
    get_network_boxes (hier_thresh .5) and do_nms_sort reading minicnn's top, against
    minicnn.detect."""
    text = _debian_cfg("yolo9000.cfg", 64)
    cfg, weights, net, _ = converted(tmp_path, text, dead=False)
    region = net.layers[-1]
    assert region.type == "Region" and region.settings["tree"].n == 9418
    p = region.param.region_param
    assert len(p.class_map) == 80 and p.class_map[0] == 5177
    rgb = np.random.default_rng(7).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    x = minicnn.detection.net_input(rgb.transpose(2, 0, 1), 64, 64, letterbox=True,
                                    darknet_resize=True)
    lib = darknet()
    cut = tmp_path / "cut.cfg"
    cut.write_text(text[:text.index("[region]")])
    raw = darknet_forward(str(cut), weights, x).reshape(3, 9423, 4)
    outs = net.forward(data=x[None])
    bottom = net.blobs[net.bottom_names[region.name][0]].data[0].reshape(3, 9423, 4)
    np.testing.assert_allclose(bottom, raw, rtol=1e-4, atol=1e-4 * np.abs(raw).max())
    want = raw.copy()
    want[:, [0, 1, 4]] = _logistic(raw[:, [0, 1, 4]].astype(np.float64))
    classes = raw[:, 5:].transpose(0, 2, 1).reshape(12, 9418)
    soft = darknet_tree_softmax(lib, tmp_path, classes)
    want[:, 5:] = soft.reshape(3, 4, 9418).transpose(0, 2, 1)
    top = outs[net.top_names[region.name][0]][0]
    np.testing.assert_allclose(top.reshape(3, 9423, 4), want, rtol=1e-4, atol=1e-5)
    tree = region.settings["tree"]
    thresh, nms = 0.3, 0.3
    unsuppressed = minicnn.detect(net, rgb, thresh=thresh, nms=1.0, rgb=True)
    depth = {}
    for hier in (0.5, 0.01):                     # .01: deeper into the tree than the top groups
        dn = lib.load_network(cfg.encode(), weights.encode(), 0)
        try:
            found, cpu = darknet_region_detections(lib, dn, rgb, thresh, hier, nms, 9418, top)
        finally:
            lib.free_network(dn)
        assert np.isnan(cpu.reshape(3, 9423, 4)[:, 5:]).any()      # Debian's CPU tree branch
        got = minicnn.detect(net, rgb, thresh=thresh, nms=nms, rgb=True, hier_thresh=hier)
        assert len(found) >= 3, found
        assert_same_detections(got, found, unsuppressed)
        depth[hier] = max(_depth(tree, d["class"]) for d in got)
    assert depth[0.5] < depth[0.01], depth
    from PIL import Image as PILImage

    from minicnn.cli import main
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    assert main(["detect", "--model", str(tmp_path / "out" / "net.prototxt"), "--weights",
                 str(tmp_path / "out" / "net.caffemodel"), "--rgb", "--thresh", str(thresh),
                 "--nms", str(nms), "--hier-thresh", "0.01", "--out", str(tmp_path / "found"),
                 str(tmp_path / "a.png")]) == 0
    import json
    with open(tmp_path / "found" / "detections.json") as f:
        assert [d["class"] for d in json.load(f)[0]["detections"]] == [d["class"] for d in got]


def _depth(tree, c):
    d = 0
    while tree.parent[c] >= 0:
        c, d = tree.parent[c], d + 1
    return d


def test_converter_reads_the_tree_beside_the_cfg_and_checks_it(tmp_path):
    from minicnn.darknet import DarknetError, build, read_cfg
    from tests.test_darknet import _Recorder
    write_tree(tmp_path / "small.tree", SMALL_TREE)
    (tmp_path / "small.map").write_text("3\n8\n0\n")
    head = "[net]\nheight=2\nwidth=2\nchannels=3\n[convolutional]\nfilters=28\nsize=1\n"

    def build_text(text):
        cfg = tmp_path / "e.cfg"
        cfg.write_text(text)
        return build(read_cfg(str(cfg)), _Recorder())[0]
    text = build_text(head + "[region]\nclasses=9\nnum=2\nsoftmax=1\ntree=small.tree\n"
                      "map=small.map\n")
    net = minicnn.Net(parse_text(text, "NetParameter"), phase=minicnn.TEST)
    p = net.layers[-1].param.region_param
    assert list(p.tree_parent) == SMALL_TREE and list(p.class_map) == [3, 8, 0]
    with pytest.raises(DarknetError, match=r"e\.cfg:8: \[region\]: the tree small\.tree has 9 "
                                           "nodes, but the layer has 8 classes"):
        build_text(head.replace("28", "26") + "[region]\nclasses=8\nnum=2\ntree=small.tree\n")
    with pytest.raises(DarknetError, match=r"map=small\.map names classes outside 0\.\.7"):
        build_text(head.replace("28", "26") + "[region]\nclasses=8\nnum=2\nmap=small.map\n")
    with pytest.raises(DarknetError, match=r"\[softmax\]: minicnn converts a softmax tree over a "
                                           r"whole C x 1 x 1 output"):
        build_text(head.replace("28", "9") + "[softmax]\ntree=small.tree\n")
    with pytest.raises(DarknetError, match="the tree small.tree has 9 nodes, but the layer has 4"):
        build_text(head.replace("28", "4") + "[avgpool]\n[softmax]\ntree=small.tree\n")


# --- the Region loss with a tree -----------------------------------------------------------------

TREE_SHIM = r"""
#include "darknet.h"
void shim_temperature(network *net, int i, float t) { net->layers[i].temperature = t; }
"""
LOSS_TREE = [-1, -1, -1, 0, 0, 1, 1, 1, 3, 3, 3, 6, 6, 2, 2]


def darknet_tree_loss(shim, capfd, tmp_path, cfg, x, truths, seen):
    """libdarknet's forward_region_layer with a tree on x (N, C, 1, 1), one anchor: there its
    CPU activations are the GPU's once the layer's temperature is 1 (the shim sets it; parse_region
    leaves 0). (delta, printed figures)."""
    import subprocess

    from tests.test_yolo_losses import HEADER
    lib, sh = shim
    src, so = tmp_path / "tree_shim.c", tmp_path / "tree_shim.so"
    src.write_text(TREE_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-I", os.path.dirname(HEADER), str(src),
                    "-o", str(so)], check=True)
    tsh = ctypes.CDLL(str(so))
    tsh.shim_temperature.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_float]
    net = lib.parse_network_cfg(str(cfg).encode())
    try:
        tsh.shim_temperature(net, 0, 1.0)
        per = net.contents.truths
        buf = np.zeros((len(x), per), np.float32)
        for b, boxes in enumerate(truths):
            buf[b, :boxes.size] = boxes.reshape(-1)[:per]
        xin = np.ascontiguousarray(x, np.float32)
        capfd.readouterr()
        sh.shim_forward(net, _floats(xin), _floats(buf), seen, net.contents.w, net.contents.h)
        printed = capfd.readouterr().out
        delta = np.ctypeslib.as_array(sh.shim_delta(net, 0), (x.size,)).copy().reshape(x.shape)
    finally:
        lib.free_network(net)
    line = printed.strip().splitlines()[-1]
    figures = [float(v) for v in re.findall(r":\s*(-?nan|-?[\d.]+)", line.split("Avg IOU")[1])]
    return delta, np.array(figures)


@needs_darknet
@pytest.mark.parametrize("seen, with_map", [(20000, False), (64, True)])
def test_region_tree_loss_matches_darknet(tmp_path, capfd, seen, with_map):
    """The delta of libdarknet's forward_region_layer with tree= (delta_region_class's tree
    branch: each group on the class's path, one-hot on the path) and map=, on a one-anchor 1 x 1
    head (where Debian's CPU activations are right): images with boxes (a later box overwrites
    an earlier one's groups, keeps the rest), one with a label at x = y = 0 (a class without a
    box: only the likeliest place learns the class, every objectness is pushed to 0 but its
    own) and one with both (the class-only label wins the image)."""
    from minicnn.ops.yolo_losses import _region_loss_forward_ref, darknet_truth
    classes, n = len(LOSS_TREE), 4
    tree_path = write_tree(tmp_path / "loss.tree", LOSS_TREE)
    class_map = [12, 4, 9, 14, 0]
    (tmp_path / "loss.map").write_text("".join(f"{c}\n" for c in class_map))
    cfg = tmp_path / "region.cfg"
    cfg.write_text(f"[net]\nbatch={n}\nheight=1\nwidth=1\nchannels={5 + classes}\n[region]\n"
                   f"anchors=1.3,0.8\nclasses={classes}\ncoords=4\nnum=1\nsoftmax=1\n"
                   f"tree={tree_path}\n" + (f"map={tmp_path / 'loss.map'}\n" if with_map else "")
                   + "object_scale=5\nnoobject_scale=.7\nclass_scale=1.5\ncoord_scale=1.2\n"
                   "rescore=1\nthresh=.45\n")
    rng = np.random.default_rng(seen)
    x = rng.normal(0, 1.5, (n, 5 + classes, 1, 1)).astype(np.float32)
    top = 5 if with_map else classes
    labels = np.full((n, 3, 5), -1.0)
    labels[0, :2] = [[11 % top, 0.4, 0.6, 0.5, 0.3], [top - 1, 0.55, 0.5, 0.3, 0.6]]
    labels[1, 0] = [8, 0, 0, 0.2, 0.2]                      # class only
    labels[2, :3] = [[2, 0.5, 0.5, 0.8, 0.8], [12 % top, 0, 0, 0, 0], [1, 0.3, 0.4, 0.2, 0.2]]
    labels[3, 0] = [3, 0.6, 0.3, 0.4, 0.5]
    truths = darknet_truth(labels, 30, classes, class_only=True)
    assert truths[1][0, 0] == 999999
    want, printed = darknet_tree_loss(_shim(tmp_path), capfd, tmp_path, cfg, x, truths, seen)
    loss, _, delta, figures = _region_loss_forward_ref(
        x, truths, anchors=np.array([[1.3, 0.8]]), classes=classes, softmax=True,
        object_scale=5, noobject_scale=0.7, class_scale=1.5, coord_scale=1.2, thresh=0.45,
        rescore=True, seen=seen, tree=SoftmaxTree(LOSS_TREE),
        class_map=np.array(class_map) if with_map else None)
    assert np.count_nonzero(want[:, 5:]) > 10 and np.count_nonzero(want[1, :5]) == 0
    np.testing.assert_allclose(delta, want, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(figures, printed, rtol=0, atol=2e-6)
    assert np.isfinite(loss) and loss > 0


def _shim(tmp_path):
    """tests.test_yolo_losses's shim (libdarknet, and its forward/delta helpers), built here."""
    import subprocess

    from tests.test_yolo_losses import HEADER, LIB, SHIM
    (tmp_path / "shim.c").write_text(SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-I", os.path.dirname(HEADER),
                    str(tmp_path / "shim.c"), "-o", str(tmp_path / "shim.so"), LIB], check=True)
    lib = darknet()
    sh = ctypes.CDLL(str(tmp_path / "shim.so"))
    sh.shim_delta.restype = ctypes.POINTER(ctypes.c_float)
    sh.shim_delta.argtypes = [ctypes.c_void_p, ctypes.c_int]
    sh.shim_forward.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_int,
                                ctypes.c_int]
    return lib, sh


def test_region_tree_loss_class_only_place_by_hand():
    """A label without a box: the anchor and place with the largest objectness x P(class along
    its path) learns the class (first on ties); every other objectness goes to 0 (noobject)."""
    from minicnn.ops.yolo_losses import _region_loss_forward_ref, darknet_truth
    tree, e = SoftmaxTree(LOSS_TREE), 5 + len(LOSS_TREE)
    x = np.zeros((1, 2 * e, 2, 2))
    xv = x.reshape(2, e, 2, 2)
    xv[0, 5 + 8, 1, 0] = 4.0                # anchor 0 at (1, 0): the class's path is likeliest
    xv[0, 4, 1, 0] = -3.0                   # ... but hardly an object
    xv[1, 5 + 8, 0, 1] = 2.0                # anchor 1 at (0, 1): less likely class, an object
    xv[1, 4, 0, 1] = 2.0
    truths = darknet_truth(np.array([[[8, 0, 0, 0, 0]]]), 30, len(LOSS_TREE), class_only=True)
    _, _, delta, figures = _region_loss_forward_ref(
        x, truths, anchors=np.array([[1.0, 1.0], [2.0, 2.0]]), classes=len(LOSS_TREE),
        softmax=True, noobject_scale=0.5, class_scale=2.0, tree=tree)
    dv = delta.reshape(2, e, 2, 2)
    taught = [(k, j, i) for k, j, i in np.ndindex(2, 2, 2) if np.any(dv[k, 5:, j, i])]
    assert taught == [(1, 0, 1)]
    touched = np.flatnonzero(dv[1, 5:, 0, 1])              # groups of 8, 3 and 0: the path
    assert set(touched) == {0, 1, 2, 3, 4, 8, 9, 10}
    assert dv[1, 4, 0, 1] == 0 and np.count_nonzero(dv[:, 4]) == 7
    assert not np.any(dv[:, :4])
    y = 1 / (1 + np.exp(-xv[1, 4, 0, 1]))
    assert figures[0] == 0 and figures[-1] == 0 and figures[3] == 0         # count 0, no IoU
    assert 0 < figures[1] < 1 and y > 0.8


def region_tree_layer(class_map=()):
    from minicnn.layers.detection import RegionLayer
    return RegionLayer(classes=len(LOSS_TREE), num=2, anchors=[0.8, 1.2, 2.0, 1.5],
                       softmax=True, bias_match=True, object_scale=5, noobject_scale=0.5,
                       class_scale=1.5, coord_scale=2, seen=20000, tree_parent=LOSS_TREE,
                       class_map=list(class_map))


@pytest.mark.parametrize("class_map", [(), (14, 9, 12, 6)])
def test_region_tree_loss_gradient(class_map):
    """Finite differences of the loss (each touched group's cross-entropy) with boxes, with a
    class-only image, and with the map; bias_match fixes the responsible anchors."""
    rng = np.random.default_rng(21 + len(class_map))
    e = 5 + len(LOSS_TREE)
    x = rng.normal(0, 1, (3, 2 * e, 3, 2))
    labels = np.full((3, 3, 5), -1.0)
    labels[0, :2] = [[3, 0.3, 0.4, 0.3, 0.5], [1, 0.7, 0.8, 0.4, 0.2]]
    labels[1, 0] = [2, 0, 0, 0, 0]
    labels[2, :2] = [[0, 0.5, 0.5, 0.6, 0.6], [3, 0.52, 0.45, 0.6, 0.5]]
    check_layer_gradient(lambda: region_tree_layer(class_map), [x, labels], check_bottoms=[0],
                         tops=[0], rtol=1e-5, atol=1e-8)


def test_region_tree_loss_errors():
    layer = region_tree_layer((3, 1))
    bottom = [minicnn.Blob.from_array(np.zeros((1, 2 * (5 + len(LOSS_TREE)), 1, 1))),
              minicnn.Blob.from_array(np.array([[[2, 0.5, 0.5, 0.2, 0.2]]]))]
    top = [minicnn.Blob(())]
    layer.setup(bottom, top)
    with pytest.raises(LayerError, match="a box of class 2, but region_param.class_map maps 2 "
                                         "classes"):
        layer.forward(bottom, top)
    with pytest.raises(LayerError, match="class_map names classes outside 0..14"):
        region_tree_layer((3, 15)).setup(bottom, top)


def test_region_tree_layer_reads_class_only_labels():
    """Through the layer: a box list row at x = y = 0 is a class without a box (Darknet's
    loader), so the image teaches a class and no box."""
    layer = region_tree_layer()
    e = 5 + len(LOSS_TREE)
    x = np.random.default_rng(8).normal(size=(1, 2 * e, 2, 2))
    bottom = [minicnn.Blob.from_array(x), minicnn.Blob.from_array(np.array([[[8, 0, 0, 0, 0]]],
                                                                           np.float64))]
    top = [minicnn.Blob(()), minicnn.Blob(())]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    g = bottom[0].diff.reshape(2, e, 2, 2)
    assert np.count_nonzero(g[:, 5:]) == 8 and not np.any(g[:, :4])     # the path's groups
    assert list(top[1].data[[0, 4, 5]]) == [0, 0, 0] and top[1].data[1] > 0


def test_converted_tree_net_trains(tmp_path):
    """tests/test_darknet.py's small YOLOv2 with a YOLO9000 head ([region] tree= map=, as
    yolo9000.cfg writes it), converted and trained by minicnn's SGD on four images: finite,
    falling losses, every box counted."""
    from minicnn.darknet import convert_darknet
    from minicnn.proto import caffe_pb2
    from tests.test_darknet import V2_CFG, random_weights
    from tests.test_yolo_losses import rectangle_images, train_prototxt
    write_tree(tmp_path / "t.tree", LOSS_TREE)
    (tmp_path / "t.map").write_text("8\n14\n")        # the images' classes 0, 1 -> tree nodes
    cfg_text = V2_CFG.replace("filters=30", f"filters={3 * (5 + len(LOSS_TREE))}").replace(
        "classes=5", f"classes={len(LOSS_TREE)}").replace(
        "rescore=1\n", "rescore=1\nbias_match=1\nobject_scale=5\ntree=t.tree\nmap=t.map\n")
    cfg = tmp_path / "net.cfg"
    cfg.write_text(cfg_text)
    random_weights(str(cfg), str(tmp_path / "net.weights"), dead=False)
    prototxt, caffemodel = convert_darknet(str(cfg), str(tmp_path / "net.weights"),
                                           str(tmp_path / "out"))
    with open(prototxt) as f:
        deploy = f.read()
    assert "class_map: [8, 14]" in deploy and "tree_parent: [-1, -1, -1, 0, 0, 1," in deploy
    text = train_prototxt(deploy, rectangle_images(tmp_path), 4)
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.002,
                                      lr_policy="fixed", momentum=0.9, max_iter=12)
    solver = minicnn.SGDSolver(param, log=lambda message: None)
    solver.net.copy_from(caffemodel)
    head = next(layer.name for layer in solver.net.layers if layer.type == "Region")
    losses = []
    for _ in range(12):
        solver.step(1)
        losses.append(float(solver.net.blobs[f"{head}_loss"].data))
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    assert float(solver.net.blobs[f"{head}_figures"].data[-1]) == 8


# --- [crop] and [softmax] temperature ------------------------------------------------------------

CROP_CFG = """[net]
height=11
width=14
channels=3

[crop]
crop_height=8
crop_width=9
flip=1
angle=7
saturation=1.5
exposure=1.5
shift=.2

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=ramp

[crop]
crop_height=5
crop_width=6
noadjust=1

[connected]
output=7
activation=linear

[softmax]
temperature=3
"""


@needs_darknet
def test_crop_and_softmax_temperature_match_darknet(tmp_path):
    """[crop] at test time (the centre window, rounded down, then 2 x - 1; noadjust=1 without
    it; vgg-16.cfg's, strided.cfg's), the ramp activation (strided.cfg's) and [softmax]
    temperature=3 (cifar.test.cfg's) against network_predict; the training augmentation's keys
    draw a warning."""
    with pytest.warns(UserWarning, match=r"\[crop\]: flip, angle, saturation, exposure, shift "
                                         "only change training"):
        cfg, weights, net, _ = converted(tmp_path, CROP_CFG, dead=False)
    x = np.random.default_rng(9).random((3, 11, 14), np.float32)
    want = darknet_forward(cfg, weights, x)
    outs = net.forward(data=x[None])
    got = outs[net.top_names[net.layers[-1].name][0]].ravel()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    crop = net.blobs["crop0"].data[0]
    np.testing.assert_array_equal(crop, x[:, 1:9, 2:11] * np.float32(2) - np.float32(1))
    assert net.blobs["crop2"].data.shape == (1, 4, 5, 6)
    assert 0.05 < want.max() < 0.5                           # flattened by the temperature


def test_crop_errors(tmp_path):
    from minicnn.darknet import DarknetError, build, read_cfg
    from tests.test_darknet import _Recorder
    cfg = tmp_path / "c.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=1\n[crop]\ncrop_height=5\ncrop_width=2\n")
    with pytest.raises(DarknetError, match=r"c\.cfg:5: \[crop\]: a 5x2 crop of a 1x4x4 output"):
        build(read_cfg(str(cfg)), _Recorder())


@needs_darknet
def test_go_cfg_reorg_extra_matches_darknet(tmp_path):
    """Debian's go.test.cfg (19 x 19 board, 13 BN convolutions, [reorg] extra=1: the 361 scores
    and a zero for "pass", then [softmax]) against network_predict."""
    cfg, weights, net, _ = converted(tmp_path, _debian_cfg("go.test.cfg", 19), dead=False)
    x = np.random.default_rng(10).integers(-1, 2, (1, 19, 19)).astype(np.float32)
    want = darknet_forward(cfg, weights, x)
    outs = net.forward(data=x[None])
    got = outs[net.top_names[net.layers[-1].name][0]].ravel()
    assert got.shape == (362,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    reorg = next(name for name in net.blobs if re.fullmatch(r"reorg\d+", name))
    assert net.blobs[reorg].data[0, -1] == 0


@pytest.mark.skipif(not os.path.exists(os.path.join(CFG_DIR, "rnn.cfg")),
                    reason="Debian's darknet cfgs are not installed")
def test_recurrent_cfgs_are_refused_by_name():
    from minicnn.darknet import DarknetError, build, read_cfg
    from tests.test_darknet import _Recorder
    for name, kind in (("rnn.cfg", "rnn"), ("gru.cfg", "gru")):
        with pytest.raises(DarknetError, match=rf"{name}:\d+: \[{kind}\]: Darknet's recurrent "
                                               "layers .* keep a state"):
            build(read_cfg(os.path.join(CFG_DIR, name)), _Recorder())
