"""The DeepLab fork's data and metric layers (deeplab-public, deeplab-public-ver2 by Liang-Chieh
Chen et al.): ImageSegData and SegAccuracy. The pixel work is in minicnn.data.deeplab, the
confusion matrix in minicnn.ops.seg_accuracy."""

import os

import numpy as np

from minicnn import ops
from minicnn.data.datum import read_image, resize_image
from minicnn.data.db import root_joined
from minicnn.data.deeplab import read_seg_list, transform_img_and_seg
from minicnn.data.errors import DataError, need
from minicnn.data.segmentation import read_label
from minicnn.data.transform import (
    SSD_ANNOTATED_ONLY,
    SSD_TRANSFORMER,
    refuse_transform,
    warn_unread_transform,
)
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.layers.data import _SourceDataLayer


@register("ImageSegData")
class ImageSegDataLayer(_SourceDataLayer):
    """DeepLab's `ImageSegData`: images and their label images named by a list file, cropped,
    padded, rescaled and mirrored together (the fork's TransformImgAndSeg, see
    minicnn.data.deeplab).

    image_data_param: source (lines `image label`, the first two words), root_folder (glued to
    both names), batch_size, shuffle (a new order every epoch), rand_skip, new_height /
    new_width (both images resized bilinearly, the labels too, as the fork's ReadImageToCVMat
    does), is_color, and the fork's ignore_label (255: the labels of padding) and label_type:
    PIXEL reads the second word as a label image (8-bit gray, or palette PNG whose indices are
    the classes), IMAGE (the fork's default) as one class for every pixel, NONE reads no
    labels (every label is ignore_label; test lists of images only). transform_param:
    crop_size, or the fork's crop_height and crop_width; mirror (a coin per image, in TEST
    too, as the fork); mean_value (one, or one per channel); scale; the fork's scale_factors
    (a random one per image, in TEST too). Crop offsets are random in TRAIN and centred in
    TEST; an image smaller than the crop is padded at the bottom and right with its mean
    (0 after subtraction) and its labels with ignore_label.

    Tops: data (N, C, h, w), label (N, 1, h, w) as floats, and the optional data_dim
    (N, 1, 1, 2): each image's (height, width) as read, capped by the top's (the fork always
    has three tops, AutoTopBlobs filling the ones a prototxt leaves out).

    Where minicnn differs, deliberately: a palette label PNG gives its indices (the fork's
    grayscale imread gives the palette colours' luminance, which no net can use); an IMAGE
    label that is not a whole number is an error (the fork's atoi makes a file name class 0);
    with no mean_value the padding is 0 (the fork reads mean_value[0..2] past the end); blank
    list lines are skipped; a missing file is an error (the fork logs and crashes later)."""
    param_field = "image_data_param"
    min_num_top, max_num_top = 1, 3

    def _open(self, top):
        p, tp = self.param.image_data_param, self.param.transform_param
        if not p.source:
            raise LayerError("image_data_param.source is required (the list of `image label` "
                             "pairs)")
        if p.batch_size <= 0:
            raise LayerError("image_data_param.batch_size must be positive")
        if (p.new_height > 0) != (p.new_width > 0):
            raise LayerError("image_data_param: give both new_height and new_width, or neither")
        refuse_transform(self, SSD_TRANSFORMER + SSD_ANNOTATED_ONLY,
                         "it is SSD's field, which DeepLab's fork does not know (crop_height and "
                         "crop_width are its crop, scale_factors its resize)")
        warn_unread_transform(self, ("force_color", "force_gray"),
                              "ImageSegData decodes by image_data_param.is_color")
        if p.bucket_by_size:
            raise LayerError("image_data_param.bucket_by_size is minicnn's ImageData field; "
                             "ImageSegData does not read it (give new_height/new_width or a "
                             "crop for batches of one size)")
        if tp.HasField("mean_file"):
            raise LayerError("ImageSegData does not support transform_param.mean_file (nor does "
                             "the DeepLab fork): give mean_value")
        has_h, has_w = tp.HasField("crop_height"), tp.HasField("crop_width")
        if not ((not tp.HasField("crop_size") and has_h and has_w) or (not has_h and not has_w)):
            raise LayerError("transform_param: give crop_size, or both crop_height and "
                             "crop_width (not both kinds)")
        self.crop = (tp.crop_size, tp.crop_size) if tp.HasField("crop_size") else \
            (tp.crop_height, tp.crop_width)
        bad = [f for f in tp.scale_factors if not f > 0]
        if bad:
            raise LayerError(f"transform_param.scale_factors must be positive, got {bad[0]:g}")
        self.batch_size, self.shuffle, self.rand_skip = p.batch_size, p.shuffle, p.rand_skip
        self.label_type = p.label_type
        need("PIL.Image", "Pillow")
        self.source_path = self.resolve(p.source, what="image list file")
        self.entries = read_seg_list(self.source_path, self.label_type)
        self.num_samples = len(self.entries)
        self.training = self.phase == "TRAIN"
        image, _ = self._read(self.sample_ids(0)[0])
        c, h, w = image.shape
        self.mean = np.asarray(tp.mean_value, self.dtype) if len(tp.mean_value) else None
        if self.mean is not None and len(self.mean) not in (1, c):
            raise LayerError(f"{len(self.mean)} mean_value values for images with {c} channels: "
                             "give one, or one per channel")
        hw = self.crop if all(self.crop) else (h, w)
        return [(self.batch_size, c, *hw), (self.batch_size, 1, *hw),
                (self.batch_size, 1, 1, 2)][:len(top)]

    def _path(self, name, lineno):
        path = root_joined(self.param.image_data_param.root_folder, name)
        try:
            return self.resolve(path, os.path.dirname(self.source_path))
        except DataError as e:
            raise DataError(f"'{path}': {e.reason}", self.source_path, lineno) from None

    def _read(self, i):
        """(image CHW uint8, labels HW uint8) of list entry i, as the fork reads them."""
        p = self.param.image_data_param
        image_name, second, lineno = self.entries[i]
        try:
            image = read_image(self._path(image_name, lineno), p.new_height, p.new_width,
                               p.is_color)
            h, w = image.shape[1:]
            if self.label_type == "PIXEL":
                label = read_label(self._path(second, lineno))
                if p.new_height > 0:
                    label = resize_image(label[None], p.new_height, p.new_width)[0]
                if label.shape != (h, w):
                    raise DataError(f"the labels '{second}' are {label.shape[0]}x"
                                    f"{label.shape[1]} but the image is {h}x{w}")
            else:
                value = int(second) if self.label_type == "IMAGE" else p.ignore_label
                label = np.full((h, w), min(max(value, 0), 255), np.uint8)   # a uint8 Mat
        except DataError as e:
            raise DataError(e.reason, self.source_path, lineno) from None
        return image, label

    def _random_ints(self, b):
        """The fork's Rand(n) for batch b: an int in [0, n) from the batch's own generator, so
        batches do not depend on the prefetch thread's timing (tests script it)."""
        rng = np.random.default_rng([self.seed, b, 1, self.shard_rank])
        return lambda n: int(rng.integers(n))

    def _load(self, ids, b):
        tp = self.param.transform_param
        rand = self._random_ints(b)
        shape = self._shapes[0][1:]
        data, labels, dims = [], [], []
        for i in ids:
            image, label = self._read(i)
            h, w = image.shape[1:]
            dims.append([[[min(shape[1], h), min(shape[2], w)]]])
            d, lab = transform_img_and_seg(
                image, label, rand, crop=self.crop, mirror=tp.mirror,
                scale_factors=list(tp.scale_factors), mean=self.mean, scale=tp.scale,
                ignore_label=self.param.image_data_param.ignore_label, train=self.training,
                dtype=self.dtype)
            if d.shape != shape:
                raise DataError(f"image '{self.entries[i][0]}' gives data of shape {d.shape} "
                                f"but the top has {shape}, from the first image (the fork "
                                "shapes its tops so): set crop_size", self.source_path,
                                self.entries[i][2])
            data.append(d)
            labels.append(lab)
        return np.stack(data), np.stack(labels), np.asarray(dims, self.dtype)


@register("SegAccuracy")
class SegAccuracyLayer(Layer):
    """DeepLab's `SegAccuracy`: scores (N, C, H, W) and labels (N, 1, H, W) in, one top
    (1, 1, 1, 3) out: [pixel accuracy, mean class accuracy, mean IU] of a C x C confusion
    matrix (minicnn.ops.seg_accuracy gives the formulas: a class absent from both labels and
    predictions counts IU 1, and class accuracy averages only the classes that have pixels).

    seg_accuracy_param: ignore_label (repeated: pixels so labelled are left out; any other
    label outside [0, C) is an error, as in the fork), reset (default true: the matrix starts
    empty every forward, so a test phase averages per-batch scores; false: it accumulates
    over every forward of the layer's life, test phases included, as the fork's does), metric
    (read, unused by the fork). The best class of a pixel is the highest score, a tie going
    to the higher class index. No backward."""
    param_field = "seg_accuracy_param"
    exact_num_bottom = 2
    exact_num_top = 1
    index_bottom = 1
    host_only = True             # NumPy bookkeeping: a GPU net hands it host copies

    def layer_setup(self, bottom, top):
        p = self.param.seg_accuracy_param
        self.ignore_labels = sorted(set(p.ignore_label))
        self.confusion = np.zeros((bottom[0].shape[1],) * 2, np.int64)

    def reshape(self, bottom, top):
        scores, labels = bottom
        if len(scores.shape) != 4 or len(labels.shape) != 4:
            raise LayerError(f"SegAccuracy takes scores (N, C, H, W) and labels (N, 1, H, W), "
                             f"got shapes {scores.shape} and {labels.shape}")
        n, c, h, w = scores.shape
        if labels.shape != (n, 1, h, w):
            raise LayerError(f"the labels of shape {labels.shape} do not fit scores of shape "
                             f"{scores.shape}: they must be (N, 1, H, W) = {(n, 1, h, w)}")
        if c != len(self.confusion):
            raise LayerError(f"the scores now have {c} classes, the confusion matrix "
                             f"{len(self.confusion)}")
        top[0].reshape((1, 1, 1, 3))

    def forward(self, bottom, top):
        scores, labels = bottom[0].data, bottom[1].data
        c = scores.shape[1]
        with np.errstate(invalid="ignore"):
            truth = np.trunc(labels)
        bad = ~np.isin(truth, self.ignore_labels) & ~((truth >= 0) & (truth < c))
        if bad.any():
            where = tuple(int(k) for k in np.argwhere(bad)[0])
            raise LayerError(f"unexpected label {labels[where]:g} at (n, 0, h, w) = {where}: "
                             f"labels must be classes 0..{c - 1} or an ignore_label "
                             f"{self.ignore_labels}")
        if self.param.seg_accuracy_param.reset:
            self.confusion[...] = 0
        self.confusion += ops.seg_confusion_forward(scores, labels,
                                                    ignore_labels=self.ignore_labels)
        top[0].data[...] = np.reshape(ops.seg_accuracy_scores(self.confusion), (1, 1, 1, 3))

    def allow_force_backward(self, bottom_index):
        return False


def _source_names(source, strip, field):
    """MatWrite's and MatRead's file names: the first word of each line of ``source``, less its
    last ``strip`` characters (blank lines skipped)."""
    try:
        with open(source, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise LayerError(f"cannot read {field}.source '{source}': {e.strerror or e}") from None
    names = []
    for lineno, line in enumerate(lines, 1):
        words = line.split()
        if not words:
            continue
        if len(words[0]) <= strip:
            raise DataError(f"strip {strip} removes all of {words[0]!r}", source, lineno)
        names.append(words[0][:len(words[0]) - strip])
    return names


@register("MatWrite")
class MatWriteLayer(Layer):
    """DeepLab's `MatWrite`: writes each bottom to a MATLAB .mat file (what DeepLab's test nets
    do with fc8 scores for its DenseCRF post-processing), as util/matio_io.cpp's WriteBlobToMat:
    one variable "data", single (or double) precision, uncompressed MAT 5, of MATLAB shape
    width x height x channels x num (Caffe's memory order read column-major; blobs of fewer
    than 4 axes are num x channels x height x width with leading 1s).

    mat_write_param: prefix (required; glued to the name, directories are not created),
    source (a list whose first word per line, less its last ``strip`` characters, names the
    file of each forward: forward k writes prefix + name[k] + "_blob_<i>.mat" for bottom i;
    without a source, prefix + "iter_<k>_blob_<i>.mat"), period (write every period-th
    forward; the count goes on between writes). A forward past the end of the source list is
    an error, as in the fork. No tops, no gradient. Blank lines of the source are skipped
    (the fork stops at them: "Too much stripping")."""
    param_field = "mat_write_param"
    min_num_bottom = 1
    exact_num_top = 0
    host_only = True                    # writes NumPy arrays to a file

    def layer_setup(self, bottom, top):
        p = self.param.mat_write_param
        if not p.HasField("prefix"):
            raise LayerError("mat_write_param.prefix is required (where the .mat files go)")
        if p.period <= 0:
            raise LayerError(f"mat_write_param.period must be positive, got {p.period}")
        if p.strip < 0:
            raise LayerError(f"mat_write_param.strip cannot be negative, got {p.strip}")
        self.iter = 0
        self.names = None
        if p.HasField("source"):
            self.names = _source_names(p.source, p.strip, "mat_write_param")

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom):
            if len(b.shape) > 4:
                raise LayerError(f"bottom {i} has shape {b.shape}: MatWrite writes blobs of at "
                                 "most 4 axes (num x channels x height x width)")

    def forward(self, bottom, top):
        p = self.param.mat_write_param
        k, self.iter = self.iter, self.iter + 1
        if k % p.period:
            return
        if self.names is not None and k >= len(self.names):
            raise LayerError(f"forward {k + 1} but mat_write_param.source '{p.source}' names "
                             f"{len(self.names)} files: the test ran longer than its list")
        name = self.names[k] if self.names is not None else f"iter_{k}"
        savemat = need("scipy.io", "scipy").savemat
        for i, b in enumerate(bottom):
            data = np.asarray(b.data).reshape((1,) * (4 - len(b.shape)) + tuple(b.shape))
            path = f"{p.prefix}{name}_blob_{i}.mat"
            try:
                savemat(path, {"data": data.transpose(3, 2, 1, 0)}, format="5",
                        do_compression=False)
            except OSError as e:
                raise LayerError(f"cannot write '{path}' (mat_write_param.prefix "
                                 f"'{p.prefix}'): {e.strerror or e}") from None

    def allow_force_backward(self, bottom_index):
        return False                    # the fork's Backward_cpu does nothing


@register("DenseCRF")
class DenseCRFLayer(Layer):
    """DeepLab's `DenseCRF` (deeplab-public-ver2's densecrf_layer.cpp): the fully connected CRF
    that post-processes DeepLab's scores at test time, by mean-field inference over
    Krähenbühl's permutohedral lattice (minicnn.ops.densecrf explains what a dense CRF does and
    which of the fork's arithmetic is followed; in short: all of it, in float32).

    Bottoms: scores (N, M, H, W) (fc8 after Interp, the unary is -score), data_dim (N, ...)
    whose first two values per image are its real height and width (ImageSegData's third
    top), and optionally the image (N, 3, H, W) as the data layer gives it (mean-subtracted,
    BGR: its channels divided by bi_rgb_std are the bilateral kernel's colour features, so
    scale must be 1 for bi_rgb_std to mean grey levels, as the fork notes).
    Top: (N, M, H, W): the marginals Q (output_probability, the default) or log(max(Q,
    FLT_MIN)), on the image's real h x w at the top left, 0 elsewhere.

    dense_crf_param: max_iter (10; 0 gives softmax(score)), pos_w / pos_xy_std (one Gaussian
    kernel on (x, y) / pos_xy_std per pair, weight pos_w), bi_w / bi_xy_std / bi_rgb_std
    (one bilateral kernel on (x, y) / bi_xy_std and the three channels / bi_rgb_std per
    triple), output_probability (true); for example max_iter 10, pos_w 3, pos_xy_std 3,
    bi_w 4, bi_xy_std 121, bi_rgb_std 5.

    The crop, as the fork: when the blob is no larger than data_dim on both axes, the whole
    blob (the image was cropped); otherwise data_dim's h x w (the image was padded). Inference
    runs per image. No backward: a net that asks for one gets an error (the fork's
    Backward_cpu does nothing, leaving whatever the bottoms' diffs held).

    Where minicnn differs, deliberately: without the image bottom (two bottoms) it runs the
    positional kernels only (the fork's Reshape reads bottom[2] regardless and crashes); a
    data_dim larger than the blob on one axis only is an error (the fork reads past the
    blob); data_dim values below 1, negative max_iter and non-positive stds are errors (the
    fork makes an empty crop, runs no iteration, and divides by zero).

    DeepLab v1's V1 `DENSE_CRF` (its dense_crf_param has no output_probability) upgrades to
    this layer: v1's unary is -log(softmax(score)), which differs from -score by one constant
    per pixel, so its Q is the same up to float rounding; v1 always outputs Q."""
    param_field = "dense_crf_param"
    min_num_bottom, max_num_bottom = 2, 3
    exact_num_top = 1
    host_only = True                # NumPy lattice, per image

    def layer_setup(self, bottom, top):
        p = self.param.dense_crf_param
        if len(p.pos_w) != len(p.pos_xy_std):
            raise LayerError(f"dense_crf_param gives {len(p.pos_w)} pos_w and "
                             f"{len(p.pos_xy_std)} pos_xy_std: they pair up, one of each per "
                             "positional kernel")
        if not len(p.bi_w) == len(p.bi_xy_std) == len(p.bi_rgb_std):
            raise LayerError(f"dense_crf_param gives {len(p.bi_w)} bi_w, {len(p.bi_xy_std)} "
                             f"bi_xy_std and {len(p.bi_rgb_std)} bi_rgb_std: one of each per "
                             "bilateral kernel")
        if p.max_iter < 0:
            raise LayerError(f"dense_crf_param.max_iter cannot be negative, got {p.max_iter}")
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            bad = [v for v in getattr(p, name) if not v > 0]
            if bad:
                raise LayerError(f"dense_crf_param.{name} must be positive, got {bad[0]:g}")
        if len(bottom) == 3 and not len(p.bi_w):
            raise LayerError("DenseCRF has the image as a third bottom but no bilateral kernel "
                             "(dense_crf_param bi_w, bi_xy_std, bi_rgb_std), as the fork checks")

    def reshape(self, bottom, top):
        scores, dims = bottom[0], bottom[1]
        if len(scores.shape) != 4:
            raise LayerError(f"DenseCRF's scores must be (N, M, H, W), got shape {scores.shape}")
        n, _, h, w = scores.shape
        if dims.shape[0] != n or dims.count < 2 * n:
            raise LayerError(f"data_dim of shape {dims.shape} does not fit scores of shape "
                             f"{scores.shape}: it needs (height, width) for each of the {n} "
                             "images, as ImageSegData's (N, 1, 1, 2)")
        if len(bottom) == 3:
            image = bottom[2]
            if len(image.shape) != 4 or image.shape[0] != n or image.shape[1] != 3 or \
                    image.shape[2:] != (h, w):
                raise LayerError(f"the image of shape {image.shape} does not fit scores of "
                                 f"shape {scores.shape}: it must be (N, 3, H, W) = "
                                 f"{(n, 3, h, w)} (a color image the scores' size)")
        top[0].reshape(scores.shape)

    def _crop(self, dims, k, h, w):
        """The effective (height, width) of image k, as the fork picks it."""
        real = np.asarray(dims, np.float64).reshape(dims.shape[0], -1)[k, :2]
        rh, rw = int(real[0]), int(real[1])                  # the fork's int cast
        if h <= rh and w <= rw:
            return h, w
        if not (1 <= rh <= h and 1 <= rw <= w):
            raise LayerError(f"data_dim gives image {k} the size {real[0]:g} x {real[1]:g}, "
                             f"which does not fit the scores' {h} x {w}: give whole sizes "
                             "from 1 up to the blob's, or at least the blob's on both axes")
        return rh, rw

    def forward(self, bottom, top):
        p = self.param.dense_crf_param
        scores = bottom[0].data
        n, _, h, w = scores.shape
        out = np.zeros(scores.shape, top[0].dtype)
        for k in range(n):
            ch, cw = self._crop(bottom[1].data, k, h, w)
            image = bottom[2].data[k] if len(bottom) == 3 else None
            q = ops.dense_crf_forward(
                scores[k, :, :ch, :cw], image, max_iter=p.max_iter, pos_w=list(p.pos_w),
                pos_xy_std=list(p.pos_xy_std), bi_w=list(p.bi_w), bi_xy_std=list(p.bi_xy_std),
                bi_rgb_std=list(p.bi_rgb_std))
            q = q.astype(top[0].dtype)
            if not p.output_probability:
                q = np.log(np.maximum(q, top[0].dtype.type(np.finfo(np.float32).tiny)))
            out[k, :, :ch, :cw] = q
        top[0].data[...] = out

    def allow_force_backward(self, bottom_index):
        return False


@register("MatRead")
class MatReadLayer(Layer):
    """DeepLab's `MatRead` (deeplab-public-ver2's mat_read_layer.cpp): reads blobs back from
    the .mat files MatWrite wrote (util/matio_io.cpp's ReadBlobFromMat), to feed stored
    features (fc8 scores) to a net, as DeepLab's CRF tuning does.

    Tops: one per blob index i; each forward fills batch_size images: image n of a forward
    reads prefix + name + "_blob_<i>.mat", name being the next line of mat_read_param.source
    (its first word less its last ``strip`` characters; after the last line it starts over
    at the first, as the fork) or, without a source, "iter_<k>" for the k-th image read. A
    file holds a variable "data" of MATLAB shape width x height x channels x num (missing
    trailing axes are 1), num 1, of the net's precision (single for float32 nets: the fork
    checks the class), read column-major into a (1, channels, height, width) blob. The tops
    take their shapes from the first files at setup, and every file read later must have
    them. mat_read_param: prefix (required), source, strip, batch_size (1). No gradient.

    Where minicnn differs, deliberately: without a source, setup reads "iter_0" (the fork's
    setup reads the first name of an empty list); blank lines of the source are skipped (the
    fork stops at them: "Too much stripping")."""
    param_field = "mat_read_param"
    exact_num_bottom = 0
    min_num_top = 1
    host_only = True                    # reads files into NumPy arrays
    counters = ("iter",)                # where in the list the next forward reads

    def layer_setup(self, bottom, top):
        p = self.param.mat_read_param
        if not p.HasField("prefix"):
            raise LayerError("mat_read_param.prefix is required (where the .mat files are)")
        if p.batch_size <= 0:
            raise LayerError(f"mat_read_param.batch_size must be positive, got {p.batch_size}")
        if p.strip < 0:
            raise LayerError(f"mat_read_param.strip cannot be negative, got {p.strip}")
        self.iter = 0
        self.names = None
        if p.HasField("source"):
            self.names = _source_names(p.source, p.strip, "mat_read_param")
            if not self.names:
                raise DataError("names no files", p.source)
        for i, t in enumerate(top):
            t.reshape((p.batch_size, *self._read(self._path(0, i)).shape[1:]))

    def _path(self, k, i):
        p = self.param.mat_read_param
        name = self.names[k % len(self.names)] if self.names is not None else f"iter_{k}"
        return f"{p.prefix}{name}_blob_{i}.mat"

    def _read(self, path):
        """The blob (1, C, H, W) of a MatWrite file."""
        loadmat = need("scipy.io", "scipy").loadmat
        try:
            data = loadmat(path, squeeze_me=False, mat_dtype=False).get("data")
        except (OSError, ValueError, TypeError, NotImplementedError) as e:
            raise LayerError(f"cannot read '{path}' (mat_read_param.prefix "
                             f"'{self.param.mat_read_param.prefix}'): {e}") from None
        if data is None:
            raise LayerError(f"'{path}' has no variable 'data' (MatWrite's)")
        want = {np.dtype(np.float32): "single", np.dtype(np.float64): "double"}
        if data.dtype != self.dtype:
            raise LayerError(f"'{path}' holds {want.get(data.dtype, data.dtype)} data but the "
                             f"net is {want.get(self.dtype, self.dtype)}: the fork reads "
                             "only its own precision")
        if data.ndim > 4:
            raise LayerError(f"'{path}' holds data of {data.ndim} dimensions {data.shape}: at "
                             "most 4 (width x height x channels x num)")
        dims = tuple(data.shape) + (1,) * (4 - data.ndim)
        if dims[3] != 1:
            raise LayerError(f"'{path}' holds {dims[3]} images (width x height x channels x "
                             f"num = {dims}): MatRead reads one per file")
        return data.reshape(dims, order="A").transpose(3, 2, 1, 0)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        p = self.param.mat_read_param
        for n in range(p.batch_size):
            for i, t in enumerate(top):
                path = self._path(self.iter, i)
                blob = self._read(path)
                if blob.shape[1:] != t.shape[1:]:
                    raise LayerError(f"'{path}' holds a blob of channels x height x width "
                                     f"{blob.shape[1:]}, but top {i} has {t.shape[1:]} (from "
                                     "the first file)")
                t.data[n] = blob[0]
            self.iter += 1
        if self.names is not None:
            self.iter %= len(self.names)

    def allow_force_backward(self, bottom_index):
        return False
