"""Segmentation data: lists of image / label-image pairs, label images, and augmentation that
moves the image and its labels together.

A segmentation list has one pair per line, ``image_path label_path``, split at the last space
(so the image path may contain spaces). A label image holds one class id per pixel: an 8-bit
gray PNG, or a palette PNG whose indices are the ids (PASCAL VOC's SegmentationClass files);
255 usually marks pixels to ignore.

``augment_pair`` is the DeepLab recipe, each step applied to both:
  1. rescale by a factor drawn uniformly from [scale_min, scale_max] (the image bilinearly, the
     labels by nearest neighbour, so no new label values appear);
  2. mean subtraction and scale of the image (minicnn.data.transform.transform_sample);
  3. pad to at least crop x crop: the image with 0 (the mean, after subtraction), the labels
     with ``ignore_label``; then crop crop x crop at a random place (TRAIN) or the centre (TEST);
  4. flip left-right with probability 1/2 (``mirror``).
Draws, in order, from the batch's generator: the scale, the crop offsets, the flip.
"""

import os

import numpy as np

from minicnn.data.datum import decode_image, resize_image
from minicnn.data.errors import DataError, need, read_lines
from minicnn.data.transform import transform_sample

__all__ = ["augment_pair", "crop_pair", "read_label", "read_pair_list", "rescale_pair"]


def read_pair_list(path):
    """[(image path, label path, line number)] of a segmentation list; blank lines skipped."""
    lines = read_lines(path)
    out = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        image, _, label = text.rpartition(" ")
        if not image.strip() or not label:
            raise DataError(f"expected 'image_path label_path', got {text!r}", path, lineno)
        out.append((image.rstrip(), label, lineno))
    if not out:
        raise DataError("the list names no images", path)
    return out


def read_label(path):
    """An (H, W) uint8 array of class ids from an 8-bit gray or palette image file."""
    Image = need("PIL.Image", "Pillow")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise DataError(f"a label image must hold one class id per pixel (8-bit gray "
                                f"or palette), not mode {img.mode}", path)
            return np.array(img, np.uint8)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"cannot decode the label image: {e}", path) from None


def read_pair(image_path, label_path, is_color=True):
    """(image CHW uint8, labels HW uint8) of one pair, which must have one size."""
    image = decode_image(image_path, is_color)
    label = read_label(label_path)
    if image.shape[1:] != label.shape:
        raise DataError(f"the labels {os.path.basename(label_path)} are "
                        f"{label.shape[0]}x{label.shape[1]} but the image is "
                        f"{image.shape[1]}x{image.shape[2]}", image_path)
    return image, label


def _resize_label(label, height, width):
    Image = need("PIL.Image", "Pillow")
    img = Image.fromarray(np.ascontiguousarray(label, np.uint8))
    return np.asarray(img.resize((int(width), int(height)), Image.NEAREST), np.uint8)


def rescale_pair(image, label, factor):
    """Both resized by ``factor`` (rounded sizes, at least 1): bilinear and nearest."""
    h, w = label.shape
    nh, nw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    if (nh, nw) == (h, w):
        return image, label
    return resize_image(image, nh, nw), _resize_label(label, nh, nw)


def crop_pair(image, label, crop, offset=None, ignore_label=255):
    """Pad (image with 0, labels with ``ignore_label``, at the bottom and right) to at least
    crop x crop, then cut crop x crop at ``offset`` (top, left), or the centre if None.
    ``image`` is a float CHW array, ``label`` an HW array; returns (image, label as float)."""
    c, h, w = image.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_label)
    h, w = label.shape
    top, left = ((h - crop) // 2, (w - crop) // 2) if offset is None else offset
    if not (0 <= top <= h - crop and 0 <= left <= w - crop):
        raise ValueError(f"crop offset ({top}, {left}) does not fit a {h}x{w} image")
    return (image[:, top:top + crop, left:left + crop],
            label[top:top + crop, left:left + crop])


def augment_pair(image, label, rng=None, *, crop=0, mirror=False, scale_range=(1.0, 1.0),
                 mean=None, scale=1.0, ignore_label=255, dtype=np.float32):
    """(image CHW float, labels 1 x H x W float) after the steps of the module docstring.
    ``rng`` None is the test-time path: no rescale, a centred crop, no flip."""
    if rng is not None and scale_range != (1.0, 1.0):
        image, label = rescale_pair(image, label, float(rng.uniform(*scale_range)))
    data = transform_sample(image, mean=mean, scale=scale, dtype=dtype)
    if crop:
        offset = None
        if rng is not None:
            h, w = max(label.shape[0], crop), max(label.shape[1], crop)
            offset = (int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1)))
        data, label = crop_pair(data, label, crop, offset, ignore_label)
    if rng is not None and mirror and rng.integers(2):
        data, label = data[:, :, ::-1], label[:, ::-1]
    return np.ascontiguousarray(data), np.ascontiguousarray(label[None], dtype=dtype)
