"""pycaffe's remaining API: caffe.io's proto conversions, caffe.Classifier, forward_backward_all,
save_hdf5 / load_hdf5 in Caffe's layout, _forward / _backward by index, _blob_names and
Solver.add_callback. Each is checked against the same steps done by hand."""

import h5py
import numpy as np
import pytest

import minicnn
from minicnn import io
from minicnn.errors import MinicnnError, NetError
from minicnn.proto import caffe_pb2, parse_binary, parse_text, serialize, write_prototxt

RNG = np.random.default_rng(7)


# --- caffe.io: BlobProto, BlobProtoVector, Datum ---------------------------------------------

def test_array_blobproto_bytes_round_trip_is_exact():
    arrays = [RNG.standard_normal((2, 3, 4, 5)).astype(np.float32),
              RNG.standard_normal((7,)), np.arange(6, dtype=np.uint8).reshape(2, 3)]
    for arr in arrays:
        proto = io.array_to_blobproto(arr, diff=2 * arr)
        assert tuple(proto.shape.dim) == arr.shape and not proto.HasField("num")
        assert len(proto.data) == arr.size and not len(proto.double_data)   # float32 data
        back = parse_binary(serialize(proto), "BlobProto")
        got = io.blobproto_to_array(back)
        assert got.dtype == np.float64 and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr.astype(np.float32))
        np.testing.assert_array_equal(io.blobproto_to_array(back, return_diff=True),
                                      (2 * arr).astype(np.float32))
    with pytest.raises(ValueError, match=r"diff of shape \(3,\) for an array of shape \(2,\)"):
        io.array_to_blobproto(np.zeros(2), diff=np.zeros(3))


def test_blobproto_to_array_reads_legacy_four_field_blobs():
    values = np.arange(24, dtype=np.float32)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4, data=values)
    legacy = parse_binary(serialize(legacy), "BlobProto")
    np.testing.assert_array_equal(io.blobproto_to_array(legacy), values.reshape(1, 2, 3, 4))
    one_field = caffe_pb2.BlobProto(channels=24, data=values)    # the others read as 0 ...
    with pytest.raises(MinicnnError, match="expected 0"):        # ... as Caffe's num() does
        io.blobproto_to_array(one_field)
    no_diff = caffe_pb2.BlobProto(shape={"dim": [24]}, data=values)
    with pytest.raises(MinicnnError, match="0 diff values, expected 24"):
        io.blobproto_to_array(no_diff, return_diff=True)


def test_blobprotovector_string_round_trip():
    arrays = [RNG.standard_normal((3, 2)).astype(np.float32), np.ones((1, 3, 2, 2), np.float32)]
    text = io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(text, bytes)
    vec = parse_binary(text, "BlobProtoVector")
    assert [tuple(b.shape.dim) for b in vec.blobs] == [(3, 2), (1, 3, 2, 2)]
    back = io.blobprotovector_str_to_arraylist(text)
    assert len(back) == 2
    for got, want in zip(back, arrays):
        np.testing.assert_array_equal(got, want)


def test_datum_round_trips_uint8_as_bytes_and_floats_as_float_data():
    pixels = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == pixels.tobytes() and not len(datum.float_data)
    back = io.datum_to_array(parse_binary(serialize(datum), "Datum"))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)

    values = RNG.standard_normal((2, 3, 1)).astype(np.float32)
    datum = io.array_to_datum(values)
    assert not datum.HasField("label") and not datum.data and len(datum.float_data) == 6
    back = io.datum_to_array(parse_binary(serialize(datum), "Datum"))
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, values)
    for bad in (np.zeros((4, 5), np.uint8), np.zeros((1, 2, 3, 4))):
        with pytest.raises(ValueError, match=rf"C x H x W .*{bad.shape}"):
            io.array_to_datum(bad)


# --- nets ------------------------------------------------------------------------------------

def small_net_param(batch=3, height=6, width=6, outputs=5, force_backward=False):
    return parse_text(f"""
        name: "small" force_backward: {str(force_backward).lower()}
        layer {{ name: "data" type: "Input" top: "data"
                 input_param {{ shape {{ dim: {batch} dim: 3 dim: {height} dim: {width} }} }} }}
        layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
                 convolution_param {{ num_output: 4 kernel_size: 3
                   weight_filler {{ type: "gaussian" std: 0.3 }}
                   bias_filler {{ type: "gaussian" std: 0.3 }} }} }}
        layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
                 inner_product_param {{ num_output: {outputs}
                   weight_filler {{ type: "gaussian" std: 0.3 }}
                   bias_filler {{ type: "gaussian" std: 0.3 }} }} }}
        layer {{ name: "prob" type: "Softmax" bottom: "ip" top: "prob" }}
        """, "NetParameter")


def randomize(net, seed):
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.shape)


@pytest.fixture
def saved_model(tmp_path):
    """A deploy prototxt and a .caffemodel with random weights."""
    net = minicnn.Net(small_net_param(), minicnn.TEST)
    randomize(net, 1)
    write_prototxt(small_net_param(), tmp_path / "deploy.prototxt")
    net.save(tmp_path / "weights.caffemodel")
    return tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel"


def by_hand(model, weights, images, image_dims, oversample, mean=None, raw_scale=None,
            channel_swap=None):
    """classifier.py's steps written out: resize, crops by index, Transformer, net.forward."""
    net = minicnn.Net(model, weights, minicnn.TEST)
    t = io.Transformer({"data": net.blobs["data"].shape})
    t.set_transpose("data", (2, 0, 1))
    if mean is not None:
        t.set_mean("data", mean)
    if raw_scale is not None:
        t.set_raw_scale("data", raw_scale)
    if channel_swap is not None:
        t.set_channel_swap("data", channel_swap)
    (h, w), (ch, cw) = image_dims, (6, 6)
    results = []
    for image in images:
        image = io.resize_image(image, (h, w))
        top, left = (h - ch) // 2, (w - cw) // 2
        if oversample:
            corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (top, left)]
            crops = [image[y:y + ch, x:x + cw] for y, x in corners]
            crops += [c[:, ::-1] for c in crops]
        else:
            crops = [image[top:top + ch, left:left + cw]]
        probs = []
        for crop in crops:                    # one crop at a time, in a batch of 3
            batch = np.zeros((3, 3, 6, 6), np.float32)
            batch[0] = t.preprocess("data", crop)
            probs.append(net.forward(data=batch)["prob"][0].copy())
        results.append(np.mean(probs, axis=0))
    return np.array(results)


@pytest.mark.parametrize("oversample, image_dims, options", [
    (True, (8, 9), {}),
    (False, (8, 9), {"channel_swap": (2, 1, 0), "raw_scale": 255.0,
                     "mean": np.array([100.0, 120.0, 90.0])}),
    (True, (7, 10), {"channel_swap": (2, 1, 0), "raw_scale": 255.0,
                     "mean": np.array([100.0, 120.0, 90.0])}),
    (False, None, {"raw_scale": 2.0}),
])
def test_classifier_predicts_as_the_steps_done_by_hand(saved_model, oversample, image_dims,
                                                      options):
    model, weights = saved_model
    images = [RNG.random((9, 11, 3)).astype(np.float32), RNG.random((12, 7, 3)),
              RNG.random((6, 6, 3)).astype(np.float32)]
    clf = minicnn.Classifier(str(model), str(weights), image_dims=image_dims, **options)
    assert isinstance(clf, minicnn.Net) and clf.phase == minicnn.TEST
    got = clf.predict(images, oversample=oversample)
    want = by_hand(model, weights, images, image_dims or (6, 6), oversample, **options)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)


def test_classifier_refuses_image_dims_smaller_than_the_input(saved_model):
    with pytest.raises(MinicnnError, match=r"image_dims \(5, 8\) .* \(6, 6\)"):
        minicnn.Classifier(*map(str, saved_model), image_dims=(5, 8))


def test_classifier_feeds_the_first_input_reads_the_first_output_and_takes_gray_images(
        saved_model, tmp_path):
    """pycaffe's Classifier: images feed net.inputs[0], predictions are net.outputs[0]'s; the
    input's H x W (not W x H) is the default image_dims; a 2-D image is one channel."""
    model, weights = saved_model
    text = model.read_text() + """
        layer { name: "aux" type: "Input" top: "aux"
                input_param { shape { dim: 3 dim: 2 } } }
        layer { name: "zz" type: "Power" bottom: "aux" top: "zz" } """
    (tmp_path / "two.prototxt").write_text(text)
    clf = minicnn.Classifier(str(tmp_path / "two.prototxt"), str(weights))
    assert clf.inputs == ["data", "aux"] and clf.outputs == ["prob", "zz"]    # sorted, as Caffe
    images = [RNG.random((9, 11, 3)).astype(np.float32)]
    want = by_hand(model, weights, images, (6, 6), True)
    np.testing.assert_allclose(clf.predict(images), want, rtol=1e-5, atol=1e-6)

    wide = small_net_param(height=6, width=8)
    wide.layer[0].input_param.shape[0].dim[1] = 1                       # a gray net
    net = minicnn.Net(wide, minicnn.TEST)
    randomize(net, 1)
    write_prototxt(wide, tmp_path / "wide.prototxt")
    net.save(tmp_path / "wide.caffemodel")
    clf = minicnn.Classifier(str(tmp_path / "wide.prototxt"), str(tmp_path / "wide.caffemodel"))
    assert tuple(clf.image_dims) == (6, 8)
    gray = RNG.random((7, 9)).astype(np.float32)
    got = clf.predict([gray], oversample=False)
    batch = np.zeros((3, 1, 6, 8), np.float32)
    batch[0] = io.resize_image(gray[:, :, None], (6, 8)).transpose(2, 0, 1)
    np.testing.assert_allclose(got[0], net.forward(data=batch)["prob"][0], rtol=1e-5, atol=1e-6)


def test_forward_backward_all_matches_forward_and_backward_by_batch():
    net = minicnn.Net(small_net_param(batch=2, force_backward=True), minicnn.TEST)
    randomize(net, 2)
    x = RNG.standard_normal((5, 3, 6, 6)).astype(np.float32)        # 3 batches, the last padded
    top = RNG.standard_normal((5, 5)).astype(np.float32)
    outs, diffs = net.forward_backward_all(blobs=["conv"], diffs=["conv"], data=x, prob=top)
    assert sorted(outs) == ["conv", "prob"] and sorted(diffs) == ["conv", "data"]
    want = {"prob": [], "conv": [], "data": [], "conv_diff": []}
    for start in (0, 2, 4):
        xb, tb = np.zeros((2, 3, 6, 6), np.float32), np.zeros((2, 5), np.float32)
        n = len(x[start:start + 2])
        xb[:n], tb[:n] = x[start:start + 2], top[start:start + 2]
        out = net.forward(data=xb)
        want["prob"].append(out["prob"][:n].copy())
        want["conv"].append(net.blobs["conv"].data[:n].copy())
        grads = net.backward(prob=tb)
        want["data"].append(grads["data"][:n].copy())
        want["conv_diff"].append(net.blobs["conv"].diff[:n].copy())
    for name, got in [("prob", outs["prob"]), ("conv", outs["conv"]),
                      ("data", diffs["data"]), ("conv_diff", diffs["conv"])]:
        assert got.shape[0] == 5, name
        np.testing.assert_array_equal(got, np.concatenate(want[name]), err_msg=name)
    assert np.any(diffs["data"] != 0)
    with pytest.raises(NetError, match="'ip_typo'|ip_typo is neither"):
        net.forward_backward_all(data=x, ip_typo=top)
    with pytest.raises(NetError, match="data 5, prob 4"):
        net.forward_backward_all(data=x, prob=top[:4])


def test_batch_splits_arrays_in_the_nets_batch_size_padding_the_last():
    """pycaffe's Net._batch(blobs): a generator of {name: batch} dicts, the last zero-padded."""
    net = minicnn.Net(small_net_param(batch=2), minicnn.TEST)
    x = RNG.standard_normal((5, 3, 6, 6)).astype(np.float32)
    batches = list(net._batch({"data": x}))
    assert [sorted(b) for b in batches] == [["data"]] * 3
    assert all(b["data"].shape == (2, 3, 6, 6) for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["data"] for b in batches])[:5], x)
    assert not batches[-1]["data"][1].any()


def test_forward_backward_all_starts_loss_tops_from_their_loss_weight():
    param = small_net_param(batch=2)
    param.layer.append(caffe_pb2.LayerParameter(name="loss", type="EuclideanLoss",
                                                bottom=["prob", "label"], top=["loss"],
                                                loss_weight=[2.0]))
    param.layer.insert(1, caffe_pb2.LayerParameter(
        name="label", type="Input", top=["label"],
        input_param={"shape": [{"dim": [2, 5]}]}))
    net = minicnn.Net(param, minicnn.TRAIN)
    x = RNG.standard_normal((4, 3, 6, 6)).astype(np.float32)
    labels = RNG.random((4, 5)).astype(np.float32)
    outs, diffs = net.forward_backward_all(diffs=["ip"], data=x, label=labels)
    assert outs["loss"].shape == (2,)                      # a loss: one value per batch
    for k in (0, 2):
        loss = net.forward(data=x[k:k + 2], label=labels[k:k + 2])["loss"]
        net.backward()
        np.testing.assert_array_equal(diffs["ip"][k:k + 2], net.blobs["ip"].diff)
        assert outs["loss"][k // 2] == loss
    assert np.any(diffs["ip"] != 0)


def test_forward_and_backward_by_layer_index():
    net = minicnn.Net(small_net_param(force_backward=True), minicnn.TEST)
    assert net._blob_names == ["data", "conv", "ip", "prob"] == list(net.blobs)
    assert net._blobs[2] is net.blobs["ip"]
    assert net._inputs == [0] and net._outputs == [3]              # pycaffe's index lists
    for i, name in enumerate(net.layer_names):
        assert [net._blob_names[j] for j in net._bottom_ids(i)] == net.bottom_names[name]
        assert [net._blob_names[j] for j in net._top_ids(i)] == net.top_names[name]
    assert net._blob_loss_weights == [0.0] * 4                      # no loss in this net
    x = RNG.standard_normal((3, 3, 6, 6)).astype(np.float32)
    g = RNG.standard_normal((3, 5)).astype(np.float32)
    want = net.forward(data=x)["prob"].copy()
    want_dx = net.backward(prob=g)["data"].copy()
    net.blobs["prob"].data[...] = 0
    net.blobs["data"].diff[...] = 0
    net._forward(0, 1)                          # data, conv (+ in-place ReLU is layer 2)
    assert np.all(net.blobs["prob"].data == 0)
    net._forward(2, len(net.layers) - 1)
    np.testing.assert_array_equal(net.blobs["prob"].data, want)
    net.blobs["prob"].diff[...] = g
    net._backward(len(net.layers) - 1, 0)
    np.testing.assert_array_equal(net.blobs["data"].diff, want_dx)
    for call in (lambda: net._forward(2, 1), lambda: net._forward(0, 5),
                 lambda: net._backward(1, 2), lambda: net._backward(0, -1)):
        with pytest.raises(NetError, match="layer indices need"):
            call()


def test_backward_by_layer_index_starts_loss_tops_from_their_loss_weight():
    param = small_net_param()
    param.layer.append(caffe_pb2.LayerParameter(name="loss", type="EuclideanLoss",
                                                bottom=["prob", "label"], top=["loss"],
                                                loss_weight=[3.0]))
    param.layer.insert(1, caffe_pb2.LayerParameter(
        name="label", type="Input", top=["label"], input_param={"shape": [{"dim": [3, 5]}]}))
    net = minicnn.Net(param, minicnn.TRAIN)
    x = RNG.standard_normal((3, 3, 6, 6)).astype(np.float32)
    label = RNG.random((3, 5)).astype(np.float32)
    loss = net.forward(data=x, label=label)["loss"]
    net.backward()
    want = {n: net.blobs[n].diff.copy() for n in ("ip", "conv")}
    names = net.layer_names
    net.blobs["loss"].diff[...] = 0
    net.blobs["conv"].diff[...] = 7
    assert net._forward(0, len(names) - 1) == pytest.approx(3 * loss)
    net._backward(len(names) - 1, names.index("prob"))   # down to the softmax only
    np.testing.assert_array_equal(net.blobs["ip"].diff, want["ip"])
    assert np.all(net.blobs["conv"].diff == 7)
    net._backward(names.index("ip"), names.index("relu"))  # both ends included
    np.testing.assert_array_equal(net.blobs["conv"].diff, want["conv"])


# --- HDF5 weights ----------------------------------------------------------------------------

SHARED = """
name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "a"
        param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" }
                              bias_filler { type: "gaussian" } } }
layer { name: "fc2" type: "InnerProduct" bottom: "a" top: "b"
        param { name: "w" } param { name: "b2" }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" }
                              bias_filler { type: "gaussian" } } }
layer { name: "out" type: "InnerProduct" bottom: "b" top: "out"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" }
                              bias_filler { type: "gaussian" } } }
"""


def params_of(net):
    return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def test_save_hdf5_writes_caffes_layout_and_load_hdf5_restores_it_exactly(tmp_path):
    net = minicnn.Net(parse_text(SHARED, "NetParameter"), minicnn.TEST)
    randomize(net, 3)
    for blobs in net.params.values():
        for blob in blobs:
            blob.diff[...] = RNG.standard_normal(blob.shape)
    net.save_hdf5(tmp_path / "w.h5")
    net.save_hdf5(tmp_path / "wd.h5", write_diff=True)
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert list(f) == ["data"]
        assert set(f["data"]) == {"data", "fc1", "fc2", "out"}
        assert set(f["data/data"]) == set()
        assert set(f["data/fc1"]) == {"0", "1"} and set(f["data/out"]) == {"0", "1"}
        assert set(f["data/fc2"]) == {"1"}                # its weights are fc1's
        assert f["data/fc1/0"].dtype == np.float32 and f["data/fc1/0"].shape == (4, 4)
        np.testing.assert_array_equal(f["data/out/0"][()], net.params["out"][0].data)
    with h5py.File(tmp_path / "wd.h5", "r") as f:
        assert set(f) == {"data", "diff"} and set(f["diff/fc2"]) == {"0", "1"}
        np.testing.assert_array_equal(f["diff/fc2/1"][()], net.params["fc2"][1].diff)

    other = minicnn.Net(parse_text(SHARED, "NetParameter"), minicnn.TEST)
    randomize(other, 4)
    other.load_hdf5(tmp_path / "w.h5")
    want, got = params_of(net), params_of(other)
    for name in want:
        for a, b in zip(want[name], got[name]):
            assert a.tobytes() == b.tobytes(), name
    np.testing.assert_array_equal(other.params["fc2"][0].data, other.params["fc1"][0].data)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(other.forward(data=x)["out"], net.forward(data=x)["out"])


def test_load_hdf5_ignores_other_layers_and_keeps_the_ones_it_lacks(tmp_path):
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_dataset("data/out/0", data=np.full((3, 4), 0.5, np.float64))
        f.create_dataset("data/out/1", data=np.arange(3.0))
        f.create_dataset("data/elsewhere/0", data=np.zeros((9, 9)))
    net = minicnn.Net(parse_text(SHARED, "NetParameter"), minicnn.TEST)
    before = params_of(net)
    net.load_hdf5(tmp_path / "w.h5")
    np.testing.assert_array_equal(net.params["out"][0].data, np.full((3, 4), 0.5))
    np.testing.assert_array_equal(net.params["out"][1].data, [0, 1, 2])
    np.testing.assert_array_equal(net.params["fc1"][0].data, before["fc1"][0])


def replace(f, path, values):
    del f[path]
    f.create_dataset(path, data=values)


@pytest.mark.parametrize("spoil, message", [
    (lambda f: replace(f, "data/out/0", np.zeros((3, 5))),
     r"param 0 of layer 'out': shape mismatch, the file has \(3, 5\) but the net wants \(3, 4\)"),
    (lambda f: replace(f, "data/out/0", np.zeros((4, 3))),
     r"param 0 of layer 'out': shape mismatch, the file has \(4, 3\) but the net wants \(3, 4\)"),
    (lambda f: f.create_dataset("data/out/2", data=np.zeros(3)),
     r"layer 'out' has datasets 0, 1, 2 there but 2 blob\(s\) here \(InnerProduct\)"),
    (lambda f: f["data/fc1"].__delitem__("0"),
     r"layer 'fc1' has no dataset '0' for its param 0 of shape \(4, 4\)"),
    (lambda f: replace(f, "data/out/1", np.arange(3)), r"param 1 of layer 'out' is int64"),
    (lambda f: f.__delitem__("data"), r"no group 'data'"),
])
def test_load_hdf5_errors_name_the_layer_and_change_nothing(tmp_path, spoil, message):
    net = minicnn.Net(parse_text(SHARED, "NetParameter"), minicnn.TEST)
    randomize(net, 5)
    net.save_hdf5(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        spoil(f)
    target = minicnn.Net(parse_text(SHARED, "NetParameter"), minicnn.TEST)
    randomize(target, 6)
    before = params_of(target)
    with pytest.raises(NetError, match=message):
        target.load_hdf5(tmp_path / "w.h5")
    after = params_of(target)
    for name in before:                       # fc1 comes before the spoiled layer: not copied
        for a, b in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_load_hdf5_of_a_file_that_is_not_hdf5_names_it(tmp_path):
    (tmp_path / "w.caffemodel").write_bytes(b"not hdf5")
    net = minicnn.Net(parse_text(SHARED, "NetParameter"), minicnn.TEST)
    with pytest.raises(NetError, match=r"w\.caffemodel: cannot read HDF5 weights"):
        net.load_hdf5(tmp_path / "w.caffemodel")


def test_save_hdf5_keeps_slashed_layer_names_and_float64_nets(tmp_path):
    text = SHARED.replace('"fc1"', '"block/fc1"').replace('"out"', '"block/out"')
    net = minicnn.Net(parse_text(text, "NetParameter"), minicnn.TEST, dtype=np.float64)
    randomize(net, 8)
    net.save_hdf5(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert f["data/block/out/0"].dtype == np.float64
    other = minicnn.Net(parse_text(text, "NetParameter"), minicnn.TEST, dtype=np.float64)
    other.load_hdf5(tmp_path / "w.h5")
    for name, blobs in net.params.items():
        for a, b in zip(blobs, other.params[name]):
            assert a.data.tobytes() == b.data.tobytes(), name


# --- Solver.add_callback -----------------------------------------------------------------------

LINEAR = """
name: "linear"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def test_solver_callbacks_run_at_the_start_and_before_the_update():
    param = caffe_pb2.SolverParameter(net_param=parse_text(LINEAR, "NetParameter"), base_lr=0.1,
                                      lr_policy="fixed", max_iter=10, momentum=0.0)
    solver = minicnn.SGDSolver(param, log=lambda message: None)
    solver.net.blobs["x"].data[...] = RNG.standard_normal((4, 3))
    solver.net.blobs["t"].data[...] = RNG.standard_normal((4, 2))
    w = solver.net.params["fc"][0]
    events = []

    def on_start():
        events.append(("start", solver.iter, w.data.copy(), w.diff.copy()))

    def on_gradients_ready():
        events.append(("ready", solver.iter, w.data.copy(), w.diff.copy()))
        if solver.iter == 1:                    # the update uses the diffs as left here
            for blob in solver.net.learnable_params:
                blob.diff[...] = 0

    solver.add_callback(on_start, on_gradients_ready)
    start = w.data.copy()
    solver.step(1)
    assert [e[:2] for e in events] == [("start", 0), ("ready", 0)]
    assert not np.any(events[0][3]) and np.any(events[1][3])    # diffs cleared, then computed
    np.testing.assert_array_equal(events[1][2], start)            # not updated yet
    after_one = w.data.copy()
    np.testing.assert_allclose(after_one, start - 0.1 * events[1][3], rtol=1e-6)
    solver.step(1)
    assert [e[:2] for e in events[2:]] == [("start", 1), ("ready", 1)]
    np.testing.assert_array_equal(w.data, after_one)      # zeroed diffs: no change


def test_reading_datums_as_pycaffe_scripts_do(tmp_path):
    """The usual loop over an LMDB in pycaffe scripts: caffe.io.caffe_pb2.Datum() (pycaffe's
    io module imports caffe_pb2), ParseFromString, or Datum().FromString(value), which
    returns a new message and leaves the instance alone, as protobuf's classmethod does."""
    import lmdb
    pixels = RNG.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    with lmdb.open(str(tmp_path / "db"), map_size=1 << 22) as env, env.begin(write=True) as txn:
        for i, image in enumerate(pixels):
            txn.put(b"%08d" % i, io.array_to_datum(image, i).SerializeToString())
    assert io.caffe_pb2 is caffe_pb2 and minicnn.io.caffe_pb2.Datum is caffe_pb2.Datum
    with lmdb.open(str(tmp_path / "db"), readonly=True) as env, env.begin() as txn:
        for k, (key, value) in enumerate(txn.cursor()):
            datum = minicnn.io.caffe_pb2.Datum()
            datum.ParseFromString(value)
            np.testing.assert_array_equal(minicnn.io.datum_to_array(datum), pixels[k])
            again = minicnn.io.caffe_pb2.Datum().FromString(value)
            assert again == datum and again.label == k
            empty = caffe_pb2.Datum()
            assert empty.FromString(value) == datum and not empty.HasField("label")
            assert caffe_pb2.Datum.FromString(value).label == k
