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
"""

import numpy as np

from minicnn.blob import blob_proto_to_array
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


def merged_transform_param(layer_param, own_field):
    """The layer's transform_param with the legacy fields of its own parameter (data_param or
    image_data_param: scale, mean_file, crop_size, mirror) moved in, as Caffe's upgrade does."""
    tp = layer_param.transform_param.copy()
    own = getattr(layer_param, own_field)
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        if name in type(own).DESCRIPTOR.fields_by_name and own.HasField(name):
            setattr(tp, name, getattr(own, name))
    return tp


class DataTransformer:
    """A TransformationParameter ready to apply: the mean loaded, checked against each sample
    shape, and the random draws of one sample made from a given generator."""

    def __init__(self, param, phase, dtype=np.float32, resolve=None):
        """``resolve`` turns the mean_file path into a readable path (default: as given)."""
        self.param, self.phase, self.dtype = param, phase, np.dtype(dtype)
        self.crop = int(param.crop_size)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
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

    def check(self, shape):
        """Validate a sample shape (C, H, W) against crop and mean; return the output shape."""
        shape = tuple(shape)
        c, h, w = shape
        if shape not in self._checked:
            if self.crop and (self.crop > h or self.crop > w):
                raise LayerError(f"crop_size {self.crop} is larger than the image ({h} x {w})")
            if self.mean_file is not None and self.mean.shape != shape:
                raise LayerError(f"the mean file {self.mean_file} has shape "
                                 f"{'x'.join(map(str, self.mean.shape))} but the data is "
                                 f"{c}x{h}x{w} (the mean must be the full image size)")
            if self.mean_file is None and self.mean is not None \
                    and len(self.mean) not in (1, c):
                raise LayerError(f"{len(self.mean)} mean_value values for data with {c} "
                                 "channels: give one, or one per channel")
            self._checked.add(shape)
        return (c, self.crop, self.crop) if self.crop else shape

    def draw(self, rng, shape):
        """(mirror, h_off, w_off) of one sample of ``shape``, drawn from ``rng`` as Caffe draws:
        mirror first (if asked), then the crop offsets (random in TRAIN, centred in TEST)."""
        _, h, w = shape
        mirror = bool(rng.integers(2)) if self.mirror else False
        h_off = w_off = 0
        if self.crop:
            if self.phase == "TRAIN":
                h_off = int(rng.integers(h - self.crop + 1))
                w_off = int(rng.integers(w - self.crop + 1))
            else:
                h_off, w_off = (h - self.crop) // 2, (w - self.crop) // 2
        return mirror, h_off, w_off

    def __call__(self, x, rng):
        """The transformed sample (a new array in the transformer's dtype)."""
        self.check(x.shape)
        mirror, h_off, w_off = self.draw(rng, x.shape)
        return transform_sample(x, self.crop, self.crop, h_off, w_off, mirror, self.mean,
                                self.scale, self.dtype)
