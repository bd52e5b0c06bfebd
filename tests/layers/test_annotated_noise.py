"""SSD's transform_param.noise_param (weiliu89/caffe branch ssd, im_transforms.cpp ApplyNoise,
run by DataTransformer::Transform on encoded images after the resize, before the crop).
References: each op as the OpenCV calls the fork makes (or plain NumPy) written here, pixel for
pixel; salt-and-pepper and crop draws scripted; one TRAIN case through distortion, expansion,
a batch sampler, resize, noise and crop rebuilt step by step with cv2."""

import numpy as np
import pytest

import minicnn
from minicnn.data import annotated as A
from minicnn.data.annotated import as_box, make_anno_datum
from minicnn.errors import MinicnnError
from minicnn.proto import caffe_pb2, parse_text
from tests.layers.test_annotated_data import (
    GROUPS,
    Scripted,
    data_net,
    forward,
    script,
    write_db,
)

cv2 = pytest.importorskip("cv2")
F = np.float32


def low_contrast(seed, shape):
    """A smooth, low-contrast image, so that equalization and CLAHE change it a lot."""
    rng = np.random.default_rng(seed)
    _, h, w = shape
    ramp = np.add.outer(np.arange(h) * 3, np.arange(w) * 2)[None]
    return (60 + ramp + rng.integers(0, 20, shape)).clip(0, 255).astype(np.uint8)


def hwc(chw):
    return np.ascontiguousarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))


def chw(img):
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)


def noise(**kw):
    sp = kw.pop("saltpepper_param", None)
    p = caffe_pb2.NoiseParameter(**kw)
    if sp is not None:
        p.saltpepper_param.fraction = sp[0]
        p.saltpepper_param.value.extend(sp[1])
    return p


# --- each op as the fork's OpenCV calls -----------------------------------------------------------

def ref_luma(img, op):
    if img.ndim == 2:
        return op(img)
    ycrcb = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    ycrcb[:, :, 0] = op(np.ascontiguousarray(ycrcb[:, :, 0]))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def ref_erode(img):
    """Minimum over the 3 x 3 cross (OpenCV's 3 x 3 ellipse), the border counting as 255."""
    x = img if img.ndim == 3 else img[:, :, None]
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), constant_values=255)
    h, w = x.shape[:2]
    out = np.minimum.reduce([p[1:h + 1, 1:w + 1], p[0:h, 1:w + 1], p[2:h + 2, 1:w + 1],
                             p[1:h + 1, 0:w], p[1:h + 1, 2:w + 2]])
    return out if img.ndim == 3 else out[:, :, 0]


def ref_jpeg(img, quality):
    _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


OPS = {
    "decolorize": ({"decolorize": True}, lambda x: np.repeat(
        cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)[:, :, None], 3, axis=2)),
    "gauss_blur": ({"gauss_blur": True}, lambda x: cv2.GaussianBlur(
        x, (7, 7), sigmaX=1.5, sigmaY=1.5, borderType=cv2.BORDER_REFLECT_101)),
    "hist_eq": ({"hist_eq": True}, lambda x: ref_luma(x, cv2.equalizeHist)),
    "clahe": ({"clahe": True}, lambda x: ref_luma(
        x, cv2.createCLAHE(clipLimit=4.0, tileGridSize=(8, 8)).apply)),
    "jpeg": ({"jpeg": 30.9}, lambda x: ref_jpeg(x, 30)),          # quality int(30.9) = 30
    "erode": ({"erode": True}, ref_erode),
    "posterize": ({"posterize": True}, lambda x: x // 64 * 64 + 32),
    "inverse": ({"inverse": True}, lambda x: 255 - x),
    "convert_to_hsv": ({"convert_to_hsv": True}, lambda x: cv2.cvtColor(x, cv2.COLOR_BGR2HSV)),
}
COLOUR_ONLY = {"decolorize", "jpeg", "convert_to_hsv"}


@pytest.mark.parametrize("op, channels", [(op, c) for op in sorted(OPS) for c in (3, 1)
                                         if c == 3 or op not in COLOUR_ONLY])
def test_each_op_alone_equals_the_forks_opencv_calls(op, channels):
    img = low_contrast(1, (channels, 96, 120))     # CLAHE's 8 x 8 tiles: 180 pixels each,
    kw, ref = OPS[op]                               # so clip limits 4 and 40 differ
    got = A.apply_noise(img, noise(**kw), Scripted())
    want = chw(ref(hwc(img)))
    assert got.dtype == np.uint8 and got.shape == img.shape
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, img)                    # the op did something


def test_jpeg_quality_is_truncated_not_rounded():
    img = low_contrast(2, (3, 16, 16))
    got = A.apply_noise(img, noise(jpeg=30.9), Scripted())
    assert not np.array_equal(got, chw(ref_jpeg(hwc(img), 31)))
    np.testing.assert_array_equal(got, chw(ref_jpeg(hwc(img), 30)))


def test_jpeg_quality_100_is_allowed():
    img = low_contrast(3, (3, 8, 8))
    A.check_noise(noise(jpeg=100))
    np.testing.assert_array_equal(A.apply_noise(img, noise(jpeg=100), Scripted()),
                                  chw(ref_jpeg(hwc(img), 100)))


@pytest.mark.parametrize("values,want", [((0, 128, 255), (0, 128, 255)), ((9,), (9, 9, 9))])
def test_saltpepper_draws_the_column_then_the_row(values, want):
    img = low_contrast(3, (3, 5, 8))                       # rows 5, cols 8
    # floor(0.1f * 8 * 5) = 4 pixels: (col, row) = (7, 1), (6, 4), (0, 2), (3, 3)
    draws = Scripted(r=[7, 1, 6, 4, 0, 2, 3, 3])
    got = A.apply_noise(img, noise(saltpepper=True, saltpepper_param=(0.1, values)), draws)
    assert draws.r == []                                    # exactly two draws per pixel
    expect = img.copy()
    for col, row in ((7, 1), (6, 4), (0, 2), (3, 3)):
        expect[:, row, col] = want
    np.testing.assert_array_equal(got, expect)


def test_saltpepper_on_a_gray_image_and_a_fraction_giving_no_pixel():
    img = low_contrast(4, (1, 6, 6))
    got = A.apply_noise(img, noise(saltpepper=True, saltpepper_param=(0.05, [200])),
                        Scripted(r=[5, 0]))                 # floor(0.05 * 36) = 1 pixel
    expect = img.copy()
    expect[0, 0, 5] = 200
    np.testing.assert_array_equal(got, expect)
    draws = Scripted(r=[1, 1])
    got = A.apply_noise(img, noise(saltpepper=True, saltpepper_param=(0.02, [200])), draws)
    np.testing.assert_array_equal(got, img)                 # floor(0.72) = 0: no draw
    assert draws.r == [1, 1]


def test_all_ops_run_in_the_forks_order():
    img = low_contrast(5, (3, 18, 21))
    p = noise(decolorize=True, gauss_blur=True, hist_eq=True, clahe=True, jpeg=60, erode=True,
              posterize=True, inverse=True, saltpepper=True, convert_to_hsv=True,
              saltpepper_param=(0.01, [10, 250, 90]))   # floor(0.01 * 21 * 18) = 3 pixels
    draws = Scripted(r=[20, 17, 0, 0, 4, 9])
    got = A.apply_noise(img, p, draws)
    x = hwc(img)
    x = cv2.cvtColor(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    x = cv2.GaussianBlur(x, (7, 7), 1.5)
    x = ref_luma(x, cv2.equalizeHist)
    x = ref_luma(x, cv2.createCLAHE(clipLimit=4.0).apply)
    x = ref_jpeg(x, 60)
    x = ref_erode(x)
    x = x // 64 * 64 + 32
    x = 255 - x
    for col, row in ((20, 17), (0, 0), (4, 9)):
        x[row, col] = (10, 250, 90)
    x = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
    np.testing.assert_array_equal(got, chw(x))


# --- through the layer ----------------------------------------------------------------------------

def test_prob_is_not_read_and_raw_records_are_left_alone(tmp_path):
    img = low_contrast(6, (3, 8, 10))
    enc = write_db(tmp_path / "enc", [make_anno_datum(img, GROUPS, encoding="png")])
    raw = write_db(tmp_path / "raw", [make_anno_datum(img, GROUPS)])
    inverted = (255 - img).astype(F)
    for prob in ("", "prob: 0", "prob: 1", "prob: 0.5"):
        data, _ = forward(data_net(enc, f"noise_param {{ {prob} inverse: true }}"))
        np.testing.assert_array_equal(data[0], inverted, err_msg=prob)
    data, _ = forward(data_net(raw, "noise_param { inverse: true }"))
    np.testing.assert_array_equal(data[0], img.astype(F))       # the fork's raw path: no noise
    data, _ = forward(data_net(enc, ""))
    np.testing.assert_array_equal(data[0], img.astype(F))


def test_draws_go_mirror_interp_saltpepper_then_crop(tmp_path, monkeypatch):
    img = low_contrast(7, (3, 9, 12))
    src = write_db(tmp_path / "db", [make_anno_datum(img, GROUPS, encoding="png")])
    net = data_net(src, "mirror: true crop_size: 5 resize_param { resize_mode: WARP height: 8 "
                        "width: 10 interp_mode: LINEAR interp_mode: NEAREST } "
                        "noise_param { saltpepper: true saltpepper_param { fraction: 0.05 "
                        "value: 255 } }", phase=minicnn.TRAIN)
    # mirror 1; interp 1 (NEAREST); floor(0.05 * 10 * 8) = 4 pixels (col, row); h_off 2, w_off 4
    pixels = [(9, 2), (0, 7), (5, 3), (6, 4)]
    s = script(monkeypatch, r=[1, 1, *[v for p in pixels for v in p], 2, 4])
    data, _ = forward(net)
    assert s.r == []
    x = cv2.resize(hwc(img), (10, 8), interpolation=cv2.INTER_NEAREST)
    for col, row in pixels:
        x[row, col] = 255
    want = chw(x)[:, 2:7, 4:9][:, :, ::-1]
    np.testing.assert_array_equal(data[0], want.astype(F))


def test_saltpepper_draws_resume_exactly(tmp_path):
    records = [make_anno_datum(low_contrast(k, (3, 12, 12)), GROUPS, encoding="png")
               for k in range(3)]
    src = write_db(tmp_path / "db", records)
    transform = ("noise_param { saltpepper: true saltpepper_param { fraction: 0.1 value: 0 "
                 "value: 255 value: 0 } }")
    a = data_net(src, transform, batch=2, phase=minicnn.TRAIN)
    forward(a)
    state = a.layers[0].data_state()
    later = [forward(a)[0] for _ in range(3)]
    b = data_net(src, transform, batch=2, phase=minicnn.TRAIN)
    b.layers[0].restore_data_state(state)
    for d0, d1 in zip(later, [forward(b)[0] for _ in range(3)]):
        np.testing.assert_array_equal(d0, d1)
    green = (later[0][:, 0] == 0) & (later[0][:, 1] == 255) & (later[0][:, 2] == 0)
    assert 0 < green.sum() <= 2 * 14                     # floor(0.1 * 144) per image
    # record 0 is item 1 of batch 1 and item 0 of batch 3: its salt falls elsewhere
    assert not np.array_equal(later[0][1], later[2][0])


def jpeg95(x):
    """The fork's EncodeCVMatToDatum(..., "jpg") and decode of a cropped or expanded image."""
    _, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def test_noise_comes_after_distortion_expansion_sampling_and_resize_before_the_crop(
        tmp_path, monkeypatch):
    img = low_contrast(8, (3, 12, 16))
    groups = [(1, [(0, as_box(0.3, 0.3, 0.7, 0.7), False)])]
    src = write_db(tmp_path / "db", [make_anno_datum(img, groups, encoding="png")])
    net = data_net(src, "mean_value: 10 crop_size: 6 "
                        "distort_param { brightness_prob: 1 brightness_delta: 20 } "
                        "expand_param { prob: 1 max_expand_ratio: 2 } "
                        "resize_param { resize_mode: WARP height: 10 width: 10 } "
                        "noise_param { inverse: true saltpepper: true "
                        "saltpepper_param { fraction: 0.0625 value: 0 } }",
                   "batch_sampler { sampler { min_scale: 0.5 max_scale: 0.5 } max_sample: 1 "
                   "max_trials: 1 }", phase=minicnn.TRAIN)
    # distort: order coin .75 (brightness first), brightness p 0 < 1, delta -20 + 40 * .75 = 10,
    # contrast, saturation, hue, channel order: p .9 (all off); expand: p 0, ratio 2 (24 x 32),
    # h_off 12 * .5 = 6, w_off 16 * .25 = 4; sampler: scale .5, ratio 1, offsets .25, .25
    u = [0.75, 0, 0.75, 0.9, 0.9, 0.9, 0.9, 0, 1.0, 0.5, 0.25, 0, 0, 0.5, 0.5]
    # sampler pick 0; 0.0625 * 10 * 10 = 6 pixels (col, row); crop h_off 3, w_off 1
    pixels = [(0, 0), (9, 9), (3, 5), (5, 3), (7, 1), (2, 8)]
    s = script(monkeypatch, u=u, r=[0, *[v for p in pixels for v in p], 3, 1])
    data, label = forward(net)
    assert s.u == [] and s.r == []
    x = hwc(img)
    x = jpeg95(np.clip(x.astype(np.int32) + 10, 0, 255).astype(np.uint8))   # distorted, stored
    canvas = np.full((24, 32, 3), 10, np.uint8)                           # filled with the mean
    canvas[6:18, 4:20] = x
    x = jpeg95(canvas)
    x = jpeg95(np.ascontiguousarray(x[6:18, 8:24]))                        # box (.25 .25 .75 .75)
    x = cv2.resize(x, (10, 10), interpolation=cv2.INTER_LINEAR)
    x = 255 - x
    for col, row in pixels:
        x[row, col] = 0
    want = chw(x)[:, 3:9, 1:7].astype(F) - F(10)
    np.testing.assert_array_equal(data[0], want)
    assert label.shape == (1, 1, 1, 8)


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("param,match", [
    ("convert_to_lab: true", "noise_param.convert_to_lab"),
    ("jpeg: 101", "noise_param.jpeg"),
    ("saltpepper: true", "noise_param.saltpepper needs saltpepper_param.value"),
    ("saltpepper: true saltpepper_param { fraction: 1.5 value: 0 }", "fraction"),
    ("saltpepper: true saltpepper_param { fraction: -0.1 value: 0 }", "fraction"),
    ("saltpepper_param { value: 300 }", "saltpepper_param.value"),
    ("saltpepper_param { value: -1 }", "saltpepper_param.value"),
    ("saltpepper_param { value: 1 value: 2 }", "2 values for images of 3 channels"),
])
def test_bad_noise_values_name_the_field(tmp_path, param, match):
    src = write_db(tmp_path / "db", [make_anno_datum(low_contrast(0, (3, 8, 8)), GROUPS,
                                                     encoding="png")])
    with pytest.raises(MinicnnError, match=match):
        data_net(src, f"noise_param {{ {param} }}")


@pytest.mark.parametrize("param,field", [("decolorize: true", "decolorize"), ("jpeg: 50", "jpeg"),
                                         ("convert_to_hsv: true", "convert_to_hsv")])
def test_colour_ops_on_gray_records_are_errors(tmp_path, param, field):
    src = write_db(tmp_path / "db", [make_anno_datum(low_contrast(0, (1, 8, 8)), GROUPS,
                                                     encoding="png")])
    with pytest.raises(MinicnnError, match=f"noise_param.{field} needs 3-channel"):
        data_net(src, f"noise_param {{ {param} }}")
    with pytest.raises(MinicnnError, match=f"noise_param.{field} needs 3-channel"):
        A.apply_noise(low_contrast(0, (1, 8, 8)), parse_text(param, "NoiseParameter"),
                      Scripted())


def test_gray_records_take_the_gray_ops(tmp_path):
    img = low_contrast(9, (1, 8, 8))
    src = write_db(tmp_path / "db", [make_anno_datum(img, GROUPS, encoding="png")])
    data, _ = forward(data_net(src, "force_gray: true noise_param { posterize: true }"))
    np.testing.assert_array_equal(data[0], (img // 64 * 64 + 32).astype(F))


# --- a training net with noise_param --------------------------------------------------------------

NOISY_TRAIN = '''
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param {{ prob: 1 resize_mode: WARP height: 16 width: 16
                   interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST }}
    noise_param {{ prob: 0.5 hist_eq: true jpeg: 75 gauss_blur: true
                  saltpepper: true saltpepper_param {{ fraction: 0.02 value: 0 }} }}
    emit_constraint {{ emit_type: CENTER }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5
      contrast_lower: 0.5 contrast_upper: 1.5 }}
    expand_param {{ prob: 0.5 max_expand_ratio: 2.0 }} }}
  data_param {{ source: "{src}" batch_size: 2 backend: LMDB }}
  annotated_data_param {{
    batch_sampler {{ max_sample: 1 max_trials: 1 }}
    batch_sampler {{ sampler {{ min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5
                                max_aspect_ratio: 2.0 }}
                    sample_constraint {{ min_jaccard_overlap: 0.1 }}
                    max_sample: 1 max_trials: 20 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "zero" type: "DummyData" top: "zero"
  dummy_data_param {{ shape {{ dim: 2 dim: 2 dim: 1 dim: 1 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "pool" bottom: "zero" top: "loss" }}
layer {{ name: "silence" type: "Silence" bottom: "label" }}
'''


def test_a_train_net_with_noise_param_trains(tmp_path):
    records = [make_anno_datum(low_contrast(k, (3, 20, 24)), GROUPS, encoding="jpg")
               for k in range(3)]
    src = write_db(tmp_path / "db", records)
    solver = caffe_pb2.SolverParameter(net_param=parse_text(NOISY_TRAIN.format(src=src)),
                                       base_lr=1e-6, lr_policy="fixed", max_iter=3,
                                       snapshot_after_train=False)
    s = minicnn.SGDSolver(solver)
    s.step(3)
    assert np.isfinite(float(s.net.blobs["loss"].data))
    assert s.net.blobs["data"].shape == (2, 3, 16, 16)
