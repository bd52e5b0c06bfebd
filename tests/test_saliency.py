"""minicnn.saliency: the entropy and class-score objectives and their gradients (finite
differences), backward to an intermediate blob and to the input, the three maps, the crop
search on hand-checked maps, AUC, and the saliency / eval-saliency commands."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import saliency as sal
from minicnn.cli import main
from minicnn.errors import MinicnnError
from minicnn.proto import parse_text
from minicnn.testing import numerical_grad

TINY = """
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "feat"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1 stride: 2
                            weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "constant" value: 0.2 } } }
layer { name: "relu2" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "pool" type: "Pooling" bottom: "feat" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def tiny_net(dtype=np.float64, force_backward=True, seed=7):
    param = parse_text(TINY)
    param.force_backward = force_backward
    minicnn.set_random_seed(seed)
    return minicnn.Net(param, minicnn.TEST, dtype=dtype)


def total_entropy(net):
    return float(sal.entropy(net.blobs["fc"].data)[0].sum())


# --- objectives ----------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(2, 6), st.floats(0.1, 8.0), st.integers(0, 10**6))
def test_entropy_gradient_matches_finite_differences(n, c, spread, seed):
    scores = np.random.default_rng(seed).standard_normal((n, c)) * spread
    h, grad = sal.entropy(scores)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(h, -(p * np.log(p)).sum(1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, numerical_grad(lambda: sal.entropy(scores)[0].sum(), scores),
                               rtol=1e-5, atol=1e-8)


def test_entropy_bounds_and_class_score():
    h, g = sal.entropy(np.zeros((1, 5)))                 # uniform: log C, a maximum
    assert h[0] == pytest.approx(np.log(5)) and np.allclose(g, 0)
    h, _ = sal.entropy(np.array([[1000.0, 0.0, 0.0]]))    # certain: 0
    assert h[0] == pytest.approx(0.0, abs=1e-12)
    value, grad = sal.class_score(np.array([[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]]))
    np.testing.assert_array_equal(value, [2.0, 3.0])
    np.testing.assert_array_equal(grad, [[0, 1, 0], [1, 0, 0]])
    value, _ = sal.class_score(np.array([[0.5, 2.0, -1.0]]), 2)
    assert value[0] == -1.0
    with pytest.raises(MinicnnError, match="out of range"):
        sal.class_score(np.zeros((1, 3)), 3)


# --- backward to any blob -----------------------------------------------------------------------

def test_backward_to_an_intermediate_blob_matches_finite_differences():
    net = tiny_net()
    x = np.random.default_rng(1).standard_normal(net.blobs["data"].shape)
    net.forward(data=x)
    _, dh = sal.entropy(net.blobs["fc"].data)
    got = sal.backward_to(net, "feat", "fc", dh)
    assert got.shape == net.blobs["feat"].shape
    feat = net.blobs["feat"].data                        # after the in-place ReLU

    def objective():                                      # the layers above "feat" only
        net.forward(start="pool")
        return total_entropy(net)

    np.testing.assert_allclose(got, numerical_grad(objective, feat), rtol=1e-5, atol=1e-9)
    assert np.abs(got).max() > 0


def test_backward_to_the_input_matches_finite_differences():
    net = tiny_net()
    x = np.random.default_rng(2).standard_normal(net.blobs["data"].shape)
    net.forward(data=x)
    scores = net.blobs["fc"].data.copy()
    _, ds = sal.class_score(scores)
    got = sal.backward_to(net, "data", "fc", ds)
    top = scores.argmax(1)

    def objective():
        net.forward()
        return float(net.blobs["fc"].data[np.arange(len(top)), top].sum())

    data = net.blobs["data"].data
    np.testing.assert_allclose(got, numerical_grad(objective, data), rtol=1e-5, atol=1e-9)
    assert all(np.abs(layer.blobs[0].diff).max() == 0 for layer in net.layers if layer.blobs)


def test_backward_needs_force_backward_and_a_path():
    net = tiny_net(force_backward=False)
    net.forward(data=np.ones(net.blobs["data"].shape))
    with pytest.raises(MinicnnError, match="force_backward: true"):
        sal.backward_to(net, "feat", "fc", np.ones((2, 4)))
    net = tiny_net()
    net.forward(data=np.ones(net.blobs["data"].shape))
    with pytest.raises(MinicnnError, match="not below 'feat'"):
        sal.backward_to(net, "fc", "feat", np.ones(net.blobs["feat"].shape))
    with pytest.raises(MinicnnError, match="no blob named 'nope'"):
        sal.backward_to(net, "nope", "fc", np.ones((2, 4)))


# --- maps ------------------------------------------------------------------------------------------

def test_raw_maps_are_the_three_definitions():
    net = tiny_net(np.float32)
    rng = np.random.default_rng(4)
    images = [rng.random((8, 10, 3)).astype(np.float32) for _ in range(3)]
    maps, predictions = sal.saliency_maps(net, images, "feat", sal.METHODS, raw=True,
                                          batch_size=2, mean=None, raw_scale=1.0)
    assert [p[0] for p in predictions] == [int(p[1].argmax()) for p in predictions]
    for k, image in enumerate(images):                   # again, one at a time, by hand
        x = image.transpose(2, 0, 1)[::-1][None]         # RGB -> BGR, CHW
        net.blobs["data"].reshape(x.shape)
        net.reshape()
        net.forward(data=x)
        acts = net.blobs["feat"].data.astype(np.float64).copy()
        np.testing.assert_allclose(maps["sum"][k], acts[0].sum(0), rtol=1e-5)
        _, dh = sal.entropy(net.blobs["fc"].data)
        grads = sal.backward_to(net, "feat", "fc", dh)
        w = np.abs((acts * grads).sum(axis=(2, 3)))[0]
        want = np.tensordot(w, acts[0], axes=1)
        got = maps["entropy"][k]                         # up to a positive scale
        np.testing.assert_allclose(got / got.max(), want / want.max(), rtol=1e-4, atol=1e-6)
        _, ds = sal.class_score(net.blobs["fc"].data)
        g = sal.backward_to(net, "data", "fc", ds)
        np.testing.assert_allclose(maps["gradient"][k], np.abs(g[0]).max(0), rtol=1e-5)
        assert maps["sum"][k].shape == (4, 5) and maps["gradient"][k].shape == (8, 10)


def test_maps_have_the_image_size_and_range():
    net = tiny_net(np.float32)
    image = np.random.default_rng(5).random((21, 33, 3)).astype(np.float32)
    for method in sal.METHODS:
        m = sal.saliency_map(net, image, "feat", method)
        assert m.shape == (21, 33) and m.dtype == np.float32
        assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    with pytest.raises(MinicnnError, match="need --blob"):
        sal.saliency_map(net, image, None, "entropy")
    with pytest.raises(MinicnnError, match="unknown saliency method 'magic'"):
        sal.saliency_map(net, image, "feat", "magic")
    with pytest.raises(MinicnnError, match="filter maps of a conv blob"):
        sal.saliency_map(net, image, "fc", "sum")


def test_filter_weights_are_the_absolute_value_of_the_summed_response():
    """w_k = |sum_ij A_k dH/dA_k|: opposite responses within a filter cancel before the
    absolute value (the tiny net's global pooling gives every position one sign, so its
    maps cannot tell)."""
    a = np.array([[[[1.0, 2.0]], [[1.0, 1.0]]]])          # (1, 2, 1, 2)
    g = np.array([[[[3.0, -1.0]], [[-2.0, -0.5]]]])
    np.testing.assert_array_equal(sal.filter_weights(a, g), [[1.0, 2.5]])


@pytest.mark.parametrize("scale, want", [(3000, "float64"), (1e5, "sum")])
def test_entropy_maps_of_confident_predictions(scale, want):
    """A confident prediction (class probabilities down to 1e-110) has an entropy gradient
    far below float32's range: the per-item rescaling keeps a float32 net's map the float64
    one. A saturated softmax (probabilities exactly 0 and 1) has no gradient at all, and the
    map falls back to the naive sum."""
    image = np.random.default_rng(4).random((8, 10, 3)).astype(np.float32)
    maps = {}
    for dtype in (np.float32, np.float64):
        net = tiny_net(dtype)
        net.params["fc"][0].data[...] *= scale
        maps[dtype], _ = sal.saliency_maps(net, [image], "feat", ("entropy", "sum"), raw=True,
                                           mean=None, raw_scale=1.0)
    got = maps[np.float32]["entropy"][0]
    other = {"float64": maps[np.float64]["entropy"][0], "sum": maps[np.float64]["sum"][0]}
    assert np.isfinite(got).all() and got.max() > 0
    np.testing.assert_allclose(got / got.max(), other[want] / other[want].max(), atol=1e-5)
    if want == "float64":                                  # and it is not the sum's picture
        plain = other["sum"] / other["sum"].max()
        assert np.abs(got / got.max() - plain).max() > 0.1


def test_maps_are_smoothed_by_a_fraction_of_the_longer_side_and_stretched():
    net = tiny_net(np.float32)
    image = np.random.default_rng(6).random((12, 30, 3)).astype(np.float32)
    raw = sal.saliency_map(net, image, "feat", "sum", raw=True)
    got = sal.saliency_map(net, image, "feat", "sum", smooth=0.1)
    from minicnn.io import resize_image
    want = sal.smooth(resize_image(raw[:, :, None], (12, 30))[:, :, 0], 0.1 * 30)
    want = (want - want.min()) / (want.max() - want.min())
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a flat map (up to rounding) has no salient place: all zeros, not noise stretched to 1
    flat = sal._normalise(np.full((3, 4), 5.0) + np.arange(12).reshape(3, 4) * 1e-15)
    np.testing.assert_array_equal(flat, np.zeros((3, 4)))
    np.testing.assert_array_equal(sal._normalise(np.full((3, 4), 5.0)), np.zeros((3, 4)))


def test_scores_blob_is_the_last_writers_softmax_input():
    """The scores behind an output are the bottom of the Softmax that makes it (its last
    writer); an output changed in place after the Softmax is its own scores."""
    text = TINY.replace('top: "prob" }', 'top: "prob" }\nlayer { name: "scale" type: "Power" '
                        'bottom: "prob" top: "prob" power_param { scale: 2 } }')
    assert sal.scores_blob(tiny_net()) == "fc"
    with pytest.warns(UserWarning, match="overwrites it in place"):
        net = minicnn.Net(parse_text(text), minicnn.TEST)
    assert net.layer_names[-1] == "scale" and sal.scores_blob(net) == "prob"


def test_smoothing_is_a_normalised_gaussian():
    impulse = np.zeros((21, 21))
    impulse[10, 10] = 1.0
    blurred = sal.smooth(impulse, 2.0)
    assert blurred.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(blurred, blurred.T)
    np.testing.assert_allclose(blurred, blurred[::-1, ::-1])
    y, x = np.mgrid[-10:11, -10:11]
    want = np.exp(-(x ** 2 + y ** 2) / 8.0)
    inside = slice(4, 17)                                # the kernel's radius: 3 sigma
    np.testing.assert_allclose(blurred[inside, inside] / blurred.max(),
                               want[inside, inside] / want.max(), rtol=1e-12)
    assert blurred[:3].max() == 0
    np.testing.assert_array_equal(sal.smooth(impulse, 0), impulse)


# --- crops, checked by hand -----------------------------------------------------------------------

def test_one_hot_pixel_gives_the_smallest_central_crop_around_it():
    m = np.zeros((10, 10))
    m[2, 3] = 1.0
    # mean 0.01: a crop with the pixel scores 1 - 0.01 * area; the smallest allowed is 5 x 5
    # (half of the largest 10 x 10); of the 5 x 5 crops holding (2, 3), x0 in 0..3 and y0 in
    # 0..2, the most central have y0 = 2 (centre 4.5) and x0 = 2 or 3 (centres 4.5, 5.5,
    # equally far from 5): the tie goes to the top-left one, x0 = 2.
    c = sal.best_crop(m, "1:1")
    assert (c.x0, c.y0, c.x1, c.y1) == (2, 2, 7, 7)
    assert c.score == pytest.approx(0.75) and c.mass == 1.0
    c = sal.best_crop(m, 1.0, min_size=1.0)              # only the whole image is allowed
    assert (c.x0, c.y0, c.x1, c.y1) == (0, 0, 10, 10) and c.score == pytest.approx(0.0)


def test_uniform_map_gives_the_largest_centred_crop():
    m = np.full((8, 12), 0.3)
    assert tuple(sal.best_crop(m, "1:1")[:4]) == (2, 0, 10, 8)
    # 8 high: 10.67 -> 11 wide; x0 = 0 and 1 are equally central: the left one
    assert tuple(sal.best_crop(m, "4:3")[:4]) == (0, 0, 11, 8)
    assert tuple(sal.best_crop(m, "2:1")[:4]) == (0, 1, 12, 7)    # 12 x 6, centred
    assert tuple(sal.best_crop(np.zeros((8, 12)), "1:1")[:4]) == (2, 0, 10, 8)


def test_a_salient_band_moves_a_fixed_size_crop():
    m = np.zeros((20, 20))
    m[14:18, :] = 1.0                                    # a band near the bottom
    c = sal.best_crop(m, "2:1", min_size=1.0)            # 20 x 10 crops: position only
    assert (c.x0, c.x1, c.y1 - c.y0) == (0, 20, 10)
    assert c.y0 <= 14 and c.y1 >= 18 and c.mass == 1.0
    # the crops holding the whole band (y0 = 8, 9, 10) score alike; the most central is
    # y0 = 8 (centre row 13 against the image's 10)
    assert c.y0 == 8


def test_two_objects_pick_the_heavier_and_sizes_are_exact():
    m = np.zeros((30, 40))
    m[5:10, 5:10] = 1.0                                  # 25 units
    m[18:28, 25:35] = 1.0                                # 100 units: the crop goes here
    c = sal.best_crop(m, "1:1", min_size=0.3)
    assert c.x0 <= 25 and c.x1 >= 35 and c.y0 <= 18 and c.y1 >= 28
    assert c.x1 - c.x0 == c.y1 - c.y0 == 10              # tight: every extra pixel costs mean
    for ratio in ("2:1", "4:3", "3:4", 1.5):
        c = sal.best_crop(np.random.default_rng(0).random((30, 40)), ratio)
        w, h = c.x1 - c.x0, c.y1 - c.y0
        assert w == round(h * sal.parse_ratio(ratio))
        assert 0 <= c.x0 and c.x1 <= 40 and 0 <= c.y0 and c.y1 <= 30


def test_exhaustive_search_agrees_with_brute_force():
    rng = np.random.default_rng(11)
    for _ in range(5):
        m = rng.random((9, 13)) ** 3
        c = sal.best_crop(m, "4:3", min_size=0.4)
        best = -np.inf
        for h in range(1, 10):
            w = round(h * 4 / 3)
            if w > 13 or h < np.ceil(0.4 * 9):
                continue
            for y in range(10 - h):
                for x in range(14 - w):
                    best = max(best, m[y:y + h, x:x + w].sum() - m.mean() * h * w)
        assert c.score == pytest.approx(best)
        inside = m[c.y0:c.y1, c.x0:c.x1].sum()
        assert c.mass == pytest.approx(inside / m.sum())


def test_crop_errors():
    with pytest.raises(MinicnnError, match="not W:H"):
        sal.parse_ratio("wide")
    with pytest.raises(MinicnnError, match="must be positive"):
        sal.parse_ratio("0:1")
    with pytest.raises(MinicnnError, match="min_size"):
        sal.best_crop(np.ones((4, 4)), "1:1", min_size=0)
    with pytest.raises(MinicnnError, match="H x W"):
        sal.best_crop(np.ones(4), "1:1")
    with pytest.raises(MinicnnError, match="NaN"):
        sal.best_crop(np.full((4, 4), np.nan), "1:1")
    assert sal.parse_ratio("4:3") == pytest.approx(4 / 3) and sal.parse_ratio((2, 1)) == 2.0


def test_an_explicit_threshold_replaces_the_maps_mean():
    m = np.zeros((10, 10))
    m[2, 3] = 1.0
    assert tuple(sal.best_crop(m, "1:1")[:4]) == (2, 2, 7, 7)            # mean: the smallest
    c = sal.best_crop(m, "1:1", threshold=0)      # nothing charged per pixel: the largest
    assert tuple(c[:4]) == (0, 0, 10, 10) and c.score == 1.0
    c = sal.best_crop(m, "1:1", threshold=0.02)
    assert tuple(c[:4]) == (2, 2, 7, 7) and c.score == pytest.approx(1 - 0.02 * 25)


# --- evaluation helpers -------------------------------------------------------------------------

def test_auc_by_hand():
    mask = np.array([0, 0, 1, 1])
    assert sal.auc(np.array([0.1, 0.4, 0.35, 0.8]), mask) == pytest.approx(0.75)
    assert sal.auc(np.array([0.1, 0.2, 0.3, 0.4]), mask) == 1.0
    assert sal.auc(np.array([0.4, 0.3, 0.2, 0.1]), mask) == 0.0
    assert sal.auc(np.ones(4), mask) == 0.5                       # ties count half
    assert sal.auc(np.array([0.1, 0.3, 0.3, 0.9]), mask) == pytest.approx(0.875)
    assert np.isnan(sal.auc(np.ones(4), np.zeros(4)))
    rng = np.random.default_rng(0)
    s, m = rng.random(200), rng.random(200) > 0.7
    pairs = (s[m][:, None] > s[~m][None, :]).mean()               # the definition, by pairs
    assert sal.auc(s, m) == pytest.approx(pairs)


def test_centre_prior_and_crop_fraction():
    prior = sal.centre_prior(6, 8)
    assert prior.shape == (6, 8) and prior.max() <= 1
    np.testing.assert_allclose(prior, prior[::-1, ::-1])
    assert prior[2:4, 3:5].min() > prior[0, 0]
    mask = np.zeros((6, 8))
    mask[1:3, 1:3] = 1
    assert sal.crop_fraction(mask, (0, 0, 2, 2)) == 0.25
    assert np.isnan(sal.crop_fraction(np.zeros((2, 2)), (0, 0, 1, 1)))


# --- commands ----------------------------------------------------------------------------------------

@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY.replace("force_backward: true", ""))   # the command turns it on
    minicnn.set_random_seed(3)
    net = minicnn.Net(str(path), minicnn.TEST)
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    return str(path), str(weights)


def test_saliency_command_writes_maps_overlays_and_crops(tiny_model, tmp_path, capsys):
    from PIL import Image
    image = tmp_path / "photo.png"
    pixels = (np.random.default_rng(0).random((30, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "out"
    model, weights = tiny_model
    assert main(["saliency", "--model", model, "--weights", weights, "--blob", "feat",
                 "--method", "entropy,gradient", "--crop", "2:1,1:1,4:3", "--out", str(out),
                 str(image)]) == 0
    for method in ("entropy", "gradient"):
        m = np.load(out / f"photo_{method}.npy")
        assert m.shape == (30, 48) and 0 <= m.min() and m.max() <= 1
        assert Image.open(out / f"photo_{method}.png").size == (48, 30)
        assert Image.open(out / f"photo_{method}_overlay.png").size == (48, 30)
    crops = json.loads((out / "crops.json").read_text())
    entry = crops["images"][0]
    assert entry["width"] == 48 and entry["height"] == 30
    for ratio, wh in (("2:1", 2.0), ("1:1", 1.0), ("4:3", 4 / 3)):
        x0, y0, x1, y1 = entry["maps"]["entropy"]["crops"][ratio]["box"]
        assert x1 - x0 == round((y1 - y0) * wh) and y1 - y0 >= 15
        saved = Image.open(entry["maps"]["entropy"]["crops"][ratio]["output"])
        assert saved.size == (x1 - x0, y1 - y0)
    assert "crop 2:1" in capsys.readouterr().out


def test_saliency_command_errors(tiny_model, tmp_path, capsys):
    model, weights = tiny_model
    assert main(["saliency", "--model", model, "--out", str(tmp_path), "--blob", "feat"]) == 1
    assert "give the images" in capsys.readouterr().err
    assert main(["saliency", "--model", model, "--weights", weights, "--method", "magic",
                 "--out", str(tmp_path), "x.png"]) == 1
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert main(["saliency", "--model", model, "--weights", weights, "--blob", "feat",
                 "--crop", "2-1", "--out", str(tmp_path), "x.png"]) == 1
    assert "not W:H" in capsys.readouterr().err


def test_eval_saliency_on_a_small_sos_set(tiny_model, tmp_path, capsys):
    from minicnn.data.sos import prepare_sos
    data = tmp_path / "sos"
    prepare_sos(str(data), train=0, val=0, test=10, size=64, verbose=False)
    model, weights = tiny_model
    out = tmp_path / "eval"
    assert main(["eval-saliency", "--model", model, "--weights", weights, "--blob", "feat",
                 "--method", "entropy,gradient,sum", "--crop", "2:1,1:1", "--data", str(data),
                 "--examples", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "centre prior" in printed and "count accuracy" in printed
    summary = json.loads((out / "eval.json").read_text())
    assert summary["images"] == 10 and summary["with_objects"] == 8     # 2 of 10 are class 0
    for method in ("entropy", "gradient", "sum", "centre prior"):
        assert 0 <= summary["methods"][method]["auc"] <= 1
    ideal = summary["methods"]["mask (ideal)"]["crops"]
    for ratio in ("2:1", "1:1"):            # the mask's own crop keeps the most of itself
        assert ideal[ratio]["object_kept"] >= ideal[ratio]["centred_same_size"]
    assert sorted(os.listdir(out)) == ["eval.json", "example_00.png", "example_01.png"]
