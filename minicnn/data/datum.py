"""Images and Caffe's Datum record: arrays <-> Datum, image files <-> BGR CHW arrays.

A Datum holds one sample: ``channels``, ``height``, ``width``, ``label`` and the pixels, either as
raw uint8 bytes in ``data`` (C, H, W order), as ``float_data``, or as an image file's bytes in
``data`` with ``encoded: true``.

Caffe decodes images with OpenCV, so a colour image comes out in **B, G, R** channel order and a
grayscale one with a single channel; ``decode_image`` does the same, with OpenCV where it is
installed and with Pillow otherwise (with OpenCV's grey and CMYK conversions: the same pixels
but for the cases its docstring names; MINICNN_IMAGE_DECODER=pillow|opencv picks one
decoder on every machine), and ``encode_image`` writes JPEG at OpenCV's
quality. An encoded Datum is decoded as Caffe's DataTransformer does: natively
(DecodeDatumToCVMatNative, cv::imdecode with IMREAD_UNCHANGED: no EXIF rotation, an alpha
channel kept as a 4th) unless transform_param.force_color / force_gray asks for colour or
gray. Pillow and OpenCV are imported only when an image is decoded or encoded;
``resize_image`` computes what OpenCV's does.
"""

import functools
import io
import os

import numpy as np

from minicnn.data.errors import DataError, need
from minicnn.proto import caffe_pb2, parse_binary
from minicnn.proto.wire import encode_varint

_GRAY_MODES = ("1", "L", "LA")
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")      # 16-bit / float images

# is_color None (an encoded Datum decoded natively): Caffe's DecodeDatumToCVMatNative keeps the
# file's depth, and its DataTransformer (and CVMatToDatum) then CHECKs for 8 bits
_NOT_8_BITS = ("an image of {} (not 8-bit): Caffe decodes an encoded Datum natively "
               "(cv::imdecode IMREAD_UNCHANGED keeps the depth) and then stops ('Image data "
               "type must be unsigned byte'); transform_param force_color or force_gray "
               "decodes it to 8 bits")


def _pil():
    need("PIL.Image", "Pillow")          # importing PIL alone does not load PIL.Image
    return need("PIL", "Pillow")


def _rgb(img):
    """A Pillow image's colours as an "RGB" image, alpha dropped. A palette with transparency
    goes through "RGBA" (the same colours), where Pillow's direct conversion warns."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _gray(img, file_format):
    """An 8-bit Pillow image as one gray channel (H x W uint8), as OpenCV's IMREAD_GRAYSCALE
    gives it (Pillow's "L" rounds differently: half the pixels of a colour PNG were one level
    off). A JPEG is decoded to its luma already (decode_image's draft, as OpenCV asks libjpeg
    for JCS_GRAYSCALE); a PNG's colours go through libpng's png_set_rgb_to_gray(0.299, 0.587):
    weights 9797, 19234 and 3737 in 1/32768ths, the sum truncated; a WebP's through cvtColor
    (OpenCV 4.14's: weights 9798, 19235, 3735 in 1/32768ths, rounded); other files through
    OpenCV's own BGR -> gray: weights 4899, 9617, 1868 in 1/16384ths, rounded. Alpha is
    dropped, a palette looked up first, as OpenCV does."""
    if img.mode in _GRAY_MODES:
        return np.asarray(img.convert("L"))
    rgb = np.asarray(_rgb(img)).astype(np.int32)
    r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    if file_format == "PNG":
        gray = (9797 * r + 19234 * g + 3737 * b) >> 15
    elif file_format == "WEBP":
        gray = (9798 * r + 19235 * g + 3735 * b + 16384) >> 15
    else:
        gray = (4899 * r + 9617 * g + 1868 * b + 8192) >> 14
    return gray.astype(np.uint8)


def _to_chw(img, is_color, file_format=None):
    """A Pillow image as a CHW uint8 array: 3 channels BGR (is_color True), or 1 gray (False).
    ``file_format``: Pillow's name of the file's format ("PNG", "JPEG", ...), for _gray."""
    if img.mode in _WIDE_MODES:
        # OpenCV reduces 16-bit images to 8 bits by dropping the low byte
        a = np.asarray(img)
        a = np.clip(a, 0, 255) if img.mode == "F" else np.clip(a.astype(np.int64) >> 8, 0, 255)
        a = a.astype(np.uint8)[:, :, None]
        if is_color:
            a = np.repeat(a, 3, axis=2)
    elif is_color:
        a = np.asarray(_rgb(img))[:, :, ::-1]                    # RGB -> BGR, as OpenCV
    else:
        a = _gray(img, file_format)[:, :, None]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _unchanged_chw(img):
    """An 8-bit Pillow image as OpenCV's IMREAD_UNCHANGED gives it, CHW: gray (also 1-bit, and
    gray with a transparent colour) stays 1 channel; gray + alpha, palettes with transparency
    and PNG colour with a transparent colour (tRNS) become B, G, R, A; other colour B, G, R."""
    if img.mode in ("1", "L"):
        a = np.asarray(img.convert("L"))[:, :, None]
    elif img.mode in ("LA", "RGBA", "PA") or \
            (img.mode in ("P", "RGB") and "transparency" in img.info):
        a = np.asarray(img.convert("RGBA"))[:, :, [2, 1, 0, 3]]
    else:
        a = np.asarray(img.convert("RGB"))[:, :, ::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _pnm_as_opencv(img, data):
    """A binary PGM / PPM that Pillow would scale (a maxval other than 255, or than 65535 in a
    PGM: it stretches the samples to 0..255 or 0..65535) as OpenCV reads it: the samples as
    they are in the file, 16-bit ones (maxval over 255) reduced to 8 bits by dropping the low
    byte. (an 8-bit "L" or "RGB" Pillow image, "16 bits" or None.)"""
    _, _, offset, (_, maxval) = img.tile[0]
    width, height = img.size
    bands = len(img.getbands())
    dtype = np.dtype(np.uint8 if maxval < 256 else ">u2")
    count = width * height * bands
    if len(data) - offset < count * dtype.itemsize:
        raise OSError("image file is truncated")
    samples = np.frombuffer(data, dtype, count, offset).reshape(height, width, bands)
    samples = (samples >> 8 if dtype.itemsize == 2 else samples).astype(np.uint8)
    img = _pil().Image.fromarray(samples[:, :, 0] if bands == 1 else samples,
                                 "L" if bands == 1 else "RGB")
    return img, "16 bits" if dtype.itemsize == 2 else None


# a 16-bit BMP's raw mode in Pillow -> the bits OpenCV keeps of each 8-bit R, G, B: it shifts
# the 5 (green: 6 in 565) bits up, where Pillow repeats their top bits in the low ones
_BMP16_BITS = {"BGR;15": (0xF8, 0xF8, 0xF8), "BGR;16": (0xF8, 0xFC, 0xF8)}


def _pillow_depth(img):
    """"16 bits" / "32-bit values" for an image Pillow opened whose samples are wider than 8
    bits (16-bit colour PNGs and TIFFs open as 8-bit "RGB": their tiles' raw mode tells; a
    16-bit BMP's pixels are 5 or 6 bits each), or None. Read before ``load``, which drops the
    tiles."""
    raw_modes = [t.args[0] if isinstance(t.args, tuple) and t.args else t.args
                 for t in img.tile]
    if img.mode.startswith("I;16") or any(isinstance(r, str) and ";16" in r
                                           and r not in _BMP16_BITS for r in raw_modes):
        return "16 bits"
    if img.mode in ("I", "F"):
        return "32-bit values"
    return None


def _read_source(source):
    """(the bytes of an image file, its path or None) of decode_image's ``source``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except OSError as e:
        raise DataError(f"cannot read image: {e.strerror}", path) from None


@functools.lru_cache(maxsize=1)
def _import_cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


_DECODERS = ("auto", "opencv", "pillow")


def _opencv():
    """OpenCV's cv2 module to decode with, or None: where it is not installed, or where the
    environment variable MINICNN_IMAGE_DECODER is "pillow" (read at each call). "opencv"
    requires it (a DataError without it); "auto" or unset takes it where it imports."""
    choice = os.environ.get("MINICNN_IMAGE_DECODER", "").strip().lower() or "auto"
    if choice not in _DECODERS:
        raise DataError(f"MINICNN_IMAGE_DECODER is {choice!r}: set it to opencv, pillow or "
                        f"auto (OpenCV where it is installed, else Pillow), or unset it")
    if choice == "pillow":
        return None
    cv2 = _import_cv2()
    if cv2 is None and choice == "opencv":
        raise DataError("MINICNN_IMAGE_DECODER=opencv, but OpenCV (cv2) does not import: "
                        "pip install opencv-python-headless, or unset it to decode with Pillow")
    return cv2


# is_color -> cv::imdecode's flag: IMREAD_COLOR, IMREAD_GRAYSCALE (8 bits, the EXIF orientation
# applied), IMREAD_UNCHANGED (-1: Caffe's DecodeDatumToCVMatNative; the file's channels and
# depth, no EXIF rotation)
_CV_FLAGS = {True: 1, False: 0, None: -1}


def _decode_opencv(cv2, data, is_color, orient=True):
    """decode_image's array by OpenCV's imdecode, or None where OpenCV cannot decode ``data``
    (Pillow then decodes it or names the fault). A JPEG that does not end in its EOI marker
    goes to Pillow too: OpenCV before 4.9 or so decodes a truncated file, its missing rows
    gray, with only a warning on stderr, where Pillow (and minicnn) refuse it."""
    if data[:2] == b"\xff\xd8" and data[-2:] != b"\xff\xd9":
        return None
    try:
        flags = _CV_FLAGS[is_color]
        if not orient and is_color is not None:
            flags |= cv2.IMREAD_IGNORE_ORIENTATION
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:                       # an empty buffer; OpenCV returns None for others
        return None
    if img is None:
        return None
    if img.dtype != np.uint8:
        raise DataError(_NOT_8_BITS.format(
            "16 bits" if img.dtype.itemsize == 2 else f"{img.dtype.itemsize * 8}-bit values"))
    if img.ndim == 2:
        return img[None]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _cmyk_to_rgb(img, inverted):
    """A CMYK JPEG's pixels as OpenCV's decoder converts them (icvCvt_CMYK2BGR on the values
    libjpeg gives, inverted in Adobe's files: c = k - ((255 - c) * k >> 8)); Pillow's own
    conversion rounds otherwise (nearly every pixel 1 level off)."""
    raw = np.asarray(img).astype(np.int32)
    if inverted:                            # Pillow un-inverts Adobe's CMYK ("CMYK;I")
        raw = 255 - raw
    k = raw[:, :, 3:]
    rgb = k - ((255 - raw[:, :, :3]) * k >> 8)
    return _pil().Image.fromarray(rgb.astype(np.uint8), "RGB")


def _tiff_as_libtiff(img, is_color):
    """A TIFF as OpenCV reads an 8-bit one (libtiff's TIFFReadRGBA*): colour with unassociated
    alpha (Pillow's "RGBA") premultiplied, (alpha * value + 127) // 255 (libtiff's UaToAa
    table), for every flag; gray + alpha read natively as the gray channel alone; CMYK as
    libtiff converts it, (255 - K) * (255 - C) // 255 (Pillow rounds: half the values were 1
    level off), natively with an opaque 4th channel (its 4 samples: B, G, R, A)."""
    if img.mode == "CMYK":
        cmyk = np.asarray(img).astype(np.int32)
        rgb = (255 - cmyk[:, :, 3:]) * (255 - cmyk[:, :, :3]) // 255
        if is_color is None:
            rgb = np.dstack([rgb, np.full(rgb.shape[:2], 255)])
        return _pil().Image.fromarray(rgb.astype(np.uint8), "RGB" if is_color is not None
                                      else "RGBA")
    if img.mode == "RGBA":
        a = np.asarray(img).astype(np.int32)
        a[:, :, :3] = (a[:, :, :3] * a[:, :, 3:] + 127) // 255
        return _pil().Image.fromarray(a.astype(np.uint8), "RGBA")
    if img.mode == "LA" and is_color is None:
        return img.convert("L")
    return img


def _decode_pillow(data, is_color, orient=True):
    Image = _pil().Image
    ImageOps = need("PIL.ImageOps", "Pillow")
    with Image.open(io.BytesIO(data)) as img:
        file_format = img.format
        if is_color is False and file_format == "JPEG" and img.mode in ("RGB", "YCbCr"):
            img.draft("L", img.size)      # libjpeg's luma, as OpenCV's IMREAD_GRAYSCALE
        cmyk = file_format == "JPEG" and img.mode == "CMYK"
        inverted = cmyk and any(tile.args[0] == "CMYK;I" for tile in img.tile)
        if file_format == "PPM" and img.tile and img.tile[0][0] == "ppm":
            img, depth = _pnm_as_opencv(img, data)
        else:
            depth = _pillow_depth(img)
        if depth and is_color is None:
            raise DataError(_NOT_8_BITS.format(depth))
        bmp16 = file_format == "BMP" and img.tile and _BMP16_BITS.get(img.tile[0][3][0])
        img.load()
        if bmp16:
            img = Image.fromarray(np.asarray(img) & np.array(bmp16, np.uint8), "RGB")
        if is_color is not None and orient:   # IMREAD_UNCHANGED leaves the EXIF orientation
            img = ImageOps.exif_transpose(img)
        if cmyk:
            img = _cmyk_to_rgb(img, inverted)
        if file_format == "TIFF":
            img = _tiff_as_libtiff(img, is_color)
        if is_color is None:
            return _unchanged_chw(img)
        return _to_chw(img, is_color, file_format)


def decode_image(source, is_color=True, orient=True):
    """Decode an image (file bytes, or a path) into a CHW uint8 array.

    ``is_color`` True gives 3 channels in B, G, R order (OpenCV's IMREAD_COLOR), False one gray
    channel (IMREAD_GRAYSCALE), both with the EXIF orientation applied, as OpenCV's imread
    does. None decodes natively, as Caffe decodes an encoded Datum without force_color /
    force_gray (DecodeDatumToCVMatNative: IMREAD_UNCHANGED): the EXIF orientation is not
    applied; gray stays 1 channel; colour gives B, G, R; an alpha channel is kept (B, G, R, A:
    4 channels, also for gray + alpha, palettes with transparency and PNG colour with a
    transparent colour); an image of more than 8 bits (16-bit PNG or TIFF) is a DataError,
    where Caffe's DataTransformer CHECKs for 8 bits. ``orient`` False leaves the EXIF
    orientation unapplied with True or False too (OpenCV's IMREAD_IGNORE_ORIENTATION).

    Where OpenCV (cv2) is installed it decodes, as Caffe's cv::imread / cv::imdecode do (1.1-2.6
    times as fast as Pillow: most on small JPEGs); files it cannot read, and every file without
    it, go through Pillow. The environment variable MINICNN_IMAGE_DECODER picks one for every
    machine alike: "pillow" (Pillow only), "opencv" (an error where cv2 does not import) or
    "auto" (the default). The two give the same pixels on JPEG (baseline or progressive, any
    subsampling, gray, CMYK), PNG (8-bit, palette, alpha, 16-bit gray), BMP (also 16-bit),
    8-bit TIFF (alpha premultiplied and CMYK converted as libtiff's RGBA reader gives them to
    OpenCV), binary PGM / PPM (any maxval: the samples as stored), GIF and WebP (lossless
    or lossy) files; 16-bit colour PNGs read as gray differ (libpng makes OpenCV's gray from
    the 16-bit values: about half the pixels 1 level off), as do 16-bit colour TIFFs (libtiff
    rounds v / 257, Pillow keeps the high byte: a sixth of the values 1 level off), a GIF's
    transparent pixels (OpenCV's GIF reader, which Caffe's OpenCV lacked, gives them the
    background colour; natively it gives an animated GIF a 4th, opaque channel) and a TIFF's
    unspecified 4th sample (a 4th channel in OpenCV natively).
    """
    data, path = _read_source(source)
    cv2 = _opencv()
    try:
        if cv2 is not None:
            chw = _decode_opencv(cv2, data, is_color, orient)
            if chw is not None:
                return chw
        return _decode_pillow(data, is_color, orient)
    except DataError as e:                 # not 8 bits: name the file, as every error here
        if e.path is None:
            raise DataError(e.reason, path or "<image bytes>") from None
        raise
    except _pil().UnidentifiedImageError:  # its message holds the stream's repr (an address)
        readers = "OpenCV or Pillow" if cv2 is not None else "Pillow"
        raise DataError(f"cannot decode image: not an image file {readers} can read",
                        path or "<image bytes>") from None
    except Exception as e:                 # Pillow raises several types for broken files
        raise DataError(f"cannot decode image ({type(e).__name__}: {e})",
                        path or "<image bytes>") from None


# OpenCV's cv::resize with INTER_LINEAR on uint8 images, which Caffe's ReadImageToCVMat calls:
# half-pixel centres, weights in 1/2048ths (INTER_RESIZE_COEF_BITS = 11), rows first, then the
# columns in OpenCV's vector arithmetic; an exact halving in both directions is INTER_AREA's
# 2 x 2 mean. (Pillow's bilinear filter, used before, widens its support when shrinking, and its
# pixels were up to 119 of 255 away from Caffe's.)
_COEF_SCALE = 2048


@functools.lru_cache(maxsize=1024)
def _linear_taps(src, dst, clamp_weights):
    """Per output index along one axis: the two source indices and their weights (sum 2048),
    read-only (kept for the next image of that size: an ImageData layer resizes every image to
    one size, and computing these took a third of the resize). OpenCV keeps a fraction past the
    edge along y (both taps clamp to the edge row) but sets it to 0 along x."""
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    first = np.floor(f).astype(np.int64)
    f -= first.astype(np.float32)
    if clamp_weights:
        f[(first < 0) | (first >= src - 1)] = 0
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    taps = np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), w0, w1
    for array in taps:
        array.flags.writeable = False
    return taps


def resize_image(chw, height, width):
    """Resize a CHW uint8 image to (height, width) as Caffe does (OpenCV's bilinear cv::resize,
    pixel for pixel; 4 channels too: a natively decoded image with alpha)."""
    chw = np.asarray(chw)
    if chw.dtype != np.uint8 or chw.ndim != 3 or chw.shape[0] not in (1, 3, 4):
        raise ValueError(f"resize_image needs a CHW uint8 array with 1, 3 or 4 channels, "
                         f"got {chw.dtype} {chw.shape}")
    c, h, w = chw.shape
    height, width = int(height), int(width)
    if (h, w) == (height, width):
        return chw.copy()
    if (h, w) == (2 * height, 2 * width):                 # OpenCV takes INTER_AREA here
        s = chw.astype(np.int32)
        out = (s[:, 0::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 0::2] + s[:, 1::2, 1::2] + 2) >> 2
        return out.astype(np.uint8)
    x0, x1, a0, a1 = _linear_taps(w, width, clamp_weights=True)
    y0, y1, b0, b1 = _linear_taps(h, height, clamp_weights=False)
    # the row pass, in int32 (uint8 times the int32 weights; the sums stay under 2^27), on the
    # rows the column taps read: the rows they pick when that is fewer than all h
    if 2 * height < h:
        top_rows, bottom_rows = chw[:, y0], chw[:, y1]
        top_rows = top_rows[:, :, x0] * a0 + top_rows[:, :, x1] * a1          # (C, height,
        bottom_rows = bottom_rows[:, :, x0] * a0 + bottom_rows[:, :, x1] * a1  # width), 2048 x
    else:
        rows = chw[:, :, x0] * a0 + chw[:, :, x1] * a1                # (C, h, width), 2048 x
        top_rows, bottom_rows = rows[:, y0], rows[:, y1]
    top = (b0[:, None] * (top_rows >> 4)) >> 16                    # OpenCV's 16-bit products
    bottom = (b1[:, None] * (bottom_rows >> 4)) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def read_image(path, height=0, width=0, is_color=True):
    """Caffe's ReadImageToCVMat: decode a file, then resize if height and width are both > 0."""
    chw = decode_image(path, is_color)
    if height > 0 and width > 0:
        chw = resize_image(chw, height, width)
    return chw


def _pil_format(encoding):
    Image = _pil().Image
    Image.init()
    ext = "." + encoding.lower().lstrip(".")
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise DataError(f"cannot encode images as '{encoding}' (Pillow has no writer for it)")
    return fmt


def encode_image(chw, encoding="png"):
    """A CHW uint8 image (BGR or gray) as the bytes of an image file in ``encoding``
    (png, jpg, bmp, ...), as OpenCV's imencode writes it."""
    Image = _pil().Image
    chw = np.asarray(chw)
    if chw.dtype != np.uint8 or chw.ndim != 3 or chw.shape[0] not in (1, 3):
        raise ValueError(f"encode_image needs a CHW uint8 array with 1 or 3 channels, "
                         f"got {chw.dtype} {chw.shape}")
    hwc = chw.transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(hwc[:, :, 0] if chw.shape[0] == 1
                                               else hwc[:, :, ::-1]))       # BGR -> RGB
    buf = io.BytesIO()
    fmt = _pil_format(encoding)
    # OpenCV's imencode writes JPEG at quality 95 (IMWRITE_JPEG_QUALITY's default); Pillow's
    # own default, 75, changed pixels of re-encoded records by up to 24 levels
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


# --- Datum ---------------------------------------------------------------------------------------

def _as_chw(array):
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"a Datum holds a CHW (or HW) array, not one of shape {array.shape}")
    return array


def encode_datum(array, label=0, encoding=""):
    """A Datum holding a CHW (or HW) array: uint8 arrays go to ``data`` as bytes, others to
    ``float_data``; with ``encoding`` (png, jpg, ...) the uint8 image is stored encoded, with
    only data, label and ``encoded`` set, as Caffe's ReadImageToDatum does."""
    array = _as_chw(array)
    if encoding:
        if array.dtype != np.uint8:
            raise ValueError("only uint8 images can be stored encoded")
        return caffe_pb2.Datum(data=encode_image(array, encoding), label=int(label), encoded=True)
    c, h, w = array.shape
    datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label))
    if array.dtype == np.uint8:
        datum.data = np.ascontiguousarray(array).tobytes()
    else:
        datum.float_data = np.asarray(array, np.float32).ravel()
    return datum


def serialize_datum(array, label=0):
    """The wire bytes of ``encode_datum(array, label)`` for a uint8 CHW array, built directly
    (the generic serializer is ~20x slower; datasets write tens of thousands of records)."""
    array = _as_chw(array)
    if array.dtype != np.uint8:
        raise ValueError("serialize_datum takes uint8 arrays; use encode_datum for others")
    c, h, w = array.shape
    data = np.ascontiguousarray(array).tobytes()
    v = encode_varint
    return b"".join((b"\x08", v(c), b"\x10", v(h), b"\x18", v(w),
                     b"\x22", v(len(data)), data, b"\x28", v(int(label))))


# Datum's scalar fields by key byte (field number << 3 | varint): their slots in _plain_fields
_PLAIN_VARINTS = {0x08: 0, 0x10: 1, 0x18: 2, 0x28: 4, 0x38: 5}
_PLAIN_DATA = 0x22                          # field 4, length-delimited


def _plain_fields(buf):
    """[channels, height, width, data, label, encoded] of a Datum's wire bytes written as Caffe
    and minicnn write them (fields 1-5 and 7, each at most once, scalars in [0, 2^31), no
    float_data, nothing unknown), or None for anything else, which the full parser then reads
    (and names the fault of). A Data layer reads a record per sample: building the Datum
    message took ~10x as long as this, most of the data thread's time on MNIST."""
    fields, seen, pos, end = [0, 0, 0, b"", 0, 0], 0, 0, len(buf)
    while pos < end:
        key = buf[pos]
        pos += 1
        value = shift = 0
        while True:                                   # a varint: the value, or data's length
            if pos >= end or shift > 28:
                return None
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        if key == _PLAIN_DATA:
            if value > end - pos:
                return None
            slot, value, pos = 3, buf[pos:pos + value], pos + value
        else:
            slot = _PLAIN_VARINTS.get(key)
            if slot is None or value > 0x7FFFFFFF or (slot == 5 and value > 1):
                return None
        if seen >> slot & 1:
            return None
        seen |= 1 << slot
        fields[slot] = value
    return fields


def decode_record(value, is_color=None, where=None):
    """(array, label, encoded) of a Datum's wire bytes (a database record): ``decode_datum``'s
    array and label, and whether the record held an encoded image. Records in the plain layout
    (``_plain_fields``) skip building the Datum message; the results are the same."""
    where = where or "<datum>"
    fields = _plain_fields(value)
    if fields is not None:
        channels, height, width, data, label, encoded = fields
        if encoded:
            try:
                return decode_image(data, is_color), label, True
            except DataError as e:
                raise DataError(e.reason, where) from None
        if data and len(data) == channels * height * width:
            shape = (channels, height, width)
            return np.frombuffer(data, np.uint8).reshape(shape).copy(), label, False
    datum = parse_binary(value, "Datum", path=where)     # float_data, other layouts, faults
    array, label = decode_datum(datum, is_color, where)
    return array, label, bool(datum.encoded)


def decode_datum(datum, is_color=None, where=None):
    """(array, label) of a Datum (or its wire bytes): CHW uint8 for byte data and encoded
    images (decoded with ``is_color``, see ``decode_image``), CHW float32 for float_data.
    ``where`` names the record in error messages."""
    where = where or "<datum>"
    if not isinstance(datum, caffe_pb2.Datum):
        datum = parse_binary(datum, "Datum", path=where)
    if datum.encoded:
        try:
            return decode_image(datum.data, is_color), datum.label
        except DataError as e:
            raise DataError(e.reason, where) from None
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) < 0:                        # -1 x -2 x 3 would pass the count check below
        raise DataError(f"Datum of shape {shape} has a negative dimension", where)
    count = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        if len(datum.data) != count:
            raise DataError(f"Datum of shape {shape} holds {len(datum.data)} data bytes, "
                            f"expected {count}", where)
        return np.frombuffer(datum.data, np.uint8).reshape(shape).copy(), datum.label
    if len(datum.float_data) != count or count == 0:
        raise DataError(f"Datum of shape {shape} holds {len(datum.float_data)} float_data "
                        f"values and no data bytes", where)
    return np.asarray(datum.float_data, np.float32).reshape(shape), datum.label
