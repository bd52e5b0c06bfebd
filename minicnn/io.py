"""Images in and out of nets, as pycaffe's caffe.io does it.

    image = minicnn.io.load_image("cat.jpg")            # float32 H x W x 3, RGB, in [0, 1]
    t = minicnn.io.Transformer({"data": net.blobs["data"].shape})
    t.set_transpose("data", (2, 0, 1))                  # HWC -> CHW
    t.set_channel_swap("data", (2, 1, 0))               # RGB -> BGR, the order Caffe nets see
    t.set_raw_scale("data", 255)                        # [0, 1] -> [0, 255]
    t.set_mean("data", np.array([104, 117, 123]))       # per-channel BGR mean
    net.blobs["data"].data[0] = t.preprocess("data", image)

    x = minicnn.io.preprocess("cat.jpg")               # the usual recipe in one call

Transformer.preprocess applies, in caffe.io's order: resize to the input's H x W (if it
differs), transpose, channel swap, raw scale, mean subtraction, input scale. The usual
ImageNet recipe (Caffe's models were trained on 256 x 256 images and see 224 or 227 crops) is
``preprocess``: resize to 256 x 256, centre crop, RGB -> BGR, x 255, minus the BGR mean
(104, 117, 123); ``oversample`` makes Caffe's 10 crops (4 corners and centre, and their mirrors).

caffe.io's proto conversions are here too: ``blobproto_to_array`` / ``array_to_blobproto`` (a
mean .binaryproto is one BlobProto), their BlobProtoVector string forms, and ``array_to_datum`` /
``datum_to_array`` for the Datum records of an LMDB.
"""

import operator

import numpy as np

from minicnn.blob import array_to_blob_proto, blob_proto_to_array
from minicnn.errors import MinicnnError
from minicnn.proto import caffe_pb2  # also pycaffe's caffe.io.caffe_pb2, as scripts use it

IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")    # Pillow's 16-bit/float gray


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise MinicnnError("reading images needs Pillow: pip install pillow "
                           "(or pip install minicnn[train])") from None
    return Image


def load_image(filename, color=True):
    """An image file as float32 H x W x C in [0, 1]: RGB (C = 3) when ``color``, else gray
    (C = 1), as caffe.io.load_image returns it. A 16-bit gray image is scaled by 1 / 65535
    (a float one kept as it is), as skimage's img_as_float does there. Gray from colour is
    skimage's (imread with as_gray, which pycaffe calls): rgb2gray's 0.2125 R + 0.7154 G +
    0.0721 B in float64, an image with alpha first laid on white (rgba2rgb)."""
    if not (isinstance(filename, (str, bytes)) or hasattr(filename, "__fspath__")
            or hasattr(filename, "read")):
        raise ImageArgumentError(f"load_image: filename is a path (or an open file), not "
                                 f"{type(filename).__name__} {filename!r}")
    Image = _pil()
    try:
        with Image.open(filename) as image:
            if image.mode in _WIDE_GRAY_MODES:
                pixels = np.asarray(image, dtype=np.float32)[:, :, None]
                if image.mode != "F":
                    pixels /= 65535.0
                return np.repeat(pixels, 3, axis=2) if color else pixels
            if color:
                return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            if image.mode in ("1", "L", "LA"):
                return np.asarray(image.convert("L"), dtype=np.float32)[:, :, None] / 255.0
            return _skimage_gray(image)[:, :, None]
    except (OSError, ValueError) as e:    # an OSError too, as pycaffe's (skimage's) is
        raise ImageReadError(f"{filename}: cannot read the image ({e})") from None


class ImageArgumentError(MinicnnError, TypeError):
    """load_image given something that is not a path or a file."""


class ImageReadError(MinicnnError, OSError):
    """load_image's error: a MinicnnError, and an OSError as pycaffe's load_image raises (its
    users skip unreadable images with ``except IOError``)."""


def _skimage_gray(image):
    """skimage.color.rgb2gray of a colour Pillow image, after rgba2rgb where it has alpha."""
    alpha = image.mode in ("RGBA", "PA") or "transparency" in image.info
    values = np.asarray(image.convert("RGBA" if alpha else "RGB"), dtype=np.float64) / 255.0
    if alpha:
        a = values[:, :, 3:]
        values = np.clip((1 - a) + a * values[:, :, :3], 0, 1)      # on a white background
    return (values @ np.array([0.2125, 0.7154, 0.0721])).astype(np.float32)


def resize_image(im, new_dims, interp_order=1):
    """An H x W x C float image resized (Pillow's bilinear; ``interp_order`` 0: nearest, as
    pycaffe's argument of that name) to ``new_dims`` = (height, width).

    pycaffe's caffe.io.resize_image uses scikit-image instead (README: where minicnn
    deliberately differs): the same values inside an enlarged image, not at its border nor
    in a shrunk one (scikit-image's anti-aliasing there changes between its versions)."""
    if interp_order not in (0, 1):
        raise MinicnnError(f"resize_image: interp_order {interp_order!r}: minicnn resizes "
                           "with 0 (nearest) or 1 (bilinear)")
    image = np.asarray(im, dtype=np.float32)
    height, width = _dims(new_dims, "resize_image: new_dims", 1)
    if image.ndim != 3 or not image.size:
        raise ResizeError(f"resize_image: an H x W x C image with pixels, not an array of shape "
                          f"{image.shape}")
    if image.shape[:2] == (height, width):
        return image.copy()
    Image = _pil()
    method = Image.NEAREST if interp_order == 0 else Image.BILINEAR
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]), mode="F")
                           .resize((width, height), method), dtype=np.float32)
                for c in range(image.shape[2])]
    return np.stack(channels, axis=2)


class ResizeError(MinicnnError, ValueError):
    """resize_image / oversample given sizes or images they cannot use (a ValueError too, as
    pycaffe's errors there are NumPy's and scikit-image's ValueErrors)."""


def _dims(dims, what, least):
    """``dims`` as (height, width) ints of at least ``least`` (whole floats are taken, as
    pycaffe's int() takes them)."""
    try:
        values = [float(d) for d in dims]
    except (TypeError, ValueError):
        raise ResizeError(f"{what}: (height, width), got {dims!r}") from None
    if len(values) != 2 or any(v != int(v) or v < least for v in values):
        raise ResizeError(f"{what}: (height, width) of whole numbers of at least {least}, got "
                          f"{tuple(dims)}")
    return int(values[0]), int(values[1])


def center_crop(image, size):
    """The central ``size`` = (height, width) crop of an H x W x C image."""
    h, w = image.shape[:2]
    ch, cw = size
    if ch > h or cw > w:
        raise MinicnnError(f"cannot crop {ch}x{cw} from an image of {h}x{w}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top:top + ch, left:left + cw]


def oversample(images, crop_dims):
    """Caffe's 10 crops of each H x W x C image: the 4 corners and the centre, then the same
    five mirrored. Returns (10 * N, ch, cw, C) ordered image by image."""
    ch, cw = _dims(crop_dims, "oversample: crop_dims", 1)
    out = []
    for k, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3:
            raise ResizeError(f"oversample: image {k} of shape {image.shape} is not H x W x C "
                              "(give a list, or an N x H x W x C array, of images)")
        h, w = image.shape[:2]
        if ch > h or cw > w:
            raise ResizeError(f"oversample: cannot crop {ch}x{cw} from image {k} of {h}x{w}")
        corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw),
                   ((h - ch) // 2, (w - cw) // 2)]
        crops = [image[t:t + ch, left:left + cw] for t, left in corners]
        out.extend(crops + [crop[:, ::-1] for crop in crops])
    if not out:
        raise ResizeError("oversample: no images given")
    return np.stack(out)


class MeanShapeError(MinicnnError, ValueError):
    """Transformer.set_mean's error: a ValueError too, as pycaffe's set_mean raises."""


class ScaleShapeError(MinicnnError, ValueError):
    """set_raw_scale / set_input_scale given what cannot multiply the input (a ValueError too,
    as NumPy's own error in pycaffe would be, but raised when the scale is set)."""


def _scale(scale, shape, what):
    """A raw or input scale: a number, or an array broadcast against the input's C x H x W
    ``shape`` (per channel: shape (C, 1, 1), or (C,) as set_mean takes it), as pycaffe
    multiplies by whatever it was given; checked here, where pycaffe would fail in preprocess
    with NumPy's broadcast error (or, for a 1-D array as long as W, scale the columns)."""
    try:
        value = np.asarray(scale, dtype=np.float32)
    except (TypeError, ValueError):
        raise ScaleShapeError(f"{what}: a number or an array of numbers, got {scale!r}") from None
    if value.ndim == 0:
        return float(value)
    if value.ndim == 1 and value.shape[0] == shape[0]:
        return value[:, None, None]                      # per channel
    try:
        fits = value.ndim > 1 and np.broadcast_shapes(value.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ScaleShapeError(f"{what}: an array of shape {value.shape} does not multiply the "
                              f"input's C x H x W {tuple(shape)} (per channel: shape "
                              f"({shape[0]}, 1, 1))")
    return value


class TransformerError(MinicnnError, ValueError):
    """A Transformer setting or image that does not fit the input (a ValueError too; pycaffe
    raises a plain Exception for a wrong-length order, NumPy's errors later for the rest)."""


def _permutation(order, what, things, in_, shape, size):
    """``order`` as a tuple of ``size`` ints, checked to be a permutation of 0..size - 1: a
    repeated or out-of-range index would drop a channel/axis silently (and deprocess could not
    undo it). ``what`` names the setting ("channel swap"), ``things`` what it orders."""
    try:
        order = tuple(operator.index(i) for i in order)
    except TypeError:
        raise TransformerError(f"{what} of '{in_}': a sequence of integers, got "
                               f"{order!r}") from None
    if len(order) != size:
        raise TransformerError(f"{what} needs {size} {things} (input '{in_}' of shape "
                               f"{shape}), got {len(order)}: {order}")
    if sorted(order) != list(range(size)):
        raise TransformerError(f"{what} of '{in_}' {order}: not a reordering of its {size} "
                               f"{things} (each of 0..{size - 1} once)")
    return order


class Transformer:
    """caffe.io.Transformer: prepares images for one or more net inputs.

    ``inputs`` maps input names to their blob shapes (N, C, H, W). Every setting is per input.
    """

    def __init__(self, inputs):
        self.inputs = {}
        for in_, shape in inputs.items():
            try:
                self.inputs[in_] = tuple(operator.index(d) for d in shape)
            except TypeError:
                raise TransformerError(f"input '{in_}': a blob shape (N, C, H, W), got "
                                       f"{shape!r}") from None
        self.transpose, self.channel_swap = {}, {}
        self.raw_scale, self.mean, self.input_scale = {}, {}, {}

    def _check(self, in_):
        if in_ not in self.inputs:
            raise MinicnnError(f"{in_} is not one of the net inputs: {', '.join(self.inputs)}")

    def set_transpose(self, in_, order):
        """The axis order taking an H x W x C image to the input's C x H x W, e.g. (2, 0, 1)."""
        self._check(in_)
        shape = self.inputs[in_]
        self.transpose[in_] = _permutation(order, "transpose order", "axes", in_, shape,
                                           len(shape) - 1)

    def set_channel_swap(self, in_, order):
        """Reorder the channels (after the transpose), e.g. (2, 1, 0) for RGB -> BGR."""
        self._check(in_)
        shape = self.inputs[in_]
        self.channel_swap[in_] = _permutation(order, "channel swap", "channels", in_, shape,
                                              shape[1])

    def set_raw_scale(self, in_, scale):
        """Multiply the raw [0, 1] values, e.g. by 255 for nets trained on 0..255 pixels."""
        self._check(in_)
        self.raw_scale[in_] = _scale(scale, self.inputs[in_][1:], f"raw scale of '{in_}'")

    def set_mean(self, in_, mean):
        """Subtract a per-channel mean (C,) or a mean image (C, H, W; H x W for one channel),
        after the raw scale. A mean image of another size (ImageNet's 256 x 256 mean for a
        227 x 227 input) is resized to the input's, as the patch to pycaffe's io.py that Caffe
        users pass around does: pycaffe's own set_mean raises "Mean shape incompatible with
        input shape", and Caffe's C++ DataTransformer takes the mean file's values at the
        crop's offset instead (for those, crop the mean image first)."""
        self._check(in_)
        mean = np.asarray(mean, dtype=np.float32)
        shape = self.inputs[in_][1:]
        if mean.ndim == 2:
            mean = mean[None]
        if mean.ndim == 1 and mean.shape[0] == shape[0]:
            mean = mean[:, None, None]                   # per channel
        elif mean.ndim == len(shape) == 3 and mean.shape[0] == shape[0] and mean.size:
            if mean.shape != shape:
                mean = resize_image(mean.transpose(1, 2, 0), shape[1:]).transpose(2, 0, 1)
        else:
            raise MeanShapeError(f"mean of shape {mean.shape} fits neither the input's "
                                 f"channels ({shape[0]},) nor its shape {shape}")
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply after the mean subtraction (e.g. 0.017 for some nets)."""
        self._check(in_)
        self.input_scale[in_] = _scale(scale, self.inputs[in_][1:], f"input scale of '{in_}'")

    def preprocess(self, in_, data):
        """An H x W x C image (as load_image gives) as the net input's C x H x W float32."""
        self._check(in_)
        x = np.asarray(data, dtype=np.float32)
        shape = self.inputs[in_]
        if in_ in self.transpose:
            if x.ndim != len(shape) - 1:
                raise TransformerError(f"preprocess('{in_}'): an image of {len(shape) - 1} axes "
                                       f"(H x W x C), not an array of shape {x.shape}")
            channels = x.shape[self.transpose[in_][0]]
            if channels != shape[1]:
                raise TransformerError(f"preprocess('{in_}'): an image of shape {x.shape} has "
                                       f"{channels} channels; the input {shape} takes {shape[1]}")
        size = shape[2:]
        if x.shape[:2] != tuple(size):
            x = resize_image(x, size)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            if x.ndim < 1 or x.shape[0] != shape[1]:      # it would drop or repeat rows
                raise TransformerError(f"preprocess('{in_}'): the channel swap reorders the "
                                       f"first axis, of {x.shape[0] if x.ndim else 0} in "
                                       f"shape {x.shape}, not the input's {shape[1]} channels "
                                       "(set_transpose to bring the channels first)")
            x = x[list(self.channel_swap[in_])]
        if in_ in self.raw_scale:
            x = x * self.raw_scale[in_]
        if in_ in self.mean:
            x = x - self.mean[in_]
        if in_ in self.input_scale:
            x = x * self.input_scale[in_]
        return np.ascontiguousarray(x, dtype=np.float32)

    def deprocess(self, in_, data):
        """The inverse of preprocess (without the resize): C x H x W back to H x W x C. A
        batch of one (1 x C x H x W, e.g. the input blob's data) is taken as its item, as
        caffe.io squeezes it."""
        self._check(in_)
        x = np.array(data, dtype=np.float32)
        if x.ndim == len(self.inputs[in_]) and x.shape[0] == 1:
            x = x[0]
        if x.ndim != len(self.inputs[in_]) - 1 and (in_ in self.transpose
                                                    or in_ in self.channel_swap):
            raise MinicnnError(f"deprocess takes one image ({len(self.inputs[in_]) - 1} axes, "
                               f"or a batch of one), not an array of shape {x.shape}")
        shape = self.inputs[in_]
        if in_ in self.transpose or in_ in self.channel_swap:
            if x.shape[0] != shape[1]:
                raise TransformerError(f"deprocess('{in_}'): an image of shape {x.shape} has "
                                       f"{x.shape[0]} channels; the input {shape} has {shape[1]}")
        mean = self.mean.get(in_)
        if mean is not None and (mean.ndim != x.ndim or any(
                m not in (1, n) for m, n in zip(mean.shape, x.shape))):
            raise TransformerError(f"deprocess('{in_}'): an image of shape {x.shape}, but the "
                                   f"mean image added back is {mean.shape}")
        if in_ in self.input_scale:
            x /= self.input_scale[in_]
        if in_ in self.mean:
            x += self.mean[in_]
        if in_ in self.raw_scale:
            x /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_])]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x


def image_transformer(name, shape, mean=None, input_scale=None, raw_scale=None,
                      channel_swap=None):
    """A Transformer for input ``name`` of ``shape`` fed H x W x C images, set up as pycaffe's
    Classifier and Detector set theirs: transpose (2, 0, 1), then each setting given."""
    transformer = Transformer({name: shape})
    transformer.set_transpose(name, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(name, mean)
    if input_scale is not None:
        transformer.set_input_scale(name, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(name, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(name, channel_swap)
    return transformer


def preprocess(image, crop=224, resize=256, mean=IMAGENET_MEAN_BGR, raw_scale=255.0,
               channel_swap=(2, 1, 0), color=True):
    """The usual Caffe recipe in one call: an image (path or H x W x C array in [0, 1])
    resized to ``resize`` x ``resize``, centre-cropped to ``crop``, RGB -> BGR, x ``raw_scale``,
    minus the per-channel ``mean``; returns C x H x W float32. ``crop=None`` keeps the
    resized image; ``resize=None`` crops from the original size."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        image = load_image(image, color=color)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    if resize:
        image = resize_image(image, (resize, resize))
    if crop:
        image = center_crop(image, (crop, crop))
    x = image.transpose(2, 0, 1)
    if channel_swap is not None and x.shape[0] == len(channel_swap):
        x = x[list(channel_swap)]
    x = x * raw_scale
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        if mean.shape[0] not in (1, x.shape[0]):
            raise MinicnnError(f"mean has {mean.shape[0]} values for {x.shape[0]} channels")
        x = x - mean
    return np.ascontiguousarray(x, dtype=np.float32)


# --- proto / Datum / array conversions (caffe.io's) ---------------------------------------------

def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (its diff with ``return_diff``) as a float64 array, as caffe.io gives
    it (the values are the float32 ones stored; double_data is read too). The shape is the
    legacy num x channels x height x width when any of those four is set, else ``shape``."""
    return np.asarray(blob_proto_to_array(blob, diff=return_diff), np.float64)


def array_to_blobproto(arr, diff=None):
    """A BlobProto of ``arr``'s shape with its values (and ``diff``'s) as float32 ``data``
    (``diff``), whatever the array's type, as caffe.io writes them."""
    arr = np.asarray(arr, np.float32)
    if diff is not None:
        diff = np.asarray(diff, np.float32)
        if diff.shape != arr.shape:
            raise ValueError(f"diff of shape {diff.shape} for an array of shape {arr.shape}")
    return array_to_blob_proto(arr, diff)


def arraylist_to_blobprotovector_str(arraylist):
    """The wire bytes of a BlobProtoVector holding each array (see array_to_blobproto)."""
    from minicnn.proto import serialize
    return serialize(caffe_pb2.BlobProtoVector(blobs=[array_to_blobproto(a) for a in arraylist]))


def blobprotovector_str_to_arraylist(str):
    """The arrays of a BlobProtoVector's wire bytes (see blobproto_to_array)."""
    from minicnn.proto import parse_binary
    vec = parse_binary(str, "BlobProtoVector", path="<BlobProtoVector>")
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum holding a C x H x W array: uint8 values as the ``data`` bytes, any other type as
    float32 ``float_data``; ``label`` is set when given."""
    from minicnn.data.datum import encode_datum
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"a Datum holds a C x H x W array (3 axes), not one of shape "
                         f"{arr.shape}")
    datum = encode_datum(arr, 0 if label is None else label)
    if label is None:
        datum.ClearField("label")
    return datum


def datum_to_array(datum):
    """A Datum's values as a C x H x W array (the label is ``datum.label``): uint8 from the
    ``data`` bytes, else float64 from ``float_data``, as caffe.io gives them. An encoded Datum
    (an image file's bytes) is decoded, to B, G, R channels as Caffe's OpenCV reads them."""
    from minicnn.data.datum import decode_datum
    array, _ = decode_datum(datum)
    return array if array.dtype == np.uint8 else array.astype(np.float64)
