"""Using a YOLOv1 detector (minicnn.detection): decoding, Darknet's per-class NMS, the VOC
average precision against hand-worked cases, minicnn.detect on a net, and the detect and
eval-detection commands."""

import json
import os

import numpy as np
import pytest

import minicnn
from minicnn.cli import main
from minicnn.data.datum import decode_image, encode_image
from minicnn.data.detection import write_labels
from minicnn.data.errors import need
from minicnn.detection import (
    decode,
    detections_from,
    evaluate,
    iou_matrix,
    match_detections,
    nms,
    truths_from_labels,
    voc_ap,
)
from minicnn.errors import MinicnnError

need("PIL.Image", "Pillow")          # encode_image and decode_image use Pillow's Image module


def det(c, score, box):
    return {"class": c, "label": str(c), "score": score, "box": list(box)}


# --- decoding and NMS ----------------------------------------------------------------------------

def test_decode_by_hand():
    side, num, classes = 2, 1, 2
    probs = np.zeros((4, 2))
    probs[3] = [0.25, 0.75]
    conf = np.array([0.1, 0.2, 0.3, 0.8])
    boxes = np.zeros((4, 4))
    boxes[3] = [0.5, 0.5, 0.5, 0.4]                      # cell (row 1, col 1); sqrt sizes
    pred = np.concatenate([probs.ravel(), conf, boxes.ravel()])
    b, s = decode(pred, side, num, classes, sqrt=True, width=200, height=100)
    np.testing.assert_allclose(b[3], [150, 75, 50, 16])   # ((0.5+1)/2*200, .., .25*200, .16*100)
    np.testing.assert_allclose(s[3], [0.2, 0.6])
    np.testing.assert_allclose(s[:3], 0)
    b, _ = decode(pred, side, num, classes, sqrt=False)
    np.testing.assert_allclose(b[3], [0.75, 0.75, 0.5, 0.4])
    with pytest.raises(MinicnnError, match="do not fit"):
        decode(pred[:-1], side, num, classes)


def test_nms_is_per_class_and_strict():
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1],
                      [0.52, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]])
    scores = np.array([[0.9, 0], [0.8, 0], [0.7, 0], [0, 0.5], [0.2, 0.21]])
    out = nms(boxes, scores, thresh=0.2, nms_thresh=0.4)
    # 1 overlaps 0 by IoU 0.818 in class 0: suppressed; 3 is class 1: kept; 0.2 is not > 0.2
    np.testing.assert_allclose(out, [[0.9, 0], [0, 0], [0.7, 0], [0, 0.5], [0, 0.21]])


def test_nms_keeps_an_iou_of_exactly_the_threshold():
    boxes = np.array([[5, 5, 10, 10], [5, 2, 10, 4]], float)   # IoU 40 / 100
    assert iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 4]])[0, 0] == 0.4
    np.testing.assert_allclose(nms(boxes, [[0.9], [0.8]], 0.2, 0.4), [[0.9], [0.8]])
    np.testing.assert_allclose(nms(boxes, [[0.9], [0.8]], 0.2, 0.39), [[0.9], [0]])


def test_suppressed_boxes_do_not_suppress():
    """Darknet skips a box whose class score was zeroed: it cannot suppress a third one."""
    boxes = np.array([[0.0, 0.5, 0.2, 0.2], [0.1, 0.5, 0.2, 0.2], [0.2, 0.5, 0.2, 0.2]])
    out = nms(boxes, [[0.9], [0.8], [0.7]], 0.1, 0.3)           # 0-1 and 1-2: IoU 1/3
    np.testing.assert_allclose(out, [[0.9], [0], [0.7]])


def test_detections_are_clipped_and_sorted():
    pred = np.zeros(1 * (1 + 5))
    pred[:] = [1.0, 0.9, 0.5, 0.5, 1.2, 0.5]          # P, conf, x, y, sqrt w, sqrt h
    (d,) = detections_from(pred, 1, 1, 1, width=10, height=10, names=["digit"])
    assert d["label"] == "digit" and d["score"] == pytest.approx(0.9)
    np.testing.assert_allclose(d["box"], [0, 3.75, 10, 6.25])   # w 14.4 clipped to the image


def test_detections_are_reported_best_first_across_cells_and_classes():
    side, num, classes = 2, 1, 2                      # four cells apart: no NMS between them
    probs = np.array([[0.3, 0.0], [0.0, 0.9], [0.6, 0.0], [0.0, 0.0]])
    conf, boxes = np.ones(4), np.tile([0.5, 0.5, 0.3, 0.3], 4)
    pred = np.concatenate([probs.ravel(), conf, boxes])
    got = detections_from(pred, side, num, classes, width=1, height=1, thresh=0.1)
    assert [(d["class"], d["score"]) for d in got] == [(1, 0.9), (0, 0.6), (0, 0.3)]


def test_iou_of_boxes_apart_along_one_axis_is_zero():
    a = [[0, 0, 10, 10]]
    np.testing.assert_array_equal(iou_matrix(a, [[20, 2, 30, 8], [2, 20, 8, 30],
                                                  [20, 20, 30, 30], [10, 0, 20, 10]]),
                                  [[0, 0, 0, 0]])


# --- average precision, worked by hand ------------------------------------------------------------

def test_voc_ap_hand_worked():
    recall = [1 / 3, 1 / 3, 2 / 3, 2 / 3]
    precision = [1, 1 / 2, 2 / 3, 1 / 2]
    # all-point: 1/3 * 1 + 1/3 * 2/3 (the precision made monotone) + 1/3 * 0
    assert voc_ap(recall, precision) == pytest.approx(5 / 9)
    # 11-point: r = 0..0.3 -> 1 (4 points), 0.4..0.6 -> 2/3 (3 points), 0.7..1 -> 0
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(6 / 11)
    # a precision that rises later lifts the earlier recall levels (the envelope): 1/2 at
    # recall 1/2 counts as 2/3, the best precision at any higher recall
    assert voc_ap([0, 0.5, 1.0], [0, 0.5, 2 / 3]) == pytest.approx(2 / 3)
    assert voc_ap([0.5, 1.0], [1.0, 1.0]) == 1.0
    assert voc_ap([0.5, 1.0], [1.0, 1.0], True) == 1.0


def test_evaluate_hand_worked():
    truths = [np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30], [1, 0, 0, 10, 10]]),
              np.array([[0, 50, 50, 60, 60]])]
    detections = [
        [det(0, 0.9, [0, 0, 10, 10]),            # TP
         det(0, 0.8, [0, 0, 10, 10]),            # duplicate of the same truth: FP
         det(0, 0.6, [80, 80, 90, 90]),          # nothing there: FP
         det(1, 0.5, [0, 0, 10, 5]),             # IoU exactly 0.5 with class 1's truth: TP
         det(2, 0.4, [0, 0, 10, 10])],           # class 2 has no truth: no AP
        [det(0, 0.7, [50, 50, 60, 60]),          # TP
         det(1, 0.95, [0, 0, 10, 10])],          # class 1's truth is in the other image: FP
    ]
    result = evaluate(detections, truths, 3)
    c0, c1, c2 = result["classes"]
    assert (c0["ground_truths"], c0["detections"]) == (3, 4)
    assert c0["ap_allpoint"] == pytest.approx(5 / 9)
    assert c0["ap_11point"] == pytest.approx(6 / 11)
    np.testing.assert_allclose(c0["recall"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # class 1: FP (0.95) then TP (0.5): precision 1/2 at recall 1
    assert c1["ap_allpoint"] == pytest.approx(0.5) and c1["ap_11point"] == pytest.approx(0.5)
    assert c2["ap_allpoint"] is None and c2["ground_truths"] == 0
    assert result["map_allpoint"] == pytest.approx((5 / 9 + 0.5) / 2)
    assert result["map_11point"] == pytest.approx((6 / 11 + 0.5) / 2)


def test_iou_just_below_half_is_a_false_positive():
    (_, tp, n), = match_detections([[det(0, 0.9, [0, 0, 10, 4.99])]],
                                        [np.array([[0, 0, 0, 10, 10]])], 1)
    assert n == 1 and tp.tolist() == [False]
    with pytest.raises(MinicnnError, match="2 images of detections but 1"):
        match_detections([[], []], [np.zeros((0, 5))], 1)


def test_perfect_detections_score_one():
    rng = np.random.default_rng(0)
    truths, found = [], []
    for _ in range(5):
        boxes = np.sort(rng.uniform(0, 100, (3, 2, 2)), axis=1).reshape(3, 4)   # x0 y0 x1 y1
        classes = rng.integers(0, 4, 3)
        truths.append(np.concatenate([classes[:, None], boxes], axis=1))
        found.append([det(int(c), float(rng.uniform(0.3, 1)), b) for c, b in zip(classes, boxes)])
    result = evaluate(found, truths, 4)
    for e in result["classes"]:
        assert e["ap_allpoint"] in (None, 1.0) and e["ap_11point"] in (None, 1.0)


def test_truths_from_labels():
    np.testing.assert_allclose(truths_from_labels([[3, 0.5, 0.25, 0.2, 0.1]], 200, 100),
                               [[3, 80, 20, 120, 30]])


# --- a net: minicnn.detect and the commands -------------------------------------------------------

DEPLOY = """name: "constant"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 24 } }
layer { name: "detection" type: "Detection" bottom: "fc" top: "detection"
        detection_param { side: 2 num: 1 classes: 1 } }
"""


@pytest.fixture
def constant_detector(tmp_path):
    """A 'detector' whose output ignores the image: one box, class 0, in cell (0, 1), centre
    (0.75, 0.25) of the image, size 0.25 x 0.16 (sqrt 0.5 x 0.4), score 0.9 * 0.8."""
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = minicnn.Net(str(tmp_path / "deploy.prototxt"), phase=minicnn.TEST)
    bias = np.zeros(24, np.float32)
    bias[1] = 0.8                                 # P(class 0) in cell 1
    bias[4 + 1] = 0.9                             # confidence of cell 1
    bias[8 + 4:8 + 8] = [0.5, 0.5, 0.5, 0.4]      # box of cell 1
    net.params["fc"][1].data[...] = bias
    net.save(str(tmp_path / "w.caffemodel"))
    return net, str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel")


def write_set(folder, n, box):
    os.makedirs(folder / "images", exist_ok=True)
    os.makedirs(folder / "labels", exist_ok=True)
    names = []
    for i in range(n):
        image = np.random.default_rng(i).integers(0, 255, (3, 50, 40), dtype=np.uint8)
        (folder / "images" / f"{i}.png").write_bytes(encode_image(image, "png"))
        write_labels(str(folder / "labels" / f"{i}.txt"), [box] if i % 2 == 0 else [])
        names.append(f"images/{i}.png")
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    return [str(folder / n) for n in names]


def test_detect_gives_boxes_in_image_pixels(constant_detector, tmp_path):
    net, _, _ = constant_detector
    paths = write_set(tmp_path, 2, [0, 0.75, 0.25, 0.25, 0.16])
    (d,) = minicnn.detect(net, paths[0])                       # a 40 x 50 picture
    assert d["class"] == 0 and d["score"] == pytest.approx(0.72)
    np.testing.assert_allclose(d["box"], [25, 8.5, 35, 16.5], rtol=1e-5)
    both = minicnn.detect(net, paths + [np.zeros((10, 20, 3), np.uint8)])
    assert len(both) == 3 and both[0] == [d]
    np.testing.assert_allclose(both[2][0]["box"], [12.5, 1.7, 17.5, 3.3], rtol=1e-5)
    assert minicnn.detect(net, paths[0], thresh=0.75) == []


def test_detect_command(constant_detector, tmp_path, capsys):
    _, model, weights = constant_detector
    paths = write_set(tmp_path, 1, [0, 0.75, 0.25, 0.25, 0.16])
    (tmp_path / "names.txt").write_text("seven\n")
    assert main(["detect", "--model", model, "--weights", weights, paths[0], "--out",
                 str(tmp_path / "out"), "--names", str(tmp_path / "names.txt")]) == 0
    assert "seven 0.720" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert results[0]["width"] == 40 and results[0]["detections"][0]["label"] == "seven"
    picture = decode_image(str(tmp_path / "out" / "0.png"))
    assert picture.shape == (3, 50, 40)
    assert main(["detect", "--model", model, "--out", str(tmp_path / "o")]) == 1
    assert "give the images" in capsys.readouterr().err


def test_eval_detection_command(constant_detector, tmp_path, capsys):
    _, model, weights = constant_detector
    write_set(tmp_path, 4, [0, 0.75, 0.25, 0.25, 0.16])       # truth in images 0 and 2
    assert main(["eval-detection", "--model", model, "--weights", weights, "--list",
                 str(tmp_path / "list.txt"), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    # 4 detections (one per image, all the same score), 2 true
    # tied scores keep the images' order: TP, FP, TP, FP; all-point 1/2 * 1 + 1/2 * 2/3,
    # 11-point (6 * 1 + 5 * 2/3) / 11
    assert "mAP@0.5 over 4 images: 0.8485 (VOC2007 11-point), 0.8333 (all-point)" in out
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["classes"][0]["detections"] == 4
    assert os.path.getsize(tmp_path / "ev" / "pr_curve.png") > 1000
    (tmp_path / "labels" / "1.txt").write_text("0 0.5 0.5 0.1\n")
    assert main(["eval-detection", "--model", model, "--weights", weights, "--list",
                 str(tmp_path / "list.txt"), "--no-progress"]) == 1
    assert "1.txt:1: expected 'class x y w h'" in capsys.readouterr().err


def test_detect_needs_one_detection_layer(tmp_path):
    (tmp_path / "n.prototxt").write_text(DEPLOY.replace('type: "Detection"', 'type: "Flatten"')
                                         .replace("detection_param { side: 2 num: 1 classes: "
                                                  "1 }", ""))
    net = minicnn.Net(str(tmp_path / "n.prototxt"), phase=minicnn.TEST)
    with pytest.raises(MinicnnError, match=r"must end in a Detection layer \(YOLOv1\), Region "
                                           r"or Yolo layers \(YOLOv2/v3\) or an SSD "
                                           r"DetectionOutput layer.*found 0 Detection layers"):
        minicnn.detect(net, np.zeros((4, 4, 3), np.uint8))


def test_detect_defaults_nms_as_yolo_test_for_yolov1(tmp_path):
    # Darknet's `yolo test` (yolo.c) suppresses at IoU > .4 and `detector test` at .45: two
    # boxes of one class overlapping by IoU 0.15 / 0.35 = 0.43 are one box by YOLOv1's default
    (tmp_path / "deploy.prototxt").write_text(
        DEPLOY.replace("num_output: 24", "num_output: 11")
        .replace("side: 2 num: 1 classes: 1", "side: 1 num: 2 classes: 1 sqrt: false"))
    net = minicnn.Net(str(tmp_path / "deploy.prototxt"), phase=minicnn.TEST)
    fc = net.layer_dict["fc"]
    fc.blobs[0].data[...] = 0
    fc.blobs[1].data[...] = [1.0, 0.9, 0.8, 0.5, 0.5, 0.5, 0.5, 0.7, 0.5, 0.5, 0.5]
    image = np.zeros((10, 10, 3), np.uint8)
    assert len(minicnn.detect(net, image)) == 1
    assert len(minicnn.detect(net, image, nms=0.45)) == 2
