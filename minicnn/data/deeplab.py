"""DeepLab's ImageSegData pixel work (deeplab-public-ver2): its list file, its label images, and
its joint transform of an image and its labels (DataTransformer::TransformImgAndSeg).

``transform_img_and_seg`` does the fork's steps, in its order, on both:
  1. mirror: decided first, by one draw rand(2), only when ``mirror`` is set (in TEST too);
  2. rescale by a factor picked among ``scale_factors`` by one draw rand(len) (in TEST too):
     the new size is int(h * factor) (the fork's ``int *= Dtype``), the image resized
     bilinearly and the labels by nearest neighbour, both as OpenCV's cv::resize;
  3. pad at the bottom and right to at least crop_height x crop_width: the image with its
     mean_value per channel (so 0 after the mean is subtracted), the labels with ignore_label;
  4. crop: at draws h_off = rand(H - crop_h + 1), then w_off = rand(W - crop_w + 1) in TRAIN,
     at ((H - crop_h) / 2, (W - crop_w) / 2) in TEST;
  5. (pixel - mean_value[c]) * scale, and the left-right flip of both when step 1 said so.
``rand(n)`` returns an int in [0, n): the caller's generator, or a script in tests.
"""

import re

import numpy as np

from minicnn.data.datum import resize_image
from minicnn.data.errors import DataError, read_lines

__all__ = ["read_seg_list", "resize_nearest", "transform_img_and_seg"]


def read_seg_list(path, label_type):
    """[(image name, label name or class text, line number)] of an ImageSegData list.

    Like the fork's ``iss >> imgfn >> segfn`` the first two whitespace-separated words are read
    (names cannot hold spaces; more words are ignored), and label_type NONE reads the image
    only. Blank lines are skipped (the fork reads one as an image named "" and fails)."""
    lines = read_lines(path)
    out = []
    for lineno, line in enumerate(lines, 1):
        words = line.split()
        if not words:
            continue
        if label_type == "NONE":
            out.append((words[0], "", lineno))
            continue
        if len(words) < 2:
            what = "a label image" if label_type == "PIXEL" else "a class number"
            raise DataError(f"expected 'image {what}' (label_type {label_type}), got "
                            f"{line.strip()!r}", path, lineno)
        if label_type == "IMAGE" and not re.fullmatch(r"[+-]?\d+", words[1]):
            # the fork's atoi() makes a label image's name 0, training every pixel as class 0
            raise DataError(f"label_type IMAGE (the fork's default) reads the second word as "
                            f"the image's class, and {words[1]!r} is not a whole number: set "
                            "image_data_param { label_type: PIXEL } for label images", path,
                            lineno)
        out.append((words[0], words[1], lineno))
    if not out:
        raise DataError("the list names no images", path)
    return out


def resize_nearest(hw, height, width):
    """An (H, W) array resized to (height, width) as OpenCV's INTER_NEAREST: source index
    floor(x * (1 / (width / W))), at most W - 1."""
    h, w = hw.shape
    rows = np.minimum(np.floor(np.arange(height) * (1.0 / (height / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(width) * (1.0 / (width / w))).astype(np.int64), w - 1)
    return hw[rows[:, None], cols[None, :]]


def transform_img_and_seg(image, label, rand, *, crop=(0, 0), mirror=False, scale_factors=(),
                          mean=None, scale=1.0, ignore_label=255, train=True,
                          dtype=np.float32):
    """(data (C, h, w), labels (1, h, w)) of ``dtype`` from a CHW uint8 image and its (H, W)
    uint8 labels, by the steps of the module docstring. ``crop`` is (crop_height, crop_width),
    (0, 0) for none; ``mean`` one value per channel (or None)."""
    dtype = np.dtype(dtype)
    c, h, w = image.shape
    if label.shape != (h, w):
        raise ValueError(f"labels {label.shape} for an image of {h}x{w}")
    do_mirror = bool(mirror) and rand(2) == 1
    if len(scale_factors):
        factor = scale_factors[rand(len(scale_factors))]
        if factor != 1:
            # the fork's `img_height *= scale`: an int times a Dtype, truncated
            nh = int(dtype.type(h) * dtype.type(factor))
            nw = int(dtype.type(w) * dtype.type(factor))
            if nh <= 0 or nw <= 0:
                raise DataError(f"scale factor {factor:g} makes a {h}x{w} image {nh}x{nw}")
            image, label = resize_image(image, nh, nw), resize_nearest(label, nh, nw)
            h, w = nh, nw
    mean = np.zeros(c, dtype) if mean is None else np.broadcast_to(np.asarray(mean, dtype), (c,))
    crop_h, crop_w = crop
    pixels = image.astype(np.float64)                     # the fork's convertTo(CV_64F)
    pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
    if pad_h or pad_w:
        pixels = np.concatenate([np.pad(pixels[k:k + 1], ((0, 0), (0, pad_h), (0, pad_w)),
                                        constant_values=float(mean[k])) for k in range(c)])
        label = np.pad(label, ((0, pad_h), (0, pad_w)),
                       constant_values=min(max(int(ignore_label), 0), 255))   # a uint8 Mat
        h, w = label.shape
    if crop_h and crop_w:
        if train:
            h_off = rand(h - crop_h + 1)
            w_off = rand(w - crop_w + 1)
        else:
            h_off, w_off = (h - crop_h) // 2, (w - crop_w) // 2
        pixels = pixels[:, h_off:h_off + crop_h, w_off:w_off + crop_w]
        label = label[h_off:h_off + crop_h, w_off:w_off + crop_w]
    data = (pixels.astype(dtype) - mean[:, None, None]) * dtype.type(scale)
    label = label.astype(dtype)[None]
    if do_mirror:
        data, label = data[:, :, ::-1], label[:, :, ::-1]
    return np.ascontiguousarray(data, dtype), np.ascontiguousarray(label)
