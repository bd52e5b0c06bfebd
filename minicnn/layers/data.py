"""Layers that bring data into a net: Input (arrays you set), DummyData (filler-made blobs),
MemoryData (arrays given with set_input_arrays), the layers that read a source in a
background thread: Data (LMDB of Datum records), ImageData (list file of images), HDF5Data and
WindowData (R-CNN's window file), and HDF5Output, which writes its bottoms to a file.

The reading layers are deterministic: batch b depends only on the source, the layer's seed
(drawn once from minicnn's global generator at setup) and b, so ``data_state()`` (seed and
batches served) and ``restore_data_state(state)`` resume a run exactly. The file handling and
pixel work are in ``minicnn.data``; these classes read parameters and fill tops.
"""

import os
import warnings

import numpy as np

from minicnn.data.datum import decode_image, decode_record, read_image
from minicnn.data.buckets import SizeBuckets, image_size
from minicnn.data.db import open_db, resolve_path, root_joined
from minicnn.data.errors import DataError, need
from minicnn.data.imageset import grouped_by_label, read_list_file
from minicnn.data.prefetch import Prefetcher
from minicnn.data.transform import (
    ALL_TRANSFORM_FIELDS,
    DEEPLAB_SEG_ONLY,
    SSD_ANNOTATED_ONLY,
    SSD_TRANSFORMER,
    DataTransformer,
    merged_transform_param,
    warn_unread_transform,
)
from minicnn.data.windows import WindowFile, crop_window
from minicnn.errors import LayerError
from minicnn.fillers import fill
from minicnn.layer import Layer, register
from minicnn.proto.caffe_pb2 import FillerParameter


@register("Input")
class InputLayer(Layer):
    """Caffe `Input`: tops you fill yourself (``net.blobs["data"].data[...] = x`` or
    ``net.forward(data=x)``). input_param gives one shape for all tops or one per top."""
    param_field = "input_param"
    exact_num_bottom = 0
    min_num_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise LayerError(f"input_param has {len(shapes)} shapes for {len(top)} tops: give "
                             "none, one, or one per top")
        for i, blob in enumerate(top):
            if shapes:
                blob.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        pass                              # the shapes are whatever the user sets

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Caffe `DummyData`: tops filled by data_filler (constant 0 by default). Constant fillers
    are applied once; random ones every forward pass, as in Caffe."""
    param_field = "dummy_data_param"
    exact_num_bottom = 0
    min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        legacy = [len(p.num), len(p.channels), len(p.height), len(p.width)]
        if p.shape and any(legacy):
            raise LayerError("give dummy_data_param shapes either as shape or as num/channels/"
                             "height/width, not both")
        if p.shape:
            if len(p.shape) not in (1, n):
                raise LayerError(f"{len(p.shape)} shapes for {n} tops: give one or one per top")
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        else:
            if any(k not in (1, n) for k in legacy):
                raise LayerError("num/channels/height/width must each be given once or once "
                                 "per top")
            pick = lambda vals, i: vals[0 if len(vals) == 1 else i]      # noqa: E731
            shapes = [(pick(p.num, i), pick(p.channels, i), pick(p.height, i), pick(p.width, i))
                      for i in range(n)]
        if len(p.data_filler) not in (0, 1, n):
            raise LayerError(f"{len(p.data_filler)} data_fillers for {n} tops: give none, one, "
                             "or one per top")
        fillers = list(p.data_filler) or [FillerParameter()]
        self.fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(n)]
        for blob, shape, filler in zip(top, shapes, self.fillers):
            blob.reshape(shape)
            blob.data[...] = fill(filler, shape, blob.dtype, self.rng)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for blob, filler in zip(top, self.fillers):
            if filler.type != "constant":
                blob.data[...] = fill(filler, blob.shape, blob.dtype, self.rng)


# --- layers that read a source: Data, ImageData, HDF5Data ---------------------------------------
#
# Determinism: batch b is a pure function of (source, seed, b). The sample stream is
# skip, skip + 1, ... (skip < rand_skip, drawn from the seed); sample i lies in epoch
# i // n at place i % n of that epoch's order, a permutation drawn from
# default_rng([seed, epoch]) when shuffling (identity otherwise); the random transforms of
# batch b draw from default_rng([seed, b, 1]). A Prefetcher computes batches ahead in a thread.
#
# Sharding (data-parallel training, minicnn.distributed): with set_shard(r, K), batch b is the
# K * batch_size samples a single process with that batch size would read as its batch b, cut
# into K contiguous blocks of batch_size, and rank r serves block r. Data and ImageData skip the
# random draws (mirror, crop) of the blocks before theirs, so every sample is transformed as in
# the single-process run (the samples of a batch share one shape, as a single batch requires).

class _SourceDataLayer(Layer):
    """Common machinery of the layers that read a source through a Prefetcher."""
    exact_num_bottom = 0
    min_num_top = 1
    shuffle = False
    rand_skip = 0
    prefetch = 4
    shard_rank, shard_count = 0, 1        # set_shard: this rank's block of each batch

    def default_num_tops(self):
        return len(self.param.top) if self.param.top else 2        # data and label

    # subclasses: _open(top) sets batch_size, num_samples (and shuffle, rand_skip, prefetch),
    # and returns the top shapes; _load(ids, b) returns the arrays of batch b (sample ids).
    def layer_setup(self, bottom, top):
        if hasattr(self, "_prefetcher"):          # set up again: the old thread must end
            self._prefetcher.stop()
        self.seed = int(self.rng.integers(2**63))
        self._orders = {}
        self._shapes = [tuple(s) for s in self._open(top)]
        if self.num_samples <= 0:
            raise DataError("the data source holds no samples", self.source_path)
        self._prefetcher = Prefetcher(self._make_batch, self.prefetch,
                                      name=f"minicnn-data-{self.name}")
        if getattr(self, "_pending_state", None) is not None:
            self.restore_data_state(self._pending_state)

    def reshape(self, bottom, top):
        for blob, shape in zip(top, self._shapes):
            blob.reshape(shape)

    def resolve(self, path, *dirs, what="file"):
        """A relative path: the current directory first (Caffe's rule), then ``dirs``, then
        the prototxt's folder (``source_dir``, set by the Net)."""
        return resolve_path(path, *dirs, getattr(self, "source_dir", None), what=what)

    def _skip(self):
        if not self.rand_skip:
            return 0
        return int(np.random.default_rng([self.seed, 0, 2]).integers(self.rand_skip))

    def _order(self, epoch):
        """The sample order of an epoch (an index array), or None for the identity."""
        if not self.shuffle:
            return None
        order = self._orders.get(epoch)
        if order is None:
            order = self._shuffled_order(np.random.default_rng([self.seed, epoch]))
            self._orders = {epoch: order}       # batches move forward: keep one epoch
        return order

    def _shuffled_order(self, rng):
        return rng.permutation(self.num_samples)

    def set_shard(self, rank, count):
        """Serve block ``rank`` of ``count`` of every batch (data-parallel training; see the
        sharding note above). Call before the first forward, or the data position restarts."""
        rank, count = int(rank), int(count)
        if not 0 <= rank < count:
            raise LayerError(f"shard {rank} of {count}: need 0 <= rank < count")
        if hasattr(self, "_prefetcher"):          # batches computed ahead are of the old rule
            self._prefetcher.seek(self._prefetcher.position)
        self.shard_rank, self.shard_count = rank, count

    def _transform_rng(self, b, shape, encoded=True):
        """The generator of batch b's random transforms, past the draws of the samples that
        other ranks serve before this rank's block (``shape``: the shape of those samples)."""
        rng = np.random.default_rng([self.seed, b, 1])
        for _ in range(self.shard_rank * self.batch_size):
            self.transformer.skip(rng, shape, encoded)
        return rng

    def _transform_batch(self, samples, names, b, encoded):
        """The batch of transformed samples (``encoded[j]``: sample j is a decoded image).
        Without resize_param or a crop the samples must share a shape (Caffe shapes a batch by
        the first); with either, the resized and cropped outputs must (Caffe's Transform crops
        each datum from its own size)."""
        if (self.transformer.resize is None and not self.transformer.crop_h) \
                or any(s.shape[0] != samples[0].shape[0] for s in samples):
            _check_same_shape(samples, names)     # channels first, as Caffe's CHECK_EQ
        for sample, name, enc in zip(samples, names, encoded):
            check_mean_channels(self.transformer, sample, name, enc)
        rng = self._transform_rng(b, samples[0].shape, encoded[0])
        batch = self.transformer.batch(samples, rng, encoded)
        if batch is None:                       # resized, noised, or of several sizes
            out = [self.transformer(s, rng, e) for s, e in zip(samples, encoded)]
            _check_same_shape(out, names, after="its transform")
            batch = np.stack(out)
        return batch

    def sample_ids(self, b):
        """The sample indices of batch ``b`` (this rank's block of it when sharded)."""
        first = self._skip() + (b * self.shard_count + self.shard_rank) * self.batch_size
        ids = np.empty(self.batch_size, np.int64)
        for j in range(self.batch_size):
            epoch, place = divmod(first + j, self.num_samples)
            order = self._order(epoch)
            ids[j] = place if order is None else order[place]
        return ids

    def _make_batch(self, b):
        return self._load(self.sample_ids(b), b)

    def _warn_other_channels(self, channels, b):
        """Warn, once, when batch b of a Data or AnnotatedData layer has other channels than
        the net's set-up shape: a natively decoded gray or RGBA record shaped it (Caffe
        reshapes the top by each batch's first record)."""
        if channels == self._shapes[0][1] or self.transformer.is_color is not None \
                or getattr(self, "_warned_channels", False):
            return
        self._warned_channels = True
        key = self.db.keys[self.sample_ids(b)[0]]               # it shapes its batch
        warnings.warn(f"layer '{self.name}' ({self.type}): record "
                      f"'{key.decode(errors='replace')}' of {self.source_path} decodes to "
                      f"{channels} channel(s) where the first record, which shaped the "
                      f"net, gave {self._shapes[0][1]}: its batch has {channels} "
                      "(an encoded record decodes to its file's own channels, gray 1, "
                      "with alpha 4, as in Caffe); transform_param force_color or "
                      "force_gray gives every record the same channels", stacklevel=3)

    def batches_per_epoch(self):
        """Batches that read every sample of the source once (the last may end in the next
        epoch), or None where batches draw their samples at random (WindowData)."""
        return -(-self.num_samples // (self.batch_size * self.shard_count))

    def forward(self, bottom, top):
        batch = self._prefetcher.next()
        for blob, array in zip(top, batch):
            if blob.shape != array.shape:         # ImageData with images of several sizes
                blob.reshape(array.shape)
            blob.data[...] = array

    # --- position, for exact resume ---
    def data_state(self):
        """{"seed": the layer's seed, "batches_served": batches handed to forward so far}."""
        if not hasattr(self, "_prefetcher"):
            if getattr(self, "_pending_state", None) is not None:
                return dict(self._pending_state)
            raise LayerError(f"layer '{self.name}' has no data state before it is set up")
        return {"seed": self.seed, "batches_served": self._prefetcher.position}

    def restore_data_state(self, state):
        """Continue from a ``data_state()``: the next forward gets batch ``batches_served``."""
        seed, served = _check_state(state)
        if not hasattr(self, "_prefetcher"):      # not set up yet: apply at setup
            self._pending_state = state
            return
        self._pending_state = None
        self._prefetcher.stop()                   # no thread may compute with the old seed
        self.seed, self._orders = seed, {}
        self._prefetcher.seek(served)


def warn_force_encoded_color(layer):
    """data_param.force_encoded_color: read by older Caffe's Data layer (decode encoded records
    in colour), by none since DataTransformer decodes them (transform_param.force_color)."""
    if layer.param.data_param.HasField("force_encoded_color"):
        warnings.warn(f"layer '{layer.name}' ({layer.type}) ignores "
                      "data_param.force_encoded_color: Caffe's current Data layers do not read "
                      "it (older Caffe did); give transform_param.force_color",
                      stacklevel=3)


# why a natively decoded record has other channels than its neighbours (the messages below)
NATIVE_CHANNELS = ("an encoded record decodes to its file's own channels, gray 1, with alpha 4, "
                   "as in Caffe, unless transform_param sets force_color or force_gray")


def check_mean_channels(transformer, image, name, encoded=True):
    """A natively decoded record (encoded, without force_color / force_gray) whose channels
    mean_value or the mean file does not fit: a DataError naming the record and force_color,
    where Caffe's CHECKs ('Specify either 1 mean_value or as many as channels', the mean
    file's channels) name neither."""
    mean, c = transformer.mean, image.shape[0]
    if not encoded or transformer.is_color is not None or mean is None:
        return
    if transformer.mean_file is None and len(mean) not in (1, c):
        raise DataError(f"{name} decodes to {c} channel(s), which {len(mean)} mean_value "
                        f"values do not fit (give one, or one per channel): {NATIVE_CHANNELS}")
    if transformer.mean_file is not None and mean.shape[0] != c:
        raise DataError(f"{name} decodes to {c} channel(s) but the mean file "
                        f"{transformer.mean_file} has {mean.shape[0]}: {NATIVE_CHANNELS}")


def _check_state(state):
    try:
        seed, served = state["seed"], state["batches_served"]
    except (TypeError, KeyError):
        raise LayerError(f"a data state is a dict with 'seed' and 'batches_served', got "
                         f"{state!r}") from None
    if isinstance(seed, bool) or isinstance(served, bool) or \
            not isinstance(seed, (int, np.integer)) or not isinstance(served, (int, np.integer)) \
            or served < 0:
        raise LayerError(f"bad data state {state!r}: seed and batches_served must be integers, "
                         "batches_served >= 0")
    return int(seed), int(served)


def _check_same_shape(samples, names, after=None):
    """Samples of one batch must have the first one's shape (Caffe shapes a batch by it)."""
    shape = samples[0].shape
    for sample, name in zip(samples, names):
        if sample.shape != shape:
            what = f"after {after} " if after else ""
            hint = ("(resize them, or crop with transform_param)" if sample.shape[0] == shape[0]
                    else f"({NATIVE_CHANNELS})")
            raise DataError(f"{name} has shape {sample.shape} {what}but the first sample of its "
                            f"batch, {names[0]}, has {shape}: samples of a batch must have the "
                            "same size " + hint)


@register("Data")
class DataLayer(_SourceDataLayer):
    """Caffe `Data`: Datum records of an LMDB read in key order, wrapping around at the end
    (never shuffled, as in Caffe), transformed by transform_param. Tops: data (N, C, H, W) and
    optionally label (N,). The shape comes from the first record. ``rand_skip`` skips a seeded
    number of records below it at the start, as 2014's Caffe did (its later DataReader and 1.0
    read the field no more; ImageData still does). An encoded record (an image file's bytes)
    is decoded as Caffe's DataTransformer decodes it: with transform_param.force_color as BGR,
    force_gray as gray (the EXIF orientation applied), else natively (cv::imdecode with
    IMREAD_UNCHANGED: not rotated by EXIF, gray 1 channel, alpha kept as B, G, R, A; a 16-bit
    image is an error naming the record, where Caffe stops).

    SSD's transform fields apply as in that fork's Data layer (minicnn.data.transform):
    resize_param and noise_param to encoded records, crop_h/crop_w to every record. Its
    AnnotatedData-only fields (distort_param, expand_param, emit_constraint) and DeepLab's
    ImageSegData fields (scale_factors, crop_width, crop_height) are ignored with a warning, as
    those forks' Data layers ignore them."""
    param_field = "data_param"
    max_num_top = 2

    def _open(self, top):
        p = self.param.data_param
        if not p.source:
            raise LayerError("data_param.source is required (the LMDB folder)")
        if p.batch_size <= 0:
            raise LayerError("data_param.batch_size must be positive")
        warn_unread_transform(self, SSD_ANNOTATED_ONLY + DEEPLAB_SEG_ONLY)
        warn_force_encoded_color(self)
        self.batch_size, self.rand_skip, self.prefetch = p.batch_size, p.rand_skip, p.prefetch
        self.source_path = self.resolve(p.source, what="data source")
        self.db = open_db(self.source_path, p.backend)
        self.num_samples = len(self.db)
        self.transformer = DataTransformer(
            merged_transform_param(self.param, "data_param"), self.phase, self.dtype,
            resolve=lambda f: self.resolve(f, what="mean file"))
        if not self.num_samples:
            return []
        first, _, encoded = self._decode(self.db.keys[self.sample_ids(0)[0]])
        shape = self.transformer.check(first.shape, encoded)
        self._warned_channels = False
        return [(self.batch_size, *shape), (self.batch_size,)][:len(top)]

    def forward(self, bottom, top):
        position = self._prefetcher.position
        super().forward(bottom, top)
        self._warn_other_channels(top[0].shape[1], position)

    def _decode(self, key, value=None):
        """(CHW array, label, encoded) of a record."""
        where = f"{self.source_path} record {key.decode(errors='replace')!r}"
        value = self.db.get(key) if value is None else value
        return decode_record(value, self.transformer.is_color, where=where)

    def _load(self, ids, b):
        keys = [self.db.keys[i] for i in ids]
        samples, labels, encoded = [], [], []
        for key, value in zip(keys, self.db.get_many(keys)):
            array, label, enc = self._decode(key, value)
            samples.append(array)
            labels.append(label)
            encoded.append(enc)
        names = [f"record {k.decode(errors='replace')!r} of {self.source_path}" for k in keys]
        data = self._transform_batch(samples, names, b, encoded)
        return data, np.asarray(labels, self.dtype)


@register("ImageData")
class ImageDataLayer(_SourceDataLayer):
    """Caffe `ImageData`: images named by a list file (``path label`` per line, split at the
    last space), decoded as BGR (or gray with is_color: false), optionally resized to
    new_height x new_width, transformed by transform_param. ``shuffle`` draws a new order every
    epoch. Tops: data (N, C, H, W) and label (N,). SSD's resize_param, noise_param and
    crop_h/crop_w apply after new_height/new_width, as in that fork; the fields Data warns
    about, and force_color/force_gray (is_color decides), are ignored with a warning.

    Without new_height/new_width and crop_size each image keeps its size, and the tops take the
    shape of each batch (nets that take any size, e.g. with SPP): batch_size 1, or minicnn's
    ``bucket_by_size: true``, which makes every batch of one image size (see
    minicnn.data.buckets: each size's images cut into batches, shuffled together when
    ``shuffle``; rand_skip is not supported with it)."""
    param_field = "image_data_param"
    max_num_top = 2

    def _open(self, top):
        p = self.param.image_data_param
        if not p.source:
            raise LayerError("image_data_param.source is required (the list file)")
        if p.batch_size <= 0:
            raise LayerError("image_data_param.batch_size must be positive")
        if (p.new_height > 0) != (p.new_width > 0):
            raise LayerError("image_data_param: give both new_height and new_width, or neither")
        warn_unread_transform(self, SSD_ANNOTATED_ONLY + DEEPLAB_SEG_ONLY)
        warn_unread_transform(self, ("force_color", "force_gray"),
                              "ImageData decodes by image_data_param.is_color")
        for field in ("ignore_label", "label_type"):
            if p.HasField(field):
                warnings.warn(f"layer '{self.name}' (ImageData) ignores image_data_param.{field}:"
                              " it is read by DeepLab's ImageSegData only, and DeepLab's "
                              "ImageData ignores it too", stacklevel=2)
        self.batch_size, self.rand_skip, self.shuffle = p.batch_size, p.rand_skip, p.shuffle
        self.source_path = self.resolve(p.source, what="image list file")
        self.entries = read_list_file(self.source_path)
        grouped = None if p.shuffle or self.phase != "TRAIN" else \
            grouped_by_label((label for _, label, _ in self.entries), p.batch_size)
        if grouped:
            warnings.warn(f"layer '{self.name}' (ImageData) trains on {p.source} in label order "
                          f"({grouped}) and shuffle is off: most batches hold a single class, "
                          "so SGD learns one class at a time (and may diverge); set "
                          "image_data_param { shuffle: true } or shuffle the list",
                          stacklevel=2)
        self.num_samples = len(self.entries)
        self.transformer = DataTransformer(
            merged_transform_param(self.param, "image_data_param"), self.phase, self.dtype,
            resolve=lambda f: self.resolve(f, what="mean file"))
        self.buckets = None
        if p.bucket_by_size:
            if p.rand_skip:
                raise LayerError("image_data_param: rand_skip is not supported with "
                                 "bucket_by_size")
            self.buckets = SizeBuckets([self._size(i) for i in range(self.num_samples)],
                                       self.batch_size)
        first = self._read(self.sample_ids(0)[0])
        shape = self.transformer.check(first.shape)
        return [(self.batch_size, *shape), (self.batch_size,)][:len(top)]

    def _read(self, i, header_only=False):
        p = self.param.image_data_param
        name, _, lineno = self.entries[i]
        path = root_joined(p.root_folder, name)
        try:
            found = self.resolve(path, os.path.dirname(self.source_path))
            if header_only:
                return image_size(found)
            return read_image(found, p.new_height, p.new_width, p.is_color)
        except DataError as e:
            raise DataError(f"image '{path}': {e.reason}", self.source_path, lineno) from None

    def _size(self, i):
        p = self.param.image_data_param
        return (p.new_height, p.new_width) if p.new_height else self._read(i, header_only=True)

    def sample_ids(self, b):
        if self.buckets is None:
            return super().sample_ids(b)
        epoch, k = divmod(b, self.buckets.batches_per_epoch)
        plan = self._orders.get(epoch)
        if plan is None:
            rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
            plan = self.buckets.epoch(rng)
            self._orders = {epoch: plan}        # batches move forward: keep one epoch
        n = self.batch_size
        return plan[k][self.shard_rank * n:(self.shard_rank + 1) * n]

    def batches_per_epoch(self):
        if self.buckets is None:
            return super().batches_per_epoch()
        return self.buckets.batches_per_epoch

    def set_shard(self, rank, count):
        super().set_shard(rank, count)
        if self.buckets is not None:            # buckets of whole (all-rank) batches
            sizes = [None] * self.num_samples
            for size, members in zip(self.buckets.sizes, self.buckets.members):
                for i in members:
                    sizes[i] = size
            self.buckets = SizeBuckets(sizes, self.batch_size * self.shard_count)
            self._orders = {}

    def _load(self, ids, b):
        samples = [self._read(i) for i in ids]
        names = [f"image '{self.entries[i][0]}' ({self.source_path}:{self.entries[i][2]})"
                 for i in ids]
        data = self._transform_batch(samples, names, b, [True] * len(samples))
        return data, np.asarray([self.entries[i][1] for i in ids], self.dtype)


@register("HDF5Data")
class HDF5DataLayer(_SourceDataLayer):
    """Caffe `HDF5Data`: ``source`` is a text file listing .h5 files; each top reads the
    dataset of its name (rows = first axis; every dataset of a file has as many). Batches run
    across file boundaries; ``shuffle`` permutes the file order and the rows of each file every
    epoch. No transform_param. Tops: (batch_size, *dataset.shape[1:])."""
    param_field = "hdf5_data_param"

    def _open(self, top):
        h5py = need("h5py")
        p = self.param.hdf5_data_param
        if not p.source:
            raise LayerError("hdf5_data_param.source is required (a text file listing .h5 "
                             "files)")
        if p.batch_size <= 0:
            raise LayerError("hdf5_data_param.batch_size must be positive")
        warn_unread_transform(self, ALL_TRANSFORM_FIELDS,
                              "Caffe's HDF5Data serves the stored values as they are (no "
                              "transformer)")
        self.batch_size, self.shuffle = p.batch_size, p.shuffle
        self.source_path = self.resolve(p.source, what="HDF5 list file")
        self.names = list(self.param.top) or ["data", "label"][:len(top)]
        list_dir = os.path.dirname(self.source_path)
        try:
            with open(self.source_path, encoding="utf-8") as f:
                lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the HDF5 list file: {e}", self.source_path) from None
        if not lines:
            raise DataError("the list names no HDF5 files", self.source_path)
        self.files, sizes, shapes = [], [], None
        for lineno, name in lines:
            try:
                path = self.resolve(name, list_dir)
            except DataError as e:
                raise DataError(f"HDF5 file '{name}': {e.reason}", self.source_path,
                                lineno) from None
            rows, file_shapes = self._inspect(h5py, path)
            if shapes is None:
                shapes = file_shapes
            for dataset, a, b in zip(self.names, shapes, file_shapes):
                if a != b:
                    raise DataError(f"dataset '{dataset}' has rows of shape {b}, but "
                                    f"{self.files[0]} has {a}", path)
            self.files.append(path)
            sizes.append(rows)
        self.sizes = np.asarray(sizes, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.num_samples = int(self.offsets[-1])
        self._cache = {}
        return [(self.batch_size, *s) for s in shapes]

    def _inspect(self, h5py, path):
        """(rows, [row shape per dataset]) of one file, with its consistency checks."""
        try:
            with h5py.File(path, "r") as f:
                missing = [n for n in self.names if n not in f]
                if missing:
                    raise DataError(f"has no dataset '{missing[0]}' (a top of this layer; the "
                                    f"file has: {', '.join(sorted(f.keys())) or 'nothing'})",
                                    path)
                shapes = [f[n].shape for n in self.names]
        except OSError as e:
            raise DataError(f"cannot read as HDF5: {e}", path) from None
        if any(len(s) == 0 for s in shapes):
            raise DataError("datasets must have at least one axis (the rows)", path)
        if len({s[0] for s in shapes}) != 1:
            rows = ", ".join(f"'{n}' {s[0]}" for n, s in zip(self.names, shapes))
            raise DataError(f"the datasets must have the same number of rows (first "
                            f"dimension): {rows}", path)
        if shapes[0][0] == 0:
            raise DataError("the datasets have no rows", path)
        return shapes[0][0], [tuple(s[1:]) for s in shapes]

    def _shuffled_order(self, rng):
        files = rng.permutation(len(self.files))
        return np.concatenate([self.offsets[f] + rng.permutation(self.sizes[f]) for f in files])

    def _file_arrays(self, k):
        arrays = self._cache.get(k)
        if arrays is None:
            h5py = need("h5py")
            try:
                with h5py.File(self.files[k], "r") as f:
                    arrays = [np.asarray(f[n][...], self.dtype) for n in self.names]
            except (OSError, KeyError) as e:
                raise DataError(f"cannot read as HDF5: {e}", self.files[k]) from None
            if len(self._cache) >= 2:             # a batch spans at most a few files
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = arrays
        return arrays

    def _load(self, ids, b):
        which = np.searchsorted(self.offsets, ids, side="right") - 1
        out = [np.empty((len(ids), *s[1:]), self.dtype) for s in self._shapes]
        for k in dict.fromkeys(which.tolist()):           # files in order of first use
            rows = np.flatnonzero(which == k)
            arrays = self._file_arrays(k)
            for o, a in zip(out, arrays):
                o[rows] = a[ids[rows] - self.offsets[k]]
        return tuple(out)


@register("WindowData")
class WindowDataLayer(_SourceDataLayer):
    """Caffe `WindowData`, R-CNN's fine-tuning input: windows of images listed in a window file
    (``source``; format in minicnn.data.windows), each cut out with context_pad pixels of
    context, warped to crop_size x crop_size (crop_mode "warp"; "square" first widens the window
    to a square) and labelled with its class (foreground: overlap >= fg_threshold) or 0
    (background: overlap < bg_threshold). Every batch draws batch_size - int(batch_size *
    fg_fraction) background windows, then the foreground ones, uniformly with replacement (in
    both phases). Tops: data (batch_size, 3, crop_size, crop_size) and label (batch_size,).

    Caffe's surprises, kept: the context may reach past the image, and that part of the crop is
    0 after the mean is subtracted (the mean colour); the mean file is indexed at the crop
    position plus (mean width - crop_size) // 2 on both axes; mirror flips in TEST too. Images
    are read in colour like ImageData's (root_folder joined to each path); cache_images keeps
    the image files in memory. crop_size, mirror and mean_file/mean_value come from
    transform_param (the old window_data_param fields are ignored with a warning, as Caffe
    ignores them outside a V1 net); ``scale`` too, where Caffe's layer reads
    window_data_param.scale only (it ignores transform_param.scale, and its V1 upgrade moves
    window_data_param.scale there, so a V1 net loses it): minicnn applies either."""
    param_field = "window_data_param"
    exact_num_top = 2

    def _open(self, top):
        p = self.param.window_data_param
        if not p.source:
            raise LayerError("window_data_param.source is required (the window file)")
        if p.batch_size <= 0:
            raise LayerError("window_data_param.batch_size must be positive")
        if p.crop_mode not in ("warp", "square"):
            raise LayerError(f"window_data_param.crop_mode is '{p.crop_mode}'; Caffe knows "
                             "'warp' and 'square'")
        if not 0 <= p.fg_fraction <= 1:
            raise LayerError(f"window_data_param.fg_fraction is {p.fg_fraction:g}; it must lie "
                             "in [0, 1]")
        tp = merged_transform_param(self.param, "window_data_param", read=("scale",))
        warn_unread_transform(self, SSD_TRANSFORMER + SSD_ANNOTATED_ONLY + DEEPLAB_SEG_ONLY)
        warn_unread_transform(self, ("force_color", "force_gray"),
                              "WindowData reads every image in colour")
        self.crop = int(tp.crop_size)
        if self.crop <= 0:
            raise LayerError("WindowData needs transform_param.crop_size > 0 (the warped size)")
        if 2 * p.context_pad >= self.crop:
            raise LayerError(f"window_data_param.context_pad {p.context_pad} leaves nothing of "
                             f"crop_size {self.crop} for the window: need 2 * context_pad < "
                             "crop_size")
        self.batch_size, self.context_pad = p.batch_size, p.context_pad
        self.square, self.mirror = p.crop_mode == "square", bool(tp.mirror)
        self.source_path = self.resolve(p.source, what="window file")
        self.windows = WindowFile(self.source_path, p.fg_threshold, p.bg_threshold)
        channels = self.windows.channels
        if channels != 3:
            raise DataError(f"the last image block declares {channels} channels; the data top "
                            "takes that count (Caffe's rule) and WindowData reads every image in "
                            "colour, so it must be 3", self.source_path, self.windows.images[-1][2])
        self.num_fg = int(np.float32(p.batch_size) * np.float32(p.fg_fraction))
        for count, kind, have in ((p.batch_size - self.num_fg, "background", self.windows.bg),
                                  (self.num_fg, "foreground", self.windows.fg)):
            if count and not len(have):
                raise DataError(f"a batch takes {count} {kind} windows but the file has none "
                                f"(fg_threshold {p.fg_threshold:g}, bg_threshold "
                                f"{p.bg_threshold:g})", self.source_path)
        self.num_samples = len(self.windows.fg) + len(self.windows.bg)
        transformer = DataTransformer(tp, self.phase, self.dtype,
                                      resolve=lambda f: self.resolve(f, what="mean file"))
        self.mean, self.scale = transformer.mean, transformer.scale
        if transformer.mean_file is not None:
            c, h, w = self.mean.shape
            off = (w - self.crop) // 2
            if c != 3 or w < self.crop or h < off + self.crop:
                raise LayerError(f"the mean file {transformer.mean_file} is {c}x{h}x{w}; "
                                 f"WindowData needs 3 channels and the {self.crop} x "
                                 f"{self.crop} crop at offset {max(off, 0)} inside it "
                                 f"(height >= {max(off, 0) + self.crop}, width >= {self.crop})")
        elif self.mean is not None and len(self.mean) not in (1, 3):
            raise LayerError(f"{len(self.mean)} mean_value values for 3-channel windows: give "
                             "one, or one per channel")
        folder = os.path.dirname(self.source_path)
        self.image_paths = []
        for name, _, line in self.windows.images:
            path = root_joined(p.root_folder, name)
            try:
                self.image_paths.append(self.resolve(path, folder))
            except DataError as e:
                raise DataError(f"image '{path}': {e.reason}", self.source_path, line) from None
        self.image_cache = None
        if p.cache_images:
            self.image_cache = []
            for path, (_, _, line) in zip(self.image_paths, self.windows.images):
                try:
                    with open(path, "rb") as f:
                        self.image_cache.append(f.read())
                except OSError as e:
                    raise DataError(f"image '{path}': cannot read: {e.strerror}",
                                    self.source_path, line) from None
        return [(self.batch_size, 3, self.crop, self.crop), (self.batch_size,)]

    def batches_per_epoch(self):
        return None                              # each window is drawn at random

    def batch_plan(self, b):
        """[(is_fg, window row, mirror)] of batch ``b`` (this rank's block when sharded):
        background first, then foreground, as Caffe fills a batch; the draws per window are
        its index, then the mirror coin (when mirror is set)."""
        rng = np.random.default_rng([self.seed, b, 1])
        total = self.batch_size * self.shard_count
        num_fg = self.num_fg if self.shard_count == 1 else \
            int(np.float32(total) * np.float32(self.param.window_data_param.fg_fraction))
        plan = []
        for is_fg, count in ((0, total - num_fg), (1, num_fg)):
            rows = self.windows.fg if is_fg else self.windows.bg
            for _ in range(count):
                row = rows[int(rng.integers(len(rows)))]
                plan.append((is_fg, row, bool(rng.integers(2)) if self.mirror else False))
        return plan[self.shard_rank * self.batch_size:(self.shard_rank + 1) * self.batch_size]

    def _image(self, k):
        name, _, line = self.windows.images[k]
        try:
            if self.image_cache is not None:
                return decode_image(self.image_cache[k], is_color=True)
            return read_image(self.image_paths[k], is_color=True)
        except DataError as e:
            raise DataError(f"image '{name}': {e.reason}", self.source_path, line) from None

    def _make_batch(self, b):
        data = np.empty((self.batch_size, 3, self.crop, self.crop), self.dtype)
        labels = np.empty(self.batch_size, self.dtype)
        images = {}
        for i, (_, row, mirror) in enumerate(self.batch_plan(b)):
            k, label, box, line = int(row[0]), row[1], row[2:6], int(row[6])
            if k not in images:
                images[k] = self._image(k)
            try:
                data[i] = crop_window(images[k], box, self.crop, self.context_pad, self.square,
                                      mirror, self.mean, self.scale, self.dtype)
            except ValueError as e:
                raise DataError(f"window {' '.join(map(str, box))} of image "
                                f"'{self.windows.images[k][0]}': {e}", self.source_path,
                                line) from None
            labels[i] = label
        return data, labels


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Caffe `HDF5Output`: writes its two bottoms to the HDF5 file hdf5_output_param.file_name
    as the datasets "data" and "label", in the net's dtype and as 4-D N x C x H x W arrays
    (Caffe's legacy shape: a label of shape (N,) is stored as N x 1 x 1 x 1). No tops, no
    gradient.

    As in Caffe, the file is created (emptied if it exists) when the layer is set up and each
    batch is written by a forward pass. Caffe's layer can write only one batch per file (its
    second forward aborts: the datasets exist, BVLC/caffe#1726); minicnn appends each later
    batch to the two datasets (along the first axis), so ``minicnn test -iterations K`` keeps
    all K batches, ready for an HDF5Data layer. minicnn closes the file after each write, so it
    is complete once forward returns (Caffe's is complete when the net is destroyed)."""
    param_field = "hdf5_output_param"
    exact_num_bottom = 2
    exact_num_top = 0
    host_only = True                    # writes NumPy arrays to a file

    def layer_setup(self, bottom, top):
        h5py = need("h5py")
        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            raise LayerError("hdf5_output_param.file_name is required (the HDF5 file to write)")
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as e:
            raise LayerError(f"cannot create hdf5_output_param.file_name "
                             f"'{self.file_name}': {_os_reason(e)}") from None

    def reshape(self, bottom, top):
        shapes = [b.shape for b in bottom]
        for name, shape in zip(("data", "label"), shapes):
            if not 1 <= len(shape) <= 4:
                raise LayerError(f"bottom '{name}' has shape {shape}; HDF5Output writes blobs of "
                                 "1 to 4 axes (Caffe's num x channels x height x width)")
        if shapes[0][0] != shapes[1][0]:
            raise LayerError(f"data {shapes[0]} and label {shapes[1]} must have the same number "
                             "of rows (first axis)")

    def forward(self, bottom, top):
        h5py = need("h5py")
        arrays = {name: np.asarray(b.data).reshape(b.shape + (1,) * (4 - len(b.shape)))
                  for name, b in zip(("data", "label"), bottom)}
        try:
            with h5py.File(self.file_name, "r+") as f:
                for name, array in arrays.items():
                    _append_rows(f, name, array, self.file_name)
        except OSError as e:
            raise LayerError(f"cannot write hdf5_output_param.file_name '{self.file_name}': "
                             f"{_os_reason(e)}") from None

    def allow_force_backward(self, bottom_index):
        return False                    # Caffe's Backward_cpu does nothing


def _append_rows(f, name, array, file_name):
    """Dataset ``name`` of the open HDF5 file ``f`` with ``array``'s rows added at its end
    (created, growable along the first axis, by the first batch)."""
    if name not in f:
        f.create_dataset(name, data=array, maxshape=(None, *array.shape[1:]),
                         chunks=(max(1, array.shape[0]), *array.shape[1:]))
        return
    dataset = f[name]
    if dataset.shape[1:] != array.shape[1:] or dataset.dtype != array.dtype:
        raise LayerError(f"'{file_name}': cannot append a {name} batch of shape {array.shape} "
                         f"({array.dtype}) to the dataset of shape {dataset.shape} "
                         f"({dataset.dtype}) the earlier batches made")
    rows = dataset.shape[0]
    dataset.resize(rows + array.shape[0], axis=0)
    dataset[rows:] = array


def _os_reason(e):
    return e.strerror or str(e)


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Caffe `MemoryData`: batches cut from arrays given with ``set_input_arrays`` (pycaffe's
    Net.set_input_arrays), served in order and cyclically. Tops: data (batch_size, channels,
    height, width) and label (batch_size,)."""
    param_field = "memory_data_param"
    exact_num_bottom = 0
    exact_num_top = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._data = self._labels = None          # set_input_arrays may come before setup
        self._served = 0
        self._resume_at = None                    # a restored position awaiting the arrays
        self.shard_rank, self.shard_count = 0, 1

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        shape = (p.batch_size, p.channels, p.height, p.width)
        if min(shape) <= 0:
            raise LayerError(f"memory_data_param batch_size, channels, height and width must all "
                             f"be positive, got {shape}")
        warn_unread_transform(self, ALL_TRANSFORM_FIELDS,
                              "Caffe's MemoryData serves set_input_arrays's arrays as they are "
                              "(its transformer runs for AddDatumVector/AddMatVector only, "
                              "which minicnn does not have)")
        self.batch_size, self.shape = p.batch_size, shape

    def reshape(self, bottom, top):
        top[0].reshape(self.shape)
        top[1].reshape((self.batch_size,))

    def set_input_arrays(self, data, labels):
        """The arrays to serve: ``data`` N x C x H x W (the configured C, H, W), ``labels`` N
        values (shape (N,) or (N, 1, 1, 1)); N must be a multiple of batch_size. They are
        copied; serving restarts at the first batch, except for the first arrays after a
        restored position (a solver restored before it was given its arrays), which continue
        from there."""
        p = self.param.memory_data_param
        data, labels = np.asarray(data), np.asarray(labels)
        for name, a in (("data", data), ("labels", labels)):
            if a.dtype.kind not in "fiu":
                raise LayerError(f"set_input_arrays: {name} must hold real numbers, not "
                                 f"{a.dtype}")
        want = (p.channels, p.height, p.width)
        if data.ndim != 4 or data.shape[1:] != want:
            raise LayerError(f"set_input_arrays: data must be 4-D N x {want[0]} x {want[1]} x "
                             f"{want[2]} (memory_data_param), got shape {data.shape}")
        n = data.shape[0]
        if labels.shape not in ((n,), (n, 1, 1, 1)):
            raise LayerError(f"set_input_arrays: labels must have shape ({n},) to match the "
                             f"{n} data items, got {labels.shape}")
        if n == 0 or n % p.batch_size:
            raise LayerError(f"set_input_arrays: the number of items ({n}) must be a positive "
                             f"multiple of batch_size ({p.batch_size})")
        dtype = self.dtype or np.float32
        self._data = np.array(data, dtype)
        self._labels = np.array(labels.reshape(n), dtype)
        self._served, self._resume_at = self._resume_at or 0, None

    def forward(self, bottom, top):
        if self._data is None:
            raise LayerError(f"MemoryData layer '{self.name}' has no data: call "
                             "set_input_arrays(data, labels) first")
        start = ((self._served * self.shard_count + self.shard_rank) * self.batch_size) \
            % len(self._data)
        top[0].data[...] = self._data[start:start + self.batch_size]
        top[1].data[...] = self._labels[start:start + self.batch_size]
        self._served += 1

    def set_shard(self, rank, count):
        """Serve block ``rank`` of ``count`` of every batch: batch b is then rows
        [(b * count + rank) * batch_size, + batch_size) (modulo N), a block of the batch a
        single process with count x batch_size would serve."""
        if not 0 <= int(rank) < int(count):
            raise LayerError(f"shard {rank} of {count}: need 0 <= rank < count")
        self.shard_rank, self.shard_count = int(rank), int(count)

    def data_state(self):
        """{"seed": 0 (unused), "batches_served": batches served since set_input_arrays}."""
        return {"seed": 0, "batches_served": self._served}

    def restore_data_state(self, state):
        """Continue from a ``data_state()``: the next forward serves batch ``batches_served``
        (kept for the first set_input_arrays when no arrays are given yet)."""
        _, self._served = _check_state(state)
        self._resume_at = self._served if self._data is None else None
