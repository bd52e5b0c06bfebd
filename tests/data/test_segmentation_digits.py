"""segmentation-digits and canvas-digits: labels exact by the pasting rule, the ignore rule, the
files and lists written, determinism, and the `minicnn data` commands."""

import os

import numpy as np
import pytest
from PIL import Image

from minicnn.cli import main
from minicnn.data import segmentation_digits as sd
from minicnn.data.datum import decode_image
from minicnn.data.segmentation import read_label, read_pair_list


def test_paste_labels_the_majority_covered_pixels_and_tracks_the_share():
    image = np.zeros((4, 5, 3), np.float32)
    label = np.zeros((4, 5), np.uint8)
    share = np.ones((4, 5), np.float32)
    alpha = np.array([[0.0, 0.2, 0.5, 0.9], [1.0, 0.49, 0.51, 0.0]], np.float32)
    # at row 1, column 2: the last alpha column falls off the image
    sd._paste(image, label, share, alpha, np.array([1.0, 0.5, 0.0], np.float32), 7, 1, 2)
    np.testing.assert_array_equal(label[1], [0, 0, 0, 0, 7])          # alpha 0, 0.2, 0.5
    np.testing.assert_array_equal(label[2], [0, 0, 7, 0, 7])          # alpha 1, 0.49, 0.51
    np.testing.assert_allclose(share[1], [1, 1, 1, 0.8, 0.5])
    np.testing.assert_allclose(share[2], [1, 1, 1, 0.51, 0.51])
    np.testing.assert_allclose(image[1, 3], [0.2, 0.1, 0.0])          # 0.2 of the colour
    sd._paste(image, label, share, np.full((2, 2), 0.3, np.float32), np.ones(3, np.float32),
              3, 1, 3)                                                # a faint tint on top
    np.testing.assert_array_equal(label[1:3, 3:], [[0, 7], [0, 7]])
    np.testing.assert_allclose(share[1:3, 3:], [[0.56, 0.35], [0.357, 0.357]], rtol=1e-5)
    sd._paste(image, label, share, np.ones((9, 9), np.float32), np.ones(3, np.float32), 2,
              -20, -20)                                               # wholly outside: nothing
    assert (label != 2).all()
    out = sd.ignore_mixed(label, share, 0.75)
    np.testing.assert_array_equal(out[1:3, 2:], [[0, 255, 255], [7, 255, 255]])
    assert (out[0] == 0).all() and (out[3] == 0).all()
    np.testing.assert_array_equal(sd.ignore_mixed(label, share, 0), label)


@pytest.fixture(scope="module")
def sources():
    return sd.load_sources()


def test_make_image_labels_digits_and_objects(sources):
    glyph = np.zeros((28, 28), np.uint8)
    glyph[4:24, 10:18] = 255
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(12):
        rgb, label, share = sd.make_image(rng, [glyph], [4], sources, "train", size=97)
        assert rgb.shape == (97, 97, 3) and rgb.dtype == np.uint8
        assert label.shape == share.shape == (97, 97)
        seen |= set(np.unique(label).tolist())
        assert set(np.unique(label)) <= {0, 5, sd.HORSE, sd.WHEEL}    # the glyph is a "4"
        assert (share > 0).all() and (share <= 1).all()
    assert {0, 5, sd.HORSE, sd.WHEEL} <= seen
    a = sd.make_image(np.random.default_rng(8), [glyph], [4], sources, "test", size=64)
    b = sd.make_image(np.random.default_rng(8), [glyph], [4], sources, "test", size=64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_cli_writes_the_set(tmp_path, capsys):
    out = tmp_path / "seg"
    assert main(["data", "segmentation-digits", "--out", str(out), "--train-images", "3",
                 "--val-images", "1", "--test-images", "2", "--size", "64"]) == 0
    assert "wrote" in capsys.readouterr().out
    names = (out / "names.txt").read_text().split()
    assert names == list(sd.CLASS_NAMES)
    pairs = read_pair_list(str(out / "test.txt"))
    assert [p[:2] for p in pairs] == [("images/test/000000.png", "labels/test/000000.png"),
                                      ("images/test/000001.png", "labels/test/000001.png")]
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        assert len(os.listdir(out / "images" / split)) == n
        for i in range(n):
            image = decode_image(str(out / "images" / split / f"{i:06d}.png"))
            band = read_label(str(out / "labels" / split / f"{i:06d}.png"))
            full = read_label(str(out / "labels_full" / split / f"{i:06d}.png"))
            assert image.shape == (3, 64, 64) and band.shape == full.shape == (64, 64)
            assert full.max() < len(names)
            assert ((band == full) | (band == 255)).all()            # the band only ignores
    first = (out / "labels_full" / "train" / "000000.png").read_bytes()
    assert main(["data", "segmentation-digits", "--out", str(out), "--train-images", "1",
                 "--val-images", "0", "--test-images", "0", "--size", "64"]) == 0
    assert (out / "labels_full" / "train" / "000000.png").read_bytes() == first   # seeded
    assert not os.listdir(out / "images" / "val")


def test_cli_refuses_bad_values(tmp_path, capsys):
    assert main(["data", "segmentation-digits", "--out", str(tmp_path), "--size", "20"]) == 1
    assert "image size must be an integer of at least 48" in capsys.readouterr().err
    assert main(["data", "segmentation-digits", "--out", str(tmp_path),
                 "--ignore-coverage", "2"]) == 1
    assert "ignore_coverage must be a number in [0, 1]" in capsys.readouterr().err


def test_canvas_digits_cli(tmp_path, capsys):
    out = tmp_path / "canvas"
    assert main(["data", "canvas-digits", "--out", str(out)]) == 0
    assert "16 sizes from 24x24 to 48x48" in capsys.readouterr().out
    lines = (out / "train.txt").read_text().splitlines()
    assert len(lines) == 4000 and len((out / "test.txt").read_text().splitlines()) == 1000
    name, label = lines[0].rsplit(" ", 1)
    image = np.asarray(Image.open(out / name))
    assert image.ndim == 2 and image.shape[0] in (24, 32, 40, 48) and 0 <= int(label) <= 9
