"""Segmentation scores against hand-computed cases (confusion matrix, IoU, mIoU with absent
classes, boundary bands), VOC's colours, and `minicnn segment` / `minicnn eval-segmentation`
with a net whose answers are known."""

import json

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn import segmentation as seg
from minicnn.cli import main
from minicnn.data.datum import encode_image
from minicnn.errors import MinicnnError
from minicnn.proto import parse_text


# --- scores by hand ----------------------------------------------------------------------------

TRUTH = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 1, 0]])


def test_confusion_matrix_by_hand():
    m = seg.confusion_matrix(PRED, TRUTH, 4)
    np.testing.assert_array_equal(m, [[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    where = np.array([[True, False, True], [True, True, True]])
    np.testing.assert_array_equal(seg.confusion_matrix(PRED, TRUTH, 3, where=where),
                                  [[1, 0, 0], [0, 2, 0], [0, 1, 0]])


def test_iou_miou_and_accuracies_by_hand():
    """class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 2, FN 0 -> 1/2; class 2: TP 0, FN 1
    -> 0; class 3 never occurs and is left out of the mean: mIoU = 1/3. Pixel accuracy 3/5;
    class accuracies 1/2, 1, 0 -> 1/2."""
    s = seg.scores_from_confusion(seg.confusion_matrix(PRED, TRUTH, 4))
    assert s["iou"] == [0.5, 0.5, 0.0, None]
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["mean_class_accuracy"] == pytest.approx(1 / 2)
    assert s["pixels"] == 5


def test_a_class_only_predicted_counts_with_iou_zero():
    s = seg.scores_from_confusion(seg.confusion_matrix(np.array([[0, 3]]), np.array([[0, 0]]),
                                                       4))
    assert s["iou"] == [0.5, None, None, 0.0]
    assert s["miou"] == pytest.approx(0.25)
    perfect = seg.scores_from_confusion(seg.confusion_matrix(TRUTH, TRUTH, 3))
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    empty = seg.scores_from_confusion(np.zeros((3, 3)))
    assert empty["miou"] is None and empty["pixel_accuracy"] is None


def test_boundary_band_by_hand():
    truth = np.zeros((5, 6), np.uint8)
    truth[1:3, 2:4] = 1
    want1 = np.zeros((5, 6), bool)
    want1[0:4, 1:5] = True                    # the 2 x 2 square and its 1-pixel ring
    np.testing.assert_array_equal(seg.boundary_band(truth, 1), want1)
    assert seg.boundary_band(truth, 2).all()  # every pixel is within 2 of the square's edge
    truth[:, :] = 0
    truth[0, 0] = 1
    band = seg.boundary_band(truth, 2)
    assert band[:3, :3].all() and band.sum() == 9
    assert not seg.boundary_band(np.full((4, 4), 3), 1).any()
    with pytest.raises(MinicnnError, match="at least 1 pixel"):
        seg.boundary_band(truth, 0)


def test_score_errors():
    with pytest.raises(MinicnnError, match="holds class 7, outside the net's 3 classes"):
        seg.confusion_matrix(np.zeros((1, 2)), np.array([[0, 7]]), 3)
    with pytest.raises(MinicnnError, match=r"prediction holds a class outside \[0, 3\)"):
        seg.confusion_matrix(np.array([[0, 3]]), np.array([[0, 1]]), 3)
    with pytest.raises(MinicnnError, match=r"prediction is \(1, 2\) but the truth is \(2,\)"):
        seg.confusion_matrix(np.zeros((1, 2)), np.zeros(2), 3)


def test_voc_palette_colours_and_overlay():
    pal = seg.palette()
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]
    labels = np.array([[0, 1], [255, 2]])
    np.testing.assert_array_equal(seg.colorize(labels)[0, 1], [128, 0, 0])
    rgb = np.full((2, 2, 3), 100, np.uint8)
    out = seg.overlay(rgb, labels, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[1, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50]
    with pytest.raises(MinicnnError, match="2x2 but the labels are 1x2"):
        seg.overlay(rgb, labels[:1])


# --- a net with known answers ------------------------------------------------------------------

NET = """
name: "argmax_of_channels"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 } }
"""


@pytest.fixture
def known_net(tmp_path):
    """A 1x1 convolution with identity weights: the class of a pixel is its largest BGR
    channel. Returns (deploy path, weights path)."""
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(NET)
    net = minicnn.Net(str(deploy))
    net.params["score"][0].data[...] = np.eye(3).reshape(3, 3, 1, 1)
    net.params["score"][1].data[...] = 0
    net.save(str(tmp_path / "w.caffemodel"))
    return str(deploy), str(tmp_path / "w.caffemodel")


def write_case(tmp_path, name, classes, truth):
    """An image whose pixel (r, c) has its largest BGR channel at classes[r, c]."""
    h, w = classes.shape
    bgr = np.full((3, h, w), 40, np.uint8)
    for k in range(3):
        bgr[k][classes == k] = 220
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    (tmp_path / "labels_full").mkdir(exist_ok=True)
    (tmp_path / "images" / f"{name}.png").write_bytes(encode_image(bgr, "png"))
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "labels" / f"{name}.png")
    full = np.where(truth == 255, classes, truth)                     # the band "filled in"
    Image.fromarray(full.astype(np.uint8)).save(tmp_path / "labels_full" / f"{name}.png")
    return f"images/{name}.png labels/{name}.png\n"


def test_segment_and_evaluate_give_the_known_answers(tmp_path, known_net):
    net = minicnn.Net(*known_net)
    classes = np.zeros((6, 9), int)
    classes[:, 3:6], classes[:, 6:] = 1, 2
    image = tmp_path / "images"
    write_case(tmp_path, "a", classes, classes)
    labels, scores, chw = seg.segment(net, str(image / "a.png"))     # any size: 6 x 9
    np.testing.assert_array_equal(labels, classes)
    assert scores.shape == (3, 6, 9) and chw.shape == (3, 6, 9)
    truth = classes.copy()
    truth[0, :] = 0                                                   # 6 pixels wrong
    truth[5, 0] = 255                                                 # not scored
    lines = write_case(tmp_path, "a", classes, truth)
    other = np.ones((4, 4), int)
    lines += write_case(tmp_path, "b", other, other)
    (tmp_path / "list.txt").write_text(lines)
    pairs = seg.read_segmentation_list(str(tmp_path / "list.txt"))
    result = seg.evaluate(net, pairs, bands=(1,))
    m = np.zeros((3, 3), int)
    m += seg.confusion_matrix(classes, truth, 3) + seg.confusion_matrix(other, other, 3)
    assert result["confusion"] == m.tolist()
    # class 0: TP 17, FN 0, FP 6 (the row of 1s and 2s labelled 0)
    assert result["overall"]["iou"][0] == pytest.approx(17 / 23)
    assert result["overall"]["iou"][1] == pytest.approx((15 + 16) / (18 + 16))
    assert result["overall"]["iou"][2] == pytest.approx(15 / 18)
    assert result["images"] == 2 and result["boundary"][1]["pixels"] > 0


def test_cli_segment_writes_masks_overlays_and_labels(tmp_path, known_net, capsys):
    classes = np.zeros((5, 7), int)
    classes[2:, 4:] = 2
    write_case(tmp_path, "pic", classes, classes)
    model, weights = known_net
    out = tmp_path / "out"
    assert main(["segment", "--model", model, "--weights", weights,
                 str(tmp_path / "images" / "pic.png"), "--out", str(out)]) == 0
    labels = np.asarray(Image.open(out / "pic_labels.png"))
    np.testing.assert_array_equal(labels, classes)
    mask = np.asarray(Image.open(out / "pic_mask.png").convert("RGB"))
    np.testing.assert_array_equal(mask[4, 6], seg.palette()[2])
    assert Image.open(out / "pic_overlay.png").size == (7, 5)
    assert "pixels per class: 0 26, 2 9" in capsys.readouterr().out


def test_cli_segment_numbers_images_that_share_a_file_name(tmp_path, known_net):
    model, weights = known_net
    paths = []
    for folder, k in (("one", 1), ("two", 2)):                   # both called pic.png
        bgr = np.full((3, 4, 5), 40, np.uint8)
        bgr[k] = 220                                             # every pixel class k
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "pic.png").write_bytes(encode_image(bgr, "png"))
        paths.append(str(tmp_path / folder / "pic.png"))
    out = tmp_path / "out"
    assert main(["segment", "--model", model, "--weights", weights, *paths,
                 "--out", str(out)]) == 0
    assert np.all(np.asarray(Image.open(out / "pic_labels.png")) == 1)
    assert np.all(np.asarray(Image.open(out / "pic_2_labels.png")) == 2)


def test_cli_eval_segmentation_prints_and_writes_the_scores(tmp_path, known_net, capsys):
    classes = np.zeros((6, 6), int)
    classes[:3] = 1
    truth = classes.copy()
    truth[2, :] = 255                                   # a band of ignored pixels
    truth[0, 0] = 0
    (tmp_path / "list.txt").write_text(write_case(tmp_path, "x", classes, truth))
    (tmp_path / "names.txt").write_text("bg\none\ntwo\n")
    model, weights = known_net
    assert main(["eval-segmentation", "--model", model, "--weights", weights, "--list",
                 str(tmp_path / "list.txt"), "--names", str(tmp_path / "names.txt"),
                 "--band", "1,2", "--out", str(tmp_path / "ev")]) == 0
    text = capsys.readouterr().out
    # scored: 30 pixels; class 0: TP 18, FP 0, FN 1 (the corner) -> 18/19; class 1: 11/12
    miou = (18 / 19 + 11 / 12) / 2
    assert f"mIoU over 1 images (30 scored pixels): {miou:.4f}" in text
    assert "IoU@1px" in text and "IoU@2px" in text and "one" in text
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["overall"]["miou"] == pytest.approx(miou)
    assert main(["eval-segmentation", "--model", model, "--weights", weights, "--list",
                 str(tmp_path / "list.txt"), "--labels-dir", "labels_full"]) == 0
    text = capsys.readouterr().out
    assert "(36 scored pixels)" in text                 # the band is labelled there


def test_cli_errors_are_one_line(tmp_path, known_net, capsys):
    model, weights = known_net
    assert main(["segment", "--model", model, "--weights", weights, "--out",
                 str(tmp_path)]) == 1
    assert "give the images" in capsys.readouterr().err
    classes = np.zeros((3, 3), int)
    (tmp_path / "list.txt").write_text(write_case(tmp_path, "x", classes, classes + 5))
    assert main(["eval-segmentation", "--model", model, "--weights", weights, "--list",
                 str(tmp_path / "list.txt")]) == 1
    err = capsys.readouterr().err
    assert "x.png: the truth holds class 5, outside the net's 3 classes" in err
    assert main(["eval-segmentation", "--model", model, "--list", str(tmp_path / "list.txt"),
                 "--labels-dir", "other"]) == 1
    assert "other" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_text("images/x.png labels/none.png\n")
    assert main(["eval-segmentation", "--model", model, "--list",
                 str(tmp_path / "bad.txt")]) == 1
    assert "bad.txt:1: 'labels/none.png'" in capsys.readouterr().err


def test_a_net_that_does_not_upsample_is_refused(tmp_path):
    deploy = tmp_path / "d.prototxt"
    deploy.write_text(NET.replace("kernel_size: 1", "kernel_size: 1 stride: 2"))
    write_case(tmp_path, "y", np.zeros((4, 4), int), np.zeros((4, 4), int))
    with pytest.raises(MinicnnError, match="is 2x2 but the image .* is 4x4: the net must "
                                           "upsample"):
        seg.segment(minicnn.Net(str(deploy)), str(tmp_path / "images" / "y.png"))


def test_segment_net_dtype_and_gray(tmp_path):
    text = NET.replace("dim: 3", "dim: 1").replace("num_output: 3", "num_output: 2")
    deploy = tmp_path / "g.prototxt"
    deploy.write_text(text)
    net = minicnn.Net(parse_text(text, "NetParameter"))
    net.params["score"][0].data[...] = np.array([1.0, -1.0]).reshape(2, 1, 1, 1)
    net.params["score"][1].data[...] = 0
    gray = np.array([[0, 255, 0]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    labels, _, chw = seg.segment(net, str(tmp_path / "g.png"))
    assert chw.shape == (1, 1, 3)
    np.testing.assert_array_equal(labels, [[1, 0, 1]])
    assert seg.rgb_of(chw).shape == (1, 3, 3)


def test_multi_scale_averages_the_resized_score_maps(tmp_path, known_net):
    """scales: the image resized corner-aligned ((size - 1) * s + 1 pixels), each score map
    resized back, the maps averaged; one scale of 1 is the plain run."""
    from minicnn import ops
    net = minicnn.Net(*known_net)
    rng = np.random.default_rng(4)
    classes = rng.integers(0, 3, (9, 13))
    write_case(tmp_path, "m", classes, classes)
    path = str(tmp_path / "images" / "m.png")
    plain = seg.segment(net, path)
    same = seg.segment(net, path, scales=(1.0,))
    np.testing.assert_array_equal(plain[1], same[1])
    assert seg.scaled_size(97, 0.75) == 73 and seg.scaled_size(97, 1.25) == 121
    labels, scores, _ = seg.segment(net, path, scales=(0.5, 1.0, 1.5))
    x, _ = seg.load_input(path)
    want = 0
    for s in (0.5, 1.0, 1.5):
        size = (seg.scaled_size(9, s), seg.scaled_size(13, s))
        assert size == ((5, 7), (9, 13), (13, 19))[(0.5, 1.0, 1.5).index(s)]
        xs = ops.interp_forward(x, out_hw=size)
        w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)        # the known net by hand
        y = np.einsum("fc,nchw->nfhw", w[:, :, 0, 0], xs)
        want = want + ops.interp_forward(y, out_hw=(9, 13))
    np.testing.assert_allclose(scores, want[0] / 3, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=0))
    with pytest.raises(MinicnnError, match="scales must be positive"):
        seg.segment(net, path, scales=(1.0, 0.0))


def test_cli_scales_option(tmp_path, known_net, capsys):
    classes = np.zeros((6, 6), int)
    classes[:3] = 1
    (tmp_path / "list.txt").write_text(write_case(tmp_path, "x", classes, classes))
    model, weights = known_net
    assert main(["eval-segmentation", "--model", model, "--weights", weights, "--list",
                 str(tmp_path / "list.txt"), "--scales", "0.75,1,1.25",
                 "--out", str(tmp_path / "ev")]) == 0
    assert "averaged over scales 0.75, 1, 1.25" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["scales"] == [0.75, 1, 1.25]
    with pytest.raises(SystemExit):
        main(["eval-segmentation", "--model", model, "--list", str(tmp_path / "list.txt"),
              "--scales", "1,x"])
    assert "expected positive numbers" in capsys.readouterr().err


def test_label_paths_swap_the_last_labels_folder_and_images_turn_rgb():
    assert seg._label_path("voc/labels/set/labels/a.png", "full") == "voc/labels/set/full/a.png"
    with pytest.raises(MinicnnError, match="no folder named 'labels'"):
        seg._label_path("voc/seg/labels", "full")                 # a file, not a folder
    bgr = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    np.testing.assert_array_equal(seg.rgb_of(bgr), bgr[::-1].transpose(1, 2, 0))
    assert seg.rgb_of(bgr)[0, 0].tolist() == [8, 4, 0]
