"""Caffe's DataTransformer: crop (random in TRAIN, centred in TEST), mirror, mean, scale."""

import warnings

import numpy as np
import pytest

from minicnn.blob import array_to_blob_proto
from minicnn.data.errors import DataError
from minicnn.data.transform import DataTransformer, merged_transform_param, transform_sample
from minicnn.errors import LayerError
from minicnn.proto import caffe_pb2, write_binary


def tp(**fields):
    return caffe_pb2.TransformationParameter(**fields)


def test_transform_sample_by_hand():
    x = np.array([[[1, 2], [3, 4]]], np.uint8)
    np.testing.assert_array_equal(transform_sample(x), [[[1, 2], [3, 4]]])
    # mirror flips W; (x - 1) * 2
    out = transform_sample(x, mirror=True, mean=[1.0], scale=2.0)
    np.testing.assert_array_equal(out, [[[2, 0], [6, 4]]])
    assert out.dtype == np.float32
    # crop 1x1 at (1, 0) of a 3x3 image, per-pixel mean
    y = np.arange(9, dtype=np.uint8).reshape(1, 3, 3)
    mean = np.full((1, 3, 3), 0.5, np.float32)
    mean[0, 1, 0] = 2
    np.testing.assert_array_equal(transform_sample(y, 1, 1, 1, 0, mean=mean), [[[1.0]]])
    assert transform_sample(y, dtype=np.float64).dtype == np.float64


def test_per_channel_mean_value_then_scale():
    x = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30)])
    out = transform_sample(x, mean=[1, 2, 3], scale=0.5)
    np.testing.assert_array_equal(out[:, 0, 0], [4.5, 9, 13.5])


def test_test_phase_crops_the_centre():
    x = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)
    t = DataTransformer(tp(crop_size=3), "TEST")
    assert t.check(x.shape) == (2, 3, 3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        np.testing.assert_array_equal(t(x, rng), x[:, 1:4, 1:4])     # (5-3)//2, (6-3)//2


def test_train_phase_crops_stay_in_bounds_and_vary():
    x = np.arange(1 * 6 * 7, dtype=np.uint8).reshape(1, 6, 7)
    t = DataTransformer(tp(crop_size=4), "TRAIN")
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        mirror, h, w = t.draw(rng, x.shape)
        assert not mirror and 0 <= h <= 2 and 0 <= w <= 3
        seen.add((h, w))
    assert seen == {(h, w) for h in range(3) for w in range(4)}      # every offset reached
    out = t(x, rng)
    h, w = divmod(int(out[0, 0, 0]), 7)                              # pixel value = index
    np.testing.assert_array_equal(out, x[:, h:h + 4, w:w + 4])


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_mirror_flips_width_randomly_in_both_phases(phase):
    x = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    t = DataTransformer(tp(mirror=True), phase)
    rng = np.random.default_rng(2)
    flipped = plain = 0
    for _ in range(50):
        out = t(x, rng)
        if np.array_equal(out, x[:, :, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, x)
            plain += 1
    assert flipped and plain


def test_mean_file_is_cropped_with_the_data(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    mean = rng.uniform(0, 255, (1, 3, 5, 5)).astype(np.float32)
    path = str(tmp_path / "mean.binaryproto")
    write_binary(array_to_blob_proto(mean), path)
    t = DataTransformer(tp(crop_size=3, mean_file=path, scale=0.25), "TEST")
    expected = (x[:, 1:4, 1:4].astype(np.float32) - mean[0, :, 1:4, 1:4]) * np.float32(0.25)
    np.testing.assert_array_equal(t(x, rng), expected)
    # TRAIN + mirror: the mean is taken at the source pixel, then the result is flipped
    t = DataTransformer(tp(crop_size=3, mean_file=path, mirror=True), "TRAIN")
    draw_rng = np.random.default_rng(4)
    mirror, h, w = t.draw(np.random.default_rng(4), x.shape)
    out = t(x, draw_rng)
    window = (slice(None), slice(h, h + 3), slice(w, w + 3))
    expected = x[window].astype(np.float32) - mean[0][window]
    np.testing.assert_array_equal(out, expected[:, :, ::-1] if mirror else expected)


def test_errors():
    with pytest.raises(LayerError, match=r"crop_size 6 is larger than the image \(5 x 4\)"):
        DataTransformer(tp(crop_size=6), "TEST").check((1, 5, 4))
    with pytest.raises(LayerError, match="mean_file or mean_value, not both"):
        DataTransformer(tp(mean_file="m.binaryproto", mean_value=[1.0]), "TEST")
    with pytest.raises(LayerError, match="2 mean_value values for data with 3 channels"):
        DataTransformer(tp(mean_value=[1.0, 2.0]), "TEST").check((3, 4, 4))
    with pytest.raises(LayerError, match="force_color and force_gray"):
        DataTransformer(tp(force_color=True, force_gray=True), "TEST")
    with pytest.raises(DataError, match="cannot read the mean file"):
        DataTransformer(tp(mean_file="/nonexistent/mean.binaryproto"), "TEST")


def test_mean_file_of_another_size_is_an_error(tmp_path):
    path = str(tmp_path / "mean.binaryproto")
    write_binary(array_to_blob_proto(np.zeros((1, 1, 4, 4), np.float32)), path)
    t = DataTransformer(tp(mean_file=path), "TEST")
    with pytest.raises(LayerError, match="has shape 1x4x4 but the data is 1x5x5"):
        t.check((1, 5, 5))


def test_force_color_and_gray_choose_the_decoding():
    assert DataTransformer(tp(force_color=True), "TEST").is_color is True
    assert DataTransformer(tp(force_gray=True), "TEST").is_color is False
    assert DataTransformer(tp(), "TEST").is_color is None


def test_legacy_fields_of_a_current_layer_are_ignored_unless_the_layer_reads_them():
    """Caffe 1.0 moves data_param's scale/crop_size/mirror into transform_param only in a V1
    'layers' entry; a 'layer' keeps transform_param's own values (WindowData reads its scale)."""
    layer = caffe_pb2.LayerParameter(name="d", type="Data")
    layer.data_param.crop_size = 3
    layer.data_param.scale = 0.5
    layer.transform_param.mirror = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = merged_transform_param(layer, "data_param")
    assert [str(w.message).split(":")[0] for w in caught] == [
        "layer 'd' (Data) ignores data_param.scale",
        "layer 'd' (Data) ignores data_param.crop_size"]
    assert (merged.crop_size, merged.scale, merged.mirror) == (0, 1.0, True)
    with pytest.warns(UserWarning, match="ignores data_param.crop_size"):
        merged = merged_transform_param(layer, "data_param", read=("scale",))
    assert (merged.crop_size, merged.scale) == (0, 0.5)
    assert not layer.transform_param.HasField("scale")              # the layer is unchanged


def test_draws_are_mirror_then_h_then_w_as_caffes():
    """Caffe's Transform draws Rand(2) for the mirror, then h_off, then w_off: the same
    generator state gives the same sample only in that order."""
    t = DataTransformer(tp(crop_size=2, mirror=True), "TRAIN")
    for seed in range(20):
        ref = np.random.default_rng(seed)
        want = (bool(ref.integers(2)), int(ref.integers(5 - 2 + 1)), int(ref.integers(7 - 2 + 1)))
        assert t.draw(np.random.default_rng(seed), (1, 5, 7)) == want


def test_a_crop_of_the_full_width_or_height_fits():
    x = np.arange(1 * 3 * 4, dtype=np.uint8).reshape(1, 3, 4)
    t = DataTransformer(tp(crop_h=2, crop_w=4), "TEST")
    assert t.check(x.shape) == (1, 2, 4)
    np.testing.assert_array_equal(t(x, np.random.default_rng(0)), x[:, :2])
    assert DataTransformer(tp(crop_size=3), "TRAIN").check((1, 3, 4)) == (1, 3, 3)


def test_one_mean_value_serves_every_channel():
    x = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30)])
    t = DataTransformer(tp(mean_value=[5.0]), "TEST")
    assert t.check(x.shape) == (3, 2, 2)
    np.testing.assert_array_equal(t(x, np.random.default_rng(0))[:, 0, 0], [5, 15, 25])


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_batch_is_its_samples_transformed_one_by_one(tmp_path, phase, dtype):
    """DataTransformer.batch: the draws and the values of the per-sample transform, for raw
    and float samples, every mean kind, scale, crop and mirror; None (nothing drawn) where a
    sample is resized or of another shape."""
    rng = np.random.default_rng(5)
    mean = rng.uniform(0, 255, (1, 3, 7, 6)).astype(np.float32)
    path = str(tmp_path / "mean.binaryproto")
    write_binary(array_to_blob_proto(mean), path)
    params = [tp(), tp(scale=0.00390625, crop_size=4), tp(mirror=True, mean_value=[104.5]),
              tp(mirror=True, crop_size=5, mean_value=[104, 117, 123], scale=0.017),
              tp(mirror=True, crop_size=3, mean_file=path, scale=0.5), tp(mean_file=path)]
    uint8 = list(rng.integers(0, 256, (9, 3, 7, 6), dtype=np.uint8))
    floats = list(rng.uniform(-300, 300, (4, 3, 7, 6)).astype(np.float32))
    for param in params:
        t = DataTransformer(param, phase, dtype)
        for samples, encoded in ((uint8, [False] * 9), (uint8, [True, False] * 4 + [True]),
                                 (floats, [False] * 4)):
            one, many = np.random.default_rng(9), np.random.default_rng(9)
            want = np.stack([t(x, one, e) for x, e in zip(samples, encoded)])
            got = t.batch(samples, many, encoded)
            assert got.dtype == want.dtype and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want, err_msg=str(param))
            assert one.integers(1 << 30) == many.integers(1 << 30)      # as many draws
    t = DataTransformer(tp(crop_size=3, mirror=True), phase)
    before = np.random.default_rng(9)
    assert t.batch([uint8[0], uint8[1][:, :6]], before, [False, False]) is None
    resized = DataTransformer(tp(resize_param=caffe_pb2.ResizeParameter(height=5, width=5)),
                              phase)
    assert resized.batch(uint8[:2], before, [True, True]) is None
    assert before.integers(1 << 30) == np.random.default_rng(9).integers(1 << 30)
