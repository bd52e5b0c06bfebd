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
                                f"but the top has {shape}, from the first image (the fork shapes its "
                                "tops so): set crop_size", self.source_path, self.entries[i][2])
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
            try:
                with open(p.source, encoding="utf-8") as f:
                    lines = f.readlines()
            except OSError as e:
                raise LayerError(f"cannot read mat_write_param.source '{p.source}': "
                                 f"{e.strerror or e}") from None
            self.names = []
            for lineno, line in enumerate(lines, 1):
                words = line.split()
                if not words:
                    continue
                if len(words[0]) <= p.strip:
                    raise DataError(f"strip {p.strip} removes all of {words[0]!r}", p.source,
                                    lineno)
                self.names.append(words[0][:len(words[0]) - p.strip])

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
