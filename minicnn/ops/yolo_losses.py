"""The training losses of YOLOv2's [region] and YOLOv3's [yolo] layers, as pjreddie's Darknet
computes them (Debian's 2018 snapshot: src/region_layer.c forward_region_layer,
delta_region_box, delta_region_class; src/yolo_layer.c forward_yolo_layer, delta_yolo_box,
delta_yolo_class).

x is the head's bottom (N, A*E, H, W) in Darknet's own memory layout (minicnn.ops.yolo_heads),
y the activated head. Darknet writes, for some entries of y, delta = scale * (target - y); every
other entry's delta is 0. minicnn keeps (scale, target) per entry and derives delta from them.

Truth: per image the boxes (x, y, w, h, class) relative to the image (``darknet_truth`` builds
them from minicnn's box lists as Darknet's fill_truth_detection does).

[region] (per image):
  1. every anchor at every place: its box pred = ((col + y0)/W, (row + y1)/H, exp(x2) aw/W,
     exp(x3) ah/H) (anchors in cells); best = its highest IoU with any truth. Objectness:
     noobject_scale, target 0, unless best > thresh (then no delta). While the net has seen
     fewer than 12800 images, x, y, w, h are also pulled to the anchor's prior (the place's
     centre, the anchor's size): scale .01, targets (.5, .5, 0, 0).
  2. every truth in order: place col = int(x W), row = int(y H); the responsible anchor is the
     one whose box, both centred at 0 (the shifted boxes), has the highest IoU with the truth's
     (the anchor's own size when bias_match, else the predicted size; first on ties, anchor 0
     if every IoU is 0). Its box: scale coord_scale * (2 - w h), targets (x W - col,
     y H - row, log(w W / aw), log(h H / ah)); its objectness: object_scale, target 1, or the
     IoU of its predicted box with the truth when rescore (a constant: no gradient flows through
     it); its classes: class_scale, target one-hot. Without softmax Darknet's tag quirk applies:
     when the anchor's class-0 delta is already non-zero (an earlier truth chose this anchor),
     only the new class's target becomes 1, the others keep theirs, and Class does not count
     it. A later truth overwrites what an earlier one wrote.
  With a softmax tree (YOLO9000: ``tree``, minicnn.ops.softmax_tree) the classes follow
  delta_region_class's tree branch: for the class and each of its ancestors, the whole group
  gets class_scale, target 0, and the node on the path target 1 (a later truth overwrites the
  groups it touches; the tag quirk does not apply). An image with a truth at x, y > 100000 (a
  label without a box, written at x = y = 0: see darknet_truth) is a class-only image, taken
  before anything else: every objectness gets noobject_scale, target 0; the anchor and place
  with the largest objectness x P(class and its ancestors) (first on ties, place 0 if none is
  above 0) gets the class's tree targets and no objectness delta; nothing else of that image
  (no box, no prior, no No Obj figure). ``class_map`` (Darknet's map=) maps a box truth's class
  before step 2's class targets (not a class-only truth's, as Darknet).
  Figures: [Avg IOU, Class, Obj, No Obj, Avg Recall (IoU > .5), count] as Darknet prints them
  (Class over the boxes and class-only images, the rest over the boxes).

[yolo] (per image; anchors in pixels of the net's input, ``mask`` picks this head's):
  1. every anchor at every place: pred box as above with y0, y1 the logistic outputs and the
     sizes over the net's input; best = highest IoU with any truth (and which truth). Objectness:
     target 0 (scale 1), no delta when best > ignore_thresh; when best > truth_thresh
     objectness target 1, classes one-hot of that truth, box as in 2.
  2. every truth: the best of *all* anchors by shifted IoU of their sizes (net-relative); if
     this head's mask holds it (Darknet's int_index), at place (int(x W), int(y H)): box scale
     (2 - w h), targets (x W - col, y H - row, log(w net_w / aw), log(h net_h / ah));
     objectness target 1; classes one-hot with the tag quirk (class-0 delta non-zero: only the
     new class's target becomes 1; Class counts it here).
  Figures: [Avg IOU, Class, Obj, No Obj, .5R, .75R, count].

The gradient. Darknet's CPU backward of [region] is empty; its GPU path multiplies the delta of
x, y and the objectness by the logistic's derivative and passes the class and w, h deltas
unchanged; [yolo] passes every delta unchanged (the sigmoid cross-entropy gradient, y - t).
minicnn's gradient is that, over the batch as Caffe's losses average:

    d loss / d x = -delta / N   (times y (1 - y) for a region's x, y and objectness)

and its loss value is the function whose gradient that is, summed over the entries with a delta:

    scale (t - y)^2 / 2          region x, y, objectness (through the logistic); w, h (both)
    scale * KL(t || sigmoid(x))  yolo x, y, objectness, classes; region logistic classes
    scale * -log softmax(x)_c    region softmax classes (one-hot target); with a tree, over
                                 each group the targets touch (log of the group's softmax)

divided by N (KL(t || p) = t log(t/p) + (1-t) log((1-t)/(1-p)), the cross-entropy less its
minimum: 0 at a perfect prediction). Darknet's own printed cost is sum(delta^2); minicnn keeps
the figures, not that cost. The loss is not smooth where a decision changes (IoU crossing
thresh / ignore_thresh / truth_thresh, the responsible anchor changing) and rescore's target
moves with the predicted box without a gradient: checks by finite differences stay clear of
those.

Where Darknet would misbehave minicnn picks a defined answer: a truth centred at x or y = 1
goes to the last column or row (Darknet reads the next row's or image's memory); with no truth
the figures that divide by the count are 0 (Darknet prints nan).
"""

import numpy as np

from minicnn.errors import LayerError
from minicnn.ops._dispatch import Op
from minicnn.ops.detection import box_rows

region_loss_forward = Op("region_loss_forward")
yolo_loss_forward = Op("yolo_loss_forward")

REGION_MAX_BOXES = 30            # forward_region_layer reads 30 truths per image
WARMUP_IMAGES = 12800            # the prior-matching term while *net->seen < 12800
MIN_TRUTH_SIZE = 0.001           # fill_truth_detection drops narrower or lower boxes
CLASS_ONLY = 999999              # correct_boxes' box of a label at x = y = 0 (no box, a class)


def darknet_truth(labels, max_boxes, classes, class_only=False):
    """Per image a (k, 5) float32 array of Darknet truths (x, y, w, h, class) from box lists
    ``labels`` (N, K, 5) of rows (class, x, y, w, h), rows with class < 0 padding. As Darknet's
    fill_truth_detection (no jitter, no flip): each box is clipped to the image (its edges to
    [0, 1], then x, y, w, h from them), the first ``max_boxes`` boxes are kept, and of those the
    ones narrower or lower than 0.001 are dropped. With ``class_only`` (a Region with a softmax
    tree), a row at x = y = 0 is a label without a box (YOLO9000's ImageNet images), the truth
    (999999, 999999, 999999, 999999, class) as Darknet's correct_boxes writes it; Darknet's
    loader does that for every net, but only the tree's loss reads such truths (the others would
    index past the grid), so minicnn does it there only."""
    f, per_image = np.float32, {}
    for b, _, c, x, y, w, h in box_rows(labels, classes):
        rows = per_image.setdefault(b, [])
        if len(rows) == max_boxes:
            continue
        if class_only and x == 0 and y == 0:
            rows.append((f(CLASS_ONLY),) * 4 + (c,))
            continue
        x0, x1 = (min(max(f(v), f(0)), f(1)) for v in (f(x) - f(w) / 2, f(x) + f(w) / 2))
        y0, y1 = (min(max(f(v), f(0)), f(1)) for v in (f(y) - f(h) / 2, f(y) + f(h) / 2))
        rows.append((f((x0 + x1) / 2), f((y0 + y1) / 2), f(x1 - x0), f(y1 - y0), c))
    out = []
    for b in range(len(labels)):
        boxes = np.array(per_image.get(b, []), np.float32).reshape(-1, 5)
        keep = (boxes[:, 2] >= MIN_TRUTH_SIZE) & (boxes[:, 3] >= MIN_TRUTH_SIZE)
        out.append(boxes[keep])
    return out


def _iou(ax, ay, aw, ah, bx, by, bw, bh):
    """Darknet's box_iou of centre boxes, broadcast; 0 where they do not overlap. A predicted
    side exp(t) that overflowed to inf (as in Darknet's float exp) gives an IoU of 0."""
    with np.errstate(over="ignore"):
        iw = np.minimum(ax + aw / 2, bx + bw / 2) - np.maximum(ax - aw / 2, bx - bw / 2)
        ih = np.minimum(ay + ah / 2, by + bh / 2) - np.maximum(ay - ah / 2, by - bh / 2)
        inter = np.where((iw < 0) | (ih < 0), 0, iw * ih)
        return inter / (aw * ah + bw * bh - inter)


def _logistic(v):
    return 0.5 * np.tanh(0.5 * v) + 0.5


def _kl_logistic(t, z):
    """KL(t || sigmoid(z)) elementwise, stable for large |z|; d/dz = sigmoid(z) - t."""
    log_p, log_q = -np.logaddexp(0, -z), -np.logaddexp(0, z)        # log s, log (1 - s)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(t > 0, t * np.log(np.where(t > 0, t, 1)), 0) + \
            np.where(t < 1, (1 - t) * np.log(np.where(t < 1, 1 - t, 1)), 0)
    return ent - t * log_p - (1 - t) * log_q


def _places(x, anchors):
    """(N, A*E, H, W) -> (N, A, E, H, W) view."""
    n, c, h, w = x.shape
    return x.reshape(n, anchors, c // anchors, h, w)


# --- [region] ---------------------------------------------------------------------------------

def _tree_class(scale, target, yv, tree, c, class_scale):
    """delta_region_class with a tree at one anchor and place (views (E,)): the group of the
    class and of each of its ancestors, target one-hot on the path; returns the product of the
    path's probabilities (Darknet's Class figure)."""
    pred = 1.0
    while c >= 0:
        pred *= float(yv[5 + c])
        lo = 5 + int(tree.group_offset[tree.group[c]])
        hi = lo + int(tree.group_size[tree.group[c]])
        scale[lo:hi], target[lo:hi] = class_scale, 0
        target[5 + c] = 1
        c = int(tree.parent[c])
    return pred


@region_loss_forward.impl("ref")
def _region_loss_forward_ref(x, truths, *, anchors, classes, softmax=False, object_scale=1.0,
                             noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.5,
                             rescore=False, bias_match=False, seen=0, tree=None, class_map=None):
    """(loss 0-d, d loss/d x like x, delta like x, figures (6,)) for the bottom x
    (N, A*(5 + classes), H, W), ``truths`` from darknet_truth and ``anchors`` (A, 2) in cells."""
    from minicnn.ops.yolo_heads import _yolo_head_forward_ref
    dt = x.dtype.type
    a = len(anchors)
    n, _, h, w = x.shape
    y = _yolo_head_forward_ref(x, anchors=a, coords=4, classes=classes, softmax=softmax,
                               tree=tree)
    xv, yv = _places(x, a), _places(y, a)
    scale, target = np.zeros_like(yv), np.zeros_like(yv)
    aw = np.asarray(anchors, x.dtype)[:, 0][:, None, None]
    ah = np.asarray(anchors, x.dtype)[:, 1][:, None, None]
    col = np.arange(w, dtype=x.dtype)[None, None, :]
    row = np.arange(h, dtype=x.dtype)[None, :, None]
    iou_sum = recall = cat_sum = obj_sum = 0.0
    count = class_count = 0
    anyobj_sum = 0.0
    for b in range(n):
        if tree is not None:
            only = [t for t in truths[b] if t[0] > 100000 and t[1] > 100000][:1]
            if only:                 # a class without a box: the likeliest anchor learns it
                c = int(only[0][4])
                p = np.ones_like(yv[b, :, 4])
                node = c
                while node >= 0:                               # get_hierarchy_probability
                    p = p * yv[b, :, 5 + node]
                    node = int(tree.parent[node])
                p = yv[b, :, 4] * p
                k, j, i = np.unravel_index(int(np.argmax(p)) if p.max() > 0 else 0, p.shape)
                scale[b, :, 4], target[b, :, 4] = dt(noobject_scale), 0
                scale[b, k, 4, j, i] = 0
                cat_sum += _tree_class(scale[b, k, :, j, i], target[b, k, :, j, i],
                                       yv[b, k, :, j, i], tree, c, dt(class_scale))
                class_count += 1
                continue
        anyobj_sum += float(np.sum(yv[b, :, 4], dtype=np.float64))
        px, py = (col + yv[b, :, 0]) / dt(w), (row + yv[b, :, 1]) / dt(h)
        pw, ph = np.exp(xv[b, :, 2]) * aw / dt(w), np.exp(xv[b, :, 3]) * ah / dt(h)
        best = np.zeros((a, h, w), x.dtype)
        for tx, ty, tw, th, _ in truths[b]:
            best = np.maximum(best, _iou(px, py, pw, ph, tx, ty, tw, th))
        scale[b, :, 4] = np.where(best > dt(thresh), 0, dt(noobject_scale))
        target[b, :, 4] = 0
        if seen < WARMUP_IMAGES:
            prior_x = ((col + dt(0.5)) / dt(w)) * dt(w) - col
            prior_y = ((row + dt(0.5)) / dt(h)) * dt(h) - row
            scale[b, :, :4] = dt(0.01)
            target[b, :, 0], target[b, :, 1] = prior_x, prior_y
            target[b, :, 2] = np.log((aw / dt(w)) * dt(w) / aw)
            target[b, :, 3] = np.log((ah / dt(h)) * dt(h) / ah)
        for tx, ty, tw, th, c in truths[b]:
            i, j = min(int(tx * dt(w)), w - 1), min(int(ty * dt(h)), h - 1)
            if bias_match:
                sw, sh = aw[:, 0, 0] / dt(w), ah[:, 0, 0] / dt(h)
            else:
                sw, sh = pw[:, j, i], ph[:, j, i]
            shifted = _iou(dt(0), dt(0), sw, sh, dt(0), dt(0), tw, th)
            k = int(np.argmax(shifted)) if shifted.max() > 0 else 0
            iou = dt(_iou(px[k, j, i], py[k, j, i], pw[k, j, i], ph[k, j, i], tx, ty, tw, th))
            scale[b, k, :4, j, i] = dt(coord_scale) * (dt(2) - tw * th)
            target[b, k, :4, j, i] = (tx * dt(w) - dt(i), ty * dt(h) - dt(j),
                                      np.log(tw * dt(w) / aw[k, 0, 0]),
                                      np.log(th * dt(h) / ah[k, 0, 0]))
            recall += float(iou > 0.5)
            iou_sum += float(iou)
            obj_sum += float(yv[b, k, 4, j, i])
            scale[b, k, 4, j, i] = dt(object_scale)
            target[b, k, 4, j, i] = iou if rescore else dt(1)
            cls = slice(5, 5 + classes)
            first = scale[b, k, 5, j, i] * (target[b, k, 5, j, i] - yv[b, k, 5, j, i])
            c = int(c)
            if class_map is not None and len(class_map):
                if c >= len(class_map):
                    raise LayerError(f"a box of class {c}, but region_param.class_map maps "
                                     f"{len(class_map)} classes")
                c = int(class_map[c])
            count += 1
            class_count += 1
            if tree is not None:
                cat_sum += _tree_class(scale[b, k, :, j, i], target[b, k, :, j, i],
                                       yv[b, k, :, j, i], tree, c, dt(class_scale))
            elif not softmax and first != 0:
                scale[b, k, 5 + c, j, i] = dt(class_scale)
                target[b, k, 5 + c, j, i] = 1
            else:
                scale[b, k, cls, j, i] = dt(class_scale)
                target[b, k, cls, j, i] = 0
                target[b, k, 5 + c, j, i] = 1
                cat_sum += float(yv[b, k, 5 + c, j, i])
    delta = (scale * (target - yv)).reshape(x.shape)
    # the loss and its gradient
    d = -(scale * (target - yv)) / dt(n)
    total = 0.5 * np.sum(scale[:, :, :5] * (target[:, :, :5] - yv[:, :, :5]) ** 2,
                         dtype=np.float64)
    for e in (0, 1, 4):
        d[:, :, e] *= yv[:, :, e] * (1 - yv[:, :, e])
    sc, tc = scale[:, :, 5:], target[:, :, 5:]
    if tree is not None:                  # each group's cross-entropy (a touched group is
        z = np.moveaxis(xv[:, :, 5:], 2, -1)                 # wholly scaled, one-hot)
        big = tree.group_reduce(np.maximum, z)
        lse = np.log(tree.group_reduce(np.add, np.exp(z - big))) + big
        total -= np.sum(sc * tc * np.moveaxis(z - lse, -1, 2), dtype=np.float64)
    elif softmax:
        z = xv[:, :, 5:]
        log_p = z - z.max(axis=2, keepdims=True)
        log_p = log_p - np.log(np.exp(log_p).sum(axis=2, keepdims=True))
        total -= np.sum(sc * tc * log_p, dtype=np.float64)
    else:
        total += np.sum(sc * _kl_logistic(tc, xv[:, :, 5:]), dtype=np.float64)
    figures = np.array([iou_sum / count if count else 0.0,
                        cat_sum / class_count if class_count else 0.0,
                        obj_sum / count if count else 0.0, anyobj_sum / (n * a * h * w),
                        recall / count if count else 0.0, count], x.dtype)
    return np.asarray(total / n, x.dtype), d.reshape(x.shape), delta, figures


# --- [yolo] -----------------------------------------------------------------------------------

@yolo_loss_forward.impl("ref")
def _yolo_loss_forward_ref(x, truths, *, anchors, mask, classes, net_width, net_height,
                           ignore_thresh=0.5, truth_thresh=1.0):
    """(loss 0-d, d loss/d x like x, delta like x, figures (7,)) for the bottom x
    (N, len(mask)*(5 + classes), H, W), ``truths`` from darknet_truth, ``anchors`` (total, 2)
    in the net's input pixels and ``mask`` this head's anchor indices."""
    from minicnn.ops.yolo_heads import _yolo_head_forward_ref
    dt = x.dtype.type
    a = len(mask)
    n, _, h, w = x.shape
    y = _yolo_head_forward_ref(x, anchors=a, coords=4, classes=classes)
    xv, yv = _places(x, a), _places(y, a)
    scale, target = np.zeros_like(yv), np.zeros_like(yv)
    allw, allh = (np.asarray(anchors, x.dtype)[:, k] for k in (0, 1))
    aw, ah = allw[mask][:, None, None], allh[mask][:, None, None]
    nw, nh = dt(net_width), dt(net_height)
    col = np.arange(w, dtype=x.dtype)[None, None, :]
    row = np.arange(h, dtype=x.dtype)[None, :, None]
    iou_sum = recall = recall75 = cat_sum = obj_sum = 0.0
    count = 0
    anyobj_sum = float(np.sum(yv[:, :, 4], dtype=np.float64))

    def box_targets(b, k, j, i, truth):
        tx, ty, tw, th = truth[:4]
        scale[b, k, :4, j, i] = dt(2) - tw * th
        target[b, k, :4, j, i] = (tx * dt(w) - dt(i), ty * dt(h) - dt(j),
                                  np.log(tw * nw / aw[k, 0, 0]), np.log(th * nh / ah[k, 0, 0]))

    for b in range(n):
        px, py = (col + yv[b, :, 0]) / dt(w), (row + yv[b, :, 1]) / dt(h)
        with np.errstate(over="ignore"):       # an untrained head's exp(t) may be inf
            pw, ph = np.exp(xv[b, :, 2]) * aw / nw, np.exp(xv[b, :, 3]) * ah / nh
        best = np.zeros((a, h, w), x.dtype)
        best_t = np.zeros((a, h, w), int)
        for t, (tx, ty, tw, th, _) in enumerate(truths[b]):
            iou = _iou(px, py, pw, ph, tx, ty, tw, th)
            best_t = np.where(iou > best, t, best_t)
            best = np.maximum(best, iou)
        scale[b, :, 4] = np.where(best > dt(ignore_thresh), 0, 1)
        target[b, :, 4] = 0
        for k, j, i in zip(*np.nonzero(best > dt(truth_thresh))):
            truth = truths[b][best_t[k, j, i]]
            scale[b, k, 4:, j, i] = 1
            target[b, k, 4:, j, i] = 0
            target[b, k, 4, j, i] = 1
            target[b, k, 5 + int(truth[4]), j, i] = 1
            box_targets(b, k, j, i, truth)
        for truth in truths[b]:
            tx, ty, tw, th, c = truth
            shifted = _iou(dt(0), dt(0), allw / nw, allh / nh, dt(0), dt(0), tw, th)
            best_n = int(np.argmax(shifted)) if shifted.max() > 0 else 0
            if best_n not in mask:
                continue
            k = list(mask).index(best_n)
            i, j = min(int(tx * dt(w)), w - 1), min(int(ty * dt(h)), h - 1)
            box_targets(b, k, j, i, truth)
            iou = dt(_iou(px[k, j, i], py[k, j, i], pw[k, j, i], ph[k, j, i], tx, ty, tw, th))
            obj_sum += float(yv[b, k, 4, j, i])
            scale[b, k, 4, j, i], target[b, k, 4, j, i] = 1, 1
            c = int(c)
            first = scale[b, k, 5, j, i] * (target[b, k, 5, j, i] - yv[b, k, 5, j, i])
            if first == 0:
                scale[b, k, 5:, j, i] = 1
                target[b, k, 5:, j, i] = 0
            scale[b, k, 5 + c, j, i], target[b, k, 5 + c, j, i] = 1, 1
            cat_sum += float(yv[b, k, 5 + c, j, i])
            count += 1
            recall += float(iou > 0.5)
            recall75 += float(iou > 0.75)
            iou_sum += float(iou)
    delta = (scale * (target - yv)).reshape(x.shape)
    d = -delta / dt(n)
    wh = slice(2, 4)
    total = 0.5 * np.sum(scale[:, :, wh] * (target[:, :, wh] - yv[:, :, wh]) ** 2,
                         dtype=np.float64)
    for part in (slice(0, 2), slice(4, None)):
        total += np.sum(scale[:, :, part] * _kl_logistic(target[:, :, part], xv[:, :, part]),
                        dtype=np.float64)
    figures = np.array([iou_sum / count if count else 0.0, cat_sum / count if count else 0.0,
                        obj_sum / count if count else 0.0, anyobj_sum / (n * a * h * w),
                        recall / count if count else 0.0, recall75 / count if count else 0.0,
                        count], x.dtype)
    return np.asarray(total / n, x.dtype), d, delta, figures
