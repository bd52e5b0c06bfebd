"""SSD's AnnotatedData layer (Wei Liu's fork, weiliu89/caffe branch ssd): AnnotatedDatum records
from an LMDB or LevelDB, with the fork's detection augmentation. The pipeline and its quirks are
described in minicnn.data.annotated."""

import warnings

import numpy as np

from minicnn.data.annotated import (
    Draws,
    apply_noise,
    apply_resize,
    as_box,
    check_noise,
    check_sampler,
    crop_sample,
    decode_sample,
    distort_channel_problem,
    distort_sample,
    expand_sample,
    generate_batch_samples,
    infer_new_size,
    label_rows,
    noise_channel_problem,
    transform_groups,
)
from minicnn.data.db import open_db
from minicnn.data.errors import DataError
from minicnn.data.transform import (
    DEEPLAB_SEG_ONLY,
    DataTransformer,
    merged_transform_param,
    refuse_transform,
    transform_sample,
)
from minicnn.errors import LayerError
from minicnn.layer import register
from minicnn.layers.data import (
    NATIVE_CHANNELS,
    _check_same_shape,
    _SourceDataLayer,
    check_mean_channels,
    warn_force_encoded_color,
)

F = np.float32


@register("AnnotatedData")
class AnnotatedDataLayer(_SourceDataLayer):
    """SSD's `AnnotatedData`: data_param gives source, batch_size and backend (records read in key
    order, wrapping around); annotated_data_param the batch_samplers (and anno_type, which
    overrides the records' type; label_map_file is kept but not read, as in the fork).
    Deliberately unlike the fork, anno_type also serves records stored without a type (the
    fork checks has_type() before applying anno_type, so such a record aborts unless a crop or
    expansion happened to set the type), and crop_h/crop_w also crop raw records (the fork
    crops those by crop_size only and fails its shape check). Encoded records are decoded as
    the fork's DataTransformer does: natively (IMREAD_UNCHANGED: gray 1 channel, alpha a 4th,
    not rotated by EXIF) unless transform_param.force_color / force_gray. A photo with an EXIF
    orientation stored as it is therefore decodes unrotated while its boxes are relative to
    the upright image, as in the fork (convert-annoset warns; force_color turns it upright).
    distort_param's brightness and contrast take any image, its saturation and hue turn B, G,
    R, A into B, G, R (OpenCV's HSV round trip, as the fork); a gray record with saturation,
    hue or random order, or one with alpha with random order, is an error naming the record. A
    distorted, expanded or cropped record is stored again as JPEG (an alpha channel dropped),
    and, but with FIT_SMALL_SIZE, must keep the channels of its batch's first record as stored
    (the fork's shape CHECK): an RGBA record first in its batch so distorted is an error. An
    RGBA record after a colour one passes that CHECK, as in the fork, and is read as B, G, R
    without its alpha (warned about once: the first such record named).

    Tops: data (N, C, H, W) and label. With annotated records (type BBOX) the label is
    1 x 1 x num_boxes x 8, one row (item_id, group_label, instance_id, xmin, ymin, xmax, ymax,
    difficult) per box of the batch, normalized to the output image, and one row of -1 when the
    batch has no box; records without a type give (N, 1, 1, 1) of their Datum labels.

    transform_param: resize_param (WARP, FIT_SMALL_SIZE with batch_size 1, FIT_LARGE_SIZE_AND_PAD;
    applied to encoded records only, as in the fork: a raw record must already have the output
    size), crop_size or crop_h/crop_w, mirror (boxes flipped), mean_value or mean_file, scale,
    emit_constraint (CENTER, MIN_OVERLAP), expand_param, distort_param and noise_param (encoded
    records, as in the fork; noise_param right after the resize, its ``prob`` unread as in the
    fork, convert_to_lab refused). The random draws of sample j of batch b come from a
    generator seeded by (layer seed, b, j), so runs resume exactly; they are not Caffe's
    stream.
    """
    param_field = "annotated_data_param"
    max_num_top = 2

    def _open(self, top):
        p, ap = self.param.data_param, self.param.annotated_data_param
        if not p.source:
            raise LayerError("data_param.source is required (the LMDB of AnnotatedDatum records)")
        if p.batch_size <= 0:
            raise LayerError("data_param.batch_size must be positive")
        refuse_transform(self, DEEPLAB_SEG_ONLY, "it is DeepLab's field (ImageSegData), which "
                         "SSD's fork does not know: give crop_h/crop_w or crop_size")
        warn_force_encoded_color(self)
        tp = merged_transform_param(self.param, "data_param")
        self.tp = tp
        if tp.HasField("noise_param"):
            check_noise(tp.noise_param)
        if tp.HasField("resize_param"):
            rp = tp.resize_param
            if rp.height <= 0 or rp.width <= 0:
                raise LayerError(f"transform_param.resize_param needs height and width > 0, "
                                 f"got {rp.height} x {rp.width}")
            if rp.resize_mode == "FIT_SMALL_SIZE" and p.batch_size != 1:
                raise LayerError("resize_param FIT_SMALL_SIZE needs data_param.batch_size 1 "
                                 f"(images keep their aspect ratio), got {p.batch_size}")
        if tp.HasField("expand_param") and not tp.expand_param.max_expand_ratio > 1:
            raise LayerError("expand_param.max_expand_ratio must be > 1, got "
                             f"{tp.expand_param.max_expand_ratio}")
        self.samplers = list(ap.batch_sampler)
        for bs in self.samplers:
            check_sampler(bs.sampler)
        self.batch_size, self.rand_skip, self.prefetch = p.batch_size, p.rand_skip, p.prefetch
        self.source_path = self.resolve(p.source, what="data source")
        self.db = open_db(self.source_path, p.backend)
        self.num_samples = len(self.db)
        self.transformer = DataTransformer(tp, self.phase, self.dtype,
                                           resolve=lambda f: self.resolve(f, what="mean file"))
        self.crop_h = self.crop_w = int(tp.crop_size)
        if not tp.crop_size:
            self.crop_h, self.crop_w = int(tp.crop_h), int(tp.crop_w)
        self._warned_channels = self._warned_alpha = False
        self._alpha_dropped = {}        # batch -> its first record whose alpha JPEG dropped
        if not self.num_samples:
            return []
        first = self._decode(self.db.keys[self.sample_ids(0)[0]])
        if tp.HasField("noise_param") and first.encoded:
            problem = noise_channel_problem(tp.noise_param, first.image.shape[0])
            if problem:
                raise LayerError(problem)
        self.anno_type = ap.anno_type if ap.HasField("anno_type") else None
        self.has_anno = first.has_type or self.anno_type is not None
        shape = (self.batch_size, *self._out_shape(first))
        if self.has_anno:
            boxes = sum(len(a) for _, a in first.groups)
            label = (1, 1, max(boxes, 1), 8)
        else:
            label = (self.batch_size, 1, 1, 1)
        return [shape, label][:len(top)]

    def _decode(self, key, value=None):
        where = f"{self.source_path} record {key.decode(errors='replace')!r}"
        value = self.db.get(key) if value is None else value
        return decode_sample(value, self.transformer.is_color, where)

    def _out_shape(self, sample):
        """InferBlobShape: the resize size (encoded records), then the crop."""
        c, h, w = sample.image.shape
        if self.tp.HasField("resize_param"):
            w, h = infer_new_size(self.tp.resize_param, w, h)
        if self.crop_h > h or self.crop_w > w:
            raise LayerError(f"crop {self.crop_h} x {self.crop_w} is larger than the image "
                             f"({h} x {w})")
        return c, self.crop_h or h, self.crop_w or w

    def forward(self, bottom, top):
        position = self._prefetcher.position
        super().forward(bottom, top)
        self._warn_other_channels(top[0].shape[1], position)
        name = self._alpha_dropped.pop(position, None)
        if name and not self._warned_alpha:
            self._warned_alpha = True
            warnings.warn(f"layer '{self.name}' ({self.type}): {name} decodes to 4 channels "
                          "(B, G, R, A) and distort_param, expand_param or a batch_sampler "
                          "crop stored it again as JPEG, which drops its alpha: it fits its "
                          "batch's 3 channels and is read as B, G, R, transparent pixels "
                          "showing their stored colour, as in the fork; transform_param "
                          "force_color reads every record so (the alpha dropped) without this "
                          "warning, or flatten the images before convert-annoset",
                          stacklevel=2)

    # --- one sample ---
    def transform(self, sample, draws, name="the record"):
        """(data CHW, groups) of a sample after the fork's DataTransformer::Transform
        (``name``: the record, for error messages)."""
        tp = self.tp
        emit = tp.emit_constraint if tp.HasField("emit_constraint") else None
        mirror = bool(tp.mirror) and draws.rand(2) == 1
        image = sample.image
        _, h0, w0 = image.shape
        rp = tp.resize_param if tp.HasField("resize_param") else None
        if sample.encoded and rp is not None:
            interp = "LINEAR"
            if len(rp.interp_mode):
                interp = rp.interp_mode[draws.rand(len(rp.interp_mode))]
            image = apply_resize(image, rp, interp)
        elif rp is not None:
            want = infer_new_size(rp, w0, h0)
            if want != (w0, h0):
                raise DataError(f"a raw (not encoded) record of {h0} x {w0} with resize_param "
                                f"{want[1]} x {want[0]}: the fork resizes encoded records only")
        if sample.encoded and tp.HasField("noise_param"):
            image = apply_noise(image, tp.noise_param, draws)
        c, h, w = image.shape
        ch, cw = self.crop_h or h, self.crop_w or w
        if ch > h or cw > w:
            raise DataError(f"crop {ch} x {cw} is larger than the image ({h} x {w})")
        h_off = w_off = 0
        if self.crop_h and self.crop_w:
            if self.phase == "TRAIN":
                h_off, w_off = draws.rand(h - ch + 1), draws.rand(w - cw + 1)
            else:
                h_off, w_off = (h - ch) // 2, (w - cw) // 2
        crop = as_box(F(w_off) / F(w), F(h_off) / F(h), F(w_off + cw) / F(w),
                      F(h_off + ch) / F(h))
        t = self.transformer
        if t.mean is not None and t.mean.ndim == 3 and t.mean.shape != image.shape:
            raise DataError(f"the mean file {t.mean_file} has shape {t.mean.shape} but the "
                            f"image is {image.shape}")
        if t.mean is not None and t.mean.ndim == 1:
            check_mean_channels(t, image, name, sample.encoded)
        if t.mean is not None and t.mean.ndim == 1 and len(t.mean) not in (1, c):
            raise LayerError(f"{len(t.mean)} mean_value values for data with {c} channels: "
                             "give one, or one per channel")
        data = transform_sample(image, ch, cw, h_off, w_off, mirror, t.mean, t.scale, t.dtype)
        groups = transform_groups(sample.groups, crop, mirror, emit, resize=rp, size=(w0, h0))
        return data, groups

    def prepare(self, sample, draws, name="the record"):
        """Distortion, expansion, then the batch samplers' crop (the fork's order)."""
        tp = self.tp
        emit = tp.emit_constraint if tp.HasField("emit_constraint") else None
        native = sample.encoded and self.transformer.is_color is None
        if tp.HasField("distort_param"):
            problem = distort_channel_problem(tp.distort_param, sample.image.shape[0])
            if problem and sample.encoded:
                raise DataError(f"{name}: {problem}" + (f" ({NATIVE_CHANNELS})" if native
                                                         else ""))
            sample = distort_sample(sample, tp.distort_param, draws)
        if tp.HasField("expand_param"):
            mean = self.transformer.mean
            if mean is not None and mean.ndim == 1:       # the fork's ExpandImage CHECKs it
                check_mean_channels(self.transformer, sample.image, name, sample.encoded)
            sample = expand_sample(sample, tp.expand_param, mean, draws, emit)
        if self.samplers:
            boxes = generate_batch_samples(sample.groups, self.samplers, draws)
            if boxes:
                sample = crop_sample(sample, boxes[draws.rand(len(boxes))], emit)
        return sample

    def _load(self, ids, b):
        keys = [self.db.keys[i] for i in ids]
        datas, all_groups, labels = [], [], []
        names = [f"record {k.decode(errors='replace')!r} of {self.source_path}" for k in keys]
        first = stored = None
        per_sample = self.tp.resize_param.resize_mode == "FIT_SMALL_SIZE" \
            if self.tp.HasField("resize_param") else False
        for j, (key, value) in enumerate(zip(keys, self.db.get_many(keys))):
            sample = self._decode(key, value)
            if self.has_anno and not sample.has_type and self.anno_type is None:
                raise DataError("record has no annotation type but the first one has",
                                f"{self.source_path} record {key.decode(errors='replace')!r}")
            draws = Draws(np.random.default_rng(
                [self.seed, b, 1, self.shard_rank * self.batch_size + j]))
            channels = sample.image.shape[0]
            stored = channels if stored is None else stored   # the fork's top shape: record 0
            sample = self.prepare(sample, draws, names[j])
            first = sample.image if first is None else first
            if sample.image.shape[0] != first.shape[0]:     # channels first, as the fork
                _check_same_shape([first, sample.image], [names[0], names[j]])
            if sample.image.shape[0] != stored and not per_sample:
                raise DataError(_jpeg_channels_message(names, j, sample.image.shape[0], stored))
            if channels == 4 and sample.image.shape[0] == 3 and not self._warned_alpha:
                self._alpha_dropped.setdefault(b, names[j])     # forward warns (main thread)
            data, groups = self.transform(sample, draws, names[j])
            if datas and data.shape != datas[0].shape:
                raise DataError(f"record {key.decode(errors='replace')!r} of {self.source_path}"
                                f" gives data of shape {data.shape}, the first of its batch "
                                f"{datas[0].shape}: records of a batch must give one size")
            datas.append(data)
            all_groups.append(groups)
            labels.append(sample.label)
        data = np.stack(datas)
        if self.has_anno:
            return data, label_rows(all_groups)
        return data, np.asarray(labels, self.dtype).reshape(-1, 1, 1, 1)


def _jpeg_channels_message(names, j, channels, stored):
    """The fork's shape CHECK on a sample whose distortion, expansion or crop changed its
    channels (stored again as JPEG, an RGBA image has 3) from those of the batch's first record
    as stored, by which it shaped the batch."""
    which = "it" if j == 0 else f"the batch's first record, {names[0]},"
    return (f"{names[j]} has {channels} channel(s) after distort_param, expand_param or a "
            f"batch_sampler crop, but {which} decodes to {stored}, which shapes the batch, as "
            "in the fork (its CHECK on each sample's shape fails): a distorted, expanded or "
            "cropped encoded image is stored again as JPEG, which drops an alpha channel; "
            "transform_param force_color decodes every record to 3 channels")
