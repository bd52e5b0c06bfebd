"""DetectionData's DARKNET_V2 augmentation (Darknet's load_data_detection for YOLOv2/v3) against
Debian's libdarknet through ctypes: place_image, rgb_to_hsv, hsv_to_rgb, distort_image,
flip_image and correct_boxes on drawn inputs, and the whole of load_data_detection with C rand()'s
numbers scripted into minicnn's draws; then the layer (its pixels and boxes, exact resume,
errors) and a converted small YOLOv2 / YOLOv3 trained with the data layer the converter
writes."""

import ctypes
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.darknet import convert_darknet, darknet_train_data, read_cfg
from minicnn.data.datum import decode_image, encode_image
from minicnn.data.detection import (
    DarknetV2Draws,
    darknet_correct_boxes,
    darknet_letterbox,
    darknet_distort_image,
    darknet_hsv_to_rgb,
    darknet_place_image,
    darknet_rgb_to_hsv,
    darknet_v2_augment,
    label_path,
    read_labels,
    write_labels,
)
from minicnn.data.errors import need
from minicnn.errors import LayerError
from minicnn.layers import DetectionDataLayer
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from tests.test_darknet import Image, needs_darknet
from tests.test_darknet import darknet as darknet_library

need("PIL.Image", "Pillow")
F = ctypes.POINTER(ctypes.c_float)


class BoxLabel(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int)] + [(k, ctypes.c_float) for k in
                                         ("x", "y", "w", "h", "left", "right", "top", "bottom")]


class Matrix(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int), ("cols", ctypes.c_int), ("vals", ctypes.POINTER(F))]


class Data(ctypes.Structure):
    _fields_ = [("w", ctypes.c_int), ("h", ctypes.c_int), ("X", Matrix), ("y", Matrix),
                ("shallow", ctypes.c_int), ("num_boxes", ctypes.c_void_p),
                ("boxes", ctypes.c_void_p)]


_LIB = None


def darknet():
    global _LIB
    if _LIB is None:
        lib = darknet_library()                         # with -Ofast's FTZ/DAZ undone
        lib.place_image.argtypes = [Image, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    Image]
        lib.distort_image.argtypes = [Image, ctypes.c_float, ctypes.c_float, ctypes.c_float]
        for name in ("rgb_to_hsv", "hsv_to_rgb", "flip_image"):
            getattr(lib, name).argtypes = [Image]
        lib.correct_boxes.argtypes = [ctypes.POINTER(BoxLabel), ctypes.c_int] + \
            [ctypes.c_float] * 4 + [ctypes.c_int]
        lib.load_data_detection.restype = Data
        lib.load_data_detection.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                                            ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_int] + [ctypes.c_float] * 4
        _LIB = lib
    return _LIB


def as_image(a):
    """A Darknet image over a float32 CHW array (kept alive by the caller)."""
    c, h, w = a.shape
    return Image(w, h, c, a.ctypes.data_as(F))


def random_image(rng, c, h, w):
    """Colours, grays (max == min: Darknet's 0/0 hue), black pixels and pure primaries."""
    image = rng.random((c, h, w)).astype(np.float32)
    kind = rng.integers(4, size=(h, w))
    image[:, kind == 1] = image[0:1, kind == 1]                    # gray
    image[:, kind == 2] = 0
    image[:, kind == 3] = (rng.random((c, 1)) > 0.5).astype(np.float32)
    return image


@needs_darknet
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 14), st.integers(0, 14),
       st.integers(-6, 12), st.integers(-6, 12), st.integers(0, 2**32 - 1))
def test_place_image_equals_darknets(ih, iw, h, w, dx, dy, seed):
    rng = np.random.default_rng(seed)
    image = rng.random((3, ih, iw)).astype(np.float32)
    theirs = np.full((3, 10, 11), 0.5, np.float32)
    darknet().place_image(as_image(image), w, h, dx, dy, as_image(theirs))
    ours = darknet_place_image(image, w, h, dx, dy, np.full((3, 10, 11), 0.5, np.float32))
    # Debian's -Ofast build computes place_image's x / w * W as x * (W / w): the source point
    # moves by an ulp or two of the coordinate, a pixel by up to ~1e-6 per pixel of image width
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=3e-6)


@needs_darknet
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(-1, 1), st.floats(0.2, 3), st.floats(0.2, 3))
def test_hsv_and_distort_equal_darknets(seed, dhue, dsat, dexp):
    rng = np.random.default_rng(seed)
    image = random_image(rng, 3, 5, 6)
    lib = darknet()
    hsv = image.copy()
    lib.rgb_to_hsv(as_image(hsv))
    ours = darknet_rgb_to_hsv(image)
    np.testing.assert_allclose(ours, hsv, rtol=0, atol=3e-7)      # the NaN hues of grays too
    back = hsv.copy()
    lib.hsv_to_rgb(as_image(back))
    np.testing.assert_allclose(darknet_hsv_to_rgb(hsv), back, rtol=0, atol=3e-7)
    theirs = image.copy()
    lib.distort_image(as_image(theirs), dhue, dsat, dexp)
    np.testing.assert_allclose(darknet_distort_image(image, dhue, dsat, dexp), theirs, rtol=0,
                               atol=1e-6)


@needs_darknet
def test_hue_shifted_to_exactly_one_takes_darknets_last_sector():
    # hue 0 shifted by 1 stays 1 (Darknet wraps only > 1), and 6 * 1 is sector 6: Darknet's
    # else-branch gives (v, p, q) = (1, .5, 1) where a wrapped hue would give (1, .5, .5)
    image = np.array([1.0, 0.5, 0.5], np.float32).reshape(3, 1, 1)
    theirs = image.copy()
    darknet().distort_image(as_image(theirs), 1.0, 1.0, 1.0)
    ours = darknet_distort_image(image, 1.0, 1.0, 1.0)
    assert theirs.ravel().tolist() == [1.0, 0.5, 1.0]
    np.testing.assert_array_equal(ours, theirs)


@needs_darknet
def test_flip_is_darknets_flip_image():
    image = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    theirs = image.copy()
    darknet().flip_image(as_image(theirs))
    np.testing.assert_array_equal(image[:, :, ::-1], theirs)


def boxes_case(rng, n):
    """Boxes, some cut by the canvas edge, some tiny, one class-only (x = y = 0)."""
    x, y = rng.uniform(-0.1, 1.1, n), rng.uniform(-0.1, 1.1, n)
    w, h = rng.uniform(0, 0.6, n), rng.uniform(0, 0.6, n)
    tiny = rng.random(n) < 0.2
    w[tiny] = rng.uniform(0, 0.002, tiny.sum())
    boxes = np.stack([rng.integers(0, 5, n), x, y, w, h], 1).astype(np.float32)
    if n > 2:
        boxes[1, 1:3] = 0
    return boxes.astype(np.float64)


@needs_darknet
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 8), st.booleans())
def test_correct_boxes_equals_darknets(seed, n, flip):
    rng = np.random.default_rng(seed)
    boxes = boxes_case(rng, n)
    dx, dy = rng.uniform(-0.4, 0.4, 2).astype(np.float32)
    sx, sy = rng.uniform(0.3, 1.5, 2).astype(np.float32)
    labels = (BoxLabel * max(n, 1))()
    for lab, (c, x, y, w, h) in zip(labels, boxes.astype(np.float32)):
        lab.id, lab.x, lab.y, lab.w, lab.h = int(c), x, y, w, h
        lab.left, lab.right = x - w / np.float32(2), x + w / np.float32(2)
        lab.top, lab.bottom = y - h / np.float32(2), y + h / np.float32(2)
    darknet().correct_boxes(labels, n, dx, dy, sx, sy, int(flip))
    ours = darknet_correct_boxes(boxes, dx, dy, sx, sy, flip)
    for lab, row, before in zip(labels[:n], ours, boxes):
        if before[1] == 0 and before[2] == 0:                      # Darknet writes 999999
            assert (lab.x, lab.y, lab.w, lab.h) == (999999,) * 4
            np.testing.assert_array_equal(row, before)
            continue
        np.testing.assert_allclose(row[1:], [lab.x, lab.y, lab.w, lab.h], rtol=0, atol=3e-7)


# --- the whole of load_data_detection ------------------------------------------------------------

def scripted_draws(values, n_boxes):
    """The DarknetV2Draws that C rand()'s ``values`` make in load_data_detection's order (after
    get_random_paths' one draw)."""
    it = iter(values)

    def u():
        return np.float32(np.float32(next(it)) / np.float32(2**31))
    u_w, u_h = u(), u()         # new_ar's two calls, in the order libdarknet's build makes them
    u_dx, u_dy, u_hue = u(), u(), u()
    u_sat, sat_coin = u(), next(it) % 2
    u_exp, exp_coin = u(), next(it) % 2
    flip = next(it) % 2
    swaps = [next(it) % n_boxes for _ in range(n_boxes)]
    return DarknetV2Draws(u_w, u_h, u_dx, u_dy, u_hue, u_sat, sat_coin, u_exp, exp_coin, flip,
                          swaps)


@needs_darknet
@pytest.mark.parametrize("seed,size,net_hw,jitter", [
    (1, (30, 40), (32, 32), 0.3), (2, (50, 20), (32, 32), 0.2), (3, (24, 24), (32, 48), 0.3),
    (4, (40, 30), (48, 32), 0.5), (5, (33, 17), (32, 32), 0.0), (6, (20, 60), (64, 32), 0.3),
    (7, (45, 25), (32, 32), 0.3), (8, (16, 16), (32, 32), 0.9),
    (1296605583, (58, 60), (48, 32), 0.5)])          # a box placed off the canvas: all zeros
def test_load_data_detection_equals_darknets(tmp_path, seed, size, net_hw, jitter):
    check_load_data_detection(tmp_path, seed, size, net_hw, jitter)


@needs_darknet
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2**31 - 1), st.tuples(st.integers(4, 70), st.integers(4, 70)),
       st.tuples(st.sampled_from([32, 48, 64]), st.sampled_from([32, 48, 64])),
       st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 0.9]))
def test_load_data_detection_equals_darknets_drawn(seed, size, net_hw, jitter):
    with tempfile.TemporaryDirectory() as folder:
        check_load_data_detection(Path(folder), seed, size, net_hw, jitter)


def check_load_data_detection(tmp_path, seed, size, net_hw, jitter):
    rng = np.random.default_rng(seed)
    h, w = size
    bgr = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "labels")
    path = str(tmp_path / "images" / "a.png")
    with open(path, "wb") as f:
        f.write(encode_image(bgr, "png"))
    boxes = boxes_case(rng, 6)
    boxes[1, 1:3] = (0.5, 0.5)                      # no class-only row: Darknet would index it
    boxes[4, 3] = 0.0005                            # one tiny box: dropped, the rest move up
    write_labels(str(tmp_path / "labels" / "a.txt"), boxes)
    boxes = np.loadtxt(tmp_path / "labels" / "a.txt", ndmin=2)     # as written (6 decimals)
    hue, sat, exp, max_boxes = 0.1, 1.5, 1.5, 5
    libc = ctypes.CDLL("libc.so.6")
    libc.srand(seed)
    values = [libc.rand() for _ in range(40)]
    libc.srand(seed)
    lib = darknet()
    paths = (ctypes.c_char_p * 1)(path.encode())
    d = lib.load_data_detection(1, paths, 1, net_hw[1], net_hw[0], max_boxes, 5, jitter, hue,
                                sat, exp)
    theirs = np.ctypeslib.as_array(d.X.vals[0], (3, *net_hw)).copy()
    truth = np.ctypeslib.as_array(d.y.vals[0], (max_boxes, 5)).copy()
    draws = scripted_draws(values[1:], 6)
    rgb = decode_image(path)[::-1].astype(np.float64) / 255
    ours, out = darknet_v2_augment(rgb.astype(np.float32), boxes, draws, net_hw, jitter, hue, sat,
                                   exp, max_boxes)
    # -Ofast's place_image rounding (see test_place_image_equals_darknets), times the
    # saturation and exposure scales; a wrong draw or offset moves whole rows by ~0.1
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert np.mean(np.abs(ours - theirs)) < 1e-6
    kept = truth[:, 0] != 0
    stop = int(np.argmin(kept)) if not kept.all() else max_boxes
    assert len(out) == stop
    np.testing.assert_allclose(out[:, 1:], truth[:stop, :4], rtol=0, atol=3e-7)   # 2 ulp
    np.testing.assert_array_equal(out[:, 0], truth[:stop, 4])


def test_class_only_rows_stay_and_boxes_off_the_canvas_go():
    # x = y = 0 is a label without a box (Darknet's correct_boxes marks it 999999 and keeps it);
    # a box pushed off the canvas ends at 0 width and is dropped like any tiny box
    boxes = np.array([[3, 0, 0, 0, 0], [1, 0.5, 0.5, 0.2, 0.2], [2, -5, 0.5, 0.2, 0.2]])
    draws = DarknetV2Draws(0.5, 0.5, 0, 0, 0.5, 0, 1, 0, 1, 0, [0, 1, 2])
    _, out = darknet_v2_augment(np.zeros((3, 10, 10), np.float32), boxes, draws, (10, 10), 0.0)
    np.testing.assert_allclose(out, boxes[:2], atol=1e-7)


# --- the DetectionData layer --------------------------------------------------------------------

def rectangles(folder, n=4, size=(30, 40)):
    """Black images with one white rectangle each (class i % 3), its exact box as the label."""
    rng = np.random.default_rng(11)
    os.makedirs(folder / "images", exist_ok=True)
    os.makedirs(folder / "labels", exist_ok=True)
    h, w = size
    for i in range(n):
        image = np.zeros((3, h, w), np.uint8)
        x0, y0 = int(rng.integers(0, w - 14)), int(rng.integers(0, h - 14))
        x1, y1 = x0 + int(rng.integers(8, 14)), y0 + int(rng.integers(8, 14))
        image[:, y0:y1, x0:x1] = 255
        image[2, y0:y1, x0:x1] = 128                  # R (BGR order): channel order shows
        (folder / "images" / f"{i}.png").write_bytes(encode_image(image, "png"))
        write_labels(str(folder / "labels" / f"{i}.txt"),
                     [[i % 3, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w,
                       (y1 - y0) / h]])
    (folder / "list.txt").write_text("".join(f"images/{i}.png\n" for i in range(n)))
    return str(folder / "list.txt")


def v2_layer(source, phase="TRAIN", **extra):
    fields = {"source": source, "batch_size": 2, "new_height": 24, "new_width": 32,
              "augment": "DARKNET_V2", "jitter": 0.3, "hue": 0.1, "saturation": 1.5,
              "exposure": 1.5, "flip": True, "max_boxes": 3}
    fields.update(extra)
    layer = DetectionDataLayer(detection_data_param=fields, phase=phase,
                               transform_param={"scale": 1 / 255})
    layer.rng = np.random.default_rng(5)
    return layer


@pytest.mark.parametrize("rgb", [False, True])
def test_layer_is_darknet_v2_augment_with_its_draws(tmp_path, rgb):
    source = rectangles(tmp_path)
    layer = v2_layer(source, rgb=rgb)
    for b in range(3):
        data, boxes = (a.copy() for a in layer())
        rng = np.random.default_rng([layer.seed, b, 1])
        for k, i in enumerate(layer.sample_ids(b)):
            path = str(tmp_path / "images" / f"{i}.png")
            given = read_labels(label_path(path))
            draws = DarknetV2Draws.draw(rng, len(given))
            rgb_in = (decode_image(path)[::-1].astype(np.float64) / 255).astype(np.float32)
            want, want_boxes = darknet_v2_augment(rgb_in, given, draws, (24, 32), 0.3, 0.1,
                                                  1.5, 1.5, 3)
            want = want if rgb else want[::-1]
            np.testing.assert_allclose(data[k], want, rtol=0, atol=1e-6)
            np.testing.assert_allclose(boxes[k, :len(want_boxes)], want_boxes, atol=1e-7)
            assert (boxes[k, len(want_boxes):, 0] == -1).all()


def test_boxes_move_with_the_pixels(tmp_path):
    # no HSV change: the canvas stays 0.5, the image 0 and the rectangle's G 1
    layer = v2_layer(rectangles(tmp_path), hue=0, saturation=1, exposure=1, rgb=True,
                     batch_size=4)
    checked, gray = 0, 0
    for _ in range(5):
        data, boxes = layer()
        for image, rows in zip(data, boxes):
            gray += int(np.isclose(image, 0.5, atol=1e-6).all(0).any())    # the canvas shows
            c, x, y, w, h = rows[0]
            if c < 0 or w * 32 < 3 or h * 24 < 3:
                continue                                   # placed off the canvas, or nearly
            ys, xs = np.nonzero(image[1] > 0.75)
            want = [(x - w / 2) * 32, (y - h / 2) * 24, (x + w / 2) * 32, (y + h / 2) * 24]
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], want,
                                       atol=1.5)
            checked += 1
    assert checked >= 10 and gray >= 10
    assert (data >= 0).all() and (data <= 1).all()


def test_resumes_exactly(tmp_path):
    source = rectangles(tmp_path)
    first = v2_layer(source)
    first()
    state = first.data_state()
    expected = [[a.copy() for a in first()] for _ in range(3)]
    second = v2_layer(source)
    second.rng = np.random.default_rng(99)
    second.restore_data_state(state)
    for want in expected:
        for a, b in zip(second(), want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("extra,match", [
    ({"new_height": 0, "new_width": 0}, "DARKNET_V2 needs new_height and new_width"),
    ({"is_color": False}, "is_color: true"),
    ({"jitter": 1.0}, r"jitter must be in \[0, 1\) with DARKNET_V2, got 1"),
    ({"hue": 1.5}, r"hue must be in \[0, 1\], got 1.5"),
    ({"saturation": -1}, "saturation must be >= 0"),
    ({"exposure": -0.5}, "exposure must be >= 0")])
def test_bad_settings_say_which(tmp_path, extra, match):
    with pytest.raises(LayerError, match=match):
        v2_layer(rectangles(tmp_path), **extra)()


def test_zero_saturation_and_exposure_read_as_one(tmp_path):
    source = rectangles(tmp_path)
    a = v2_layer(source, saturation=0, exposure=0)()
    b = v2_layer(source, saturation=1, exposure=1)()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_jitter_past_v1s_limit(tmp_path):
    data, _ = v2_layer(rectangles(tmp_path), jitter=0.8)()
    assert data.shape == (2, 3, 24, 32)


def letterboxed_by_darknet(path, height, width):
    """libdarknet's letterbox_image of the image at ``path`` (R, G, B in [0, 1])."""
    lib = darknet()
    lib.letterbox_image.restype = Image
    lib.letterbox_image.argtypes = [Image, ctypes.c_int, ctypes.c_int]
    lib.free_image.argtypes = [Image]
    planes = np.ascontiguousarray(decode_image(path)[::-1]).astype(np.float32) / np.float32(255)
    boxed = lib.letterbox_image(as_image(planes), width, height)
    out = np.ctypeslib.as_array(boxed.data, (3 * height * width,)).reshape(3, height, width)
    out = out.copy()
    lib.free_image(boxed)
    return out


@needs_darknet
@pytest.mark.parametrize("size,net_hw,rgb", [((30, 40), (24, 32), True),      # same aspect
                                             ((30, 40), (32, 32), False),     # bars above/below
                                             ((45, 20), (32, 48), True),      # bars left/right
                                             ((30, 41), (32, 32), False)])    # a half offset
def test_test_phase_is_darknets_validate_letterbox(tmp_path, size, net_hw, rgb):
    source = rectangles(tmp_path, size=size)
    layer = v2_layer(source, phase="TEST", shuffle=False, rgb=rgb, new_height=net_hw[0],
                     new_width=net_hw[1], batch_size=4)
    data, boxes = layer()
    for i in range(4):
        path = str(tmp_path / "images" / f"{i}.png")
        want = letterboxed_by_darknet(path, *net_hw)            # the layer's scale: 1 / 255
        np.testing.assert_allclose(data[i], want if rgb else want[::-1], rtol=0, atol=1e-6)
        given = read_labels(label_path(path))
        # mapped back as Darknet maps its detections (correct_yolo_boxes), the boxes are the
        # label file's: IoUs against them are those Darknet's validation computes
        back = minicnn.detection.unletterbox(boxes[i, :1, 1:], size[1], size[0], net_hw[1],
                                             net_hw[0])
        np.testing.assert_allclose(back, given[:, 1:], atol=1e-6)
        assert boxes[i, 0, 0] == given[0, 0] and (boxes[i, 1:, 0] == -1).all()
        # and they sit on the rectangle's pixels in the letterboxed image (G is 1 there only)
        ys, xs = np.nonzero(data[i][1] > 0.75)
        _, x, y, w, h = boxes[i, 0]
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                                   [(x - w / 2) * net_hw[1], (y - h / 2) * net_hw[0],
                                    (x + w / 2) * net_hw[1], (y + h / 2) * net_hw[0]], atol=1.5)


def test_letterbox_keeps_class_only_rows():
    image = np.zeros((3, 10, 20), np.float32)
    canvas, boxes = darknet_letterbox(image, [[2, 0, 0, 0, 0], [1, 0.5, 0.5, 0.2, 0.4]], (20, 20))
    assert canvas.shape == (3, 20, 20) and (canvas[:, :5] == np.float32(0.5)).all()
    np.testing.assert_allclose(boxes, [[2, 0, 0, 0, 0], [1, 0.5, 0.5, 0.2, 0.2]])


# --- the converter's data layer, and converted nets that train with it --------------------------

def data_layer_of(prototxt):
    """The DetectionData layer the converter wrote into the prototxt's header comment."""
    with open(prototxt) as f:
        lines = f.read().splitlines()
    return "\n".join(line[4:] for line in lines if line.startswith("#   ")) + "\n"


def test_converter_writes_darknets_loader_settings(tmp_path):
    from tests.test_darknet import V2_CFG, V3_CFG
    cfg = tmp_path / "v2.cfg"
    cfg.write_text(V2_CFG.replace("channels=3\n", "channels=3\nbatch=64\nsubdivisions=8\n"
                                  "hue=.1\nsaturation = 1.5\nexposure = 1.25\n"))
    text = darknet_train_data(read_cfg(str(cfg)), "list.txt")
    assert 'source: "list.txt" batch_size: 8 shuffle: true new_height: 32 new_width: 32' in text
    assert ("augment: DARKNET_V2 jitter: 0.3 hue: 0.1 saturation: 1.5 exposure: 1.25 flip: true "
            "max_boxes: 30") in text and "rgb: true" in text
    cfg.write_text(V3_CFG.replace("ignore_thresh = .7\n", "ignore_thresh = .7\nmax=20\n")
                   + "max=40\njitter=.25\n")                    # keys of the last [yolo]
    text = darknet_train_data(read_cfg(str(cfg)))            # the last [yolo]'s keys, defaults
    assert ("augment: DARKNET_V2 jitter: 0.25 hue: 0.0 saturation: 1.0 exposure: 1.0 flip: true "
            "max_boxes: 40") in text and "batch_size: 1" in text
    v1 = "/usr/share/darknet/cfg/yolov1-tiny.cfg"
    if os.path.exists(v1):
        assert darknet_train_data(read_cfg(v1)) is None          # YOLOv1 keeps what it had


@pytest.mark.parametrize("which", ["v2", "v3"])
def test_converted_nets_train_with_darknets_loader(tmp_path, which):
    from tests.test_darknet import V2_CFG, V3_CFG, random_weights
    from tests.test_yolo_losses import rectangle_images
    cfg_text = (V2_CFG if which == "v2" else V3_CFG).replace(
        "channels=3\n", "channels=3\nbatch=4\nhue=.1\nsaturation=1.5\nexposure=1.5\n")
    cfg = tmp_path / "net.cfg"
    cfg.write_text(cfg_text)
    random_weights(str(cfg), str(tmp_path / "net.weights"), dead=False)
    prototxt, caffemodel = convert_darknet(str(cfg), str(tmp_path / "net.weights"),
                                           str(tmp_path / "out"))
    layer = data_layer_of(prototxt).replace('"train.txt"', f'"{rectangle_images(tmp_path)}"')
    assert "augment: DARKNET_V2" in layer and "batch_size: 4" in layer
    with open(prototxt) as f:
        deploy = f.read()
    text = re.sub(r'layer \{\n  name: "data"\n  type: "Input".*?\n\}\n', layer, deploy, count=1,
                  flags=re.DOTALL)
    text = re.sub(r'(type: "(?:Region|Yolo)"\n  bottom: "[^"]+"\n)  top: "([^"]+)"',
                  r'\1  bottom: "boxes"\n  top: "\2_loss"\n  loss_weight: 1', text)
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=0.0005,
                                      lr_policy="fixed", momentum=0.9, max_iter=30)
    minicnn.set_random_seed(1)
    solver = minicnn.SGDSolver(param, log=lambda message: None)
    solver.net.copy_from(caffemodel)
    assert solver.net.layer_dict["data"].darknet_v2
    heads = [layer.name for layer in solver.net.layers if layer.type in ("Region", "Yolo")]
    losses = []
    for _ in range(30):
        solver.step(1)
        losses.append(sum(float(solver.net.blobs[f"{h}_loss"].data) for h in heads))
    assert np.all(np.isfinite(losses)), losses
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


# --- multi-scale training (random=1) -------------------------------------------------------------

def test_random_size_follows_detector_c(tmp_path):
    source = rectangles(tmp_path)
    layer = v2_layer(source, random_size=True)
    layer()
    sizes = [layer.input_size(b) for b in range(60)]
    for k in range(6):                                    # a new size every 10 batches
        assert len(set(sizes[10 * k:10 * k + 10])) == 1
        assert sizes[10 * k][0] == sizes[10 * k][1] and sizes[10 * k][0] in range(320, 609, 32)
    assert {layer.input_size(10 * k)[0] for k in range(300)} == set(range(320, 609, 32))
    data, _ = layer._load(layer.sample_ids(0), 0)
    assert data.shape == (2, 3, *sizes[0])
    late = v2_layer(source, random_size=True, max_batches=215)    # its last 200 at 608
    late()
    assert [late.input_size(b) for b in (20, 29, 300)] == [(608, 608)] * 3   # 20 + 200 > 215
    assert late.input_size(10) == late.input_size(19) != late.input_size(20) or \
        late.input_size(10) == (608, 608) == late.input_size(0)       # drawn: 608 possible
    again = v2_layer(source, random_size=True)           # the sizes come with the seed
    again()
    again.restore_data_state(layer.data_state())
    assert [again.input_size(b) for b in range(60)] == sizes
    test = v2_layer(source, phase="TEST", random_size=True)
    assert test()[0].shape == (2, 3, 24, 32) and test.input_size(0) == (24, 32)
    with pytest.raises(LayerError, match="random_size .* needs augment: DARKNET_V2"):
        v2_layer(source, random_size=True, augment="DARKNET_V1", jitter=0.2)()


@pytest.mark.parametrize("which", ["v2", "v3"])
def test_converted_nets_train_across_a_size_change(tmp_path, which):
    from tests.test_darknet import V2_CFG, V3_CFG, random_weights
    from tests.test_yolo_losses import rectangle_images
    cfg_text = (V2_CFG if which == "v2" else V3_CFG).replace(
        "channels=3\n", "channels=3\nbatch=2\nmax_batches=1000\n") + "random=1\n"
    cfg = tmp_path / "net.cfg"
    cfg.write_text(cfg_text)
    random_weights(str(cfg), str(tmp_path / "net.weights"), dead=False)
    prototxt, caffemodel = convert_darknet(str(cfg), str(tmp_path / "net.weights"),
                                           str(tmp_path / "out"))
    layer = data_layer_of(prototxt).replace('"train.txt"', f'"{rectangle_images(tmp_path)}"')
    assert "random_size: true max_batches: 1000" in layer
    with open(prototxt) as f:
        text = re.sub(r'layer \{\n  name: "data"\n  type: "Input".*?\n\}\n', layer, f.read(),
                      count=1, flags=re.DOTALL)
    text = re.sub(r'(type: "(?:Region|Yolo)"\n  bottom: "[^"]+"\n)  top: "([^"]+)"',
                  r'\1  bottom: "boxes"\n  top: "\2_loss"\n  loss_weight: 1', text)
    param = caffe_pb2.SolverParameter(net_param=parse_text(text), base_lr=1e-5,
                                      lr_policy="fixed", momentum=0.9, max_iter=12)
    minicnn.set_random_seed(1)
    solver = minicnn.SGDSolver(param, log=lambda message: None)
    solver.net.copy_from(caffemodel)
    data = solver.net.layer_dict["data"]
    data.restore_data_state({"seed": 4, "batches_served": 0})
    assert data.input_size(0) != data.input_size(10)
    heads = [layer.name for layer in solver.net.layers if layer.type in ("Region", "Yolo")]
    losses, shapes = [], []
    for _ in range(12):
        solver.step(1)
        losses.append(sum(float(solver.net.blobs[f"{h}_loss"].data) for h in heads))
        shapes.append(solver.net.blobs["data"].shape[2:])
        for h in heads:
            layer = solver.net.layer_dict[h]
            if layer.type == "Yolo":              # Darknet's net.w, net.h: the new input size
                assert layer.loss_kwargs["net_width"] == shapes[-1][1]
                assert layer.loss_kwargs["net_height"] == shapes[-1][0]
    assert shapes[:10] == [data.input_size(0)] * 10 and shapes[10:] == [data.input_size(10)] * 2
    assert np.all(np.isfinite(losses)), losses
    assert min(losses[5:10]) < 0.5 * losses[0], losses      # it learns at the first size
