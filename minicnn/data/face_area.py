"""face-area: real faces pasted at known sizes on real backgrounds, labelled with the exact
fraction of the image that faces cover (Yahoo JAPAN's case 1: "facial area = 23%").

    prepare_face_area("data/face_area")          # `minicnn data face-area`

The faces are the 100 face crops of scikit-image's ``lfw_subset`` (Labeled Faces in the Wild,
25 x 25 gray), split 70 / 10 / 20 between train / val / test so that test faces were never seen
in training (the split of ``minicnn.data.sos``). Each face is pasted in an oval (the face
region), tinted a skin tone, mirrored at random, at a size drawn so that the faces of an image
cover a total fraction drawn uniformly from [0.03, 0.55]; images have 0 (10%), 1 (50%), 2 (25%)
or 3 (15%) faces, placed whole and apart. Distractors make the task about faces rather than
about ovals: 0 to 2 of the 100 non-face patches of ``lfw_subset`` (in the same oval and tint)
and the coins of ``minicnn.data.sos``. Backgrounds are those of ``minicnn.data.sos``
(texture photographs between two colours, the Hubble deep field, smooth noise; disjoint crops
per split).

The label is exact: the number of face pixels (alpha >= 0.5 as pasted) divided by the image's
pixels; the mask PNG holds 255 on them.

Layout under ``out_dir``:

    images/{train,val,test}/000000.png   RGB PNGs, size x size
    masks/{train,val,test}/000000.png    255 on face pixels
    {train,val,test}.txt                 `images/<split>/000000.png 0.234567` lines (the ratio)
    {train,val,test}.h5                  HDF5Data input: ``data`` float32 (N, 3, size, size),
                                         BGR, 0..255 minus the ImageNet mean (104, 117, 123):
                                         the preprocessing of Caffe's ImageNet models, which
                                         HDF5Data cannot apply itself; ``label`` float32 (N, 1)
    {train,val,test}_h5.txt              the HDF5Data source: the .h5 file, relative to it

Seeded per split like ``minicnn.data.sos``; outputs are replaced atomically.
"""

import os

import numpy as np

from minicnn.data.db import remove_db, replace_db
from minicnn.data.errors import DataError, need
from minicnn.data.sos import (
    SKIN,
    SPLITS,
    background,
    coins,
    free_spot,
    lfw,
    oval,
    paste,
    resize,
    write_png,
)

FACE_SEED = 2300                 # "facial area = 23%"
MEAN_BGR = (104.0, 117.0, 123.0)
FACE_FILL = 0.92                 # the oval's width relative to the crop's (faces are narrower)
RATIO_RANGE = (0.03, 0.55)


def _oval_patch(rng, gray, side):
    """(rgb, alpha) of a 25 x 25 gray crop in its oval, tinted, ``side`` pixels tall."""
    side = max(6, int(round(side)))
    rgb = resize(gray[:, :, None] * SKIN[int(rng.integers(len(SKIN)))], side, side)
    alpha = np.clip(resize(oval(*gray.shape, fill=FACE_FILL), side, side), 0, 1)
    if rng.integers(2):
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    return np.clip(rgb, 0, 1), alpha


def _side_for(fraction, size):
    """The side of a square face crop whose oval covers about ``fraction`` of the image."""
    return size * np.sqrt(fraction / (np.pi / 4 * FACE_FILL))


def make_image(rng, sources, split, size=64):
    """One image: (uint8 RGB (size, size, 3), uint8 face mask (255 on faces), exact ratio)."""
    n = int(rng.choice(4, p=[0.10, 0.50, 0.25, 0.15]))
    for attempt in range(30):
        image = background(rng, sources, split, size)
        mask = np.zeros((size, size), bool)
        boxes = []
        total = rng.uniform(*RATIO_RANGE) * 0.95 ** attempt
        shares = rng.dirichlet(np.full(n, 2.0)) if n else []
        faces = sources["faces"][split]
        ok = True
        for share in shares:
            gray = faces[int(rng.integers(len(faces)))]
            rgb, alpha = _oval_patch(rng, gray, _side_for(total * share, size))
            spot = free_spot(rng, alpha.shape, size, boxes, gap=2)
            if spot is None:
                ok = False
                break
            x, y = spot
            h, w = alpha.shape
            paste(image, rgb, alpha, x, y, rng)
            mask[y:y + h, x:x + w] |= alpha >= 0.5
            boxes.append((x, y, x + w, y + h))
        if not ok:
            continue
        for _ in range(int(rng.integers(3))):              # distractors: not faces
            side = rng.uniform(0.15, 0.4) * size
            if rng.integers(2):
                others = sources["non_faces"]
                rgb, alpha = _oval_patch(rng, others[int(rng.integers(len(others)))], side)
            else:
                pieces = sources["coins"][split]
                gray, a = pieces[int(rng.integers(len(pieces)))]
                scale = side / max(a.shape)
                h, w = max(4, int(round(a.shape[0] * scale))), max(4, int(round(a.shape[1] *
                                                                              scale)))
                alpha = np.clip(resize(a, h, w), 0, 1)
                rgb = np.clip(resize(gray, h, w)[:, :, None] * rng.uniform(0.6, 1.0, 3), 0, 1)
            spot = free_spot(rng, alpha.shape, size, boxes, gap=2)
            if spot is None:
                continue
            x, y = spot
            paste(image, rgb, alpha, x, y, rng)
            boxes.append((x, y, x + alpha.shape[1], y + alpha.shape[0]))
        image = image + rng.normal(0, 0.02, image.shape).astype(np.float32)
        pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
        return pixels, mask.astype(np.uint8) * 255, float(mask.sum()) / (size * size)
    raise DataError(f"could not place {n} faces in a {size}x{size} image")


def to_net_input(pixels):
    """uint8 RGB images (N, H, W, 3) as the nets' input: float32 (N, 3, H, W), BGR, 0..255
    minus the ImageNet mean."""
    bgr = np.asarray(pixels, np.float32)[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(bgr - np.asarray(MEAN_BGR, np.float32)[None, :, None, None])


def write_split(out_dir, split, count, sources, seed, size, verbose=True):
    h5py = need("h5py")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    image_dir = os.path.join(out_dir, "images", split)
    mask_dir = os.path.join(out_dir, "masks", split)
    list_path = os.path.join(out_dir, f"{split}.txt")
    h5_path = os.path.join(out_dir, f"{split}.h5")
    h5_list = os.path.join(out_dir, f"{split}_h5.txt")
    tag = f".tmp-{os.getpid()}"
    temps = [image_dir + tag, mask_dir + tag, list_path + tag, h5_path + tag, h5_list + tag]
    for folder in temps[:2]:
        remove_db(folder)
        os.makedirs(folder)
    pixels_all = np.zeros((count, size, size, 3), np.uint8)
    ratios = np.zeros((count, 1), np.float32)
    try:
        with open(list_path + tag, "w") as listing:
            for i in range(count):
                pixels, mask, ratio = make_image(rng, sources, split, size)
                name = f"{i:06d}.png"
                write_png(os.path.join(image_dir + tag, name), pixels)
                write_png(os.path.join(mask_dir + tag, name), mask)
                listing.write(f"images/{split}/{name} {ratio:.6f}\n")
                pixels_all[i], ratios[i] = pixels, ratio
        with h5py.File(h5_path + tag, "w") as f:
            f.create_dataset("data", data=to_net_input(pixels_all))
            f.create_dataset("label", data=ratios)
        with open(h5_list + tag, "w") as f:
            f.write(f"{split}.h5\n")
        replace_db(image_dir + tag, image_dir)
        replace_db(mask_dir + tag, mask_dir)
        for path in (list_path, h5_path, h5_list):
            os.replace(path + tag, path)
    except BaseException:
        for path in temps:
            remove_db(path)
        raise
    if verbose:
        print(f"wrote {h5_path} and {list_path}: {count} images (mean face area "
              f"{100 * float(ratios.mean()) if count else 0:.2f}%)")
    return h5_list


def prepare_face_area(out_dir="data/face_area", train=4000, val=400, test=1000, size=64,
                      seed=FACE_SEED, verbose=True):
    """Write the three splits under ``out_dir``; returns {split: HDF5 list file}."""
    counts = {"train": train, "val": val, "test": test}
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"the number of {name} images must be a non-negative integer, "
                             f"not {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"the image size must be an integer of at least 32, not {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, not {seed!r}")
    sources = load_face_sources()
    os.makedirs(out_dir, exist_ok=True)
    return {split: write_split(out_dir, split, counts[split], sources, seed, size, verbose)
            for split in SPLITS}


def load_face_sources():
    """Faces, non-faces, coins and backgrounds (no MNIST: digits are not used here)."""
    from minicnn.data import sos
    data = need("skimage.data", "scikit-image")
    faces, non_faces = lfw()                    # the SOS split: the same faces in each split
    return {"faces": faces, "non_faces": non_faces, "coins": coins(),
            "textures": {n: np.asarray(getattr(data, n)(), np.float32) / 255
                         for n in sos.TEXTURES},
            "hubble": np.asarray(data.hubble_deep_field(), np.float32) / 255}


__all__ = ["prepare_face_area", "make_image", "to_net_input", "load_face_sources"]
