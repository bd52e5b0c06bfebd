"""Using a trained net: classify images, extract features, retrieve similar images.

    net = minicnn.Net("deploy.prototxt", "weights.caffemodel", minicnn.TEST)
    for result in classify(net, ["cat.jpg", "dog.png"], labels="synset_words.txt", top_k=3):
        print(result["image"], result["predictions"])   # [(281, "n02123045 tabby", 0.61), ...]

    features, labels = extract_features(net, "pool", "train.txt")   # `path label` list file
    save_features("train.h5", features, labels)      # + train.txt: an HDF5Data layer's source
    features, labels = extract_features(train_net, "fc7", iterations=50)  # its own data layers

    indices, similarities = retrieve(features[:2], features, k=5)   # cosine similarity
    mean_average_precision(features, labels)         # every item against all the others

Images reach the net through ``ImageInput``, which is glue over ``minicnn.io``: load (RGB in
[0, 1]), resize to ``resize`` x ``resize``, centre crop to the net input's H x W (or Caffe's 10
oversampled crops, whose outputs are averaged), then ``minicnn.io.preprocess`` (RGB -> BGR,
x 255, minus the BGR mean 104/117/123 by default). This is the recipe of Caffe's classify.py
and of the models trained on ImageNet-style 256 x 256 images.
"""

import os
import sys

import numpy as np

from minicnn import io
from minicnn.cuda import to_host
from minicnn.data.db import resolve_path, root_joined
from minicnn.data.errors import DataError, need
from minicnn.data.imageset import read_list_file
from minicnn.errors import MinicnnError
from minicnn.proto import serialize

__all__ = ["ImageInput", "classify", "extract_features", "save_features", "retrieve",
           "average_precision", "mean_average_precision", "read_image_list", "read_labels",
           "run_images"]


# --- images into the net -----------------------------------------------------------------------

def _pair(value, what):
    """An int or (h, w) as a (h, w) tuple of positive ints."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) <= 0 for v in pair):
        raise MinicnnError(f"{what} must be a positive size or (height, width), not {value!r}")
    return tuple(int(v) for v in pair)


class ImageInput:
    """Turns images (paths, or H x W x C arrays in [0, 1] as ``minicnn.io.load_image`` gives)
    into a batch for the net's input blob ``input`` (default: its first Input).

    Each image is resized to ``resize`` x ``resize`` (an int or (h, w); None keeps its size),
    centre-cropped to ``crop`` (default: the input's H x W), or cut into Caffe's 10 crops with
    ``oversample``, then preprocessed by ``minicnn.io.preprocess``: ``channel_swap`` (RGB ->
    BGR), ``raw_scale``, minus the per-channel ``mean``. ``color=False`` reads images as gray
    (replicated to 3 channels when the net wants 3); a 1-channel net always gets gray images.

        inp = ImageInput(net)                  # 224 x 224 crops of 256 x 256 images
        batch = inp(["a.jpg", "b.jpg"])        # (2 * inp.crops, 3, 224, 224) float32
    """

    def __init__(self, net, mean=io.IMAGENET_MEAN_BGR, raw_scale=255.0, channel_swap=(2, 1, 0),
                 resize=256, crop=None, oversample=False, color=True, input=None):
        if not net.inputs:
            raise MinicnnError("the net has no Input layer to feed images to (a net with its "
                               "own data layers is run with iterations instead)")
        self.name = input or net.inputs[0]
        if self.name not in net.inputs:
            raise MinicnnError(f"'{self.name}' is not a net input; inputs: "
                               f"{', '.join(net.inputs)}")
        shape = net.blobs[self.name].shape
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise MinicnnError(f"input '{self.name}' has shape {shape}: images need an "
                               "(N, 1 or 3, H, W) input")
        self.channels = shape[1]
        self.crop = _pair(crop, "crop") if crop is not None else tuple(shape[2:])
        self.resize = _pair(resize, "resize") if resize else None
        if self.resize and (self.resize[0] < self.crop[0] or self.resize[1] < self.crop[1]):
            raise MinicnnError(f"cannot crop {self.crop[0]}x{self.crop[1]} from images resized "
                               f"to {self.resize[0]}x{self.resize[1]}: resize to at least the "
                               "crop size")
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(-1)
        if self.mean is not None and self.mean.size not in (1, self.channels):
            raise MinicnnError(f"mean has {self.mean.size} values but input '{self.name}' has "
                               f"{self.channels} channel(s)")
        self.raw_scale, self.oversample = float(raw_scale), bool(oversample)
        self.channel_swap = None if channel_swap is None else tuple(int(c) for c in channel_swap)
        if self.channel_swap is not None and self.channels == 3 and \
                sorted(self.channel_swap) != [0, 1, 2]:
            raise MinicnnError(f"channel_swap must be an order of 0, 1, 2, not "
                               f"{self.channel_swap}")
        self.color = bool(color) and self.channels == 3

    @property
    def crops(self):
        """Net items per image: 10 when oversampling, else 1."""
        return 10 if self.oversample else 1

    def load(self, image):
        """One image as H x W x C float32 in [0, 1] with the channels the net wants."""
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            if not os.path.isfile(image):
                raise MinicnnError(f"{os.fsdecode(image)}: image not found")
            pixels = io.load_image(image, color=self.color)
        else:
            pixels = np.asarray(image, dtype=np.float32)
            pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
            if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
                raise MinicnnError(f"an image array must be H x W or H x W x 1/3, not "
                                   f"{pixels.shape}")
            if pixels.shape[2] == 3 and not self.color:   # rgb2gray's, as load_image's files
                pixels = pixels @ np.array([[0.2125], [0.7154], [0.0721]], np.float32)
        if pixels.shape[2] != self.channels:
            pixels = np.repeat(pixels, self.channels, axis=2)    # gray into a colour net
        return pixels

    def prepare(self, image):
        """One image as the net items it becomes: (crops, C, H, W) float32."""
        pixels = self.load(image)
        if self.resize:
            pixels = io.resize_image(pixels, self.resize)
        if self.oversample:
            crops = io.oversample([pixels], self.crop)
        else:
            crops = [io.center_crop(pixels, self.crop)]
        # resize and crop are done: preprocess only transposes, swaps, scales and subtracts
        return np.stack([io.preprocess(c, crop=None, resize=None, mean=self.mean,
                                       raw_scale=self.raw_scale, channel_swap=self.channel_swap)
                         for c in crops])

    def __call__(self, images):
        """A batch (len(images) * crops, C, H, W), image by image."""
        return np.concatenate([self.prepare(image) for image in images])


# --- running images or data layers through the net ---------------------------------------------

def _check_blob(net, blob):
    if blob not in net.blobs:
        raise MinicnnError(f"no blob named '{blob}'; blobs: {', '.join(net.blobs)}")


def _last_writer(net, blob):
    """Index of the last layer that writes ``blob`` (in-place layers included), so a forward
    pass can stop there and still see the blob's final value."""
    last = None
    for i, tops in enumerate(net.top_names.values()):
        if blob in tops:
            last = i
    return last


def _progress_bar(total, progress, unit):
    """A tqdm bar on stderr: always (progress True), never (False), on a terminal (None)."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def run_images(net, image_input, images, blob, batch_size=10, progress=False, per_item=None):
    """``blob``'s value for each image, (len(images), ...) float32, averaged over the image's
    crops. ``batch_size`` counts net items (an oversampled image is 10), at least one image per
    forward pass; ``per_item`` (an array function) is applied to each crop's value before the
    average (classify's softmax)."""
    _check_blob(net, blob)
    images = list(images)
    if not images:
        raise MinicnnError("no images given")
    last = _last_writer(net, blob)
    per_batch = max(1, int(batch_size) // image_input.crops)
    input_blob = net.blobs[image_input.name]
    out = []
    bar = _progress_bar(len(images), progress, "img")
    try:
        for start in range(0, len(images), per_batch):
            chunk = images[start:start + per_batch]
            batch = image_input(chunk)
            if input_blob.shape != batch.shape:      # a new batch size reshapes the net
                input_blob.reshape(batch.shape)
                net.reshape()
            input_blob.data = batch                  # to the GPU too, for a net there
            net.forward_from_to(0, last)
            values = np.array(to_host(net.blobs[blob].data), dtype=np.float32)
            if per_item is not None:
                values = per_item(values)
            out.append(values.reshape(len(chunk), image_input.crops, *values.shape[1:])
                       .mean(axis=1))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return np.concatenate(out).astype(np.float32, copy=False)


def run_data_layers(net, blobs, iterations, progress=None):
    """Caffe's extract_features: forward the net's own data layers ``iterations`` times,
    collecting each of ``blobs`` (names) and, when the net has one, the ``label`` blob;
    returns ({blob: (N, ...) float32}, labels or None)."""
    for blob in blobs:
        _check_blob(net, blob)
    if not any(not layer.param.bottom and layer.type != "Input" for layer in net.layers):
        raise MinicnnError("the net has no data layers to read from: give images instead")
    if int(iterations) <= 0:
        raise MinicnnError(f"iterations must be positive, not {iterations}")
    has_label = "label" in net.blobs and "label" not in blobs
    last = max(_last_writer(net, b) for b in blobs + ["label"] * has_label)
    features, labels = {blob: [] for blob in blobs}, []
    bar = _progress_bar(int(iterations), progress, "batch")
    try:
        for _ in range(int(iterations)):
            net.forward_from_to(0, last)
            for blob in blobs:
                features[blob].append(np.array(to_host(net.blobs[blob].data), dtype=np.float32))
            if has_label:
                labels.append(np.array(to_host(net.blobs["label"].data), dtype=np.float32))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    features = {blob: np.concatenate(parts) for blob, parts in features.items()}
    if not has_label:
        return features, None
    labels = np.concatenate(labels)
    if labels.size == len(labels):                   # one label per item: a flat vector
        labels = labels.reshape(-1)
    return features, labels


# --- lists and labels --------------------------------------------------------------------------

def read_image_list(path, root_folder=""):
    """(image paths, labels or None) of a list file: either Caffe's ``path label`` lines (split
    at the last space, read by ``minicnn.data.imageset.read_list_file``) or one bare path per
    line. Paths are joined to ``root_folder``; a relative one is looked up in the current
    directory, then next to the list file. A missing image is an error naming file:line."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except FileNotFoundError:
        raise DataError("list file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the list file: {e}", path) from None
    if not lines:
        raise DataError("the list file names no images", path)

    def labelled(text):
        head, _, tail = text.rpartition(" ")
        return bool(head.strip()) and tail.lstrip("+-").isdigit()

    kinds = [labelled(text) for _, text in lines]
    if any(kinds) != all(kinds):         # the first line sets the kind; say where it changes
        lineno, text = next(line for line, k in zip(lines, kinds) if k != kinds[0])
        want = "'path label'" if kinds[0] else "a bare path"
        raise DataError(f"expected {want} like line {lines[0][0]}, got {text!r}", path, lineno)
    if kinds[0]:
        entries = read_list_file(path)
    else:
        entries = [(text, None, lineno) for lineno, text in lines]
    folder = os.path.dirname(os.path.abspath(path))
    paths = []
    for name, _, lineno in entries:
        full = root_joined(root_folder, name)
        try:
            paths.append(resolve_path(full, folder, what="image"))
        except DataError as e:
            raise DataError(f"image '{full}': {e.reason}", path, lineno) from None
    labels = np.array([label for _, label, _ in entries]) if kinds[0] else None
    return paths, labels


def read_labels(path):
    """Class names from a labels file (Caffe's synset_words.txt): one per line, the whole line
    (trailing blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\r\n") for line in f]
    except OSError as e:
        raise DataError(f"cannot read the labels file: {e.strerror or e}", os.fspath(path)) \
            from None
    while names and not names[-1].strip():
        names.pop()
    if not names:
        raise DataError("the labels file is empty", os.fspath(path))
    return names


# --- classify ----------------------------------------------------------------------------------

def _softmax(x):
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _is_probability(scores):
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def classify(net, images, labels=None, top_k=5, batch_size=10, blob=None, progress=False,
             **input_options):
    """The top-k classes of each image: a list of ``{"image": image, "predictions": [(class
    index, label or None, probability), ...]}``, best first.

    ``images`` are paths (one path alone is one image) or H x W x C arrays in [0, 1]; ``image``
    in a result is the path as given (for an array, its position in ``images``). ``labels`` is
    a labels file (one class name per line) or a list of names. ``blob`` is the scores (default:
    the net's first output). When its values are not probabilities (some row is negative or
    does not sum to 1), a softmax turns each crop's scores into probabilities first. With
    ``oversample=True`` the probabilities of the 10 crops are averaged (Caffe's classify.py).
    ``input_options`` go to ``ImageInput`` (mean, raw_scale, channel_swap, resize, crop, ...).
    """
    if isinstance(images, (str, bytes)) or hasattr(images, "__fspath__"):
        images = [images]
    images = list(images)
    blob = blob or net.outputs[0]
    names = read_labels(labels) if isinstance(labels, (str, bytes, os.PathLike)) else labels
    inp = ImageInput(net, **input_options)

    def probabilities(values):
        if values.ndim > 2 and int(np.prod(values.shape[2:])) > 1:
            raise MinicnnError(f"blob '{blob}' has shape {values.shape}: classify needs one "
                               "score vector per image (N, classes)")
        scores = values.reshape(len(values), -1) if values.ndim > 1 else values[:, None]
        return scores if _is_probability(scores) else _softmax(scores.astype(np.float64))

    probs = run_images(net, inp, images, blob, batch_size, progress, per_item=probabilities)
    if names is not None and len(names) != probs.shape[1]:
        raise MinicnnError(f"{len(names)} labels for {probs.shape[1]} classes in blob '{blob}'")
    k = max(1, min(int(top_k), probs.shape[1]))
    results = []
    for i, (image, row) in enumerate(zip(images, probs)):
        order = np.argsort(-row, kind="stable")[:k]
        results.append({
            "image": os.fspath(image) if isinstance(image, (str, os.PathLike)) else i,
            "predictions": [(int(c), None if names is None else names[c], float(row[c]))
                            for c in order]})
    return results


# --- features ----------------------------------------------------------------------------------

def extract_features(net, blob, images=None, batch_size=10, progress=None, iterations=None,
                     root_folder="", **input_options):
    """``blob``'s values as features (N, ...) float32, and their labels (N,) or None.

    From images: ``images`` is a list of paths or arrays, or the path of a list file (Caffe's
    ``path label`` lines, or bare paths; ``root_folder`` is prepended), fed through
    ``ImageInput(net, **input_options)``; labels come from the list file. From the net's own
    data layers (Caffe's extract_features tool): ``images=None`` and ``iterations`` batches of
    the data layers' batch size; labels are the ``label`` blob when the net has one.
    ``progress``: a tqdm bar on stderr (None: only on a terminal).
    """
    if images is not None and iterations is not None:
        raise MinicnnError("give images or iterations (to run the net's data layers), not both")
    if images is None:
        if iterations is None:
            raise MinicnnError("give images, or iterations to run the net's own data layers")
        features, labels = run_data_layers(net, [blob], iterations, progress)
        return features[blob], labels
    labels = None
    if isinstance(images, (str, bytes)) or hasattr(images, "__fspath__"):
        images, labels = read_image_list(images, root_folder)
    elif root_folder:
        images = [os.path.join(root_folder, p) if isinstance(p, (str, os.PathLike)) else p
                  for p in images]
    inp = ImageInput(net, **input_options)
    return run_images(net, inp, images, blob, batch_size, progress), labels


def save_features(path, features, labels=None):
    """Write features (and labels) by the file's extension; returns the paths written.

    ``.npy``: the features alone. ``.npz``: arrays ``features`` and ``labels`` (when given).
    ``.h5``/``.hdf5``: datasets ``data`` and ``label`` (float32, Caffe's HDF5Data names) and a
    list file ``<stem>.txt`` beside it holding the .h5's absolute path, so a net can train on
    the features at once: ``hdf5_data_param { source: "<stem>.txt" batch_size: 32 }``.
    A name ending in ``lmdb`` (``feats_lmdb``) or ``leveldb``: the database Caffe's
    extract_features writes, one Datum of float_data per item keyed by its index in 10 digits,
    with the blob's channels, height and width (1 for missing axes), and the label when given
    (a Data layer reads it back). Each file is written to a temporary name and renamed.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    features = np.asarray(features, dtype=np.float32)
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(features):
            raise MinicnnError(f"{len(labels)} labels for {len(features)} features")
    name = path.rstrip("/\\")
    if name.lower().endswith(("lmdb", "leveldb")):
        backend = "leveldb" if name.lower().endswith("leveldb") else "lmdb"
        return [save_features_db(name, features, labels, backend)]
    if ext not in (".npy", ".npz", ".h5", ".hdf5"):
        raise MinicnnError(f"{path}: the features file must end in .npy, .npz or .h5, or "
                           "the folder's name in lmdb or leveldb")
    list_path = os.path.splitext(path)[0] + ".txt"
    if ext in (".h5", ".hdf5"):
        _check_list_file_is_ours(list_path, path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    written = [path]
    try:
        if ext == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, features)
        elif ext == ".npz":
            arrays = {"features": features}
            if labels is not None:
                arrays["labels"] = labels
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        else:
            h5py = need("h5py")
            with h5py.File(tmp, "w") as f:
                f.create_dataset("data", data=features)
                if labels is not None:
                    f.create_dataset("label", data=labels.astype(np.float32))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if ext in (".h5", ".hdf5"):
        with open(list_path, "w", encoding="utf-8") as f:
            f.write(os.path.abspath(path) + "\n")  # absolute: Caffe reads it from any folder
        written.append(list_path)
    return written


def _check_list_file_is_ours(list_path, path):
    """The .h5's list file may replace only a list of HDF5 files (one save_features wrote):
    `--images train.txt --out train.h5` would otherwise overwrite the image list itself."""
    try:
        with open(list_path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return
    except OSError as e:
        raise MinicnnError(f"{list_path}: cannot read it ({e.strerror})") from None
    if not all(line.lower().endswith((".h5", ".hdf5")) for line in lines):
        raise MinicnnError(f"{path}: its list file {list_path} (which HDF5Data reads) would "
                           "replace a file that is not a list of HDF5 files (an image list?); "
                           "give the features another name")


def save_features_db(path, features, labels=None, backend="lmdb"):
    """extract_features' LMDB or LevelDB: Datums of float_data keyed by the item's index in
    10 digits."""
    from minicnn.data.datum import encode_datum
    from minicnn.data.db import db_writer, replace_db
    if features.ndim > 4:
        raise MinicnnError(f"{path}: a Datum holds at most channels x height x width; the "
                           f"features have shape {features.shape}")
    shape = (features.shape[1:] + (1, 1, 1))[:3]            # Caffe's legacy C, H, W of a blob
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with db_writer(tmp, backend, overwrite=True) as writer:
        for i, item in enumerate(features):
            label = 0 if labels is None else int(labels[i])
            datum = encode_datum(item.reshape(shape), label)
            if labels is None:
                datum.ClearField("label")
            writer.put(f"{i:010d}", serialize(datum))
    replace_db(tmp, path)
    return path


# --- retrieval ---------------------------------------------------------------------------------

def _unit_rows(features, what):
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 0 or len(x) == 0:
        raise MinicnnError(f"{what} holds no feature vectors")
    x = x.reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)         # a zero vector stays zero: similarity 0


def retrieve(query_features, database_features, k=10):
    """The ``k`` database items most similar to each query: (indices (Q, k), cosine
    similarities (Q, k)), best first; equal similarities keep database order.

    Features are (N, ...) and flattened per item; a single 1-D query vector is one query. The
    cosine similarity is the dot product of the L2-normalised vectors."""
    query = np.asarray(query_features)
    if query.ndim == 1:
        query = query[None]
    q, db = _unit_rows(query, "the query"), _unit_rows(database_features, "the database")
    if q.shape[1] != db.shape[1]:
        raise MinicnnError(f"query features have {q.shape[1]} values, the database's "
                           f"{db.shape[1]}")
    k = max(1, min(int(k), len(db)))
    similarity = q @ db.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def average_precision(relevance, k=None, num_relevant=None):
    """AP of one ranked list: ``relevance`` holds True where the item at that rank is relevant.

        AP@k = (1 / min(R, k)) * sum over relevant ranks r <= k of precision@r,

    with precision@r = (relevant items in the first r) / r and R = ``num_relevant`` (default:
    the relevant items in the whole list); without k, the whole list and 1 / R. A perfect
    ranking scores 1. Undefined (nan) when R = 0."""
    rel = np.asarray(relevance, dtype=bool).reshape(-1)
    total = int(rel.sum()) if num_relevant is None else int(num_relevant)
    if k is not None:
        rel = rel[:int(k)]
        total = min(total, int(k))
    if total <= 0:
        return float("nan")
    ranks = np.flatnonzero(rel) + 1
    precision = np.arange(1, len(ranks) + 1) / ranks
    return float(precision.sum() / total)


def mean_average_precision(features, labels, k=None):
    """Retrieval mAP of a labelled set against itself: each item in turn is the query, the
    others (itself excluded) are ranked by cosine similarity (ties: database order), an item
    is relevant when it has the query's label, and ``average_precision`` (AP@k with k) scores
    the ranking; the mean is over the queries whose label some other item shares (for the
    others AP is undefined). Builds the N x N similarity matrix."""
    x = _unit_rows(features, "the features")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(x):
        raise MinicnnError(f"{len(labels)} labels for {len(x)} feature vectors")
    similarity = x @ x.T
    aps = []
    for i in range(len(x)):
        order = np.argsort(-similarity[i], kind="stable")
        order = order[order != i]
        relevant = labels[order] == labels[i]
        if relevant.any():
            aps.append(average_precision(relevant, k))
    if not aps:
        raise MinicnnError("no label is shared by two items: mean average precision needs "
                           "at least one query with a relevant item")
    return float(np.mean(aps))
