"""SSD's transform_param fields in the plain Data and ImageData layers (weiliu89/caffe, branch
ssd, data_transformer.cpp): resize_param, noise_param and crop_h/crop_w run on images (ImageData's
files, Data's encoded records) in the fork's order (mirror's coin, resize, noise, crop, mean,
scale); raw records take the datum path; the AnnotatedData-only fields warn; minicnn's own data
layers and the other forks' layers refuse the fields their fork does not know."""

import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn.data.datum import encode_datum, serialize_datum
from minicnn.data.db import LMDBWriter
from minicnn.data.errors import DataError
from minicnn.errors import LayerError
from minicnn.layer import LAYERS
from minicnn.layers import DataLayer, HDF5DataLayer, ImageDataLayer, MemoryDataLayer


def encoded_lmdb(path, n=4, size=(9, 12), seed=0, encoding="png"):
    """n random colour images stored encoded (CHW BGR uint8 returned), labels 0..n-1."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, *size), dtype=np.uint8)
    with LMDBWriter(str(path)) as w:
        for i, image in enumerate(images):
            w.put(f"{i:08d}", encode_datum(image, i, encoding).SerializeToString())
    return images


def raw_lmdb(path, n=3, shape=(3, 6, 7)):
    images = np.random.default_rng(1).integers(0, 256, (n, *shape), dtype=np.uint8)
    with LMDBWriter(str(path)) as w:
        for i, image in enumerate(images):
            w.put(f"{i:08d}", serialize_datum(image, i))
    return images


def cv_resize(chw, h, w, interp=cv2.INTER_LINEAR):
    """The oracle: OpenCV's resize of a CHW image (the fork's ApplyResize, WARP)."""
    out = cv2.resize(np.ascontiguousarray(chw.transpose(1, 2, 0)), (w, h), interpolation=interp)
    return out.reshape(h, w, -1).transpose(2, 0, 1)


WARP = {"resize_mode": "WARP", "height": 7, "width": 8}


def test_data_resizes_encoded_records_then_crops_crop_h_by_crop_w_centred_in_test(tmp_path):
    images = encoded_lmdb(tmp_path / "db")
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB", phase="TEST",
                      transform_param={"resize_param": WARP, "crop_h": 5, "crop_w": 4,
                                       "mean_value": [10, 20, 30], "scale": 0.5})
    data, label = layer()
    assert data.shape == (2, 3, 5, 4) and label.tolist() == [0, 1]
    mean = np.array([10, 20, 30], np.float32).reshape(3, 1, 1)
    for d, image in zip(data, images):
        big = cv_resize(image, 7, 8).astype(np.float32)
        want = (big[:, 1:6, 2:6] - mean) * np.float32(0.5)   # (7-5)//2, (8-4)//2
        np.testing.assert_array_equal(d, want)


def test_data_train_draws_mirror_then_interp_then_crop_offsets(tmp_path):
    """TRAIN: the coin, then one of two interp_modes, then h_off and w_off, from the batch's
    generator default_rng([seed, b, 1]) (the layer's seed), sample after sample."""
    images = encoded_lmdb(tmp_path / "db")
    minicnn.set_random_seed(5)
    rp = dict(WARP, interp_mode=["LINEAR", "NEAREST"])
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=4, backend="LMDB", phase="TRAIN",
                      transform_param={"resize_param": rp, "crop_h": 4, "crop_w": 5,
                                       "mirror": True})
    data, _ = layer()
    rng = np.random.default_rng([layer.seed, 0, 1])
    seen = set()
    for d, image in zip(data, images):
        mirror = bool(rng.integers(2))
        interp = [cv2.INTER_LINEAR, cv2.INTER_NEAREST][int(rng.integers(2))]
        h_off, w_off = int(rng.integers(7 - 4 + 1)), int(rng.integers(8 - 5 + 1))
        want = cv_resize(image, 7, 8, interp)[:, h_off:h_off + 4, w_off:w_off + 5]
        np.testing.assert_array_equal(d, want[:, :, ::-1] if mirror else want)
        seen.add((mirror, interp))
    assert len(seen) > 1                          # the draws do vary across the batch


def test_image_data_resize_and_noise_in_the_forks_order(tmp_path):
    """ImageData's images (the fork's cv::Mat path): new_height/new_width first (its
    ReadImageToCVMat), then resize_param, then noise_param (inverse, posterize: no draws)."""
    rng = np.random.default_rng(2)
    lines = []
    images = []
    for i in range(3):
        rgb = rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
        images.append(rgb[:, :, ::-1].transpose(2, 0, 1))
        lines.append(f"{i}.png {i}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    layer = ImageDataLayer(source=str(tmp_path / "list.txt"), batch_size=3, new_height=11,
                           new_width=12, phase="TEST",
                           transform_param={"resize_param": WARP,
                                            "noise_param": {"inverse": True,
                                                            "posterize": True}})
    data, _ = layer()
    assert data.shape == (3, 3, 7, 8)
    for d, image in zip(data, images):
        resized = cv_resize(cv_resize(image, 11, 12), 7, 8)
        posterized = resized // 64 * 64 + 32
        np.testing.assert_array_equal(d, 255 - posterized)


def test_fit_large_size_and_pad_keeps_the_aspect_and_pads(tmp_path):
    images = encoded_lmdb(tmp_path / "db", n=2, size=(6, 12))
    rp = {"resize_mode": "FIT_LARGE_SIZE_AND_PAD", "height": 8, "width": 8, "pad_value": [7]}
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB", phase="TEST",
                      transform_param={"resize_param": rp})
    data, _ = layer()
    assert data.shape == (2, 3, 8, 8)
    for d, image in zip(data, images):                    # 12 x 6 -> 8 x 4, rows 2..5
        np.testing.assert_array_equal(d[:, 2:6], cv_resize(image, 4, 8))
        assert (d[:, :2] == 7).all() and (d[:, 6:] == 7).all()


def test_raw_records_take_the_datum_path(tmp_path):
    images = raw_lmdb(tmp_path / "db")
    noise = {"inverse": True}
    same = {"resize_mode": "WARP", "height": 6, "width": 7}
    layer = DataLayer(source=str(tmp_path / "db"), batch_size=3, backend="LMDB", phase="TEST",
                      transform_param={"resize_param": same, "noise_param": noise,
                                       "crop_h": 4, "crop_w": 3})
    data, _ = layer()                             # no resize (same size), no noise, cropped
    np.testing.assert_array_equal(data, images[:, :, 1:5, 2:5])
    with pytest.raises(DataError, match="raw .*resize_param 5 x 7.*encoded"):
        DataLayer(source=str(tmp_path / "db"), batch_size=3, backend="LMDB",
                  transform_param={"resize_param": dict(same, height=5)})()


def test_a_sharded_rank_skips_the_other_ranks_draws(tmp_path):
    """Rank 1 of 2 serves the second half of the one-process batch, salt-and-pepper draws
    (which depend on the resized size) and crops included."""
    encoded_lmdb(tmp_path / "db", n=8)
    tp = {"resize_param": WARP, "crop_h": 5, "crop_w": 6, "mirror": True,
          "noise_param": {"saltpepper": True, "saltpepper_param": {"fraction": 0.2,
                                                                   "value": [255]}}}

    def layer(batch):
        one = DataLayer(source=str(tmp_path / "db"), batch_size=batch, backend="LMDB",
                        phase="TRAIN", transform_param=tp)
        one.restore_data_state({"seed": 123, "batches_served": 0})
        return one

    whole = layer(4)()[0]
    half = layer(2)
    half.set_shard(1, 2)
    np.testing.assert_array_equal(half()[0], whole[2:])
    assert (whole == 255).any()


def test_a_sharded_rank_skips_the_other_ranks_interp_mode_draws(tmp_path):
    """As above with several interp_mode (one draw per sample picks one) and FIT_SMALL_SIZE,
    whose size each image gives."""
    encoded_lmdb(tmp_path / "db", n=8)
    rp = {"resize_mode": "FIT_SMALL_SIZE", "height": 7, "width": 7,
          "interp_mode": ["LINEAR", "NEAREST", "CUBIC", "AREA"]}
    tp = {"resize_param": rp, "crop_size": 5, "mirror": True}

    def layer(batch):
        one = DataLayer(source=str(tmp_path / "db"), batch_size=batch, backend="LMDB",
                        phase="TRAIN", transform_param=tp)
        one.restore_data_state({"seed": 7, "batches_served": 0})
        return one

    whole = layer(4)()[0]
    half = layer(2)
    half.set_shard(1, 2)
    np.testing.assert_array_equal(half()[0], whole[2:])


@pytest.mark.parametrize("tp, match", [
    ({"crop_h": 4}, "give both crop_h and crop_w"),
    ({"resize_param": {"height": 0, "width": 5}}, "height and width > 0"),
    ({"resize_param": WARP, "crop_h": 8, "crop_w": 8}, r"crop_h x crop_w 8 x 8 is larger"),
    ({"noise_param": {"convert_to_lab": True}}, "convert_to_lab"),
])
def test_bad_values_are_layer_errors(tmp_path, tp, match):
    encoded_lmdb(tmp_path / "db", n=2)
    with pytest.raises(LayerError, match=match):
        DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB",
                  transform_param=tp)()


def test_noise_on_gray_images_is_refused_at_setup(tmp_path):
    encoded_lmdb(tmp_path / "db", n=2)
    with pytest.raises(LayerError, match="decolorize needs 3-channel"):
        DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB",
                  transform_param={"force_gray": True, "noise_param": {"decolorize": True}})()


# --- fields the layer's fork ignores: a warning -------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("distort_param", {"brightness_prob": 0.5, "brightness_delta": 32}),
    ("expand_param", {"prob": 0.5, "max_expand_ratio": 2}),
    ("emit_constraint", {"emit_type": "CENTER"}),
    ("scale_factors", [0.5, 1]),
    ("crop_width", 4),
])
def test_data_warns_for_fields_only_other_layers_read(tmp_path, field, value):
    encoded_lmdb(tmp_path / "db", n=2)
    plain = DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB")()[0]
    with pytest.warns(UserWarning, match=rf"'Data' \(Data\) ignores transform_param.{field}"):
        got = DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB",
                        transform_param={field: value})()[0]
    np.testing.assert_array_equal(got, plain)     # ignored, as the fork does


def test_image_data_warns_for_force_gray(tmp_path):
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png 0\n")
    with pytest.warns(UserWarning, match="ignores transform_param.force_gray.*is_color"):
        data, _ = ImageDataLayer(source=str(tmp_path / "list.txt"),
                                 transform_param={"force_gray": True})()
    assert data.shape == (1, 3, 4, 5)


def test_memory_and_hdf5_data_warn_that_caffe_serves_arrays_as_they_are(tmp_path):
    layer = MemoryDataLayer(batch_size=1, channels=1, height=1, width=1,
                            transform_param={"mirror": True})
    layer.set_input_arrays(np.ones((1, 1, 1, 1)), np.zeros(1))
    with pytest.warns(UserWarning, match="MemoryData.*ignores transform_param.mirror"):
        data, _ = layer()
    assert data.tolist() == [[[[1]]]]                       # served as it is
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.zeros((2, 1), np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5") + "\n")
    with pytest.warns(UserWarning, match="HDF5Data.*ignores transform_param.scale"):
        HDF5DataLayer(source=str(tmp_path / "list.txt"), batch_size=1, top=["data"],
                      transform_param={"scale": 2})()


def test_no_warning_without_the_fields(tmp_path):
    encoded_lmdb(tmp_path / "db", n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DataLayer(source=str(tmp_path / "db"), batch_size=2, backend="LMDB",
                  transform_param={"resize_param": WARP, "crop_size": 3, "mirror": True})()


# --- fields the layer's fork does not know: a LayerError -----------------------------------------

@pytest.mark.parametrize("type_name, own, field, value", [
    ("AnnotatedData", {"data_param": {"source": "x", "batch_size": 1}}, "crop_width", 3),
    ("ImageSegData", {"image_data_param": {"source": "x", "batch_size": 1}}, "resize_param",
     WARP),
    ("ImageSegData", {"image_data_param": {"source": "x", "batch_size": 1}}, "noise_param",
     {"inverse": True}),
    ("DetectionData", {"detection_data_param": {"source": "x", "batch_size": 1}}, "crop_h", 3),
    ("SegmentationData", {"segmentation_data_param": {"source": "x", "batch_size": 1}},
     "distort_param", {"brightness_prob": 1}),
])
def test_layers_of_other_forks_refuse_the_fields(type_name, own, field, value):
    from minicnn.proto.caffe_pb2 import LayerParameter
    param = LayerParameter(type=type_name, name="d", top=["data", "label"], **own)
    setattr(param.transform_param, field, value)
    with pytest.raises(LayerError, match=rf"'d' \({type_name}\) does not read "
                                         rf"transform_param.{field}"):
        LAYERS[type_name](param)()


# --- a net as SSD's users write it ---------------------------------------------------------------

NET = """
name: "resized"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param {
    mirror: true
    mean_value: 104 mean_value: 117 mean_value: 123
    scale: 0.017
    resize_param { prob: 1 resize_mode: WARP height: 10 width: 10
                   interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST }
    noise_param { prob: 0.1 hist_eq: true }
    crop_h: 8 crop_w: 8
  }
  data_param { source: "train_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool" bottom: "label" top: "loss" }
"""


def test_a_net_with_ssds_transform_trains(tmp_path, monkeypatch):
    encoded_lmdb(tmp_path / "train_lmdb", n=4, size=(13, 9), encoding="jpg")
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 display: 0 '
        'snapshot_after_train: false solver_mode: CPU')
    monkeypatch.chdir(tmp_path)
    minicnn.set_random_seed(0)
    solver = minicnn.get_solver("solver.prototxt")
    solver.solve()
    net = solver.net
    assert net.blobs["data"].shape == (4, 3, 8, 8)
    loss = net.forward()["loss"]
    assert np.isfinite(loss)
