"""Datum <-> arrays, image decoding in OpenCV's BGR order, and LMDB reading and writing."""

import io
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from minicnn.data.datum import (
    decode_datum,
    decode_image,
    decode_record,
    encode_datum,
    encode_image,
    read_image,
    resize_image,
    serialize_datum,
)
from minicnn.data.db import LMDBReader, LMDBWriter, open_db, resolve_path, root_joined
from minicnn.data.errors import DataError
from minicnn.proto import caffe_pb2, parse_binary, serialize


def test_raw_uint8_datum_round_trip():
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = encode_datum(x, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 7)
    assert datum.data == x.tobytes() and not datum.encoded and not len(datum.float_data)
    array, label = decode_datum(serialize(datum))
    assert label == 7 and array.dtype == np.uint8
    np.testing.assert_array_equal(array, x)


def test_float_datum_round_trip():
    x = np.linspace(-1, 1, 12).reshape(3, 2, 2)
    datum = encode_datum(x, label=-3)
    assert not datum.data and len(datum.float_data) == 12
    array, label = decode_datum(serialize(datum))
    assert label == -3 and array.dtype == np.float32
    np.testing.assert_array_equal(array, x.astype(np.float32))


def test_hw_array_becomes_one_channel():
    datum = encode_datum(np.zeros((5, 6), np.uint8))
    assert (datum.channels, datum.height, datum.width) == (1, 5, 6)


@pytest.mark.parametrize("channels", [1, 3])
def test_encoded_png_datum_round_trip(channels):
    x = np.random.default_rng(0).integers(0, 256, (channels, 5, 7), dtype=np.uint8)
    datum = encode_datum(x, label=2, encoding="png")
    assert datum.encoded and datum.data[:8] == b"\x89PNG\r\n\x1a\n"
    array, label = decode_datum(serialize(datum))          # native: gray stays gray
    assert label == 2
    np.testing.assert_array_equal(array, x)


@pytest.mark.parametrize("label", [0, 5, 300, -1])
def test_fast_serializer_matches_the_generic_one(label):
    x = np.random.default_rng(1).integers(0, 256, (1, 28, 28), dtype=np.uint8)
    assert serialize_datum(x, label) == serialize(encode_datum(x, label))


def test_datum_with_the_wrong_number_of_bytes_is_an_error():
    datum = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")
    with pytest.raises(DataError, match="holds 3 data bytes, expected 4"):
        decode_datum(datum, where="db key 7")
    with pytest.raises(DataError, match="no data bytes"):
        decode_datum(caffe_pb2.Datum(channels=1, height=2, width=2))
    with pytest.raises(DataError, match=r"Datum of shape \(0, 0, 0\) holds 0 float_data"):
        decode_datum(caffe_pb2.Datum())                  # an empty record is no image
    for values in ({"data": b"abcdef"}, {"float_data": [0.0] * 6}):
        with pytest.raises(DataError, match=r"^db key 7: Datum of shape \(-1, -2, 3\) has a "
                                            "negative dimension"):
            decode_datum(caffe_pb2.Datum(channels=-1, height=-2, width=3, **values),
                         where="db key 7")


def _red_pixel_png(path, mode="RGB"):
    img = Image.new("RGB", (3, 2), (0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0))                       # pure red at x=1, y=0
    img.save(path)


def test_decoded_images_are_bgr_like_opencv(tmp_path):
    path = str(tmp_path / "red.png")
    _red_pixel_png(path)
    chw = decode_image(path)
    assert chw.shape == (3, 2, 3) and chw.dtype == np.uint8
    assert chw[2, 0, 1] == 255 and chw[0, 0, 1] == 0 and chw[1, 0, 1] == 0    # B, G, R
    assert chw.sum() == 255
    with open(path, "rb") as f:
        np.testing.assert_array_equal(decode_image(f.read()), chw)


def test_gray_decoding_and_native_channels(tmp_path):
    path = str(tmp_path / "red.png")
    _red_pixel_png(path)
    gray = decode_image(path, is_color=False)
    assert gray.shape == (1, 2, 3) and gray[0, 0, 1] == 76          # 0.299 * 255
    assert decode_image(path, is_color=None).shape == (3, 2, 3)
    gpath = str(tmp_path / "g.png")
    Image.fromarray(np.full((2, 2), 9, np.uint8)).save(gpath)
    assert decode_image(gpath, is_color=None).shape == (1, 2, 2)
    color = decode_image(gpath, is_color=True)
    assert color.shape == (3, 2, 2) and (color == 9).all()


def test_encode_image_writes_rgb_files(tmp_path):
    bgr = np.zeros((3, 1, 1), np.uint8)
    bgr[2] = 200                                                   # red in BGR
    data = encode_image(bgr, "png")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert Image.open(path).getpixel((0, 0)) == (200, 0, 0)
    with pytest.raises(DataError, match="cannot encode"):
        encode_image(bgr, "nosuchformat")


@pytest.mark.parametrize("kind", ["rgb.png", "rgba.png", "palette.png", "rgb.jpg", "rgb.bmp"])
def test_gray_decoding_is_opencvs_imread_grayscale_pixel_for_pixel(tmp_path, kind):
    # ImageData is_color: false, convert-imageset --gray, force_gray: Caffe reads with
    # cv::imread(IMREAD_GRAYSCALE), whose formula depends on the file's format (libpng's
    # rgb_to_gray for PNG, libjpeg's luma for JPEG, cvtColor's otherwise); Pillow's "L" put
    # half of a PNG's pixels one level off and a JPEG's up to 17
    cv2 = pytest.importorskip("cv2")
    from skimage import data
    rgb = data.coffee()[::2, ::2]
    name, ext = kind.split(".")
    image = {"rgb": Image.fromarray(rgb), "palette": Image.fromarray(rgb).convert("P"),
             "rgba": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 99, np.uint8)]))}[name]
    path = tmp_path / kind
    image.save(path)
    want = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(decode_image(str(path), is_color=False)[0], want)
    np.testing.assert_array_equal(decode_image(path.read_bytes(), is_color=False)[0], want)


@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_records_decode_as_opencvs_imencode_would_write_them(channels):
    # Caffe's ReadImageToDatum encodes with cv::imencode: quality 95, where Pillow's default
    # (75) moved pixels by up to 24 levels (with the same libjpeg the bytes are the same too)
    cv2 = pytest.importorskip("cv2")
    from skimage import data
    bgr = np.ascontiguousarray(data.chelsea()[:, :, ::-1])
    image = bgr if channels == 3 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    ours = encode_image(image.transpose(2, 0, 1), "jpg")
    theirs = cv2.imencode(".jpg", image)[1]
    flag = cv2.IMREAD_UNCHANGED
    difference = cv2.imdecode(np.frombuffer(ours, np.uint8), flag).astype(int) - \
        cv2.imdecode(theirs, flag)
    assert np.abs(difference).max() <= 1


def test_resize_is_opencvs_bilinear_pixel_for_pixel(tmp_path):
    """Caffe's ReadImageToCVMat resizes with cv::resize (INTER_LINEAR): the same pixels, up and
    down, gray and colour, 1-pixel sources, and the halving OpenCV takes as INTER_AREA."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    sizes = [((8, 8), (4, 4)), ((64, 48), (32, 24)), ((65, 48), (32, 24)), ((1, 1), (3, 5)),
             ((1, 9), (4, 2)), ((300, 400), (227, 227)), ((28, 28), (256, 256))]
    sizes += [(tuple(rng.integers(1, 90, 2)), tuple(rng.integers(1, 120, 2))) for _ in range(40)]
    for (h, w), (oh, ow) in sizes:
        c = int(rng.choice([1, 3]))
        x = rng.integers(0, 256, (c, h, w), dtype=np.uint8)
        want = cv2.resize(np.ascontiguousarray(x.transpose(1, 2, 0)), (int(ow), int(oh)),
                          interpolation=cv2.INTER_LINEAR).reshape(oh, ow, c).transpose(2, 0, 1)
        got = resize_image(x, oh, ow)
        assert got.dtype == np.uint8 and got.shape == (c, oh, ow)
        np.testing.assert_array_equal(got, want, err_msg=f"{(c, h, w)} -> {(oh, ow)}")
    x = np.tile(np.arange(8, dtype=np.uint8) * 30, (3, 4, 1))
    path = str(tmp_path / "a.png")
    Image.fromarray(x.transpose(1, 2, 0)).save(path)
    assert read_image(path, 3, 5).shape == (3, 3, 5)
    assert read_image(path).shape == (3, 4, 8)


def test_resize_computes_its_taps_once_per_size():
    """An ImageData layer resizes every image to one size: the taps and weights of a (source,
    destination) size are computed once and kept, read-only, and a strong shrink (the rows
    taken before the row pass) keeps OpenCV's pixels."""
    from minicnn.data import datum
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (3, 151, 97), dtype=np.uint8)
    resize_image(x, 36, 35)
    before = datum._linear_taps.cache_info()
    got = resize_image(x[::-1].copy(), 36, 35)
    after = datum._linear_taps.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2
    assert not any(a.flags.writeable for a in datum._linear_taps(151, 36, False))
    want = cv2.resize(np.ascontiguousarray(x[::-1].transpose(1, 2, 0)), (35, 36),
                      interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, want)


def test_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.png: file not found"):
        decode_image(str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="bad.png: cannot decode image"):
        decode_image(str(bad))
    with pytest.raises(DataError, match="cannot decode image"):
        decode_image(b"\x89PNG garbage")


def test_an_unknown_format_is_named_the_same_way_every_time(monkeypatch, tmp_path):
    """Pillow's 'cannot identify image file <_io.BytesIO object at 0x...>' carried an address,
    so one record's error differed between two reads (decode_record against the full parser
    failed now and then) and told the user nothing; the message names the file instead."""
    monkeypatch.delenv("MINICNN_IMAGE_DECODER", raising=False)   # (names both decoders)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    kept = []                      # held, so that the next read cannot reuse the same address
    for _ in range(3):
        with pytest.raises(DataError) as e:
            decode_image(b"this is not an image")
        kept.append(e.value)
    assert len({str(e) for e in kept}) == 1
    assert "0x" not in str(kept[0]) and "BytesIO" not in str(kept[0])
    with pytest.raises(DataError, match=r"bad.png: cannot decode image: not an image file "
                                        "OpenCV or Pillow can read") as e:
        decode_image(str(bad))
    assert "0x" not in str(e.value)
    monkeypatch.setenv("MINICNN_IMAGE_DECODER", "pillow")         # Pillow alone: named alone
    with pytest.raises(DataError, match=r"bad.png: cannot decode image: not an image file "
                                        "Pillow can read$"):
        decode_image(str(bad))


def _image_files():
    """name -> bytes: the kinds of image files decode_image meets (JPEG of every quality,
    subsampling, progressive, gray, CMYK with and without Adobe's marker, the eight EXIF
    orientations, odd sizes; PNG of each colour type, 16-bit gray; BMP, 16-bit BMP; TIFF with
    alpha, CMYK TIFF; PGM / PPM of 8 and 16 bits; lossless and lossy WebP)."""
    import io
    from skimage import data
    rgb = data.chelsea()[40:133:2, 100:357:3]                              # 47 x 86
    im = Image.fromarray(rgb)

    def save(img, fmt="JPEG", **kw):
        out = io.BytesIO()
        img.save(out, fmt, **kw)
        return out.getvalue()

    def exif(orientation):
        e = Image.Exif()
        e[0x0112] = orientation
        return e.tobytes()

    files = {f"q{q}_{ss}.jpg": save(im, quality=q, subsampling=ss)
             for q in (50, 95) for ss in (0, 1, 2)}
    files.update({f"exif{o}.jpg": save(im, quality=90, exif=exif(o)) for o in range(2, 9)})
    files["progressive.jpg"] = save(im, quality=85, progressive=True)
    files["gray.jpg"] = save(im.convert("L"), quality=90)
    files["cmyk.jpg"] = cmyk = save(im.convert("CMYK"), quality=90, exif=exif(6))
    app14 = cmyk.find(b"\xff\xee")                   # Adobe's marker: libjpeg inverts CMYK
    files["cmyk_no_adobe.jpg"] = cmyk[:app14] + cmyk[app14 + 2 + int.from_bytes(
        cmyk[app14 + 2:app14 + 4], "big"):]
    for h, w in ((1, 1), (5, 3), (17, 33)):
        files[f"odd{h}x{w}.jpg"] = save(Image.fromarray(rgb[:h, :w]), quality=90)
    alpha = np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint8).reshape(rgb.shape[:2])
    for mode in ("RGB", "L", "LA", "P", "1"):
        files[f"{mode}.png"] = save(im.convert(mode), "PNG")
    files["RGBA.png"] = save(Image.fromarray(np.dstack([rgb, alpha])), "PNG")
    files["P_transparent.png"] = save(im.convert("P"), "PNG", transparency=3)
    files["P_alpha.png"] = save(Image.fromarray(np.dstack([rgb, alpha])).quantize(16), "PNG")
    files["RGB_transparent.png"] = save(im, "PNG", transparency=tuple(map(int, rgb[0, 0])))
    files["L_transparent.png"] = save(im.convert("L"), "PNG", transparency=int(alpha[0, 0]))
    files["gray16.png"] = save(Image.fromarray(rgb[:, :, 1].astype(np.uint16) * 257 - alpha),
                               "PNG")
    files["exif6.png"] = save(im, "PNG", exif=exif(6))
    files["rgb.bmp"] = save(im, "BMP")
    # WebP read as gray goes through OpenCV's cvtColor (weights in 1/32768ths in OpenCV 4.14),
    # not the 1/16384ths of its other readers: 1 level apart on a few random pixels (0.3%)
    noise = np.random.default_rng(5).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    files["noise_lossless.webp"] = save(Image.fromarray(noise), "WEBP", lossless=True)
    files["lossy.webp"] = save(im, "WEBP", quality=80)
    # OpenCV reads 8-bit TIFFs through libtiff's RGBA reader: unassociated alpha premultiplied
    files["RGBA.tif"] = save(Image.fromarray(np.dstack([rgb, alpha])), "TIFF")
    files["LA.tif"] = save(Image.fromarray(np.dstack([rgb[:, :, 0], alpha]), "LA"), "TIFF")
    files["RGB.tif"] = save(im, "TIFF")
    # CMYK as libtiff converts it (its own rounding: Pillow's was 1 level off on half the
    # values), natively B, G, R and an opaque alpha: every C, M (and Y, K mixed) value
    c, m = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    files["CMYK.tif"] = save(Image.fromarray(np.dstack([c, m, c * 7 + m, c + 3 * m]), "CMYK"),
                             "TIFF")
    # 16-bit BMPs: OpenCV shifts the 5 (6) bits up, Pillow repeated their top bits below
    bgr = rgb[:, :, ::-1].astype(np.uint16)
    for bits, (rb, gb) in (("555", (0x7C00, 0x03E0)), ("565", (0xF800, 0x07E0))):
        g = 5 if bits == "555" else 6
        px = (bgr[:, :, 2] >> 3 << (5 + g)) | (bgr[:, :, 1] >> (8 - g) << 5) | (bgr[:, :, 0] >> 3)
        rows = np.zeros((47, 88), "<u2")                 # rows padded to 4 bytes, bottom up
        rows[:, :86] = px[::-1]
        masks = b"" if bits == "555" else np.array([rb, gb, 0x1F], "<u4").tobytes()
        info = np.array([40, 86, 47, 1 | 16 << 16, 0 if bits == "555" else 3, rows.nbytes,
                         2835, 2835, 0, 0], "<u4").tobytes()
        offset = 14 + len(info) + len(masks)
        files[f"bgr{bits}.bmp"] = (b"BM" + np.array([offset + rows.nbytes, 0, offset], "<u4")
                                   .tobytes() + info + masks + rows.tobytes())
    # PGM / PPM of a maxval other than 255: OpenCV keeps the samples as they are (16-bit ones
    # to 8 bits by dropping the low byte), where Pillow scaled them to 0..255 (0..65535)
    for magic, pixels in (("P5", rgb[:, :, 1]), ("P6", rgb)):
        # (256: the smallest maxval OpenCV reads as 16 bits)
        for maxval, dtype in ((15, np.uint8), (256, ">u2"), (4095, ">u2"), (65535, ">u2")):
            samples = (pixels.astype(np.int64) * (maxval * 257 + 254) // 65535).astype(dtype)
            files[f"max{maxval}.{magic}.pnm"] = (f"{magic}\n# a comment\n86 47\n{maxval}\n"
                                                 .encode() + samples.tobytes())
    return files


@pytest.mark.filterwarnings("error")   # Pillow warned on palettes with transparency as colour
@pytest.mark.parametrize("is_color", [True, False, None])
def test_opencv_and_pillow_decode_the_same_pixels_as_opencvs_imdecode(monkeypatch, is_color):
    """decode_image decodes with OpenCV where it is installed (Caffe's decoder) and with Pillow
    otherwise: both give cv::imdecode's pixels with IMREAD_COLOR, IMREAD_GRAYSCALE (EXIF
    orientation applied) and IMREAD_UNCHANGED (is_color None: Caffe's DecodeDatumToCVMatNative
    of an encoded Datum; no EXIF rotation, alpha kept as B, G, R, A, also for gray + alpha and
    palettes with transparency). Pillow's own CMYK conversion was 1 level off on nearly every
    pixel. A 16-bit image decoded natively is an error, as Caffe stops on it."""
    cv2 = pytest.importorskip("cv2")
    from minicnn.data import datum
    flag = {True: cv2.IMREAD_COLOR, False: cv2.IMREAD_GRAYSCALE, None: cv2.IMREAD_UNCHANGED}
    files = _image_files()
    if is_color is not False:           # (as gray, libpng's 16-bit conversion: see decode_image)
        rgb16 = (np.arange(5 * 7 * 3, dtype=np.uint16).reshape(5, 7, 3) * 613)
        files["bgr16.png"] = cv2.imencode(".png", rgb16)[1].tobytes()
        files["bgra16.png"] = cv2.imencode(".png", np.dstack([rgb16, rgb16[:, :, :1]]))[1].tobytes()
    for name, blob in files.items():
        want = cv2.imdecode(np.frombuffer(blob, np.uint8), flag[is_color])
        want = (want[:, :, None] if want.ndim == 2 else want).transpose(2, 0, 1)
        for decoder in (cv2, None):
            monkeypatch.setattr(datum, "_opencv", lambda: decoder)
            if want.dtype != np.uint8:
                with pytest.raises(DataError, match="an image of 16 bits .* force_color"):
                    decode_image(blob, is_color)
                continue
            got = decode_image(blob, is_color)
            assert got.dtype == np.uint8 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want, err_msg=f"{name}, {decoder and 'cv2'}")


@pytest.mark.parametrize("opencv", [True, False])
def test_native_decoding_is_caffes_decode_datum_to_cv_mat_native(monkeypatch, tmp_path, opencv):
    """Caffe decodes an encoded Datum without force_color / force_gray with cv::imdecode(data,
    -1): an EXIF-rotated JPEG stays as stored, alpha is a 4th channel, gray stays 1 channel,
    a 16-bit PNG stops Caffe (its DataTransformer CHECKs for 8 bits); minicnn decoded these
    as IMREAD_ANYCOLOR (rotated; 3 channels; the low byte dropped)."""
    from minicnn.data import datum
    cv2 = pytest.importorskip("cv2")
    monkeypatch.setattr(datum, "_opencv", lambda: cv2 if opencv else None)
    files = _image_files()
    assert decode_image(files["exif6.jpg"], None).shape == (3, 47, 86)       # not rotated
    assert decode_image(files["exif6.jpg"], True).shape == (3, 86, 47)       # imread: rotated
    rgba = decode_image(files["RGBA.png"], None)
    alpha = np.arange(47 * 86, dtype=np.uint8).reshape(47, 86)
    assert rgba.shape == (4, 47, 86) and (rgba[3] == alpha).all()
    np.testing.assert_array_equal(rgba[:3], decode_image(files["RGBA.png"], True))
    la = decode_image(files["LA.png"], None)
    assert la.shape == (4, 47, 86) and (la[0] == la[1]).all() and (la[1] == la[2]).all()
    assert decode_image(files["P.png"], None).shape == (3, 47, 86)
    assert decode_image(files["P_transparent.png"], None).shape == (4, 47, 86)
    assert decode_image(files["gray.jpg"], None).shape == (1, 47, 86)
    assert decode_image(files["cmyk.jpg"], None).shape == (3, 47, 86)        # not rotated
    with pytest.raises(DataError, match="^<image bytes>: an image of 16 bits"):
        decode_image(files["gray16.png"], None)
    assert decode_image(files["gray16.png"], False).shape == (1, 47, 86)   # force_gray: 8 bits
    path = tmp_path / "gray16.png"
    path.write_bytes(files["gray16.png"])
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: an image of 16 bits"):
        decode_image(path, None)                                 # the error names the file
    tiff = io.BytesIO()                       # Pillow's "I": 32-bit integer samples
    Image.fromarray(np.arange(12, dtype=np.int32).reshape(3, 4) * 1000).save(tiff, "TIFF")
    with pytest.raises(DataError, match="^<image bytes>: an image of 32-bit values"):
        decode_image(tiff.getvalue(), None)


def test_jpegs_decode_without_pillow_where_opencv_is_installed(monkeypatch, tmp_path):
    pytest.importorskip("cv2")
    monkeypatch.delenv("MINICNN_IMAGE_DECODER", raising=False)   # (a run of the Pillow path)
    path = tmp_path / "a.jpg"
    path.write_bytes(_image_files()["exif6.jpg"])
    want = decode_image(path)
    monkeypatch.setitem(sys.modules, "PIL", None)                 # as if not installed
    np.testing.assert_array_equal(decode_image(str(path)), want)
    assert want.shape == (3, 86, 47)                              # rotated


def test_minicnn_image_decoder_picks_the_decoder_on_every_machine(monkeypatch):
    """MINICNN_IMAGE_DECODER=pillow decodes with Pillow where OpenCV is installed too (what
    machines without OpenCV decode), =opencv stops where cv2 does not import (rather than
    decode otherwise there), auto or unset takes OpenCV where it imports; other values are
    named. Read at each decode."""
    pytest.importorskip("cv2")
    from minicnn.data import datum
    calls = []
    decode_opencv = datum._decode_opencv
    monkeypatch.setattr(datum, "_decode_opencv",
                        lambda *a: calls.append("opencv") or decode_opencv(*a))
    jpeg = _image_files()["exif6.jpg"]
    monkeypatch.delenv("MINICNN_IMAGE_DECODER", raising=False)
    want = decode_image(jpeg)
    assert calls == ["opencv"]
    for value in ("pillow", " Pillow "):
        monkeypatch.setenv("MINICNN_IMAGE_DECODER", value)
        np.testing.assert_array_equal(decode_image(jpeg), want)
        assert calls == ["opencv"]                            # Pillow decoded it
    for value in ("opencv", "auto", ""):
        monkeypatch.setenv("MINICNN_IMAGE_DECODER", value)
        np.testing.assert_array_equal(decode_image(jpeg), want)
    assert calls == ["opencv"] * 4
    monkeypatch.setenv("MINICNN_IMAGE_DECODER", "pil")
    with pytest.raises(DataError, match="MINICNN_IMAGE_DECODER is 'pil': set it to opencv, "
                                        "pillow or auto"):
        decode_image(jpeg)
    monkeypatch.setattr(datum, "_import_cv2", lambda: None)     # as if cv2 were missing
    monkeypatch.setenv("MINICNN_IMAGE_DECODER", "opencv")
    with pytest.raises(DataError, match=r"MINICNN_IMAGE_DECODER=opencv, but OpenCV \(cv2\) "
                                        "does not import: pip install opencv-python-headless"):
        decode_image(jpeg)
    monkeypatch.setenv("MINICNN_IMAGE_DECODER", "auto")
    np.testing.assert_array_equal(decode_image(jpeg), want)     # Pillow, as without cv2


@pytest.mark.parametrize("opencv", [True, False])
def test_broken_images_are_the_same_errors_with_either_decoder(monkeypatch, tmp_path, opencv):
    """Files OpenCV cannot decode go to Pillow, which names the fault as before; a JPEG cut
    short (no EOI marker) does too, since OpenCV before ~4.9 returned it with gray rows and a
    warning (the fake decoder below does so)."""
    cv2 = pytest.importorskip("cv2")
    from minicnn.data import datum

    class PartialImdecode:                      # an older OpenCV: a truncated JPEG decodes
        error = cv2.error

        @staticmethod
        def imdecode(buf, flag):
            return np.full((8, 8, 3), 128, np.uint8)

    monkeypatch.setattr(datum, "_opencv", lambda: PartialImdecode if opencv else None)
    jpeg = _image_files()["q95_2.jpg"]
    for name, blob in (("cut.jpg", jpeg[:len(jpeg) // 2]), ("no_eoi.jpg", jpeg[:-2])):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DataError, match=rf"{name}: cannot decode image \(OSError: image "
                                            "file is truncated"):
            decode_image(str(tmp_path / name))
    monkeypatch.setattr(datum, "_opencv", lambda: cv2 if opencv else None)
    for blob in (b"", b"not an image", jpeg[:300]):
        with pytest.raises(DataError, match=r"^<image bytes>: cannot decode image"):
            decode_image(blob)
    # OpenCV raises on an empty buffer (None for other bytes it cannot read): Pillow names it
    with pytest.raises(DataError, match=r"^<image bytes>: cannot decode image: not an image "):
        decode_image(b"")
    pgm = b"P5\n4 3\n15\n" + bytes(range(10))      # a maxval of 15: 12 samples, 10 given
    with pytest.raises(DataError, match=r"^<image bytes>: cannot decode image \(OSError: image "
                                        "file is truncated"):
        decode_image(pgm)
    with pytest.raises(DataError, match="nope.jpg: file not found"):
        decode_image(tmp_path / "nope.jpg")


# --- LMDB ----------------------------------------------------------------------------------------

def test_lmdb_round_trip_in_key_order(tmp_path):
    path = str(tmp_path / "db")
    with LMDBWriter(path, commit_every=3) as w:
        for key in ["b", "a", "c", "aa", "0"]:
            w.put(key, key.encode() * 2)
    db = open_db(path)
    assert isinstance(db, LMDBReader)
    assert db.keys == [b"0", b"a", b"aa", b"b", b"c"] and len(db) == 5
    assert db.get("aa") == b"aaaa" and db.get_index(0) == b"00"
    assert db.get_many([b"c", b"a"]) == [b"cc", b"aa"]
    assert list(db.items())[1] == (b"a", b"aa")
    with pytest.raises(DataError, match="no record with key"):
        db.get("zz")
    db.close()


def test_lmdb_writer_grows_the_map_when_full(tmp_path):
    path = str(tmp_path / "db")
    value = bytes(range(256)) * 16                                  # 4 KiB
    with LMDBWriter(path, map_size=64 * 1024, commit_every=50) as w:
        for i in range(200):
            w.put(f"{i:08d}", value)
    assert w.map_size > 64 * 1024 and w.count == 200
    db = open_db(path)
    assert len(db) == 200 and db.get("00000199") == value
    db.close()


def test_lmdb_writer_refuses_an_existing_db_unless_overwrite(tmp_path):
    path = str(tmp_path / "db")
    with LMDBWriter(path) as w:
        w.put("a", b"1")
    with pytest.raises(DataError, match="already exists"):
        LMDBWriter(path)
    with LMDBWriter(path, overwrite=True) as w:
        w.put("b", b"2")
    db = open_db(path)
    assert db.keys == [b"b"]
    db.close()


def test_leveldb_reads_like_lmdb(tmp_path):
    from minicnn.data.db import LevelDBReader, db_writer
    records = {f"{i:08d}_x".encode(): bytes([i]) * (i + 1) for i in (3, 0, 2, 1, 10)}
    with db_writer(tmp_path / "l_leveldb", "leveldb", commit_every=2) as writer:
        for key, value in records.items():                 # out of order: LevelDB sorts
            writer.put(key, value)
    assert writer.count == 5
    db = open_db(str(tmp_path / "l_leveldb"), backend="LMDB")    # told by content, as LMDB
    assert isinstance(db, LevelDBReader) and len(db) == 5
    assert db.keys == sorted(records)
    assert db.get_index(4) == records[b"00000010_x"] and db.get("00000002_x") == b"\2\2\2"
    assert db.get_many(db.keys[:2]) == [records[k] for k in sorted(records)[:2]]
    assert dict(db.items()) == records
    second = open_db(str(tmp_path / "l_leveldb"))         # a second reader shares the open DB
    assert second.keys == db.keys
    other_process = subprocess.run(
        [sys.executable, "-c", "from minicnn.data.db import open_db\n"
         "from minicnn.data.errors import DataError\n"
         f"try: open_db({str(tmp_path / 'l_leveldb')!r})\n"
         "except DataError as e: print(e)"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "another process has this LevelDB open" in other_process.stdout, other_process
    with pytest.raises(DataError, match="no record with key b'nope'"):
        db.get(b"nope")
    db.close()
    second.close()
    with pytest.raises(DataError, match="already exists"):
        db_writer(tmp_path / "l_leveldb", "leveldb")
    with pytest.raises(DataError, match="unknown database backend 'rocksdb'"):
        db_writer(tmp_path / "r", "rocksdb")


def test_broken_and_missing_sources_are_clear_errors(tmp_path):
    level = tmp_path / "train_leveldb"
    level.mkdir()
    (level / "CURRENT").write_text("MANIFEST-000001\n")
    (level / "000003.ldb").write_bytes(b"")
    with pytest.raises(DataError, match="cannot open as a LevelDB database"):
        open_db(str(level))
    with pytest.raises(DataError, match="database not found"):
        open_db(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data.mdb.*no CURRENT file"):
        open_db(str(tmp_path / "empty"))


def test_resolve_path_tries_cwd_then_the_given_dirs(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f.txt").write_text("cwd")
    (tmp_path / "b" / "f.txt").write_text("dir")
    (tmp_path / "b" / "g.txt").write_text("dir")
    monkeypatch.chdir(tmp_path / "a")
    assert resolve_path("f.txt", str(tmp_path / "b")) == "f.txt"
    assert resolve_path("g.txt", None, str(tmp_path / "b")) == os.path.join(tmp_path / "b",
                                                                            "g.txt")
    with pytest.raises(DataError, match="h.txt: list file not found .*looked for") as e:
        resolve_path("h.txt", str(tmp_path / "b"), what="list file")
    assert str(tmp_path / "b" / "h.txt") in str(e.value)
    # a train_val run from its own folder (the usual case): one place, named once
    with pytest.raises(DataError) as e:
        resolve_path("h.txt", str(tmp_path / "a"), what="list file")
    assert str(e.value) == "h.txt: list file not found"


def test_a_missing_optional_package_names_the_pip_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdb", None)              # as if not installed
    with pytest.raises(DataError, match="pip install lmdb"):
        LMDBWriter(str(tmp_path / "db2"))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match="pip install Pillow"):
        decode_image(b"\x89PNG")


class _CloseWaits:
    """An open database handle whose close() signals that it started, then waits for ``go``."""

    def __init__(self, handle):
        self.handle, self.closing, self.go = handle, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def close(self):
        self.closing.set()
        self.go.wait(10)
        self.handle.close()


def test_a_reader_opened_while_the_last_one_closes_gets_an_open_database(tmp_path):
    """The last reader of an LMDB let go in one thread (a dropped data layer's prefetch thread)
    while another thread opens the same database: the new reader must not be handed the
    environment that is being closed (it was, found through the shared table's weak reference
    while the old holder's finalizer ran, and its reads then failed with lmdb's 'Attempt to
    operate on closed/deleted/dropped object')."""
    with LMDBWriter(str(tmp_path / "db")) as w:
        w.put("00000000", b"record")
    first = [LMDBReader(str(tmp_path / "db"))]
    handle = first[0]._shared.handle = _CloseWaits(first[0]._shared.handle)
    dropper = threading.Thread(target=first.clear)     # drops the only reference, in a thread
    dropper.start()
    assert handle.closing.wait(10)
    second = []
    opener = threading.Thread(target=lambda: second.append(LMDBReader(str(tmp_path / "db"))))
    opener.start()
    opener.join(0.3)                 # the opener, if not held back, finds the closing one now
    handle.go.set()
    dropper.join(10)
    opener.join(10)
    assert second[0].get_index(0) == b"record"
    assert len(second[0]) == 1


def test_root_folder_and_list_entry_join_as_caffe_concatenates_them():
    """DeepLab's lists: root_folder "/data/VOC2012" and entries "/JPEGImages/x.jpg" (Caffe
    concatenates the strings; os.path.join would drop the root)."""
    assert root_joined("/data/VOC2012", "/JPEGImages/x.jpg") == "/data/VOC2012/JPEGImages/x.jpg"
    assert root_joined("/data/", "x.jpg") == "/data/x.jpg"
    assert root_joined("/data", "x.jpg") == os.path.join("/data", "x.jpg")
    assert root_joined("", "x.jpg") == "x.jpg"


def _full_parse(value):
    """What a Data layer made of a record before decode_record: the Datum message, then
    decode_datum; (array, label, encoded), or the error's type and message."""
    try:
        datum = parse_binary(value, "Datum", path="rec")
        array, label = decode_datum(datum, None, where="rec")
        return array, label, bool(datum.encoded)
    except Exception as e:
        return type(e), str(e)


def _records():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    png = encode_datum(x, label=4, encoding="png")
    plain = serialize_datum(x, 9)
    yield from (plain, serialize_datum(x[:1], 0), serialize_datum(x, 2**31 - 1),
                serialize(png), serialize(encode_datum(x, -2)),        # negative label
                serialize(encode_datum(x.astype(np.float32), 1)),      # float_data
                serialize(caffe_pb2.Datum(label=1, encoded=True, data=png.data)),
                serialize(caffe_pb2.Datum(encoded=True, data=b"not an image")),
                serialize(caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc")),
                serialize(caffe_pb2.Datum(channels=1, height=2, width=2)),
                b"", plain + b"\x28\x03",                             # label twice: last wins
                plain + b"\x38\x02", plain + b"\x48\x01",             # encoded 2, an unknown field
                b"\x28\x05" + serialize(caffe_pb2.Datum(encoded=True, data=png.data)),
                plain[:-1], plain[:30], b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80")


def test_decode_record_is_the_full_parser_and_decode_datum():
    for value in _records():
        want = _full_parse(value)
        try:
            got = decode_record(value, None, where="rec")
        except Exception as e:
            got = type(e), str(e)
        assert len(got) == len(want), (value[:20], got, want)
        if len(want) == 2:
            assert got == want, value[:20]
            continue
        assert got[1:] == want[1:] and type(got[1]) is type(want[1]), value[:20]
        assert got[0].dtype == want[0].dtype and got[0].flags.writeable
        np.testing.assert_array_equal(got[0], want[0])


def test_a_data_layer_reads_plain_records_without_building_datum_messages(tmp_path,
                                                                          monkeypatch):
    import minicnn
    from minicnn.proto import wire
    rng = np.random.default_rng(4)
    path = str(tmp_path / "db")
    with LMDBWriter(path) as w:
        for i in range(6):
            x = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
            w.put(f"{i:03d}", serialize_datum(x, i) if i % 2 else
                  serialize(encode_datum(x, i, encoding="png")))
    param = caffe_pb2.NetParameter()
    layer = param.layer.add(name="d", type="Data", top=["data", "label"])
    layer.data_param.source, layer.data_param.batch_size = path, 6
    layer.transform_param.crop_size = 4
    net = minicnn.Net(param, phase="TEST")
    want = net.layers[0]._make_batch(0)
    calls = []
    real = wire._Reader.parse
    monkeypatch.setattr(wire._Reader, "parse",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    got = net.layers[0]._make_batch(0)
    assert not calls
    for g, w_ in zip(got, want):
        np.testing.assert_array_equal(g, w_)
    np.testing.assert_array_equal(got[1], np.arange(6))
