"""Semantic segmentation with a trained net: label maps, colour masks and overlays, and scores.

    net = minicnn.Net("models/deeplab/deeplab_deploy.prototxt", "deeplab.caffemodel")
    labels, scores = segment(net, "image.png")          # (H, W) class ids at the image's size
    save_png(colorize(labels), "mask.png"); save_png(overlay(rgb, labels), "overlay.png")
    result = evaluate(net, "data/segmentation_digits/test.txt")   # mIoU, per-class IoU, ...

Images reach the net at their own size (the Input blob is reshaped for each one): decoded as
BGR (or gray for a 1-channel net), then (pixel - mean) * scale, as the SegmentationData layer
does in training. The net's output (by default its first output blob) holds one score map per
class, N x C x H x W at the image's size; the label of a pixel is the argmax over C (the first
one on ties).

Scores, from the confusion matrix M (rows: the true class, columns: the predicted one) over
every pixel of every image whose true label is not ``ignore_label``:

    IoU_c = M[c, c] / (sum_k M[c, k] + sum_k M[k, c] - M[c, c])      (TP / (TP + FP + FN))
    mIoU  = mean of IoU_c over the classes with TP + FP + FN > 0 (present in the truth or
            predicted somewhere; absent classes are left out, not counted as 0 or 1)
    pixel accuracy = trace(M) / sum(M);  mean class accuracy = mean_c M[c, c] / sum_k M[c, k]

The boundary score ("trimap" mIoU, DeepLabv3+'s measure of boundary quality) is the same mIoU
over only the pixels within ``band`` pixels (chessboard distance) of a boundary between two
classes of the truth (the ignore label counts as a class for finding boundaries, never scored).
"""

import json
import os

import numpy as np

from minicnn import ops
from minicnn.data.datum import decode_image, encode_image
from minicnn.data.db import resolve_path
from minicnn.data.errors import DataError
from minicnn.data.segmentation import read_label, read_pair_list
from minicnn.errors import MinicnnError

__all__ = ["boundary_band", "colorize", "confusion_matrix", "evaluate", "overlay", "palette",
           "save_png", "scores_from_confusion", "segment"]

IGNORE = 255


# --- colours -----------------------------------------------------------------------------------

def palette(n=256):
    """PASCAL VOC's colour map: (n, 3) uint8 RGB; class 0 black, 255 (ignore) cream."""
    colours = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours[k] = r, g, b
    return colours


def colorize(labels):
    """(H, W) class ids -> (H, W, 3) uint8 RGB in VOC's colours."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MinicnnError(f"colorize needs an (H, W) label map, got shape {labels.shape}")
    return palette()[labels.astype(np.int64) % 256]


def overlay(rgb, labels, alpha=0.5):
    """The image (H, W, 3 uint8 RGB) blended with the colours of its labels; background
    (class 0) and ignored pixels are left as they are."""
    rgb, labels = np.asarray(rgb), np.asarray(labels)
    if rgb.shape[:2] != labels.shape:
        raise MinicnnError(f"the image is {rgb.shape[0]}x{rgb.shape[1]} but the labels are "
                           f"{labels.shape[0]}x{labels.shape[1]}")
    mixed = (1 - alpha) * rgb.astype(np.float32) + alpha * colorize(labels).astype(np.float32)
    keep = ((labels == 0) | (labels == IGNORE))[:, :, None]
    return np.where(keep, rgb, np.round(mixed)).astype(np.uint8)


def save_png(rgb_or_gray, path):
    """Write an (H, W, 3) RGB or (H, W) gray uint8 array as a PNG (atomically)."""
    a = np.asarray(rgb_or_gray, np.uint8)
    chw = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)[::-1]       # encode_image takes BGR
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(encode_image(chw, "png"))
    os.replace(tmp, path)
    return path


# --- scores ------------------------------------------------------------------------------------

def confusion_matrix(pred, truth, num_classes, ignore_label=IGNORE, where=None):
    """(C, C) int64 counts: M[t, p] pixels of true class t predicted as p, over the pixels whose
    truth is not ``ignore_label`` (and where ``where`` is true, if given). Truth values outside
    [0, C) other than the ignore label are an error."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise MinicnnError(f"the prediction is {pred.shape} but the truth is {truth.shape}")
    valid = truth != ignore_label
    if where is not None:
        valid &= np.asarray(where, bool)
    t, p = truth[valid].astype(np.int64), pred[valid].astype(np.int64)
    bad = (t < 0) | (t >= num_classes)
    if bad.any():
        raise MinicnnError(f"the truth holds class {int(t[bad][0])}, outside the net's "
                           f"{num_classes} classes (and not the ignore label {ignore_label})")
    if ((p < 0) | (p >= num_classes)).any():
        raise MinicnnError(f"the prediction holds a class outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2) \
        .reshape(num_classes, num_classes)


def scores_from_confusion(m):
    """{"iou": per-class IoU (None where TP + FP + FN = 0), "miou", "pixel_accuracy",
    "mean_class_accuracy", "pixels"} of a confusion matrix (see the module docstring)."""
    m = np.asarray(m, np.float64)
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    truth = m.sum(axis=1)
    iou = [None if u == 0 else float(t / u) for t, u in zip(tp, union)]
    present = [v for v in iou if v is not None]
    acc = [float(t / n) for t, n in zip(tp, truth) if n > 0]
    total = float(m.sum())
    return {"iou": iou, "miou": float(np.mean(present)) if present else None,
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "mean_class_accuracy": float(np.mean(acc)) if acc else None, "pixels": int(total)}


def boundary_band(truth, band):
    """(H, W) bool: pixels within ``band`` pixels (chessboard distance) of a pixel of another
    value of ``truth`` (a boundary between classes, or with the ignore label)."""
    truth = np.asarray(truth)
    if band < 1:
        raise MinicnnError(f"the boundary band must be at least 1 pixel, got {band}")
    h, w = truth.shape
    padded = np.pad(truth, band, mode="edge")
    near = np.zeros(truth.shape, bool)
    for dy in range(-band, band + 1):
        for dx in range(-band, band + 1):
            near |= padded[band + dy:band + dy + h, band + dx:band + dx + w] != truth
    return near


# --- running the net ---------------------------------------------------------------------------

def _input_name(net, blob=None):
    if blob is not None:
        if blob not in net.blobs:
            raise MinicnnError(f"no blob named '{blob}'; blobs: {', '.join(net.blobs)}")
        return blob
    if not net.inputs:
        raise MinicnnError("the net has no Input layer: use a deploy prototxt")
    return net.inputs[0]


def _output_name(net, blob=None):
    if blob is not None:
        if blob not in net.blobs:
            raise MinicnnError(f"no blob named '{blob}'; blobs: {', '.join(net.blobs)}")
        return blob
    return net.outputs[0]


def load_input(path, channels=3, mean=127.5, scale=0.0078125, dtype=np.float32):
    """(1, C, H, W) net input of an image file: BGR (or gray) pixels, (x - mean) * scale."""
    chw = decode_image(path, channels != 1)
    x = (chw.astype(dtype) - np.asarray(mean, dtype).reshape(-1, 1, 1)) * dtype(scale)
    return x[None], chw


def scaled_size(size, s):
    """The size of a side of ``size`` pixels scaled by s, corner-aligned: (size - 1) * s + 1
    (rounded), so 97 pixels at 0.75 / 1.25 give 73 / 121, which keep a stride-8 net's grid."""
    return max(1, int(round((size - 1) * s)) + 1)


def segment(net, image, mean=127.5, scale=0.0078125, input_blob=None, output_blob=None,
            scales=(1.0,)):
    """(labels (H, W) int64, scores (C, H, W) float32, image CHW uint8 BGR/gray) of one image
    file run through the net at its own size. Several ``scales`` (multi-scale inference, as
    DeepLab's "MS" evaluation): the image is resized by each (bilinear, corner-aligned, see
    scaled_size), the score maps resized back and averaged."""
    name, out = _input_name(net, input_blob), _output_name(net, output_blob)
    channels = net.blobs[name].shape[1] if len(net.blobs[name].shape) == 4 else 3
    x, chw = load_input(image, channels, mean, scale, net.dtype.type)
    if not scales or any(not s > 0 for s in scales):
        raise MinicnnError(f"scales must be positive numbers, got {tuple(scales)}")
    h, w = chw.shape[1:]
    total = None
    for s in scales:
        size = (scaled_size(h, s), scaled_size(w, s))
        xs = x if size == (h, w) else ops.interp_forward(x, out_hw=size)
        scores = net.forward(**{name: xs}, blobs=[out])[out]
        if scores.ndim != 4 or scores.shape[0] != 1:
            raise MinicnnError(f"the output blob '{out}' has shape {scores.shape}; a "
                               "segmentation net gives 1 x C x H x W score maps")
        if scores.shape[2:] != size:
            raise MinicnnError(f"the output blob '{out}' is {scores.shape[2]}x{scores.shape[3]} "
                               f"but the image {image} is {size[0]}x{size[1]}"
                               f"{'' if size == (h, w) else f' (at scale {s:g})'}: the net must "
                               "upsample its scores to the input's size (e.g. Interp with the "
                               "input as second bottom)")
        scores = np.array(scores, np.float32)              # a copy: the blob is reused
        if size != (h, w):
            scores = ops.interp_forward(scores, out_hw=(h, w))
        total = scores if total is None else total + scores
    scores = total[0] if len(scales) == 1 else total[0] / np.float32(len(scales))
    return np.argmax(scores, axis=0), scores, chw


def rgb_of(chw):
    """A decoded BGR (or gray) CHW uint8 image as (H, W, 3) RGB."""
    return np.repeat(chw, 3, axis=0).transpose(1, 2, 0) if chw.shape[0] == 1 \
        else chw[::-1].transpose(1, 2, 0)


def _label_path(path, labels_dir):
    """``path`` with its last folder named "labels" replaced by ``labels_dir``."""
    parts = path.replace("\\", "/").split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "labels":
            parts[i] = labels_dir
            return "/".join(parts)
    raise MinicnnError(f"--labels-dir {labels_dir}: the label path {path} has no folder named "
                       "'labels' to replace")


def read_segmentation_list(path, root_folder="", labels_dir=None):
    """[(image path, label path)] of a segmentation list, resolved (current folder, then beside
    the list), with the labels taken from ``labels_dir`` instead of "labels" if given."""
    out = []
    for image, label, lineno in read_pair_list(path):
        if labels_dir:
            label = _label_path(label, labels_dir)
        pair = []
        for name in (image, label):
            full = os.path.join(root_folder, name) if root_folder else name
            try:
                pair.append(resolve_path(full, os.path.dirname(os.path.abspath(path)),
                                         what="file"))
            except DataError as e:
                raise DataError(f"'{full}': {e.reason}", path, lineno) from None
        out.append(tuple(pair))
    return out


def evaluate(net, pairs, mean=127.5, scale=0.0078125, ignore_label=IGNORE, bands=(2,),
             input_blob=None, output_blob=None, progress=None, scales=(1.0,)):
    """Scores of the net on [(image path, label path)]: {"num_classes", "images", "confusion"
    (list of lists), "overall": scores_from_confusion, "boundary": {band: scores over the band}
    }."""
    from minicnn.deploy import _progress_bar
    pairs = list(pairs)
    if not pairs:
        raise MinicnnError("no images to evaluate")
    total, near, c = None, {}, None
    bar = _progress_bar(len(pairs), progress, "img")
    try:
        for image, label_file in pairs:
            pred, scores, _ = segment(net, image, mean, scale, input_blob, output_blob,
                                      scales)
            truth = read_label(label_file)
            if truth.shape != pred.shape:
                raise DataError(f"the labels are {truth.shape[0]}x{truth.shape[1]} but the "
                                f"image is {pred.shape[0]}x{pred.shape[1]}", label_file)
            if c is None:
                c = scores.shape[0]
                total = np.zeros((c, c), np.int64)
                near = {b: np.zeros((c, c), np.int64) for b in bands}
            try:
                total += confusion_matrix(pred, truth, c, ignore_label)
            except MinicnnError as e:
                raise MinicnnError(f"{label_file}: {e}") from None
            for b in bands:
                near[b] += confusion_matrix(pred, truth, c, ignore_label,
                                            where=boundary_band(truth, b))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"num_classes": int(c), "images": len(pairs), "scales": [float(s) for s in scales],
            "confusion": total.tolist(),
            "overall": scores_from_confusion(total),
            "boundary": {int(b): scores_from_confusion(m) for b, m in near.items()}}


def write_json(obj, path):
    """Write JSON atomically."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
    return path
