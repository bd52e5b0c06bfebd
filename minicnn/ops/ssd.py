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
    for k in range(len(candidates)):
        if np.all(iou[k, kept] <= threshold):
            kept.append(k)
            if eta < 1 and threshold > 0.5:
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
