"""SegmentationData: images and their per-pixel labels, augmented together (minicnn's own data
layer for dense prediction; the pixel work is in minicnn.data.segmentation)."""

import os

import numpy as np

from minicnn.data.db import root_joined
from minicnn.data.errors import DataError, need
from minicnn.data.segmentation import augment_pair, read_pair, read_pair_list
from minicnn.data.transform import (
    DEEPLAB_SEG_ONLY,
    SSD_ANNOTATED_ONLY,
    SSD_TRANSFORMER,
    refuse_transform,
)
from minicnn.errors import LayerError
from minicnn.layer import register
from minicnn.layers.data import _SourceDataLayer


@register("SegmentationData")
class SegmentationDataLayer(_SourceDataLayer):
    """Images with label images for a per-pixel loss. ``source`` lists ``image_path
    label_path`` pairs (relative paths are found from the current folder, then beside the list,
    then beside the prototxt; ``root_folder`` is prepended to both). Images are decoded as BGR
    (gray with is_color: false); a label image holds one class id per pixel (8-bit gray or
    palette PNG) and must have its image's size.

    segmentation_data_param: batch_size, shuffle (a new order every epoch), crop_size (0: the
    whole image, and the images of a batch must share a size), mirror, scale_min / scale_max
    (random rescale), ignore_label (255; what the padding of a crop larger than the image is
    labelled), is_color, root_folder, rand_skip, prefetch. In TRAIN each pair is rescaled by a
    factor drawn from [scale_min, scale_max], padded and cropped at a random place, and flipped
    with probability 1/2 when mirror is set, the labels moving with the image; in TEST the crop
    is centred and nothing is drawn. transform_param gives scale and mean_value (its crop_size
    and mirror would not move the labels: use this layer's). Tops: data (N, C, H, W) and labels
    (N, 1, H, W) holding class ids as floats, for SoftmaxWithLoss and Accuracy."""
    param_field = "segmentation_data_param"
    max_num_top = 2

    def _open(self, top):
        p = self.param.segmentation_data_param
        if not p.source:
            raise LayerError("segmentation_data_param.source is required (the list of "
                             "`image label` pairs)")
        if p.batch_size <= 0:
            raise LayerError("segmentation_data_param.batch_size must be positive")
        if not 0 < p.scale_min <= p.scale_max:
            raise LayerError(f"segmentation_data_param needs 0 < scale_min <= scale_max, got "
                             f"{p.scale_min:g} and {p.scale_max:g}")
        tp = self.param.transform_param
        refuse_transform(self, SSD_TRANSFORMER + SSD_ANNOTATED_ONLY + DEEPLAB_SEG_ONLY
                         + ("force_color", "force_gray"),
                         "SegmentationData takes transform_param scale and mean_value only")
        if tp.crop_size or tp.mirror or tp.HasField("mean_file"):
            raise LayerError("SegmentationData takes transform_param scale and mean_value "
                             "only: crop_size and mirror would not move the labels (use "
                             "segmentation_data_param crop_size and mirror), mean_file is not "
                             "supported")
        self.batch_size, self.shuffle, self.rand_skip = p.batch_size, p.shuffle, p.rand_skip
        self.prefetch = p.prefetch
        need("PIL.Image", "Pillow")
        self.source_path = self.resolve(p.source, what="segmentation list file")
        self.entries = read_pair_list(self.source_path)
        self.num_samples = len(self.entries)
        self.training = self.phase == "TRAIN"
        self.mean = np.asarray(tp.mean_value, self.dtype) if len(tp.mean_value) else None
        image, _ = self._read(self.sample_ids(0)[0])
        if self.mean is not None and len(self.mean) not in (1, image.shape[0]):
            raise LayerError(f"{len(self.mean)} mean_value values for images with "
                             f"{image.shape[0]} channels: give one, or one per channel")
        hw = (p.crop_size, p.crop_size) if p.crop_size else image.shape[1:]
        return [(self.batch_size, image.shape[0], *hw), (self.batch_size, 1, *hw)][:len(top)]

    def _path(self, name, lineno):
        p = self.param.segmentation_data_param
        path = root_joined(p.root_folder, name)
        try:
            return self.resolve(path, os.path.dirname(self.source_path))
        except DataError as e:
            raise DataError(f"'{path}': {e.reason}", self.source_path, lineno) from None

    def _read(self, i):
        image_name, label_name, lineno = self.entries[i]
        try:
            return read_pair(self._path(image_name, lineno), self._path(label_name, lineno),
                             self.param.segmentation_data_param.is_color)
        except DataError as e:
            raise DataError(f"{e}", self.source_path, lineno) from None

    def _load(self, ids, b):
        p = self.param.segmentation_data_param
        rng = np.random.default_rng([self.seed, b, 1]) if self.training else None
        pairs = []
        for i in ids:
            image, label = self._read(i)
            pairs.append(augment_pair(
                image, label, rng, crop=p.crop_size, mirror=p.mirror,
                scale_range=(p.scale_min, p.scale_max), mean=self.mean,
                scale=float(self.param.transform_param.scale), ignore_label=p.ignore_label,
                dtype=self.dtype))
        shape = pairs[0][0].shape
        for i, (data, _) in zip(ids, pairs):
            if data.shape != shape:
                raise DataError(f"image '{self.entries[i][0]}' gives shape {data.shape} but the "
                                f"first of its batch gives {shape}: set crop_size, or use "
                                "batch_size 1", self.source_path, self.entries[i][2])
        return np.stack([d for d, _ in pairs]), np.stack([lab for _, lab in pairs])
