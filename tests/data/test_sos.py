"""The synthetic SOS set and the face-area set: exact masks and labels, disjoint sources per
split, balanced classes, the same files for the same seed, and the data command."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from minicnn.cli import main
from minicnn.data import face_area, sos


@pytest.fixture(scope="module")
def sos_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("sos")
    sos.prepare_sos(str(out), train=5, val=5, test=15, size=64, verbose=False)
    return out


def read_list(path):
    return [line.rsplit(" ", 1) for line in open(path).read().splitlines()]


def test_sos_masks_counts_and_boxes_are_exact(sos_set):
    for split, n in (("train", 5), ("val", 5), ("test", 15)):
        entries = read_list(sos_set / f"{split}.txt")
        records = json.loads((sos_set / f"{split}_objects.json").read_text())["images"]
        assert len(entries) == len(records) == n
        for (path, label), rec in zip(entries, records):
            assert rec["image"] == path and int(label) == rec["label"] == min(rec["count"], 4)
            image = np.asarray(Image.open(sos_set / path))
            mask = np.asarray(Image.open(sos_set / rec["mask"]))
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
            assert sorted(set(np.unique(mask)) - {0}) == list(range(1, rec["count"] + 1))
            assert len(rec["objects"]) == rec["count"]
            boxes = [o["box"] for o in rec["objects"]]
            for o in rec["objects"]:
                x0, y0, x1, y1 = o["box"]
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
                ys, xs = np.nonzero(mask == o["id"])
                assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
                assert o["kind"] in sos.KINDS
            for i, a in enumerate(boxes):              # whole objects, 3 pixels apart
                for b in boxes[i + 1:]:
                    assert a[0] >= b[2] + 3 or b[0] >= a[2] + 3 or a[1] >= b[3] + 3 \
                        or b[1] >= a[3] + 3
    labels = [int(label) for _, label in read_list(sos_set / "test.txt")]
    assert np.bincount(labels).tolist() == [3, 3, 3, 3, 3]          # balanced
    assert (sos_set / "names.txt").read_text().split() == ["0", "1", "2", "3", "4+"]


def test_sos_is_reproducible_and_splits_are_independent(sos_set, tmp_path):
    sos.prepare_sos(str(tmp_path), train=0, val=0, test=15, size=64, verbose=False)
    for i in range(15):
        name = f"{i:06d}.png"
        for kind in ("images", "masks"):
            assert (tmp_path / kind / "test" / name).read_bytes() == \
                (sos_set / kind / "test" / name).read_bytes()
    sos.prepare_sos(str(tmp_path), train=0, val=0, test=3, size=64, seed=1, verbose=False)
    assert (tmp_path / "images/test/000000.png").read_bytes() != \
        (sos_set / "images/test/000000.png").read_bytes()
    assert not any(p.name.startswith(".") or ".tmp" in p.name for p in tmp_path.rglob("*"))


def test_faces_and_coins_differ_between_splits():
    faces, non_faces = sos.lfw()
    assert [len(faces[s]) for s in sos.SPLITS] == [70, 10, 20] and len(non_faces) == 100
    flat = {s: {f.tobytes() for f in faces[s]} for s in sos.SPLITS}
    assert not (flat["train"] & flat["test"]) and not (flat["train"] & flat["val"])
    coins = sos.coins()
    assert [len(coins[s]) for s in sos.SPLITS] == [15, 3, 5]
    keys = {s: {a.tobytes() for _, a in coins[s]} for s in sos.SPLITS}
    assert not (keys["train"] & keys["test"])
    for gray, alpha in coins["train"]:
        assert gray.shape == alpha.shape and set(np.unique(alpha)) == {0.0, 1.0}


def test_face_area_labels_are_the_exact_face_fraction(tmp_path):
    h5py = pytest.importorskip("h5py")
    face_area.prepare_face_area(str(tmp_path), train=4, val=0, test=12, size=48, verbose=False)
    entries = read_list(tmp_path / "test.txt")
    with h5py.File(tmp_path / "test.h5", "r") as f:
        data, label = f["data"][...], f["label"][...]
    assert data.shape == (12, 3, 48, 48) and label.shape == (12, 1)
    assert (tmp_path / "test_h5.txt").read_text().strip() == "test.h5"
    for k, (path, ratio) in enumerate(entries):
        pixels = np.asarray(Image.open(tmp_path / path))
        mask = np.asarray(Image.open(tmp_path / path.replace("images/", "masks/")))
        exact = (mask == 255).sum() / 48 ** 2
        assert set(np.unique(mask)) <= {0, 255}
        assert float(ratio) == pytest.approx(exact, abs=5e-7)
        assert label[k, 0] == np.float32(exact)
        np.testing.assert_array_equal(data[k], face_area.to_net_input(pixels[None])[0])
        np.testing.assert_allclose(data[k][:, 0, 0], pixels[0, 0, ::-1] - np.array([104, 117,
                                                                                     123]))
    assert label.max() < 0.6 and (label > 0).sum() >= 6


def test_data_command(tmp_path, capsys):
    assert main(["data", "sos", "--out", str(tmp_path / "s"), "--train-images", "0",
                 "--val-images", "0", "--test-images", "2", "--size", "64"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "s/images/test")) == 2
    assert main(["data", "sos", "--out", str(tmp_path / "s"), "--size", "20"]) == 1
    assert "image size must be an integer of at least 64" in capsys.readouterr().err
    assert main(["data", "face-area", "--out", str(tmp_path / "f"), "--train-images", "-1"]) == 1
    assert "non-negative integer" in capsys.readouterr().err
