"""R-CNN's window files and Caffe's WindowData crop: parse the file, cut one window out of an image.

A window file (Caffe's window_data_layer.cpp, written by R-CNN's rcnn_make_window_file.m) is a
list of whitespace-separated tokens, by convention one item a line, repeated per image:

    # 0                   '#' and the image index (0, 1, 2, ...: Caffe looks images up by it)
    /path/to/img.jpg      the image (no spaces: Caffe reads tokens)
    3                     channels \
    375                   height    > declared; Caffe reads every image in colour and uses none of
    500                   width    /  them, except that the data top takes the last block's channels
    2                     num_windows
    7 0.83 10 20 110 220  class_index overlap x1 y1 x2 y2 (inclusive pixel corners), num_windows
    0 0.02 0 0 50 50      times

A window with overlap >= fg_threshold is foreground (its class must be > 0); one with overlap <
bg_threshold is background, with label 0; one between the two thresholds is dropped.

``crop_window`` is Caffe's crop arithmetic, step for step and in the net's Dtype (float32 or
float64, which rounds differently): with context_pad or crop_mode "square" the window grows about
its centre so that, warped to crop_size, it leaves context_pad pixels of context on each side
(square first makes it a square of its longer side); the part outside the image is clipped, the
clipped region warped to its share of the crop (OpenCV's INTER_LINEAR, as resize_image computes it)
and placed at the scaled offset of the clipped part; the rest of the crop stays 0, *after* the
mean is subtracted (padding is the mean colour, not black). Mirroring flips the warped region and
takes the right side's padding offset. A mean file is indexed at the crop position plus
(mean width - crop_size) // 2 on both axes (Caffe centres it by its width only).
"""

import math

import numpy as np

from minicnn.data.datum import resize_image
from minicnn.data.errors import DataError, read_lines


class WindowFile:
    """A parsed window file: ``images`` [(path, (channels, height, width), line)] in file order,
    ``fg`` and ``bg`` int64 arrays of windows, one row (image, label, x1, y1, x2, y2, line)
    each, with ``fg_overlap``, ``bg_overlap`` (float32; 0 for background, as Caffe forces)."""

    def __init__(self, path, fg_threshold=0.5, bg_threshold=0.5):
        self.path = path
        self.images = []
        fg, bg, fg_overlap = [], [], []
        fg_threshold, bg_threshold = np.float32(fg_threshold), np.float32(bg_threshold)
        tokens = _tokens(path)
        if not tokens:
            raise DataError("the window file is empty", path)
        pos = 0

        def take(what, kind=str):
            nonlocal pos
            if pos >= len(tokens):
                last = tokens[-1][1]
                raise DataError(f"the file ends where {what} should be", path, last)
            text, line = tokens[pos]
            pos += 1
            if kind is str:
                return text, line
            try:
                return kind(text), line
            except ValueError:
                noun = "an integer" if kind is int else "a number"
                raise DataError(f"{what} must be {noun}, got {text!r}", path, line) from None

        while pos < len(tokens):
            mark, line = take("'#'")
            if mark != "#":
                raise DataError(f"expected '#' to start the block of image {len(self.images)}, "
                                f"got {mark!r}", path, line)
            index, line = take("the image index after '#'", int)
            if index != len(self.images):
                raise DataError(f"image index {index} where {len(self.images)} is expected: the "
                                "blocks must be numbered 0, 1, 2, ... in order (Caffe finds an "
                                "image by its index)", path, line)
            name, image_line = take("the image path")
            size = tuple(take(what, int)[0] for what in ("channels", "height", "width"))
            count, line = take("num_windows", int)
            if count < 0:
                raise DataError(f"num_windows is {count}", path, line)
            self.images.append((name, size, image_line))
            for _ in range(count):
                label, line = take("a window's class_index", int)
                overlap = np.float32(take("a window's overlap", float)[0])
                x1, y1, x2, y2 = (take(f"a window's {c}", int)[0] for c in ("x1", "y1", "x2", "y2"))
                if x2 < x1 or y2 < y1:
                    raise DataError(f"window ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1 "
                                    "(corners are inclusive: x1 y1 x2 y2)", path, line)
                row = (index, label, x1, y1, x2, y2, line)
                if overlap >= fg_threshold:
                    if label <= 0:
                        raise DataError(f"foreground window (overlap {overlap:g} >= fg_threshold "
                                        f"{fg_threshold:g}) has class {label}; foreground "
                                        "classes must be > 0 (0 is background)", path, line)
                    fg.append(row)
                    fg_overlap.append(overlap)
                elif overlap < bg_threshold:
                    bg.append((index, 0, *row[2:]))
        self.fg = np.asarray(fg, np.int64).reshape(-1, 7)
        self.bg = np.asarray(bg, np.int64).reshape(-1, 7)
        self.fg_overlap = np.asarray(fg_overlap, np.float32)
        self.bg_overlap = np.zeros(len(bg), np.float32)

    @property
    def channels(self):
        """The data top's channels, as Caffe takes them: the last image block's."""
        return self.images[-1][1][0]


def _tokens(path):
    """[(token, line number)] of a text file."""
    lines = read_lines(path, "window file")
    return [(tok, n) for n, line in enumerate(lines, 1) for tok in line.split()]


def _round(v):
    """C's round(): halves away from zero (NumPy's round goes to even)."""
    a = abs(float(v))
    r = math.floor(a)
    r += a - r >= 0.5                     # a - floor(a) is exact in binary floating point
    return int(math.copysign(r, v))


def window_geometry(window, image_hw, crop_size, context_pad=0, square=False, mirror=False,
                    dtype=np.float32):
    """Where Caffe puts a window in the crop: ((x1, y1, x2, y2) the clipped source region,
    inclusive; (out_h, out_w) the size it is warped to; (pad_h, pad_w) its offset in the
    crop). ``window`` is (x1, y1, x2, y2); the arithmetic runs in ``dtype`` as Caffe's Dtype.
    Raises ValueError when the region misses the image or warps to nothing."""
    T = np.dtype(dtype).type
    x1, y1, x2, y2 = (int(v) for v in window)
    rows, cols = image_hw
    out_h = out_w = crop_size
    pad_h = pad_w = 0
    if context_pad > 0 or square:
        context_scale = T(crop_size) / T(crop_size - 2 * context_pad)
        half_height = T(y2 - y1 + 1) / T(2)
        half_width = T(x2 - x1 + 1) / T(2)
        center_x = T(x1) + half_width
        center_y = T(y1) + half_height
        if square:
            if half_height > half_width:
                half_width = half_height
            else:
                half_height = half_width
        x1 = _round(center_x - half_width * context_scale)
        x2 = _round(center_x + half_width * context_scale)
        y1 = _round(center_y - half_height * context_scale)
        y2 = _round(center_y + half_height * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        if x2 < x1 or y2 < y1:
            raise ValueError(f"the context-padded region misses the {rows} x {cols} image")
        scale_x = T(crop_size) / T(unclipped_w)
        scale_y = T(crop_size) / T(unclipped_h)
        out_w = _round(T(x2 - x1 + 1) * scale_x)
        out_h = _round(T(y2 - y1 + 1) * scale_y)
        pad_x1, pad_x2 = _round(T(pad_x1) * scale_x), _round(T(pad_x2) * scale_x)
        pad_y1 = _round(T(pad_y1) * scale_y)
        pad_h = pad_y1
        pad_w = pad_x2 if mirror else pad_x1          # the padding is mirrored too
        out_h = min(out_h, crop_size - pad_h)         # rounding may overflow the crop
        out_w = min(out_w, crop_size - pad_w)
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"the part of the region inside the {rows} x {cols} image warps to "
                             f"{max(out_h, 0)} x {max(out_w, 0)} pixels of the crop")
    elif x1 < 0 or y1 < 0 or x2 >= cols or y2 >= rows:
        raise ValueError(f"the window is not inside the {rows} x {cols} image (without "
                         "context_pad or crop_mode square Caffe does not clip it)")
    return (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w)


def crop_window(image, window, crop_size, context_pad=0, square=False, mirror=False, mean=None,
                scale=1.0, dtype=np.float32):
    """One WindowData sample: the (C, crop_size, crop_size) crop of ``window`` (x1, y1, x2, y2)
    from a CHW uint8 ``image``, (pixel - mean) * scale where the warped region lies and 0
    elsewhere. ``mean``: None, a per-channel vector, or a CHW mean image (indexed as Caffe does,
    see the module docstring)."""
    T = np.dtype(dtype).type
    (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w) = window_geometry(
        window, image.shape[1:], crop_size, context_pad, square, mirror, dtype)
    warped = resize_image(image[:, y1:y2 + 1, x1:x2 + 1], out_h, out_w)
    if mirror:
        warped = warped[:, :, ::-1]
    region = (slice(None), slice(pad_h, pad_h + out_h), slice(pad_w, pad_w + out_w))
    pixels = warped.astype(dtype)
    if mean is not None:
        mean = np.asarray(mean, dtype)
        if mean.ndim == 3:
            off = (mean.shape[2] - crop_size) // 2
            pixels -= mean[:, off:off + crop_size, off:off + crop_size][region]
        else:
            pixels -= mean.reshape(-1, 1, 1)
    out = np.zeros((image.shape[0], crop_size, crop_size), dtype)
    out[region] = pixels * T(scale)
    return out
