"""SSD's DetectionEvaluate layer, ComputeAP and the solver's detection test (eval_type:
"detection"), against cases worked out by hand and an independent reference written here from
the VOC devkit's formulas (11-point interpolated AP, area under the precision envelope) and the
plain sum of precision x recall step."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import cli
from minicnn.errors import LayerError, MinicnnError
from minicnn.layers import DetectionEvaluateLayer
from minicnn.layers.python_layer import PythonLayerBase
from minicnn.ops.ssd_eval import DetectionStats, compute_ap, output_boxes
from minicnn.proto import caffe_pb2, parse_text
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

THIS_MODULE = __name__

# Two images (0 and 1) of classes 1 and 2 (0 is background), and an image 2 without ground
# truth. Ground truth: [image, label, instance, xmin, ymin, xmax, ymax, difficult].
GT = np.array([
    [0, 1, 0, 0.1, 0.1, 0.3, 0.3, 0],      # g0
    [0, 1, 1, 0.5, 0.5, 0.7, 0.7, 1],      # g1, difficult
    [0, 2, 0, 0.6, 0.1, 0.9, 0.4, 0],      # g2
    [1, 1, 0, 0.2, 0.2, 0.6, 0.6, 0],      # g3
    [1, 2, 0, 0.0, 0.0, 0.2, 0.2, 0],      # g4
], np.float32)
# Detections [image, label, score, box], in no particular order within an image and label.
DET = np.array([
    [1, 2, 0.95, 0.5, 0.5, 0.9, 0.9],      # misses g4: false positive
    [0, 1, 0.7, 0.5, 0.5, 0.7, 0.7],       # on difficult g1
    [0, 1, 0.9, 0.1, 0.1, 0.3, 0.3],       # g0 exactly: true positive
    [2, 1, 0.5, 0.0, 0.0, 1.0, 1.0],       # image without ground truth: false positive
    [0, 2, 0.6, 0.6, 0.1, 0.9, 0.35],      # g2, IoU 0.075 / 0.09 = 0.83: true positive
    [1, 1, 0.85, 0.2, 0.2, 0.6, 0.5],      # g3, IoU 0.12 / 0.16 = 0.75: true positive
    [0, 1, 0.88, 0.1, 0.1, 0.3, 0.29],     # g0 again (IoU 0.95): a duplicate, false positive
    [1, 2, 0.3, 0.0, 0.0, 0.15, 0.2],      # g4, IoU 0.03 / 0.04 = 0.75: true positive
], np.float32)


def evaluate(det=DET, gt=GT, **params):
    params.setdefault("num_classes", 3)
    det, gt = np.asarray(det, np.float32), np.asarray(gt, np.float32)
    out = DetectionEvaluateLayer(**params)(det.reshape(1, 1, -1, 7), gt.reshape(1, 1, -1, 8))
    assert out.shape[:2] == (1, 1) and out.shape[3] == 5
    return out[0, 0]


def test_rows_by_hand_without_difficult_ground_truth():
    rows = evaluate(evaluate_difficult_gt=False)
    want = [[-1, 1, 2, -1, -1],              # class 1: g0, g3 (g1 is difficult)
            [-1, 2, 2, -1, -1],              # class 2: g2, g4
            [0, 1, 0.9, 1, 0],               # image 0, class 1, by score
            [0, 1, 0.88, 0, 1],              # the duplicate of g0
            [0, 1, 0.7, 0, 0],               # on difficult g1: neither
            [0, 2, 0.6, 1, 0],
            [1, 1, 0.85, 1, 0],
            [1, 2, 0.95, 0, 1],
            [1, 2, 0.3, 1, 0],
            [2, 1, 0.5, 0, 1]]
    np.testing.assert_allclose(rows, np.array(want, np.float32), rtol=0, atol=0)


def test_rows_by_hand_with_difficult_ground_truth():
    rows = evaluate()                        # evaluate_difficult_gt defaults to true
    assert rows[0].tolist() == [-1, 1, 3, -1, -1]
    assert rows[4].tolist()[1:] == [1, np.float32(0.7), 1, 0]    # g1 is a positive now


def test_layer_in_float64_nets_compares_in_float32_and_writes_float64():
    rows = DetectionEvaluateLayer(num_classes=3)(DET.astype(np.float64).reshape(1, 1, -1, 7),
                                                 GT.astype(np.float64).reshape(1, 1, -1, 8))
    assert rows.dtype == np.float64
    np.testing.assert_array_equal(rows[0, 0], evaluate())
    # IoU 0.4999999999999999 in double, 0.50000006 in float (the fork's NormalizedBBox): a
    # true positive at 0.5, in a double net too
    det = np.array([[0, 1, 0.9, 0.11, 0.67, 0.49, 0.91]]).reshape(1, 1, 1, 7)
    gt = np.array([[0, 1, 0, 0.2, 0.63, 0.62, 0.91, 0]]).reshape(1, 1, 1, 8)
    assert DetectionEvaluateLayer(num_classes=2)(det, gt)[0, 0, 1, 3] == 1


def test_detection_rows_with_image_minus_one_are_left_as_zero_rows():
    # DetectionOutput's row for a batch without detections is [i, -1, ...]; rows with image -1
    # are skipped, and their top rows stay zero (the top has one row per bottom row)
    det = np.vstack([[[-1, 1, 0.5, 0, 0, 1, 1]], DET[:1]])
    rows = evaluate(det)
    assert rows.shape == (4, 5)
    assert rows[2].tolist() == [1, 2, np.float32(0.95), 0, 1]
    assert rows[3].tolist() == [0, 0, 0, 0, 0]


def test_ground_truth_row_with_image_minus_one_ends_the_list():
    gt = np.vstack([GT[:1], [[-1, 0, 0, 0, 0, 0, 0, 0]], GT[3:4]])
    rows = evaluate(DET[5:6], gt)            # g3 comes after the -1 row: not read
    assert rows[:2, 2].tolist() == [1, 0]
    assert rows[2].tolist() == [1, 1, np.float32(0.85), 0, 1]


def test_match_takes_the_best_box_even_when_it_is_taken():
    # two detections near g_a; the second's best box is g_a (taken) though it also overlaps g_b
    # above the threshold: a false positive (the VOC devkit's rule)
    gt = [[0, 1, 0, 0.0, 0.0, 0.4, 0.4, 0], [0, 1, 1, 0.05, 0.0, 0.45, 0.4, 0]]
    det = [[0, 1, 0.9, 0.0, 0.0, 0.4, 0.4], [0, 1, 0.8, 0.01, 0.0, 0.41, 0.4]]
    rows = evaluate(det, gt, num_classes=2)
    assert rows[1:, 3:].tolist() == [[1, 0], [0, 1]]


def test_overlap_at_the_threshold_is_a_true_positive():
    det, gt = [[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5]], [[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0]]
    assert evaluate(det, gt, num_classes=2, overlap_threshold=1.0)[1, 3:].tolist() == [1, 0]


def test_equal_scores_keep_the_input_order():
    gt = [[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0]]
    det = [[0, 1, 0.5, 0.6, 0.6, 0.9, 0.9], [0, 1, 0.5, 0.1, 0.1, 0.5, 0.5]]
    rows = evaluate(det, gt, num_classes=2)
    assert rows[1:, 3:].tolist() == [[0, 1], [1, 0]]


# --- against a transliteration of the fork's loops ---------------------------------------------

def fork_rows(det, gt, num_classes, overlap_threshold, evaluate_difficult_gt, sizes=()):
    """DetectionEvaluateLayer::Forward_cpu (background 0, no resize_param) written out with the
    fork's maps and loops, one float at a time: GetDetectionResults, GetGroundTruth, ClipBBox +
    ScaleBBox for name_size_file, JaccardOverlap, the greedy match."""
    f = np.float32
    pixels = bool(sizes)

    def size(b, normalized=True):
        if b[2] < b[0] or b[3] < b[1]:
            return f(0)
        w, h = f(b[2] - b[0]), f(b[3] - b[1])
        return w * h if normalized else f(w + f(1)) * f(h + f(1))

    def to_pixels(b, hw):
        clipped = [max(min(v, f(1)), f(0)) for v in b]
        h, w = hw
        out = [clipped[0] * f(w), clipped[1] * f(h), clipped[2] * f(w), clipped[3] * f(h)]
        return out, size(out, normalized=not (w > 1 or h > 1))

    def jaccard(a, sa, b, sb):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            inter_box = [f(0)] * 4
        else:
            inter_box = [max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]
        iw, ih = f(inter_box[2] - inter_box[0]), f(inter_box[3] - inter_box[1])
        if pixels:
            iw, ih = f(iw + f(1)), f(ih + f(1))
        if not (iw > 0 and ih > 0):
            return f(0)
        inter = f(iw * ih)
        sa = f(0) if a[2] < a[0] or a[3] < a[1] else sa
        sb = f(0) if b[2] < b[0] or b[3] < b[1] else sb
        return f(inter / f(f(sa + sb) - inter))

    detections = {}
    for row in det:
        if int(row[0]) == -1:
            continue
        box = [f(v) for v in row[3:7]]
        detections.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append(
            [f(row[2]), box, size(box)])
    truths = {}
    for row in gt:
        if int(row[0]) == -1:
            break
        box = [f(v) for v in row[3:7]]
        truths.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append(
            [box, size(box), bool(row[7])])
    top = np.zeros((num_classes - 1 + len(det), 5))
    n = 0
    for c in range(1, num_classes):
        count = sum(len(g) if evaluate_difficult_gt else sum(not t[2] for t in g)
                    for labels in truths.values() for lab, g in labels.items() if lab == c)
        top[n] = (-1, c, count, -1, -1)
        n += 1
    image_count = 0
    for item in sorted(detections):
        for label in sorted(detections[item]):
            boxes = detections[item][label]
            if item not in truths or label not in truths[item]:
                for score, _, _ in boxes:
                    top[n] = (item, label, score, 0, 1)
                    n += 1
                continue
            gts = [list(t) for t in truths[item][label]]
            if pixels:
                for t in gts:
                    t[0], t[1] = to_pixels(t[0], sizes[image_count])
            for i in range(1, len(boxes)):                 # insertion sort, highest first
                j = i
                while j > 0 and boxes[j - 1][0] < boxes[j][0]:
                    boxes[j - 1], boxes[j] = boxes[j], boxes[j - 1]
                    j -= 1
            visited = [False] * len(gts)
            for score, box, box_size in boxes:
                top[n, :3] = (item, label, score)
                if pixels:
                    box, box_size = to_pixels(box, sizes[image_count])
                best, jmax = f(-1), -1
                for j, (g, g_size, _) in enumerate(gts):
                    overlap = jaccard(box, box_size, g, g_size)
                    if overlap > best:
                        best, jmax = overlap, j
                if best >= f(overlap_threshold):
                    if evaluate_difficult_gt or not gts[jmax][2]:
                        top[n, 3:] = (0, 1) if visited[jmax] else (1, 0)
                        visited[jmax] = True
                else:
                    top[n, 3:] = (0, 1)
                n += 1
        if pixels:
            image_count = (image_count + 1) % len(sizes)
    return top


@st.composite
def evaluate_cases(draw):
    coord = st.sampled_from(np.round(np.arange(-0.1, 1.15, 0.1), 1).tolist())
    shift = st.sampled_from([-0.1, 0.0, 0.0, 0.1])

    def box():
        x0, y0, x1, y1 = (draw(coord) for _ in range(4))
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    images = draw(st.integers(1, 3))
    gt = [[draw(st.integers(0, images - 1)), draw(st.integers(1, 3)), 0, *box(),
           draw(st.integers(0, 1))] for _ in range(draw(st.integers(1, 6)))]
    det = []
    for _ in range(draw(st.integers(1, 10))):
        score = draw(st.sampled_from([0.2, 0.5, 0.7, 0.9]))
        if draw(st.booleans()):                  # near a ground truth box: matches, duplicates
            g = gt[draw(st.integers(0, len(gt) - 1))]
            det.append([g[0], g[1], score] + [round(v + draw(shift), 1) for v in g[3:7]])
        else:
            det.append([draw(st.integers(-1, images - 1)), draw(st.integers(1, 3)), score,
                        *box()])
    if draw(st.booleans()):                      # a -1 row ends the ground truth
        gt.insert(draw(st.integers(0, len(gt))), [-1, 0, 0, 0, 0, 0, 0, 0])
    sizes = draw(st.sampled_from([(), ((300, 500),), ((10, 20), (3, 5), (1, 1))]))
    return (det, gt, draw(st.sampled_from([0.3, 0.5, 0.7, 1.0])), draw(st.booleans()), sizes)


@settings(max_examples=200, deadline=None)
@given(evaluate_cases())
def test_rows_match_the_transliterated_loops(case):
    det, gt, threshold, difficult, sizes = case
    want = fork_rows(det, gt, 4, threshold, difficult, sizes)
    rows, count = minicnn.ops.detection_evaluate_forward(
        det, gt, num_classes=4, overlap_threshold=threshold, evaluate_difficult_gt=difficult,
        sizes=sizes)
    np.testing.assert_array_equal(rows, want)


# --- name_size_file and resize_param ------------------------------------------------------------

def test_name_size_file_compares_in_pixels_with_plus_one_sizes(tmp_path):
    # image 0 is 100 high, 200 wide. Normalized, the IoU is 0.04 / 0.05 = 0.8; in pixels the
    # boxes are x 20..60, y 10..30 and y 10..35: 41 * 21 / (41 * 26) = 0.8077
    (tmp_path / "sizes.txt").write_text("img_a 100 200\nimg_b 10 10\n")
    det, gt = [[0, 1, 0.9, 0.1, 0.1, 0.3, 0.3]], [[0, 1, 0, 0.1, 0.1, 0.3, 0.35, 0]]
    assert evaluate(det, gt, num_classes=2, overlap_threshold=0.805)[1, 3] == 0
    layer = DetectionEvaluateLayer(num_classes=2, overlap_threshold=0.805,
                                   name_size_file=str(tmp_path / "sizes.txt"))
    out = layer(np.float32(det).reshape(1, 1, 1, 7), np.float32(gt).reshape(1, 1, 1, 8))
    assert out[0, 0, 1, 3] == 1


def test_name_size_file_images_are_counted_over_batches_and_wrap(tmp_path):
    # the fork takes the sizes of the count-th image with detections, the count going on from
    # batch to batch and back to the first line after the last. The pair of boxes has IoU
    # 0.8077 in a 100 x 200 image (as above) and 0.857 in a 10 x 10 one (x 1..3, y 1..3 and
    # y 1..3.5: 3 * 3 / (3 * 3.5)): at 0.83 a false positive in the first, a true one in the
    # second
    (tmp_path / "sizes.txt").write_text("a 100 200\nb 10 10\nc 100 200\n")
    layer = DetectionEvaluateLayer(num_classes=2, overlap_threshold=0.83,
                                   name_size_file=str(tmp_path / "sizes.txt"))
    det = np.float32([[0, 1, 0.9, 0.1, 0.1, 0.3, 0.3], [1, 1, 0.9, 0.1, 0.1, 0.3, 0.3]])
    gt = np.float32([[0, 1, 0, 0.1, 0.1, 0.3, 0.35, 0], [1, 1, 0, 0.1, 0.1, 0.3, 0.35, 0]])
    tps = []
    for _ in range(3):
        out = layer(det.reshape(1, 1, 2, 7), gt.reshape(1, 1, 2, 8))
        tps.append(out[0, 0, 1:, 3].tolist())
    assert tps == [[0, 1], [0, 0], [1, 0]]   # images a b, c a, b c
    assert layer.count == 0                  # 6 images with detections over 3 lines


def test_boxes_that_do_not_touch_overlap_in_pixels():
    # the fork's +1 makes the intersection of disjoint pixel boxes 1 x 1: two one-pixel boxes
    # apart have IoU 1 / (1 + 1 - 1) = 1
    rows, count = minicnn.ops.detection_evaluate_forward(
        [[0, 1, 0.9, 0, 0, 0, 0]], [[0, 1, 0, 0.5, 0.5, 0.5, 0.5, 0]], num_classes=2,
        sizes=[(2, 2)])
    assert rows[1, 3:].tolist() == [1, 0] and count == 0


def test_output_boxes_resize_modes_by_hand():
    box = [[0.1, 0.25, 0.5, 0.5], [0.1, 0.0, 0.5, 0.2], [-0.1, 0.1, 0.5, 1.5]]
    # no resize_param (and WARP): clip to [0, 1], scale to 100 high x 200 wide, +1 sizes
    boxes, sizes = output_boxes(box, 100, 200)
    np.testing.assert_allclose(boxes, [[20, 25, 100, 50], [20, 0, 100, 20], [0, 10, 100, 100]],
                               rtol=1e-6)
    np.testing.assert_allclose(sizes, [81 * 26, 81 * 21, 101 * 91], rtol=1e-6)
    warp, _ = output_boxes(box, 100, 200, dict(resize_mode="WARP"))
    np.testing.assert_array_equal(warp, boxes)
    # FIT_LARGE_SIZE_AND_PAD into 300 x 300: the 2:1 image filled y 0.25..0.75; a box wholly
    # in the padding (the second) is not projected
    pad = dict(resize_mode="FIT_LARGE_SIZE_AND_PAD", height=300, width=300, height_scale=0,
               width_scale=0)
    boxes, _ = output_boxes(box[:2], 100, 200, pad)
    np.testing.assert_allclose(boxes, [[20, 0, 100, 50], [20, 0, 100, 20]], rtol=1e-6)
    # FIT_SMALL_SIZE with height_scale/width_scale: scaled by them, clipped to the image, and
    # the size without the +1
    small = dict(resize_mode="FIT_SMALL_SIZE", height=0, width=0, height_scale=50,
                 width_scale=100)
    boxes, sizes = output_boxes(box[:1], 100, 200, small)
    np.testing.assert_allclose(boxes, [[10, 12.5, 50, 25]], rtol=1e-6)
    np.testing.assert_allclose(sizes, [40 * 12.5], rtol=1e-6)


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    (dict(), "num_classes must be given"),
    (dict(num_classes=2, background_label_id=2), "background_label_id 2 must be below"),
    (dict(num_classes=2, overlap_threshold=0), "overlap_threshold must be positive"),
    (dict(num_classes=2, name_size_file="/no/such/sizes.txt"), "name_size_file"),
])
def test_bad_parameters_name_the_field(params, message):
    with pytest.raises(LayerError, match=message):
        DetectionEvaluateLayer(**params)(DET.reshape(1, 1, -1, 7), GT.reshape(1, 1, -1, 8))


@pytest.mark.parametrize("det_shape, gt_shape, message", [
    ((1, 1, 8, 6), (1, 1, 5, 8), r"detections as 1 x 1 x N x 7, got shape \(1, 1, 8, 6\)"),
    ((2, 1, 4, 7), (1, 1, 5, 8), r"detections as 1 x 1 x N x 7, got shape \(2, 1, 4, 7\)"),
    ((1, 1, 8, 7), (1, 1, 8, 5), r"ground truth as 1 x 1 x N x 8, got shape \(1, 1, 8, 5\)"),
])
def test_bad_shapes_name_the_shapes(det_shape, gt_shape, message):
    with pytest.raises(LayerError, match=message):
        DetectionEvaluateLayer(num_classes=3)(np.zeros(det_shape, np.float32),
                                              np.zeros(gt_shape, np.float32))


def test_background_labels_in_the_data_are_errors():
    with pytest.raises(LayerError, match="ground truth row 0 has the background label 0"):
        evaluate(gt=[[0, 0, 0, 0.1, 0.1, 0.2, 0.2, 0]])
    with pytest.raises(LayerError, match="detection row 1 has the background label 0"):
        evaluate(det=[DET[0], [0, 0, 0.5, 0, 0, 1, 1]])


# --- ComputeAP ---------------------------------------------------------------------------------

# Class 1 of the rows above (the difficult match dropped): scores .9 T, .88 F, .85 T, .5 F with
# 2 positives: precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1.
CLASS1 = ([0.9, 0.88, 0.85, 0.5], [1, 0, 1, 0], 2)
# Class 2: .95 F, .6 T, .3 T: precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
CLASS2 = ([0.95, 0.6, 0.3], [0, 1, 1], 2)
BY_HAND = {  # (class 1, class 2)
    "11point": (28 / 33, 2 / 3),             # six thresholds at precision 1, five at 2/3
    "MaxIntegral": (5 / 6, 2 / 3),           # 1/2 * 1 + 1/2 * 2/3;  1/2 * 2/3 + 1/2 * 2/3
    "Integral": (5 / 6, 7 / 12),             # 1/2 * 1 + 1/2 * 2/3;  1/2 * 1/2 + 1/2 * 2/3
}


@pytest.mark.parametrize("ap_version", sorted(BY_HAND))
def test_compute_ap_by_hand(ap_version):
    for case, want in zip((CLASS1, CLASS2), BY_HAND[ap_version]):
        ap, _, _ = compute_ap(*case, ap_version)
        assert ap.dtype == np.float32
        assert ap == pytest.approx(want, abs=1e-6)


def reference_ap(scores, tp, num_pos, ap_version):
    """The VOC devkit's AP (and the plain sum) in float64, ties in score in their given order;
    recall is rounded to float32 first, as the fork keeps it, which the 11-point thresholds see
    (VOCevaldet compares rec >= t)."""
    if num_pos == 0 or len(tp) == 0:
        return 0.0
    order = sorted(range(len(scores)), key=lambda i: -np.float32(scores[i]))
    tp = np.array([tp[i] for i in order], float)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    prec = ctp / (ctp + cfp)
    rec = ctp / num_pos
    if ap_version == "11point":
        rec32 = rec.astype(np.float32).astype(float)
        return sum(max(prec[rec32 >= t / 10], default=0.0) for t in range(11)) / 11
    if ap_version == "MaxIntegral":                # VOC2010+: area under the envelope
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[0.0], prec, [0.0]])
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        i = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    return float(np.sum(prec * np.diff(np.concatenate([[0.0], rec]))))


@st.composite
def ap_cases(draw):
    n = draw(st.integers(0, 40))
    # few distinct scores: ties are common
    scores = draw(st.lists(st.sampled_from([0.1, 0.25, 0.5, 0.7, 0.9, 0.95]), min_size=n,
                           max_size=n))
    tp = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    num_pos = sum(tp) + draw(st.integers(0, 5))
    return scores, tp, num_pos


def fork_eleven_point(prec, rec):
    """ComputeAP's "11point" loop as the fork writes it, on its float32 precision and recall."""
    max_precs = [np.float32(0)] * 11
    start = len(rec) - 1
    for j in range(10, -1, -1):
        for i in range(start, -1, -1):
            if float(rec[i]) < j / 10.0:
                start = i
                if j > 0:
                    max_precs[j - 1] = max_precs[j]
                break
            if max_precs[j] < prec[i]:
                max_precs[j] = prec[i]
    ap = np.float32(0)
    for j in range(10, -1, -1):
        ap = np.float32(ap + np.float32(max_precs[j] / np.float32(11)))
    return ap


def fork_integrals(prec, rec, ap_version):
    """ComputeAP's "MaxIntegral" and "Integral" loops as the fork writes them, in float."""
    f, eps, ap = np.float32, np.float32(1e-6), np.float32(0)
    if ap_version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(len(rec) - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            if abs(f(cur_rec - rec[i])) > eps:
                ap = f(ap + f(cur_prec * abs(f(cur_rec - rec[i]))))
            cur_rec = rec[i]
        return f(ap + f(cur_rec * cur_prec))
    prev_rec = f(0)
    for i in range(len(rec)):
        if abs(f(rec[i] - prev_rec)) > eps:
            ap = f(ap + f(prec[i] * abs(f(rec[i] - prev_rec))))
        prev_rec = rec[i]
    return ap


FORK_LOOPS = {"11point": lambda p, r: fork_eleven_point(p, r),
              "MaxIntegral": lambda p, r: fork_integrals(p, r, "MaxIntegral"),
              "Integral": lambda p, r: fork_integrals(p, r, "Integral")}


@settings(max_examples=150, deadline=None)
@given(ap_cases(), st.sampled_from(["11point", "MaxIntegral", "Integral"]))
def test_compute_ap_matches_the_reference(case, ap_version):
    scores, tp, num_pos = case
    ap, prec, rec = compute_ap(scores, tp, num_pos, ap_version)
    assert float(ap) == pytest.approx(reference_ap(scores, tp, num_pos, ap_version), abs=2e-6)
    if len(rec):
        assert ap == FORK_LOOPS[ap_version](prec, rec)       # the fork's own loop, exactly


def test_eleven_point_recall_is_a_float32():
    # 7 true positives of 10: recall 0.7 is 0.69999999f, below the threshold 0.7 in double:
    # the fork's AP is 7/11, where VOCevaldet's double recall would give 8/11
    ap, _, rec = compute_ap([0.9] * 7, [1] * 7, 10, "11point")
    assert rec[-1] == np.float32(0.7) and ap == pytest.approx(7 / 11, abs=1e-7)


def test_compute_ap_without_positives_or_detections_is_zero():
    assert compute_ap([0.9, 0.8], [0, 0], 0, "Integral")[0] == 0
    assert compute_ap([], [], 3, "11point")[0] == 0
    with pytest.raises(MinicnnError, match="unknown ap_version 'VOC'"):
        compute_ap([0.9], [1], 1, "VOC")


def test_map_counts_classes_without_positives_or_detections_as_zero():
    stats = DetectionStats()
    # class 1: one hit of one; class 2: detections but no positives; class 3: a positive, no
    # detections (the fork warns "Missing true_pos" and skips it); all three in the mean
    stats.add([[-1, 1, 1, -1, -1], [-1, 2, 0, -1, -1], [-1, 3, 1, -1, -1],
               [0, 1, 0.9, 1, 0], [0, 2, 0.8, 0, 1], [0, 1, 0.7, 0, 0]])
    mean, aps = stats.average_precisions("Integral")
    assert aps == [(1, 1.0), (2, 0.0), (3, None)]
    assert mean == np.float32(1 / 3)


# --- the solver's detection test -----------------------------------------------------------------

# Test batch 0 holds image 0, batch 1 images 1 and 2 (their ids start at 0 in each batch).
BATCHES = [(DET[[1, 2, 4, 6]], GT[:3]),
           (DET[[0, 3, 5, 7]] - [1, 0, 0, 0, 0, 0, 0], GT[3:] - [1, 0, 0, 0, 0, 0, 0, 0])]


class FixedDetections(PythonLayerBase):
    """Tops: one batch's detections and ground truth from BATCHES, the next on each forward."""
    calls = 0

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        det, gt = BATCHES[FixedDetections.calls % len(BATCHES)]
        top[0].reshape((1, 1, len(det), 7))
        top[1].reshape((1, 1, len(gt), 8))

    def forward(self, bottom, top):
        det, gt = BATCHES[FixedDetections.calls % len(BATCHES)]
        FixedDetections.calls += 1
        top[0].data[...] = det.reshape(top[0].shape)
        top[1].data[...] = gt.reshape(top[1].shape)


TEST_NET = f"""
name: "ssd_test_tail"
layer {{ name: "data" type: "Python" top: "detection_out" top: "label"
        python_param {{ module: "{THIS_MODULE}" layer: "FixedDetections" }} }}
layer {{
  name: "detection_eval"
  type: "DetectionEvaluate"
  bottom: "detection_out"
  bottom: "label"
  top: "detection_eval"
  include {{ phase: TEST }}
  detection_evaluate_param {{
    num_classes: NUM_CLASSES
    background_label_id: 0
    overlap_threshold: 0.5
    evaluate_difficult_gt: false
  }}
}}
"""
TRAIN_NET = """
name: "tiny"
layer { name: "x" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def detection_solver(tmp_path, num_classes=3, **fields):
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    (tmp_path / "test.prototxt").write_text(TEST_NET.replace("NUM_CLASSES", str(num_classes)))
    lines = [f'train_net: "{tmp_path / "train.prototxt"}"',
             f'test_net: "{tmp_path / "test.prototxt"}"', "test_iter: 2", "test_interval: 2",
             "base_lr: 0.01", 'lr_policy: "fixed"', "max_iter: 2", "display: 0",
             "snapshot_after_train: false", 'eval_type: "detection"']
    lines += [f"{k}: {v}" for k, v in fields.items()]
    (tmp_path / "solver.prototxt").write_text("\n".join(lines) + "\n")
    FixedDetections.calls = 0
    return tmp_path / "solver.prototxt"


def run_solver(path, **kwargs):
    log = []
    solver = minicnn.get_solver(str(path), log=log.append, **kwargs)
    solver.solve()
    return log


@pytest.mark.parametrize("ap_version, want", [("11point", "0.757576"), ("MaxIntegral", "0.75"),
                                              ("Integral", "0.708333")])
def test_solver_logs_the_map_of_the_test_batches(tmp_path, ap_version, want):
    log = run_solver(detection_solver(tmp_path, ap_version=f'"{ap_version}"'))
    tests = [i for i, line in enumerate(log) if "Testing net (#0)" in line]
    assert len(tests) == 2                   # at iteration 0 and after the last
    for i in tests:
        assert log[i + 1] == f"    Test net output #0: detection_eval = {want}"


def test_solver_on_the_gpu_logs_the_same_map(gpu, tmp_path):
    log = run_solver(detection_solver(tmp_path, ap_version='"11point"'), device=0)
    assert "    Test net output #0: detection_eval = 0.757576" in log


def test_solver_default_ap_version_is_integral_and_per_class_lines(tmp_path):
    log = run_solver(detection_solver(tmp_path, show_per_class_result="true"))
    start = log.index("Iteration 0, Testing net (#0)")
    assert log[start + 1:start + 4] == ["class1: 0.833333", "class2: 0.583333",
                                        "    Test net output #0: detection_eval = 0.708333"]


def test_solver_warns_of_classes_with_positives_and_no_detections(tmp_path):
    # num_classes 4: class 3 has no ground truth and no detections: its count row says 0, and
    # it has no detections: the fork warns and its 0 still counts in the mean (of 3 classes)
    log = run_solver(detection_solver(tmp_path, num_classes=4))
    start = log.index("Iteration 0, Testing net (#0)")
    assert log[start + 1].startswith("Missing true_pos for label: 3")
    assert log[start + 2] == f"    Test net output #0: detection_eval = {2 * 0.708333 / 3:.6g}"


@pytest.mark.parametrize("field, value, message", [
    ("eval_type", '"segmentation"', (r"eval_type 'segmentation' is unknown; the SSD fork's "
                                     r"solver takes 'classification' \(the default\) or "
                                     r"'detection'")),
    ("ap_version", '"VOC07"', r"ap_version 'VOC07' is unknown; the SSD fork's are '11point'"),
])
def test_unknown_eval_type_or_ap_version_names_the_field(tmp_path, field, value, message):
    path = detection_solver(tmp_path, **{field: value})
    text = path.read_text().replace('eval_type: "detection"\n', "")
    path.write_text(text + ('eval_type: "detection"\n' if field == "ap_version" else ""))
    with pytest.raises(MinicnnError, match=message):
        minicnn.get_solver(str(path), log=lambda m: None)


def test_detection_test_needs_detection_rows(tmp_path):
    path = detection_solver(tmp_path)
    (tmp_path / "test.prototxt").write_text(TRAIN_NET)       # an output that is not N x 5
    with pytest.raises(MinicnnError, match="output 'loss' has shape"):
        run_solver(path)


def test_classification_solver_ignores_the_detection_fields(tmp_path):
    param = caffe_pb2.SolverParameter(train_net_param=parse_text(TRAIN_NET, "NetParameter"),
                                      test_net_param=[parse_text(TRAIN_NET, "NetParameter")],
                                      test_iter=[1], test_interval=1, base_lr=0.01,
                                      lr_policy="fixed", max_iter=1, ap_version="anything",
                                      snapshot_after_train=False)
    log = []
    minicnn.get_solver(param, log=log.append).solve()
    assert any(line.startswith("    Test net output #0: loss = ") for line in log)


def test_cli_train_with_a_detection_solver(tmp_path, capsys):
    path = detection_solver(tmp_path, snapshot_prefix=f'"{tmp_path / "snap"}"')
    assert cli.main(["train", str(path), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "Final test at iteration 2: detection_eval = 0.7083" in out.out
    assert "    Test net output #0: detection_eval = 0.708333" in out.out


def test_cli_test_with_eval_type_detection(tmp_path, capsys):
    (tmp_path / "test.prototxt").write_text(TEST_NET.replace("NUM_CLASSES", "3"))
    FixedDetections.calls = 0
    assert cli.main(["test", str(tmp_path / "test.prototxt"), "--iterations", "2",
                     "--eval-type", "detection", "--ap-version", "11point",
                     "--show-per-class-result"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["class1: 0.848485", "class2: 0.666667",
                        "    Test net output #0: detection_eval = 0.757576"]


# --- a net as SSD's test prototxts write it -----------------------------------------------------

SSD_TAIL = """
name: "ssd_tail"
layer { name: "mbox_loc" type: "Input" top: "mbox_loc"
        input_param { shape { dim: 1 dim: 8 } } }
layer { name: "mbox_conf" type: "Input" top: "mbox_conf"
        input_param { shape { dim: 1 dim: 6 } } }
layer { name: "mbox_priorbox" type: "Input" top: "mbox_priorbox"
        input_param { shape { dim: 1 dim: 2 dim: 8 } } }
layer { name: "label" type: "Input" top: "label"
        input_param { shape { dim: 1 dim: 1 dim: 2 dim: 8 } } }
layer {
  name: "detection_out"
  type: "DetectionOutput"
  bottom: "mbox_loc"
  bottom: "mbox_conf"
  bottom: "mbox_priorbox"
  top: "detection_out"
  include { phase: TEST }
  detection_output_param {
    num_classes: 3
    share_location: true
    background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 }
    code_type: CENTER_SIZE
    keep_top_k: 200
    confidence_threshold: 0.01
  }
}
layer {
  name: "detection_eval"
  type: "DetectionEvaluate"
  bottom: "detection_out"
  bottom: "label"
  top: "detection_eval"
  include { phase: TEST }
  detection_evaluate_param {
    num_classes: 3
    background_label_id: 0
    overlap_threshold: 0.5
    evaluate_difficult_gt: false
  }
}
"""


def ssd_tail_inputs():
    priors = np.float32([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]])
    variances = np.full_like(priors, 0.1)
    conf = np.float32([[0.1, 0.8, 0.1], [0.2, 0.1, 0.7]])       # prior 0: class 1; 1: class 2
    gt = np.float32([[0, 1, 0, 0.1, 0.1, 0.3, 0.3, 0], [0, 2, 0, 0.0, 0.0, 0.2, 0.2, 0]])
    return dict(mbox_loc=np.zeros((1, 8), np.float32), mbox_conf=conf.reshape(1, 6),
                mbox_priorbox=np.stack([priors.ravel(), variances.ravel()])[None],
                label=gt.reshape(1, 1, 2, 8))


def test_ssd_test_net_tail_from_detection_output():
    net = minicnn.Net(parse_text(SSD_TAIL, "NetParameter"), minicnn.TEST)
    net.forward(**ssd_tail_inputs())
    rows = net.blobs["detection_eval"].data[0, 0]
    # zero offsets decode to the priors: class 1's box is g0 (TP), class 2's misses g4 (FP);
    # the low scores of the other classes pass confidence_threshold too
    det = net.blobs["detection_out"].data[0, 0]
    assert rows.shape == (2 + len(det), 5)
    assert rows[:2].tolist() == [[-1, 1, 1, -1, -1], [-1, 2, 1, -1, -1]]
    hits = {(int(r[1]), round(float(r[2]), 2)): (int(r[3]), int(r[4])) for r in rows[2:]}
    assert hits[(1, 0.8)] == (1, 0) and hits[(2, 0.7)] == (0, 1)


def test_gpu_net_runs_detection_evaluate_on_the_host(gpu):
    from minicnn import cuda
    model = parse_text(SSD_TAIL, "NetParameter")
    want = minicnn.Net(model, minicnn.TEST).forward(**ssd_tail_inputs())["detection_eval"]
    gpu_net = minicnn.Net(model, minicnn.TEST, device=0)
    got = cuda.to_host(gpu_net.forward(**ssd_tail_inputs())["detection_eval"])
    on_host = sorted(gpu_net.layers[i].type for i in gpu_net._mirrors)
    assert on_host == ["DetectionEvaluate", "DetectionOutput"]
    np.testing.assert_array_equal(got, want)
