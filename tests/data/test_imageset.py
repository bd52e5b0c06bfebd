"""List files, convert_imageset (images -> LMDB of Datum) and compute_image_mean."""

import os

import numpy as np
import pytest
from PIL import Image

from minicnn.blob import blob_proto_to_array
from minicnn.data.datum import decode_datum, decode_image
from minicnn.data.db import open_db
from minicnn.data.errors import DataError
from minicnn.data.imageset import (
    compute_image_mean,
    convert_imageset,
    parse_list_line,
    read_list_file,
)
from minicnn.layers import DataLayer
from minicnn.proto import parse_binary, read_binary


def make_images(root, names, size=(4, 6), seed=0):
    """Random RGB PNGs; returns their expected BGR CHW arrays."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rgb).save(path)
        out.append(rgb[:, :, ::-1].transpose(2, 0, 1))
    return out


NAMES = ["a.png", "dir with space/b c.png", "c.png", "d.png", "e.png"]


@pytest.fixture
def imageset(tmp_path):
    root = tmp_path / "images"
    images = make_images(str(root), NAMES)
    list_file = tmp_path / "list.txt"
    list_file.write_text("".join(f"{n} {i + 10}\n" for i, n in enumerate(NAMES)))
    return str(root), str(list_file), images


def test_list_lines_split_at_the_last_space():
    assert parse_list_line("my dir/a b.png 3\n") == ("my dir/a b.png", 3)
    assert parse_list_line("x.jpg -1\r\n") == ("x.jpg", -1)
    assert parse_list_line("x.jpg 4   ") == ("x.jpg", 4)
    with pytest.raises(DataError, match="expected 'path label', got ' 3'"):
        parse_list_line(" 3")                                    # no path before the label


def test_list_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.png 1\n\nnolabel.png\n")
    with pytest.raises(DataError, match=r"list.txt:3: expected 'path label'"):
        read_list_file(str(path))
    path.write_text("a.png 1\nb.png one\n")
    with pytest.raises(DataError, match=r"list.txt:2: the label 'one' is not an integer"):
        read_list_file(str(path))
    path.write_text("a.png 1\n\n  \nb.png 2\n")
    assert read_list_file(str(path)) == [("a.png", 1, 1), ("b.png", 2, 4)]
    with pytest.raises(DataError, match="list file not found"):
        read_list_file(str(tmp_path / "none.txt"))


def test_convert_imageset_and_the_data_layer_round_trip(imageset, tmp_path):
    root, list_file, images = imageset
    db_path = str(tmp_path / "db")
    assert convert_imageset(root + "/", list_file, db_path) == 5
    db = open_db(db_path)
    assert db.keys == [f"{i:08d}_{n}".encode() for i, n in enumerate(NAMES)]
    for i, (_, value) in enumerate(db.items()):
        array, label = decode_datum(value)
        assert label == i + 10
        np.testing.assert_array_equal(array, images[i])
    db.close()
    # the Data layer reads the keys in order and wraps around at the end
    layer = DataLayer(source=db_path, batch_size=2, backend="LMDB", phase="TEST")
    order = []
    for _ in range(4):
        data, label = layer()
        assert data.shape == (2, 3, 4, 6) and data.dtype == np.float32
        for d, lab in zip(data, label):
            i = int(lab) - 10
            np.testing.assert_array_equal(d, images[i])
            order.append(i)
    assert order == [0, 1, 2, 3, 4, 0, 1, 2]


def test_gray_and_resize(imageset, tmp_path):
    root, list_file, _ = imageset
    db_path = str(tmp_path / "db")
    convert_imageset(root, list_file, db_path, resize_height=3, resize_width=5, gray=True)
    db = open_db(db_path)
    array, _ = decode_datum(db.get_index(1))
    assert array.shape == (1, 3, 5)
    db.close()
    with pytest.raises(ValueError, match="both"):
        convert_imageset(root, list_file, str(tmp_path / "x"), resize_height=3)


def test_shuffle_is_seeded_and_keys_follow_the_new_order(imageset, tmp_path):
    root, list_file, _ = imageset
    keys = []
    for k, seed in enumerate([5, 5, 6]):
        path = str(tmp_path / f"db{k}")
        convert_imageset(root, list_file, path, shuffle=True, seed=seed)
        db = open_db(path)
        keys.append(db.keys)
        db.close()
    assert keys[0] == keys[1] != keys[2]
    names = [k.decode()[9:] for k in keys[0]]
    assert sorted(names) == sorted(NAMES) and names != NAMES
    assert [k[:8] for k in keys[0]] == [f"{i:08d}".encode() for i in range(5)]


def test_encoded_records_decode_to_the_same_pixels(imageset, tmp_path):
    root, list_file, images = imageset
    db_path = str(tmp_path / "db")
    convert_imageset(root, list_file, db_path, encoded=True)
    db = open_db(db_path)
    with open(os.path.join(root, NAMES[0]), "rb") as f:
        raw = f.read()
    datum = parse_binary(db.get_index(0), "Datum")
    assert datum.encoded and datum.data == raw                    # the file itself
    db.close()
    layer = DataLayer(source=db_path, batch_size=5, backend="LMDB")
    data, label = layer()
    for d, lab in zip(data, label):
        np.testing.assert_array_equal(d, images[int(lab) - 10])
    # re-encoding as another type, and with a resize
    convert_imageset(root, list_file, str(tmp_path / "db2"), encoded=True, encode_type="bmp",
                     resize_height=4, resize_width=6)
    db = open_db(str(tmp_path / "db2"))
    value = db.get_index(2)
    assert b"BM" in value[:12]
    np.testing.assert_array_equal(decode_datum(value)[0], images[2])
    db.close()
    # a resized image is encoded again in its file's format, never the file as it is
    convert_imageset(root, list_file, str(tmp_path / "db3"), encoded=True, resize_height=2,
                     resize_width=3)
    db = open_db(str(tmp_path / "db3"))
    datum = parse_binary(db.get_index(0), "Datum")
    db.close()
    assert datum.data != raw and datum.data[:4] == b"\x89PNG"
    assert decode_datum(datum)[0].shape == (3, 2, 3)


def test_encode_type_alone_encodes_as_caffe_does(imageset, tmp_path):
    root, list_file, images = imageset
    convert_imageset(root, list_file, str(tmp_path / "db"), encode_type="bmp")
    db = open_db(str(tmp_path / "db"))
    datum = parse_binary(db.get_index(0), "Datum")
    assert datum.encoded and datum.data[:2] == b"BM"
    np.testing.assert_array_equal(decode_datum(db.get_index(0))[0], images[0])
    db.close()


def test_check_size_and_unreadable_images(imageset, tmp_path):
    root, list_file, _ = imageset
    make_images(root, ["big.png"], size=(5, 5))
    with open(list_file, "a") as f:
        f.write("missing.png 1\nbig.png 2\n")
    with pytest.warns(UserWarning, match="missing.png"):
        n = convert_imageset(root, list_file, str(tmp_path / "db"))
    assert n == 6
    with open_db(str(tmp_path / "db")) as db:     # the skipped image's index is used up
        keys = [k.decode() for k, _ in db.items()]
    assert keys[-2:] == ["00000004_e.png", "00000006_big.png"]
    with pytest.raises(DataError, match=r"list.txt:7: image .*big.png is 3x5x5, the first one "
                                        r"was 3x4x6"), pytest.warns(UserWarning):
        convert_imageset(root, list_file, str(tmp_path / "db2"), check_size=True)
    assert not os.path.exists(tmp_path / "db2")                   # nothing half-written
    with pytest.raises(DataError, match="already exists"):
        convert_imageset(root, list_file, str(tmp_path / "db"))
    with pytest.warns(UserWarning):
        assert convert_imageset(root, list_file, str(tmp_path / "db"), overwrite=True) == 6


def test_compute_image_mean_is_the_numpy_mean(imageset, tmp_path):
    root, list_file, images = imageset
    db_path = str(tmp_path / "db")
    convert_imageset(root, list_file, db_path)
    out = str(tmp_path / "mean.binaryproto")
    mean = compute_image_mean(db_path, out)
    expected = np.mean(np.stack(images).astype(np.float64), axis=0)[None]
    assert mean.shape == (1, 3, 4, 6) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    proto = read_binary(out, "BlobProto")
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 3, 4, 6)
    np.testing.assert_array_equal(blob_proto_to_array(proto), mean)
    # and a Data layer can subtract it
    layer = DataLayer(source=db_path, batch_size=1, backend="LMDB", phase="TEST",
                      transform_param={"mean_file": out})
    data, _ = layer()
    np.testing.assert_allclose(data[0], images[0] - mean[0], atol=1e-4)


def test_compute_image_mean_sums_in_float32_as_caffe(tmp_path):
    """Caffe's compute_image_mean adds each record into the BlobProto's float data and divides
    in float: float32 rounding at every step, record by record (float64 sums round differently
    here)."""
    from minicnn.data.datum import encode_datum
    from minicnn.data.db import LMDBWriter
    from minicnn.proto import serialize
    rng = np.random.default_rng(3)
    records = (rng.random((60, 1, 4, 5)) * rng.choice([1e-3, 1.0, 1e3], (60, 1, 1, 1))) \
        .astype(np.float32)
    writer = LMDBWriter(tmp_path / "db")
    for i, record in enumerate(records):
        writer.put(f"{i:08d}", serialize(encode_datum(record)))
    writer.close()
    total = np.zeros((1, 4, 5), np.float32)
    for record in records:
        total = total + record                                    # float32 each time
    want = total / np.float32(len(records))
    mean = compute_image_mean(str(tmp_path / "db"))
    np.testing.assert_array_equal(mean[0], want)
    assert not np.array_equal(want, (records.astype(np.float64).sum(0) / 60).astype(np.float32))


def test_encoded_records_hold_the_file_by_caffes_matchext_rule(tmp_path):
    """Caffe 1.0's ReadImageToDatum stores the file's own bytes when it is not resized and
    matchExt(file, encoding) holds: the file's extension is taken *with* its dot, so the
    encoding convert_imageset guesses (".jpe", ".jpeg") matches, an encode_type such as "jpg"
    or "png" never does (the image is encoded again, cv::imencode), ".png" does for a .png.
    Its channel test always holds: with gray a colour file is stored as it is, in colour."""
    images = make_images(str(tmp_path), ["a.png"])
    Image.open(tmp_path / "a.png").save(tmp_path / "a.jpe", format="JPEG")
    Image.open(tmp_path / "a.png").save(tmp_path / "b.jpeg", format="JPEG")
    Image.open(tmp_path / "a.png").save(tmp_path / "a.png", compress_level=0)  # re-encoding shows
    (tmp_path / "list.txt").write_text("a.jpe 0\nb.jpeg 1\na.png 2\n")
    files = [(tmp_path / n).read_bytes() for n in ("a.jpe", "b.jpeg", "a.png")]

    def stored(name, **kw):
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / name), **kw)
        with open_db(str(tmp_path / name)) as db:
            return [parse_binary(v, "Datum").data for _, v in db.items()]

    assert stored("guessed", encoded=True) == files
    jpg = stored("jpg", encode_type="jpg")
    assert all(a != b and a[:2] == b"\xff\xd8" for a, b in zip(jpg, files))
    png = stored("png", encode_type="png")
    assert png[2] != files[2] and png[2][:4] == b"\x89PNG"
    np.testing.assert_array_equal(decode_image(png[2]), images[0])
    assert stored("dot_png", encode_type=".PNG")[2] == files[2]
    with pytest.warns(UserWarning, match=r"a.jpe is stored as it is, .* decodes to 3 channel"):
        gray = stored("gray", encoded=True, gray=True)
    assert gray == files
    assert decode_image(gray[2], None).shape == (3, 4, 6)
    Image.open(tmp_path / "a.png").convert("L").save(tmp_path / "a.png")   # a gray file
    with pytest.warns(UserWarning, match=r"a.png is stored as it is, .* decodes to 1 channel"):
        assert stored("color", encoded=True)[2] == (tmp_path / "a.png").read_bytes()


def test_compute_image_mean_names_the_channels_of_a_natively_decoded_record(tmp_path):
    """An encoded LMDB holding a gray PNG among colour ones: compute_image_mean decodes
    natively, as Caffe's does (DecodeDatumNative, then a CHECK on the size), so the gray
    record has 1 channel. The error said 'has shape (1, 4, 6), the first one (3, 4, 6): every
    image must have the same size', with the key as bytes (b'...'), and no way out; it now
    names the channels, why, and what stores 3-channel records."""
    make_images(str(tmp_path), ["a.png", "c.png"])
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\nc.png 0\n")
    with pytest.warns(UserWarning, match="b.png is stored as it is"):
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"),
                         encoded=True)
    with pytest.raises(DataError) as e:
        compute_image_mean(str(tmp_path / "db"))
    message = str(e.value)
    assert "'00000001_b.png'" in message and "b'" not in message
    assert "1 channel" in message and "first one to 3" in message and "same size" not in message
    assert "--encode-type" in message and "mean_value" in message
    make_images(str(tmp_path), ["d.png"], size=(5, 6))
    (tmp_path / "list2.txt").write_text("a.png 0\nd.png 1\n")
    convert_imageset(str(tmp_path), str(tmp_path / "list2.txt"), str(tmp_path / "db2"),
                     encoded=True)
    with pytest.raises(DataError, match=r"'00000001_d.png' is 5 x 6, the first one 4 x 6.*"
                                        r"--resize-height"):
        compute_image_mean(str(tmp_path / "db2"))


def test_convert_imageset_counts_every_file_stored_in_other_channels(tmp_path):
    """A folder with two gray PNGs and an RGBA one among colour files, --encoded: each is
    stored as it is and a Data layer decodes it to 1 or 4 channels. Only the first was
    warned about, so removing or fixing it showed the next one run after run; one warning
    now names the first and counts the others by their channels."""
    import warnings
    make_images(str(tmp_path), ["a.png", "e.png"])
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (4, 6), dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (4, 6), dtype=np.uint8)).save(tmp_path / "d.png")
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\nc.png 0\nd.png 1\ne.png 0\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"),
                         encoded=True)
    messages = [str(w.message) for w in caught if "stored as it is" in str(w.message)]
    assert len(messages) == 1
    assert "b.png is stored as it is" in messages[0] and "decodes to 1 channel(s), not 3" \
        in messages[0]
    assert "2 more files (1 to 1 channel(s), 1 to 4 channel(s))" in messages[0]
    assert "force_color" in messages[0]

    def message(lines, db):
        (tmp_path / "list2.txt").write_text(lines)
        with pytest.warns(UserWarning, match="stored as it is") as said:
            convert_imageset(str(tmp_path), str(tmp_path / "list2.txt"), str(tmp_path / db),
                             encoded=True)
        return str(said[0].message)

    Image.fromarray(rng.integers(0, 256, (4, 6), dtype=np.uint8)).save(tmp_path / "f.png")
    assert "; so do 1 more files (1 to 1 channel(s))," in message("b.png 1\nd.png 1\n", "two")
    assert "; so do 3 more files (2 to 1 channel(s), 1 to 4 channel(s))," in message(
        "b.png 1\nd.png 1\nc.png 0\nf.png 1\n", "four")


def test_convert_imageset_warns_about_files_stored_unrotated(tmp_path):
    """A JPEG with an EXIF orientation stored as it is (--encoded) decodes unrotated in a Data
    layer (Caffe's native decode), where ImageData and a raw record turn it: one warning names
    the first and counts the rest; a file without an orientation is not named."""
    import warnings
    rng = np.random.default_rng(2)
    for name, orientation in (("plain.jpg", 1), ("turned.jpg", 6), ("upside.jpg", 3)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).save(
            tmp_path / name, exif=exif)
    (tmp_path / "list.txt").write_text("plain.jpg 0\nturned.jpg 1\nupside.jpg 0\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"),
                         encoded=True, shuffle=True, seed=0)
    messages = [str(w.message) for w in caught if "EXIF" in str(w.message)]
    assert len(messages) == 1, messages
    assert ("turned.jpg (and 1 more files) has an EXIF orientation" in messages[0]
            or "upside.jpg (and 1 more files) has an EXIF orientation" in messages[0])
    assert "plain.jpg" not in messages[0] and "force_color" in messages[0]
    db = open_db(str(tmp_path / "db"))
    shapes = [decode_datum(db.get_index(i))[0].shape for i in range(3)]
    db.close()
    assert shapes == [(3, 4, 6)] * 3                              # as stored: not turned
    with warnings.catch_warnings(record=True) as caught:          # re-encoded: upright, quiet
        warnings.simplefilter("always")
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db2"),
                         encode_type="png", shuffle=True, seed=0)
    assert not [w for w in caught if "EXIF" in str(w.message)]
    (tmp_path / "one.txt").write_text("plain.jpg 0\nturned.jpg 1\n")
    with pytest.warns(UserWarning, match="EXIF") as said:
        convert_imageset(str(tmp_path), str(tmp_path / "one.txt"), str(tmp_path / "db3"),
                         encoded=True)
    assert str(said[0].message).startswith(f"{tmp_path / 'turned.jpg'} has an EXIF orientation")


@pytest.mark.parametrize("decoder", ["opencv", "pillow"])
def test_convert_imageset_counts_turned_files_whose_channels_or_size_also_match(
        tmp_path, monkeypatch, decoder):
    """An EXIF orientation is told from the native decode by comparing like with like: a
    gray or RGBA file (its record decodes to other channels too), turned 180 degrees (the
    size kept) or square (turned 90, the size kept) is counted in both warnings, once each;
    --gray compares in gray. Before, only a turn that changed the size, or one of a file
    with the asked-for channels, was seen."""
    import warnings
    monkeypatch.setenv("MINICNN_IMAGE_DECODER", decoder)
    rng = np.random.default_rng(3)
    files = (("gray3.jpg", "L", (4, 6), 3), ("graysquare6.jpg", "L", (6, 6), 6),
             ("rgba3.png", "RGBA", (4, 6), 3), ("rgbasquare8.png", "RGBA", (6, 6), 8),
             ("rgb3.jpg", "RGB", (4, 6), 3), ("gray1.jpg", "L", (4, 6), 1),
             ("rgba.png", "RGBA", (6, 6), 1))
    for name, mode, size, orientation in files:
        exif = Image.Exif()
        exif[0x0112] = orientation
        shape = size if mode == "L" else (*size, len(mode))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
            tmp_path / name, exif=exif)
    (tmp_path / "list.txt").write_text("".join(f"{f[0]} 0\n" for f in files))

    def messages(db, **kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / db),
                             encoded=True, **kw)
        return ([str(w.message) for w in caught if "stored as it is" in str(w.message)],
                [str(w.message) for w in caught if "EXIF" in str(w.message)])

    channels, turned = messages("db")
    assert len(channels) == 1 and "gray3.jpg is stored as it is" in channels[0]
    assert "so do 5 more files (2 to 1 channel(s), 3 to 4 channel(s))" in channels[0]
    assert len(turned) == 1 and "gray3.jpg (and 4 more files) has an EXIF" in turned[0]
    channels, turned = messages("gray", gray=True)               # rgb3.jpg: 3 channels
    assert len(channels) == 1 and "rgba3.png is stored as it is" in channels[0]
    assert "so do 3 more files (1 to 3 channel(s), 2 to 4 channel(s))" in channels[0]
    assert len(turned) == 1 and "gray3.jpg (and 4 more files) has an EXIF" in turned[0]


def test_a_16_bit_file_is_stored_as_it_is_and_named_by_the_data_layer(tmp_path):
    """--encoded stores a 16-bit PNG as it is, as Caffe does (imread reads it as 8-bit colour);
    its native decode, a Data layer's, is the error naming it, not convert_imageset's: it was
    not skipped, nor warned about as other channels."""
    import warnings
    cv2 = pytest.importorskip("cv2")
    deep = np.arange(4 * 6 * 3, dtype=np.uint16).reshape(4, 6, 3) * 900
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    (tmp_path / "list.txt").write_text("deep.png 0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convert_imageset(str(tmp_path), str(tmp_path / "list.txt"),
                                str(tmp_path / "db"), encoded=True) == 1
    db = open_db(str(tmp_path / "db"))
    value = db.get_index(0)
    db.close()
    assert parse_binary(value, "Datum").data == (tmp_path / "deep.png").read_bytes()
    with pytest.raises(DataError, match="an image of 16 bits"):
        decode_datum(value)


def test_compute_image_mean_of_raw_records_of_other_channels(tmp_path):
    """Raw (not encoded) records of 3 and 1 channels: the error names the channels, without
    the native decode's explanation, which is about encoded records."""
    from minicnn.data.datum import serialize_datum
    from minicnn.data.db import LMDBWriter
    with LMDBWriter(str(tmp_path / "db")) as w:
        w.put("00000000_a", serialize_datum(np.zeros((3, 4, 6), np.uint8)))
        w.put("00000001_b", serialize_datum(np.zeros((1, 4, 6), np.uint8)))
    with pytest.raises(DataError, match=r"record '00000001_b' decodes to 1 channel\(s\), the "
                                        r"first one to 3: every record must have as many "
                                        r"channels$"):
        compute_image_mean(str(tmp_path / "db"))


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_an_unturned_gray_or_rgba_file_is_decoded_once_to_compare(tmp_path, monkeypatch, mode):
    """native_differences decodes such a file natively and compares: imread's colour is its
    gray repeated or its alpha dropped. Another decode, the orientation left unapplied, is for
    files that differ (turned ones: the test above)."""
    from minicnn.data import imageset
    rng = np.random.default_rng(0)
    shape = (5, 7) if mode == "L" else (5, 7, 4)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    chw = imageset.decode_image(data, True)
    calls = []

    def counting(*args, **kw):
        calls.append(kw)
        return decode_image(*args, **kw)
    monkeypatch.setattr(imageset, "decode_image", counting)
    assert imageset.native_differences(data, chw) == ((1 if mode == "L" else 4), False)
    assert len(calls) == 1
