"""SSD training end to end, as users of Wei Liu's SSD fork run it: images with VOC XML,
`minicnn convert-annoset` with the flags of the fork's create_data.sh, a train net (AnnotatedData
with the fork's batch samplers, PriorBox, Permute, Flatten, Concat, MultiBoxLoss) and a test net
(DetectionOutput, DetectionEvaluate) as ssd_pascal.py writes them, only smaller; a solver with
eval_type "detection"; then the deploy net on the trained weights, and the test-only solver of
the fork's score_ssd_pascal.py (max_iter 0). The images are drawn here: a rectangle ("car"), a
disc ("cat") or a cross ("dog") on noise, so that a few convolutions learn them in seconds.
(docs/ssd.md: the real VGG SSD300 and MobileNet-SSD files trained the same way.)"""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import cli
from minicnn.data.datum import decode_image, encode_image, resize_image
from minicnn.net_spec import NetSpec
from minicnn.net_spec import layers as L
from minicnn.net_spec import params as P
from minicnn.ops.ssd import nms_fast
from minicnn.proto import caffe_pb2, parse_text

LABELMAP = """item { name: "none_of_the_above" label: 0 display_name: "background" }
item { name: "car" label: 1 display_name: "car" }
item { name: "cat" label: 2 display_name: "cat" }
item { name: "dog" label: 3 display_name: "dog" }
"""
CLASSES = ["car", "cat", "dog"]
COLORS = [(220, 40, 40), (40, 200, 40), (40, 60, 220)]        # BGR
SIZE = 64                                                      # the nets' input: SIZE x SIZE


def draw(img, cls, box):
    """Draw shape ``cls`` filling ``box`` (x0, y0, x1, y1, inclusive pixels) into HWC ``img``."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    if cls == 0:
        mask = np.ones_like(xs, dtype=bool)
    elif cls == 1:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    else:
        tx, ty = max(2, (x1 - x0) // 4), max(2, (y1 - y0) // 4)
        mask = (np.abs(xs - (x0 + x1) / 2) <= tx / 2) | (np.abs(ys - (y0 + y1) / 2) <= ty / 2)
    img[y0:y1 + 1, x0:x1 + 1][mask] = COLORS[cls]


def make_image(rng):
    """A noisy W x H image with one or two shapes that do not overlap; their boxes."""
    w, h = int(rng.integers(72, 104)), int(rng.integers(64, 96))
    img = rng.integers(90, 166, (h, w, 3)).astype(np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, 3))):
        for _try in range(30):
            bw, bh = int(rng.integers(w // 3, w // 2)), int(rng.integers(h // 3, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1]
                   for _, b in objects):
                objects.append((int(rng.integers(0, 3)), box))
                break
    for cls, box in objects:
        draw(img, cls, box)
    return img, objects


def voc_xml(name, w, h, objects):
    """The VOC annotation of an image (1-based pixel boxes, as VOC writes them)."""
    objs = "".join(
        f"<object><name>{CLASSES[c]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0] + 1}</xmin><ymin>{b[1] + 1}</ymin>"
        f"<xmax>{b[2] + 1}</xmax><ymax>{b[3] + 1}</ymax></bndbox></object>" for c, b in objects)
    return (f"<annotation><folder>VOC</folder><filename>{name}.jpg</filename><size>"
            f"<width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


@pytest.fixture(scope="module")
def ssd_data(tmp_path_factory):
    """VOC-style folders, list files (create_list.sh's `image annotation` lines), the name-size
    file, the label map, and trainval / test LMDBs written by convert-annoset."""
    root = tmp_path_factory.mktemp("ssd")
    (root / "VOC" / "JPEGImages").mkdir(parents=True)
    (root / "VOC" / "Annotations").mkdir()
    (root / "labelmap.prototxt").write_text(LABELMAP)
    rng = np.random.default_rng(5)
    test_images = []
    for split, count in (("trainval", 48), ("test", 12)):
        lines, sizes = [], []
        for k in range(count):
            name = f"{split}_{k:03d}"
            img, objects = make_image(rng)
            h, w = img.shape[:2]
            (root / "VOC" / "JPEGImages" / f"{name}.jpg").write_bytes(
                encode_image(img.transpose(2, 0, 1), "jpg"))
            (root / "VOC" / "Annotations" / f"{name}.xml").write_text(voc_xml(name, w, h,
                                                                              objects))
            lines.append(f"JPEGImages/{name}.jpg Annotations/{name}.xml")
            sizes.append(f"{name} {h} {w}")
            if split == "test":
                test_images.append((name, objects))
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        if split == "test":
            (root / "test_name_size.txt").write_text("\n".join(sizes) + "\n")
        # data/VOC0712/create_data.sh's flags
        assert cli.main(["convert-annoset", "--anno-type=detection", "--label-type=xml",
                         f"--label-map-file={root / 'labelmap.prototxt'}", "--min-dim=0",
                         "--max-dim=0", "--resize-width=0", "--resize-height=0", "--check-label",
                         "--encode-type=jpg", "--encoded", str(root / "VOC") + "/",
                         str(root / f"{split}.txt"), str(root / f"{split}_lmdb")]) == 0
    return root, test_images


HEADS = [("conv3", 12, 24), ("conv4", 24, 40), ("conv5", 40, 60)]    # 8x8, 4x4, 2x2 maps


def body():
    """Five stride-2 convolutions and three SSD heads, as CreateMultiBoxHead writes them."""
    layers, prev = [], "data"
    for i, c in enumerate([8, 16, 16, 32, 32], 1):
        layers.append(f'''layer {{ name: "conv{i}" type: "Convolution" bottom: "{prev}"
  top: "conv{i}" param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: {c} pad: 1 kernel_size: 3 stride: 2
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "relu{i}" type: "ReLU" bottom: "conv{i}" top: "conv{i}" }}''')
        prev = f"conv{i}"
    for src, min_size, max_size in HEADS:      # 4 priors a cell: 1, max, 2 and 1/2
        for kind, num_output in (("loc", 4 * 4), ("conf", 4 * 4)):
            layers.append(f'''layer {{ name: "{src}_mbox_{kind}" type: "Convolution"
  bottom: "{src}" top: "{src}_mbox_{kind}"
  convolution_param {{ num_output: {num_output} pad: 1 kernel_size: 3 stride: 1
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "{src}_mbox_{kind}_perm" type: "Permute" bottom: "{src}_mbox_{kind}"
  top: "{src}_mbox_{kind}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{src}_mbox_{kind}_flat" type: "Flatten" bottom: "{src}_mbox_{kind}_perm"
  top: "{src}_mbox_{kind}_flat" flatten_param {{ axis: 1 }} }}''')
        layers.append(f'''layer {{ name: "{src}_mbox_priorbox" type: "PriorBox" bottom: "{src}"
  bottom: "data" top: "{src}_mbox_priorbox"
  prior_box_param {{ min_size: {min_size} max_size: {max_size} aspect_ratio: 2 flip: true
    clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 }} }}''')
    for top, kind, axis in (("mbox_loc", "loc_flat", 1), ("mbox_conf", "conf_flat", 1),
                            ("mbox_priorbox", "priorbox", 2)):
        bottoms = " ".join(f'bottom: "{src}_mbox_{kind}"' for src, _, _ in HEADS)
        layers.append(f'layer {{ name: "{top}" type: "Concat" {bottoms} top: "{top}" '
                      f'concat_param {{ axis: {axis} }} }}')
    return "\n".join(layers)


TRANSFORM = (f"mean_value: 128 mean_value: 128 mean_value: 128 scale: 0.0078125 resize_param {{ "
             f"prob: 1 resize_mode: WARP height: {SIZE} width: {SIZE} interp_mode: LINEAR }}")

SAMPLER = """batch_sampler {{ sampler {{ min_scale: 0.5 max_scale: 1.0 min_aspect_ratio: 0.5
      max_aspect_ratio: 2.0 }} sample_constraint {{ {} }} max_sample: 1 max_trials: 50 }}"""

CONF_TAIL = """layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf"
  top: "mbox_conf_reshape" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape"
  top: "mbox_conf_softmax" softmax_param { axis: 2 } }
layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax"
  top: "mbox_conf_flatten" flatten_param { axis: 1 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc"
  bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"
  include { phase: TEST }
  detection_output_param { num_classes: 4 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200
    confidence_threshold: 0.01 } }"""


def train_net(root, batch_size=8):
    samplers = "batch_sampler { max_sample: 1 max_trials: 1 } " + " ".join(
        SAMPLER.format(c) for c in ("min_jaccard_overlap: 0.5", "min_jaccard_overlap: 0.7",
                                    "max_jaccard_overlap: 1.0"))
    return f'''name: "tiny_ssd_train"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ mirror: true {TRANSFORM} emit_constraint {{ emit_type: CENTER }} }}
  data_param {{ source: "{root / 'trainval_lmdb'}" batch_size: {batch_size} backend: LMDB }}
  annotated_data_param {{ {samplers} label_map_file: "{root / 'labelmap.prototxt'}" }} }}
{body()}
layer {{ name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf"
  bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss" include {{ phase: TRAIN }}
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param {{ normalization: VALID }}
  multibox_loss_param {{ loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
    num_classes: 4 share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE }} }}
'''


def ssd_test_net(root, batch_size=6):
    return f'''name: "tiny_ssd_test"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ {TRANSFORM} }}
  data_param {{ source: "{root / 'test_lmdb'}" batch_size: {batch_size} backend: LMDB }}
  annotated_data_param {{ batch_sampler {{ }} label_map_file: "{root / 'labelmap.prototxt'}" }} }}
{body()}
{CONF_TAIL}
layer {{ name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out"
  bottom: "label" top: "detection_eval" include {{ phase: TEST }}
  detection_evaluate_param {{ num_classes: 4 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false name_size_file: "{root / 'test_name_size.txt'}" }} }}
'''


def deploy_net():
    """ssd_pascal.py's deploy net: the test net without its data and DetectionEvaluate."""
    return f'''name: "tiny_ssd_deploy"
input: "data" input_shape {{ dim: 1 dim: 3 dim: {SIZE} dim: {SIZE} }}
{body()}
{CONF_TAIL}
'''


def write_solver(root, name, **fields):
    (root / "train.prototxt").write_text(train_net(root))
    (root / "test.prototxt").write_text(ssd_test_net(root))
    settings = {"train_net": f'"{root / "train.prototxt"}"',
                "test_net": f'"{root / "test.prototxt"}"', "test_iter": 2, "test_interval": 30,
                "base_lr": 0.004, "lr_policy": '"fixed"', "momentum": 0.9, "momentum2": 0.999,
                "weight_decay": 0.0005, "type": '"Adam"', "display": 10, "max_iter": 60,
                "snapshot": 0, "snapshot_prefix": f'"{root / name}"', "random_seed": 1,
                "test_initialization": "true", "eval_type": '"detection"',
                "ap_version": '"11point"'}
    settings.update(fields)
    (root / f"{name}.prototxt").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
    return root / f"{name}.prototxt"


MAP_LINE = "    Test net output #0: detection_eval = "


def logged_maps(log):
    """The mAP of each test in a solver log, in order (the fork's TestDetection lines)."""
    return [float(line[len(MAP_LINE):]) for line in log if line.startswith(MAP_LINE)]


@pytest.fixture(scope="module")
def trained(ssd_data):
    """60 Adam iterations of the small SSD (tests at 0, 30 and 60); the solver's log and the
    weights of the last iteration."""
    root, _ = ssd_data
    log = []
    solver = minicnn.get_solver(str(write_solver(root, "tiny")), log=log.append)
    solver.solve()
    return log, solver.last_snapshot


def test_training_raises_the_map_from_chance(trained):
    log, weights = trained
    losses = [float(line.rsplit("= ", 1)[1]) for line in log
              if line.startswith("Iteration ") and ", loss = " in line]
    assert len(losses) == 7 and all(math.isfinite(v) for v in losses)
    maps = logged_maps(log)
    assert len(maps) == 3                     # at iterations 0, 30 and 60
    assert maps[0] < 0.05                     # the filler weights: chance
    assert maps[0] < maps[1] < maps[2]
    assert maps[2] > 0.5                      # measured 0.014, 0.35, 0.71 (11point)
    assert weights.endswith("tiny_iter_60.caffemodel")


def test_minicnn_test_scores_the_trained_net_as_the_solver_did(ssd_data, trained, capsys):
    # the same 12 test images in the same order: `minicnn test --eval-type detection` is the
    # solver's last test
    root, _ = ssd_data
    log, weights = trained
    assert cli.main(["test", str(root / "test.prototxt"), "--weights", weights,
                     "--iterations", "2", "--eval-type", "detection",
                     "--ap-version", "11point"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == [line for line in log if line.startswith(MAP_LINE)][-1]


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_deploy_net_finds_the_shapes_with_the_trained_weights(ssd_data, trained, tmp_path):
    root, test_images = ssd_data
    _, weights = trained
    (tmp_path / "deploy.prototxt").write_text(deploy_net())
    net = minicnn.Net(str(tmp_path / "deploy.prototxt"), weights=weights, phase=minicnn.TEST)
    found = total = 0
    for name, objects in test_images:
        chw = decode_image((root / "VOC" / "JPEGImages" / f"{name}.jpg").read_bytes())
        h, w = chw.shape[1:]
        # as AnnotatedData feeds it: BGR warped to SIZE x SIZE (OpenCV's bilinear), minus the
        # mean 128, times the scale 1/128
        x = resize_image(chw, SIZE, SIZE).astype(np.float32)
        net.blobs["data"].data[...] = ((x - 128) / 128)[None]
        rows = net.forward()["detection_out"].reshape(-1, 7)
        for cls, (x0, y0, x1, y1) in objects:
            gt = ((x0 + 1) / w, (y0 + 1) / h, (x1 + 1) / w, (y1 + 1) / h)
            best = max((r for r in rows if r[1] == cls + 1), key=lambda r: r[2], default=None)
            total += 1
            found += best is not None and iou(best[3:7], gt) > 0.5
    # measured: 10 of 16 (the filler weights find none)
    assert found >= total / 3, f"{found} of {total} shapes found"


def test_score_solver_with_max_iter_zero_only_tests(ssd_data, trained, capsys):
    # score_ssd_pascal.py: max_iter 0, snapshot 0, snapshot_after_train false,
    # test_initialization true, run as `caffe train --solver ... --weights ...`: Caffe's
    # Solve steps nothing, displays the train loss, tests once at iteration 0 and writes no
    # snapshot
    root, _ = ssd_data
    log, weights = trained
    path = write_solver(root, "score", max_iter=0, snapshot_after_train="false")
    assert cli.main(["train", str(path), "--weights", weights, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("Testing net (#0)") == 1
    assert "Iteration 0, Testing net (#0)" in out
    assert [line for line in log if line.startswith(MAP_LINE)][-1] in out.splitlines()
    assert "Optimization Done." in out
    assert not list(root.glob("score_iter_*"))


def test_max_iter_below_zero_names_the_field(ssd_data, capsys):
    root, _ = ssd_data
    path = write_solver(root, "negative", max_iter=-1)
    assert cli.main(["train", str(path), "--no-progress"]) != 0
    assert "max_iter is -1: it must be 0 (only the final test) or more" in \
        capsys.readouterr().err


def test_snapshot_and_resume_continue_as_one_run(ssd_data):
    # AnnotatedData's samplers, distortion-free crops and mirror draw from the RNG: resumed at
    # iteration 3, the losses of iterations 3 to 5 are those of the run without a stop
    root, _ = ssd_data
    untested = dict(display=1, test_interval=1000, test_initialization="false")  # as Caffe wants
    straight = []
    minicnn.get_solver(str(write_solver(root, "straight", max_iter=6, **untested,
                                        snapshot_after_train="false")),
                       log=straight.append).solve()
    first = minicnn.get_solver(str(write_solver(root, "resumed", max_iter=3, **untested)),
                               log=lambda m: None)
    first.solve()
    resumed = []
    minicnn.get_solver(str(write_solver(root, "resumed", max_iter=6, **untested,
                                        snapshot_after_train="false")),
                       log=resumed.append).solve(str(root / "resumed_iter_3.solverstate"))

    def losses(log):
        return [(line.split(" ", 2)[1], line.rsplit("= ", 1)[1]) for line in log
                if ", loss = " in line]
    assert len(losses(straight)) == 7
    assert losses(resumed) == losses(straight)[3:]


def test_ssd_pascal_py_spelling_writes_the_same_loss_layer(ssd_data):
    # ssd_pascal.py builds its nets with NetSpec and these names: caffe.proto's
    # PriorBoxParameter.CodeType (P.PriorBox.CENTER_SIZE, the type of code_type) and protobuf's
    # enum wrapper for the top-level Phase (caffe_pb2.Phase.Value('TRAIN'))
    root, _ = ssd_data
    n = NetSpec()
    n.mbox_loc, n.mbox_conf, n.mbox_priorbox, n.label = L.Input(ntop=4)
    multibox_loss_param = {
        "loc_loss_type": P.MultiBoxLoss.SMOOTH_L1, "conf_loss_type": P.MultiBoxLoss.SOFTMAX,
        "loc_weight": 1.0, "num_classes": 4, "share_location": True,
        "match_type": P.MultiBoxLoss.PER_PREDICTION, "overlap_threshold": 0.5,
        "use_prior_for_matching": True, "background_label_id": 0, "use_difficult_gt": True,
        "neg_pos_ratio": 3.0, "neg_overlap": 0.5, "code_type": P.PriorBox.CENTER_SIZE,
        "ignore_cross_boundary_bbox": False, "mining_type": P.MultiBoxLoss.MAX_NEGATIVE}
    n.mbox_loss = L.MultiBoxLoss(n.mbox_loc, n.mbox_conf, n.mbox_priorbox, n.label,
                                 multibox_loss_param=multibox_loss_param,
                                 loss_param={"normalization": P.Loss.VALID},
                                 include={"phase": caffe_pb2.Phase.Value("TRAIN")},
                                 propagate_down=[True, True, False, False])
    written = parse_text(train_net(root)).layer[-1]
    assert n.to_proto().layer[-1] == written
    assert (P.PriorBox.CORNER, P.PriorBox.CORNER_SIZE) == ("CORNER", "CORNER_SIZE")
    assert caffe_pb2.Phase.Value("TRAIN") == caffe_pb2.TRAIN      # minicnn's enum values: names
    assert caffe_pb2.Phase.Name(1) == caffe_pb2.Phase.Name("TEST") == caffe_pb2.TEST
    assert caffe_pb2.Phase.keys() == ["TRAIN", "TEST"]
    with pytest.raises(ValueError, match="enum Phase has no value named 'VAL'"):
        caffe_pb2.Phase.Value("VAL")
    with pytest.raises(AttributeError, match=r"PriorBoxParameter has no enum value 'CENTER' "
                                             r"\(it has: CENTER_SIZE, CORNER, CORNER_SIZE\)"):
        assert P.PriorBox.CENTER


def fork_apply_nms_fast(boxes, scores, score_threshold, nms_threshold, eta, top_k):
    """The fork's ApplyNMSFast (bbox_util.cpp) as its loops run, in float: GetMaxScoreIndex's
    stable sort of the scores above the threshold, the top_k first, then each candidate against
    the boxes kept so far, JaccardOverlap(candidate, kept) <= the adaptive threshold."""
    f32 = np.float32

    def size(b):
        return f32(0) if b[2] < b[0] or b[3] < b[1] else f32(b[2] - b[0]) * f32(b[3] - b[1])

    def jaccard(b1, b2):
        if b2[0] > b1[2] or b2[2] < b1[0] or b2[1] > b1[3] or b2[3] < b1[1]:
            return f32(0)
        w = f32(min(b1[2], b2[2]) - max(b1[0], b2[0]))
        h = f32(min(b1[3], b2[3]) - max(b1[1], b2[1]))
        inter = w * h
        return inter / (size(b1) + size(b2) - inter) if inter > 0 else f32(0)

    order = sorted((i for i in range(len(scores)) if scores[i] > f32(score_threshold)),
                   key=lambda i: -scores[i])                     # sorted() is stable
    if top_k > -1:
        order = order[:top_k]
    threshold, kept = f32(nms_threshold), []
    for i in order:
        keep = all(jaccard(boxes[i], boxes[j]) <= threshold for j in kept)
        if keep:
            kept.append(i)
            if eta < 1 and threshold > 0.5:
                threshold = threshold * f32(eta)
    return kept


@settings(deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(0, 120),
       nms_threshold=st.sampled_from([0.0, 0.3, 0.45, 0.7, 1.0]),
       eta=st.sampled_from([1.0, 0.9, 0.5]), top_k=st.sampled_from([-1, 5, 400]))
def test_detection_output_nms_keeps_the_forks_boxes(seed, n, nms_threshold, eta, top_k):
    # DetectionOutput's NMS (ops.nms_fast) on crowded boxes and tied scores, against the loops
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.3, 0.7, (n, 2))
    sizes = rng.uniform(0.05, 0.4, (n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    boxes[rng.random(n) < 0.1] = boxes[0] if n else 0          # some exact duplicates
    scores = np.round(rng.random(n), 1).astype(np.float32)     # many ties
    want = fork_apply_nms_fast(boxes, scores, 0.01, nms_threshold, eta, top_k)
    assert nms_fast(boxes, scores, 0.01, nms_threshold, eta=eta, top_k=top_k) == want


# --- minicnn detect on an SSD deploy net, as the fork's examples/ssd/ssd_detect.cpp ------------

def ssd_detect_reference(net, path, mean=(104, 117, 123), threshold=0.01):
    """ssd_detect.cpp's Detector on one image, written out with OpenCV: cv::imread(file, -1),
    gray/BGRA -> BGR, cv::resize to the input, float, minus mean_value; DetectionOutput's rows
    whose image is not -1 and whose score >= confidence_threshold, corners times cols/rows."""
    cv2 = pytest.importorskip("cv2")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    rows_, cols = img.shape[:2]
    sample = cv2.resize(img, (SIZE, SIZE)).astype(np.float32) - np.float32(mean)
    rows = net.forward(data=sample.transpose(2, 0, 1)[None])["detection_out"].reshape(-1, 7)
    return [(int(r[1]), float(r[2]), [r[3] * cols, r[4] * rows_, r[5] * cols, r[6] * rows_])
            for r in rows if r[0] != -1 and r[2] >= threshold]


def test_detect_runs_an_ssd_deploy_net_as_ssd_detect_does(tmp_path, capsys):
    # a user with an SSD deploy net reaches for `minicnn detect` first; it used to answer
    # "the net must have exactly one Detection layer"
    from PIL import Image
    rng = np.random.default_rng(3)
    minicnn.set_random_seed(5)
    (tmp_path / "deploy.prototxt").write_text(deploy_net())
    (tmp_path / "labelmap.prototxt").write_text(LABELMAP)
    net = minicnn.Net(str(tmp_path / "deploy.prototxt"), phase=minicnn.TEST)
    for k, layer in enumerate(l for l in net.layers if l.blobs):   # biases too: scores differ
        w, b = layer.blobs[0], layer.blobs[1]
        w.data[...] = rng.normal(0, 1, w.shape) / np.sqrt(np.prod(w.shape[1:])) / (
            128 if k == 0 else 1)                                      # pixels minus the mean
        b.data[...] = rng.normal(0, 1.5, b.shape)
    net.save(str(tmp_path / "w.caffemodel"))
    images = [tmp_path / "rgb.png", tmp_path / "gray.png", tmp_path / "alpha.png"]
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), np.uint8)).save(images[0])
    Image.fromarray(rng.integers(0, 256, (90, 40), np.uint8)).save(images[1])
    Image.fromarray(rng.integers(0, 256, (64, 64, 4), np.uint8), "RGBA").save(images[2])
    assert cli.main(["detect", "--model", str(tmp_path / "deploy.prototxt"), "--weights",
                     str(tmp_path / "w.caffemodel"), "--names", str(tmp_path / "labelmap.prototxt"),
                     *map(str, images), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    found = json.loads((tmp_path / "out" / "detections.json").read_text())
    reference = minicnn.Net(str(tmp_path / "deploy.prototxt"),
                            weights=str(tmp_path / "w.caffemodel"), phase=minicnn.TEST)
    names = ["background", *CLASSES]
    total = 0
    for path, entry in zip(images, found):
        want = sorted(ssd_detect_reference(reference, path), key=lambda d: -d[1])
        got = entry["detections"]
        assert len(got) == len(want) and (tmp_path / "out" / f"{path.stem}.png").exists()
        total += len(got)
        for d, (label, score, box) in zip(got, want):
            assert (d["class"], d["label"]) == (label, names[label])
            np.testing.assert_allclose(d["score"], score, rtol=1e-5)
            np.testing.assert_allclose(d["box"], box, rtol=1e-5, atol=1e-3)
        assert f"{path}: {len(got)} detection(s)" in printed
    assert total > 10 and {d["class"] for e in found for d in e["detections"]} >= {1, 2, 3}
    scores = [d["score"] for e in found for d in e["detections"]]
    assert min(scores) < 0.1 and max(scores) > 0.5    # the default threshold (0.01) matters


def test_eval_detection_points_an_ssd_net_to_minicnn_test(tmp_path, capsys):
    (tmp_path / "deploy.prototxt").write_text(deploy_net())
    (tmp_path / "list.txt").write_text("images/a.png\n")
    assert cli.main(["eval-detection", "--model", str(tmp_path / "deploy.prototxt"), "--list",
                     str(tmp_path / "list.txt")]) == 1
    assert "minicnn test --model test.prototxt --weights W --iterations N --eval-type " \
           "detection" in capsys.readouterr().err


def test_an_ssd_test_net_scored_as_classification_says_to_ask_for_detection(ssd_data, capsys,
                                                                             caplog):
    # the fork's eval_type defaults to "classification": a solver without eval_type "detection"
    # prints each of DetectionEvaluate's values averaged (thousands of lines per test), as the
    # fork does, and no mAP; minicnn says once which setting gives the mAP
    root, _ = ssd_data
    note = "has DetectionEvaluate ('detection_eval') but is scored as \"classification\""
    for eval_type, noted in (('"classification"', True), ('"detection"', False)):
        path = write_solver(root, "noted", max_iter=0, test_initialization="false",
                            snapshot_after_train="false", eval_type=eval_type)
        caplog.clear()
        with caplog.at_level("INFO"):        # the solver's log before the command's own starts
            assert cli.main(["train", str(path), "--no-progress"]) == 0
        out = "".join(capsys.readouterr()) + caplog.text
        assert (f"note: test net #0 {note} (the default): each value of its rows is averaged, "
                "not the mAP; eval_type: \"detection\" (ssd_pascal.py's solver sets it) gives "
                "the mAP" in out) == noted
    for flags, noted in (([], True), (["--eval-type", "detection"], False)):
        assert cli.main(["test", str(root / "test.prototxt"), "--iterations", "1",
                         *flags]) == 0
        err = capsys.readouterr().err
        assert (f"note: the net {note}" in err and "--eval-type detection gives the mAP" in err) \
            == noted
    assert cli.main(["test", str(root / "train.prototxt"), "--iterations", "1", "--phase",
                     "TRAIN"]) == 0
    assert "DetectionEvaluate" not in capsys.readouterr().err      # no such layer: no note
