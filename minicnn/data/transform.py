"""Caffe's DataTransformer: crop, mirror, mean subtraction and scale of one CHW sample.

    out[c, h, w'] = (x[c, h0 + h, w0 + w] - mean[c, h0 + h, w0 + w]) * scale
        with w' = crop_w - 1 - w when mirrored, else w

- crop (``crop_size``): the offset (h0, w0) is uniform in [0, H - crop] in TRAIN and the centre
  ((H - crop) // 2) in TEST; without crop_size the whole image is used.
- mirror: a coin flip per sample in *both* phases (Caffe flips at test time too when asked).
- mean: a ``mean_file`` (.binaryproto of the full image size; it is indexed at the source pixel,
  so it is cropped with the data) or ``mean_value`` (one value, or one per channel).
- scale multiplies after the mean is subtracted.

Per sample, the draws are made in Caffe's order: mirror, then h0, then w0. ``transform_sample`` is
the pure function; ``DataTransformer`` reads a TransformationParameter and draws the offsets.

SSD's fork (weiliu89/caffe, branch ssd) adds steps to DataTransformer::Transform, which its
plain Data and ImageData layers run too (AnnotatedData has its own pipeline, in
minicnn.layers.annotated_data). On an image (ImageData's images, Data's *encoded* records):
mirror's coin, then resize_param (ApplyResize: WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD; one
of interp_mode drawn when several are given), then noise_param (ApplyNoise, ``prob`` unread as in
the fork), then the crop: crop_size, or crop_h x crop_w when crop_size is 0 (both needed), random
in TRAIN and centred in TEST, then mean and scale. A *raw* record takes the fork's datum path,
which has neither a resize nor a noise step: resize_param must leave its size as it is (the
fork's shape check fails otherwise, here a DataError), noise_param leaves it alone. Deliberately
unlike the fork: crop_h/crop_w crop raw records too (the fork crops those by crop_size only and
fails its shape check), and a TRAIN crop by crop_h/crop_w draws its offsets without mirror or
crop_size set (the fork's generator exists only for those, so its Rand check aborts).
"""

import warnings

import numpy as np

from minicnn.blob import blob_proto_to_array
from minicnn.data.annotated import (
    Draws,
    apply_noise,
    apply_resize,
    check_noise,
    infer_new_size,
    noise_channel_problem,
    saltpepper_count,
)
from minicnn.data.errors import DataError
from minicnn.errors import LayerError, MinicnnError


def transform_sample(x, crop_h=0, crop_w=0, h_off=0, w_off=0, mirror=False, mean=None,
                     scale=1.0, dtype=np.float32):
    """(x - mean) * scale on the crop window of a CHW array, flipped along W if ``mirror``.

    ``mean`` is None, a CHW array of x's full shape (cropped with x), or a per-channel vector /
    scalar. Arithmetic is in ``dtype``, as Caffe's Dtype.
    """
    x = np.asarray(x)
    _, height, width = x.shape
    crop_h, crop_w = crop_h or height, crop_w or width
    window = (slice(None), slice(h_off, h_off + crop_h), slice(w_off, w_off + crop_w))
    out = x[window].astype(dtype)
    if mean is not None:
        mean = np.asarray(mean, dtype)
        if mean.ndim == 3:
            out -= mean[window]
        else:
            out -= mean.reshape(-1, 1, 1)
    if scale != 1:
        out *= np.dtype(dtype).type(scale)
    if mirror:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def merged_transform_param(layer_param, own_field, read=()):
    """The layer's transform_param, with the legacy fields of its own parameter (data_param,
    image_data_param or window_data_param: scale, mean_file, crop_size, mirror) that the layer
    still reads (``read``: WindowData's scale) moved in. The others are ignored with a warning,
    as Caffe 1.0 ignores them: its upgrade moves them into transform_param in a V1 ``layers``
    entry only (minicnn's upgrade_net does the same), and its data layers read transform_param
    alone, so in a ``layer`` they never took effect."""
    tp = layer_param.transform_param.copy()
    own = getattr(layer_param, own_field)
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        if name in read and own.HasField(name):
            setattr(tp, name, getattr(own, name))
        elif name in type(own).DESCRIPTOR.fields_by_name and own.HasField(name):
            warnings.warn(f"layer '{layer_param.name}' ({layer_param.type}) ignores "
                          f"{own_field}.{name}: Caffe moves it into transform_param only in "
                          "a V1 'layers' definition and ignores it in a 'layer', as minicnn "
                          f"does; write transform_param {{ {name}: ... }}", stacklevel=3)
    return tp


class DataTransformer:
    """A TransformationParameter ready to apply: the mean loaded, checked against each sample
    shape, and the random draws of one sample made from a given generator."""

    def __init__(self, param, phase, dtype=np.float32, resolve=None):
        """``resolve`` turns the mean_file path into a readable path (default: as given)."""
        self.param, self.phase, self.dtype = param, phase, np.dtype(dtype)
        self.crop = int(param.crop_size)
        self.crop_h = self.crop_w = self.crop          # crop_size wins, as in SSD's fork
        if not self.crop and (param.crop_h or param.crop_w):
            if not (param.crop_h and param.crop_w):
                raise LayerError(f"transform_param: give both crop_h and crop_w (got crop_h "
                                 f"{param.crop_h}, crop_w {param.crop_w}); SSD's fork crops "
                                 "only when both are set")
            self.crop_h, self.crop_w = int(param.crop_h), int(param.crop_w)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.resize = param.resize_param if param.HasField("resize_param") else None
        if self.resize is not None and not (self.resize.height > 0 and self.resize.width > 0):
            raise LayerError(f"transform_param.resize_param needs height and width > 0, got "
                             f"{self.resize.height} x {self.resize.width}")
        self.noise = param.noise_param if param.HasField("noise_param") else None
        if self.noise is not None:
            check_noise(self.noise)
        if param.force_color and param.force_gray:
            raise LayerError("transform_param: force_color and force_gray cannot both be set")
        self.is_color = True if param.force_color else False if param.force_gray else None
        if param.HasField("mean_file") and len(param.mean_value):
            raise LayerError("transform_param: give mean_file or mean_value, not both")
        self.mean_file = None
        self.mean = None
        if param.HasField("mean_file"):
            from minicnn.proto import read_binary
            path = resolve(param.mean_file) if resolve else param.mean_file
            try:
                mean = blob_proto_to_array(read_binary(path, "BlobProto"))
            except MinicnnError as e:
                raise DataError(f"cannot read the mean file: {e}", param.mean_file) from None
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise DataError(f"the mean file holds a blob of shape {mean.shape}; expected "
                                "1 x C x H x W", param.mean_file)
            self.mean_file, self.mean = param.mean_file, mean.astype(self.dtype)
        elif len(param.mean_value):
            self.mean = np.asarray(param.mean_value, self.dtype)
        self._checked = set()

    def resized_shape(self, shape, encoded=True):
        """The shape after resize_param: (C, H, W) of the image the crop is taken from."""
        c, h, w = shape
        if self.resize is None:
            return tuple(shape)
        new_w, new_h = infer_new_size(self.resize, w, h)
        if not encoded and (new_h, new_w) != (h, w):
            raise DataError(f"a raw (not encoded) record of {h} x {w} with resize_param "
                            f"{new_h} x {new_w}: SSD's fork resizes encoded records and images "
                            "only (its raw-datum transform fails the shape check)")
        return (c, new_h, new_w)

    def check(self, shape, encoded=True):
        """Validate a sample shape (C, H, W) against resize, noise, crop and mean; return the
        output shape. ``encoded``: an image (resized and noised) rather than a raw record."""
        resized = self.resized_shape(shape, encoded)
        if encoded and self.noise is not None and (resized, "noise") not in self._checked:
            problem = noise_channel_problem(self.noise, resized[0])
            if problem:
                raise LayerError(problem)
            self._checked.add((resized, "noise"))
        return self._check_resized(resized)

    def _check_resized(self, shape):
        """check() of the image the crop is taken from (after any resize)."""
        c, h, w = shape = tuple(shape)
        if shape not in self._checked:
            if self.crop_h and (self.crop_h > h or self.crop_w > w):
                what = f"crop_size {self.crop}" if self.crop else \
                    f"crop_h x crop_w {self.crop_h} x {self.crop_w}"
                raise LayerError(f"{what} is larger than the image ({h} x {w})")
            if self.mean_file is not None and self.mean.shape != shape:
                raise LayerError(f"the mean file {self.mean_file} has shape "
                                 f"{'x'.join(map(str, self.mean.shape))} but the data is "
                                 f"{c}x{h}x{w} (the mean must be the full image size)")
            if self.mean_file is None and self.mean is not None \
                    and len(self.mean) not in (1, c):
                raise LayerError(f"{len(self.mean)} mean_value values for data with {c} "
                                 "channels: give one, or one per channel")
            self._checked.add(shape)
        return (c, self.crop_h, self.crop_w) if self.crop_h else shape

    def draw(self, rng, shape):
        """(mirror, h_off, w_off) of one sample of ``shape``, drawn from ``rng`` as Caffe draws:
        mirror first (if asked), then the crop offsets (random in TRAIN, centred in TEST)."""
        mirror = bool(rng.integers(2)) if self.mirror else False
        return (mirror, *self._offsets(rng, shape))

    def _offsets(self, rng, shape):
        _, h, w = shape
        h_off = w_off = 0
        if self.crop_h:
            if self.phase == "TRAIN":
                h_off = int(rng.integers(h - self.crop_h + 1))
                w_off = int(rng.integers(w - self.crop_w + 1))
            else:
                h_off, w_off = (h - self.crop_h) // 2, (w - self.crop_w) // 2
        return h_off, w_off

    def skip(self, rng, shape, encoded=True):
        """Make the draws of one sample of ``shape`` (as __call__ would) and drop them, without
        its pixel work: the resize and the noise keep no draws that depend on pixels (the
        interp_mode pick; saltpepper's two per pixel set, as many as the resized size gives)."""
        if not (encoded and (self.resize is not None or self.noise is not None)):
            self.draw(rng, self.resized_shape(shape, encoded))
            return
        self.check(shape, encoded)
        if self.mirror:
            rng.integers(2)
        if self.resize is not None and len(self.resize.interp_mode):
            rng.integers(len(self.resize.interp_mode))
        c, rows, cols = resized = self.resized_shape(shape, encoded)
        if self.noise is not None and self.noise.saltpepper and c in (1, 3):
            for _ in range(saltpepper_count(self.noise.saltpepper_param, rows, cols)):
                rng.integers(cols)
                rng.integers(rows)
        self._check_resized(resized)
        self._offsets(rng, resized)

    def batch(self, samples, rng, encoded):
        """``np.stack([self(x, rng, e) for x, e in zip(samples, encoded)])``, the same draws
        and values, for samples of one shape that take no resize or noise: cut into one array,
        the mean and scale applied to the whole batch at once (one sample at a time, the NumPy
        calls cost more than their arithmetic: half the MNIST data thread's time). None, with
        nothing drawn, for other batches: transform those one by one."""
        shape = samples[0].shape
        if any(e and (self.resize is not None or self.noise is not None) for e in encoded) \
                or any(x.shape != shape for x in samples):
            return None
        for kind in dict.fromkeys(encoded):            # the first sample's kind first
            _, crop_h, crop_w = out_shape = self.check(shape, kind)
        out = np.empty((len(samples), *out_shape), self.dtype)
        mean = self.mean
        full_mean = mean is not None and mean.ndim == 3
        for j, (x, e) in enumerate(zip(samples, encoded)):
            mirror, h_off, w_off = self.draw(rng, self.resized_shape(shape, e))
            window = (slice(None), slice(h_off, h_off + crop_h), slice(w_off, w_off + crop_w))
            flip = slice(None, None, -1) if mirror else slice(None)
            out[j] = x[window][:, :, flip]
            if full_mean:                       # the mean file, at the source pixels
                out[j] -= mean[window][:, :, flip]
        if mean is not None and not full_mean:
            out -= mean.reshape(1, -1, 1, 1)
        if self.scale != 1:
            out *= self.dtype.type(self.scale)
        return out

    def __call__(self, x, rng, encoded=True):
        """The transformed sample (a new array in the transformer's dtype). ``encoded``: x is
        a decoded image, which SSD's resize_param and noise_param apply to."""
        self.check(x.shape, encoded)
        if not (encoded and (self.resize is not None or self.noise is not None)):
            mirror, h_off, w_off = self.draw(rng, self.resized_shape(x.shape, encoded))
            return transform_sample(x, self.crop_h, self.crop_w, h_off, w_off, mirror,
                                    self.mean, self.scale, self.dtype)
        draws = Draws(rng)
        mirror = bool(rng.integers(2)) if self.mirror else False       # the fork's order
        if self.resize is not None:
            interp = "LINEAR"
            if len(self.resize.interp_mode):
                interp = self.resize.interp_mode[draws.rand(len(self.resize.interp_mode))]
            x = apply_resize(x, self.resize, interp)
        if self.noise is not None:
            x = apply_noise(x, self.noise, draws)
        self._check_resized(x.shape)                # FIT_SMALL_SIZE: each image its size
        h_off, w_off = self._offsets(rng, x.shape)
        return transform_sample(x, self.crop_h, self.crop_w, h_off, w_off, mirror, self.mean,
                                self.scale, self.dtype)


# Fields of transform_param that only some layers read, and where the fork reads them.
SSD_ANNOTATED_ONLY = ("distort_param", "expand_param", "emit_constraint")
SSD_TRANSFORMER = ("resize_param", "noise_param", "crop_h", "crop_w")
DEEPLAB_SEG_ONLY = ("scale_factors", "crop_width", "crop_height")
ALL_TRANSFORM_FIELDS = ("scale", "mirror", "crop_size", "mean_file", "mean_value", "force_color",
                        "force_gray") + SSD_TRANSFORMER + SSD_ANNOTATED_ONLY + DEEPLAB_SEG_ONLY
_WHERE = {"distort_param": "SSD's AnnotatedData",
          "expand_param": "SSD's AnnotatedData",
          "emit_constraint": "SSD's AnnotatedData (its box labels)",
          "resize_param": "SSD's AnnotatedData, Data and ImageData",
          "noise_param": "SSD's AnnotatedData, Data and ImageData",
          "crop_h": "SSD's AnnotatedData, Data and ImageData",
          "crop_w": "SSD's AnnotatedData, Data and ImageData",
          "scale_factors": "DeepLab's ImageSegData",
          "crop_width": "DeepLab's ImageSegData",
          "crop_height": "DeepLab's ImageSegData",
          "force_color": "Data (encoded records; ImageData and WindowData read image_data_param"
                         ".is_color or always colour)",
          "force_gray": "Data (encoded records; ImageData and WindowData read image_data_param"
                        ".is_color or always colour)"}


def warn_unread_transform(layer, fields, why=None):
    """Warn (once per message) for each of ``fields`` set in ``layer``'s transform_param: the
    fork this layer comes from ignores it there, and so does minicnn. ``why`` replaces the
    default reason."""
    tp = layer.param.transform_param
    for name in fields:
        if tp.HasField(name):
            reason = why or f"it is read by {_WHERE.get(name, 'other layers')} only"
            warnings.warn(f"layer '{layer.name}' ({layer.type}) ignores transform_param.{name}: "
                          f"{reason}, and Caffe's {layer.type} ignores it too", stacklevel=2)


def refuse_transform(layer, fields, why):
    """A LayerError for the first of ``fields`` set in ``layer``'s transform_param."""
    tp = layer.param.transform_param
    for name in fields:
        if tp.HasField(name):
            raise LayerError(f"layer '{layer.name}' ({layer.type}) does not read "
                             f"transform_param.{name}: {why}")
