"""SSD's AnnotatedData (weiliu89/caffe, branch ssd): AnnotatedDatum LMDBs read with the fork's
transform (resize policies, crop, mirror, mean, scale, emit_constraint), batch samplers and
expansion. References: hand-worked cases, a plain float32 transliteration of the fork's
TransformAnnotation written here, OpenCV's cv2.resize / copyMakeBorder for the pixels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
import minicnn.layers.annotated_data as annotated_layer
from minicnn.data import annotated as A
from minicnn.data.annotated import as_box, make_anno_datum
from minicnn.data.db import db_writer
from minicnn.data.errors import DataError
from minicnn.errors import MinicnnError
from minicnn.proto import caffe_pb2, parse_text

cv2 = pytest.importorskip("cv2")
F = np.float32

GROUPS = [(1, [(0, as_box(0.1, 0.2, 0.5, 0.6), False), (1, as_box(0.6, 0.1, 0.9, 0.9), True)]),
          (3, [(0, as_box(0.0, 0.0, 0.3, 0.3), False)])]


def write_db(path, records, backend="lmdb"):
    with db_writer(str(path), backend, overwrite=True) as w:
        for i, anno in enumerate(records):
            w.put(f"{i:08d}".encode(), anno.SerializeToString())
    return str(path)


def image(seed=0, shape=(3, 8, 10)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def data_net(source, transform="", anno="", batch=1, phase=minicnn.TEST, backend="LMDB",
             tops=("data", "label"), prefetch=0):
    # prefetch 0: no thread computes batches ahead, where it would take a later test's
    # scripted draws (script() patches the module's Draws)
    text = f'''layer {{ name: "data" type: "AnnotatedData" {" ".join(f'top: "{t}"' for t in tops)}
      data_param {{ source: "{source}" batch_size: {batch} backend: {backend}
                   prefetch: {prefetch} }}
      transform_param {{ {transform} }}
      annotated_data_param {{ {anno} }} }}'''
    return minicnn.Net(parse_text(text), phase=phase)


def forward(net):
    net.forward()
    return net.blobs["data"].data.copy(), net.blobs["label"].data.copy()


class Scripted:
    """Draws with given values: uniform() returns the next of ``u`` (mapped into [a, b) as
    a + (b - a) * u, as caffe_rng_uniform), rand() the next of ``r``."""

    def __init__(self, u=(), r=()):
        self.u, self.r = list(u), list(r)

    def uniform(self, a, b):
        a, b = F(a), F(b)
        return F(a + (b - a) * F(self.u.pop(0)))

    def rand(self, n):
        return self.r.pop(0) % n


def script(monkeypatch, u=(), r=()):
    s = Scripted(u, r)
    monkeypatch.setattr(annotated_layer, "Draws", lambda rng: s)
    return s


# --- a plain transliteration of the fork's TransformAnnotation (float32, one box) --------------

def fork_box(box, crop, mirror, emit_center=False):
    f = [F(v) for v in box]
    c = [F(v) for v in crop]
    if emit_center:
        xc, yc = (f[0] + f[2]) / F(2), (f[1] + f[3]) / F(2)
        if not (xc >= c[0] and xc <= c[2] and yc >= c[1] and yc <= c[3]):
            return None
    if f[0] >= c[2] or f[2] <= c[0] or f[1] >= c[3] or f[3] <= c[1]:
        return None
    sw, sh = c[2] - c[0], c[3] - c[1]
    p = [(f[0] - c[0]) / sw, (f[1] - c[1]) / sh, (f[2] - c[0]) / sw, (f[3] - c[1]) / sh]
    p = [min(max(v, F(0)), F(1)) for v in p]
    if not (p[2] - p[0]) * (p[3] - p[1]) > 0:
        return None
    if mirror:
        p = [F(1) - p[2], p[1], F(1) - p[0], p[3]]
    return p


def fork_rows(groups, crop, mirror=False, item=0, emit_center=False):
    rows = []
    for label, annos in groups:
        for inst, box, diff in annos:
            p = fork_box(box, crop, mirror, emit_center)
            if p is not None:
                rows.append([item, label, inst, *p, float(diff)])
    return rows


# --- TEST phase ---------------------------------------------------------------------------------

def test_raw_record_centre_crop_mean_scale_by_hand(tmp_path):
    img = image()
    src = write_db(tmp_path / "db", [make_anno_datum(img, GROUPS)])
    net = data_net(src, "mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5 "
                        "crop_size: 6")
    data, label = forward(net)
    want = (img[:, 1:7, 2:8].astype(F) - F([104, 117, 123])[:, None, None]) * F(0.5)
    np.testing.assert_array_equal(data[0], want)
    # crop x 2..8 of 10, y 1..7 of 8: box 1 (x 1..5, y 1.6..4.8) -> (0, 0.1, 0.5, 0.6333)
    np.testing.assert_allclose(label[0, 0, 0], [0, 1, 0, 0, 0.6 / 6, 3 / 6, 3.8 / 6, 0],
                               rtol=1e-6)
    assert label.shape == (1, 1, 3, 8)
    np.testing.assert_array_equal(label[0, 0, :, 1:3], [[1, 0], [1, 1], [3, 0]])
    assert label[0, 0, 1, 7] == 1                                   # difficult kept


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 8), st.integers(1, 10), st.booleans())
def test_boxes_equal_the_forks_arithmetic(tmp_path_factory, seed, crop_h, crop_w, center):
    rng = np.random.default_rng(seed)
    h, w = 8, 10
    boxes = np.sort(rng.random((5, 2, 2)), axis=1).astype(F)      # (xmin, ymin) <= (xmax, ymax)
    groups = [(int(k) + 1, [(0, as_box(*b[0], *b[1]), bool(k % 2))]) for k, b in
              enumerate(boxes)]
    src = write_db(tmp_path_factory.mktemp("db") / "db",
                   [make_anno_datum(image(seed, (3, h, w)), groups)])
    emit = "emit_constraint { emit_type: CENTER }" if center else ""
    net = data_net(src, f"crop_h: {crop_h} crop_w: {crop_w} {emit}")
    layer = net.layers[0]
    layer.crop_h, layer.crop_w = crop_h, crop_w          # crop_h/w: the encoded path's fields
    sample = layer._decode(layer.db.keys[0])
    sample.encoded = True                                 # take the cv path (no resize set)
    data, got = layer.transform(sample, A.Draws(np.random.default_rng(0)))
    ho, wo = (h - crop_h) // 2, (w - crop_w) // 2
    crop = [F(wo) / F(w), F(ho) / F(h), F(wo + crop_w) / F(w), F(ho + crop_h) / F(h)]
    want = fork_rows(groups, crop, emit_center=center)
    rows = A.label_rows([got])[0, 0]
    if not want:
        np.testing.assert_array_equal(rows, -np.ones((1, 8)))
    else:
        np.testing.assert_array_equal(rows, np.asarray(want, F))
    assert data.shape == (3, crop_h, crop_w)


def test_encoded_warp_resize_pixels_equal_opencv(tmp_path):
    img = image(1, (3, 12, 9))
    src = write_db(tmp_path / "db", [make_anno_datum(img, GROUPS, encoding="png")])
    net = data_net(src, "resize_param { resize_mode: WARP height: 7 width: 11 "
                        "interp_mode: LINEAR }")
    data, label = forward(net)
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    want = cv2.resize(hwc, (11, 7), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(data[0], want.astype(F))
    # WARP keeps normalized boxes: x * 9 * 11 / 9 / 11
    np.testing.assert_allclose(label[0, 0, :, 3:7],
                               [b for _, a in GROUPS for _, b, _ in a], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 6, 12), (3, 12, 6)])
def test_fit_large_size_and_pad_equals_opencv(tmp_path, shape):
    img = image(2, shape)
    groups = [(2, [(0, as_box(0.25, 0.5, 0.75, 1.0), False)])]
    src = write_db(tmp_path / "db", [make_anno_datum(img, groups, encoding="png")])
    net = data_net(src, "resize_param { resize_mode: FIT_LARGE_SIZE_AND_PAD height: 8 "
                        "width: 8 pad_value: 7 }")
    data, label = forward(net)
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    if shape[2] > shape[1]:                        # wide: 8 x 4, 2 rows of padding above
        r = cv2.resize(hwc, (8, 4), interpolation=cv2.INTER_LINEAR)
        want = cv2.copyMakeBorder(r, 2, 2, 0, 0, cv2.BORDER_CONSTANT, value=(7, 7, 7))
        box = [0.25, (2 + 0.5 * 4) / 8, 0.75, (2 + 4) / 8]
    else:
        r = cv2.resize(hwc, (4, 8), interpolation=cv2.INTER_LINEAR)
        want = cv2.copyMakeBorder(r, 0, 0, 2, 2, cv2.BORDER_CONSTANT, value=(7, 7, 7))
        box = [(2 + 1) / 8, 0.5, (2 + 3) / 8, 1.0]
    np.testing.assert_array_equal(data[0], want.transpose(2, 0, 1).astype(F))
    np.testing.assert_allclose(label[0, 0, 0], [0, 2, 0, *box, 0], rtol=1e-6)


def test_fit_small_size_keeps_the_aspect_ratio(tmp_path):
    img = image(3, (3, 10, 20))
    src = write_db(tmp_path / "db", [make_anno_datum(img, GROUPS, encoding="png")])
    net = data_net(src, "resize_param { resize_mode: FIT_SMALL_SIZE height: 5 width: 5 }")
    data, label = forward(net)
    want = cv2.resize(np.ascontiguousarray(img.transpose(1, 2, 0)), (10, 5),
                      interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(data[0], want.astype(F))
    np.testing.assert_allclose(label[0, 0, :, 3:7],
                               [b for _, a in GROUPS for _, b, _ in a], rtol=1e-6, atol=1e-7)


def test_records_without_type_give_datum_labels_and_leveldb_reads(tmp_path):
    pytest.importorskip("plyvel")
    img = image()
    annos = [make_anno_datum(img, [], label=k) for k in (4, 9)]
    for a in annos:
        a.ClearField("type")
    src = write_db(tmp_path / "db", annos, backend="leveldb")
    data, label = forward(data_net(src, batch=2, backend="LEVELDB"))
    np.testing.assert_array_equal(label.ravel(), [4, 9])
    assert label.shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(data[1], img.astype(F))


def test_a_batch_without_boxes_gives_one_row_of_minus_ones(tmp_path):
    src = write_db(tmp_path / "db", [make_anno_datum(image(), [])])
    _, label = forward(data_net(src))
    np.testing.assert_array_equal(label, -np.ones((1, 1, 1, 8), F))


# --- TRAIN: mirror, crop, samplers, expansion (draws scripted) -----------------------------------

def test_mirror_flips_pixels_and_boxes(tmp_path, monkeypatch):
    img = image()
    src = write_db(tmp_path / "db", [make_anno_datum(img, GROUPS)])
    net = data_net(src, "mirror: true crop_size: 6", phase=minicnn.TRAIN)
    script(monkeypatch, r=[1, 2, 0] * 10)         # mirror, then h_off 2 of 0..2, w_off 0
    data, label = forward(net)
    np.testing.assert_array_equal(data[0], img[:, 2:8, 0:6][:, :, ::-1].astype(F))
    crop = [0, F(2) / F(8), F(6) / F(10), 1]
    want = np.asarray(fork_rows(GROUPS, crop, mirror=True), F)
    np.testing.assert_array_equal(label[0, 0], want)
    # box 1 by hand: x 1..5 of crop 0..6 -> 1/6..5/6, flipped -> 1/6..5/6
    np.testing.assert_allclose(label[0, 0, 0, [3, 5]], [1 - 5 / 6, 1 - 1 / 6], rtol=1e-6)


def test_batch_sampler_crops_as_the_fork(tmp_path, monkeypatch):
    img = image(4, (3, 20, 10))
    src = write_db(tmp_path / "db", [make_anno_datum(img, GROUPS)])
    anno = '''batch_sampler { sampler { min_scale: 0.5 max_scale: 0.5 }
                              sample_constraint { min_jaccard_overlap: 0.1 }
                              max_sample: 1 max_trials: 5 }'''
    net = data_net(src, "", anno, phase=minicnn.TRAIN)
    # trial 1: scale .5 ratio 1 -> 0.5 x 0.5 at (0.5, 0.5) * (1 - 0.5): box (.25 .25 .75 .75)
    script(monkeypatch, u=[0, 0, 0.5, 0.5] * 4, r=[0] * 8)
    data, label = forward(net)
    # crop: x int(2.5)=2, width int(7.5-2.5)=5; y int(5)=5, height int(15-5)=10
    np.testing.assert_array_equal(data[0], img[:, 5:15, 2:7].astype(F))
    crop = [F(0.25), F(0.25), F(0.75), F(0.75)]
    np.testing.assert_array_equal(label[0, 0], np.asarray(fork_rows(GROUPS, crop), F))


def test_sampler_constraint_follows_the_forks_found_flag():
    c = caffe_pb2.SampleConstraint(min_jaccard_overlap=0.5, min_sample_coverage=0.99)
    box = as_box(0, 0, 0.5, 0.5)
    first = as_box(0, 0, 0.45, 0.5)           # jaccard .9 passes, sample coverage .9 fails
    far = as_box(0.9, 0.9, 1, 1)              # fails the jaccard test: `found` stays true
    assert A.satisfy_sample_constraint(box, [first, far], c)
    assert not A.satisfy_sample_constraint(box, [far], c)
    assert A.satisfy_sample_constraint(box, [], caffe_pb2.SampleConstraint())
    c2 = caffe_pb2.SampleConstraint(max_jaccard_overlap=0.5)
    assert not A.satisfy_sample_constraint(box, [first], c2)


def test_sample_box_clamps_the_aspect_ratio():
    s = caffe_pb2.Sampler(min_scale=0.5, max_scale=0.5, min_aspect_ratio=0.1,
                          max_aspect_ratio=0.1)
    box = A.sample_box(s, Scripted(u=[0, 0, 0, 1]))
    # ratio raised to scale^2 = .25: width .5 * .5 = .25, height .5 / .5 = 1
    np.testing.assert_allclose(box, [0, 0, 0.25, 1.0], rtol=1e-6)


def test_expansion_places_the_image_on_the_canvas(tmp_path, monkeypatch):
    img = image(5, (3, 4, 5))
    groups = [(1, [(0, as_box(0, 0, 1, 1), False)])]
    src = write_db(tmp_path / "db", [make_anno_datum(img, groups)])
    net = data_net(src, "expand_param { prob: 1 max_expand_ratio: 2 } "
                        "resize_param { height: 8 width: 10 }", phase=minicnn.TRAIN)
    script(monkeypatch, u=[0.5, 1.0, 0.75, 0.5] * 2)   # prob, ratio 2, h_off 3, w_off 2.5 -> 2
    data, label = forward(net)
    want = np.full((3, 8, 10), 32, np.uint8)            # the fork's raw canvas: byte 32
    want[:, 3:7, 2:7] = img
    np.testing.assert_array_equal(data[0], want.astype(F))
    np.testing.assert_allclose(label[0, 0, 0, 3:7], [0.2, 3 / 8, 0.7, 7 / 8], rtol=1e-6)


def test_encoded_expansion_fills_the_mean(tmp_path, monkeypatch):
    img = np.full((3, 4, 4), 60, np.uint8)
    src = write_db(tmp_path / "db", [make_anno_datum(img, [], encoding="png")])
    net = data_net(src, "mean_value: 20 expand_param { prob: 1 max_expand_ratio: 4 }",
                   phase=minicnn.TRAIN)              # gray: JPEG's chroma keeps the values
    script(monkeypatch, u=[0, 1.0, 0, 0] * 2)           # ratio 4: a 16 x 16 canvas, image at 0, 0
    data, _ = forward(net)
    assert data.shape == (1, 3, 16, 16)
    # the canvas away from the image is the mean: 0 after mean subtraction, up to JPEG's error
    np.testing.assert_allclose(data[0, :, 8:, 8:].mean(axis=(1, 2)), 0, atol=1.5)
    np.testing.assert_allclose(data[0, :, :3, :3].mean(axis=(1, 2)), 40, atol=1.5)


def test_emit_min_overlap_drops_boxes():
    crop = as_box(0, 0, 0.5, 1)
    emit = caffe_pb2.EmitConstraint(emit_type="MIN_OVERLAP", emit_overlap=0.5)
    groups = [(1, [(0, as_box(0.3, 0, 0.7, 1), False), (1, as_box(0.1, 0, 0.6, 1), False)])]
    got = A.transform_groups(groups, crop, emit=emit)
    assert [inst for _, a in got for inst, _, _ in a] == [1]     # 0.5 covered is not > 0.5



def test_emit_min_overlap_is_the_share_of_the_box_inside_the_crop():
    # BBoxCoverage(box, crop): a box wholly inside the crop is kept although it covers only
    # 0.4 of the crop (coverage the other way round, or divided by the crop, would drop it)
    crop = as_box(0, 0, 0.5, 1)
    emit = caffe_pb2.EmitConstraint(emit_type="MIN_OVERLAP", emit_overlap=0.5)
    got = A.transform_groups([(1, [(0, as_box(0.3, 0, 0.5, 1), False)])], crop, emit=emit)
    np.testing.assert_allclose(got[0][1][0][1], [0.6, 0, 1, 1], rtol=1e-6)


def test_emit_center_keeps_a_box_centred_on_the_crops_edge():
    crop = as_box(0.25, 0.25, 0.75, 0.75)
    emit = caffe_pb2.EmitConstraint(emit_type="CENTER")
    left = (0, as_box(0.0, 0.4, 0.5, 0.6), False)          # centre x 0.25: on the edge, kept
    right = (1, as_box(0.5, 0.4, 1.0, 0.6), False)         # centre x 0.75: kept
    out = (2, as_box(0.0, 0.4, 0.49, 0.6), False)          # centre x 0.245: dropped
    got = A.transform_groups([(1, [left, right, out])], crop, emit=emit)
    assert [inst for _, a in got for inst, _, _ in a] == [0, 1]
    np.testing.assert_allclose(got[0][1][0][1], [0, 0.3, 0.5, 0.7], rtol=1e-6)


def test_a_box_of_no_area_is_dropped():
    # ProjectBBox is false when the projected box has size 0 (here: xmin == xmax)
    groups = [(1, [(0, as_box(0.3, 0.2, 0.3, 0.6), False)]),
              (2, [(0, as_box(0.3, 0.2, 0.4, 0.6), False)])]
    got = A.transform_groups(groups, as_box(0, 0, 1, 1))
    assert [label for label, _ in got] == [2]


def test_sampler_constraint_bounds_are_inclusive_and_object_coverage_is_of_the_object():
    box = as_box(0, 0, 0.5, 0.5)
    assert A.satisfy_sample_constraint(box, [box], caffe_pb2.SampleConstraint(
        min_jaccard_overlap=1.0))                          # jaccard 1 is not < 1
    small = as_box(0, 0, 0.25, 0.25)                       # inside box: object coverage 1,
    c = caffe_pb2.SampleConstraint(min_object_coverage=0.9)  # sample coverage 0.25
    assert A.satisfy_sample_constraint(box, [small], c)
    assert not A.satisfy_sample_constraint(box, [small], caffe_pb2.SampleConstraint(
        min_sample_coverage=0.9))


def test_samplers_stop_at_max_sample_and_skip_use_original_image_false():
    take_two = caffe_pb2.BatchSampler(max_sample=2, max_trials=5)
    skipped = caffe_pb2.BatchSampler(use_original_image=False, max_trials=5)
    boxes = A.generate_batch_samples(GROUPS, [take_two, skipped],
                                     A.Draws(np.random.default_rng(0)))
    assert len(boxes) == 2
    assert len(A.generate_batch_samples(GROUPS, [caffe_pb2.BatchSampler(max_trials=5)],
                                        A.Draws(np.random.default_rng(0)))) == 5


def test_extrapolate_box_scales_x_by_the_crop_width_and_y_by_its_height():
    rp = caffe_pb2.ResizeParameter(resize_mode=caffe_pb2.ResizeParameter.FIT_SMALL_SIZE,
                                   height=10, width=10, height_scale=5, width_scale=5)
    # a 20 x 40 image fits 10 x 20; the crop (half the height) is 20 wide and 5 high
    got = A.extrapolate_box(rp, 20, 40, as_box(0, 0, 1, 0.5), as_box(0.1, 0.2, 0.3, 0.4))
    np.testing.assert_allclose(got, [0.4, 0.2, 1.2, 0.4], rtol=1e-6)


@pytest.mark.parametrize("shape,pads", [((3, 6, 12), (2, 3, 0, 0)), ((3, 12, 6), (0, 0, 2, 3))])
def test_fit_large_size_and_pad_puts_the_odd_row_below_or_right(shape, pads):
    img = image(4, shape)
    rp = caffe_pb2.ResizeParameter(
        resize_mode=caffe_pb2.ResizeParameter.FIT_LARGE_SIZE_AND_PAD, height=9, width=9,
        pad_value=[7])
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    size = (9, 4) if shape[2] > shape[1] else (4, 9)
    r = cv2.resize(hwc, size, interpolation=cv2.INTER_LINEAR)
    want = cv2.copyMakeBorder(r, *pads, cv2.BORDER_CONSTANT, value=(7, 7, 7))
    np.testing.assert_array_equal(A.apply_resize(img, rp), want.transpose(2, 0, 1))


# --- a net, and errors ----------------------------------------------------------------------------

SSD_TRAIN = '''
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param {{ prob: 1 resize_mode: WARP height: 16 width: 16
                   interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST
                   interp_mode: CUBIC interp_mode: LANCZOS4 }}
    emit_constraint {{ emit_type: CENTER }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5
      contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18
      saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5
      random_order_prob: 0.0 }}
    expand_param {{ prob: 0.5 max_expand_ratio: 4.0 }} }}
  data_param {{ source: "{src}" batch_size: 2 backend: LMDB }}
  annotated_data_param {{
    batch_sampler {{ max_sample: 1 max_trials: 1 }}
    batch_sampler {{ sampler {{ min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5
                                max_aspect_ratio: 2.0 }}
                    sample_constraint {{ min_jaccard_overlap: 0.1 }}
                    max_sample: 1 max_trials: 50 }}
    label_map_file: "labelmap_voc.prototxt" }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "zero" type: "DummyData" top: "zero"
  dummy_data_param {{ shape {{ dim: 2 dim: 2 dim: 1 dim: 1 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "pool" bottom: "zero" top: "loss" }}
layer {{ name: "silence" type: "Silence" bottom: "label" }}
'''


def test_an_ssd_style_train_net_trains(tmp_path):
    records = [make_anno_datum(image(k, (3, 20, 24)), GROUPS, encoding="jpg") for k in range(3)]
    src = write_db(tmp_path / "db", records)
    solver = caffe_pb2.SolverParameter(net_param=parse_text(SSD_TRAIN.format(src=src)),
                                       base_lr=1e-6, lr_policy="fixed", max_iter=4,
                                       snapshot_after_train=False)
    s = minicnn.SGDSolver(solver)
    s.step(4)
    assert np.isfinite(float(s.net.blobs["loss"].data))
    label = s.net.blobs["label"].data
    assert label.shape[-1] == 8 and label.shape[:2] == (1, 1)
    assert s.net.blobs["data"].shape == (2, 3, 16, 16)
    boxes = label[0, 0][label[0, 0, :, 0] >= 0]
    assert np.all((boxes[:, 3:7] >= 0) & (boxes[:, 3:7] <= 1))


@pytest.mark.parametrize("transform,anno,batch,match", [
    ("noise_param { convert_to_lab: true }", "", 1, "noise_param.convert_to_lab"),
    ("resize_param { resize_mode: FIT_SMALL_SIZE height: 4 width: 4 }", "", 2, "batch_size 1"),
    ("resize_param { height: 0 width: 4 }", "", 1, "height and width"),
    ("expand_param { max_expand_ratio: 1 }", "", 1, "max_expand_ratio"),
    ("crop_size: 11", "", 1, "larger than the image"),
    ("", "batch_sampler { sampler { min_scale: 0 } }", 1, "min_scale"),
    ("", "batch_sampler { sampler { max_scale: 1.5 } }", 1, "max_scale <= 1"),
])
def test_bad_parameters_name_the_field(tmp_path, transform, anno, batch, match):
    src = write_db(tmp_path / "db", [make_anno_datum(image(), GROUPS)])
    with pytest.raises(MinicnnError, match=match):
        data_net(src, transform, anno, batch=batch)


def test_a_raw_record_of_another_size_than_resize_param_is_an_error(tmp_path):
    src = write_db(tmp_path / "db", [make_anno_datum(image(), GROUPS)])
    with pytest.raises(MinicnnError, match="encoded records only"):
        forward(data_net(src, "resize_param { height: 4 width: 4 }"))


def test_a_record_that_is_not_an_annotated_datum_is_an_error(tmp_path):
    with db_writer(str(tmp_path / "db"), "lmdb") as w:
        w.put(b"0", b"\xff\xff\xff")
    with pytest.raises((DataError, MinicnnError), match="record '0'"):
        data_net(str(tmp_path / "db"))


def test_crop_truncates_offset_and_size_separately():
    img = image(7, (3, 4, 10))
    sample = A.Sample(img, False, GROUPS, -1, True)
    got = A.crop_sample(sample, as_box(0.27, 0, 0.72, 1))
    # x 2.7 .. 7.2: offset int(2.7) = 2, width int(7.2 - 2.7) = 4 (not 7 - 2)
    np.testing.assert_array_equal(got.image, img[:, :, 2:6])


def test_anno_type_overrides_records_without_a_type(tmp_path):
    anno = make_anno_datum(image(), GROUPS)
    anno.ClearField("type")
    src = write_db(tmp_path / "db", [anno])
    _, label = forward(data_net(src, anno="anno_type: BBOX"))
    assert label.shape == (1, 1, 3, 8)
    np.testing.assert_array_equal(label[0, 0, :, 1], [1, 1, 3])


# --- distortion -----------------------------------------------------------------------------------

def test_distort_brightness_then_contrast_in_the_first_order():
    img = image(8, (3, 5, 6))
    dp = caffe_pb2.DistortionParameter(brightness_prob=1, brightness_delta=32, contrast_prob=1,
                                       contrast_lower=0.5, contrast_upper=1.5)
    # order coin 0.75 (> 0.5: brightness, contrast, saturation, hue); brightness p=0 < 1,
    # delta -32 + 64 * 0.75 = 16; contrast p=0, 0.5 + 0.25 = 0.75; saturation, hue, order: no
    got = A.apply_distort(img, dp, Scripted(u=[0.75, 0, 0.75, 0, 0.25, 0.9, 0.9, 0.9]))
    step = np.clip(np.rint(img.astype(np.float64) + 16), 0, 255)
    want = np.clip(np.rint(step * 0.75), 0, 255)
    np.testing.assert_array_equal(got, want.astype(np.uint8))



def test_distort_contrast_of_zero_blacks_the_image():
    # AdjustContrast skips only deltas within 1e-3 of 1: delta 0 makes every pixel 0
    img = image(11, (3, 4, 5))
    dp = caffe_pb2.DistortionParameter(contrast_prob=1, contrast_lower=0, contrast_upper=0.5)
    # order coin 0.75; brightness p 0.9 (prob 0: no); contrast p 0, delta 0 + 0.5 * 0 = 0
    got = A.apply_distort(img, dp, Scripted(u=[0.75, 0.9, 0, 0, 0.9, 0.9, 0.9]))
    np.testing.assert_array_equal(got, np.zeros_like(img))


def test_distort_second_order_saturation_hue_then_contrast_and_channel_order():
    img = image(9, (3, 4, 4))
    dp = caffe_pb2.DistortionParameter(saturation_prob=1, saturation_lower=1.5,
                                       saturation_upper=1.5, hue_prob=1, hue_delta=10,
                                       contrast_prob=1, contrast_lower=2, contrast_upper=2,
                                       random_order_prob=1)
    # coin 0.25: brightness (skip: prob 0), saturation 1.5, hue -10 + 20 * 0.8 = 6, contrast 2;
    # then channels shuffled by rand() 0, 0: order [1, 2, 0] after swaps (2<->0), (1<->0)
    got = A.apply_distort(img, dp, Scripted(u=[0.25, 0.5, 0, 0.3, 0, 0.8, 0, 0.1, 0],
                                            r=[0, 0]))
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    hsv = cv2.cvtColor(hwc, cv2.COLOR_BGR2HSV).astype(np.float64)
    hsv[:, :, 1] = np.clip(np.rint(hsv[:, :, 1] * 1.5), 0, 255)
    step = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    hsv = cv2.cvtColor(step, cv2.COLOR_BGR2HSV).astype(np.float64)
    hsv[:, :, 0] = np.clip(hsv[:, :, 0] + 6, 0, 255)
    step = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float64)
    want = np.clip(np.rint(step * 2), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, want[[1, 2, 0]])


def test_distort_leaves_raw_records_and_runs_on_encoded_ones(tmp_path, monkeypatch):
    img = image(10, (3, 8, 8))
    dp = "distort_param { brightness_prob: 1 brightness_delta: 40 }"
    raw = write_db(tmp_path / "raw", [make_anno_datum(img, GROUPS)])
    script(monkeypatch, u=[0.9, 0, 1.0, 0.9, 0.9, 0.9, 0.9] * 2)
    data, _ = forward(data_net(raw, dp, phase=minicnn.TRAIN))
    np.testing.assert_array_equal(data[0], img.astype(F))
    enc = write_db(tmp_path / "enc", [make_anno_datum(np.full((3, 8, 8), 100, np.uint8), GROUPS,
                                                      encoding="png")])
    script(monkeypatch, u=[0.9, 0, 1.0, 0.9, 0.9, 0.9, 0.9] * 2)   # brightness +40
    data, _ = forward(data_net(enc, dp, phase=minicnn.TRAIN))
    np.testing.assert_allclose(data[0].mean(), 140, atol=1)         # through JPEG again


def test_train_batches_resume_exactly(tmp_path):
    records = [make_anno_datum(image(k, (3, 12, 12)), GROUPS, encoding="png") for k in range(3)]
    src = write_db(tmp_path / "db", records)
    transform = ("mirror: true crop_size: 8 resize_param { height: 12 width: 12 } "
                 "expand_param { prob: 0.5 max_expand_ratio: 2 }")
    anno = ("batch_sampler { sampler { min_scale: 0.5 } "
            "sample_constraint { min_jaccard_overlap: 0.1 } max_trials: 10 }")
    a = data_net(src, transform, anno, batch=2, phase=minicnn.TRAIN)
    first = [forward(a) for _ in range(3)]
    state = a.layers[0].data_state()
    later = [forward(a) for _ in range(2)]
    b = data_net(src, transform, anno, batch=2, phase=minicnn.TRAIN)
    b.layers[0].restore_data_state(state)
    for (d0, l0), (d1, l1) in zip(later, [forward(b) for _ in range(2)]):
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(l0, l1)
    assert any(not np.array_equal(first[0][1], f[1]) for f in first[1:])   # draws vary


@pytest.mark.parametrize("with_opencv", [True, False])
def test_jpeg_roundtrip_is_opencvs_quality_95_with_or_without_opencv(with_opencv, monkeypatch):
    # a cropped, expanded or distorted encoded record is stored again as JPEG (the fork's
    # EncodeCVMatToDatum: imencode's quality 95); without OpenCV, Pillow encodes (RGB order)
    # and decodes. Both libjpegs may round an IDCT differently: within 2 of OpenCV's result.
    # A natively decoded RGBA record (4 channels, B G R A) loses its alpha: OpenCV's JPEG
    # encoder writes B, G, R of a 4-channel image (Pillow's failed: 'cannot write mode RGBA
    # as JPEG').
    colour, gray, bgra = image(3, (3, 24, 32)), image(4, (1, 24, 32)), image(5, (4, 24, 32))
    want = []
    for img in (colour, gray, bgra):
        _, buf = cv2.imencode(".jpg", np.ascontiguousarray(img.transpose(1, 2, 0)))
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        want.append((out[:, :, None] if out.ndim == 2 else out).transpose(2, 0, 1))
    assert want[2].shape == (3, 24, 32)
    if not with_opencv:
        monkeypatch.setitem(__import__("sys").modules, "cv2", None)     # import cv2 fails
    for img, ref in zip((colour, gray, bgra), want):
        got = A._jpeg_roundtrip(img)
        assert got.shape == ref.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - ref).max() <= 2


def test_make_anno_datum_and_decode_sample():
    def flat(groups):
        return [(lab, [(i, np.asarray(b).tolist(), d) for i, b, d in annos])
                for lab, annos in groups]

    img = image(5, (3, 6, 7))
    encoded = make_anno_datum(img, GROUPS, label=2, encoding="png")
    # EncodeCVMatToDatum records the encoded image's channels, height and width
    d = encoded.datum
    assert d.encoded and (d.channels, d.height, d.width) == (3, 6, 7) and d.label == 2
    for anno in (encoded, make_anno_datum(img, GROUPS, label=2)):
        sample = A.decode_sample(anno.SerializeToString(), True, "db record 7")
        np.testing.assert_array_equal(sample.image, img)
        assert sample.encoded == anno.datum.encoded and sample.label == 2 and sample.has_type
        assert flat(sample.groups) == flat(GROUPS)
    for value in (b"\xff\xff\xff", b"\x0a\x05ab"):
        with pytest.raises(DataError, match="db record 7: not an AnnotatedDatum record"):
            A.decode_sample(value, True, "db record 7")


# --- natively decoded gray and RGBA records among colour ones -------------------------------------

def native_record(hwc):
    """An AnnotatedDatum holding a PNG of ``hwc`` as it is (convert_annoset --encode-type png
    stores PNG files unchanged: gray 1 channel, RGBA 4 when decoded natively)."""
    anno = make_anno_datum(image(0, (3, 2, 2)), GROUPS, encoding="png")
    anno.datum.data = cv2.imencode(".png", hwc)[1].tobytes()
    return anno


def native_db(path, shapes):
    rng = np.random.default_rng(21)
    return write_db(path, [native_record(rng.integers(0, 256, s, dtype=np.uint8))
                           for s in shapes])


def test_a_gray_or_rgba_record_among_colour_ones_names_the_record_and_force_color(tmp_path):
    """The errors said '3 mean_value values for data with 1 channels' (naming neither the
    record nor force_color); in a batch of several records the fork CHECKs each record's
    shape against the batch's first (before the mean), in a batch of one its Transform CHECKs
    the mean values against the channels, and so does its ExpandImage (an expanded RGBA
    record passed here: stored again as JPEG, it had 3 channels when the mean was checked)."""
    mean = "mean_value: 104 mean_value: 117 mean_value: 123"
    src = native_db(tmp_path / "db", [(8, 10, 3), (8, 10), (8, 10, 4), (8, 10, 3)])
    with pytest.raises(MinicnnError) as e:
        forward(data_net(src, mean, batch=4))
    message = str(e.value)
    assert "record '00000001' of" in message and "batch, record '00000000' of" in message
    assert "(1, 8, 10)" in message and "force_color" in message
    net = data_net(src, mean)
    assert forward(net)[0].shape == (1, 3, 8, 10)
    with pytest.raises(MinicnnError, match=r"record '00000001' of .* decodes to 1 channel\(s\), "
                                           r"which 3 mean_value values do not fit.*force_color"):
        forward(net)
    rgba = native_db(tmp_path / "rgba", [(8, 10, 3), (8, 10, 4)])
    net = data_net(rgba, mean + " expand_param { prob: 1 max_expand_ratio: 2 }",
                   phase=minicnn.TRAIN)
    assert forward(net)[0].shape[:2] == (1, 3)
    with pytest.raises(MinicnnError, match=r"record '00000001' of .* decodes to 4 channel\(s\), "
                                           r"which 3 mean_value values do not fit.*force_color"):
        forward(net)
    net = data_net(src, mean + " force_color: true", batch=4)
    assert forward(net)[0].shape == (4, 3, 8, 10)


def test_a_batch_of_other_channels_than_the_set_up_shape_warns_once(tmp_path):
    """As the Data layer: a batch shaped by a natively decoded gray or RGBA record has its
    channels (the fork reshapes the top by each batch's first record), with a warning."""
    import warnings
    src = native_db(tmp_path / "db", [(8, 10, 3), (8, 10), (8, 10, 4)])
    net = data_net(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert forward(net)[0].shape == (1, 3, 8, 10)
    with pytest.warns(UserWarning, match=r"record '00000001' of .* 1 channel.* gave 3.*"
                                         r"force_color"):
        assert forward(net)[0].shape == (1, 1, 8, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert forward(net)[0].shape == (1, 4, 8, 10)


def test_distort_takes_gray_and_rgba_images_as_the_fork_does(tmp_path):
    """The fork's ApplyDistort runs brightness and contrast on any image; saturation and hue
    convert BGR(A) to HSV and back (a 4-channel image comes out as B, G, R; OpenCV refuses a
    gray one); the channel shuffle CHECKs 3 channels. Every image that was not 3-channel was
    refused here ('distort_param needs colour (3-channel) images, got 4')."""
    bgra = image(12, (4, 5, 6))
    dp = caffe_pb2.DistortionParameter(brightness_prob=1, brightness_delta=32, saturation_prob=1,
                                       saturation_lower=1.5, saturation_upper=1.5)
    u = [0.75, 0, 0.75, 0.9, 0, 0, 0.9, 0.9]
    got = A.apply_distort(bgra, dp, Scripted(u=list(u)))
    np.testing.assert_array_equal(got, A.apply_distort(bgra[:3].copy(), dp, Scripted(u=list(u))))
    bright = caffe_pb2.DistortionParameter(brightness_prob=1, brightness_delta=32)
    for img in (bgra, image(13, (1, 5, 6))):
        got = A.apply_distort(img, bright, Scripted(u=[0.75, 0, 0.75, 0.9, 0.9, 0.9, 0.9]))
        want = np.clip(img.astype(np.int64) + 16, 0, 255)
        np.testing.assert_array_equal(got, want.astype(np.uint8))
    with pytest.raises(DataError, match="saturation_prob > 0 needs colour"):
        A.apply_distort(image(13, (1, 5, 6)), dp, Scripted(u=list(u)))
    order = caffe_pb2.DistortionParameter(random_order_prob=0.5)
    with pytest.raises(DataError, match="random_order_prob > 0 needs colour"):
        A.apply_distort(bgra, order, Scripted(u=[0.75, 0.9, 0.9, 0.9, 0.9, 0.9]))
    src = native_db(tmp_path / "db", [(8, 10, 3), (8, 10, 4), (8, 10)])
    net = data_net(src, "distort_param { saturation_prob: 0.5 saturation_lower: 0.5 "
                   "saturation_upper: 1.5 }", batch=2, phase=minicnn.TRAIN)
    with pytest.warns(UserWarning, match="record '00000001' .* drops its alpha"):
        assert forward(net)[0].shape == (2, 3, 8, 10)      # the RGBA record through JPEG
    with pytest.raises(MinicnnError, match=r"record '00000002' of .*saturation_prob > 0 needs "
                                           r"colour.*force_color"):
        forward(net)


@pytest.mark.parametrize("step", ["distort_param { brightness_prob: 1 brightness_delta: 32 }",
                                  "expand_param { prob: 1 max_expand_ratio: 2 }"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_rgba_record_whose_alpha_a_jpeg_round_trip_drops_is_warned_about_once(
        tmp_path, step, prefetch):
    """The fork accepts an RGBA record after a colour one in a batch when a distortion,
    expansion or crop stored it again as JPEG (3 channels: its shape CHECK against the
    batch's first record passes), reading it as B, G, R without its alpha; so does minicnn,
    with one warning at the batch that holds the first such record (no word before; the
    channel warning does not fire, the batch has the set-up shape's 3 channels).
    force_color decodes every record to 3 channels: quiet."""
    import warnings
    src = native_db(tmp_path / "db", [(8, 10, 3), (8, 10, 3), (8, 10, 3), (8, 10, 4),
                                      (8, 10, 3), (8, 10, 4)])
    step += " resize_param { resize_mode: WARP height: 8 width: 10 }"    # expanded: one size
    net = data_net(src, step, batch=2, phase=minicnn.TRAIN, prefetch=prefetch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert forward(net)[0].shape == (2, 3, 8, 10)
    with pytest.warns(UserWarning, match=r"record '00000003' of .* decodes to 4 channels .*"
                                         r"JPEG.*drops? (its|the) alpha.*force_color") as record:
        assert forward(net)[0].shape == (2, 3, 8, 10)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert forward(net)[0].shape == (2, 3, 8, 10)          # records 4 and 5: once only
        net = data_net(src, step + " force_color: true", batch=2, phase=minicnn.TRAIN,
                       prefetch=prefetch)
        for _ in range(3):
            assert forward(net)[0].shape == (2, 3, 8, 10)


def test_an_rgba_record_that_a_jpeg_round_trip_makes_colour_is_the_forks_shape_error(tmp_path):
    """The fork shapes a batch by its first record as stored (InferBlobShape, native decode: 4
    channels for RGBA) and CHECKs every distorted, expanded or cropped sample against it; those
    are stored again as JPEG, which drops the alpha (3 channels), so an RGBA record first in
    its batch aborts it. Here its batches came out with 3 channels, warned about as a record
    that 'decodes to 3 channel(s) where the first record ... gave 4' (itself). With
    FIT_SMALL_SIZE the fork reshapes by each sample, so the 3 channels pass."""
    src = native_db(tmp_path / "db", [(8, 10, 4), (8, 10, 4)])
    for step in ("distort_param { brightness_prob: 1 brightness_delta: 32 }",
                 "expand_param { prob: 1 max_expand_ratio: 2 }"):
        net = data_net(src, step, phase=minicnn.TRAIN)
        with pytest.raises(MinicnnError, match=r"record '00000000' of .* has 3 channel\(s\) "
                                               r"after .* decodes to 4\b.*JPEG.*force_color"):
            forward(net)
    net = data_net(src, "distort_param { brightness_prob: 1 brightness_delta: 32 } "
                   "resize_param { resize_mode: FIT_SMALL_SIZE height: 8 width: 10 }",
                   phase=minicnn.TRAIN)
    with pytest.warns(UserWarning) as record:
        assert forward(net)[0].shape[:2] == (1, 3)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and "gave 4" in messages[0] and "drops its alpha" in messages[1]


def test_channel_checks_of_distort_and_noise_skip_raw_records_and_name_force_gray(tmp_path):
    """distort_param and noise_param change encoded records only (the fork leaves raw ones),
    so a raw gray record with saturation or decolorize is read as it is; a gray record that
    force_gray made is an error without the native decode's explanation."""
    raw = write_db(tmp_path / "raw", [make_anno_datum(image(14, (1, 8, 10)), GROUPS)] * 2)
    for step in ("distort_param { saturation_prob: 1 saturation_lower: 0.5 "
                 "saturation_upper: 1.5 }", "noise_param { decolorize: true }"):
        data, _ = forward(data_net(raw, step, phase=minicnn.TRAIN))
        np.testing.assert_array_equal(data[0], image(14, (1, 8, 10)).astype(F))
    src = native_db(tmp_path / "db", [(8, 10, 3)])
    net = data_net(src, "force_gray: true distort_param { saturation_prob: 1 "
                   "saturation_lower: 0.5 saturation_upper: 1.5 }", phase=minicnn.TRAIN)
    with pytest.raises(MinicnnError, match="saturation_prob > 0 needs colour") as e:
        forward(net)
    assert "decodes to its file's own channels" not in str(e.value)
