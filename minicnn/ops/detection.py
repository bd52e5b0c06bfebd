"""YOLOv1's detection loss, as Darknet's [detection] layer computes it (src/detection_layer.c).

Predictions x (N, D) with D = S*S*(C + B*(1 + 4)), planar by kind, cells row-major
(cell = row*S + col), exactly Darknet's layout:

    x[:, cell*C + c]                          class probability c of a cell    (S*S*C values)
    x[:, S*S*C + cell*B + j]                  confidence of predictor j         (S*S*B values)
    x[:, S*S*(C + B) + (cell*B + j)*4 + k]    box of predictor j, k = x, y, w, h (S*S*B*4)

Box x, y are offsets inside the cell (0..1); w, h are relative to the image, square-rooted when
``sqrt`` (the net predicts sqrt(w), sqrt(h)).

Ground truth, ``truth`` (N, S*S, 1 + C + 4): per cell [is_obj, one-hot class, x_off, y_off, w, h]
with w, h *not* square-rooted (Darknet's truth layout; ``detection_truth`` builds it from box
lists). For every output element Darknet writes delta = scale * (target - output):

  - every confidence: noobject_scale * (0 - conf); cells without an object stop there;
  - an object cell: class_scale * (p_true - p) for every class;
  - its responsible predictor, the one whose box (x, y divided by S, w, h squared if sqrt) has
    the highest IoU with the truth (x, y divided by S); if every IoU is 0, the smallest RMSE over
    (x, y, w, h); ties keep the first; its confidence target becomes 1, or the IoU when
    ``rescore`` (held constant: no gradient flows through it), scale object_scale;
  - its box: coord_scale * (t - o) for x, y and coord_scale * (sqrt(t) - o) for w, h if sqrt.

minicnn's loss is the Caffe-style reading of that delta:

    loss = 1/(2N) * sum_k scale_k * (target_k - x_k)^2        d loss / d x = -delta / N

N the batch size, so that a Caffe solver at Darknet's learning rate trains like Darknet (whose
update divides by the batch). The derivative is discontinuous where the responsible predictor
changes (two predictors' IoUs, or RMSEs when no IoU is positive, cross): gradient checks keep
away from those points. ``stats`` are Darknet's training printout: [avg IoU, avg class prob of
the true class ("Pos Cat"), avg class prob ("All Cat"), avg responsible confidence ("Pos Obj"),
avg confidence ("Any Obj"), object count].

Where Darknet would misbehave minicnn picks a defined answer: no predictor chosen (every IoU 0
and every RMSE >= 20, or NaN) falls back to predictor 0 (Darknet indexes -1).

Impls: ref (NumPy loops over object cells, the specification), cpu (csrc/detection.cpp).
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.native import lib
from minicnn.ops._dispatch import Op

detection_loss_forward = Op("detection_loss_forward")
detection_loss_backward = Op("detection_loss_backward")

MIN_BOX_SIZE = 0.005                   # Darknet drops truth boxes narrower or lower than this
_NO_RMSE = 20.0                        # Darknet's initial best_rmse


def detection_layout(side, num, classes, coords=4):
    """(values per image, offset of the confidences, offset of the boxes) of Darknet's layout."""
    cells = side * side
    return cells * (classes + num * (1 + coords)), cells * classes, cells * (classes + num)


def check_detection_shapes(x_shape, truth_shape, side, num, classes, coords=4):
    """LayerError unless x is (N, D) and truth (N, S*S, 1 + C + coords)."""
    d = detection_layout(side, num, classes, coords)[0]
    if len(x_shape) != 2 or x_shape[1] != d:
        raise LayerError(f"the predictions must be (N, {d}) for side {side}, num {num}, classes "
                         f"{classes}, coords {coords} (S*S*(C + B*(1 + coords))), got shape "
                         f"{tuple(x_shape)}")
    want = (x_shape[0], side * side, 1 + classes + coords)
    if tuple(truth_shape) != want:
        raise LayerError(f"the truth grid must have shape {want}, got {tuple(truth_shape)}")


# --- ground truth: box lists -> Darknet's per-cell truth ---------------------------------------

def box_rows(labels, classes):
    """The real rows of box lists ``labels`` (N, K, 5), checked: (item, index, class, x, y, w,
    h) for every row whose class is not negative (the rest are padding). Classes must be
    integers in [0, classes) and coordinates finite."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != 5:
        raise LayerError(f"box lists must have shape (N, K, 5) (class, x, y, w, h per row), got "
                         f"{labels.shape}")
    for b in range(labels.shape[0]):
        for k, (c, x, y, w, h) in enumerate(labels[b].tolist()):
            if c < 0:
                continue                                   # padding
            if c != int(c) or c >= classes:
                raise LayerError(f"box {k} of item {b} has class {c:g}: classes must be integers "
                                 f"in [0, {classes}) (or negative for padding rows)")
            if not all(np.isfinite((x, y, w, h))):
                raise LayerError(f"box {k} of item {b} has a non-finite coordinate "
                                 f"{(x, y, w, h)}")
            yield b, k, c, x, y, w, h


def detection_truth(labels, side, classes, coords=4, dtype=None):
    """Darknet's truth grid (N, S*S, 1 + C + 4) from box lists ``labels`` (N, K, 5).

    Each row of labels[n] is (class, x, y, w, h), x, y the box centre and w, h its size, all
    relative to the image (0..1); rows with class < 0 are padding. As Darknet's
    fill_truth_region (its correct_boxes), a box is first clipped to the image: its edges
    x -+ w/2, y -+ h/2 are limited to [0, 1] and x, y, w, h recomputed from them. In row order
    (Darknet shuffles the boxes of an image before this step; a data layer does that), a box
    goes to the cell holding its centre, col = int(x*S), row = int(y*S) (clamped to S - 1 at x
    or y = 1), unless that cell already has one: one object per cell, the first wins. Boxes
    with w or h below 0.005 (after clipping) are dropped, as in Darknet. Class ids must be
    integers in [0, classes).
    """
    labels = np.asarray(labels)
    if coords != 4:
        raise LayerError(f"coords must be 4 (x, y, w, h), got {coords}")
    dtype = labels.dtype if dtype is None else np.dtype(dtype)
    truth = np.zeros((labels.shape[0], side * side, 1 + classes + coords), dtype)
    for b, _, c, x, y, w, h in box_rows(labels, classes):
        x0, x1 = min(max(x - w / 2, 0), 1), min(max(x + w / 2, 0), 1)   # clipped to the
        y0, y1 = min(max(y - h / 2, 0), 1), min(max(y + h / 2, 0), 1)   # image
        x, y, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        if w < MIN_BOX_SIZE or h < MIN_BOX_SIZE:
            continue
        col = min(max(int(x * side), 0), side - 1)
        row = min(max(int(y * side), 0), side - 1)
        cell = truth[b, row * side + col]
        if cell[0]:
            continue                                       # one object per cell: first wins
        cell[0] = 1
        cell[1 + int(c)] = 1
        cell[1 + classes:] = (x * side - col, y * side - row, w, h)
    return truth


# --- box helpers (Darknet's box.c), on (x, y, w, h) centre boxes -----------------------------

def box_iou(a, b):
    """IoU of two centre boxes (x, y, w, h); 0 when they do not overlap."""
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)
    w = overlap(a[0], a[2], b[0], b[2])
    h = overlap(a[1], a[3], b[1], b[3])
    inter = 0 if w < 0 or h < 0 else w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def box_rmse(a, b):
    return np.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))


# --- reference (the spec) ----------------------------------------------------------------------

@detection_loss_forward.impl("ref")
def _detection_loss_forward_ref(x, truth, *, side, num, classes, coords=4, sqrt=True,
                                rescore=True, object_scale=1.0, noobject_scale=1.0,
                                class_scale=1.0, coord_scale=1.0):
    """(loss 0-d, delta like x, stats (6,)) for predictions x (N, D) and truth (N, S*S, 5 + C).
    delta = scale * (target - x), Darknet's l.delta (the negative gradient of N * loss)."""
    check_detection_shapes(x.shape, truth.shape, side, num, classes, coords)
    n, cells = x.shape[0], side * side
    _, conf0, box0 = detection_layout(side, num, classes, coords)
    t = x.dtype.type
    delta = np.zeros_like(x)
    loss2 = 0.0                                     # sum of scale * (target - x)^2
    iou_sum = cat_sum = allcat_sum = obj_sum = 0.0
    count = 0
    conf = x[:, conf0:box0]                         # (N, S*S*B)
    delta[:, conf0:box0] = t(noobject_scale) * (0 - conf)
    loss2 += float(noobject_scale) * float(np.sum(conf.astype(np.float64) ** 2))
    anyobj_sum = float(np.sum(conf, dtype=np.float64))
    for b in range(n):
        for i in np.flatnonzero(truth[b, :, 0]):           # object cells
            cell_truth = truth[b, i]
            p = slice(i * classes, (i + 1) * classes)
            diff = cell_truth[1:1 + classes] - x[b, p]
            delta[b, p] = t(class_scale) * diff
            loss2 += float(class_scale) * float(np.sum(diff.astype(np.float64) ** 2))
            cat_sum += float(x[b, p][cell_truth[1:1 + classes] != 0].sum())
            allcat_sum += float(x[b, p].sum())

            tx, ty, tw, th = cell_truth[1 + classes:]
            true_box = (tx / t(side), ty / t(side), tw, th)
            best, best_iou, best_rmse = -1, t(0), t(_NO_RMSE)
            boxes = []
            for j in range(num):
                k = box0 + (i * num + j) * coords
                ox, oy, ow, oh = x[b, k:k + 4]
                out = (ox / t(side), oy / t(side), ow * ow if sqrt else ow,
                       oh * oh if sqrt else oh)
                boxes.append(out)
                iou, rmse = box_iou(out, true_box), box_rmse(out, true_box)
                if best_iou > 0 or iou > 0:                 # once an IoU is positive, IoU decides
                    if iou > best_iou:
                        best, best_iou = j, iou
                elif rmse < best_rmse:
                    best, best_rmse = j, rmse
            best = max(best, 0)
            iou = box_iou(boxes[best], true_box)

            c = conf0 + i * num + best                      # its confidence: object, not noobject
            target = iou if rescore else t(1)
            loss2 -= float(noobject_scale) * float(x[b, c]) ** 2
            loss2 += float(object_scale) * float(target - x[b, c]) ** 2
            delta[b, c] = t(object_scale) * (target - x[b, c])
            obj_sum += float(x[b, c])

            k = box0 + (i * num + best) * coords
            goal = np.array([tx, ty, np.sqrt(tw) if sqrt else tw, np.sqrt(th) if sqrt else th],
                            x.dtype)
            diff = goal - x[b, k:k + 4]
            delta[b, k:k + 4] = t(coord_scale) * diff
            loss2 += float(coord_scale) * float(np.sum(diff.astype(np.float64) ** 2))
            iou_sum += float(iou)
            count += 1
    loss = np.asarray(loss2 / (2 * n), x.dtype)
    stats = np.array([iou_sum / count if count else 0.0, cat_sum / count if count else 0.0,
                      allcat_sum / (count * classes) if count else 0.0,
                      obj_sum / count if count else 0.0, anyobj_sum / (n * cells * num), count],
                     x.dtype)
    return loss, delta, stats


@detection_loss_backward.impl("ref")
def _detection_loss_backward_ref(delta, loss_weight=1.0):
    """d(loss)/dx = -loss_weight * delta / N, for the delta that forward returned."""
    return delta * delta.dtype.type(-float(loss_weight) / delta.shape[0])


# --- fast CPU: csrc/detection.cpp ----------------------------------------------------------------

@detection_loss_forward.impl("cpu", available=lib is not None
                             and hasattr(lib, "detection_loss_forward"))
def _detection_loss_forward_cpu(x, truth, *, side, num, classes, coords=4, sqrt=True,
                                rescore=True, object_scale=1.0, noobject_scale=1.0,
                                class_scale=1.0, coord_scale=1.0):
    check_detection_shapes(x.shape, truth.shape, side, num, classes, coords)
    if x.dtype not in (np.float32, np.float64):
        return _detection_loss_forward_ref(
            x, truth, side=side, num=num, classes=classes, coords=coords, sqrt=sqrt,
            rescore=rescore, object_scale=object_scale, noobject_scale=noobject_scale,
            class_scale=class_scale, coord_scale=coord_scale)
    x = np.ascontiguousarray(x)
    truth = np.ascontiguousarray(truth, x.dtype)
    loss2, delta, stats = lib.detection_loss_forward(
        x, truth, int(side), int(num), int(classes), bool(sqrt), bool(rescore),
        float(object_scale), float(noobject_scale), float(class_scale), float(coord_scale))
    return np.asarray(loss2 / (2 * x.shape[0]), x.dtype), delta, np.asarray(stats, x.dtype)


# --- CUDA (kernels/detection.cu) ----------------------------------------------------------------

from minicnn import cuda  # noqa: E402


@detection_loss_forward.impl("cuda", available=cuda.importable)
def _detection_loss_forward_cuda(x, truth, *, side, num, classes, coords=4, sqrt=True,
                                 rescore=True, object_scale=1.0, noobject_scale=1.0,
                                 class_scale=1.0, coord_scale=1.0):
    check_detection_shapes(x.shape, truth.shape, side, num, classes, coords)
    if coords != 4:
        raise LayerError(f"coords must be 4 (x, y, w, h), got {coords}")
    cp = cuda.cupy()
    x = cuda.contiguous(x)
    truth = cp.ascontiguousarray(truth if cuda.is_device_array(truth) else cuda.to_device(truth),
                                 dtype=x.dtype)
    n, cells = x.shape[0], side * side
    delta = cp.empty_like(x)
    part = cp.empty((n * cells, 6), np.float64)
    counted = cp.empty(n * cells, np.int32)
    t = x.dtype.type
    cuda.launch_1d(cuda.kernel("detection.cu", "detection_loss_forward", x.dtype), n * cells,
                   x, truth, delta, part, counted, np.int32(x.shape[1]), np.int32(side),
                   np.int32(num), np.int32(classes), np.int32(bool(sqrt)), np.int32(bool(rescore)),
                   t(object_scale), t(noobject_scale), t(class_scale), t(coord_scale))
    sums = part.sum(axis=0).get()                     # 7 numbers to the host
    count = int(counted.sum())
    loss2, iou_sum, cat_sum, allcat_sum, obj_sum, anyobj_sum = (float(v) for v in sums)
    stats = np.array([iou_sum / count if count else 0.0, cat_sum / count if count else 0.0,
                      allcat_sum / (count * classes) if count else 0.0,
                      obj_sum / count if count else 0.0, anyobj_sum / (n * cells * num), count],
                     x.dtype)
    return (cp.asarray(np.asarray(loss2 / (2 * n), x.dtype)), delta, cp.asarray(stats))


@detection_loss_backward.impl("cuda", available=cuda.importable)
def _detection_loss_backward_cuda(delta, loss_weight=1.0):
    return delta * cuda.loss_scale(loss_weight, -float(delta.shape[0]), delta.dtype)
