"""minicnn.Detector: pycaffe's R-CNN window detector (python/caffe/detector.py)."""

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn import Detector
from minicnn.errors import MinicnnError
from minicnn.io import Transformer, load_image
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

DEPLOY = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 4 dim: 3 dim: 10 dim: 10 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def model(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    minicnn.set_random_seed(3)
    minicnn.Net(str(deploy), minicnn.TEST).save(str(tmp_path / "w.caffemodel"))
    rng = np.random.default_rng(0)
    image = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    return str(deploy), str(tmp_path / "w.caffemodel"), str(image)


def test_windows_without_context_are_the_slices_warped_to_the_input(model):
    deploy, weights, image_path = model
    mean = np.array([104.0, 117.0, 123.0])
    detector = Detector(deploy, weights, mean=mean, raw_scale=255, channel_swap=(2, 1, 0))
    windows = [(0, 0, 10, 10), (3, 5, 18, 20), (5, 2, 9, 23), (0, 0, 20, 24), (7, 7, 12, 16)]
    detections = detector.detect_windows([(image_path, windows[:3]), (image_path, windows[3:])])
    assert [d["window"] for d in detections] == windows                  # 5 windows, batch 4
    assert all(d["filename"] == image_path for d in detections)

    image = load_image(image_path)
    transformer = Transformer({"data": (4, 3, 10, 10)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", mean)
    net = minicnn.Net(deploy, weights, minicnn.TEST)
    for d in detections:
        ymin, xmin, ymax, xmax = d["window"]
        x = transformer.preprocess("data", image[ymin:ymax, xmin:xmax])
        net.blobs["data"].data[...] = x                                  # the same item 4 times
        assert np.array_equal(net.forward()["prob"][0], d["prediction"])
    assert detector.detect_windows([]) == []


def test_context_padding_worked_out_by_hand(model):
    deploy, weights, _ = model
    detector = Detector(deploy, weights, context_pad=2)       # crop 10: scale 10 / 6
    yy, xx = np.mgrid[:20, :24].astype(np.float32)
    image = np.stack([yy, xx, yy * 0 + 7], axis=2)
    # window rows 4..9: centre 7, half 3, grown by 10/6 to 7 -+ 5 = 2..12, 11 rows -> 10
    assert np.allclose(detector.crop(image, (4, 4, 9, 9)), image[2:12, 2:12])
    assert np.array_equal(detector.crop(im=image, window=(4, 4, 9, 9)),   # pycaffe's names
                          detector.crop(image, (4, 4, 9, 9)))
    # at the corner the grown box starts at -2: 2 rows and columns of padding (mean 0), then
    # rows 0..7 of the image (clipped box 0..8, 9 rows x 10 / 11 -> 8)
    corner = detector.crop(image, (0, 0, 5, 5))
    assert np.allclose(corner[2:, 2:], image[0:8, 0:8])
    assert not corner[:2].any() and not corner[:, :2].any()


@pytest.mark.parametrize("swap", [(2, 1, 0), (1, 2, 0)])
def test_context_padding_is_the_mean_colour_once_preprocessed(model, swap):
    deploy, weights, image_path = model
    mean = np.array([104.0, 117.0, 123.0])
    detector = Detector(deploy, weights, mean=mean, raw_scale=255, channel_swap=swap,
                        context_pad=3)
    if swap == (2, 1, 0):
        assert np.allclose(detector.crop_mean.ravel(), np.array([123.0, 117.0, 104.0]) / 255)
    image = load_image(image_path)
    crop = detector.crop(image, (0, 0, 6, 6))                  # grown past the top-left corner
    x = detector.transformer.preprocess("data", crop)
    assert np.abs(x[:, 0, 0]).max() < 1e-4 and np.abs(x[:, 1:, 1:]).max() > 1
    detections = detector.detect_windows([(image_path, [(0, 0, 6, 6), (4, 4, 18, 22)])])
    net = minicnn.Net(deploy, weights, minicnn.TEST)
    net.blobs["data"].data[...] = x
    assert np.array_equal(net.forward()["prob"][0], detections[0]["prediction"])


def test_bad_windows_and_proposals_are_named(model, tmp_path):
    deploy, weights, image_path = model
    detector = Detector(deploy, weights)
    with pytest.raises(MinicnnError, match=r"window \(5, 5, 5, 9\) is empty in the 20x24 image"):
        detector.detect_windows([(image_path, [(5, 5, 5, 9)])])
    with pytest.raises(MinicnnError, match="selective search"):
        detector.detect_selective_search([image_path])
    with pytest.raises(MinicnnError, match="context_pad 5 leaves no room"):
        Detector(deploy, weights, context_pad=5)
    flat = tmp_path / "flat.prototxt"
    flat.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
                    'dim: 3 } } }\nlayer { name: "p" type: "Softmax" bottom: "x" top: "p" }')
    with pytest.raises(MinicnnError, match=r"input 'x' has shape \(2, 3\): images need an"):
        Detector(str(flat), None)
    padded = Detector(deploy, weights, context_pad=1)
    with pytest.raises(MinicnnError, match="lies outside the 20x24 image"):
        padded.crop(np.zeros((20, 24, 3), np.float32), (40, 40, 50, 50))


def test_detector_and_classifier_on_the_gpu_predict_what_the_cpu_does(model, gpu):
    deploy, weights, image_path = model
    options = {"mean": np.array([104.0, 117.0, 123.0]), "raw_scale": 255,
               "channel_swap": (2, 1, 0)}
    windows = [(image_path, [(0, 0, 10, 10), (3, 5, 18, 20), (5, 2, 9, 23)])]
    cpu = Detector(deploy, weights, context_pad=2, **options).detect_windows(windows)
    dev = Detector(deploy, weights, context_pad=2, device="cuda:0", **options)
    assert dev.device == 0
    for a, b in zip(cpu, dev.detect_windows(windows)):
        np.testing.assert_allclose(b["prediction"], a["prediction"], rtol=1e-5, atol=1e-7)
    image = load_image(image_path)
    want = minicnn.Classifier(deploy, weights, image_dims=(12, 12), **options).predict([image])
    got = minicnn.Classifier(deploy, weights, image_dims=(12, 12), device="cuda:0",
                             **options).predict([image])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
