"""Using a YOLOv1 detector: decode the predictions, non-maximum suppression, drawing, and the
VOC mean average precision.

    import minicnn
    net = minicnn.Net("models/yolo/digits_deploy.prototxt", "digits.caffemodel", minicnn.TEST)
    for d in minicnn.detect(net, "street.png"):           # thresh 0.2, NMS 0.4, as `yolo test`
        print(d["label"], d["score"], d["box"])          # box: x0, y0, x1, y1 in pixels

Decoding is Darknet's get_detection_detections: predictor j of cell (row, col) has the box
centre ((x + col) / S, (y + row) / S), size (w^2, h^2) (w, h as predicted when sqrt is off),
times the image size; its score for class c is confidence * P(c), set to 0 at or below
``thresh``. NMS (do_nms_sort) is per class: in order of that class's score, each box still
scoring zeroes the class score of every later box overlapping it with IoU > ``nms``. A box is
reported once per class it still scores in. IoU is on continuous coordinates (no +1 pixel).

Average precision (``evaluate``) follows the VOC devkit: per class, detections in order of
score; one is a true positive when its best-overlapping ground truth of that class in its
image has IoU >= ``iou`` (0.5) and was not matched before, otherwise a false positive
(duplicates count as false positives). AP is computed both ways: VOC2007's 11-point
interpolation (mean over recall r = 0, 0.1, ..., 1 of the best precision at recall >= r) and
VOC2010's all-point area (precision made non-increasing from the right, summed over each change
of recall). Classes with no ground truth have no AP and are left out of the mean.
"""

import json
import os

import numpy as np

from minicnn.errors import MinicnnError
from minicnn.ops.detection import detection_layout
from minicnn.ops.softmax_tree import hierarchy_predictions, hierarchy_top_prediction

COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
           (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255)]


# --- boxes -------------------------------------------------------------------------------------

def iou_matrix(a, b):
    """IoU of every corner box of ``a`` (n, 4) with every one of ``b`` (m, 4): (n, m).
    Boxes are (x0, y0, x1, y1); empty overlaps give 0, as does an empty union."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((w < 0) | (h < 0), 0.0, w * h)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def centre_to_corners(boxes):
    """(x, y, w, h) centre boxes -> (x0, y0, x1, y1)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x, y, w, h = boxes.T
    return np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=1)


# --- decoding and NMS ----------------------------------------------------------------------------

def decode(predictions, side, num, classes, sqrt=True, width=1.0, height=1.0):
    """(boxes (S*S*B, 4) as centre (x, y, w, h) in units of width/height, class scores
    (S*S*B, C) = confidence * class probability) of one image's predictions (D,)."""
    predictions = np.asarray(predictions, np.float64).reshape(-1)
    d, conf0, box0 = detection_layout(side, num, classes)
    if predictions.size != d:
        raise MinicnnError(f"predictions of {predictions.size} values do not fit side {side}, "
                           f"num {num}, classes {classes} ({d} values)")
    cells = side * side
    probs = predictions[:conf0].reshape(cells, classes)
    conf = predictions[conf0:box0].reshape(cells, num)
    coords = predictions[box0:].reshape(cells, num, 4)
    row, col = np.divmod(np.arange(cells), side)
    power = 2 if sqrt else 1
    boxes = np.stack([(coords[..., 0] + col[:, None]) / side * width,
                      (coords[..., 1] + row[:, None]) / side * height,
                      coords[..., 2] ** power * width,
                      coords[..., 3] ** power * height], axis=-1).reshape(-1, 4)
    scores = (conf[:, :, None] * probs[:, None, :]).reshape(-1, classes)
    return boxes, scores


def nms(boxes, scores, thresh=0.2, nms_thresh=0.4):
    """Darknet's thresholding and per-class NMS. ``boxes`` (M, 4) centre boxes, ``scores``
    (M, C); returns the scores with the suppressed and sub-threshold ones set to 0."""
    scores = np.where(np.asarray(scores, np.float64) > thresh, scores, 0.0)
    corners = centre_to_corners(boxes)
    overlaps = iou_matrix(corners, corners)
    for c in np.flatnonzero(np.any(scores > 0, axis=0)):      # (YOLO9000: 9418 classes)
        order = np.argsort(-scores[:, c], kind="stable")
        for rank, i in enumerate(order):
            if scores[i, c] == 0:
                continue
            later = order[rank + 1:]
            scores[later[overlaps[i, later] > nms_thresh], c] = 0
    return scores


def detections_from(predictions, side, num, classes, sqrt=True, width=1.0, height=1.0,
                    thresh=0.2, nms_thresh=0.4, names=None, clip=True):
    """The detections of one image's predictions: a list of {"class", "label", "score",
    "box": [x0, y0, x1, y1]} in units of width/height (clipped to the image), best first."""
    boxes, scores = decode(predictions, side, num, classes, sqrt, width, height)
    return _reported(boxes, scores, width, height, thresh, nms_thresh, names, clip)


def _reported(boxes, scores, width, height, thresh, nms_thresh, names, clip=True):
    scores = nms(boxes, scores, thresh, nms_thresh)
    corners = centre_to_corners(boxes)
    if clip:
        corners = np.clip(corners, 0, [width, height, width, height])
    out = []
    for i, c in zip(*np.nonzero(scores)):
        out.append({"class": int(c), "label": names[c] if names else str(int(c)),
                    "score": float(scores[i, c]), "box": [float(v) for v in corners[i]]})
    out.sort(key=lambda d: -d["score"])
    return out


# --- YOLOv2 and YOLOv3 heads --------------------------------------------------------------------

def head_boxes(y, layer, net_width, net_height, thresh, hier_thresh=0.5):
    """One image's boxes from a Region or Yolo layer's top y (C, H, W), as Darknet's
    get_region_detections / get_yolo_detections: (centre boxes (M, 4) relative to the net's
    input, class scores (M, classes)).

    Anchor a at place (row, col) has the centre ((col + x) / W, (row + y) / H) and the size
    exp(w) * anchor width, exp(h) * anchor height, over W, H for a Region (anchors in cells)
    and over the net's input size for a Yolo (anchors in pixels). Its scores are objectness *
    class probability, each set to 0 unless above ``thresh``; a Region's with an objectness
    at or below ``thresh`` are all 0 (a Region with ``background`` has no objectness: 1), a
    Yolo reports only anchors whose objectness is above ``thresh``. Darknet's order: a Region's
    anchors by anchor then place, a Yolo's by place then anchor.

    A Region with a softmax tree (YOLO9000) scores one class per box, as get_region_detections
    does without a map: the class probabilities are made absolute along the tree
    (hierarchy_predictions), hierarchy_top_prediction walks down while the product stays above
    ``hier_thresh`` (Darknet's hier_thresh, .5 in `detector test`), and the node it stops at
    scores the objectness itself (not objectness times the class probability: Darknet's
    choice, kept), 0 unless the objectness is above ``thresh``."""
    anchors, s = layer.anchors, layer.settings
    coords, classes = s["coords"], s["classes"]
    _, h, w = y.shape
    v = np.asarray(y, np.float64).reshape(anchors, coords + 1 + classes, h * w)
    row, col = np.divmod(np.arange(h * w), w)
    if layer.type == "Region":
        p = layer.param.region_param
        sizes = np.asarray(p.anchors or [0.5] * (2 * anchors), np.float64).reshape(-1, 2)
        scale_w, scale_h = w, h
        objectness = np.ones((anchors, h * w)) if s["background"] else v[:, coords]
    else:
        p = layer.param.yolo_param
        mask = list(p.mask) or list(range(anchors))
        sizes = np.asarray(p.anchors or [0.5] * (2 * (max(mask) + 1)), np.float64)
        sizes = sizes.reshape(-1, 2)[mask]
        scale_w, scale_h = net_width, net_height
        objectness = v[:, 4]
    boxes = np.stack([(col + v[:, 0]) / w, (row + v[:, 1]) / h,
                      np.exp(v[:, 2]) * sizes[:, :1] / scale_w,
                      np.exp(v[:, 3]) * sizes[:, 1:] / scale_h], axis=-1)     # (A, HW, 4)
    tree = s.get("tree")
    if tree is not None:
        probs = np.asarray(y, np.float32).reshape(anchors, coords + 1 + classes, h * w)
        absolute = hierarchy_predictions(probs[:, coords + 1:].transpose(0, 2, 1), tree)
        scores = np.zeros((anchors, h * w, classes))
        for a, k in np.ndindex(anchors, h * w):
            top = hierarchy_top_prediction(absolute[a, k], tree, hier_thresh)
            scores[a, k, top] = v[a, coords, k] if v[a, coords, k] > thresh else 0.0
        return boxes.reshape(-1, 4), scores.reshape(-1, classes)
    scores = objectness[..., None] * v[:, coords + 1:coords + 1 + classes].transpose(0, 2, 1)
    scores = np.where((objectness[..., None] > thresh) & (scores > thresh), scores, 0.0)
    if layer.type == "Region":
        return boxes.reshape(-1, 4), scores.reshape(-1, classes)
    keep = (objectness > thresh).T.reshape(-1)
    return (boxes.transpose(1, 0, 2).reshape(-1, 4)[keep],
            scores.transpose(1, 0, 2).reshape(-1, classes)[keep])


def letterbox_size(width, height, net_width, net_height):
    """Darknet's letterbox: the image's size scaled to fit the net's input, aspect kept (the
    sides' ratios compared in float32, the new sizes in int arithmetic, as letterbox_image and
    correct_*_boxes)."""
    f = np.float32
    if f(net_width) / f(width) < f(net_height) / f(height):
        return net_width, (height * net_width) // width
    return (width * net_height) // height, net_height


def unletterbox(boxes, width, height, net_width, net_height):
    """Centre boxes relative to the letterboxed input -> relative to the image (Darknet's
    correct_region_boxes / correct_yolo_boxes)."""
    new_w, new_h = letterbox_size(width, height, net_width, net_height)
    out = np.array(boxes, np.float64)
    out[:, 0] = (out[:, 0] - (net_width - new_w) / 2 / net_width) / (new_w / net_width)
    out[:, 1] = (out[:, 1] - (net_height - new_h) / 2 / net_height) / (new_h / net_height)
    out[:, 2] *= net_width / new_w
    out[:, 3] *= net_height / new_h
    return out


def head_layers(net):
    """[(layer, blob name)] of the net's Region and Yolo layers, in net order: the activated
    top of a deploy net's, the raw bottom of a loss's (``head_output`` activates it)."""
    return [(layer, (net.bottom_names if layer.is_loss else net.top_names)[name][0])
            for name, layer in net.layer_dict.items() if layer.type in ("Region", "Yolo")]


def head_output(net, layer, blob, k):
    """Item k of a Region/Yolo head's activated output (C, H, W), on the host."""
    from minicnn import cuda, ops
    data = cuda.to_host(net.blobs[blob].data[k:k + 1])
    if layer.is_loss:
        data = ops.yolo_head_forward(data, anchors=layer.anchors, **layer.settings)
    return data[0]


def ssd_output(net):
    """(the DetectionOutput layer, its top's name) of an SSD deploy net, or None without one."""
    found = [(layer, net.top_names[name][0]) for name, layer in net.layer_dict.items()
             if layer.type == "DetectionOutput"]
    if len(found) > 1:
        raise MinicnnError(f"the net has {len(found)} DetectionOutput layers; minicnn detect "
                           "reads one")
    return found[0] if found else None


def ssd_boxes(rows, k, width, height, thresh, names=None):
    """Item k's detections from DetectionOutput's rows [image, label, score, xmin, ymin, xmax,
    ymax] (boxes relative to the input), as the fork's examples/ssd/ssd_detect.cpp reads them:
    rows whose image is -1 (the fork's filler when nothing is kept) are skipped, a score at or
    above ``thresh`` is reported, and the corners are scaled by the image's width and height
    (not clipped: ssd_detect prints them as they are, truncated to integers; here they stay
    floats). Labels count the background (label 0 in VOC SSD nets) as the net does."""
    rows = np.asarray(rows, np.float64).reshape(-1, 7)
    rows = rows[(rows[:, 0] == k) & (rows[:, 2] >= thresh)]
    out = []
    for row in rows:
        c = int(row[1])
        out.append({"class": c, "label": names[c] if names else str(c),
                    "score": float(row[2]),
                    "box": [float(v) for v in row[3:7] * [width, height, width, height]]})
    out.sort(key=lambda d: -d["score"])
    return out


def net_classes(net):
    """How many classes the net's detection layers predict (an SSD net's DetectionOutput
    counts its background class)."""
    heads = head_layers(net)
    if not heads:
        ssd = ssd_output(net)
        if ssd is not None:
            return ssd[0].param.detection_output_param.num_classes
        return detection_layer(net)[0].classes
    classes = {layer.settings["classes"] for layer, _ in heads}
    if len(classes) != 1:
        raise MinicnnError(f"the net's Region/Yolo layers predict different numbers of classes "
                           f"({sorted(classes)})")
    return classes.pop()


# --- running a net --------------------------------------------------------------------------------

def detection_layer(net):
    """(the Detection layer's detection_param, the blob holding its predictions) of a net."""
    found = [(name, layer) for name, layer in net.layer_dict.items() if layer.type == "Detection"]
    if len(found) != 1:
        raise MinicnnError(f"the net must end in a Detection layer (YOLOv1), Region or Yolo "
                           f"layers (YOLOv2/v3) or an SSD DetectionOutput layer, which tell how "
                           f"to decode the predictions; found {len(found)} Detection layers and "
                           f"no others")
    name, layer = found[0]
    blob = net.bottom_names[name][0] if layer.is_loss else net.top_names[name][0]
    return layer.param.detection_param, blob


def load_detection_input(image, height, width, channels=3, rgb=False, resize=True):
    """An image file (path) or an H x W (x 3, RGB) uint8 array as a CHW uint8 array of the net's
    size (its own size without ``resize``), BGR (or RGB with ``rgb``) or gray; returns (it,
    original width, original height)."""
    from minicnn.data.datum import decode_image, resize_image
    from minicnn.data.errors import need
    need("PIL.Image", "Pillow")
    if isinstance(image, (str, os.PathLike)):
        chw = decode_image(image, channels == 3)
    else:
        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
            raise MinicnnError(f"an image array must be H x W or H x W x 3 (RGB) uint8, got "
                               f"{a.dtype} {a.shape}")
        if a.ndim == 2:
            a = a[:, :, None].repeat(3, axis=2) if channels == 3 else a[:, :, None]
        elif channels == 1:
            a = np.round(a @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[:, :, None]
        else:
            a = a[:, :, ::-1]                                  # RGB -> BGR
        chw = np.ascontiguousarray(a.transpose(2, 0, 1))
    h0, w0 = chw.shape[1:]
    if rgb and channels == 3:
        chw = np.ascontiguousarray(chw[::-1])
    return (resize_image(chw, height, width) if resize else chw), w0, h0


def net_input(chw, height, width, scale=1 / 255, mean=None, letterbox=False,
               darknet_resize=False, dtype=np.float32):
    """One image (C, H, W uint8) as the net's (C, height, width) input: resized to the input
    size, or with ``letterbox`` to fit it with its aspect kept, centred on 0.5 (Darknet's
    letterbox_image); minus ``mean``, times ``scale``. The resize is the data layers' (OpenCV's
    bilinear on the 8-bit image, then the arithmetic), or with ``darknet_resize`` Darknet's
    resize_image on the scaled float image, as Darknet prepares its input."""
    from minicnn.darknet import darknet_resize as resize_floats
    from minicnn.data.datum import resize_image

    def scaled(a, work):                    # Darknet: pixel / 255. rounded once to float
        a = a.astype(work)
        if mean is not None:
            a -= np.asarray(mean, work).reshape(-1, 1, 1)
        a *= work(scale)
        return a.astype(dtype)
    new_w, new_h = letterbox_size(chw.shape[2], chw.shape[1], width, height) if letterbox \
        else (width, height)
    if darknet_resize:
        part = resize_floats(scaled(chw, np.float64), new_h, new_w).astype(dtype)
    else:                                    # as the DetectionData layer in TEST
        part = scaled(resize_image(chw, new_h, new_w), np.dtype(dtype).type)
    x = np.full((chw.shape[0], height, width), 0.5, dtype)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    x[:, top:top + new_h, left:left + new_w] = part
    return x


def detect(net, images, thresh=None, nms=None, scale=None, mean=None, rgb=False, names=None,
           batch_size=8, letterbox=None, darknet_resize=None, hier_thresh=0.5):
    """Detections of one image (a path or an RGB uint8 array) or of a list of them (then a list
    of lists), with the net's Detection layer (YOLOv1) or its Region/Yolo layers (YOLOv2/v3);
    boxes in the original image's pixels.

    The input is prepared as the DetectionData layer does in TEST: decoded as BGR (``rgb`` for
    nets trained on RGB, such as Darknet's), resized to the net's input size, minus ``mean``,
    times ``scale`` (1/255 by default, the yolo models' transform_param scale and Darknet's).
    With ``letterbox`` (the default for Region/Yolo nets, as Darknet's `detector test`) the
    image keeps its aspect and the rest of the input is 0.5 after scaling (Darknet's gray), and
    the boxes are mapped back. ``darknet_resize`` (the default for Region/Yolo nets, which come
    from Darknet) resizes as Darknet's resize_image does, so a converted net sees Darknet's
    input exactly (see ``net_input``). ``thresh``: 0.2 for YOLOv1 (`yolo test`), 0.5 for v2/v3
    (`detector test`); ``nms``: 0.4 for YOLOv1 (`yolo test`), 0.45 for v2/v3 (`detector
    test`). ``hier_thresh``: where a Region with a softmax tree (YOLO9000) stops going down the
    tree (see ``head_boxes``).

    An SSD net (one DetectionOutput layer, Wei Liu's fork) is run as the fork's
    examples/ssd/ssd_detect.cpp runs it: the BGR image resized to the input size (OpenCV's
    bilinear), minus ``mean`` (default 104, 117, 123, ssd_detect's mean_value), times ``scale``
    (default 1: ssd_detect does not scale; MobileNet-SSD's deploy wants scale 0.007843 and mean
    127.5), ``thresh`` 0.01 (its confidence_threshold); DetectionOutput has done the NMS (its
    own nms_param; ``nms`` is not used) and its rows become boxes (see ``ssd_boxes``).
    """
    single = isinstance(images, (str, os.PathLike)) or (
        isinstance(images, np.ndarray) and images.dtype == np.uint8)
    items = [images] if single else list(images)
    heads = head_layers(net)
    ssd = None if heads else ssd_output(net)
    if not heads and ssd is None:
        p, blob = detection_layer(net)
    letterbox = bool(heads) if letterbox is None else letterbox
    darknet_resize = bool(heads) if darknet_resize is None else darknet_resize
    thresh = (0.5 if heads else 0.01 if ssd else 0.2) if thresh is None else thresh
    nms = (0.45 if heads else 0.4) if nms is None else nms
    if ssd is not None:
        scale = 1.0 if scale is None else scale
        mean = (104.0, 117.0, 123.0) if mean is None else mean
    scale = 1 / 255 if scale is None else scale
    images_in = [n for n in net.inputs if len(net.blobs[n].shape) == 4]
    if not images_in:
        raise MinicnnError("the net has no N x C x H x W Input to feed images to (use a deploy "
                           "prototxt)")
    name = images_in[0]                       # (a loss head's box lists are N x K x 5)
    _, channels, height, width = net.blobs[name].shape
    results = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        loaded = [load_detection_input(im, height, width, channels, rgb, resize=False)
                  for im in chunk]
        x = np.stack([net_input(chw, height, width, scale, mean, letterbox, darknet_resize,
                                net.blobs[name].dtype) for chw, _, _ in loaded])
        net.forward(**{name: x})
        if ssd is not None:
            from minicnn import cuda
            rows = cuda.to_host(net.blobs[ssd[1]].data)      # the chunk's rows, copied once
            results += [ssd_boxes(rows, k, w0, h0, thresh, names)
                        for k, (_, w0, h0) in enumerate(loaded)]
            continue
        for k, (_, w0, h0) in enumerate(loaded):
            if not heads:
                pred = net.blobs[blob].data.reshape(len(chunk), -1)[k]
                results.append(detections_from(pred, p.side, p.num, p.classes, p.sqrt, w0, h0,
                                               thresh, nms, names))
                continue
            found = [head_boxes(head_output(net, layer, blob, k), layer, width, height, thresh,
                                hier_thresh) for layer, blob in heads]
            boxes = np.concatenate([b for b, _ in found])
            scores = np.concatenate([sc for _, sc in found])
            if letterbox:
                boxes = unletterbox(boxes, w0, h0, width, height)
            boxes = boxes * [w0, h0, w0, h0]
            results.append(_reported(boxes, scores, w0, h0, thresh, nms, names))
    return results[0] if single else results


# --- drawing ------------------------------------------------------------------------------------

def draw_detections(image, detections, path=None, line_width=2):
    """An RGB uint8 picture (H, W, 3) of ``image`` (a path or array) with each detection's box
    and "label score" drawn; written as PNG to ``path`` if given."""
    from minicnn.data.errors import need
    Image = need("PIL.Image", "Pillow")
    ImageDraw = need("PIL.ImageDraw", "Pillow")
    if isinstance(image, (str, os.PathLike)):
        from minicnn.data.datum import decode_image
        rgb = decode_image(image, True)[::-1].transpose(1, 2, 0)
    else:
        rgb = np.asarray(image)
        if rgb.ndim == 2:
            rgb = rgb[:, :, None].repeat(3, axis=2)
    picture = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    draw = ImageDraw.Draw(picture)
    for d in sorted(detections, key=lambda d: d["score"]):        # the best on top
        colour = COLOURS[d["class"] % len(COLOURS)]
        x0, y0, x1, y1 = d["box"]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line_width)
        text = f"{d['label']} {d['score']:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text)
        ty = y0 - (ty1 - ty0) - 3 if y0 - (ty1 - ty0) - 3 >= 0 else y0
        draw.rectangle([x0, ty, x0 + tx1 - tx0 + 3, ty + ty1 - ty0 + 3], fill=colour)
        draw.text((x0 + 1, ty), text, fill=(0, 0, 0) if sum(colour) > 380 else (255, 255, 255))
    if path is not None:
        folder = os.path.dirname(os.fspath(path))
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
            picture.save(tmp, format="PNG")
            os.replace(tmp, path)
        except (OSError, ValueError) as e:
            raise MinicnnError(f"{path}: cannot write the picture ({e})") from None
    return np.asarray(picture)


# --- evaluation -----------------------------------------------------------------------------------

def voc_ap(recall, precision, use_07_metric=False):
    """Average precision from a precision/recall curve (arrays in detection order): VOC2007's
    11-point interpolation or the all-point area (VOC2010 and later)."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0
                  for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]               # non-increasing from the right
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def match_detections(detections, truths, classes, iou=0.5):
    """Per class: (scores, true-positive flags) of all detections in score order, and the number
    of ground truths. ``detections`` and ``truths`` are per image: detections as dicts with
    "class", "score", "box"; truths as (K, 5) arrays of (class, x0, y0, x1, y1)."""
    if len(detections) != len(truths):
        raise MinicnnError(f"{len(detections)} images of detections but {len(truths)} of "
                           "ground truth")
    out = []
    for c in range(classes):
        found = [(d["score"], i, d["box"]) for i, dets in enumerate(detections) for d in dets
                 if d["class"] == c]
        found.sort(key=lambda t: -t[0])                          # stable: ties keep image order
        gt = [np.asarray(t, np.float64).reshape(-1, 5) for t in truths]
        gt = [g[g[:, 0] == c, 1:] for g in gt]
        used = [np.zeros(len(g), bool) for g in gt]
        tp = np.zeros(len(found), bool)
        for k, (_, i, box) in enumerate(found):
            if len(gt[i]):
                overlaps = iou_matrix([box], gt[i])[0]
                j = int(np.argmax(overlaps))
                if overlaps[j] >= iou and not used[i][j]:
                    tp[k] = used[i][j] = True
        out.append((np.array([f[0] for f in found]), tp, sum(len(g) for g in gt)))
    return out


def evaluate(detections, truths, classes, iou=0.5, names=None):
    """VOC evaluation: {"classes": [{"class", "label", "ground_truths", "detections",
    "ap_11point", "ap_allpoint", "recall", "precision"}], "map_11point", "map_allpoint", "iou"}.
    See ``match_detections`` for the inputs; recall and precision are the curves (lists)."""
    per_class = []
    for c, (scores, tp, n_gt) in enumerate(match_detections(detections, truths, classes, iou)):
        ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
        entry = {"class": c, "label": names[c] if names else str(c), "ground_truths": n_gt,
                 "detections": int(len(tp)), "ap_11point": None, "ap_allpoint": None,
                 "recall": [], "precision": []}
        if n_gt:
            recall = ctp / n_gt
            precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            entry.update(ap_11point=voc_ap(recall, precision, True),
                         ap_allpoint=voc_ap(recall, precision, False),
                         recall=recall.tolist(), precision=precision.tolist())
        per_class.append(entry)
    scored = [e for e in per_class if e["ap_allpoint"] is not None]
    mean = (lambda key: float(np.mean([e[key] for e in scored])) if scored else None)
    return {"iou": iou, "classes": per_class, "map_11point": mean("ap_11point"),
            "map_allpoint": mean("ap_allpoint")}


def truths_from_labels(boxes, width, height):
    """Darknet label rows (class, x, y, w, h) relative -> (class, x0, y0, x1, y1) in pixels."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    corners = centre_to_corners(boxes[:, 1:]) * [width, height, width, height]
    return np.concatenate([boxes[:, :1], corners], axis=1)


def plot_pr_curves(result, path, title="precision / recall"):
    """A PNG of each class's precision/recall curve, with the APs in the legend."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MinicnnError("the precision/recall plot needs matplotlib: pip install "
                           "matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for e in result["classes"]:
        if e["recall"]:
            ax.plot([0] + e["recall"], [1] + e["precision"], lw=1.2,
                    label=f"{e['label']}  AP {e['ap_allpoint']:.3f}")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    m = result["map_allpoint"]
    ax.set_title(f"{title}: mAP@{result['iou']:g} = {m:.3f} (all-point), "
                 f"{result['map_11point']:.3f} (11-point)" if m is not None else title,
                 fontsize=10)
    ax.legend(loc="lower left", fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_json(obj, path):
    """Write JSON atomically (beside the file, then moved into place)."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
    return path


# --- whole sets ---------------------------------------------------------------------------------

def read_detection_list(path, root_folder=""):
    """The image paths of a Darknet list file (one per line; relative paths are found from the
    current folder, then beside the list), with the line numbers."""
    from minicnn.data.db import resolve_path, root_joined
    from minicnn.data.errors import DataError
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the image list: {e}", path) from None
    if not lines:
        raise DataError("the list names no images", path)
    out = []
    for n, name in lines:
        name = root_joined(root_folder, name)
        try:
            out.append(resolve_path(name, os.path.dirname(path), what="image"))
        except DataError as e:
            raise DataError(f"image '{name}': {e.reason}", path, n) from None
    return out


def image_size(path):
    """(width, height) of an image file, read from its header."""
    from minicnn.data.errors import DataError, need
    Image = need("PIL.Image", "Pillow")
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as e:
        raise DataError(f"cannot read image ({type(e).__name__}: {e})", path) from None


def evaluate_images(net, images, classes=None, iou=0.5, thresh=0.005, nms_thresh=None,
                    names=None, batch_size=8, progress=None, **input_options):
    """Detect on every image (paths) and score against their Darknet label files; returns
    (evaluate()'s result, per-image detections). The low default threshold (0.005) keeps the
    low-scoring detections that the precision/recall curve needs (Darknet's `valid` uses
    0.001); the NMS threshold defaults as ``detect``'s (0.4 for YOLOv1, 0.45 for v2/v3)."""
    from minicnn.data.detection import label_path, read_labels
    classes = classes or net_classes(net)
    truths = []
    for path in images:
        w, h = image_size(path)
        truths.append(truths_from_labels(read_labels(label_path(path), classes), w, h))
    found = []
    bar = None
    if progress or progress is None:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(images), unit="image", disable=None if progress is None
                       else False, leave=False)
        except ImportError:
            bar = None
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        found += detect(net, chunk, thresh, nms_thresh, names=names, batch_size=batch_size,
                        **input_options)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return evaluate(found, truths, classes, iou, names), found
