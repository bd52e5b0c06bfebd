"""The DeepLab fork's ImageSegData and SegAccuracy (deeplab-public-ver2).

ImageSegData reads tiny PNG sets written here: every pixel of its data and label tops is
checked against padding and slicing written in this file, with the fork's random draws
(Rand(2) for the mirror, then Rand(H - crop + 1) and Rand(W - crop + 1)) scripted, in TRAIN
and TEST; resizing is checked against OpenCV's cv2.resize (the fork calls cv::resize).
SegAccuracy is checked against a confusion matrix made here with np.bincount and the fork's
averaging written out class by class, over drawn shapes with ties, ignore labels, absent
classes and several batches; then both run in a DeepLab-style net trained by a solver.
"""

import itertools
import re

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import minicnn
from minicnn.data.deeplab import resize_nearest
from minicnn.data.errors import DataError
from minicnn.errors import LayerError, MinicnnError
from minicnn.layers import ImageSegDataLayer, SegAccuracyLayer
from minicnn.proto import parse_text
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

MEAN = np.array([104.008, 116.669, 122.675], np.float32)
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [7] * (3 * 251) + [224, 224, 192]


def write_set(tmp_path, sizes, palette=False, seed=0):
    """PNG images (random RGB) and label images (classes 0..3 and 255) of the given sizes, as
    gray or palette PNGs, listed DeepLab's way ("/img0.png /lab0.png" under a root folder).
    Returns the list path, the images as BGR CHW arrays, and the labels."""
    rng = np.random.default_rng(seed)
    lines, images, labels = [], [], []
    for i, (h, w) in enumerate(sizes):
        rgb = rng.integers(0, 256, (h, w, 3), np.uint8)
        label = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), (h, w))
        Image.fromarray(rgb).save(tmp_path / f"img{i}.png")
        if palette:
            img = Image.frombytes("P", (w, h), label.tobytes())
            img.putpalette(PALETTE)
            img.save(tmp_path / f"lab{i}.png")
        else:
            Image.fromarray(label).save(tmp_path / f"lab{i}.png")
        lines.append(f"/img{i}.png /lab{i}.png\n")
        images.append(rgb[:, :, ::-1].transpose(2, 0, 1))
        labels.append(label)
    (tmp_path / "list.txt").write_text("".join(lines))
    return str(tmp_path / "list.txt"), images, labels


def seg_layer(tmp_path, source, phase, transform="", image="", tops=("data", "label")):
    text = ('name: "data" type: "ImageSegData" '
            + "".join(f'top: "{t}" ' for t in tops)
            + f'transform_param {{ {transform} }} '
            + f'image_data_param {{ source: "{source}" root_folder: "{tmp_path}" {image} }}')
    return ImageSegDataLayer(parse_text(text, "LayerParameter"), phase=phase)


def expected(image, label, crop, offset, flip, mean=MEAN, scale=1.0, ignore=255):
    """The fork's pad-crop-mirror by plain slicing: pad to at least the crop at the bottom and
    right (the mean, and ignore for labels), cut at offset, subtract, scale, flip."""
    c, h, w = image.shape
    ch, cw = crop
    big = np.empty((c, max(h, ch), max(w, cw)))
    big[...] = np.asarray(mean, np.float64)[:, None, None]
    big[:, :h, :w] = image
    lab = np.full(big.shape[1:], ignore, np.float32)
    lab[:h, :w] = label
    t, left = offset
    big, lab = big[:, t:t + ch, left:left + cw], lab[t:t + ch, left:left + cw]
    data = (big.astype(np.float32) - np.asarray(mean, np.float32)[:, None, None]) \
        * np.float32(scale)
    if flip:
        data, lab = data[:, :, ::-1], lab[:, ::-1]
    return data, lab


def script(monkeypatch):
    """Replace the layer's Rand(n) by a script: draw i of batch b returns (5 b + 3 i) % n, and
    every n asked is recorded in asked[b]."""
    asked = {}

    def random_ints(self, b):
        counter = itertools.count()

        def rand(n):
            i = next(counter)
            asked.setdefault(b, []).append(n)
            return (5 * b + 3 * i) % n
        return rand
    monkeypatch.setattr(ImageSegDataLayer, "_random_ints", random_ints)
    return asked


def no_draws(monkeypatch):
    def random_ints(self, b):
        def rand(n):
            raise AssertionError(f"a draw Rand({n}) where the fork draws nothing")
        return rand
    monkeypatch.setattr(ImageSegDataLayer, "_random_ints", random_ints)


# --- ImageSegData ------------------------------------------------------------------------------

SIZES = [(5, 12), (10, 6), (8, 9), (11, 13), (3, 4)]


@pytest.mark.parametrize("palette", [False, True])
def test_train_pads_crops_and_mirrors_image_and_labels_at_the_forks_draws(tmp_path, monkeypatch,
                                                                          palette):
    source, images, labels = write_set(tmp_path, SIZES, palette=palette)
    asked = script(monkeypatch)
    crop = (7, 9)
    layer = seg_layer(tmp_path, source, "TRAIN",
                      "mirror: true crop_height: 7 crop_width: 9 scale: 0.5 "
                      + " ".join(f"mean_value: {m}" for m in MEAN),
                      "batch_size: 2 label_type: PIXEL", tops=("data", "label", "data_dim"))
    flips = 0
    for b in range(4):
        data, label, dims = layer()
        assert data.shape == (2, 3, 7, 9) and label.shape == (2, 1, 7, 9)
        assert dims.shape == (2, 1, 1, 2) and data.dtype == np.float32
        want_asked = []
        for j in range(2):
            k = (2 * b + j) % len(SIZES)
            h, w = SIZES[k]
            big_h, big_w = max(h, crop[0]), max(w, crop[1])
            want_asked += [2, big_h - crop[0] + 1, big_w - crop[1] + 1]
            flip = (5 * b + 3 * (3 * j)) % 2 == 1
            offset = ((5 * b + 3 * (3 * j + 1)) % (big_h - crop[0] + 1),
                      (5 * b + 3 * (3 * j + 2)) % (big_w - crop[1] + 1))
            want_data, want_label = expected(images[k], labels[k], crop, offset, flip,
                                             scale=0.5)
            np.testing.assert_array_equal(data[j], want_data)
            np.testing.assert_array_equal(label[j, 0], want_label)
            np.testing.assert_array_equal(dims[j, 0, 0], [min(7, h), min(9, w)])
            flips += flip
        assert asked[b] == want_asked
    assert 0 < flips < 8


def test_test_phase_crops_at_the_centre_and_draws_only_the_mirror_coin(tmp_path, monkeypatch):
    source, images, labels = write_set(tmp_path, SIZES)
    no_draws(monkeypatch)
    layer = seg_layer(tmp_path, source, "TEST", "crop_size: 8 mean_value: 100",
                      "batch_size: 1 label_type: PIXEL", tops=("data", "label", "data_dim"))
    for k in range(len(SIZES) + 1):
        k %= len(SIZES)
        data, label, dims = layer()
        h, w = SIZES[k]
        centre = ((max(h, 8) - 8) // 2, (max(w, 8) - 8) // 2)
        want_data, want_label = expected(images[k], labels[k], (8, 8), centre, False,
                                         mean=[100.0] * 3)
        np.testing.assert_array_equal(data[0], want_data)
        np.testing.assert_array_equal(label[0, 0], want_label)
        np.testing.assert_array_equal(dims[0, 0, 0], [min(8, h), min(8, w)])
    asked = script(monkeypatch)                    # mirror is a coin in TEST too, in the fork
    layer = seg_layer(tmp_path, source, "TEST", "crop_size: 8 mirror: true",
                      "batch_size: 1 label_type: PIXEL")
    for b in range(3):
        data, label = layer()
        assert asked[b] == [2]
        flip = (5 * b) % 2 == 1
        h, w = SIZES[b]
        centre = ((max(h, 8) - 8) // 2, (max(w, 8) - 8) // 2)
        want_data, want_label = expected(images[b], labels[b], (8, 8), centre, flip,
                                         mean=[0.0] * 3)
        np.testing.assert_array_equal(data[0], want_data)
        np.testing.assert_array_equal(label[0, 0], want_label)


def test_without_a_crop_the_tops_take_the_first_images_size(tmp_path, monkeypatch):
    source, images, labels = write_set(tmp_path, [(6, 7), (6, 7), (5, 7)])
    no_draws(monkeypatch)
    layer = seg_layer(tmp_path, source, "TRAIN", "scale: 2", "batch_size: 2 label_type: PIXEL")
    data, label = layer()
    np.testing.assert_array_equal(data, np.stack(images[:2]).astype(np.float32) * 2)
    np.testing.assert_array_equal(label[:, 0], np.stack(labels[:2]))
    with pytest.raises(DataError, match=r"list.txt:3: .*shape \(3, 5, 7\) but the top has "
                                        r"\(3, 6, 7\)"):
        layer()


def test_label_types_none_and_image(tmp_path, monkeypatch):
    _, images, _ = write_set(tmp_path, [(4, 6), (7, 5)])
    no_draws(monkeypatch)
    (tmp_path / "none.txt").write_text("/img0.png\n\n/img1.png /ignored.png\n")
    layer = seg_layer(tmp_path, str(tmp_path / "none.txt"), "TEST", "crop_size: 6",
                      "label_type: NONE ignore_label: 254", tops=("data", "label", "data_dim"))
    for k, (h, w) in enumerate([(4, 6), (7, 5)]):
        data, label, dims = layer()
        centre = ((max(h, 6) - 6) // 2, (max(w, 6) - 6) // 2)
        np.testing.assert_array_equal(label[0, 0], np.full((6, 6), 254))
        np.testing.assert_array_equal(data[0], expected(images[k], np.zeros((h, w)), (6, 6),
                                                        centre, False, mean=[0.0] * 3)[0])
        np.testing.assert_array_equal(dims[0, 0, 0], [min(h, 6), min(w, 6)])
    (tmp_path / "cls.txt").write_text("/img0.png 3\n/img1.png 300\n")
    layer = seg_layer(tmp_path, str(tmp_path / "cls.txt"), "TEST", "crop_size: 6",
                      "batch_size: 2")                        # IMAGE: the fork's default
    _, label = layer()
    want0 = np.full((6, 6), 255.0)
    want0[:4, :] = 3                                          # 4 x 6, padded below
    want1 = np.full((6, 6), 255.0)                            # 300 saturates to 255 (uint8)
    np.testing.assert_array_equal(label[:, 0], [want0, want1])


def test_new_size_resizes_image_and_labels_bilinearly_as_opencv(tmp_path, monkeypatch):
    source, images, labels = write_set(tmp_path, [(9, 13)])
    no_draws(monkeypatch)
    layer = seg_layer(tmp_path, source, "TEST", "",
                      "label_type: PIXEL new_height: 6 new_width: 17")
    data, label = layer()
    bgr = images[0].transpose(1, 2, 0).copy()
    np.testing.assert_array_equal(data[0], cv2.resize(bgr, (17, 6)).transpose(2, 0, 1))
    np.testing.assert_array_equal(label[0, 0], cv2.resize(labels[0], (17, 6)))   # the fork's


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.3, 1.0])
def test_scale_factors_resize_as_opencv_then_crop(tmp_path, monkeypatch, factor):
    source, images, labels = write_set(tmp_path, [(10, 14)])
    asked = script(monkeypatch)
    layer = seg_layer(tmp_path, source, "TRAIN",
                      f"crop_size: 9 scale_factors: 0.25 scale_factors: {factor}",
                      "label_type: PIXEL")
    picks = {}
    for b in range(4):
        pick = (5 * b) % 2                             # draw 0 picks the factor (no mirror)
        f = [0.25, factor][pick]
        h, w = int(np.float32(10) * np.float32(f)), int(np.float32(14) * np.float32(f))
        bgr = images[0].transpose(1, 2, 0).copy()
        image = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        lab = cv2.resize(labels[0], (w, h), interpolation=cv2.INTER_NEAREST)
        if f == 1:
            image, lab = images[0], labels[0]
        big_h, big_w = max(h, 9), max(w, 9)
        offset = ((5 * b + 3) % (big_h - 8), (5 * b + 6) % (big_w - 8))
        data, label = layer()
        assert asked[b] == [2, big_h - 8, big_w - 8]
        want_data, want_label = expected(image, lab, (9, 9), offset, False, mean=[0.0] * 3)
        np.testing.assert_array_equal(data[0], want_data)
        np.testing.assert_array_equal(label[0, 0], want_label)
        picks[pick] = True
    assert picks == {0: True, 1: True}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 60), st.integers(1, 60))
def test_resize_nearest_is_opencvs_inter_nearest(h, w, nh, nw):
    src = np.arange(h * w, dtype=np.int32).reshape(h, w).astype(np.float32)
    np.testing.assert_array_equal(resize_nearest(src, nh, nw),
                                  cv2.resize(src, (nw, nh), interpolation=cv2.INTER_NEAREST))


def test_imagesegdata_errors_name_the_field_or_the_line(tmp_path):
    source, _, _ = write_set(tmp_path, [(4, 5)])

    def build(transform="", image="label_type: PIXEL", src=source):
        return seg_layer(tmp_path, src, "TRAIN", transform, image)()
    with pytest.raises(LayerError, match="mean_file"):
        build('mean_file: "m.binaryproto"')
    with pytest.raises(LayerError, match="crop_size, or both crop_height and crop_width"):
        build("crop_size: 3 crop_height: 3 crop_width: 3")
    with pytest.raises(LayerError, match="crop_size, or both crop_height and crop_width"):
        build("crop_height: 3")
    with pytest.raises(LayerError, match="2 mean_value values for images with 3 channels"):
        build("mean_value: 1 mean_value: 2")
    with pytest.raises(LayerError, match="scale_factors must be positive, got 0"):
        build("scale_factors: 1 scale_factors: 0")
    with pytest.raises(LayerError, match="new_height and new_width"):
        build(image="label_type: PIXEL new_height: 3")
    with pytest.raises(DataError, match=r"list.txt:1: label_type IMAGE .*'/lab0.png' is not a "
                                        r"whole number.*label_type: PIXEL"):
        build(image="")
    (tmp_path / "bad.txt").write_text("/img0.png /lab0.png\n/img0.png\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 'image a label image'"):
        build(src=str(tmp_path / "bad.txt"))
    (tmp_path / "missing.txt").write_text("/img0.png /nothing.png\n")
    with pytest.raises(DataError, match=r"missing.txt:1: .*nothing.png"):
        build(src=str(tmp_path / "missing.txt"))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "square.png")
    (tmp_path / "size.txt").write_text("/img0.png /square.png\n")
    with pytest.raises(DataError, match=r"size.txt:1: the labels '/square.png' are 5x5 but the "
                                        r"image is 4x5"):
        build(src=str(tmp_path / "size.txt"))


# --- SegAccuracy -------------------------------------------------------------------------------

def fork_scores(confusion):
    """The fork's ConfusionMatrix accuracy(), avgRecall(false) and avgJaccard(), class by
    class as util/confusion_matrix.cpp writes them."""
    m = np.asarray(confusion, np.float64)
    c = len(m)
    total = m.sum()
    accuracy = np.trace(m) / total if total else 0.0
    recalls = [m[i, i] / m[i].sum() for i in range(c) if m[i].sum() > 0]
    recall = sum(recalls) / len(recalls) if recalls else 0.0
    jaccard = 0.0
    for i in range(c):
        union = m[i].sum() + m[:, i].sum() - m[i, i]
        jaccard += 1.0 if m[i, i] == union else m[i, i] / union
    return [accuracy, recall, jaccard / c]


def bincount_confusion(scores, labels, ignore):
    """Rows = labels, columns = predictions; the prediction of a pixel is the class of the
    largest (score, class) pair, as the fork's partial_sort with std::greater picks it."""
    n, c, h, w = scores.shape
    pred = np.empty((n, h, w), np.int64)
    for i, y, x in np.ndindex(n, h, w):
        pred[i, y, x] = max((scores[i, k, y, x], k) for k in range(c))[1]
    truth = labels[:, 0].astype(np.int64)
    keep = ~np.isin(truth, list(ignore))
    return np.bincount(truth[keep] * c + pred[keep], minlength=c * c).reshape(c, c)


def accuracy_layer(ignore=(255,), reset=None):
    text = "".join(f"ignore_label: {i} " for i in ignore)
    if reset is not None:
        text += f"reset: {str(reset).lower()}"
    return SegAccuracyLayer(parse_text(f'name: "acc" type: "SegAccuracy" seg_accuracy_param '
                                       f'{{ {text} }}', "LayerParameter"))


@st.composite
def seg_batches(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ignore = draw(st.sets(st.sampled_from([255, 0, 2, -1]), max_size=2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        scores = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32)     # many ties
        choices = list(range(c)) + sorted(i for i in ignore if not 0 <= i < c)
        labels = rng.choice(choices, (n, 1, h, w)).astype(np.float32)
        batches.append((scores, labels))
    return ignore, batches


@settings(max_examples=40, deadline=None)
@given(seg_batches(), st.booleans())
def test_segaccuracy_is_the_forks_confusion_matrix_scores(case, reset):
    ignore, batches = case
    layer = accuracy_layer(ignore, reset)
    total = 0
    for scores, labels in batches:
        out = layer(scores, labels)
        assert out.shape == (1, 1, 1, 3) and out.dtype == np.float32
        confusion = bincount_confusion(scores, labels, ignore)
        total = total + confusion if not reset else confusion
        np.testing.assert_array_equal(layer.confusion, total)
        np.testing.assert_allclose(out.reshape(3), fork_scores(total), rtol=1e-6)


def test_segaccuracy_small_case_by_hand():
    # labels 0 0 1 255 / predictions 0 1 1 2 (a tie between classes 1 and 2 goes to 2):
    # confusion [[1, 1, 0], [0, 1, 0], [0, 0, 0]]; accuracy 2/3; class accuracy over the
    # classes with pixels (0, 1): (1/2 + 1) / 2; IU: class 0 1/2, class 1 1/2, class 2 (in
    # neither) 1: mean 2/3
    scores = np.zeros((1, 3, 1, 4), np.float32)
    scores[0, :, 0, 0] = [5, 1, 1]
    scores[0, :, 0, 1] = [0, 3, 2]
    scores[0, :, 0, 2] = [0, 4, 1]
    scores[0, :, 0, 3] = [0, 7, 7]
    labels = np.array([0, 0, 1, 255], np.float32).reshape(1, 1, 1, 4)
    out = accuracy_layer()(scores, labels)
    np.testing.assert_allclose(out.reshape(3), [2 / 3, 0.75, 2 / 3], rtol=1e-6)
    # labels are cast to int as the fork's static_cast: truncated toward 0 (-0.5 is class 0)
    out = accuracy_layer()(scores, labels + np.array([-0.5, 0.7, 0.9, 0.5], np.float32))
    np.testing.assert_allclose(out.reshape(3), [2 / 3, 0.75, 2 / 3], rtol=1e-6)
    # every pixel ignored: nothing counted; accuracies 0, every class's IU 1
    out = accuracy_layer()(scores, np.full((1, 1, 1, 4), 255, np.float32))
    np.testing.assert_array_equal(out.reshape(3), [0, 0, 1])


def test_segaccuracy_resets_by_default_and_accumulates_with_reset_false():
    right = np.array([[[[1.0]], [[0.0]]]], np.float32)             # predicts class 0
    zero, one = np.zeros((1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32)
    fresh, kept = accuracy_layer(), accuracy_layer(reset=False)
    for layer in (fresh, kept):
        assert layer(right, zero).reshape(3)[0] == 1
    assert fresh(right, one).reshape(3)[0] == 0                      # this batch only
    assert kept(right, one).reshape(3)[0] == 0.5                     # both batches


def test_segaccuracy_errors_name_the_label_and_the_shapes():
    scores = np.zeros((2, 3, 4, 5), np.float32)
    labels = np.zeros((2, 1, 4, 5), np.float32)
    labels[1, 0, 2, 3] = 7
    with pytest.raises(LayerError, match=r"unexpected label 7 at \(n, 0, h, w\) = "
                                         r"\(1, 0, 2, 3\).*0\.\.2 or an ignore_label \[255\]"):
        accuracy_layer()(scores, labels)
    labels[1, 0, 2, 3] = 255
    with pytest.raises(LayerError, match="unexpected label 255.*ignore_label \\[\\]"):
        accuracy_layer(ignore=())(scores, labels)
    with pytest.raises(LayerError, match=r"labels of shape \(2, 1, 4, 4\) do not fit scores of "
                                         r"shape \(2, 3, 4, 5\)"):
        accuracy_layer()(scores, labels[..., :4])
    with pytest.raises(LayerError, match=r"\(N, C, H, W\).*\(2, 3, 20\)"):
        accuracy_layer()(scores.reshape(2, 3, 20), labels.reshape(2, 1, 20))
    layer = accuracy_layer()
    layer(scores, np.zeros_like(labels))
    assert layer.backprop() == (None, None)                          # no backward, as Accuracy
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)


# --- a DeepLab net -----------------------------------------------------------------------------

DEEPLAB_NET = """
name: "tiny-deeplab"
layer {
  name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
  include { phase: TRAIN }
  transform_param {
    mirror: true crop_size: 9
    mean_value: 104.008 mean_value: 116.669 mean_value: 122.675
    scale_factors: 0.75 scale_factors: 1 scale_factors: 1.25
  }
  image_data_param {
    root_folder: "ROOT" source: "ROOT/list.txt" batch_size: 2 shuffle: true
    label_type: PIXEL
  }
}
layer {
  name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
  include { phase: TEST }
  transform_param {
    crop_size: 9 mean_value: 104.008 mean_value: 116.669 mean_value: 122.675
  }
  image_data_param { root_folder: "ROOT" source: "ROOT/list.txt" batch_size: 2
                     label_type: PIXEL }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2
                      weight_filler { type: "gaussian" std: 0.01 } }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "fc8_voc12" type: "Convolution" bottom: "conv1" top: "fc8_voc12"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2
                      weight_filler { type: "gaussian" std: 0.01 } }
}
layer {
  name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink"
  interp_param { shrink_factor: 2 pad_beg: 0 pad_end: 0 }
  include { phase: TRAIN }
}
layer {
  name: "loss" type: "SoftmaxWithLoss" bottom: "fc8_voc12" bottom: "label_shrink"
  loss_param { ignore_label: 255 }
  include { phase: TRAIN }
}
layer {
  name: "fc8_interp" type: "Interp" bottom: "fc8_voc12" top: "fc8_interp"
  interp_param { zoom_factor: 2 }
  include { phase: TEST }
}
layer {
  name: "accuracy" type: "SegAccuracy" bottom: "fc8_interp" bottom: "label" top: "accuracy"
  seg_accuracy_param { ignore_label: 255 }
  include { phase: TEST }
}
"""


def test_a_deeplab_net_trains_through_a_solver_with_a_test_phase(tmp_path):
    write_set(tmp_path, [(12, 10), (8, 14), (9, 9), (11, 7), (6, 6)])
    (tmp_path / "train.prototxt").write_text(DEEPLAB_NET.replace("ROOT", str(tmp_path)))
    param = parse_text(f'net: "{tmp_path}/train.prototxt" base_lr: 0.01 lr_policy: "poly" '
                       'power: 0.9 momentum: 0.9 weight_decay: 0.0005 max_iter: 6 '
                       'test_iter: 2 test_interval: 3 snapshot_after_train: false',
                       "SolverParameter")
    minicnn.set_random_seed(3)
    solver = minicnn.get_solver(param, log=lambda m: None)
    losses, tests = [], []
    solver.on_iteration.append(lambda s, loss, rate: losses.append(loss))
    solver.on_test.append(lambda s, index, outputs: tests.append((s.iter, outputs)))
    solver.solve()
    assert len(losses) == 6 and all(np.isfinite(losses)) and 0 < losses[0] < 2 * np.log(4)
    assert [it for it, _ in tests] == [0, 3, 6]
    dims = [(9, 9), (8, 9), (9, 9), (9, 7), (6, 6)]          # each image's, capped by 9
    for r, (_, outputs) in enumerate(tests):
        accuracy = outputs["accuracy"]
        assert accuracy.shape == (3,) and np.all((0 <= accuracy) & (accuracy <= 1))
        # the test net's data go on where the last test stopped: round r reads batches
        # 2r and 2r + 1; data_dim is a net output, averaged over test_iter like the rest
        batches = [[dims[(2 * b + j) % 5] for j in range(2)] for b in (2 * r, 2 * r + 1)]
        np.testing.assert_array_equal(outputs["data_dim"].reshape(2, 2),
                                      np.mean(batches, axis=0))
    net = solver.net                                         # the label shrink is exact
    np.testing.assert_array_equal(net.blobs["label_shrink"].data,
                                  net.blobs["label"].data[:, :, ::2, ::2])
    assert set(np.unique(net.blobs["label"].data)) <= {0, 1, 2, 3, 255}
    assert net.blobs["data"].data.shape == (2, 3, 9, 9)


def test_a_deeplab_test_net_on_the_gpu_runs_its_data_and_segaccuracy_on_the_host(tmp_path, gpu):
    from minicnn import cuda
    write_set(tmp_path, [(12, 10), (8, 14), (9, 9)])
    text = DEEPLAB_NET.replace("ROOT", str(tmp_path))
    outputs = []
    for device in (None, "cuda:0"):
        minicnn.set_random_seed(5)
        net = minicnn.Net(parse_text(text), minicnn.TEST, device=device)
        outputs.append([np.array(cuda.to_host(net.forward()["accuracy"])) for _ in range(3)])
    assert sorted(net.layers[i].type for i in net._mirrors) == ["ImageSegData", "SegAccuracy"]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-6)


# --- MatWrite, and the DeepLab layers minicnn lacks ---------------------------------------------

MAT_NET = """
layer { name: "in" type: "Input" top: "fc8" top: "dim"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 2 dim: 2 } } }
layer { name: "fc8_mat" type: "MatWrite" bottom: "fc8" bottom: "dim"
        include { phase: TEST }
        mat_write_param { prefix: "PREFIX" SOURCE } }
"""


def mat_net(tmp_path, source=""):
    text = MAT_NET.replace("PREFIX", f"{tmp_path}/fc8/").replace("SOURCE", source)
    (tmp_path / "fc8").mkdir(exist_ok=True)
    return minicnn.Net(parse_text(text), minicnn.TEST)


def test_matwrite_writes_each_bottom_as_the_forks_matio_file(tmp_path):
    from scipy.io import loadmat
    (tmp_path / "val_id.txt").write_text("2007_000033.jpg\n\n2007_000042.jpg extra\n"
                                         "2007_000061.jpg\n")
    net = mat_net(tmp_path, f'source: "{tmp_path}/val_id.txt" strip: 4 period: 2')
    rng = np.random.default_rng(0)
    written = []
    for k in range(3):
        fc8, dim = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 2))
        net.forward(fc8=fc8, dim=dim)
        written.append((fc8.astype(np.float32), dim.astype(np.float32)))
    files = sorted(p.name for p in (tmp_path / "fc8").iterdir())
    assert files == ["2007_000033_blob_0.mat", "2007_000033_blob_1.mat",
                     "2007_000061_blob_0.mat", "2007_000061_blob_1.mat"]   # forwards 0 and 2
    for name, (fc8, dim) in (("2007_000033", written[0]), ("2007_000061", written[2])):
        for i, blob, dims in ((0, fc8, (5, 4, 3, 2)), (1, dim, (2, 2, 1, 1))):
            raw = (tmp_path / "fc8" / f"{name}_blob_{i}.mat").read_bytes()
            assert raw.startswith(b"MATLAB 5.0 MAT-file")
            assert blob.tobytes() in raw          # the blob's memory as is: uncompressed
            data = loadmat(tmp_path / "fc8" / f"{name}_blob_{i}.mat")["data"]
            assert data.dtype == np.float32 and data.shape == dims   # width x height x C x N
            np.testing.assert_array_equal(data, blob.reshape((1,) * (4 - blob.ndim)
                                                             + blob.shape).transpose(3, 2, 1, 0))
    net.forward(fc8=fc8, dim=dim)                                    # forward 3: not written
    with pytest.raises(MinicnnError, match=r"forward 5 but mat_write_param.source .* names 3 "
                                         r"files"):
        net.forward(fc8=fc8, dim=dim)


def test_matwrite_without_a_source_names_files_by_forward_and_checks_its_fields(tmp_path):
    net = mat_net(tmp_path)
    for _ in range(2):
        net.forward(fc8=np.ones((2, 3, 4, 5)), dim=np.zeros((2, 2)))
    assert sorted(p.name for p in (tmp_path / "fc8").iterdir()) == [
        "iter_0_blob_0.mat", "iter_0_blob_1.mat", "iter_1_blob_0.mat", "iter_1_blob_1.mat"]
    with pytest.raises(MinicnnError, match="period must be positive, got 0"):
        mat_net(tmp_path, "period: 0")
    with pytest.raises(MinicnnError, match="prefix is required"):
        minicnn.Net(parse_text(MAT_NET.replace('prefix: "PREFIX" SOURCE', "")), minicnn.TEST)
    (tmp_path / "ids.txt").write_text("abc\nde\n")
    net = mat_net(tmp_path, f'source: "{tmp_path}/ids.txt"')
    for _ in range(2):                                     # as many forwards as names, no more
        net.forward(fc8=np.ones((2, 3, 4, 5)), dim=np.zeros((2, 2)))
    with pytest.raises(MinicnnError, match="forward 3 but .* names 2 files"):
        net.forward(fc8=np.ones((2, 3, 4, 5)), dim=np.zeros((2, 2)))
    with pytest.raises(MinicnnError, match=r"ids.txt:2: strip 2 removes all of .de."):
        mat_net(tmp_path, f'source: "{tmp_path}/ids.txt" strip: 2')


@pytest.mark.parametrize("layer", [
    ('layer { name: "dt" type: "DomainTransform" bottom: "fc8_interp" bottom: "data" '
     'top: "dt" domain_transform_param { num_iter: 3 spatial_sigma: 50 range_sigma: 5 } }')])
def test_deeplab_layers_minicnn_lacks_are_named_with_their_line(tmp_path, layer):
    # DeepLab v2's DT-EdgeNet ends with DomainTransform, which minicnn lacks: the error names
    # the type (DenseCRF and MatRead are in tests/layers/test_densecrf.py)
    path = tmp_path / "test.prototxt"
    path.write_text(DEEPLAB_NET.replace("ROOT", str(tmp_path)) + layer + "\n")
    kind = layer.split('type: "')[1].split('"')[0]
    with pytest.raises(MinicnnError, match=rf"test.prototxt:\d+:\d+: .*'{kind}' is not one "
                                           rf"minicnn implements"):
        minicnn.Net(str(path), minicnn.TEST)


# --- DeepLab v1's V1-format nets -----------------------------------------------------------------

DEEPLAB_V1_NET = """
name: "deeplab-v1"
layers {
  name: "data" type: IMAGE_SEG_DATA top: "data" top: "label"
  image_data_param { root_folder: "ROOT" source: "ROOT/list.txt" batch_size: 2
                     label_type: PIXEL }
  transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675
                    crop_size: 9 mirror: true }
}
layers {
  bottom: "data" top: "conv1" name: "conv1" type: CONVOLUTION
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 8 kernel_size: 3 HOLE
                      weight_filler { type: "gaussian" std: 0.1 } }
}
layers { bottom: "conv1" top: "conv1" name: "relu1" type: RELU }
layers {
  bottom: "conv1" top: "fc8_voc12" name: "fc8_voc12" type: CONVOLUTION
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2
                      weight_filler { type: "gaussian" std: 0.1 } }
}
layers {
  bottom: "label" top: "label_shrink" name: "label_shrink" type: INTERP
  interp_param { shrink_factor: 2 pad_beg: 0 pad_end: 0 }
}
layers {
  bottom: "fc8_voc12" bottom: "label_shrink" top: "loss" name: "loss" type: SOFTMAX_LOSS
  SOFTMAXLOSS
  include: { phase: TRAIN }
}
layers {
  bottom: "fc8_voc12" bottom: "label_shrink" top: "accuracy" name: "accuracy"
  type: SEG_ACCURACY seg_accuracy_param { ignore_label: 255 }
}
"""

DEEPLAB_V2_TWIN = """
name: "deeplab-v1"
layer {
  name: "data" type: "ImageSegData" top: "data" top: "label"
  image_data_param { root_folder: "ROOT" source: "ROOT/list.txt" batch_size: 2
                     label_type: PIXEL }
  transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675
                    crop_size: 9 mirror: true }
}
layer {
  bottom: "data" top: "conv1" name: "conv1" type: "Convolution"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 DILATION
                      weight_filler { type: "gaussian" std: 0.1 } }
}
layer { bottom: "conv1" top: "conv1" name: "relu1" type: "ReLU" }
layer {
  bottom: "conv1" top: "fc8_voc12" name: "fc8_voc12" type: "Convolution"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2
                      weight_filler { type: "gaussian" std: 0.1 } }
}
layer {
  bottom: "label" top: "label_shrink" name: "label_shrink" type: "Interp"
  interp_param { shrink_factor: 2 pad_beg: 0 pad_end: 0 }
}
layer {
  bottom: "fc8_voc12" bottom: "label_shrink" top: "loss" name: "loss" type: "SoftmaxWithLoss"
  loss_param { ignore_label: 255 }
  include: { phase: TRAIN }
}
layer {
  bottom: "fc8_voc12" bottom: "label_shrink" top: "accuracy" name: "accuracy"
  type: "SegAccuracy" seg_accuracy_param { ignore_label: 255 }
}
"""


@pytest.mark.parametrize("hole, dilation", [
    ("pad: 2 hole: 2", "pad: 2 dilation: 2"),
    ("pad_h: 2 pad_w: 1 hole_h: 2 hole_w: 1", "pad_h: 2 pad_w: 1 dilation: 2 dilation: 1"),
    ("pad: 3 hole: 3 hole_w: 2", "pad: 3 dilation: 3")])           # hole_w without hole_h
def test_a_deeplab_v1_net_in_the_v1_format_is_its_v2_twin(tmp_path, hole, dilation):
    write_set(tmp_path, [(12, 10), (8, 14), (9, 9)])
    v1 = (DEEPLAB_V1_NET.replace("ROOT", str(tmp_path)).replace("HOLE", hole)
          .replace("SOFTMAXLOSS", "softmaxloss_param { ignore_label: 255 }"))
    v2 = DEEPLAB_V2_TWIN.replace("ROOT", str(tmp_path)).replace("DILATION", dilation)
    nets = []
    for text in (v1, v2):
        minicnn.set_random_seed(7)
        net = minicnn.Net(parse_text(text), minicnn.TRAIN)
        for _ in range(2):
            net.forward()
        net.backward()
        nets.append(net)
    old, new = nets
    assert [lay.type for lay in old.layers] == [lay.type for lay in new.layers]
    conv1, loss = old.layer_dict["conv1"].param, old.layer_dict["loss"].param
    assert list(conv1.convolution_param.dilation) == \
        [int(d) for d in re.findall(r"dilation: (\d+)", dilation)]
    assert conv1.param[1].lr_mult == 2 and loss.loss_param.ignore_label == 255
    for name in new.blobs:
        np.testing.assert_array_equal(old.blobs[name].data, new.blobs[name].data, err_msg=name)
        np.testing.assert_array_equal(old.blobs[name].diff, new.blobs[name].diff, err_msg=name)
    assert np.isfinite(old.blobs["loss"].data).all()


@pytest.mark.parametrize("change, message", [
    (("SOFTMAXLOSS", 'softmaxloss_param { weight_source: "w.txt" }'),
     r"layer 'loss': softmaxloss_param.weight_source \(DeepLab v1's per-class loss weights\)"),
    (("SOFTMAXLOSS", "softmaxloss_param { ignore_label: 255 ignore_label: 0 }"),
     "layer 'loss': softmaxloss_param gives 2 ignore_label values"),
    (("HOLE", "pad: 2 hole: 2 dilation: 2"),
     "layer 'conv1': convolution_param has both dilation and DeepLab v1's hole"),
    (("SOFTMAXLOSS", "} layers { name: 'pad' type: PADDING bottom: 'fc8_voc12' top: 'pad'"),
     r"deeplab.prototxt:\d+: .*unknown layer type 'Padding'")])
def test_deeplab_v1_nets_minicnn_cannot_take_say_why(tmp_path, change, message):
    write_set(tmp_path, [(12, 10)])
    text = DEEPLAB_V1_NET.replace("ROOT", str(tmp_path)).replace(*change)
    text = text.replace("HOLE", "pad: 2 hole: 2").replace("SOFTMAXLOSS", "").replace("'", '"')
    (tmp_path / "deeplab.prototxt").write_text(text)
    with pytest.raises(MinicnnError, match=message):
        minicnn.Net(str(tmp_path / "deeplab.prototxt"), minicnn.TRAIN)
