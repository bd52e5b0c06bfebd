"""The SSD fork's detection evaluation (Wei Liu's caffe, branch ssd): DetectionEvaluate's rows
and the mean average precision its solver computes from them (bbox_util's ComputeAP).

DetectionEvaluate takes DetectionOutput's rows [image, label, score, xmin, ymin, xmax, ymax]
and the ground truth rows [image, label, instance, xmin, ymin, xmax, ymax, difficult] that
AnnotatedData writes, and returns one row per class other than background_label_id,
[-1, label, number of ground truths, -1, -1], then one row per detection, [image, label,
score, tp, fp]: by image, then label (both ascending); within an image and label that has
ground truth, by score (highest first). A detection is matched to the ground truth box it
overlaps most (IoU); at overlap_threshold or above it is a true positive if that box is still
free, else a false positive; below, a false positive. Without evaluate_difficult_gt, difficult
boxes are not counted and a detection whose best box is difficult gets tp = fp = 0 (the solver
skips it): the VOC devkit's rules. Detections of an image or label without ground truth are
false positives in their input order.

The fork does this on its NormalizedBBox floats: boxes, sizes and overlaps are float32 here
too, whatever the net's dtype. Its quirks, followed: a ground truth row with image -1 ends the
list (a detection row with image -1 is only skipped); with name_size_file the boxes are clipped
to [0, 1], scaled to each image's pixels and compared with +1 pixel sizes, the sizes taken
from the name_size_file line of the count-th image with detections (the fork counts the images
of each batch with detections, not by image id), and IoU of boxes that do not overlap at all
is then 1 / (size1 + size2 - 1), not 0; resize_param FIT_LARGE_SIZE_AND_PAD projects boxes out
of the padding, but a box wholly in the padding stays unprojected, and FIT_SMALL_SIZE with
height_scale/width_scale keeps the size without the +1. Among equal scores in one image and
label, minicnn keeps the input order (the fork's std::sort leaves that open; for up to 16
boxes libstdc++ sorts them in that order too).

ComputeAP (the solver's test), per class from all test batches' rows: sort by score (stable:
ties keep row order), cumulative tp and fp, precision = tp / (tp + fp), recall = tp / positives
(both float32), then by ap_version:

    11point      mean over t = 0, 0.1, ..., 1 of the highest precision at recall >= t (VOC2007);
                 recall is a float32 compared with t in double, so 7 of 10 positives
                 (0.69999999f) does not reach t = 0.7
    MaxIntegral  area under the precision envelope (max precision to the right; VOC2012)
    Integral     sum of precision * recall step, the steps over 1e-6 (the default)

The sums are float32, term after term in the fork's order (checked against its loops written
out in the tests); where its `fabs` of a float widens to double, the fork can differ in the
last bit of a float. A class without positives has AP 0; a class with positives but no
detections is skipped with a warning, and both still count in the mean (mAP = sum of APs /
number of classes).

Impls: ref (NumPy; a loop over each image's labels and, for the greedy match, their
detections). No backward.
"""

import math

import numpy as np

from minicnn.errors import MinicnnError
from minicnn.ops._dispatch import Op

detection_evaluate_forward = Op("detection_evaluate_forward")

__all__ = ["AP_VERSIONS", "EVAL_TYPES", "DetectionStats", "compute_ap",
           "detection_evaluate_forward", "read_name_size_file"]

AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
EVAL_TYPES = ("classification", "detection")
F32 = np.float32


# --- boxes, as the fork's NormalizedBBox ---------------------------------------------------------

def _valid(b):
    """BBoxSize's test: a box with xmax < xmin or ymax < ymin has size 0."""
    return ~((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))


def _size(b, normalized=True):
    """BBoxSize in float32: w * h, or (w + 1) * (h + 1) for pixel boxes; 0 if invalid."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not normalized:
        w, h = w + F32(1), h + F32(1)
    return np.where(_valid(b), w * h, F32(0)).astype(F32)


def _clip(b, height=F32(1), width=F32(1)):
    """ClipBBox: each coordinate into [0, width] (x) or [0, height] (y)."""
    lim = np.array([width, height, width, height], F32)
    return np.maximum(np.minimum(b, lim), F32(0)).astype(F32)


def _scale(b, height, width):
    """ScaleBBox: to pixels; the size is a pixel size (+1) when the image is over 1 x 1."""
    out = (b * np.array([width, height, width, height], F32)).astype(F32)
    return out, _size(out, normalized=not (width > 1 or height > 1))


def _project(src, b):
    """ProjectBBox of boxes b into the box src; a box that misses src is left as it was (the
    fork ignores ProjectBBox's false and goes on with the unprojected copy)."""
    miss = ((b[:, 0] >= src[2]) | (b[:, 2] <= src[0]) | (b[:, 1] >= src[3])
            | (b[:, 3] <= src[1]))
    sw, sh = F32(src[2] - src[0]), F32(src[3] - src[1])
    proj = np.stack([(b[:, 0] - src[0]) / sw, (b[:, 1] - src[1]) / sh,
                     (b[:, 2] - src[0]) / sw, (b[:, 3] - src[1]) / sh], axis=1).astype(F32)
    return np.where(miss[:, None], b, _clip(proj))


def output_boxes(b, height, width, resize=None):
    """OutputBBox: normalized boxes (n, 4) to pixels of an image height x width, undoing the
    resize_param (a dict of its fields) the data went through; returns (boxes, sizes)."""
    b = np.asarray(b, F32).reshape(-1, 4)
    mode = resize["resize_mode"] if resize else None
    if mode is None or mode == "WARP":
        return _scale(_clip(b), height, width)
    if mode == "FIT_LARGE_SIZE_AND_PAD":
        rh, rw = F32(resize["height"]), F32(resize["width"])
        resize_aspect, aspect = rw / rh, F32(width) / F32(height)
        if aspect > resize_aspect:
            pad = (rh - rw / aspect) / F32(2)
            src = np.array([0, pad / rh, 1, 1 - pad / rh], F32)
        else:
            pad = (rw - rh * aspect) / F32(2)
            src = np.array([pad / rw, 0, 1 - pad / rw, 1], F32)
        return _scale(_clip(_project(src, b)), height, width)
    if mode == "FIT_SMALL_SIZE":
        hs, ws = resize["height_scale"], resize["width_scale"]
        if hs == 0 or ws == 0:
            return _scale(_clip(b), height, width)
        scaled, _ = _scale(b, hs, ws)
        clipped = _clip(scaled, F32(height), F32(width))
        return clipped, _size(clipped)                 # the fork's ClipBBox: no +1 here
    raise MinicnnError(f"unknown resize_mode {mode}")


def _overlaps(dets, det_sizes, gts, gt_sizes, normalized):
    """JaccardOverlap of each detection with each ground truth box: (n_det, n_gt) float32."""
    d, g = dets[:, None, :], gts[None, :, :]
    apart = ((g[..., 0] > d[..., 2]) | (g[..., 2] < d[..., 0]) | (g[..., 1] > d[..., 3])
             | (g[..., 3] < d[..., 1]))
    lo, hi = np.maximum(d[..., :2], g[..., :2]), np.minimum(d[..., 2:], g[..., 2:])
    iw = np.where(apart, F32(0), hi[..., 0] - lo[..., 0]).astype(F32)
    ih = np.where(apart, F32(0), hi[..., 1] - lo[..., 1]).astype(F32)
    if not normalized:
        iw, ih = iw + F32(1), ih + F32(1)
    inter = (iw * ih).astype(F32)
    s1 = np.where(_valid(dets), det_sizes, F32(0))[:, None]
    s2 = np.where(_valid(gts), gt_sizes, F32(0))[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = (inter / ((s1 + s2) - inter)).astype(F32)
    return np.where((iw > 0) & (ih > 0), iou, F32(0))


# --- DetectionEvaluate ---------------------------------------------------------------------------

def _ground_truth(gt, background_label_id):
    """GetGroundTruth: {image: {label: (boxes, difficult)}}; a row with image -1 ends the list."""
    out = {}
    for k, row in enumerate(gt):
        item = int(row[0])
        if item == -1:
            break
        label = int(row[1])
        if label == background_label_id:
            raise MinicnnError(f"ground truth row {k} has the background label "
                               f"{background_label_id} (background_label_id)")
        boxes, difficult = out.setdefault(item, {}).setdefault(label, ([], []))
        boxes.append(row[3:7])
        difficult.append(bool(row[7]))
    return {item: {label: (np.array(b, F32).reshape(-1, 4), np.array(d, bool))
                   for label, (b, d) in labels.items()} for item, labels in out.items()}


def _detections(det, background_label_id):
    """GetDetectionResults: {image: {label: (scores, boxes)}}; rows with image -1 are skipped."""
    out = {}
    for k, row in enumerate(det):
        item = int(row[0])
        if item == -1:
            continue
        label = int(row[1])
        if label == background_label_id:
            raise MinicnnError(f"detection row {k} has the background label "
                               f"{background_label_id} (background_label_id)")
        scores, boxes = out.setdefault(item, {}).setdefault(label, ([], []))
        scores.append(row[2])
        boxes.append(row[3:7])
    return {item: {label: (np.array(s, F32), np.array(b, F32).reshape(-1, 4))
                   for label, (s, b) in labels.items()} for item, labels in out.items()}


@detection_evaluate_forward.impl("ref")
def _detection_evaluate_forward_ref(det, gt, *, num_classes, background_label_id=0,
                                    overlap_threshold=0.5, evaluate_difficult_gt=True,
                                    sizes=(), count=0, resize=None):
    """det (num_det, 7), gt (num_gt, 8) -> (rows (classes + num_det, 5), next count). ``sizes``
    are the name_size_file's (height, width) per image (none: normalized boxes), ``count`` the
    position in them of this batch's first image with detections."""
    det = np.asarray(det, np.float64).reshape(-1, 7)
    gt = np.asarray(gt, np.float64).reshape(-1, 8)
    detections = _detections(det, background_label_id)
    truths = _ground_truth(gt, background_label_id)
    threshold, normalized = F32(overlap_threshold), not sizes
    classes = [c for c in range(num_classes) if c != background_label_id]
    rows = np.zeros((len(classes) + len(det), 5), np.float64)
    num_pos = {}
    for labels in truths.values():
        for label, (_, difficult) in labels.items():
            n = len(difficult) if evaluate_difficult_gt else int(np.sum(~difficult))
            num_pos[label] = num_pos.get(label, 0) + n
    for k, c in enumerate(classes):
        rows[k] = (-1, c, num_pos.get(c, 0), -1, -1)
    k = len(classes)
    for item in sorted(detections):
        labels, image_truths = detections[item], truths.get(item, {})
        for label in sorted(labels):
            scores, boxes = labels[label]
            if label not in image_truths:                # no ground truth: all false positives
                n = len(scores)
                rows[k:k + n] = np.stack([np.full(n, item), np.full(n, label), scores,
                                          np.zeros(n), np.ones(n)], axis=1)
                k += n
                continue
            gt_boxes, difficult = image_truths[label]
            order = np.argsort(-scores, kind="stable")
            scores, boxes = scores[order], boxes[order]
            if normalized:
                gt_sizes, det_sizes = _size(gt_boxes), _size(boxes)
            else:
                if count >= len(sizes):
                    raise MinicnnError(f"name_size_file has {len(sizes)} images, and the "
                                       f"detections reach image {count + 1}")
                height, width = sizes[count]
                gt_boxes, gt_sizes = output_boxes(gt_boxes, height, width, resize)
                boxes, det_sizes = output_boxes(boxes, height, width, resize)
            overlaps = _overlaps(boxes, det_sizes, gt_boxes, gt_sizes, normalized)
            visited = np.zeros(len(gt_boxes), bool)
            for i in range(len(scores)):
                rows[k, :3] = (item, label, scores[i])
                j = int(np.argmax(overlaps[i]))          # the first of equal overlaps
                if overlaps[i, j] >= threshold:
                    if evaluate_difficult_gt or not difficult[j]:
                        rows[k, 3:] = (0, 1) if visited[j] else (1, 0)
                        visited[j] = True
                else:
                    rows[k, 3:] = (0, 1)
                k += 1
        if sizes:
            count = (count + 1) % len(sizes)             # the fork wraps after the last image
    return rows, count


def read_name_size_file(path):
    """The (height, width) of each line "name height width" (whitespace separated), read as the
    fork's `infile >> name >> height >> width` does: up to the first that does not parse."""
    with open(path) as f:
        words = f.read().split()
    sizes = []
    for i in range(0, len(words) - 2, 3):
        try:
            sizes.append((int(words[i + 1]), int(words[i + 2])))
        except ValueError:
            break
    return sizes


# --- ComputeAP and the solver's mAP ---------------------------------------------------------------

def _fsum(terms):
    """A float32 sum, term after term (the fork's `float ap += ...`)."""
    terms = np.asarray(terms, F32)
    return F32(np.add.accumulate(terms, dtype=F32)[-1]) if len(terms) else F32(0)


def compute_ap(scores, tp, num_pos, ap_version="Integral"):
    """ComputeAP: the average precision of detections (scores, tp: 1 true positive, 0 false
    positive) against num_pos positives; returns (ap, precision, recall), float32."""
    if ap_version not in AP_VERSIONS:
        raise MinicnnError(f"unknown ap_version '{ap_version}'; the SSD fork's are: "
                           f"{', '.join(AP_VERSIONS)}")
    scores, tp = np.asarray(scores, F32).reshape(-1), np.asarray(tp, np.int64).reshape(-1)
    if len(tp) == 0 or num_pos == 0:
        return F32(0), np.zeros(0, F32), np.zeros(0, F32)
    order = np.argsort(-scores, kind="stable")          # CumSum's stable_sort, highest first
    tp_cum = np.cumsum(tp[order])
    fp_cum = np.cumsum(1 - tp[order])
    if tp_cum[-1] > num_pos:
        raise MinicnnError(f"{tp_cum[-1]} true positives for {num_pos} positives")
    prec = (tp_cum.astype(F32) / (tp_cum + fp_cum).astype(F32)).astype(F32)
    rec = (tp_cum.astype(F32) / F32(num_pos)).astype(F32)
    eps = F32(1e-6)
    if ap_version == "11point":
        # the fork scans backwards, carrying the best precision down; that is the highest
        # precision at recall >= t (a float32 recall against t in double), or 0
        rec64 = rec.astype(np.float64)
        max_precs = [prec[rec64 >= j / 10].max() if rec64[-1] >= j / 10 else F32(0)
                     for j in range(11)]
        ap = _fsum([m / F32(11) for m in reversed(max_precs)])
    elif ap_version == "MaxIntegral":
        envelope = np.maximum.accumulate(prec[::-1])[::-1]   # max precision from i on
        step = np.abs(rec[1:] - rec[:-1]).astype(F32)
        keep = step > eps
        terms = (envelope[:-1] * step)[keep][::-1]       # from the end, as the fork adds them
        ap = _fsum(list(terms) + [rec[0] * envelope[0]])
    else:
        step = np.abs(rec - np.concatenate([[F32(0)], rec[:-1]])).astype(F32)
        keep = step > eps
        ap = _fsum((prec * step)[keep])
    return F32(ap), prec, rec


class DetectionStats:
    """What the SSD fork's TestDetection gathers from the DetectionEvaluate rows of one net
    output over the test batches, and the mAP it logs."""

    def __init__(self):
        self.num_pos = {}             # label -> positives, summed over batches
        self.scores = {}              # label -> [float32 array per batch] of counted detections
        self.tp = {}                  # label -> [array per batch] of 1 (true) or 0 (false)

    def add(self, rows):
        rows = np.asarray(rows, np.float64).reshape(-1, 5)
        ints = np.trunc(rows).astype(np.int64)            # the fork's static_cast<int>
        counts = ints[:, 0] == -1
        for label, n in zip(ints[counts, 1], ints[counts, 2]):
            self.num_pos[int(label)] = self.num_pos.get(int(label), 0) + int(n)
        tp, fp = ints[~counts, 3], ints[~counts, 4]
        kept = (tp != 0) | (fp != 0)                      # matched a difficult box: not counted
        if np.any(tp[kept] != 1 - fp[kept]):
            bad = np.flatnonzero(tp[kept] != 1 - fp[kept])[0]
            raise MinicnnError(f"a DetectionEvaluate row has tp {tp[kept][bad]} and fp "
                               f"{fp[kept][bad]}; one of them must be 1")
        labels, scores, tp = ints[~counts, 1][kept], rows[~counts, 2][kept], tp[kept]
        for label in np.unique(labels):                   # each label's rows in row order
            mine = labels == label
            self.scores.setdefault(int(label), []).append(scores[mine].astype(F32))
            self.tp.setdefault(int(label), []).append(tp[mine])

    @property
    def has_detections(self):
        return bool(self.scores)

    def average_precisions(self, ap_version="Integral"):
        """(mAP, [(label, AP), ...]) over the labels with a count row, ascending; AP is None
        for a label with positives but no detections (the fork warns and skips it). The mean
        is over every label with a count row, as the fork's: those count 0."""
        aps, total = [], F32(0)
        for label in sorted(self.num_pos):
            if label not in self.scores:
                aps.append((label, None))
                continue
            ap, _, _ = compute_ap(np.concatenate(self.scores[label]),
                                  np.concatenate(self.tp[label]), self.num_pos[label], ap_version)
            aps.append((label, ap))
            total = F32(total + ap)
        mean = F32(total / F32(len(self.num_pos))) if self.num_pos else F32(math.nan)
        return mean, aps
