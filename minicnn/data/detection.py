"""Detection data in Darknet's layout: label files, box lists and box-consistent augmentation.

A detection set is a list file of image paths (one per line) and, for each image, a label file
found by Darknet's rule (``label_path``): the folder ``images`` (or ``JPEGImages``) becomes
``labels`` and the extension ``.txt``. A label file has one box per line,

    <class> <x> <y> <w> <h>          class an integer id, x y the centre, w h the size,
                                     all relative to the image (0..1)

Box lists travel as arrays of shape (K, 5), rows (class, x, y, w, h); a batch of them is
(N, max_boxes, 5) with padding rows (-1, 0, 0, 0, 0).

``augment`` is Darknet's YOLOv1 training augmentation (load_data_region): each side of the image
moves in or out by up to ``jitter`` of the size (a random crop that also rescales and changes
the aspect ratio; outside the image is black), the crop is resized to the net's input, flipped
left-right at random, and the boxes follow (clipped to the image), in a random order.
"""

import os
import re

import numpy as np

from minicnn.data.datum import resize_image
from minicnn.data.errors import DataError, read_lines

PAD_ROW = (-1.0, 0.0, 0.0, 0.0, 0.0)


def label_path(image_path):
    """The label file of an image, by Darknet's rule: the last folder named ``images`` or
    ``JPEGImages`` becomes ``labels`` (Darknet replaces the first occurrence of those words
    anywhere in the path; without such a folder minicnn does the same), and the extension
    becomes ``.txt``."""
    parts = re.split(r"([/\\])", image_path)
    for i in range(len(parts) - 2, -1, -1):            # folders only, the last one first
        if parts[i] in ("images", "JPEGImages"):
            parts[i] = "labels"
            path = "".join(parts)
            break
    else:
        path = image_path.replace("JPEGImages", "labels", 1) \
            if "JPEGImages" in image_path else image_path.replace("images", "labels", 1)
    return os.path.splitext(path)[0] + ".txt"


def read_labels(path, classes=None):
    """The boxes of a label file as a float array (K, 5) of rows (class, x, y, w, h)."""
    lines = read_lines(path, "label file", "label file not found (Darknet's rule: images/ -> "
                                           "labels/, extension -> .txt)")
    rows = []
    for lineno, line in enumerate(lines, 1):
        words = line.split()
        if not words:
            continue
        if len(words) != 5:
            raise DataError(f"expected 'class x y w h', got {line.strip()!r}", path, lineno)
        try:
            c = int(words[0])
            box = [float(w) for w in words[1:]]
        except ValueError:
            raise DataError(f"expected an integer class and four numbers, got "
                            f"{line.strip()!r}", path, lineno) from None
        if c < 0 or (classes is not None and c >= classes):
            raise DataError(f"class {c} is out of range"
                            + (f" [0, {classes})" if classes is not None else ""), path, lineno)
        if not all(np.isfinite(box)) or box[2] < 0 or box[3] < 0:
            raise DataError(f"bad box {box}: coordinates must be finite, w and h >= 0",
                            path, lineno)
        rows.append([c, *box])
    return np.asarray(rows, np.float64).reshape(-1, 5)


def write_labels(path, boxes):
    """Write a (K, 5) box list as a Darknet label file (replacing ``path``)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for c, x, y, w, h in np.asarray(boxes, np.float64).reshape(-1, 5):
            f.write(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n")
    os.replace(tmp, path)


def pad_boxes(boxes, max_boxes, dtype=np.float32):
    """A (K, 5) box list as a (max_boxes, 5) array: extra boxes dropped, padding rows added."""
    out = np.tile(np.asarray(PAD_ROW, dtype), (max_boxes, 1))
    k = min(len(boxes), max_boxes)
    out[:k] = boxes[:k]
    return out


def correct_boxes(boxes, left, top, crop_w, crop_h, width, height, flip):
    """Boxes of an image (width x height) moved into a crop window (left, top, crop_w, crop_h)
    in pixels, then mirrored if ``flip``, clipped to [0, 1] (Darknet's correct_boxes)."""
    boxes = np.array(boxes, np.float64).reshape(-1, 5)
    c, x, y, w, h = boxes.T
    lo_x = ((x - w / 2) * width - left) / crop_w
    hi_x = ((x + w / 2) * width - left) / crop_w
    lo_y = ((y - h / 2) * height - top) / crop_h
    hi_y = ((y + h / 2) * height - top) / crop_h
    if flip:
        lo_x, hi_x = 1 - hi_x, 1 - lo_x
    lo_x, hi_x, lo_y, hi_y = (np.clip(v, 0, 1) for v in (lo_x, hi_x, lo_y, hi_y))
    return np.stack([c, (lo_x + hi_x) / 2, (lo_y + hi_y) / 2, hi_x - lo_x, hi_y - lo_y], axis=1)


def crop_image(chw, left, top, crop_w, crop_h):
    """The window (left, top, crop_w, crop_h) of a CHW image; pixels outside the image are 0."""
    c, height, width = chw.shape
    out = np.zeros((c, crop_h, crop_w), chw.dtype)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + crop_w, width), min(top + crop_h, height)
    if x1 > x0 and y1 > y0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = chw[:, y0:y1, x0:x1]
    return out


def augment(chw, boxes, rng, jitter=0.0, flip=False, out_hw=None, shuffle=True):
    """Darknet's YOLOv1 augmentation of one CHW uint8 image and its (K, 5) boxes:
    (image resized to ``out_hw``, boxes). Draws, in order: the left, right, top and bottom
    offsets (integers in [-jitter*W, jitter*W], [-jitter*H, jitter*H]), the flip, the box order.
    """
    _, height, width = chw.shape
    dw, dh = int(width * jitter), int(height * jitter)
    pleft, pright = (int(rng.integers(-dw, dw + 1)) for _ in range(2))
    ptop, pbot = (int(rng.integers(-dh, dh + 1)) for _ in range(2))
    mirror = bool(rng.integers(2)) if flip else False
    crop_w, crop_h = width - pleft - pright, height - ptop - pbot
    image = crop_image(chw, pleft, ptop, crop_w, crop_h)
    out_h, out_w = out_hw or (height, width)
    image = resize_image(image, out_h, out_w)
    if mirror:
        image = np.ascontiguousarray(image[:, :, ::-1])
    boxes = correct_boxes(boxes, pleft, ptop, crop_w, crop_h, width, height, mirror)
    if shuffle and len(boxes):
        boxes = boxes[rng.permutation(len(boxes))]
    return image, boxes
