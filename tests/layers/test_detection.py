"""The Detection and DetectionData layers through the Layer protocol and in Nets: gradients,
loss_weight, the deploy (one-bottom) form, augmentation that moves boxes with the pixels, the
data position for exact resume, the synthetic detection-digits set, and errors."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.blob import Blob
from minicnn.cli import main
from minicnn.data.datum import decode_image, encode_image
from minicnn.data.detection import augment, label_path, read_labels, write_labels
from minicnn.data.errors import DataError, need
from minicnn.errors import LayerError
from minicnn.layers import DetectionDataLayer, DetectionLayer
from minicnn.ops.detection import detection_layout, detection_truth
from minicnn.proto import parse_text
from minicnn.testing import check_layer_gradient
from tests.ops.test_detection import darknet_detection, switch_margin

need("PIL.Image", "Pillow")

SETTINGS = dict(side=2, num=2, classes=3, rescore=False)


def clear_case(seed=0):
    """Predictions whose responsible predictors are far from switching: predictor 0 of every
    object cell sits on its truth box, predictor 1 far away."""
    rng = np.random.default_rng(seed)
    labels = np.array([[[1, 0.3, 0.2, 0.3, 0.2], [2, 0.8, 0.7, 0.2, 0.4], [-1, 0, 0, 0, 0]],
                       [[0, 0.6, 0.6, 0.5, 0.5], [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]]])
    d, _, box0 = detection_layout(2, 2, 3)
    x = rng.uniform(0, 1, (2, d))
    boxes = x[:, box0:].reshape(2, 4, 2, 4)
    for b, rows in enumerate(labels):
        for c, bx, by, bw, bh in rows:
            if c < 0:
                continue
            col, row = int(bx * 2), int(by * 2)
            boxes[b, row * 2 + col, 0] = [bx * 2 - col + 0.01, by * 2 - row, np.sqrt(bw) + 0.02,
                                          np.sqrt(bh)]
            boxes[b, row * 2 + col, 1] = [0.0, 0.0, 0.05, 0.05]
    x[:, box0:] = boxes.reshape(2, -1)
    return x, labels


def test_gradient_through_the_layer():
    x, labels = clear_case()
    check_layer_gradient(lambda: DetectionLayer(detection_param=SETTINGS), [x, labels],
                         check_bottoms=[0])


@st.composite
def layer_cases(draw):
    """Box lists (padding rows of class -1), predictions of N x D read through another shape,
    and every detection_param field drawn."""
    side, num, classes = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, k = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = np.zeros((n, k, 5))
    labels[:, :, 0] = -1
    for b in range(n):
        for j in range(rng.integers(1 if b == 0 else 0, k + 1)):
            labels[b, j] = [rng.integers(classes), *rng.uniform(0, 1, 2),
                            *rng.uniform(0.05, 0.8, 2)]
    d, _, box0 = detection_layout(side, num, classes)
    x = rng.uniform(-0.2, 1.0, (n, d))
    x[:, box0:] = rng.uniform(0.05, 0.95, (n, d - box0))
    params = dict(side=side, num=num, classes=classes, sqrt=draw(st.booleans()),
                  rescore=draw(st.booleans()),
                  object_scale=draw(st.sampled_from([1.0, 2.0, 3.0])),
                  noobject_scale=draw(st.sampled_from([0.5, 0.25, 1.0])),
                  class_scale=draw(st.sampled_from([1.0, 0.75, 1.5])),
                  coord_scale=draw(st.sampled_from([5.0, 1.0, 4.0])))
    shape = draw(st.sampled_from([(n, d), (n, d, 1, 1), (n, 1, d)]))
    return x, shape, labels, params


@settings(max_examples=20, deadline=None)
@given(layer_cases())
def test_drawn_fields_match_darknets_loop_and_finite_differences(case):
    """The loss and diff against the port of Darknet's loop (tests/ops/test_detection.py), and,
    without rescore and away from a switch of responsible predictor, finite differences."""
    x, shape, labels, p = case
    layer = DetectionLayer(detection_param=p)
    loss = layer(x.reshape(shape), labels)
    truth = detection_truth(labels, p["side"], p["classes"])
    want, scale = darknet_detection(x, truth.reshape(-1), p["side"], p["num"], p["classes"],
                                    p["sqrt"], p["rescore"], p["object_scale"],
                                    p["noobject_scale"], p["class_scale"], p["coord_scale"])
    used = scale > 0
    assert float(loss) == pytest.approx(np.sum(want[used] ** 2 / scale[used]) / (2 * len(x)),
                                        rel=1e-10, abs=1e-12)
    dx, dlabels = layer.backprop()
    assert dx.shape == shape and dlabels is None
    np.testing.assert_allclose(dx.reshape(x.shape), -want / len(x), rtol=1e-10, atol=1e-12)
    if not p["rescore"] and switch_margin(x, truth, p) > 1e-3:
        check_layer_gradient(lambda: DetectionLayer(detection_param=p),
                             [x.reshape(shape), labels], check_bottoms=[0], max_checks=24)


def test_loss_weight_scales_the_gradient():
    x, labels = clear_case()
    layer = DetectionLayer(detection_param=SETTINGS, loss_weight=0.5)
    loss = layer(x, labels)
    dx, dlabels = layer.backprop()
    one = DetectionLayer(detection_param=SETTINGS)
    assert float(one(x, labels)) == pytest.approx(float(loss))
    np.testing.assert_allclose(dx, 0.5 * one.backprop()[0])
    assert dlabels is None


def test_stats_top_and_float32():
    x, labels = clear_case()
    layer = DetectionLayer(detection_param=SETTINGS, top=["loss", "stats"])
    loss, stats = layer(x.astype(np.float32), labels.astype(np.float32))
    assert loss.dtype == np.float32 and stats.shape == (6,)
    assert stats[5] == 3 and 0.5 < stats[0] <= 1                # 3 objects, good IoUs


def test_deploy_form_passes_predictions_through():
    x = np.random.default_rng(1).standard_normal((2, 30, 1, 1))
    layer = DetectionLayer(detection_param=dict(side=1, num=2, classes=20))
    np.testing.assert_array_equal(layer(x), x.reshape(2, 30))
    assert layer.loss_weights == [0.0]
    dy = np.ones((2, 30))
    np.testing.assert_array_equal(layer.backprop(dy), dy.reshape(2, 30, 1, 1))


@pytest.mark.parametrize("params, shapes, match", [
    (dict(side=2, num=2, classes=3, softmax=True), [(1, 52), (1, 1, 5)], "softmax"),
    (dict(side=2, num=2, classes=3, coords=5), [(1, 52), (1, 1, 5)], "coords must be 4"),
    (dict(side=0), [(1, 52)], "side must be at least 1"),
    (dict(side=2, num=2, classes=3), [(1, 51), (1, 1, 5)], "52 values per item"),
    (dict(side=2, num=2, classes=3), [(1, 52), (2, 1, 5)], "box lists"),
    (dict(side=2, num=2, classes=3), [(1, 52), (1, 1, 4)], "box lists"),
])
def test_errors(params, shapes, match):
    with pytest.raises(LayerError, match=match):
        DetectionLayer(detection_param=params)(*[np.zeros(s) for s in shapes])


def test_labels_get_no_gradient():
    x, labels = clear_case()
    layer = DetectionLayer(detection_param=SETTINGS)
    bottom, top = [Blob.from_array(x), Blob.from_array(labels)], [Blob(())]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    with pytest.raises(LayerError, match="box lists"):
        layer.backward(top, [True, True], bottom)
    with pytest.raises(LayerError, match="class 5"):
        layer(x, np.array([[[5, 0.5, 0.5, 0.1, 0.1]]] * 2))


# --- DetectionData --------------------------------------------------------------------------------

def rectangle_set(folder, n=6, size=(30, 40)):
    """Black images with one white rectangle each, and its exact box as the label."""
    rng = np.random.default_rng(7)
    os.makedirs(folder / "images", exist_ok=True)
    os.makedirs(folder / "labels", exist_ok=True)
    lines = []
    h, w = size
    for i in range(n):
        image = np.zeros((3, h, w), np.uint8)
        x0, y0 = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
        x1, y1 = x0 + int(rng.integers(6, 12)), y0 + int(rng.integers(6, 12))
        image[:, y0:y1, x0:x1] = 255
        (folder / "images" / f"{i}.png").write_bytes(encode_image(image, "png"))
        write_labels(str(folder / "labels" / f"{i}.txt"),
                     [[i % 3, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w,
                       (y1 - y0) / h]])
        lines.append(f"images/{i}.png")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "list.txt")


def data_layer(source, phase="TRAIN", **extra):
    fields = dict(source=source, batch_size=3, new_height=24, new_width=32, jitter=0.2,
                  flip=True, shuffle=True, max_boxes=4)
    fields.update(extra)
    layer = DetectionDataLayer(detection_data_param=fields, phase=phase,
                               transform_param={"scale": 1 / 255})
    layer.rng = np.random.default_rng(3)
    return layer


def bright_box(image):
    ys, xs = np.nonzero(image[0] > 0.5)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_augmentation_moves_the_boxes_with_the_pixels(tmp_path):
    layer = data_layer(rectangle_set(tmp_path))
    seen_flip = False
    for _ in range(6):
        data, boxes = layer(*[])
        assert data.shape == (3, 3, 24, 32) and boxes.shape == (3, 4, 5)
        for image, rows in zip(data, boxes):
            assert (rows[1:, 0] == -1).all()                   # padding rows
            _, x, y, w, h = rows[0]
            want = np.array([(x - w / 2) * 32, (y - h / 2) * 24, (x + w / 2) * 32,
                             (y + h / 2) * 24])
            if w * 32 < 3 or h * 24 < 3:
                continue                                       # cropped nearly away
            np.testing.assert_allclose(bright_box(image), want, atol=1.6)
    # jitter changes the picture between epochs, flip happens
    a = [layer._load(np.arange(6), b)[0] for b in (0, 1)]
    assert not np.array_equal(a[0], a[1])
    for b in range(20):
        rng = np.random.default_rng([0, b])
        image = np.zeros((1, 10, 10), np.uint8)
        image[:, :, :3] = 255
        out, moved = augment(image, np.array([[0, 0.15, 0.5, 0.3, 1.0]]), rng, 0.0, True)
        if out[0, 0, -1]:
            seen_flip = True
            np.testing.assert_allclose(moved, [[0, 0.85, 0.5, 0.3, 1.0]])
    assert seen_flip


def test_test_phase_reads_boxes_as_written(tmp_path):
    source = rectangle_set(tmp_path)
    layer = data_layer(source, phase="TEST", shuffle=False)
    data, boxes = layer()
    for i in range(3):
        want = read_labels(label_path(str(tmp_path / "images" / f"{i}.png")))
        np.testing.assert_allclose(boxes[i, 0], want[0], atol=1e-6)
        x0, y0, x1, y1 = bright_box(data[i])
        _, x, y, w, h = want[0]
        np.testing.assert_allclose([x0, y0, x1, y1], [(x - w / 2) * 32, (y - h / 2) * 24,
                                                      (x + w / 2) * 32, (y + h / 2) * 24],
                                   atol=1.6)


def test_data_position_resumes_exactly(tmp_path):
    source = rectangle_set(tmp_path)
    first = data_layer(source)
    first()
    state = first.data_state()
    expected = [[a.copy() for a in first()] for _ in range(3)]   # tops are reused: copy
    second = data_layer(source)
    second.rng = np.random.default_rng(99)              # another seed: the state restores it
    second.restore_data_state(state)
    for want in expected:
        for a, b in zip(second(), want):
            np.testing.assert_array_equal(a, b)


def test_in_a_net_with_the_loss(tmp_path):
    source = rectangle_set(tmp_path)
    text = f"""
layer {{ name: "data" type: "DetectionData" top: "data" top: "boxes"
  transform_param {{ scale: 0.00392156862745098 }}
  detection_data_param {{ source: "{source}" batch_size: 2 new_height: 16 new_width: 16
                         jitter: 0.1 flip: true }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param {{ num_output: 52 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "loss" type: "Detection" bottom: "fc" bottom: "boxes" top: "loss"
  detection_param {{ side: 2 num: 2 classes: 3 }} }}
"""
    net = minicnn.Net(parse_text(text), phase=minicnn.TRAIN)
    loss = net.forward_backward()
    assert np.isfinite(loss) and loss > 0
    assert np.abs(net.params["fc"][0].diff).sum() > 0
    state = net.data_state()
    assert state["data"]["batches_served"] == 1


def test_data_errors(tmp_path):
    source = rectangle_set(tmp_path, n=3)
    (tmp_path / "labels" / "1.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 oops 0.2 0.2\n")
    with pytest.raises(DataError, match=r"1\.txt:2: expected an integer class"):
        data_layer(source)()
    os.unlink(tmp_path / "labels" / "1.txt")
    with pytest.raises(DataError, match=r"list\.txt:2: .*label file not found"):
        data_layer(source)()
    (tmp_path / "list.txt").write_text("images/0.png\nimages/missing.png\n")
    with pytest.raises(DataError, match=r"list\.txt:2: image 'images/missing\.png'"):
        data_layer(source)()
    with pytest.raises(LayerError, match="crop_size and mirror"):
        DetectionDataLayer(detection_data_param=dict(source=source, batch_size=1),
                           transform_param={"crop_size": 8})()
    with pytest.raises(LayerError, match="jitter"):
        data_layer(source, jitter=0.6)()


def test_read_labels_and_label_path(tmp_path):
    assert label_path("data/x/images/train/0001.png") == "data/x/labels/train/0001.txt"
    assert label_path("VOC/JPEGImages/a.jpg") == "VOC/labels/a.txt"
    assert label_path("myimages/images/a.jpeg") == "myimages/labels/a.txt"
    assert label_path("pics/a.png") == "pics/a.txt"
    path = tmp_path / "l.txt"
    path.write_text("\n3 0.5 0.5 0.1 0.2\n")
    np.testing.assert_allclose(read_labels(str(path)), [[3, 0.5, 0.5, 0.1, 0.2]])
    with pytest.raises(DataError, match=r"l\.txt:2: class 3 is out of range \[0, 3\)"):
        read_labels(str(path), classes=3)


# --- the synthetic set ----------------------------------------------------------------------------

def test_detection_digits(tmp_path, capsys):
    pytest.importorskip("skimage")
    from minicnn.data.datasets import load_mnist_subset
    from minicnn.data.detection_digits import prepare_detection_digits, split_glyphs
    out = tmp_path / "dd"
    assert main(["data", "detection-digits", "--out", str(out), "--train-images", "4",
                 "--val-images", "2", "--test-images", "3", "--size", "96"]) == 0
    assert "3 images" in capsys.readouterr().out
    lines = (out / "test.txt").read_text().split()
    assert lines == [f"images/test/{i:06d}.png" for i in range(3)]
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for i in range(n):
            image = decode_image(str(out / "images" / split / f"{i:06d}.png"))
            assert image.shape == (3, 96, 96)
            boxes = read_labels(str(out / "labels" / split / f"{i:06d}.txt"), classes=10)
            assert 1 <= len(boxes) <= 4
            x0, x1 = boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 1] + boxes[:, 3] / 2
            assert (x0 >= -1e-6).all() and (x1 <= 1 + 1e-6).all()
    assert "classes = 10" in (out / "detection_digits.data").read_text()
    # the same arguments give the same files
    again = prepare_detection_digits(str(tmp_path / "again"), train=4, val=2, test=3, size=96,
                                     verbose=False)
    assert (tmp_path / "again" / "images" / "test" / "000002.png").read_bytes() == \
        (out / "images" / "test" / "000002.png").read_bytes()
    assert again["test"].endswith("test.txt")
    # test glyphs were never seen in training
    _, labels = load_mnist_subset()
    sets = split_glyphs(labels)
    assert not set(sets["train"]) & set(sets["test"]) and not set(sets["val"]) & set(sets["test"])
    assert [len(sets[s]) for s in ("train", "val", "test")] == [3500, 500, 1000]
    assert main(["data", "detection-digits", "--out", str(out), "--size", "10"]) == 1


def test_rgb_feeds_darknets_channel_order_as_detect_rgb_does(tmp_path):
    # a net converted from Darknet wants R, G, B; DetectionData decoded BGR only, so fine-tuning
    # a converted YOLO fed its weights swapped channels (and `detect --rgb` then disagreed)
    from PIL import Image

    from minicnn.detection import load_detection_input, net_input
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "labels")
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255                                   # R
    red[5:15, 10:20, 1] = 128                           # a green patch
    Image.fromarray(red).save(tmp_path / "images" / "0.png")
    write_labels(str(tmp_path / "labels" / "0.txt"), [[0, 0.5, 0.5, 0.3, 0.5]])
    (tmp_path / "list.txt").write_text("images/0.png\n")
    source = str(tmp_path / "list.txt")
    bgr, _ = data_layer(source, phase="TEST", batch_size=1, new_height=16, new_width=24)()
    bgr = bgr.copy()
    rgb, _ = data_layer(source, phase="TEST", batch_size=1, new_height=16, new_width=24,
                        rgb=True)()
    assert rgb[0, 0].min() == 1 and rgb[0, 2].max() == 0 and bgr[0, 2].min() == 1
    np.testing.assert_array_equal(rgb, bgr[:, ::-1])
    chw, _, _ = load_detection_input(str(tmp_path / "images" / "0.png"), 16, 24, rgb=True,
                                     resize=False)
    np.testing.assert_array_equal(rgb[0], net_input(chw, 16, 24, scale=1 / 255))
    augmented, _ = data_layer(source, batch_size=1, new_height=16, new_width=24, rgb=True)()
    assert augmented[0, 0].max() == 1 and augmented[0, 2].max() == 0     # TRAIN path too
