"""SegmentationData: image / label pairs, augmentation that moves both together, determinism and
resume, errors naming the list line; and the per-pixel loss and accuracy it feeds in a net."""

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn.data.errors import DataError
from minicnn.data.segmentation import augment_pair, crop_pair, read_label, read_pair_list
from minicnn.errors import LayerError
from minicnn.layers.segmentation import SegmentationDataLayer
from minicnn.proto import parse_text


def write_pairs(tmp_path, n=5, size=(12, 16), seed=0):
    """Images whose blue channel is 20 * label (green = row, red = column), and their labels:
    blocks of classes 0..3 with a 255 stripe. Returns the list path and the labels."""
    rng = np.random.default_rng(seed)
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "lab").mkdir(exist_ok=True)
    lines, labels = [], []
    for i in range(n):
        h, w = size
        label = np.repeat(np.repeat(rng.integers(0, 4, (3, 4)), h // 3, 0), w // 4, 1)
        label = label.astype(np.uint8)
        label[:, int(rng.integers(w))] = 255
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:, :, 2] = np.where(label == 255, 200, label * 20)          # blue
        rgb[:, :, 1] = np.arange(h)[:, None] * 5                        # green: the row
        rgb[:, :, 0] = np.arange(w)[None, :] * 5                        # red: the column
        Image.fromarray(rgb).save(tmp_path / "img" / f"{i} a.png")
        Image.fromarray(label).save(tmp_path / "lab" / f"{i}.png")
        lines.append(f"img/{i} a.png lab/{i}.png\n")
        labels.append(label)
    (tmp_path / "list.txt").write_text("".join(lines))
    return str(tmp_path / "list.txt"), labels


def check_consistent(data, label):
    """Every labelled pixel's blue value is 20 * its label (bilinear blending aside: only pixels
    whose 3 x 3 neighbourhood is one label are checked)."""
    for d, lab in zip(data, label[:, 0]):
        blue = d[0]
        for r in range(1, lab.shape[0] - 1):
            for c in range(1, lab.shape[1] - 1):
                block = lab[r - 1:r + 2, c - 1:c + 2]
                if lab[r, c] != 255 and np.all(block == lab[r, c]):
                    assert abs(blue[r, c] - 20 * lab[r, c]) <= 1, (r, c)


def test_test_phase_reads_whole_pairs_unchanged(tmp_path):
    source, labels = write_pairs(tmp_path)
    layer = SegmentationDataLayer(source=source, batch_size=2, phase="TEST")
    data, label = layer()
    assert data.shape == (2, 3, 12, 16) and label.shape == (2, 1, 12, 16)
    assert label.dtype == np.float32
    np.testing.assert_array_equal(label[:, 0], np.stack(labels[:2]))
    np.testing.assert_array_equal(data[:, 0], np.where(label[:, 0] == 255, 200,
                                                       label[:, 0] * 20))
    np.testing.assert_array_equal(layer()[1][:, 0], np.stack([labels[2], labels[3]]))


def test_training_augmentation_moves_image_and_labels_together(tmp_path):
    source, _ = write_pairs(tmp_path, n=6, size=(24, 32))
    minicnn.set_random_seed(4)
    layer = SegmentationDataLayer(source=source, batch_size=3, crop_size=20, mirror=True,
                                  scale_min=0.7, scale_max=1.4, shuffle=True, phase="TRAIN")
    flipped = 0
    for _ in range(6):
        data, label = layer()
        assert data.shape == (3, 3, 20, 20) and label.shape == (3, 1, 20, 20)
        check_consistent(data, label)
        assert set(np.unique(label)) <= {0, 1, 2, 3, 255}          # nearest: no new values
        red = data[:, 2]                                           # the column ramp
        flipped += int(np.sum(np.diff(red, axis=2) < 0) > np.sum(np.diff(red, axis=2) > 0))
    assert 0 < flipped < 18                                        # some crops were mirrored


def test_padding_is_ignored_and_the_test_crop_is_centred(tmp_path):
    source, labels = write_pairs(tmp_path, n=2, size=(12, 16))
    data, label = SegmentationDataLayer(source=source, crop_size=14, batch_size=2,
                                        phase="TEST")()
    # centre crop of 14 x 14: rows padded by 2 at the bottom, columns cut from 1
    np.testing.assert_array_equal(label[0, 0, :12], labels[0][:, 1:15])
    assert np.all(label[:, 0, 12:] == 255) and np.all(data[:, :, 12:] == 0)


def test_mean_and_scale_from_transform_param(tmp_path):
    source, labels = write_pairs(tmp_path, n=1)
    layer = SegmentationDataLayer(parse_text(
        f'name: "d" type: "SegmentationData" top: "data" top: "label" '
        f'transform_param {{ scale: 0.5 mean_value: 10 }} '
        f'segmentation_data_param {{ source: "{source}" }}', "LayerParameter"), phase="TEST")
    data, _ = layer()
    blue = np.where(labels[0] == 255, 200, labels[0] * 20.0)
    np.testing.assert_allclose(data[0, 0], (blue - 10) * 0.5)


def test_batches_are_pure_in_the_seed_and_resume_exactly(tmp_path):
    source, _ = write_pairs(tmp_path, n=5)

    def make():
        return SegmentationDataLayer(source=source, batch_size=2, crop_size=10, mirror=True,
                                     scale_min=0.8, scale_max=1.2, shuffle=True, phase="TRAIN")
    minicnn.set_random_seed(1)
    a = make()
    first = [tuple(x.copy() for x in a()) for _ in range(3)]
    state = a.data_state()
    later = [tuple(x.copy() for x in a()) for _ in range(3)]
    minicnn.set_random_seed(1)
    b = make()
    for want in first:
        for x, y in zip(b(), want):
            np.testing.assert_array_equal(x, y)
    c = make()
    c.restore_data_state(state)
    for want in later:
        for x, y in zip(c(), want):
            np.testing.assert_array_equal(x, y)


def test_pair_helpers(tmp_path):
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    img, lab = crop_pair(image, label, 5, offset=(0, 0), ignore_label=99)
    assert img.shape == (2, 5, 5) and lab.shape == (5, 5)
    np.testing.assert_array_equal(lab[:3, :4], label)
    assert np.all(lab[3:] == 99) and np.all(lab[:, 4] == 99) and np.all(img[:, 3:] == 0)
    img, lab = crop_pair(image, label, 2, offset=(1, 2))
    np.testing.assert_array_equal(lab, label[1:3, 2:4])
    np.testing.assert_array_equal(img, image[:, 1:3, 2:4])
    with pytest.raises(ValueError, match="does not fit"):
        crop_pair(image, label, 3, offset=(1, 2))
    img, lab = augment_pair(np.zeros((1, 3, 4), np.uint8), label, None, crop=2)
    assert img.shape == (1, 2, 2) and lab.shape == (1, 2, 2)
    np.testing.assert_array_equal(lab[0], label[0:2, 1:3])        # centred
    (tmp_path / "list.txt").write_text("a b.png c.png\n\nno_label\n")
    with pytest.raises(DataError, match=r"list.txt:3: expected 'image_path label_path'"):
        read_pair_list(str(tmp_path / "list.txt"))
    (tmp_path / "list.txt").write_text("a b.png c.png\n")
    assert read_pair_list(str(tmp_path / "list.txt")) == [("a b.png", "c.png", 1)]
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="one class id per pixel .* not mode RGB"):
        read_label(str(tmp_path / "rgb.png"))
    pal = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_label(str(tmp_path / "pal.png")), [[0, 1], [2, 255]])


def test_errors_name_the_list_line(tmp_path):
    source, _ = write_pairs(tmp_path, n=2)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "lab" / "1.png")
    layer = SegmentationDataLayer(source=source, batch_size=1)
    layer()
    with pytest.raises(DataError, match=r"list.txt:2: .*the labels 1.png are 5x5 but the image "
                                        r"is 12x16"):
        layer()
    (tmp_path / "list.txt").write_text("img/0 a.png lab/missing.png\n")
    with pytest.raises(DataError, match=r"list.txt:1: 'lab/missing.png': "):
        SegmentationDataLayer(source=source)()
    for fields, match in (({"crop_size": 0, "batch_size": 0}, "batch_size must be positive"),
                          ({"scale_min": 1.5, "scale_max": 1.2}, "0 < scale_min <= scale_max"),
                          ({}, "source is required")):
        with pytest.raises(LayerError, match=match):
            SegmentationDataLayer(**({"source": source} if "source" not in match else {}),
                                  **fields)()
    with pytest.raises(LayerError, match="transform_param scale and mean_value only"):
        SegmentationDataLayer(parse_text(
            f'name: "d" type: "SegmentationData" top: "data" top: "label" '
            f'transform_param {{ crop_size: 4 }} segmentation_data_param {{ source: "{source}" '
            f'}}', "LayerParameter"))()


def test_images_of_several_sizes_need_a_crop_or_batch_1(tmp_path):
    source, _ = write_pairs(tmp_path, n=2)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "img" / "1 a.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "lab" / "1.png")
    with pytest.raises(DataError, match="set crop_size, or use batch_size 1"):
        SegmentationDataLayer(source=source, batch_size=2)()
    shapes = [SegmentationDataLayer(source=source, batch_size=1)()[0].shape]
    assert SegmentationDataLayer(source=source, batch_size=2, crop_size=8)()[0].shape == \
        (2, 3, 8, 8)
    assert shapes == [(1, 3, 12, 16)]


def test_per_pixel_loss_and_accuracy_skip_ignored_pixels_in_a_net(tmp_path):
    source, labels = write_pairs(tmp_path, n=4)
    net = minicnn.Net(parse_text(f"""
layer {{ name: "d" type: "SegmentationData" top: "data" top: "label"
        segmentation_data_param {{ source: "{source}" batch_size: 4 crop_size: 14 }} }}
layer {{ name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param {{ num_output: 4 kernel_size: 1
                            weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
        loss_param {{ ignore_label: 255 }} }}
layer {{ name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc"
        accuracy_param {{ ignore_label: 255 }} }}""", "NetParameter"), phase="TEST",
                      force_backward=True)
    loss = net.forward_from_to()
    score, label = net.blobs["score"].data, net.blobs["label"].data[:, 0]
    valid = label != 255
    assert valid.sum() < label.size                       # the stripe and the padding
    p = np.exp(score - score.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    picked = np.take_along_axis(p, np.where(valid, label, 0).astype(int)[:, None], 1)[:, 0]
    np.testing.assert_allclose(loss, -np.log(picked[valid]).mean(), rtol=1e-5)
    hits = (score.argmax(1) == label) & valid
    np.testing.assert_allclose(net.blobs["acc"].data, hits.sum() / valid.sum(), rtol=1e-6)
    net.backward()
    grad = net.blobs["score"].diff
    assert np.all(grad.transpose(0, 2, 3, 1)[~valid] == 0) and np.abs(grad).sum() > 0
