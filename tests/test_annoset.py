"""`minicnn convert-annoset` (SSD's convert_annoset): images and VOC XML / txt annotations made
here, converted, then read back by AnnotatedData in TEST and TRAIN; boxes checked against the
XML by hand."""

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn import cli
from minicnn.data.annoset import read_xml_annotation
from minicnn.data.datum import encode_image
from minicnn.data.errors import DataError
from minicnn.proto import parse_text

LABELMAP = '''item { name: "none_of_the_above" label: 0 display_name: "background" }
item { name: "cat" label: 1 display_name: "cat" }
item { name: "dog" label: 2 display_name: "dog" }
'''


def voc_xml(width, height, objects):
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, d, b in objects)
    return (f"<annotation><folder>VOC</folder><filename>x.jpg</filename><size>"
            f"<width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objs}</annotation>")


OBJECTS = [[("dog", 0, (4, 2, 20, 10)), ("cat", 1, (0, 0, 8, 8)), ("dog", 0, (10, 6, 24, 16))],
           [("cat", 0, (2, 4, 12, 14))]]


@pytest.fixture
def voc(tmp_path):
    """Two 24 x 16 PNG images with VOC XML files, a label map and the list file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    images, lines = [], []
    for k, objects in enumerate(OBJECTS):
        img = rng.integers(0, 256, (3, 16, 24), dtype=np.uint8)
        images.append(img)
        (root / "JPEGImages" / f"{k}.png").write_bytes(encode_image(img, "png"))
        (root / "Annotations" / f"{k}.xml").write_text(voc_xml(24, 16, objects))
        lines.append(f"JPEGImages/{k}.png Annotations/{k}.xml")
    (tmp_path / "trainval.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "labelmap.prototxt").write_text(LABELMAP)
    return tmp_path, images


def convert(tmp_path, *extra, db="db"):
    argv = ["convert-annoset", str(tmp_path / "VOC") + "/", str(tmp_path / "trainval.txt"),
            str(tmp_path / db), "--anno-type", "detection",
            "--label-map-file", str(tmp_path / "labelmap.prototxt"), *extra]
    assert cli.main(argv) == 0
    return str(tmp_path / db)


def net(src, transform="", anno="", phase=minicnn.TEST, batch=2, backend="LMDB"):
    return minicnn.Net(parse_text(f'''layer {{ name: "data" type: "AnnotatedData"
      top: "data" top: "label"
      data_param {{ source: "{src}" batch_size: {batch} backend: {backend} }}
      transform_param {{ {transform} }} annotated_data_param {{ {anno} }} }}'''), phase=phase)


# rows of the label top for OBJECTS in groups: dog (label 2) first in image 0, then cat
WANT = [[0, 2, 0, 4 / 24, 2 / 16, 20 / 24, 10 / 16, 0],
        [0, 2, 1, 10 / 24, 6 / 16, 24 / 24, 16 / 16, 0],
        [0, 1, 0, 0, 0, 8 / 24, 8 / 16, 1],
        [1, 1, 0, 2 / 24, 4 / 16, 12 / 24, 14 / 16, 0]]


@pytest.mark.parametrize("flags", [[], ["--encoded"], ["--encode-type", "png"]])
def test_voc_xml_converted_then_read_in_test(voc, flags):
    tmp_path, images = voc
    src = convert(tmp_path, *flags)
    n = net(src)
    n.forward()
    np.testing.assert_array_equal(n.blobs["data"].data, np.stack(images).astype(np.float32))
    np.testing.assert_allclose(n.blobs["label"].data[0, 0], WANT, rtol=1e-6)


def test_resized_encoded_records_read_with_warp_and_mirror_in_train(voc):
    tmp_path, _ = voc
    src = convert(tmp_path, "--encode-type", "jpg", "--resize-height", "8",
                  "--resize-width", "12", "--shuffle", "--backend", "lmdb")
    n = net(src, "mirror: true resize_param { height: 8 width: 12 }",
            anno='batch_sampler { max_sample: 1 max_trials: 1 } '
                 'batch_sampler { sampler { min_scale: 0.3 } '
                 'sample_constraint { min_jaccard_overlap: 0.1 } max_trials: 20 }',
            phase=minicnn.TRAIN)
    for _ in range(3):
        n.forward()
        label = n.blobs["label"].data[0, 0]
        assert n.blobs["data"].shape == (2, 3, 8, 12)
        boxes = label[label[:, 0] >= 0]
        assert np.all((boxes[:, 3:7] >= 0) & (boxes[:, 3:7] <= 1))
        assert np.all(boxes[:, 3] <= boxes[:, 5]) and set(boxes[:, 1]) <= {1, 2}


def test_txt_annotations_and_leveldb(tmp_path):
    pytest.importorskip("plyvel")
    (tmp_path / "VOC").mkdir()
    img = np.zeros((3, 10, 20), np.uint8)
    (tmp_path / "VOC" / "a.png").write_bytes(encode_image(img, "png"))
    (tmp_path / "VOC" / "a.txt").write_text("3 2 1 12 5\n3 0 0 20 10\n1 5 5 6 6\n")
    (tmp_path / "trainval.txt").write_text("a.png a.txt\n")
    (tmp_path / "labelmap.prototxt").write_text(LABELMAP)
    src = convert(tmp_path, "--label-type", "txt", "--backend", "leveldb")
    n = net(src, batch=1, backend="LEVELDB")
    n.forward()
    np.testing.assert_allclose(n.blobs["label"].data[0, 0],
                               [[0, 3, 0, 0.1, 0.1, 0.6, 0.5, 0], [0, 3, 1, 0, 0, 1, 1, 0],
                                [0, 1, 0, 0.25, 0.5, 0.3, 0.6, 0]], rtol=1e-6)


def test_difficult_is_the_one_read_before_bndbox(tmp_path):
    xml = ("<annotation><size><width>10</width><height>10</height></size><object>"
           "<name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
           "</bndbox><difficult>1</difficult></object></annotation>")
    (tmp_path / "a.xml").write_text(xml)
    groups = read_xml_annotation(str(tmp_path / "a.xml"), 10, 10, {"cat": 1})
    assert groups[0][1][0][2] is False


def test_unknown_names_and_bad_lists_are_errors(voc):
    tmp_path, _ = voc
    (tmp_path / "VOC" / "Annotations" / "1.xml").write_text(
        voc_xml(24, 16, [("horse", 0, (1, 1, 2, 2))]))
    with pytest.raises(DataError, match="unknown name 'horse'"):
        from minicnn.data.annoset import convert_annoset
        convert_annoset(str(tmp_path / "VOC") + "/", str(tmp_path / "trainval.txt"),
                        str(tmp_path / "db"), label_map_file=str(tmp_path / "labelmap.prototxt"))
    assert cli.main(["convert-annoset", str(tmp_path), str(tmp_path / "trainval.txt"),
                     str(tmp_path / "db2"), "--anno-type", "detection"]) == 1   # no label map
    assert not (tmp_path / "db").exists()


def test_the_xml_size_normalizes_with_a_warning_when_the_image_differs(tmp_path):
    (tmp_path / "a.xml").write_text(voc_xml(48, 32, [("dog", 0, (12, 8, 24, 16))]))
    with pytest.warns(UserWarning, match="inconsistent image size"):
        groups = read_xml_annotation(str(tmp_path / "a.xml"), 16, 24, {"dog": 2})
    np.testing.assert_allclose(groups[0][1][0][1], [0.25, 0.25, 0.5, 0.5])


def test_coco_json_annotations(tmp_path):
    import json
    (tmp_path / "VOC").mkdir()
    (tmp_path / "VOC" / "a.png").write_bytes(encode_image(np.zeros((3, 10, 20), np.uint8), "png"))
    doc = {"image": {"width": 20, "height": 10},
           "annotation": [{"category_id": 18, "bbox": [2, 1, 10, 4], "iscrowd": 1},
                          {"category_id": 1, "bbox": [0, 0, 5, 5]}]}
    (tmp_path / "VOC" / "a.json").write_text(json.dumps(doc))
    (tmp_path / "trainval.txt").write_text("a.png a.json\n")
    (tmp_path / "labelmap.prototxt").write_text(
        'item { name: "1" label: 1 } item { name: "18" label: 18 }')
    src = convert(tmp_path, "--label-type", "json")
    n = net(src, batch=1)
    n.forward()
    np.testing.assert_allclose(n.blobs["label"].data[0, 0],
                               [[0, 18, 0, 0.1, 0.1, 0.6, 0.5, 1],
                                [0, 1, 0, 0, 0, 0.25, 0.5, 0]], rtol=1e-6)


# --- --min-dim / --max-dim (ReadImageToCVMat) ----------------------------------------------------
# The images are 24 x 16 (cols x rows). Scale by hand: min_dim scales the shorter side up to it
# (float32 min_dim / 16); if int(scale * 24) then passes max_dim, scale = max_dim / 24.

F = np.float32
DIM_CASES = [
    (["--min-dim", "20"], F(20) / F(16), (20, 30)),                   # 1.25
    (["--min-dim", "20", "--max-dim", "25"], F(25) / F(24), (17, 25)),  # int(30) > 25
    (["--max-dim", "12"], F(12) / F(24), (8, 12)),                    # only shrinks
    (["--min-dim", "20", "--resize-height", "5", "--resize-width", "5"], F(1.25), (20, 30)),
    (["--min-dim", "10", "--max-dim", "24"], None, (16, 24)),         # scale 1: left as it is
    (["--min-dim", "-3", "--max-dim", "-1"], None, (16, 24)),         # negatives count as 0
]


@pytest.mark.parametrize("encoded", [False, True])
@pytest.mark.parametrize("flags,scale,size", DIM_CASES)
def test_min_dim_and_max_dim_resize_by_the_forks_factor(voc, flags, scale, size, encoded):
    cv2 = pytest.importorskip("cv2")
    tmp_path, images = voc
    src = convert(tmp_path, *flags, *(["--encode-type", "png"] if encoded else []))
    n = net(src)
    n.forward()
    want = []
    for img in images:
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        if scale is not None:      # cv::resize(img, out, Size(0, 0), scale, scale): bilinear
            hwc = cv2.resize(hwc, (0, 0), fx=float(scale), fy=float(scale),
                             interpolation=cv2.INTER_LINEAR)
        want.append(hwc.transpose(2, 0, 1))
    assert n.blobs["data"].shape[2:] == size
    np.testing.assert_array_equal(n.blobs["data"].data, np.stack(want).astype(np.float32))
    # boxes stay normalized by the original 24 x 16
    np.testing.assert_allclose(n.blobs["label"].data[0, 0], WANT, rtol=1e-6)


def test_the_factor_not_the_rounded_size_sets_the_sampling(voc):
    """25 / 24 makes 25 x 17 (16.67 rounded): cv2.resize to (25, 17) samples differently."""
    cv2 = pytest.importorskip("cv2")
    tmp_path, images = voc
    n = net(convert(tmp_path, "--min-dim", "20", "--max-dim", "25"))
    n.forward()
    hwc = np.ascontiguousarray(images[0].transpose(1, 2, 0))
    by_size = cv2.resize(hwc, (25, 17), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    assert not np.array_equal(n.blobs["data"].data[0], by_size.astype(np.float32))


def test_min_dim_re_encodes_even_at_scale_one(voc):
    cv2 = pytest.importorskip("cv2")
    tmp_path, images = voc
    for k, img in enumerate(images):                 # PNGs stored uncompressed: re-encoding shows
        _, buf = cv2.imencode(".png", np.ascontiguousarray(img.transpose(1, 2, 0)),
                              [cv2.IMWRITE_PNG_COMPRESSION, 0])
        (tmp_path / "VOC" / "JPEGImages" / f"{k}.png").write_bytes(buf.tobytes())
    plain = convert(tmp_path, "--encode-type", "png", db="plain")
    dims = convert(tmp_path, "--encode-type", "png", "--min-dim", "8", db="dims")
    from minicnn.data.db import open_db
    from minicnn.proto import parse_binary
    a, b = open_db(plain, "lmdb"), open_db(dims, "lmdb")
    key = a.keys[0]
    file_bytes = (tmp_path / "VOC" / "JPEGImages" / "0.png").read_bytes()
    assert parse_binary(a.get(key), "AnnotatedDatum").datum.data == file_bytes
    stored = parse_binary(b.get(key), "AnnotatedDatum").datum
    assert stored.encoded and stored.data != file_bytes      # encoded again (scale 1)
    n = net(dims)
    n.forward()
    np.testing.assert_array_equal(n.blobs["data"].data, np.stack(images).astype(np.float32))


# The fork's float factor, not the double one, sets the size: 11 / 6 = 1.83333337 takes 9
# columns to 16.5000003 -> 17 (the double 16.5 rounds half to even: 16); 7 / 10 = 0.69999999
# takes 5 rows to 3.4999999 -> 3 (double: 3.5 -> 4).
@pytest.mark.parametrize("shape,flag,scale,size", [
    ((3, 6, 9), ["--min-dim", "11"], F(11) / F(6), (11, 17)),
    ((3, 5, 10), ["--max-dim", "7"], F(7) / F(10), (3, 7)),
])
def test_min_dim_and_max_dim_in_classification_records(tmp_path, shape, flag, scale, size):
    cv2 = pytest.importorskip("cv2")
    (tmp_path / "VOC").mkdir()
    img = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    (tmp_path / "VOC" / "a.png").write_bytes(encode_image(img, "png"))
    (tmp_path / "list.txt").write_text("a.png 4\n")
    assert cli.main(["convert-annoset", str(tmp_path / "VOC") + "/", str(tmp_path / "list.txt"),
                     str(tmp_path / "db"), *flag]) == 0
    n = net(str(tmp_path / "db"), batch=1)
    n.forward()
    want = cv2.resize(np.ascontiguousarray(img.transpose(1, 2, 0)), (0, 0), fx=float(scale),
                      fy=float(scale), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    assert want.shape[1:] == size
    np.testing.assert_array_equal(n.blobs["data"].data[0], want.astype(np.float32))
    assert n.blobs["label"].data.ravel().tolist() == [4]


def test_an_image_scaled_to_nothing_is_skipped(tmp_path):
    (tmp_path / "VOC").mkdir()
    for name, shape in (("thin.png", (3, 2, 40)), ("ok.png", (3, 8, 8))):
        (tmp_path / "VOC" / name).write_bytes(encode_image(np.zeros(shape, np.uint8), "png"))
    (tmp_path / "list.txt").write_text("thin.png 1\nok.png 2\n")
    from minicnn.data.annoset import convert_annoset
    with pytest.warns(UserWarning, match="thin.png.*to nothing"):     # 2 x 5 / 40 = 0.25 rows
        n = convert_annoset(str(tmp_path / "VOC") + "/", str(tmp_path / "list.txt"),
                            str(tmp_path / "db"), anno_type="classification", max_dim=5)
    assert n == 1


def test_convert_annoset_counts_a_gray_file_turned_180_degrees_in_both_warnings(tmp_path):
    """A gray JPEG turned 180 degrees by its EXIF orientation keeps its size and decodes
    natively to 1 channel: it is named in both warnings (before, only in the channels one)."""
    from minicnn.data.annoset import convert_annoset
    (tmp_path / "VOC").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (4, 6), dtype=np.uint8)).save(
        tmp_path / "VOC" / "upside.jpg", exif=exif)
    (tmp_path / "list.txt").write_text("upside.jpg 1\n")
    with pytest.warns(UserWarning) as record:
        convert_annoset(str(tmp_path / "VOC") + "/", str(tmp_path / "list.txt"),
                        str(tmp_path / "db"), anno_type="classification", encode_type="jpg")
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    assert "upside.jpg is stored as it is" in messages[0] and "1 channel(s), not 3" in messages[0]
    assert "upside.jpg has an EXIF orientation" in messages[1]
    assert "its pixels are not upright" in messages[1]


def test_a_detection_list_without_anno_type_detection_says_to_give_it(voc, capsys):
    # the fork's default anno_type is classification: a user who leaves out --anno-type gets
    # "label 'Annotations/0.xml' ... is not an integer"; the error says which flag to give
    tmp_path, _ = voc
    argv = ["convert-annoset", str(tmp_path / "VOC") + "/", str(tmp_path / "trainval.txt"),
            str(tmp_path / "db"), "--label-map-file", str(tmp_path / "labelmap.prototxt")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "'Annotations/0.xml' of JPEGImages/0.png is not an integer" in err
    assert "give anno_type detection (convert-annoset --anno-type detection)" in err
    assert not (tmp_path / "db").exists()
    (tmp_path / "labels.txt").write_text("JPEGImages/0.png cat\n")         # not a file: no hint
    argv[2] = str(tmp_path / "labels.txt")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "label 'cat' of JPEGImages/0.png is not an integer" in err and "--anno-type" not in err


def test_a_list_whose_images_all_fail_writes_no_database(voc, capsys):
    tmp_path, _ = voc
    argv = ["convert-annoset", str(tmp_path / "VOCX") + "/", str(tmp_path / "trainval.txt"),
            str(tmp_path / "db"), "--anno-type", "detection",
            "--label-map-file", str(tmp_path / "labelmap.prototxt")]
    with pytest.warns(UserWarning) as record:
        assert cli.main(argv) == 1
    assert [str(w.message).split("skipping ")[1] for w in record] == [
        f"{tmp_path}/VOCX/JPEGImages/{k}.png: file not found" for k in (0, 1)]
    err = capsys.readouterr().err
    assert "none of the 2 images could be read" in err and "VOCX/" in err
    assert "no database was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC", "labelmap.prototxt",
                                                          "trainval.txt"]


def test_the_forks_box_warnings_and_what_it_drops_quietly_are_said(voc):
    # the fork warns "bounding box exceeds image boundary" / "bounding box irregular" and keeps
    # the box; it drops quietly a txt file's rest after a bad line and stores an image whose
    # annotation file is missing without boxes (a misspelt Annotations folder: loss 0)
    tmp_path, _ = voc
    path = tmp_path / "a.xml"
    path.write_text(voc_xml(24, 16, [("cat", 0, (4, 2, 30, 10)), ("dog", 0, (9, 6, 5, 12)),
                                     ("dog", 0, (1, 1, 5, 5))]))
    with pytest.warns(UserWarning) as record:
        groups = read_xml_annotation(str(path), 16, 24, {"cat": 1, "dog": 2})
    assert [str(w.message) for w in record] == [
        f"{path}: bounding box (4, 2, 30, 10) exceeds image boundary (24 x 16)",
        f"{path}: bounding box (9, 6, 5, 12) irregular (xmin > xmax or ymin > ymax)"]
    np.testing.assert_allclose(groups[0][1][0][1], [4 / 24, 2 / 16, 30 / 24, 10 / 16])
    assert len(groups[1][1]) == 2                           # both dogs kept, as the fork
    from minicnn.data.annoset import read_txt_annotation
    txt = tmp_path / "a.txt"
    for text, kept, stop in (("1 10 10 20 14\ncar 1 2 3 4\n2 5 5 9 9\n", 1, "car 1 2 3 4"),
                             ("1 10 10 20 14\n2 5 5 9\n", 1, "2 5 5 9"),
                             ("1 -2 3 4 5\n", 1, None)):
        txt.write_text(text)
        with pytest.warns(UserWarning) as record:
            groups = read_txt_annotation(str(txt), 16, 24)
        assert sum(len(annos) for _, annos in groups) == kept
        messages = [str(w.message) for w in record]
        if stop:
            assert messages == [(f"{txt}: reading stopped at {stop!r}, not 'label xmin ymin xmax "
                                 "ymax' (an integer label, four numbers); 1 box(es) before it "
                                 "kept, the rest dropped (as the fork)")]
        else:
            assert messages == [(f"{txt}: bounding box (-2, 3, 4, 5) exceeds image boundary "
                                 "(24 x 16)")]
    (tmp_path / "VOC" / "Annotations" / "1.xml").rename(tmp_path / "1.xml")
    with pytest.warns(UserWarning, match=r"Annotations/1\.xml: annotation file not found: "
                                         r".*JPEGImages/1\.png is stored without boxes"):
        db = convert(tmp_path)
    data_net = net(db)
    data_net.forward()
    labels = data_net.blobs["label"].data.reshape(-1, 8)
    assert set(labels[:, 0]) == {0}                         # image 1 has no box left


@pytest.mark.filterwarnings("ignore:.*is stored as it is")    # its gray PNG: the next test's
@pytest.mark.parametrize("anno_type", ["detection", "classification"])
def test_the_file_itself_is_stored_by_the_forks_matchext(voc, anno_type):
    """The fork's ReadImageToDatum stores the file's own bytes when it is not resized and its
    matchExt (the extension without its dot; "jpg" also matches "jpeg") matches the encoding:
    --encode-type png for a .png file and jpg for a .jpeg one, whatever the file's colours
    (a gray PNG with a colour conversion); convert_annoset's guessed encoding keeps the dot,
    so --encoded alone encodes every image again."""
    from minicnn.data.db import open_db
    from minicnn.proto import parse_binary
    tmp_path, images = voc
    folder = tmp_path / "VOC" / "JPEGImages"
    Image.fromarray(images[0][0]).save(folder / "0.PNG", compress_level=0)      # gray
    Image.fromarray(images[1][::-1].transpose(1, 2, 0)).save(folder / "1.jpeg", quality=90)
    lines = (tmp_path / "trainval.txt").read_text().replace("1.png", "1.jpeg") \
        .replace("0.png", "0.PNG")                         # matchExt lower-cases the extension
    if anno_type == "classification":
        lines = "".join(f"{line.split()[0]} {k}\n" for k, line in enumerate(lines.splitlines()))
    (tmp_path / "trainval.txt").write_text(lines)
    files = [(folder / n).read_bytes() for n in ("0.PNG", "1.jpeg")]

    def stored(*flags):
        src = convert(tmp_path, *flags, "--anno-type", anno_type, db="-".join(flags))
        with open_db(src, "lmdb") as db:
            return [parse_binary(v, "AnnotatedDatum").datum.data for _, v in db.items()]

    assert stored("--encode-type", "png")[0] == files[0]
    assert stored("--encode-type", "jpg")[1] == files[1]
    assert stored("--encode-type", "png", "--min-dim", "20")[0] != files[0]     # resized
    guessed = stored("--encoded")
    assert guessed[0] != files[0] and guessed[1] != files[1]
    assert guessed[0][:4] == b"\x89PNG" and guessed[1][:2] == b"\xff\xd8"


def test_files_stored_as_they_are_that_annotated_data_reads_otherwise_are_warned_about(voc):
    """Stored unchanged by the fork's matchExt, a gray PNG decodes to 1 channel in AnnotatedData
    (the fork's native decode), and a JPEG with an EXIF orientation unrotated, while its boxes
    are normalized by its annotation's size, the upright image's (what the fork's
    GetImageSize, cv::imread, checks it against): both were stored without a word, as the fork
    does. One warning each now; --encoded alone encodes every image again, upright and in
    colour, quietly."""
    import warnings

    from minicnn.data.annoset import convert_annoset
    tmp_path, images = voc
    folder = tmp_path / "VOC" / "JPEGImages"
    Image.fromarray(images[0][0]).save(folder / "0.png")                       # gray
    exif = Image.Exif()
    exif[0x0112] = 6                           # stored 24 x 16, shown turned: 16 x 24
    Image.fromarray(images[1].transpose(1, 2, 0)).save(folder / "1.jpg", exif=exif, quality=95)
    (tmp_path / "VOC" / "Annotations" / "1.xml").write_text(
        voc_xml(16, 24, [("cat", 0, (2, 4, 12, 14))]))
    (tmp_path / "trainval.txt").write_text(
        (tmp_path / "trainval.txt").read_text().replace("1.png", "1.jpg"))

    def run(db, **kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convert_annoset(str(tmp_path / "VOC") + "/", str(tmp_path / "trainval.txt"),
                            str(tmp_path / db), anno_type="detection", encoded=True,
                            label_map_file=str(tmp_path / "labelmap.prototxt"), **kw)
        return [str(w.message) for w in caught]

    messages = run("png", encode_type="png")
    assert len(messages) == 1 and "0.png is stored as it is" in messages[0]
    assert "decodes to 1 channel(s), not 3" in messages[0] and "force_color" in messages[0]
    messages = run("jpg", encode_type="jpg")
    assert len(messages) == 1 and "1.jpg has an EXIF orientation" in messages[0]
    assert "boxes" in messages[0] and "force_color" in messages[0]
    messages = run("gray", encode_type="jpg", gray=True)        # a colour file stored as it is
    assert len(messages) == 2 and "1.jpg is stored as it is" in messages[0]
    assert "decodes to 3 channel(s), not 1" in messages[0]
    assert run("again") == []
    label = [0, 1, 0, 2 / 16, 4 / 24, 12 / 16, 14 / 24, 0]
    for db, transform, shape in (("jpg", "", (1, 3, 16, 24)),
                                 ("jpg", "force_color: true", (1, 3, 24, 16)),
                                 ("again", "", (1, 3, 24, 16))):
        n = net(str(tmp_path / db), transform, batch=1)
        n.forward()
        n.forward()                                             # the JPEG's record
        assert n.blobs["data"].shape == shape
        np.testing.assert_allclose(n.blobs["label"].data.reshape(8), label, rtol=1e-6)


def test_classification_records_stored_unrotated_are_warned_about_by_their_pixels(tmp_path):
    """anno_type classification: JPEGs with an EXIF orientation stored as they are (--encode-type
    jpg) decode unrotated; one warning names the first, counts the rest, and speaks of the
    pixels (such a record has no boxes)."""
    from minicnn.data.annoset import convert_annoset
    rng = np.random.default_rng(4)
    exif = Image.Exif()
    exif[0x0112] = 6
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(
            tmp_path / name, exif=exif, quality=95)
    (tmp_path / "list.txt").write_text("a.jpg 0\nb.jpg 1\n")
    with pytest.warns(UserWarning, match="EXIF") as said:
        convert_annoset(str(tmp_path) + "/", str(tmp_path / "list.txt"), str(tmp_path / "db"),
                        anno_type="classification", encode_type="jpg")
    message = str(said[0].message)
    assert message.startswith(f"{tmp_path / 'a.jpg'} (and 1 more files) has an EXIF")
    assert "its pixels are not upright" in message and "boxes" not in message
