"""The SSD fork's layers (Wei Liu's caffe, branch ssd): Normalize, PriorBox, DetectionOutput.

Normalize: an L2 norm per item (across_spatial) or per pixel over the channels, then a learned
scale (one value, or one per channel). x is (N, C, S) with S = H*W:

    norm  = sqrt(sum x^2 + eps)          sum over C and S (across_spatial) or over C only;
                                         eps goes INSIDE the square root (MVN adds it after)
    xh    = x / norm,  y = xh * scale
    g     = scale * dy                   (the gradient reaching xh)
    dx    = (g - xh * sum(xh * g)) / norm          (the same sums as the norm's)
    dscale = sum(xh * dy)                over everything scale is broadcast across

Caffe's backward applies the scale after the sum, scale * (dy - xh * sum(xh * dy)) / norm: the
same numbers while every channel has the same scale (channel_shared, or per-channel scales as
SSD fills them, all 20), and not the gradient once training moves per-channel scales apart.
minicnn computes the gradient; with one shared scale it keeps Caffe's order of operations.
Caffe writes dscale as sum(y * dy) / scale, which is NaN or inf where a scale is 0; minicnn
sums xh * dy, the same number elsewhere. No kinks.

PriorBox: the default boxes of one feature map, as corners (xmin, ymin, xmax, ymax) relative to
the image, in the fork's order: for each row h, column w, each min_size: the min_size square,
then (with max_size) the sqrt(min_size * max_size) square, then one box per aspect ratio r != 1,
min_size * sqrt(r) wide and min_size / sqrt(r) high. The fork keeps min_size and max_size in
ints (30.7 -> 30) and computes the centres (w + offset) * step in float.

DetectionOutput: decode each prior's location prediction into a box, keep the scores above
confidence_threshold, non-maximum suppression per class (a box goes when its IoU with a kept one
exceeds the threshold), keep the keep_top_k best over all classes, and write one row per
detection, [image, label, score, xmin, ymin, xmax, ymax], grouped by image then label. The fork
does this in float (its NormalizedBBox), even in a double net; so does minicnn.

Impls: ref (NumPy; the suppression loops over the candidates, at most nms top_k of them);
cuda for Normalize (CuPy reductions).
"""

import math

import numpy as np

from minicnn.ops._dispatch import Op

normalize_forward, normalize_backward = Op("normalize_forward"), Op("normalize_backward")
prior_box_forward = Op("prior_box_forward")
detection_output_forward = Op("detection_output_forward")
multibox_loss_forward = Op("multibox_loss_forward")

CODE_TYPES = ("CORNER", "CENTER_SIZE", "CORNER_SIZE")
FLT_MAX = float(np.finfo(np.float32).max)


# --- Normalize ---------------------------------------------------------------------------------

def _as_ncs(a):
    """(N, C, ...) viewed as (N, C, S), the legacy 4-D layout with S = H*W (1 for 2 axes)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _sum_axes(across_spatial):
    return (1, 2) if across_spatial else (1,)


@normalize_forward.impl("ref")
def _normalize_forward_ref(x, scale, *, across_spatial=True, eps=1e-10):
    """Returns (y, xh, norm): xh = x / norm (N, C, S) and norm, (N, 1, 1) across_spatial, else
    (N, 1, S), kept for backward. scale has shape () (channel_shared) or (C,)."""
    x3 = _as_ncs(x)
    norm = np.sqrt(np.sum(x3 * x3, axis=_sum_axes(across_spatial), keepdims=True)
                   + x.dtype.type(eps))
    # Caffe multiplies by 1 / norm when across_spatial, divides per pixel otherwise
    xh = x3 * (1 / norm) if across_spatial else x3 / norm
    y = xh * scale.reshape(1, -1, 1)
    return y.reshape(x.shape), xh, norm


@normalize_backward.impl("ref")
def _normalize_backward_ref(dy, xh, norm, scale, *, across_spatial=True):
    """Returns (dx, dscale); dscale has scale's shape."""
    dy3 = _as_ncs(dy)
    dscale = np.sum(xh * dy3, axis=None if scale.ndim == 0 else (0, 2)).reshape(scale.shape)
    if scale.ndim == 0:                  # one scale: Caffe's order, scaled after the sum
        dot = np.sum(xh * dy3, axis=_sum_axes(across_spatial), keepdims=True)
        dx = (dy3 - xh * dot) / norm * scale
    else:                                # per channel: the scale goes inside the sum
        g = dy3 * scale.reshape(1, -1, 1)
        dot = np.sum(xh * g, axis=_sum_axes(across_spatial), keepdims=True)
        dx = (g - xh * dot) / norm
    return dx.reshape(dy.shape), dscale


# --- PriorBox ----------------------------------------------------------------------------------

def prior_box_aspect_ratios(aspect_ratio, flip):
    """The fork's list: 1 first, then each given ratio not yet listed (within 1e-6), followed by
    its reciprocal with flip. So 2 and 0.5 with flip give [1, 2, 0.5], not 0.5 twice."""
    ratios = [1.0]
    for ar in aspect_ratio:
        ar = float(np.float32(ar))
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if flip:
            ratios.append(float(np.float32(1.0 / ar)))
    return ratios


def prior_box_sizes(min_sizes, max_sizes, aspect_ratios):
    """(width, height) of each prior at one location, (num_priors, 2) float32, in the fork's
    order. min_size and max_size are truncated to ints, as the fork stores them."""
    sizes = []
    for s, min_size in enumerate(min_sizes):
        m = int(min_size)
        sizes.append((m, m))
        if len(max_sizes):
            side = math.sqrt(m * int(max_sizes[s]))         # an int product, as in the fork
            sizes.append((side, side))
        for ar in aspect_ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            sizes.append((m * math.sqrt(ar), m / math.sqrt(ar)))
    return np.array(sizes, dtype=np.float32)


@prior_box_forward.impl("ref")
def _prior_box_forward_ref(layer_h, layer_w, img_h, img_w, *, sizes, variance, step_h, step_w,
                           offset=0.5, clip=False, dtype=np.float32):
    """(1, 2, layer_h * layer_w * num_priors * 4): the boxes, then their variances (one value
    for all four coordinates, or four). ``sizes`` from prior_box_sizes; step 0 means
    img / layer (in float)."""
    f32 = np.float32
    step_w = f32(step_w) if step_w else f32(img_w) / f32(layer_w)
    step_h = f32(step_h) if step_h else f32(img_h) / f32(layer_h)
    cx = (np.arange(layer_w, dtype=f32) + f32(offset)) * step_w          # float, as the fork
    cy = (np.arange(layer_h, dtype=f32) + f32(offset)) * step_h
    cx, cy = cx[None, :, None].astype(np.float64), cy[:, None, None].astype(np.float64)
    half_w, half_h = sizes[:, 0].astype(np.float64) / 2, sizes[:, 1].astype(np.float64) / 2
    shape = (layer_h, layer_w, len(sizes))
    boxes = np.stack([np.broadcast_to((cx - half_w) / img_w, shape),      # (H, W, P, 4): the
                      np.broadcast_to((cy - half_h) / img_h, shape),      # fork divides in
                      np.broadcast_to((cx + half_w) / img_w, shape),      # double and stores
                      np.broadcast_to((cy + half_h) / img_h, shape)], axis=-1).astype(dtype)
    if clip:
        boxes = np.clip(boxes, 0, 1)
    variances = np.broadcast_to(np.asarray(variance, dtype=dtype), boxes.shape)
    return np.stack([boxes.reshape(-1), variances.reshape(-1)])[None]


# --- DetectionOutput ---------------------------------------------------------------------------

def decode_boxes(priors, variances, loc, code_type="CORNER", variance_encoded_in_target=False):
    """Boxes (P, 4) float32 from priors (P, 4) and their variances (P, 4), both corners, and
    location predictions loc (P, 4), as the fork's DecodeBBox:

        CORNER       corner + v * loc
        CENTER_SIZE  centre + v * loc[:2] * prior size,  size * exp(v * loc[2:])
        CORNER_SIZE  corner + v * loc * prior size
    v is 1 with variance_encoded_in_target (the net's output already holds it)."""
    f32 = np.float32
    p, loc = priors.astype(f32), loc.astype(f32)
    v = np.ones_like(p) if variance_encoded_in_target else variances.astype(f32)
    if code_type == "CORNER":
        return p + v * loc
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    if code_type == "CORNER_SIZE":
        return p + v * loc * np.stack([pw, ph, pw, ph], axis=1)
    if code_type != "CENTER_SIZE":
        raise ValueError(f"code_type must be one of {CODE_TYPES}, not {code_type!r}")
    pcx, pcy = (p[:, 0] + p[:, 2]) / f32(2), (p[:, 1] + p[:, 3]) / f32(2)
    cx = v[:, 0] * loc[:, 0] * pw + pcx
    cy = v[:, 1] * loc[:, 1] * ph + pcy
    w = np.exp(v[:, 2] * loc[:, 2]) * pw
    h = np.exp(v[:, 3] * loc[:, 3]) * ph
    return np.stack([cx - w / f32(2), cy - h / f32(2), cx + w / f32(2), cy + h / f32(2)], axis=1)


def box_sizes(boxes):
    """Area of each (xmin, ymin, xmax, ymax) row; 0 for an inverted box (the fork's BBoxSize)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.where((w < 0) | (h < 0), boxes.dtype.type(0), w * h)


def jaccard_overlap(box, size, others, other_sizes):
    """IoU of one box with each of ``others`` (the fork's JaccardOverlap, in float): 0 unless
    the intersection has a positive width and height. Boxes are (..., 4) rows that broadcast:
    (M, 1, 4) against (1, M, 4) gives every pair."""
    x0, y0 = np.maximum(box[..., 0], others[..., 0]), np.maximum(box[..., 1], others[..., 1])
    x1, y1 = np.minimum(box[..., 2], others[..., 2]), np.minimum(box[..., 3], others[..., 3])
    iw, ih = x1 - x0, y1 - y0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, box.dtype.type(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / (size + other_sizes - inter), box.dtype.type(0))


def nms_fast(boxes, scores, score_threshold, nms_threshold, eta=1.0, top_k=-1):
    """Indices kept by the fork's ApplyNMSFast, best first: the scores above score_threshold,
    sorted (stable) from high to low, the top_k first of them (-1: all); a box is kept when its
    IoU with every box kept so far is <= the threshold, which is multiplied by eta after each
    kept box while it is above 0.5."""
    f32 = np.float32
    candidates = np.flatnonzero(scores > f32(score_threshold))
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        candidates = candidates[:top_k]
    boxes = boxes[candidates]
    sizes = box_sizes(boxes)
    # every pair's IoU at once (row: the box considered, column: one kept before it); the
    # greedy pass below then only looks values up
    iou = jaccard_overlap(boxes[:, None, :], sizes[:, None], boxes[None], sizes[None])
    threshold, kept = f32(nms_threshold), []
    if eta >= 1:
        # the threshold stays: a box is out once a kept box overlaps it more (IoU is symmetric,
        # bit for bit), one vector operation per kept box instead of one per candidate
        suppressed = np.zeros(len(candidates), dtype=bool)
        for k in range(len(candidates)):
            if not suppressed[k]:
                kept.append(k)
                suppressed |= iou[k] > threshold
        return [int(candidates[k]) for k in kept]
    for k in range(len(candidates)):
        if np.all(iou[k, kept] <= threshold):
            kept.append(k)
            if threshold > 0.5:
                threshold = threshold * f32(eta)
    return [int(candidates[k]) for k in kept]


@detection_output_forward.impl("ref")
def _detection_output_forward_ref(loc, conf, prior, *, num_classes, share_location=True,
                                  background_label_id=0, code_type="CORNER",
                                  variance_encoded_in_target=False, confidence_threshold=-FLT_MAX,
                                  nms_threshold=0.3, top_k=-1, eta=1.0, keep_top_k=-1,
                                  clip=False):
    """(1, 1, K, 7) detections from loc (N, P * L * 4; L = 1 with share_location, else
    num_classes), conf (N, P * num_classes, already probabilities) and prior (the PriorBox
    output: P boxes then P variances). With no detection at all, one row per image
    [i, -1, -1, -1, -1, -1, -1], as the fork writes."""
    num, dtype = loc.shape[0], loc.dtype
    num_loc_classes = 1 if share_location else num_classes
    flat = prior.reshape(-1).astype(np.float32)
    num_priors = flat.size // 8
    priors, variances = flat[:num_priors * 4].reshape(-1, 4), flat[num_priors * 4:].reshape(-1, 4)
    loc = loc.reshape(num, num_priors, num_loc_classes, 4)
    conf = conf.reshape(num, num_priors, num_classes).astype(np.float32)
    rows = []
    for i in range(num):
        decoded = [decode_boxes(priors, variances, loc[i, :, k], code_type,
                                variance_encoded_in_target) for k in range(num_loc_classes)]
        if clip:                                     # OpenCV's option: before NMS
            decoded = [np.clip(boxes, np.float32(0), np.float32(1)) for boxes in decoded]
        kept = {}                                    # label -> (boxes, prior indices best first)
        for c in range(num_classes):
            if c == background_label_id:
                continue
            boxes = decoded[0 if share_location else c]
            kept[c] = (boxes, nms_fast(boxes, conf[i, :, c], confidence_threshold,
                                       nms_threshold, eta, top_k))
        total = sum(len(idx) for _, idx in kept.values())
        if keep_top_k > -1 and total > keep_top_k:
            ranked = [(conf[i, j, c], c, j) for c, (_, idx) in kept.items() for j in idx]
            ranked.sort(key=lambda t: -t[0])         # stable; the fork's std::sort is not
            best = ranked[:keep_top_k]
            kept = {c: (kept[c][0], [j for _, c2, j in best if c2 == c])
                    for c in sorted({c for _, c, _ in best})}
        for c, (boxes, idx) in sorted(kept.items()):
            for j in idx:
                rows.append([i, c, conf[i, j, c], *boxes[j]])
    if not rows:
        out = np.full((num, 7), -1, dtype=dtype)
        out[:, 0] = np.arange(num)
        return out[None, None]
    return np.array(rows, dtype=np.float32).astype(dtype)[None, None]


# --- MultiBoxLoss ------------------------------------------------------------------------------
# SSD's training loss (the fork's multibox_loss_layer.cpp and bbox_util.cpp): match the priors
# (or the decoded predictions) to the ground truth, pick the negatives, then
#     loss = loc_weight * sum smooth_L1(loc - encode(gt)) / normalizer
#          + sum -log softmax(conf)[label] / normalizer          (or logistic)
# over the matched priors (loc) and the matched plus the mined priors (conf). The matching and
# the mining are fixed by the forward; the gradient is that of the sums above.

FLT_MIN = float(np.finfo(np.float32).tiny)
MATCH_TYPES = ("BIPARTITE", "PER_PREDICTION")
MINING_TYPES = ("NONE", "MAX_NEGATIVE", "HARD_EXAMPLE")
LOC_LOSS_TYPES = ("L2", "SMOOTH_L1")
CONF_LOSS_TYPES = ("SOFTMAX", "LOGISTIC")
NORMALIZATIONS = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def encode_boxes(priors, variances, boxes, code_type="CORNER", encode_variance_in_target=False):
    """Targets (P, 4) float32 for ground-truth boxes (P, 4) against their priors (P, 4) and the
    priors' variances, as the fork's EncodeBBox (the inverse of decode_boxes):

        CORNER       (box - prior) / v
        CENTER_SIZE  (centre - prior centre) / prior size / v[:2],  log(size / prior size) / v[2:]
        CORNER_SIZE  (box - prior) / prior size / v
    v is 1 with encode_variance_in_target. Sizes must be positive where the fork checks them
    (prior sizes for CENTER_SIZE and CORNER_SIZE, box sizes for CENTER_SIZE): ValueError."""
    f32 = np.float32
    p, b = priors.astype(f32), boxes.astype(f32)
    v = np.ones_like(p) if encode_variance_in_target else variances.astype(f32)
    if code_type == "CORNER":
        return (b - p) / v
    if code_type not in CODE_TYPES:
        raise ValueError(f"code_type must be one of {CODE_TYPES}, not {code_type!r}")
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    if not (np.all(pw > 0) and np.all(ph > 0)):
        raise ValueError(f"a prior matched to a ground-truth box has no positive width and "
                         f"height ({code_type} divides by them)")
    if code_type == "CORNER_SIZE":
        return (b - p) / np.stack([pw, ph, pw, ph], axis=1) / v
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not (np.all(bw > 0) and np.all(bh > 0)):
        raise ValueError("a ground-truth box has no positive width and height (CENTER_SIZE "
                         "takes their logarithm)")
    pcx, pcy = (p[:, 0] + p[:, 2]) / f32(2), (p[:, 1] + p[:, 3]) / f32(2)
    bcx, bcy = (b[:, 0] + b[:, 2]) / f32(2), (b[:, 1] + b[:, 3]) / f32(2)
    return np.stack([(bcx - pcx) / pw / v[:, 0], (bcy - pcy) / ph / v[:, 1],
                     np.log(bw / pw) / v[:, 2], np.log(bh / ph) / v[:, 3]], axis=1)


def match_boxes(gt, preds, match_type="PER_PREDICTION", overlap_threshold=0.5,
                ignore_cross_boundary=False):
    """The fork's MatchBBox: (match, overlap) for each of the boxes ``preds`` (P, 4) against the
    ground truth ``gt`` (G, 4), float32. match[i] is the gt row matched to box i, -1 for none,
    -2 for a box ignored as crossing the image border (ignore_cross_boundary). overlap[i] is
    the IoU with the matched gt, else the best IoU above 1e-6 (0 if none).

    First a greedy bipartite pass: while some gt is free, the best overlapping pair of a free
    gt and an unmatched box is matched (the first in box-then-gt order among equals); boxes and
    gts without any overlap above 1e-6 are never paired. PER_PREDICTION then matches each box
    still free to its best gt with IoU >= overlap_threshold (a gt may take many boxes)."""
    f32 = np.float32
    num_pred, num_gt = len(preds), len(gt)
    match = np.full(num_pred, -1, dtype=np.int64)
    overlap = np.zeros(num_pred, dtype=f32)
    if num_gt == 0 or num_pred == 0:
        return match, overlap
    preds, gt = preds.astype(f32), gt.astype(f32)
    iou = jaccard_overlap(preds[:, None, :], box_sizes(preds)[:, None], gt[None],
                          box_sizes(gt)[None])                                      # (P, G)
    valid = iou.astype(np.float64) > 1e-6           # the fork compares in double
    if ignore_cross_boundary:
        cross = np.any((preds < 0) | (preds > 1), axis=1)
        match[cross] = -2
        valid[cross] = False
    overlap = np.where(valid, iou, f32(0)).max(axis=1)
    free_gt = np.ones(num_gt, dtype=bool)
    for _ in range(num_gt):
        cand = np.where(valid & (match[:, None] == -1) & free_gt[None, :], iou, -np.inf)
        k = int(np.argmax(cand))                    # the first of equals, box-major as the fork
        i, j = divmod(k, num_gt)
        if cand[i, j] == -np.inf:
            break
        match[i], overlap[i], free_gt[j] = j, iou[i, j], False
    if match_type == "PER_PREDICTION":
        cand = np.where(valid & (iou >= f32(overlap_threshold)), iou, -np.inf)
        best = np.argmax(cand, axis=1)
        rows = np.flatnonzero((match == -1) & (cand.max(axis=1) > -np.inf))
        match[rows], overlap[rows] = best[rows], iou[rows, best[rows]]
    elif match_type != "BIPARTITE":
        raise ValueError(f"match_type must be one of {MATCH_TYPES}, not {match_type!r}")
    return match, overlap


def apply_nms(boxes, scores, threshold, top_k):
    """The fork's ApplyNMS (the one its hard example mining calls): positions into ``boxes``
    kept, best score first. Scores sorted high to low (stable), the top_k first (-1: all); boxes
    smaller than 1e-5 are dropped; a box goes when its IoU with a kept one exceeds threshold;
    stops once top_k are kept."""
    order = list(np.argsort(-scores, kind="stable"))
    if top_k > -1:
        order = order[:top_k]
    sizes = box_sizes(boxes)
    kept = []
    while order:
        best = order.pop(0)
        if sizes[best] < 1e-5:
            continue
        kept.append(best)
        if top_k > -1 and len(kept) >= top_k:
            break
        rest = np.array(order, dtype=np.int64)
        if not len(rest):
            break
        iou = jaccard_overlap(boxes[best], sizes[best], boxes[rest], sizes[rest])
        order = [int(r) for r, o in zip(rest, iou) if not (sizes[r] < 1e-5 or o > threshold)]
    return kept


def _ground_truth(label, background_label_id, use_difficult_gt):
    """The fork's GetGroundTruth: {item: (boxes (G, 4) float32, labels (G,))} from the rows
    [item_id, label, instance, xmin, ymin, xmax, ymax, difficult]; item_id -1 rows are skipped,
    difficult ones too unless use_difficult_gt. The background label is an error."""
    gts = {}
    for row in np.asarray(label, dtype=np.float64).reshape(-1, 8):
        item = int(row[0])                                  # C++ int(): towards zero
        if item == -1:
            continue
        cls = int(row[1])
        if cls == background_label_id:
            raise ValueError(f"a ground-truth box has the background label "
                             f"{background_label_id} (row {list(row)})")
        if not use_difficult_gt and bool(row[7]):
            continue
        gts.setdefault(item, ([], []))
        gts[item][0].append(row[3:7])
        gts[item][1].append(cls)
    return {i: (np.array(b, dtype=np.float32), np.array(c, dtype=np.int64))
            for i, (b, c) in gts.items()}


def _conf_loss_per_prior(conf, labels, conf_loss_type):
    """(P,) the fork's ComputeConfLoss for one image: conf (P, C), the label of each prior."""
    rows = np.arange(len(conf))
    if conf_loss_type == "SOFTMAX":
        z = conf - conf.max(axis=1, keepdims=True)
        e = np.exp(z)
        prob = e[rows, labels] / e.sum(axis=1)
        return -np.log(np.maximum(prob, conf.dtype.type(FLT_MIN)))
    target = np.zeros_like(conf)
    target[rows, labels] = 1
    return _logistic_loss(conf, target).sum(axis=1)


def _logistic_loss(x, t):
    """Caffe's stable sigmoid cross-entropy, elementwise."""
    pos = (x >= 0).astype(x.dtype)
    return -(x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos)))


def _loc_terms(loc3, gts, matches, priors, variances, *, share_location, code_type,
               encode_variance_in_target, bp_inside, use_prior_for_matching):
    """The fork's EncodeLocPrediction over every matched prior (image, then label, then prior
    order): (pred, target, dpred_dloc, where) with where = (image, prior, loc column) of each
    row; dpred_dloc is 0 where bp_inside put the target in place of the prediction and 1 / v
    where encode_variance_in_target divides by the variances."""
    rows = [(i, j, 0 if share_location else lab, m[j])
            for i in sorted(matches) for lab in sorted(matches[i])
            for m in (matches[i][lab][0],) for j in np.flatnonzero(m > -1)]
    if not rows:
        z = np.zeros((0, 4), loc3.dtype)
        return z, z, z, np.zeros((0, 3), np.int64)
    where = np.array([r[:3] for r in rows], dtype=np.int64)
    gt_box = np.stack([gts[i][0][g] for i, _, _, g in rows])
    j = where[:, 1]
    target = encode_boxes(priors[j], variances[j], gt_box, code_type,
                          encode_variance_in_target).astype(loc3.dtype)
    pred = loc3[where[:, 0], j, where[:, 2]].copy()
    scale = np.ones_like(pred)
    if bp_inside:
        box = priors[j] if use_prior_for_matching else decode_boxes(
            priors[j], variances[j], pred, code_type, encode_variance_in_target)
        outside = (box < 0) | (box > 1)
        pred[outside], scale[outside] = target[outside], 0
    if encode_variance_in_target:
        v = variances[j].astype(loc3.dtype)
        pred, target, scale = pred / v, target / v, scale / v
    return pred, target, scale, where


def _loc_loss(diff, loc_loss_type):
    """(loss per element, d loss / d diff): smooth L1 (SSD's SmoothL1Loss, threshold 1) or
    half the square (EuclideanLoss)."""
    if loc_loss_type == "L2":
        return diff * diff / 2, diff
    a = np.abs(diff)
    small = a < 1
    return np.where(small, diff * diff / 2, a - diff.dtype.type(0.5)), \
        np.where(small, diff, np.sign(diff))


@multibox_loss_forward.impl("ref")
def _multibox_loss_forward_ref(loc, conf, prior, label, *, num_classes, share_location=True,
                               match_type="PER_PREDICTION", overlap_threshold=0.5,
                               use_prior_for_matching=True, background_label_id=0,
                               use_difficult_gt=True, mining_type="MAX_NEGATIVE",
                               neg_pos_ratio=3.0, neg_overlap=0.5, code_type="CORNER",
                               encode_variance_in_target=False, map_object_to_agnostic=False,
                               ignore_cross_boundary_bbox=False, bp_inside=False, nms=None,
                               sample_size=64, use_prior_for_nms=False,
                               loc_loss_type="SMOOTH_L1", conf_loss_type="SOFTMAX",
                               loc_weight=1.0, normalization="VALID", loc_term=True,
                               conf_term=True):
    """SSD's MultiBoxLoss on loc (N, P * L * 4; L = 1 with share_location, else num_classes),
    conf (N, P * num_classes, raw scores), prior (PriorBox's (1, 2, P * 4)) and label (the
    ground truth, rows of 8). ``nms`` is (nms_threshold, top_k) when nms_param is given.
    loc_term / conf_term: whether each part enters the loss (the layer's propagate_down).

    Returns (loss, dloc, dconf, info): the loss (a scalar of loc's dtype), its gradients with
    respect to loc and conf for this forward's matches and mined negatives, and info: the
    matches {image: {label: (match, overlap)}}, the negatives {image: priors}, num_matches."""
    for name, value, allowed in (("mining_type", mining_type, MINING_TYPES),
                                 ("loc_loss_type", loc_loss_type, LOC_LOSS_TYPES),
                                 ("conf_loss_type", conf_loss_type, CONF_LOSS_TYPES),
                                 ("normalization", normalization, NORMALIZATIONS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
    dtype, f32 = loc.dtype, np.float32
    num, num_priors = loc.shape[0], prior.shape[-1] // 4
    num_loc = 1 if share_location else num_classes
    flat = prior.reshape(-1).astype(f32)
    priors = flat[:num_priors * 4].reshape(-1, 4)
    variances = flat[num_priors * 4:num_priors * 8].reshape(-1, 4)
    loc3 = loc.reshape(num, num_priors, num_loc, 4)
    conf3 = conf.reshape(num, num_priors, num_classes)
    bg = background_label_id
    gts = {i: g for i, g in _ground_truth(label, bg, use_difficult_gt).items() if 0 <= i < num}

    # --- matching (FindMatches) ---
    matches = {}
    for i, (gt_box, gt_cls) in gts.items():
        per_label = matches[i] = {}
        if not use_prior_for_matching:
            for c in range(num_loc):
                lab = -1 if share_location else c
                if not share_location and lab == bg:
                    continue
                boxes = decode_boxes(priors, variances, loc3[i, :, c], code_type,
                                     encode_variance_in_target)
                sel = np.arange(len(gt_cls)) if lab == -1 else np.flatnonzero(gt_cls == lab)
                m, o = match_boxes(gt_box[sel], boxes, match_type, overlap_threshold,
                                   ignore_cross_boundary_bbox)
                to_row = np.append(sel, -1)        # gt rows of this label; -1 for none
                per_label[lab] = (np.where(m > -1, to_row[np.where(m > -1, m, -1)], m), o)
        else:
            m, o = match_boxes(gt_box, priors, match_type, overlap_threshold,
                               ignore_cross_boundary_bbox)
            if share_location:
                per_label[-1] = (m, o)
            else:
                for c in range(num_classes):
                    if c != bg:
                        mine = (m > -1) & (gt_cls[np.maximum(m, 0)] == c)
                        per_label[c] = (np.where(mine, m, -1), o)

    def gt_label_of(i, g):
        return bg + 1 if map_object_to_agnostic else int(gts[i][1][g])

    for i, per_label in matches.items():
        for m, _ in per_label.values():
            for g in m[m > -1]:
                if not 0 <= gt_label_of(i, g) < num_classes:
                    raise ValueError(f"a matched ground-truth box has label {gt_label_of(i, g)}, "
                                     f"outside [0, num_classes {num_classes})")
    num_matches = sum(int(np.sum(m > -1)) for i in matches for m, _ in matches[i].values())

    # --- mining (MineHardExamples) ---
    negatives = {i: np.zeros(0, np.int64) for i in range(num)}
    if mining_type != "NONE":
        loc_loss_prior = np.zeros((num, num_priors), f32)
        if mining_type == "HARD_EXAMPLE":
            pred, target, _, where = _loc_terms(
                loc3, gts, matches, priors, variances, share_location=share_location,
                code_type=code_type, encode_variance_in_target=encode_variance_in_target,
                bp_inside=bp_inside, use_prior_for_matching=use_prior_for_matching)
            per_row = _loc_loss(pred - target, loc_loss_type)[0].sum(axis=1)
            loc_loss_prior[where[:, 0], where[:, 1]] = per_row
        for i in range(num):
            labels = np.full(num_priors, bg, dtype=np.int64)
            for m, _ in (matches[i].values() if i in matches else ()):
                hit = (m > -1) & (labels == bg)     # the first label's match counts
                labels[hit] = [gt_label_of(i, g) for g in m[hit]]
            loss = _conf_loss_per_prior(conf3[i], labels, conf_loss_type).astype(f32) \
                + loc_loss_prior[i]
            if i not in matches:
                continue                            # an image without gt mines nothing
            for lab in sorted(matches[i]):
                m, o = matches[i][lab]
                if mining_type == "MAX_NEGATIVE":
                    eligible = np.flatnonzero((m == -1) & (o < f32(neg_overlap)))
                    num_pos = int(np.sum(m > -1))
                    num_sel = min(int(f32(num_pos) * f32(neg_pos_ratio)), len(eligible))
                else:
                    eligible = np.arange(num_priors)
                    num_sel = min(sample_size, len(eligible))
                if nms is not None and nms[0] > 0:
                    boxes = priors if use_prior_for_nms else decode_boxes(
                        priors, variances, loc3[i, :, 0], code_type, encode_variance_in_target)
                    kept = apply_nms(boxes[eligible], loss[eligible], nms[0], nms[1])
                    chosen = eligible[kept[:min(len(kept), num_sel)]]
                else:                               # stable: the fork's std::sort is not
                    chosen = eligible[np.argsort(-loss[eligible], kind="stable")[:num_sel]]
                picked = np.zeros(num_priors, dtype=bool)
                picked[chosen] = True
                if mining_type == "HARD_EXAMPLE":
                    dropped = (m > -1) & ~picked
                    num_matches -= int(dropped.sum())
                    m = np.where(dropped, -1, m)
                    matches[i][lab] = (m, o)
                negatives[i] = np.flatnonzero((m == -1) & picked)

    # --- localization loss (EncodeLocPrediction, then SmoothL1Loss or EuclideanLoss) ---
    dloc = np.zeros(loc3.shape, dtype)
    loc_loss = dtype.type(0)
    if num_matches >= 1:
        pred, target, scale, where = _loc_terms(
            loc3, gts, matches, priors, variances, share_location=share_location,
            code_type=code_type, encode_variance_in_target=encode_variance_in_target,
            bp_inside=bp_inside, use_prior_for_matching=use_prior_for_matching)
        per_elem, grad = _loc_loss(pred - target, loc_loss_type)
        loc_loss = per_elem.sum(dtype=dtype)
        dloc[where[:, 0], where[:, 1], where[:, 2]] = grad * scale

    # --- confidence loss (EncodeConfPrediction, then SoftmaxWithLoss or SigmoidCrossEntropy) ---
    if mining_type != "NONE":
        picks, cls = [], []                         # (image, prior) rows and their labels
        for i in range(num):
            for lab in sorted(matches.get(i, {})):
                m = matches[i][lab][0]
                for j in np.flatnonzero(m > -1):
                    picks.append((i, j))
                    cls.append(gt_label_of(i, m[j]))
            picks += [(i, j) for j in negatives[i]]
            cls += [-1] * len(negatives[i])         # -1: a negative
        picks = np.array(picks, dtype=np.int64).reshape(-1, 2)
        cls = np.array(cls, dtype=np.int64)
        rows = conf3[picks[:, 0], picks[:, 1]]
        if conf_loss_type == "SOFTMAX":
            target = np.where(cls == -1, bg, cls)
        else:
            target = np.full(rows.shape, dtype.type(bg), dtype=dtype)
            pos = np.flatnonzero(cls > -1)
            target[pos, cls[pos]] = 1
            if 0 <= bg < num_classes:
                target[cls == -1, bg] = 1
    else:
        picks = np.stack(np.meshgrid(np.arange(num), np.arange(num_priors), indexing="ij"),
                         axis=-1).reshape(-1, 2)
        rows = conf3.reshape(-1, num_classes)
        if conf_loss_type == "SOFTMAX":
            target = np.full((num, num_priors), bg, dtype=np.int64)
        else:
            target = np.full((num, num_priors, num_classes), dtype.type(bg), dtype=dtype)
        for i in sorted(matches):
            for lab in sorted(matches[i]):          # a later label overwrites, as the fork
                m = matches[i][lab][0]
                for j in np.flatnonzero(m > -1):
                    if conf_loss_type == "SOFTMAX":
                        target[i, j] = gt_label_of(i, m[j])
                    else:
                        target[i, j, gt_label_of(i, m[j])] = 1
        target = target.reshape(len(rows), -1) if conf_loss_type != "SOFTMAX" \
            else target.reshape(-1)
    dconf = np.zeros(conf3.shape, dtype)
    conf_loss = dtype.type(0)
    if len(rows):
        if conf_loss_type == "SOFTMAX":
            z = rows - rows.max(axis=1, keepdims=True)
            e = np.exp(z)
            prob = e / e.sum(axis=1, keepdims=True)
            idx = np.arange(len(rows))
            conf_loss = 0 - np.log(np.maximum(prob[idx, target], dtype.type(FLT_MIN))).sum()
            grad = prob
            grad[idx, target] -= 1
        else:
            conf_loss = _logistic_loss(rows, target).sum()
            grad = 1 / (1 + np.exp(-rows)) - target
        dconf[picks[:, 0], picks[:, 1]] = grad

    count = {"FULL": num * num_priors, "VALID": num_matches, "BATCH_SIZE": num,
             "NONE": 1}[normalization]
    normalizer = dtype.type(max(1.0, float(count)))
    loss = dtype.type(0)
    if loc_term:
        loss += dtype.type(loc_weight) * loc_loss / normalizer
    if conf_term:
        loss += conf_loss / normalizer
    dloc *= dtype.type(loc_weight) / normalizer
    dconf /= normalizer
    info = {"matches": matches, "negatives": negatives, "num_matches": num_matches}
    return dtype.type(loss), dloc.reshape(loc.shape), dconf.reshape(conf.shape), info


# --- CUDA (Normalize only: CuPy reductions, as the reference; PriorBox and DetectionOutput run
# on the host in a GPU net, as ArgMax does) ------------------------------------------------------

from minicnn import cuda  # noqa: E402


@normalize_forward.impl("cuda", available=cuda.importable)
def _normalize_forward_cuda(x, scale, *, across_spatial=True, eps=1e-10):
    cp = cuda.cupy()
    x3 = _as_ncs(cuda.contiguous(x))
    norm = cp.sqrt((x3 * x3).sum(axis=_sum_axes(across_spatial), keepdims=True)
                   + x.dtype.type(eps))
    xh = x3 * (1 / norm) if across_spatial else x3 / norm
    return (xh * scale.reshape(1, -1, 1)).reshape(x.shape), xh, norm


@normalize_backward.impl("cuda", available=cuda.importable)
def _normalize_backward_cuda(dy, xh, norm, scale, *, across_spatial=True):
    dy3 = _as_ncs(cuda.contiguous(dy))
    p = xh * dy3
    dscale = (p.sum() if scale.ndim == 0 else p.sum(axis=(0, 2))).reshape(scale.shape)
    if scale.ndim == 0:
        dot = p.sum(axis=_sum_axes(across_spatial), keepdims=True)
        dx = (dy3 - xh * dot) / norm * scale
    else:
        g = dy3 * scale.reshape(1, -1, 1)
        dot = (xh * g).sum(axis=_sum_axes(across_spatial), keepdims=True)
        dx = (g - xh * dot) / norm
    return dx.reshape(dy.shape), dscale
