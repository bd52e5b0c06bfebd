"""HDF5Output and WindowData, BVLC Caffe's last two I/O layers: HDF5Output's file written at
setup and forward (read back bit for bit), WindowData's window file, batch composition and crop
geometry (by hand, and against a transliteration of Caffe's loop with OpenCV), in nets."""

import decimal
import os

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import minicnn
from minicnn.blob import array_to_blob_proto
from minicnn.data.datum import resize_image
from minicnn.data.errors import DataError
from minicnn.data.windows import WindowFile, crop_window, window_geometry
from minicnn.errors import LayerError, NetError
from minicnn.layers import HDF5OutputLayer, WindowDataLayer
from minicnn.proto import parse_text, write_binary


# --- HDF5Output ----------------------------------------------------------------------------------

def output_net(file_name, data_shape=(2, 3, 4, 5), label_shape=(2,), dtype=np.float32):
    text = f"""
    layer {{ name: "in" type: "Input" top: "data" top: "label"
            input_param {{ shape {{ dim: {' dim: '.join(map(str, data_shape))} }}
                          shape {{ dim: {' dim: '.join(map(str, label_shape))} }} }} }}
    layer {{ name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
            hdf5_output_param {{ file_name: "{file_name}" }} }}
    """
    return minicnn.Net(parse_text(text), minicnn.TEST, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hdf5_output_writes_both_bottoms_bit_for_bit(tmp_path, dtype):
    path = tmp_path / "out.h5"
    with h5py.File(path, "w") as f:                 # an old file: emptied at setup, as Caffe's
        f["old"] = np.zeros(3)
    net = output_net(path, dtype=dtype)
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == []
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    label = np.array([3, -1.5], dtype)
    net.forward(data=data, label=label)
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["data", "label"]
        got_data, got_label = f["data"][...], f["label"][...]
    assert got_data.dtype == dtype and got_label.dtype == dtype
    assert got_data.shape == (2, 3, 4, 5) and got_label.shape == (2, 1, 1, 1)   # Caffe's 4-D
    np.testing.assert_array_equal(got_data.view(np.uint8), data.view(np.uint8))
    np.testing.assert_array_equal(got_label.reshape(2).view(np.uint8), label.view(np.uint8))


def test_hdf5_output_fits_blobs_of_fewer_axes_into_four(tmp_path):
    net = output_net(tmp_path / "o.h5", data_shape=(3, 7), label_shape=(3, 2, 2))
    x = np.arange(21, dtype=np.float32).reshape(3, 7)
    net.forward(data=x, label=np.ones((3, 2, 2), np.float32))
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["data"].shape == (3, 7, 1, 1) and f["label"].shape == (3, 2, 2, 1)
        np.testing.assert_array_equal(f["data"][...].reshape(3, 7), x)


def test_hdf5_output_appends_later_batches(tmp_path):
    # Caffe aborts on the second batch (BVLC/caffe#1726); minicnn keeps every batch, in order
    net = output_net(tmp_path / "o.h5")
    batches = [np.full((2, 3, 4, 5), k, np.float32) for k in range(3)]
    for k, batch in enumerate(batches):
        net.forward(data=batch, label=np.array([k, -k], np.float32))
    with h5py.File(tmp_path / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][...], np.concatenate(batches))
        np.testing.assert_array_equal(f["label"][...].reshape(-1), [0, 0, 1, -1, 2, -2])
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'o.h5'}\n")
    reader = minicnn.Net(parse_text(f"""
        layer {{ name: "in" type: "HDF5Data" top: "data" top: "label"
                hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 6 }} }}"""),
        minicnn.TEST)                                   # an HDF5Data source as it stands
    np.testing.assert_array_equal(reader.forward()["data"], np.concatenate(batches))

    net = output_net(tmp_path / "o.h5")                 # a new net starts the file again
    net.forward(data=np.full((2, 3, 4, 5), 7), label=np.zeros(2))
    with h5py.File(tmp_path / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][...], 7)
    with pytest.raises(NetError, match=r"layer 'out'.*cannot append a data batch of shape "
                                       r"\(2, 3, 4, 6\) \(float32\) to the dataset of shape "
                                       r"\(2, 3, 4, 5\)"):
        net.forward(data=np.ones((2, 3, 4, 6)), label=np.zeros(2))


def test_hdf5_output_errors(tmp_path):
    with pytest.raises(NetError, match=r"layer 'out'.*cannot create hdf5_output_param.file_name "
                                       r"'.*missing/o.h5'"):
        output_net(tmp_path / "missing" / "o.h5")
    with pytest.raises(NetError, match=r"cannot create hdf5_output_param.file_name '.*'"):
        output_net(tmp_path)                                        # a folder
    with pytest.raises(LayerError, match="hdf5_output_param.file_name is required"):
        HDF5OutputLayer()(np.zeros((2, 1)), np.zeros(2))
    with pytest.raises(NetError, match=r"layer 'out'.*data \(2, 3, 4, 5\) and label \(3,\) must "
                                       r"have the same number of rows"):
        output_net(tmp_path / "o.h5", label_shape=(3,))
    with pytest.raises(NetError, match=r"bottom 'data' has shape \(2, 1, 1, 1, 1\); HDF5Output "
                                       r"writes blobs of 1 to 4 axes"):
        output_net(tmp_path / "o.h5", data_shape=(2, 1, 1, 1, 1))
    with pytest.raises(LayerError, match="exactly 2 bottom"):
        HDF5OutputLayer(file_name=str(tmp_path / "o.h5"))(np.zeros((2, 1)))


def test_hdf5_output_beside_a_loss_has_no_backward(tmp_path):
    # a V1 net (HDF5_OUTPUT), force_backward: the layer still asks for no bottom diff
    net = minicnn.Net(parse_text(f"""
    force_backward: true
    input: "data" input_shape {{ dim: 4 dim: 3 }} input: "label" input_shape {{ dim: 4 }}
    layers {{ name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"
             inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" }} }} }}
    layers {{ name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }}
    layers {{ name: "out" type: HDF5_OUTPUT bottom: "ip" bottom: "label"
             hdf5_output_param {{ file_name: "{tmp_path / 'o.h5'}" }} }}
    """), minicnn.TRAIN)
    net.forward(data=np.ones((4, 3)), label=np.array([0, 1, 1, 0]))
    net.backward()
    assert np.abs(net.params["ip"][0].diff).sum() > 0
    i = [layer.name for layer in net.layers].index("out")
    assert isinstance(net.layers[i], HDF5OutputLayer)
    assert net.bottom_need_backward[i] == [False, False]
    with h5py.File(tmp_path / "o.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][...].reshape(4, 2), net.blobs["ip"].data)


# --- WindowData: files ---------------------------------------------------------------------------

def pattern_image(h, w, k=0):
    """A CHW (BGR) uint8 image whose pixels say where they are: B = 8x, G = 8y, R = k."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([8 * x % 256, 8 * y % 256, np.full_like(x, k)]).astype(np.uint8)


def save_png(path, chw):
    Image.fromarray(chw[::-1].transpose(1, 2, 0)).save(path)        # BGR -> RGB file


def window_file(tmp_path, blocks, name="windows.txt"):
    """blocks: [(image name, (h, w), [(label, overlap, x1, y1, x2, y2), ...])]; writes the
    images (pattern_image, k = block index) and the window file; returns its path and images."""
    lines, images = [], []
    for k, (image, (h, w), windows) in enumerate(blocks):
        chw = pattern_image(h, w, k)
        save_png(tmp_path / image, chw)
        images.append(chw)
        lines += [f"# {k}", image, "3", str(h), str(w), str(len(windows))]
        lines += [" ".join(map(str, win)) for win in windows]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return str(tmp_path / name), images


BLOCKS = [("a.png", (20, 30), [(1, 0.9, 2, 3, 12, 15), (2, 0.5, 0, 0, 29, 19),
                               (0, 0.1, 5, 5, 10, 10), (3, 0.3, 1, 1, 4, 4)]),
          ("b.png", (16, 12), [(0, 0.49, 0, 0, 11, 15), (4, 0.7, 3, 3, 8, 8)])]


def test_window_file_splits_foreground_and_background(tmp_path):
    path, _ = window_file(tmp_path, BLOCKS)
    wf = WindowFile(path, fg_threshold=0.5, bg_threshold=0.5)
    assert [(name, size) for name, size, _ in wf.images] == [("a.png", (3, 20, 30)),
                                                             ("b.png", (3, 16, 12))]
    # rows: image, label, x1, y1, x2, y2, line
    assert wf.fg.tolist() == [[0, 1, 2, 3, 12, 15, 7], [0, 2, 0, 0, 29, 19, 8],
                              [1, 4, 3, 3, 8, 8, 18]]
    assert wf.bg.tolist() == [[0, 0, 5, 5, 10, 10, 9], [0, 0, 1, 1, 4, 4, 10],
                              [1, 0, 0, 0, 11, 15, 17]]       # class 3 forced to 0
    wf = WindowFile(path, fg_threshold=0.6, bg_threshold=0.3)  # 0.5 and 0.49 fall between
    assert wf.fg[:, 1].tolist() == [1, 4] and wf.bg[:, 0].tolist() == [0]


@pytest.mark.parametrize("text, line, message", [
    ("", 0, "the window file is empty"),
    ("0\na.png\n", 1, "expected '#' to start the block of image 0, got '0'"),
    ("# 1\na.png 3 4 4 0\n", 1, "image index 1 where 0 is expected"),
    ("# 0\na.png\n3\n4\n4\n1\n1 0.9 0 0 3.5 3\n", 7, "a window's x2 must be an integer, got '3.5'"),
    ("# 0\na.png\n3\n4\n4\n1\n1 high 0 0 3 3\n", 7, "a window's overlap must be a number"),
    ("# 0\na.png\n3\n4\n4\n2\n1 0.9 0 0 3 3\n", 7, "the file ends where a window's class_index"),
    ("# 0\na.png\n3\n4\n4\n1\n0 0.9 0 0 3 3\n", 7, "foreground window .* has class 0"),
    ("# 0\na.png\n3\n4\n4\n1\n1 0.9 3 0 2 3\n", 7, r"window \(3, 0, 2, 3\) has x2 < x1"),
    ("# 0\na.png\n3\nfour\n", 4, "height must be an integer, got 'four'"),
])
def test_window_file_errors_name_the_file_and_line(tmp_path, text, line, message):
    (tmp_path / "w.txt").write_text(text)
    where = "w.txt:" + (f"{line}:" if line else "")
    with pytest.raises(DataError, match=f"{where} {message}"):
        WindowFile(str(tmp_path / "w.txt"))



def test_window_file_channels_are_the_last_blocks(tmp_path):
    # Caffe shapes the data top by the channels of the last block it read
    for first, last in ((1, 3), (3, 1)):
        (tmp_path / "w.txt").write_text(f"# 0\na.png\n{first}\n4\n4\n0\n"
                                        f"# 1\nb.png\n{last}\n4\n4\n0\n")
        assert WindowFile(str(tmp_path / "w.txt")).channels == last



# --- WindowData: crops by hand -------------------------------------------------------------------

IMAGE = pattern_image(20, 30)


def test_warp_without_context_is_the_window_resized():
    out = crop_window(IMAGE, (2, 3, 12, 15), 11)                   # 11 x 13 -> 11 x 11
    np.testing.assert_array_equal(out, resize_image(IMAGE[:, 3:16, 2:13], 11, 11))
    same = crop_window(IMAGE, (2, 3, 12, 13), 11, scale=0.5)        # 11 x 11: no resampling
    np.testing.assert_array_equal(same, IMAGE[:, 3:14, 2:13] * np.float32(0.5))
    np.testing.assert_array_equal(crop_window(IMAGE, (2, 3, 12, 13), 11, mirror=True),
                                  IMAGE[:, 3:14, 12:1:-1])



def test_a_window_must_lie_inside_the_image_without_context():
    # corners are inclusive: x2 = cols - 1 is the last column (Caffe's cv::Rect would fail past)
    assert window_geometry((0, 0, 29, 19), (20, 30), 8)[0] == (0, 0, 29, 19)
    for window in [(0, 0, 30, 19), (0, 0, 29, 20), (-1, 0, 29, 19), (0, -1, 29, 19)]:
        with pytest.raises(ValueError, match="not inside the 20 x 30 image"):
            window_geometry(window, (20, 30), 8)


def test_warp_with_context_at_the_top_left_corner_pads():
    # 10 x 10 window at (0, 0), crop 14, context_pad 2: scale 14 / 10, region -2 .. 12 (15
    # pixels), clipped to 0 .. 12 (13), warped to round(13 * 14 / 15) = 12 at offset
    # round(2 * 14 / 15) = 2 on both axes.
    assert window_geometry((0, 0, 9, 9), (20, 30), 14, 2) == ((0, 0, 12, 12), (12, 12), (2, 2))
    out = crop_window(IMAGE, (0, 0, 9, 9), 14, context_pad=2)
    want = np.zeros((3, 14, 14), np.float32)
    want[:, 2:14, 2:14] = resize_image(IMAGE[:, 0:13, 0:13], 12, 12)
    np.testing.assert_array_equal(out, want)
    # mirrored: the padding moves to the right side's (0 here), the region is flipped
    out = crop_window(IMAGE, (0, 0, 9, 9), 14, context_pad=2, mirror=True)
    want = np.zeros((3, 14, 14), np.float32)
    want[:, 2:14, 0:12] = resize_image(IMAGE[:, 0:13, 0:13], 12, 12)[:, :, ::-1]
    np.testing.assert_array_equal(out, want)


def test_warp_trimmed_where_rounding_overflows_the_crop():
    # 7 x 5 window at (1, 2), crop 6, context_pad 1: scale 1.5, x 4.5 -+ 5.25 -> -1 .. 10 (12),
    # clipped 0 .. 10 (11), scale_x 0.5: width round(5.5) = 6 at offset round(0.5) = 1, one
    # column too many: Caffe trims the width to 6 - 1 = 5. y 4.5 -+ 3.75 -> 1 .. 8: 6 rows.
    assert window_geometry((1, 2, 7, 6), (20, 30), 6, 1) == ((0, 1, 10, 8), (6, 5), (0, 1))
    want = np.zeros((3, 6, 6), np.float32)
    want[:, :, 1:6] = resize_image(IMAGE[:, 1:9, 0:11], 6, 5)
    np.testing.assert_array_equal(crop_window(IMAGE, (1, 2, 7, 6), 6, 1), want)
    assert window_geometry((2, 1, 6, 7), (20, 30), 6, 1) == ((1, 0, 8, 10), (5, 6), (1, 0))


def test_square_makes_a_square_of_the_longer_side():
    # 6 wide x 10 high at (20, 5), crop 10, no context: centre (23, 10), half sides 5 -> region
    # x 18 .. 28, y 5 .. 15 (11 x 11) inside the 20 x 30 image, warped to 10 x 10.
    assert window_geometry((20, 5, 25, 14), (20, 30), 10, square=True) == \
        ((18, 5, 28, 15), (10, 10), (0, 0))
    np.testing.assert_array_equal(crop_window(IMAGE, (20, 5, 25, 14), 10, square=True),
                                  resize_image(IMAGE[:, 5:16, 18:29], 10, 10))


def test_square_with_context_at_the_right_border():
    # 6 x 8 window at (24, 2), crop 12, context_pad 1: scale 1.2, square half side 4, centre
    # (27, 6): region x 22 .. 32, y 1 .. 11 (11 x 11); x clipped to 22 .. 29 (3 columns past the
    # image), warped to round(8 * 12 / 11) = 9 wide, 12 high; the right padding is
    # round(3 * 12 / 11) = 3.
    assert window_geometry((24, 2, 29, 9), (20, 30), 12, 1, square=True) == \
        ((22, 1, 29, 11), (12, 9), (0, 0))
    warped = resize_image(IMAGE[:, 1:12, 22:30], 12, 9)
    want = np.zeros((3, 12, 12), np.float32)
    want[:, :, 0:9] = warped
    np.testing.assert_array_equal(crop_window(IMAGE, (24, 2, 29, 9), 12, 1, square=True), want)
    want = np.zeros((3, 12, 12), np.float32)
    want[:, :, 3:12] = warped[:, :, ::-1]                        # mirrored: padding on the left
    np.testing.assert_array_equal(
        crop_window(IMAGE, (24, 2, 29, 9), 12, 1, square=True, mirror=True), want)


def test_mean_image_and_mean_values():
    mean = np.arange(3 * 12 * 16, dtype=np.float32).reshape(3, 12, 16) / 7
    # crop 8 from a 16-wide mean: offset (16 - 8) // 2 = 4 on both axes (Caffe uses the width)
    out = crop_window(IMAGE, (0, 0, 9, 9), 8, context_pad=1, mean=mean, scale=0.25)
    # scale 8 / 6: region -2 .. 12 (15), clipped 0 .. 12 (13) -> 7 x 7 at offset 1
    assert window_geometry((0, 0, 9, 9), (20, 30), 8, 1) == ((0, 0, 12, 12), (7, 7), (1, 1))
    want = np.zeros((3, 8, 8), np.float32)
    crop_mean = mean[:, 4:12, 4:12]
    want[:, 1:8, 1:8] = (resize_image(IMAGE[:, 0:13, 0:13], 7, 7).astype(np.float32)
                         - crop_mean[:, 1:8, 1:8]) * np.float32(0.25)
    np.testing.assert_array_equal(out, want)
    assert not out[:, 0].any() and not out[:, :, 0].any()          # padding stays 0
    out = crop_window(IMAGE, (2, 3, 12, 13), 11, mean=np.array([10, 20, 30], np.float32))
    np.testing.assert_array_equal(out, IMAGE[:, 3:14, 2:13] - np.float32([10, 20, 30])[:, None,
                                                                                          None])


def test_geometry_runs_in_the_nets_dtype():
    # R-CNN's crop 224, context_pad 16: context_scale 224 / 192, 1.16666663 in float32 and
    # 1.1666666666666667 in float64. A 54 x 11 window at (0, 0): centre x 27, half width 27.
    # float64: 27 * scale = 31.500000000000004, x -5 .. 59 (65 wide, 5 past the edge): scale_x
    # 224 / 65, warped width round(60 * 3.446...) = 207 at offset round(5 * 3.446...) = 17.
    # float32: 27 * scale = 31.499998, and 27 + 31.499998 rounds to 58.5 in float32, so x -4 ..
    # 59 (64 wide): scale_x 3.5, width round(60 * 3.5) = 210 at offset round(4 * 3.5) = 14.
    # y: 5.5 -+ 6.41666 -> -1 .. 12 in both, 14 high: 13 rows at offset round(224 / 14) = 16.
    assert window_geometry((0, 0, 53, 10), (500, 500), 224, 16, dtype=np.float32) == \
        ((0, 0, 59, 12), (208, 210), (16, 14))
    assert window_geometry((0, 0, 53, 10), (500, 500), 224, 16, dtype=np.float64) == \
        ((0, 0, 59, 12), (208, 207), (16, 17))


# --- WindowData: against Caffe's loop, transliterated with OpenCV -------------------------------

def c_round(v):
    return int(decimal.Decimal(float(v)).quantize(decimal.Decimal(1),
                                                   rounding=decimal.ROUND_HALF_UP))


def caffe_window(img_hwc, box, crop_size, context_pad, use_square, do_mirror, mean, scale, T):
    """Caffe's WindowDataLayer::load_batch for one window, line by line (cv2 for OpenCV)."""
    import cv2
    x1, y1, x2, y2 = box
    cv_w = cv_h = crop_size
    pad_w = pad_h = 0
    rows, cols = img_hwc.shape[:2]
    if context_pad > 0 or use_square:
        context_scale = T(crop_size) / T(crop_size - 2 * context_pad)
        half_height = T(T(y2 - y1 + 1) / 2.0)
        half_width = T(T(x2 - x1 + 1) / 2.0)
        center_x = T(x1) + half_width
        center_y = T(y1) + half_height
        if use_square:
            if half_height > half_width:
                half_width = half_height
            else:
                half_height = half_width
        x1 = c_round(center_x - half_width * context_scale)
        x2 = c_round(center_x + half_width * context_scale)
        y1 = c_round(center_y - half_height * context_scale)
        y2 = c_round(center_y + half_height * context_scale)
        unclipped_height, unclipped_width = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        clipped_height, clipped_width = y2 - y1 + 1, x2 - x1 + 1
        scale_x = T(crop_size) / T(unclipped_width)
        scale_y = T(crop_size) / T(unclipped_height)
        cv_w = c_round(T(clipped_width) * scale_x)
        cv_h = c_round(T(clipped_height) * scale_y)
        pad_x1, pad_x2 = c_round(T(pad_x1) * scale_x), c_round(T(pad_x2) * scale_x)
        pad_y1 = c_round(T(pad_y1) * scale_y)
        pad_h = pad_y1
        pad_w = pad_x2 if do_mirror else pad_x1
        if pad_h + cv_h > crop_size:
            cv_h = crop_size - pad_h
        if pad_w + cv_w > crop_size:
            cv_w = crop_size - pad_w
    cropped = cv2.resize(np.ascontiguousarray(img_hwc[y1:y2 + 1, x1:x2 + 1]), (cv_w, cv_h),
                         interpolation=cv2.INTER_LINEAR)
    if do_mirror:
        cropped = cv2.flip(cropped, 1)
    top = np.zeros(3 * crop_size * crop_size, T)
    if mean is not None:
        mean_height, mean_width = mean.shape[1:]
        mean_off = (mean_width - crop_size) // 2
        flat_mean = mean.reshape(-1)
    for h in range(cropped.shape[0]):
        for w in range(cropped.shape[1]):
            for c in range(3):
                top_index = (c * crop_size + h + pad_h) * crop_size + w + pad_w
                pixel = T(cropped[h, w, c])
                if mean is not None:
                    mean_index = (c * mean_height + h + mean_off + pad_h) * mean_width + w + \
                        mean_off + pad_w
                    top[top_index] = (pixel - flat_mean[mean_index]) * T(scale)
                else:
                    top[top_index] = pixel * T(scale)
    return top.reshape(3, crop_size, crop_size)


@st.composite
def window_cases(draw):
    h, w = draw(st.integers(3, 24)), draw(st.integers(3, 24))
    x1, x2 = sorted(draw(st.lists(st.integers(0, w - 1), min_size=2, max_size=2)))
    y1, y2 = sorted(draw(st.lists(st.integers(0, h - 1), min_size=2, max_size=2)))
    crop = draw(st.integers(2, 12))
    pad = draw(st.integers(0, (crop - 1) // 2))
    return (h, w, (x1, y1, x2, y2), crop, pad, draw(st.booleans()), draw(st.booleans()),
            draw(st.booleans()), draw(st.sampled_from([np.float32, np.float64])),
            draw(st.integers(0, 2**31)))


@settings(max_examples=40, deadline=None)
@given(window_cases())
def test_crops_match_caffes_loop_with_opencv(case):
    h, w, box, crop, pad, square, mirror, with_mean, dtype, seed = case
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    mean = rng.uniform(0, 255, (3, crop + 3, crop + 2)).astype(dtype) if with_mean else None
    cv2 = pytest.importorskip("cv2")
    try:
        want = caffe_window(image.transpose(1, 2, 0), box, crop, pad, square, mirror, mean, 0.5,
                            np.dtype(dtype).type)
    except cv2.error:                    # Caffe's cv::resize fails: the region warps to nothing
        with pytest.raises(ValueError, match="warps to"):
            crop_window(image, box, crop, pad, square, mirror, mean, 0.5, dtype)
        return
    ours = crop_window(image, box, crop, pad, square, mirror, mean, 0.5, dtype)
    assert ours.dtype == dtype
    np.testing.assert_array_equal(ours, want)


# --- WindowData: the layer -----------------------------------------------------------------------

def window_layer(path, **kw):
    kw.setdefault("batch_size", 8)
    transform = {"crop_size": kw.pop("crop_size", 6)}
    for name in ("mirror", "mean_file", "mean_value"):
        if name in kw:
            transform[name] = kw.pop(name)
    return WindowDataLayer(source=path, transform_param=transform, **kw)


def test_batches_take_background_then_foreground(tmp_path):
    path, images = window_file(tmp_path, BLOCKS)
    minicnn.set_random_seed(1)
    layer = window_layer(path, batch_size=8, fg_fraction=0.25)
    fg = {1: (0, (2, 3, 12, 15)), 2: (0, (0, 0, 29, 19)), 4: (1, (3, 3, 8, 8))}
    bg = [(0, (5, 5, 10, 10)), (0, (1, 1, 4, 4)), (1, (0, 0, 11, 15))]
    bg_crops = [crop_window(images[k], box, 6) for k, box in bg]
    seen = set()
    for _ in range(6):
        data, label = layer()
        assert data.shape == (8, 3, 6, 6) and label.shape == (8,) and data.dtype == np.float32
        assert label[:6].tolist() == [0] * 6 and all(v in fg for v in label[6:])
        for x, v in zip(data[6:], label[6:]):                  # each the crop of its window
            k, box = fg[int(v)]
            np.testing.assert_array_equal(x, crop_window(images[k], box, 6))
            seen.add(int(v))
        for x in data[:6]:
            hits = [i for i, c in enumerate(bg_crops) if np.array_equal(x, c)]
            assert len(hits) == 1
            seen.add(-hits[0] - 1)
    assert seen == {1, 2, 4, -1, -2, -3}                          # every window gets drawn
    # Caffe's count is int(float(batch_size) * fg_fraction), in float32: 10 * 0.36f truncates
    # to 3, and 10 * 0.7f = 6.9999999 rounds to 7.0f, so 7 (not 6, as in double)
    for fraction, count in ((0.36, 3), (0.7, 7)):
        layer = window_layer(path, batch_size=10, fg_fraction=fraction)
        assert (layer()[1] > 0).sum() == count


def test_mirror_flips_about_half_the_windows(tmp_path):
    path, images = window_file(tmp_path, [("a.png", (20, 30), [(1, 0.9, 2, 3, 12, 15)])])
    layer = window_layer(path, batch_size=16, fg_fraction=1, mirror=True, crop_size=11,
                         context_pad=1)
    plain = crop_window(images[0], (2, 3, 12, 15), 11, 1)
    flipped = crop_window(images[0], (2, 3, 12, 15), 11, 1, mirror=True)
    assert not np.array_equal(plain, flipped)
    kinds = [0 if np.array_equal(x, plain) else 1 if np.array_equal(x, flipped) else 2
             for x in layer()[0]]
    assert 2 not in kinds and 3 <= sum(kinds) <= 13


def test_mean_file_mean_value_and_scale(tmp_path, monkeypatch):
    path, images = window_file(tmp_path, BLOCKS[:1])
    mean = np.random.default_rng(0).uniform(0, 255, (3, 9, 10)).astype(np.float32)
    write_binary(array_to_blob_proto(mean[None]), str(tmp_path / "mean.binaryproto"))
    monkeypatch.chdir(tmp_path)
    layer = window_layer(path, batch_size=4, fg_fraction=1, crop_size=6, scale=0.5,
                         mean_file="mean.binaryproto", context_pad=1)
    data, label = layer()
    for x, v in zip(data, label):
        box = {1: (2, 3, 12, 15), 2: (0, 0, 29, 19)}[int(v)]
        np.testing.assert_array_equal(x, crop_window(images[0], box, 6, 1, mean=mean,
                                                     scale=0.5))
    layer = window_layer(path, batch_size=2, fg_fraction=1, crop_size=6, mean_value=[1, 2, 3])
    data, label = layer()
    box = {1: (2, 3, 12, 15), 2: (0, 0, 29, 19)}[int(label[0])]
    np.testing.assert_array_equal(data[0], crop_window(images[0], box, 6) -
                                  np.float32([1, 2, 3])[:, None, None])


def test_batches_repeat_by_seed_and_resume(tmp_path):
    path, _ = window_file(tmp_path, BLOCKS)

    def batches(seed, n=3, prefetch=4, **kw):
        minicnn.set_random_seed(seed)
        layer = window_layer(path, mirror=True, **kw)
        layer.prefetch = prefetch                     # 0: computed in the caller
        return [tuple(a.copy() for a in layer()) for _ in range(n)], layer

    a, layer = batches(5)
    b, _ = batches(5, prefetch=0)
    c, _ = batches(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    state = layer.data_state()
    after = [tuple(t.copy() for t in layer()) for _ in range(2)]
    other = window_layer(path, mirror=True)
    other.restore_data_state(state)
    for x in after:
        np.testing.assert_array_equal(x[0], other()[0])
    # two shards of 4 serve the blocks of the batch of 8 a single process would serve
    whole, _ = batches(7, n=2)
    for rank in (0, 1):
        minicnn.set_random_seed(7)
        shard = window_layer(path, batch_size=4, mirror=True)
        shard.set_shard(rank, 2)
        for b in range(2):
            data, label = shard()
            np.testing.assert_array_equal(data, whole[b][0][4 * rank:4 * rank + 4])


def test_cache_images_and_float64(tmp_path):
    path, _ = window_file(tmp_path, BLOCKS)
    minicnn.set_random_seed(2)
    plain = window_layer(path, context_pad=1)
    first, plain = [tuple(a.copy() for a in plain()) for _ in range(2)]
    minicnn.set_random_seed(2)
    cached = window_layer(path, context_pad=1, cache_images=True)
    cached.prefetch = 0
    cached()                                                     # set up: the files are read
    os.rename(tmp_path / "a.png", tmp_path / "gone.png")
    got = cached()
    np.testing.assert_array_equal(got[0], plain[0])
    np.testing.assert_array_equal(got[1], plain[1])
    os.rename(tmp_path / "gone.png", tmp_path / "a.png")
    plain = first
    minicnn.set_random_seed(2)
    layer = WindowDataLayer(source=path, batch_size=8, context_pad=1,
                            transform_param={"crop_size": 6})
    layer.dtype = np.dtype(np.float64)
    data, label = layer()
    assert data.dtype == np.float64 and label.dtype == np.float64
    np.testing.assert_array_equal(data, plain[0])                 # integer pixels: same values


def test_root_folder_is_joined_to_the_image_paths(tmp_path, monkeypatch):
    sub = tmp_path / "images"
    sub.mkdir()
    path, images = window_file(sub, [("a.png", (20, 30), [(1, 0.9, 2, 3, 12, 15)])])
    os.rename(path, tmp_path / "windows.txt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="windows.txt:2: image 'a.png': file not found"):
        window_layer("windows.txt", fg_fraction=1)()
    data, _ = window_layer("windows.txt", fg_fraction=1, root_folder="images/")()
    np.testing.assert_array_equal(data[0], crop_window(images[0], (2, 3, 12, 15), 6))


def test_window_data_errors(tmp_path):
    path, _ = window_file(tmp_path, BLOCKS)
    with pytest.raises(LayerError, match="window_data_param.source is required"):
        WindowDataLayer(batch_size=2, transform_param={"crop_size": 4})()
    with pytest.raises(LayerError, match="batch_size must be positive"):
        WindowDataLayer(source=path, transform_param={"crop_size": 4})()
    with pytest.raises(LayerError, match="needs transform_param.crop_size > 0"):
        WindowDataLayer(source=path, batch_size=2)()
    with pytest.raises(LayerError, match="context_pad 2 leaves nothing of crop_size 4"):
        window_layer(path, crop_size=4, context_pad=2)()
    with pytest.raises(LayerError, match="crop_mode is 'Square'; Caffe knows 'warp' and"):
        window_layer(path, crop_mode="Square")()
    with pytest.raises(LayerError, match="fg_fraction is 1.5"):
        window_layer(path, fg_fraction=1.5)()
    with pytest.raises(DataError, match="windows.txt: a batch takes 2 foreground windows but "
                                        "the file has none"):
        window_layer(path, fg_threshold=0.95)()
    (tmp_path / "b.png").unlink()
    with pytest.raises(DataError, match=r"windows.txt:12: image 'b.png': file not found"):
        window_layer(path)()
    path, _ = window_file(tmp_path, [("a.png", (20, 30), [(1, 0.9, 25, 3, 31, 15)])])
    layer = window_layer(path, fg_fraction=1)
    with pytest.raises(DataError, match=r"windows.txt:7: window 25 3 31 15 of image 'a.png': "
                                        r"the window is not inside the 20 x 30 image"):
        layer()
    (tmp_path / "w1.txt").write_text("# 0\na.png\n1\n20\n30\n1\n1 0.9 0 0 3 3\n")
    with pytest.raises(DataError, match=r"w1.txt:2: the last image block declares 1 channels"):
        window_layer(str(tmp_path / "w1.txt"))()
    write_binary(array_to_blob_proto(np.zeros((1, 3, 6, 5), np.float32)),
                 str(tmp_path / "small.binaryproto"))
    with pytest.raises(LayerError, match=r"small.binaryproto is 3x6x5; WindowData needs 3 "
                                         r"channels and the 6 x 6 crop"):
        window_layer(path, fg_fraction=1, mean_file=str(tmp_path / "small.binaryproto"))()


NET = """
name: "rcnn"
layer {
  name: "data" type: "WindowData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true crop_size: 10 mean_value: 104 mean_value: 117 mean_value: 123 }
  window_data_param { source: "windows.txt" batch_size: 8 fg_threshold: 0.5 bg_threshold: 0.5
                      fg_fraction: 0.25 context_pad: 2 crop_mode: "warp" }
}
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

V1_NET = """
layers {
  name: "data" type: WINDOW_DATA top: "data" top: "label"
  window_data_param { source: "windows.txt" batch_size: 4 crop_size: 10 mirror: false
                      scale: 0.5 context_pad: 2 fg_fraction: 0.5 }
}
"""


def test_a_train_net_with_window_data(tmp_path, monkeypatch):
    window_file(tmp_path, BLOCKS)
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.chdir(tmp_path)
    minicnn.set_random_seed(3)
    net = minicnn.Net("net.prototxt", minicnn.TRAIN)
    for _ in range(2):
        out = net.forward()
        assert np.isfinite(out["loss"])
        assert net.blobs["data"].shape == (8, 3, 10, 10)
        labels = net.blobs["label"].data
        assert (labels[:6] == 0).all() and (labels[6:] > 0).all()
        net.backward()
    (tmp_path / "v1.prototxt").write_text(V1_NET)            # old fields: crop_size, scale
    minicnn.set_random_seed(3)
    v1 = minicnn.Net("v1.prototxt", minicnn.TRAIN)
    v1.forward()
    assert v1.blobs["data"].shape == (4, 3, 10, 10)
    assert v1.blobs["data"].data.max() <= 127.5


def test_shards_draw_the_foreground_count_of_the_whole_batch_in_float32(tmp_path):
    # two shards of 5 serve the batch of 10 a single process draws: its foreground count is
    # int(10.0f * 0.7f) = 7 (float32, as Caffe's), so 3 + 7 windows, not 4 + 6 (double's)
    path, _ = window_file(tmp_path, BLOCKS)
    minicnn.set_random_seed(4)
    whole = window_layer(path, batch_size=10, fg_fraction=0.7)()
    blocks = []
    for rank in (0, 1):
        minicnn.set_random_seed(4)
        shard = window_layer(path, batch_size=5, fg_fraction=0.7)
        shard.set_shard(rank, 2)
        blocks.append(shard())
    label = np.concatenate([blk[1] for blk in blocks])
    assert (whole[1] > 0).sum() == 7 and (label > 0).sum() == 7
    np.testing.assert_array_equal(label, whole[1])
    np.testing.assert_array_equal(np.concatenate([blk[0] for blk in blocks]), whole[0])


def test_window_data_mean_checks(tmp_path):
    path, _ = window_file(tmp_path, BLOCKS)
    # a 10-wide mean puts the 6 x 6 crop at offset (10 - 6) // 2 = 2 on both axes: rows 2..7
    write_binary(array_to_blob_proto(np.zeros((1, 3, 7, 10), np.float32)),
                 str(tmp_path / "short.binaryproto"))
    with pytest.raises(LayerError, match=r"short.binaryproto is 3x7x10; .* at offset 2 inside "
                                         r"it \(height >= 8, width >= 6\)"):
        window_layer(path, fg_fraction=1, mean_file=str(tmp_path / "short.binaryproto"))()
    with pytest.raises(LayerError, match="2 mean_value values for 3-channel windows"):
        window_layer(path, mean_value=[1, 2])()


def test_window_data_has_no_epoch(tmp_path):
    # each batch draws its windows at random: there is no epoch, and a test net reading
    # WindowData gets no note about test_iter covering its windows
    from minicnn.solver import test_coverage_notes
    path, _ = window_file(tmp_path, BLOCKS)
    layer = window_layer(path, batch_size=2)
    layer()
    assert layer.num_samples == 6 and layer.batches_per_epoch() is None
    (tmp_path / "net.prototxt").write_text(NET.replace("TRAIN", "TEST"))
    net = minicnn.Net(str(tmp_path / "net.prototxt"), minicnn.TEST)
    assert test_coverage_notes(net, 7, "test net") == []
