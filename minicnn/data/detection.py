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

``darknet_v2_augment`` is Darknet's YOLOv2/v3 training loader (load_data_detection in Debian's
2018 Darknet): a jittered aspect ratio placed at a random offset on a gray canvas, an HSV
distortion, a random flip; its pieces (place_image, rgb_to_hsv, hsv_to_rgb, distort_image,
correct_boxes) follow Darknet's float32 arithmetic and quirks, and take their random numbers
from a DarknetV2Draws.
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


# --- Darknet's YOLOv2/v3 loader (load_data_detection) -------------------------------------------
#
# Debian's 2018 Darknet trains [region] and [yolo] nets with data.c's load_data_detection, not the
# YOLOv1 crop above: the image is scaled to a jittered aspect ratio that fills the net's input on
# its longer side (scale 1: the .25..2 draw is commented out in that snapshot), placed at a random
# offset on a gray (0.5) canvas, distorted in HSV, flipped at random, and the boxes follow
# (correct_boxes). Everything is float32 in [0, 1] and R, G, B, as Darknet's image.

DARKNET_MIN_BOX = 0.001          # fill_truth_detection drops boxes narrower or lower than this


class DarknetV2Draws:
    """The random numbers of one load_data_detection sample, in Darknet's terms: ``u_*`` are
    rand()/RAND_MAX in [0, 1] (float32) of the rand_uniform calls (aspect-ratio jitter of the
    width and of the height, the offsets dx and dy, the hue shift, the saturation and exposure
    scales), ``*_coin`` the rand()%2 of rand_scale (1 keeps the scale, 0 takes its inverse),
    ``flip`` the flip's rand()%2 and ``swaps`` randomize_boxes' rand()%n, one per box."""
    __slots__ = ("exp_coin", "flip", "sat_coin", "swaps", "u_dx", "u_dy", "u_exp", "u_h",
                 "u_hue", "u_sat", "u_w")

    def __init__(self, u_w, u_h, u_dx, u_dy, u_hue, u_sat, sat_coin, u_exp, exp_coin, flip,
                 swaps=()):
        f = np.float32
        self.u_w, self.u_h, self.u_dx, self.u_dy = f(u_w), f(u_h), f(u_dx), f(u_dy)
        self.u_hue, self.u_sat, self.u_exp = f(u_hue), f(u_sat), f(u_exp)
        self.sat_coin, self.exp_coin, self.flip = int(sat_coin), int(exp_coin), int(flip)
        self.swaps = [int(s) for s in swaps]

    @classmethod
    def draw(cls, rng, n_boxes, flip=True):
        """Draws from minicnn's seeded generator (not Darknet's C rand() stream), in Darknet's
        order."""
        u = [np.float32(rng.random()) for _ in range(5)]
        sat = (np.float32(rng.random()), int(rng.integers(2)))
        exp = (np.float32(rng.random()), int(rng.integers(2)))
        mirror = int(rng.integers(2)) if flip else 0
        swaps = [int(rng.integers(n_boxes)) for _ in range(n_boxes)]
        return cls(*u, *sat, *exp, mirror, swaps)


def darknet_rand_uniform(u, lo, hi):
    """Darknet's rand_uniform for the unit draw u, in its float32 arithmetic (bounds swapped when
    hi < lo)."""
    f = np.float32
    lo, hi = f(lo), f(hi)
    if hi < lo:
        lo, hi = hi, lo
    return f(f(u) * f(hi - lo)) + lo


def darknet_rand_scale(u, coin, s):
    """Darknet's rand_scale: a scale between 1 and s, or its inverse when the coin is 0."""
    scale = darknet_rand_uniform(u, 1, s)
    return scale if coin else np.float32(1.0 / float(scale))


def darknet_place_image(image, w, h, dx, dy, canvas):
    """Darknet's place_image (in place on ``canvas``): ``image`` (C, H, W) float32 scaled to w x h
    by bilinear_interpolate (source x = x / w * W, pixels past the image read as 0, so the last
    row and column blend towards black) and written with its corner at (dx, dy); what falls off
    the canvas is skipped (set_pixel)."""
    f = np.float32
    c, ih, iw = image.shape
    if w <= 0 or h <= 0:
        return canvas
    rx = (np.arange(w, dtype=f) / f(w)) * f(iw)
    ry = (np.arange(h, dtype=f) / f(h)) * f(ih)
    ix, iy = np.floor(rx).astype(np.int64), np.floor(ry).astype(np.int64)
    fx, fy = rx - ix.astype(f), ry - iy.astype(f)
    padded = np.zeros((c, ih + 2, iw + 2), f)               # 0 outside the image
    padded[:, :ih, :iw] = image

    def px(yy, xx):
        return padded[:, np.where(yy < ih, yy, ih)[:, None], np.where(xx < iw, xx, iw)[None, :]]
    ax, ay = fx[None, None, :], fy[None, :, None]
    one = f(1)
    val = ((one - ay) * (one - ax) * px(iy, ix) + ay * (one - ax) * px(iy + 1, ix)
           + (one - ay) * ax * px(iy, ix + 1) + ay * ax * px(iy + 1, ix + 1))
    _, ch, cw = canvas.shape
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + w, cw), min(dy + h, ch)
    if x1 > x0 and y1 > y0:
        canvas[:, y0:y1, x0:x1] = val[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return canvas


def darknet_rgb_to_hsv(image):
    """Darknet's rgb_to_hsv of a (3, H, W) float32 image: h in [0, 1) (a sixth per sector), s,
    v. A gray pixel (max == min > 0) gets h = 0/0 = NaN as in Darknet; its s is 0, so
    hsv_to_rgb gives it back unchanged."""
    f = np.float32
    r, g, b = image.astype(f)
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(mx == 0, f(0), delta / mx)
        h = np.where(r == mx, (g - b) / delta,
                     np.where(g == mx, f(2) + (b - r) / delta, f(4) + (r - g) / delta))
    h = np.where(h < 0, h + f(6), h)
    h = np.where(mx == 0, f(0), h / f(6))
    return np.stack([h, s, mx]).astype(f)


def darknet_hsv_to_rgb(hsv):
    """Darknet's hsv_to_rgb of a (3, H, W) float32 image. Its quirk is kept: h == 1 (a hue
    shifted to exactly 1 is not wrapped) gives sector 6, which takes the last sector's formula
    (r, g, b = v, p, q) instead of sector 0's."""
    f = np.float32
    h, s, v = hsv.astype(f)
    h = f(6) * h
    with np.errstate(invalid="ignore"):
        index = np.floor(h)
        frac = h - index
        p, q, t = v * (f(1) - s), v * (f(1) - s * frac), v * (f(1) - s * (f(1) - frac))
        index = np.where(np.isnan(index), 5, index)
    sector = [index == k for k in range(5)]
    r = np.select(sector, [v, q, p, p, t], v)
    g = np.select(sector, [t, v, v, q, p], p)
    b = np.select(sector, [p, p, t, v, v], q)
    gray = s == 0
    return np.stack([np.where(gray, v, r), np.where(gray, v, g),
                     np.where(gray, v, b)]).astype(f)


def darknet_distort_image(image, dhue, dsat, dexp):
    """Darknet's distort_image of a (3, H, W) float32 RGB image: to HSV, s *= dsat, v *= dexp,
    h += dhue wrapped once into [0, 1] (> 1 takes 1 off, < 0 adds 1), back to RGB, clipped to
    [0, 1] (constrain_image)."""
    f = np.float32
    hsv = darknet_rgb_to_hsv(image)
    hsv[1] *= f(dsat)
    hsv[2] *= f(dexp)
    h = hsv[0] + f(dhue)
    h = np.where(h > 1, h - f(1), h)
    hsv[0] = np.where(h < 0, h + f(1), h)
    return np.clip(darknet_hsv_to_rgb(hsv), f(0), f(1))


def darknet_correct_boxes(boxes, dx, dy, sx, sy, flip):
    """Darknet's correct_boxes on (K, 5) rows (class, x, y, w, h), float32: each edge times the
    scale minus the offset, mirrored if ``flip``, clipped to [0, 1], and x, y, w, h from the
    edges. A row at x = y = 0 (a class-only label, YOLO9000's) is left as it is: Darknet writes
    999999 into it, which the Region loss of a softmax tree reads as "class only", as minicnn's
    darknet_truth reads x = y = 0."""
    f = np.float32
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    out = boxes.copy()
    _, x, y, w, h = boxes.T.astype(f)
    left, right = x - w / f(2), x + w / f(2)
    top, bottom = y - h / f(2), y + h / f(2)
    left, right = left * f(sx) - f(dx), right * f(sx) - f(dx)
    top, bottom = top * f(sy) - f(dy), bottom * f(sy) - f(dy)
    if flip:
        left, right = f(1) - right, f(1) - left
    left, right, top, bottom = (np.clip(v, f(0), f(1)) for v in (left, right, top, bottom))
    moved = np.stack([(left + right) / f(2), (top + bottom) / f(2),
                      np.clip(right - left, f(0), f(1)), np.clip(bottom - top, f(0), f(1))], 1)
    real = ~((x == 0) & (y == 0))
    out[real, 1:] = moved[real]
    return out


def darknet_letterbox(image, boxes, net_hw):
    """Darknet's letterbox_image, as its validate_detector (LETTERBOX_DATA) prepares YOLOv2/v3
    images: ``image`` (3, H, W) float32 in [0, 1] scaled by resize_image so it fits ``net_hw``
    with its aspect kept (the sides compared as float, new sizes in int arithmetic), centred on a
    gray (0.5) canvas at the integer offsets embed_image gets. ``boxes`` (K, 5) rows (class, x,
    y, w, h) relative to the image come back relative to the canvas, moved by the half-offsets
    Darknet's correct_region_boxes / correct_yolo_boxes take back (as float, not the canvas's
    integer ones): a detection's IoU with a box here is the IoU Darknet computes after mapping
    the detection back onto the image. Rows of a class alone (x = y = 0) stay as given."""
    from minicnn.darknet import darknet_resize
    from minicnn.detection import letterbox_size

    f = np.float32
    height, width = net_hw
    _, h, w = image.shape
    new_w, new_h = letterbox_size(w, h, width, height)
    canvas = np.full((image.shape[0], height, width), f(0.5), f)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top:top + new_h, left:left + new_w] = darknet_resize(image, new_h, new_w)
    boxes = np.array(boxes, np.float64).reshape(-1, 5)
    real = ~((boxes[:, 1] == 0) & (boxes[:, 2] == 0))
    sx, sy = new_w / width, new_h / height
    boxes[real, 1] = boxes[real, 1] * sx + (width - new_w) / 2 / width
    boxes[real, 2] = boxes[real, 2] * sy + (height - new_h) / 2 / height
    boxes[real, 3] *= sx
    boxes[real, 4] *= sy
    return canvas, boxes


def darknet_v2_augment(image, boxes, draws, net_hw, jitter=0.2, hue=0.0, saturation=1.0,
                       exposure=1.0, max_boxes=90):
    """One sample of Darknet's load_data_detection: ``image`` (3, H, W) float32 R, G, B in
    [0, 1], ``boxes`` (K, 5) rows (class, x, y, w, h), ``draws`` a DarknetV2Draws, ``net_hw``
    the net's (height, width). Returns the (3, height, width) float32 image and the box list as
    Darknet's truth holds it: shuffled (randomize_boxes), corrected, the first ``max_boxes``
    kept, and of those the ones narrower or lower than 0.001 dropped (the others move up, so an
    image may keep fewer than max_boxes although it has more).

    Darknet's quirks kept: place_image takes nw, nh, dx, dy truncated to int while the boxes
    move by the float values; the hue wraps once; see darknet_hsv_to_rgb."""
    f = np.float32
    height, width = net_hw
    _, oh, ow = image.shape
    dw, dh = f(jitter) * f(ow), f(jitter) * f(oh)
    new_ar = (f(ow) + darknet_rand_uniform(draws.u_w, -dw, dw)) / \
        (f(oh) + darknet_rand_uniform(draws.u_h, -dh, dh))
    if new_ar < 1:
        nh = f(height)
        nw = nh * new_ar
    else:
        nw = f(width)
        nh = nw / new_ar
    dx = darknet_rand_uniform(draws.u_dx, 0, f(width) - nw)
    dy = darknet_rand_uniform(draws.u_dy, 0, f(height) - nh)
    canvas = np.full((image.shape[0], height, width), f(0.5), f)
    darknet_place_image(np.asarray(image, f), int(nw), int(nh), int(dx), int(dy), canvas)
    dhue = darknet_rand_uniform(draws.u_hue, -hue, hue)
    dsat = darknet_rand_scale(draws.u_sat, draws.sat_coin, saturation)
    dexp = darknet_rand_scale(draws.u_exp, draws.exp_coin, exposure)
    canvas = darknet_distort_image(canvas, dhue, dsat, dexp)
    if draws.flip:
        canvas = np.ascontiguousarray(canvas[:, :, ::-1])
    boxes = np.array(boxes, np.float64).reshape(-1, 5)
    for i, j in enumerate(draws.swaps[:len(boxes)]):       # randomize_boxes
        boxes[[i, j]] = boxes[[j, i]]
    class_only = ((boxes[:, 1] == 0) & (boxes[:, 2] == 0))[:max_boxes]   # as given, not moved
    boxes = darknet_correct_boxes(boxes, -dx / f(width), -dy / f(height), nw / f(width),
                                  nh / f(height), draws.flip)[:max_boxes]
    size = boxes[:, 3:5].astype(f).astype(np.float64)          # float compared in double, as C
    tiny = ((size[:, 0] < DARKNET_MIN_BOX) | (size[:, 1] < DARKNET_MIN_BOX)) & ~class_only
    return canvas, boxes[~tiny]
