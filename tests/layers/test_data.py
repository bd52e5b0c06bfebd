"""Data layers through the Layer protocol and in Nets: MemoryData, Data (LMDB), ImageData,
HDF5Data; determinism of their batches, exact resume, and errors."""

import os
import time

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn.data.datum import serialize_datum
from minicnn.data.db import LMDBWriter
from minicnn.data.errors import DataError
from minicnn.errors import LayerError, NetError
from minicnn.layers import DataLayer, HDF5DataLayer, ImageDataLayer, MemoryDataLayer
from minicnn.rng import get_rng


def make_lmdb(path, n=10, shape=(3, 6, 7), seed=0):
    """n random uint8 records with labels 0..n-1; returns the images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    with LMDBWriter(str(path)) as w:
        for i, image in enumerate(images):
            w.put(f"{i:08d}", serialize_datum(image, i))
    return images


def collect(layer, n):
    return [tuple(a.copy() for a in layer()) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


# --- MemoryData ----------------------------------------------------------------------------------

def memory_layer(**kw):
    return MemoryDataLayer(batch_size=2, channels=1, height=2, width=3, **kw)


def test_memory_data_serves_batches_cyclically():
    layer = memory_layer()
    x = np.arange(6 * 6, dtype=np.float64).reshape(6, 1, 2, 3)
    layer.set_input_arrays(x, np.arange(6).reshape(6, 1, 1, 1))
    got = collect(layer, 4)
    assert got[0][0].shape == (2, 1, 2, 3) and got[0][1].shape == (2,)
    assert got[0][0].dtype == np.float32
    for k, (data, label) in zip([0, 1, 2, 0], got):
        np.testing.assert_array_equal(data, x[2 * k:2 * k + 2])
        np.testing.assert_array_equal(label, [2 * k, 2 * k + 1])
    assert layer.data_state() == {"seed": 0, "batches_served": 4}
    layer.restore_data_state({"seed": 0, "batches_served": 2})
    np.testing.assert_array_equal(layer()[1], [4, 5])
    layer.set_input_arrays(x, np.arange(6))                     # restarts at the first batch
    np.testing.assert_array_equal(layer()[1], [0, 1])



def test_memory_data_keeps_a_float64_nets_values():
    # the arrays are copied in the net's dtype: 0.1 stays 0.1 in a float64 net (a float32 copy
    # would serve 0.10000000149011612), labels included (regression targets)
    layer = memory_layer()
    layer.dtype = np.dtype(np.float64)
    x = np.arange(12, dtype=np.float64).reshape(2, 1, 2, 3) / 10
    layer.set_input_arrays(x, np.array([0.1, 0.7]))
    data, label = layer()
    assert data.dtype == np.float64 and label.dtype == np.float64
    np.testing.assert_array_equal(data, x)
    assert label.tolist() == [0.1, 0.7]

def test_memory_data_errors():
    layer = memory_layer()
    with pytest.raises(LayerError, match="call set_input_arrays"):
        layer()
    with pytest.raises(LayerError, match=r"N x 1 x 2 x 3 .*got shape \(4, 1, 3, 2\)"):
        layer.set_input_arrays(np.zeros((4, 1, 3, 2)), np.zeros(4))
    with pytest.raises(LayerError, match="multiple of batch_size"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3)), np.zeros(3))
    with pytest.raises(LayerError, match=r"labels must have shape \(4,\)"):
        layer.set_input_arrays(np.zeros((4, 1, 2, 3)), np.zeros(5))
    with pytest.raises(LayerError, match="real numbers"):
        layer.set_input_arrays(np.zeros((4, 1, 2, 3), complex), np.zeros(4))
    with pytest.raises(LayerError, match="must all be positive"):
        MemoryDataLayer(batch_size=2, channels=1, height=2)()
    with pytest.raises(LayerError, match="bad data state"):
        layer.restore_data_state({"seed": 0, "batches_served": -1})


# --- Data ----------------------------------------------------------------------------------------

def test_data_layer_reads_keys_in_order_and_wraps(tmp_path):
    images = make_lmdb(tmp_path / "db", n=5)
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=3, backend="LMDB")
    batches = collect(layer, 3)
    labels = np.concatenate([b[1] for b in batches]).astype(int).tolist()
    assert labels == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    np.testing.assert_array_equal(batches[1][0][1], images[4])
    assert layer.data_state()["batches_served"] == 3


def test_data_layer_with_only_a_data_top(tmp_path):
    images = make_lmdb(tmp_path / "db", n=4)
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=2, top=["data"],
                      transform_param={"scale": 0.5, "crop_size": 4}, phase="TEST")
    data = layer()
    assert data.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(data[1], images[1][:, 1:5, 1:5] * np.float32(0.5))


def test_data_layer_rand_skip_starts_at_a_seeded_offset(tmp_path):
    make_lmdb(tmp_path / "db", n=10)
    starts = set()
    for seed in range(8):
        minicnn.set_random_seed(seed)
        layer = DataLayer(source=str(tmp_path / "db"), batch_size=2, rand_skip=5)
        first = int(layer()[1][0])
        assert 0 <= first < 5
        starts.add(first)
    assert len(starts) > 1


def _augmenting_layer(path, prefetch=4, seed=7):
    minicnn.set_random_seed(seed)
    return DataLayer(source=str(path), batch_size=3, backend="LMDB", prefetch=prefetch,
                     phase="TRAIN", transform_param={"crop_size": 4, "mirror": True})


@pytest.mark.parametrize("prefetch", [0, 1])
def test_batch_b_is_the_same_however_far_ahead_it_was_computed(tmp_path, prefetch):
    make_lmdb(tmp_path / "db", n=7)
    reference = collect(_augmenting_layer(tmp_path / "db", prefetch=4), 6)
    layer = _augmenting_layer(tmp_path / "db", prefetch=prefetch)
    got = collect(layer, 2)
    time.sleep(0.05)                              # the thread runs ahead meanwhile
    got += collect(layer, 4)
    assert_same_batches(got, reference)
    # the crops and flips really are random: record 0 (samples 0, 7, 14) is seen three ways
    views = [reference[0][0][0], reference[2][0][1], reference[4][0][2]]
    assert not all(np.array_equal(views[0], v) for v in views[1:])


def test_every_batch_draws_its_own_crops_and_flips(tmp_path):
    make_lmdb(tmp_path / "db", n=3)               # batch_size 3: every batch the same records
    batches = collect(_augmenting_layer(tmp_path / "db"), 4)
    assert len({data.tobytes() for data, _ in batches}) == 4



def test_set_shard_drops_the_batches_computed_ahead(tmp_path):
    make_lmdb(tmp_path / "db", n=10)
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB")
    assert layer()[1].tolist() == [0, 1]
    time.sleep(0.05)                              # the thread fills its queue meanwhile
    layer.set_shard(1, 2)                         # batch 1 of 4 samples: rank 1 takes 6, 7
    assert layer()[1].tolist() == [6, 7]


def test_restore_data_state_continues_exactly(tmp_path):
    make_lmdb(tmp_path / "db", n=7)
    a = _augmenting_layer(tmp_path / "db", seed=1)
    collect(a, 4)
    state = a.data_state()
    assert state["batches_served"] == 4 and isinstance(state["seed"], int)
    expected = collect(a, 3)
    b = _augmenting_layer(tmp_path / "db", seed=2)               # another seed, restored
    collect(b, 1)
    b.restore_data_state(state)
    assert b.data_state() == state
    assert_same_batches(collect(b, 3), expected)


def test_data_layers_draw_once_from_the_global_generator(tmp_path):
    make_lmdb(tmp_path / "db", n=4)
    layer = _augmenting_layer(tmp_path / "db")
    before = get_rng().bit_generator.state
    collect(layer, 1)                              # set up: draws the layer's seed
    after_setup = get_rng().bit_generator.state
    assert after_setup != before
    collect(layer, 3)
    assert get_rng().bit_generator.state == after_setup


def test_data_layer_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere_lmdb: data source not found"):
        DataLayer(source=str(tmp_path / "nowhere_lmdb"), batch_size=2)()
    with pytest.raises(LayerError, match="batch_size must be positive"):
        DataLayer(source="x")()
    with pytest.raises(LayerError, match="source is required"):
        DataLayer(batch_size=2)()
    level = tmp_path / "leveldb"
    level.mkdir()
    (level / "CURRENT").write_text("")
    with pytest.raises(DataError, match="cannot open as a LevelDB database"):
        DataLayer(source=str(level), batch_size=2)()
    make_lmdb(tmp_path / "db", n=2, shape=(1, 3, 3))
    with pytest.raises(LayerError, match=r"crop_size 4 is larger than the image \(3 x 3\)"):
        DataLayer(source=str(tmp_path / "db"), batch_size=2, transform_param={"crop_size": 4})()


def test_relative_sources_are_found_beside_the_prototxt(tmp_path, monkeypatch):
    make_lmdb(tmp_path / "db", n=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    layer = DataLayer(source="db", batch_size=2)
    with pytest.raises(DataError, match="data source not found"):
        layer()
    layer = DataLayer(source="db", batch_size=2)
    layer.source_dir = str(tmp_path)
    assert layer()[0].shape == (2, 3, 6, 7)


NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 4 mirror: true scale: 0.00390625 }
        data_param { source: "train_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 crop_size: 4 }
        data_param { source: "train_lmdb" batch_size: 2 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_a_net_with_a_data_layer_in_both_phases(tmp_path, monkeypatch):
    images = make_lmdb(tmp_path / "train_lmdb", n=5)
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.chdir(tmp_path)                    # Caffe's rule: relative to the cwd
    minicnn.set_random_seed(3)
    train = minicnn.Net("net.prototxt", minicnn.TRAIN)
    test = minicnn.Net("net.prototxt", minicnn.TEST)
    for net, batch in ((train, 4), (test, 2)):
        loss = net.forward()["loss"]
        assert np.isfinite(loss)
        assert net.blobs["data"].shape == (batch, 3, 4, 4)
        assert net.blobs["label"].data.tolist() == list(range(batch))
        assert net.blobs["data"].data.max() < 1
    # TEST: centre crop (1, 1) of the 6x7 images, scaled
    np.testing.assert_allclose(test.blobs["data"].data[1],
                               images[1][:, 1:5, 1:5] / np.float32(256))
    test.forward()
    assert test.blobs["label"].data.tolist() == [2, 3]
    assert test.layers[0].data_state()["batches_served"] == 2
    double = minicnn.Net("net.prototxt", minicnn.TEST, dtype=np.float64)
    double.forward()
    assert double.blobs["data"].data.dtype == np.float64
    np.testing.assert_allclose(double.blobs["data"].data[1], images[1][:, 1:5, 1:5] / 256)


def test_legacy_transform_fields_of_a_current_layer_are_ignored_as_in_caffe(tmp_path):
    # Caffe 1.0 moves data_param's scale/crop_size/... into transform_param in a V1 'layers'
    # entry only; its data layers read transform_param alone, so in a 'layer' they do nothing
    images = make_lmdb(tmp_path / "db", n=3)
    text = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "%s" '
            'batch_size: 2 backend: LMDB scale: 0.5 crop_size: 4 } }' % (tmp_path / "db"))
    with pytest.warns(UserWarning, match=r"layer 'd' \(Data\) ignores data_param.scale: .* "
                                         r"V1 'layers'"):
        net = minicnn.Net(minicnn.proto.parse_text(text), minicnn.TEST)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[1], images[1])      # 6x7, unscaled
    v1 = minicnn.proto.parse_text(text.replace('layer {', 'layers {').replace('"Data"', "DATA"))
    np.testing.assert_array_equal(minicnn.Net(v1, minicnn.TEST).forward()["data"][1],
                                  images[1][:, 1:5, 1:5] * np.float32(0.5))   # upgraded


def test_memory_data_in_a_net():
    text = """
    layer { name: "mem" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    net = minicnn.Net(minicnn.proto.parse_text(text), minicnn.TRAIN)
    with pytest.raises(NetError, match="layer 'mem'.*call set_input_arrays"):
        net.forward()
    net.layers[0].set_input_arrays(np.ones((4, 1, 1, 3), np.float32), np.array([0, 1, 1, 0]))
    assert net.forward()["loss"] == pytest.approx(np.log(2))      # zero weights: uniform
    assert net.blobs["label"].data.tolist() == [0, 1]


def test_a_net_finds_its_data_beside_the_prototxt(tmp_path, monkeypatch):
    make_lmdb(tmp_path / "train_lmdb", n=5)
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.chdir(tmp_path / "train_lmdb")     # a directory without the data
    net = minicnn.Net(str(tmp_path / "net.prototxt"), minicnn.TEST)
    assert np.isfinite(net.forward()["loss"])
    with pytest.raises(NetError, match="layer 'data'.*train_lmdb: data source not found"):
        minicnn.Net(str(tmp_path / "net.prototxt"), minicnn.TEST, source_dir=str(tmp_path / "x"))


# --- ImageData -----------------------------------------------------------------------------------

def make_image_list(tmp_path, n=6, size=(5, 6)):
    rng = np.random.default_rng(0)
    images = []
    lines = []
    for i in range(n):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        name = f"img {i}.png"                    # a space in the name
        Image.fromarray(rgb).save(tmp_path / name)
        images.append(rgb[:, :, ::-1].transpose(2, 0, 1))
        lines.append(f"{name} {i}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return str(tmp_path / "list.txt"), images


def test_image_data_reads_bgr_images_and_labels(tmp_path):
    source, images = make_image_list(tmp_path)
    layer = ImageDataLayer(source=source, batch_size=4)
    data, label = layer()
    assert data.shape == (4, 3, 5, 6) and label.tolist() == [0, 1, 2, 3]
    for d, i in zip(data, range(4)):
        np.testing.assert_array_equal(d, images[i])
    assert layer()[1].tolist() == [4, 5, 0, 1]                    # wraps around


def test_image_data_gray_resize_and_root_folder(tmp_path):
    sub = tmp_path / "imgs"
    sub.mkdir()
    source, _ = make_image_list(sub)
    (tmp_path / "list.txt").write_text((sub / "list.txt").read_text())
    layer = ImageDataLayer(source=str(tmp_path / "list.txt"), root_folder=str(sub) + "/",
                           is_color=False, new_height=3, new_width=4, batch_size=2)
    data, _ = layer()
    assert data.shape == (2, 1, 3, 4)
    with pytest.raises(LayerError, match="new_height and new_width"):
        ImageDataLayer(source=source, new_height=3)()


def test_images_of_several_sizes_are_each_cropped_from_their_own_size(tmp_path):
    # Caffe's DataTransformer::Transform crops each image from its own size (only the crop
    # must fit); without a crop the sizes must agree, as the batch's shape is the first one's
    rng = np.random.default_rng(1)
    images, lines = [], []
    for i, size in enumerate([(5, 6), (7, 9), (6, 5)]):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
        images.append(rgb[:, :, ::-1].transpose(2, 0, 1))
        lines.append(f"{i}.png {i}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    layer = ImageDataLayer(source=str(tmp_path / "list.txt"), batch_size=3, phase="TEST",
                           transform_param={"crop_size": 4})
    data, _ = layer()
    for got, image in zip(data, images):
        top, left = (image.shape[1] - 4) // 2, (image.shape[2] - 4) // 2
        np.testing.assert_array_equal(got, image[:, top:top + 4, left:left + 4])
    with pytest.raises(DataError, match=r"has shape \(3, 7, 9\) but the first sample of its "
                                        r"batch, image .0\.png. \(.*:1\), has \(3, 5, 6\)"):
        ImageDataLayer(source=str(tmp_path / "list.txt"), batch_size=3, phase="TEST")()
    with pytest.raises(LayerError, match=r"crop_size 6 is larger than the image \(5 x 6\)"):
        ImageDataLayer(source=str(tmp_path / "list.txt"), batch_size=3, phase="TEST",
                       transform_param={"crop_size": 6})()


def test_root_folder_is_prefixed_as_caffe_does(tmp_path):
    """Caffe reads root_folder + name, strings glued: DeepLab-style lists ("/imgs/x.png" under
    a root without its trailing slash) name files below the root, where os.path.join would
    have kept only "/imgs/x.png"; a root without its slash before a relative name gets one."""
    from minicnn.data.db import root_joined
    assert root_joined("/data/VOC", "/JPEGImages/a.jpg") == "/data/VOC/JPEGImages/a.jpg"
    assert root_joined("/data/VOC/", "JPEGImages/a.jpg") == "/data/VOC/JPEGImages/a.jpg"
    assert root_joined("/data/VOC", "JPEGImages/a.jpg") == "/data/VOC/JPEGImages/a.jpg"
    assert root_joined("", "/abs/a.jpg") == "/abs/a.jpg"
    sub = tmp_path / "imgs"
    sub.mkdir()
    make_image_list(sub)
    names = [line.rsplit(" ", 1) for line in (sub / "list.txt").read_text().splitlines()]
    (tmp_path / "list.txt").write_text("".join(f"/imgs/{name} {label}\n"
                                               for name, label in names))
    layer = ImageDataLayer(source=str(tmp_path / "list.txt"), root_folder=str(tmp_path),
                           batch_size=2)
    assert layer()[0].shape == (2, 3, 5, 6)



def test_image_data_rand_skip_starts_at_a_seeded_offset(tmp_path):
    source, _ = make_image_list(tmp_path, n=8)
    starts = set()
    for seed in range(8):
        minicnn.set_random_seed(seed)
        first = int(ImageDataLayer(source=source, batch_size=2, rand_skip=5)()[1][0])
        assert 0 <= first < 5
        starts.add(first)
    assert len(starts) > 1


def test_image_data_default_batch_size_is_one(tmp_path):
    source, _ = make_image_list(tmp_path, n=2)
    assert ImageDataLayer(source=source)()[0].shape == (1, 3, 5, 6)


def test_image_data_shuffles_anew_every_epoch(tmp_path):
    source, _ = make_image_list(tmp_path, n=6)
    layer = ImageDataLayer(source=source, batch_size=6, shuffle=True, top=["data", "label"])
    epochs = [tuple(layer()[1].astype(int)) for _ in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(6))
    assert len(set(epochs)) > 2
    # batches that straddle epochs take the end of one order and the start of the next
    minicnn.set_random_seed(9)
    a = ImageDataLayer(source=source, batch_size=4, shuffle=True)
    labels = np.concatenate([b[1] for b in collect(a, 3)]).astype(int)
    assert sorted(labels[:6]) == list(range(6)) and sorted(labels[6:]) == list(range(6))


def test_image_data_errors_name_the_list_line_and_image(tmp_path):
    source, _ = make_image_list(tmp_path, n=3)
    with open(source, "a") as f:
        f.write("img 0.png zero\n")
    with pytest.raises(DataError, match=r"list.txt:4: the label 'zero' is not an integer"):
        ImageDataLayer(source=source)()
    (tmp_path / "list.txt").write_text("img 0.png 0\nmissing.png 1\n")
    layer = ImageDataLayer(source=source, batch_size=1)
    layer()
    with pytest.raises(DataError, match=r"list.txt:2: image 'missing.png': file not found"):
        layer()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "list.txt").write_text("img 0.png 0\nbroken.png 1\n")
    layer = ImageDataLayer(source=source, batch_size=2)
    with pytest.raises(DataError, match=r"list.txt:2: image 'broken.png': cannot decode image"):
        layer()


def test_prefetch_errors_surface_in_a_net_forward(tmp_path):
    source, _ = make_image_list(tmp_path, n=4)
    net_text = f"""
    layer {{ name: "img" type: "ImageData" top: "data" top: "label"
            image_data_param {{ source: "{source}" batch_size: 2 }} }}
    """
    net = minicnn.Net(minicnn.proto.parse_text(net_text), minicnn.TRAIN)
    net.forward()
    os.unlink(tmp_path / "img 3.png")
    with pytest.raises(NetError, match=r"layer 'img'.*list.txt:4: image 'img 3.png': file "
                                       "not found"):
        for _ in range(10):               # up to 4 batches may have been read ahead before
            net.forward()                  # the unlink; later ones must meet the missing file


# --- HDF5Data ------------------------------------------------------------------------------------

def make_h5(path, rows, start=0, extra=None):
    import h5py
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(start, start + rows * 6, dtype=np.float64).reshape(rows, 2, 3)
        f["label"] = np.arange(start // 6, start // 6 + rows, dtype=np.int32)
        for name, value in (extra or {}).items():
            f[name] = value


def h5_list(tmp_path, sizes):
    names = []
    start = 0
    for k, rows in enumerate(sizes):
        make_h5(tmp_path / f"f{k}.h5", rows, start)
        names.append(f"f{k}.h5")
        start += rows * 6
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    return str(tmp_path / "list.txt")


def test_hdf5_batches_span_files_and_wrap(tmp_path):
    source = h5_list(tmp_path, [5, 3])            # relative names: found beside the list
    layer = HDF5DataLayer(source=source, batch_size=4, top=["data", "label"])
    rows = []
    for _ in range(3):
        data, label = layer()
        assert data.shape == (4, 2, 3) and label.shape == (4,) and data.dtype == np.float32
        rows += (data[:, 0, 0] // 6).astype(int).tolist()
        np.testing.assert_array_equal(label, data[:, 0, 0] / 6)
    assert rows == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]



def test_hdf5_keeps_at_most_two_files_in_memory(tmp_path):
    # the layer caches the arrays of the files it reads (a batch may span two), not every file
    # of the list: a list of large files must not end up in memory whole
    source = h5_list(tmp_path, [3, 2, 3, 2, 3])
    layer = HDF5DataLayer(source=source, batch_size=2, top=["data", "label"])
    layer.prefetch = 0                            # batches computed in the caller
    rows = []
    for _ in range(8):
        data, _ = layer()
        rows += (data[:, 0, 0] // 6).astype(int).tolist()
        assert 1 <= len(layer._cache) <= 2
    assert rows == list(range(13)) + [0, 1, 2]

def test_hdf5_shuffle_permutes_every_epoch(tmp_path):
    source = h5_list(tmp_path, [4, 4])
    layer = HDF5DataLayer(source=source, batch_size=8, shuffle=True)
    epochs = [tuple((layer()[0][:, 0, 0] // 6).astype(int)) for _ in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(8))
    assert len(set(epochs)) > 2


def test_hdf5_shuffle_reads_files_whole_in_a_new_order_every_epoch(tmp_path):
    # Caffe's HDF5Data shuffles the file list and the rows of each file: a file's rows are
    # served together, and the files come in another order from epoch to epoch
    source = h5_list(tmp_path, [2, 2, 2])
    minicnn.set_random_seed(3)
    layer = HDF5DataLayer(source=source, batch_size=6, shuffle=True)
    file_orders = set()
    for _ in range(8):
        files = (layer()[0][:, 0, 0] // 6).astype(int) // 2
        assert files[0] == files[1] and files[2] == files[3] and files[4] == files[5]
        file_orders.add(tuple(files[::2]))
    assert len(file_orders) > 1


def test_hdf5_restore_continues_exactly(tmp_path):
    source = h5_list(tmp_path, [5, 3])
    a = HDF5DataLayer(source=source, batch_size=3, shuffle=True)
    collect(a, 2)
    state = a.data_state()
    expected = collect(a, 4)
    b = HDF5DataLayer(source=source, batch_size=3, shuffle=True)
    b.restore_data_state(state)
    assert_same_batches(collect(b, 4), expected)


def test_hdf5_errors_name_the_file_and_datasets(tmp_path):
    make_h5(tmp_path / "bad.h5", 4)
    import h5py
    with h5py.File(tmp_path / "bad.h5", "a") as f:
        del f["label"]
        f["label"] = np.zeros(3)
    (tmp_path / "list.txt").write_text(str(tmp_path / "bad.h5") + "\n")
    with pytest.raises(DataError, match=r"bad.h5: the datasets must have the same number of "
                                        r"rows \(first dimension\): 'data' 4, 'label' 3"):
        HDF5DataLayer(source=str(tmp_path / "list.txt"), batch_size=2)()
    with pytest.raises(DataError, match="bad.h5: has no dataset 'target'"):
        HDF5DataLayer(source=str(tmp_path / "list.txt"), batch_size=2,
                      top=["data", "target"])()
    (tmp_path / "list.txt").write_text("nope.h5\n")
    with pytest.raises(DataError, match=r"list.txt:1: HDF5 file 'nope.h5': file not found"):
        HDF5DataLayer(source=str(tmp_path / "list.txt"), batch_size=2)()
    make_h5(tmp_path / "a.h5", 2)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["data"] = np.zeros((2, 3, 3))
        f["label"] = np.zeros(2)
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")
    with pytest.raises(DataError, match=r"b.h5: dataset 'data' has rows of shape \(3, 3\)"):
        HDF5DataLayer(source=str(tmp_path / "list.txt"), batch_size=2)()


# --- DummyData -----------------------------------------------------------------------------------

def test_dummy_data_refills_random_tops_every_forward_and_constant_ones_once():
    text = '''layer { name: "d" type: "DummyData" top: "a" top: "b"
      dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
        data_filler { type: "gaussian" } data_filler { type: "constant" value: 5 } } }'''
    net = minicnn.Net(minicnn.proto.parse_text(text), minicnn.TEST)
    assert net.blobs["a"].shape == (2, 3) and net.blobs["b"].shape == (4,)
    net.forward()
    first = net.blobs["a"].data.copy()
    net.blobs["b"].data[...] = 1                   # Caffe fills a constant top at setup only
    net.forward()
    assert not np.array_equal(net.blobs["a"].data, first)
    np.testing.assert_array_equal(net.blobs["b"].data, 1)


def _encoded_lmdb(path, files):
    """An LMDB of encoded Datum records (image file bytes), labels 0, 1, ..."""
    from minicnn.proto import caffe_pb2, serialize
    with LMDBWriter(str(path)) as w:
        for i, data in enumerate(files):
            w.put(f"{i:08d}", serialize(caffe_pb2.Datum(data=data, label=i, encoded=True)))


def _random_pngs(seed, shapes):
    """PNG file bytes of random uint8 images of the given (H, W) or (H, W, C) shapes."""
    import io
    rng = np.random.default_rng(seed)
    files = []
    for shape in shapes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, "PNG")
        files.append(buf.getvalue())
    return files


@pytest.mark.parametrize("opencv", [True, False])
def test_encoded_records_decode_natively_as_caffes_data_transformer(tmp_path, monkeypatch,
                                                                      opencv):
    """Without force_color / force_gray Caffe's DataTransformer decodes an encoded Datum with
    DecodeDatumToCVMatNative (cv::imdecode IMREAD_UNCHANGED): an RGBA PNG gives 4 channels
    (B, G, R, A), an EXIF-rotated JPEG stays as stored (boxes of an SSD record refer to that),
    a 16-bit PNG stops it; force_color gives 3 channels, the EXIF orientation applied."""
    import io
    cv2 = pytest.importorskip("cv2")
    from minicnn.data import datum
    monkeypatch.setattr(datum, "_opencv", lambda: cv2 if opencv else None)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    png, jpg, exif = io.BytesIO(), io.BytesIO(), Image.Exif()
    Image.fromarray(rgba).save(png, "PNG")
    exif[0x0112] = 6                                             # rotate 90 degrees to view
    Image.fromarray(rgba[:, :, :3]).save(jpg, "JPEG", quality=95, exif=exif.tobytes())
    _encoded_lmdb(tmp_path / "rgba", [png.getvalue()] * 2)
    data, label = DataLayer(source=str(tmp_path / "rgba"), batch_size=2, backend="LMDB")()
    assert data.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(data[0], rgba[:, :, [2, 1, 0, 3]].transpose(2, 0, 1))
    data, _ = DataLayer(source=str(tmp_path / "rgba"), batch_size=2, backend="LMDB",
                        transform_param={"force_color": True})()
    np.testing.assert_array_equal(data[0], rgba[:, :, [2, 1, 0]].transpose(2, 0, 1))
    _encoded_lmdb(tmp_path / "jpg", [jpg.getvalue()] * 2)
    data, _ = DataLayer(source=str(tmp_path / "jpg"), batch_size=2, backend="LMDB")()
    assert data.shape == (2, 3, 5, 6)
    stored = cv2.imdecode(np.frombuffer(jpg.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(data[1], stored.transpose(2, 0, 1))
    data, _ = DataLayer(source=str(tmp_path / "jpg"), batch_size=2, backend="LMDB",
                        transform_param={"force_color": True})()
    assert data.shape == (2, 3, 6, 5)
    _encoded_lmdb(tmp_path / "deep", [cv2.imencode(".png", np.full((3, 4), 999, np.uint16))[1]
                                      .tobytes()])
    with pytest.raises(DataError, match=r"deep record '00000000'.*16 bits.*force_color"):
        DataLayer(source=str(tmp_path / "deep"), batch_size=1, backend="LMDB")()
    data, _ = DataLayer(source=str(tmp_path / "deep"), batch_size=1, backend="LMDB",
                        transform_param={"force_gray": True})()
    assert (data == 3).all()                                    # 999 >> 8


def test_an_encoded_rgba_record_is_resized_by_resize_param_as_opencv(tmp_path):
    """The fork's resize_param resizes an encoded record as decoded (cv::resize, any channel
    count): an RGBA PNG's 4 channels too (resize_image refused them)."""
    import io
    cv2 = pytest.importorskip("cv2")
    rgba = np.random.default_rng(2).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(rgba).save(png, "PNG")
    _encoded_lmdb(tmp_path / "db", [png.getvalue()])
    data, _ = DataLayer(source=str(tmp_path / "db"), batch_size=1, backend="LMDB",
                        transform_param={"resize_param": {"height": 8, "width": 7,
                                                          "resize_mode": "WARP"}})()
    want = cv2.resize(rgba[:, :, [2, 1, 0, 3]], (7, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(data[0], want.transpose(2, 0, 1))


@pytest.mark.parametrize("transform", [{}, {"crop_size": 4}])
def test_records_of_other_channel_counts_in_one_batch_name_force_color(tmp_path, transform):
    """An RGB PNG and an RGBA one in one batch: natively decoded they have 3 and 4 channels;
    the error said to resize or crop them (and, with only a crop, 'after resize_param'), where
    force_color is what makes them one shape."""
    files = _random_pngs(5, [(6, 6, c) for c in (3, 4)])
    _encoded_lmdb(tmp_path / "db", files)
    with pytest.raises(DataError) as e:
        DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB",
                  transform_param=transform)()
    message = str(e.value)
    assert "record '00000001'" in message and "(4, " in message and "(3, " in message
    assert "force_color" in message and "resize_param" not in message
    data, _ = DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB",
                        transform_param=dict(transform, force_color=True))()
    assert data.shape[:2] == (2, 3)


@pytest.mark.parametrize("transform", [{"crop_size": 4, "mean_value": [104, 117, 123]},
                                       {"crop_size": 4, "mean_value": [117]},
                                       {"mean_value": [104, 117, 123]}])
def test_a_gray_record_among_colour_ones_names_force_color_whatever_the_mean(tmp_path,
                                                                              transform):
    """A gray PNG among colour ones in an encoded LMDB (convert-imageset --encoded keeps the
    file): with a crop and three mean values the error was 'layer Data: 3 mean_value values
    for data with 1 channels', naming neither the record nor force_color (Caffe's Transform
    checks the channels before the mean: CHECK_EQ(channels, img_channels))."""
    files = _random_pngs(6, ((6, 6, 3), (6, 6), (6, 6, 3)))
    _encoded_lmdb(tmp_path / "db", files)
    with pytest.raises(DataError) as e:
        DataLayer(source=str(tmp_path / "db"), batch_size=3, backend="LMDB",
                  transform_param=transform)()
    message = str(e.value)
    assert "record '00000001'" in message and "(1, " in message and "force_color" in message
    assert "batch, record '00000000'" in message          # the first sample, which it differs from
    data, _ = DataLayer(source=str(tmp_path / "db"), batch_size=3, backend="LMDB",
                        transform_param=dict(transform, force_color=True))()
    assert data.shape[:2] == (3, 3)


def test_a_batch_of_gray_records_after_colour_ones_warns_with_force_color(tmp_path):
    """A batch of natively decoded gray records where the first record (which shaped the
    net) was colour: the batch is 1-channel, as in Caffe (its Data layer reshapes the top by
    each batch's first record), and the next layer's error named only the shapes; a warning
    now names the record and force_color, once."""
    import warnings
    files = _random_pngs(7, ((6, 6, 3), (6, 6), (6, 6), (6, 6, 4)))
    _encoded_lmdb(tmp_path / "db", files)
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=1, backend="LMDB",
                      transform_param={"mean_value": [117]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert layer()[0].shape == (1, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"record '00000001'.* 1 channel.* 3.*force_color"):
        assert layer()[0].shape == (1, 1, 6, 6)          # Caffe's shape: reshaped per batch
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # once
        assert layer()[0].shape == (1, 1, 6, 6)
        assert layer()[0].shape == (1, 4, 6, 6)
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=1, backend="LMDB",
                      transform_param={"mean_value": [117], "force_color": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [layer()[0].shape[1] for _ in range(4)] == [3, 3, 3, 3]


def test_a_gray_record_in_a_batch_of_its_own_names_force_color_with_three_mean_values(tmp_path):
    """batch_size 1: the gray PNG shapes its own batch, so no same-size check meets it, and
    the mean check said only '3 mean_value values for data with 1 channels' (Caffe's CHECK:
    'Specify either 1 mean_value or as many as channels: 1')."""
    files = _random_pngs(8, ((6, 6, 3), (6, 6)))
    _encoded_lmdb(tmp_path / "db", files)
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=1, backend="LMDB", prefetch=0,
                      transform_param={"mean_value": [104, 117, 123]})
    assert layer()[0].shape == (1, 3, 6, 6)
    with pytest.raises(DataError, match=r"record '00000001' of .* decodes to 1 channel\(s\), "
                                        r"which 3 mean_value values do not fit.*force_color"):
        layer()


def test_the_warning_names_the_record_that_shapes_its_batch(tmp_path):
    """A batch of two gray records after a colour batch: the warning names the batch's first
    record, by which Caffe shapes it."""
    files = _random_pngs(9, ((6, 6, 3), (6, 6, 3), (6, 6), (6, 6)))
    _encoded_lmdb(tmp_path / "db", files)
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB", prefetch=0)
    assert layer()[0].shape == (2, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"record '00000002' of .* decodes to 1 channel"):
        assert layer()[0].shape == (2, 1, 6, 6)


def test_mean_values_that_do_not_fit_other_records_say_so_without_the_native_decode(tmp_path):
    """The mean checks name the native decode only where it is the cause: a raw 1-channel
    record after a colour one and an encoded record with force_gray keep their own errors (no
    'force_color', which changes nothing there); a colour mean file against a natively decoded
    gray record names the record and force_color, as mean_value's case does."""
    from minicnn.data.datum import serialize_datum
    from minicnn.proto import caffe_pb2, write_binary
    three = {"mean_value": [104, 117, 123]}
    with LMDBWriter(str(tmp_path / "raw")) as w:
        w.put("00000000", serialize_datum(np.zeros((3, 6, 6), np.uint8), 0))
        w.put("00000001", serialize_datum(np.zeros((1, 6, 6), np.uint8), 1))
    layer = DataLayer(source=str(tmp_path / "raw"), batch_size=1, backend="LMDB", prefetch=0,
                      transform_param=three)
    layer()
    with pytest.raises(LayerError, match="3 mean_value values for data with 1 channels") as e:
        layer()
    assert "force_color" not in str(e.value)
    with LMDBWriter(str(tmp_path / "mixed")) as w:     # a raw colour record, an encoded one
        w.put("00000000", serialize_datum(np.zeros((3, 6, 6), np.uint8), 0))
        w.put("00000001", caffe_pb2.Datum(data=_random_pngs(10, [(6, 6, 3)])[0], label=1,
                                          encoded=True).SerializeToString())
    layer = DataLayer(source=str(tmp_path / "mixed"), batch_size=1, backend="LMDB", prefetch=0,
                      transform_param=dict(three, force_gray=True))
    layer()
    with pytest.raises(LayerError, match="3 mean_value values for data with 1 channels") as e:
        layer()                                         # force_gray made it 1 channel
    assert "decodes to its file's own channels" not in str(e.value)
    _encoded_lmdb(tmp_path / "enc", _random_pngs(10, ((6, 6, 3), (6, 6))))
    mean = caffe_pb2.BlobProto(num=1, channels=3, height=6, width=6)
    mean.data = np.zeros(108, np.float32)
    write_binary(mean, str(tmp_path / "mean.binaryproto"))
    layer = DataLayer(source=str(tmp_path / "enc"), batch_size=1, backend="LMDB", prefetch=0,
                      transform_param={"mean_file": str(tmp_path / "mean.binaryproto")})
    layer()
    with pytest.raises(DataError, match=r"record '00000001' .* decodes to 1 channel\(s\) but "
                                        r"the mean file .*mean.binaryproto has 3: .*force_color"):
        layer()                                         # named as mean_value's case is
