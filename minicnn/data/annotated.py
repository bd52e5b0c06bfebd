"""SSD's annotated data (Wei Liu's fork, weiliu89/caffe branch ssd): AnnotatedDatum records,
their normalized boxes, and the fork's sample pipeline for the AnnotatedData layer.

An AnnotatedDatum holds a Datum (raw bytes or an encoded image) and annotation groups: per class
label (``group_label``) a list of annotations, each an ``instance_id`` and a NormalizedBBox
(xmin, ymin, xmax, ymax relative to the image, ``difficult``). A sample goes through, in the
fork's order (annotated_data_layer.cpp, data_transformer.cpp, sampler.cpp, bbox_util.cpp,
im_transforms.cpp):

0. distort_param (encoded records): brightness, contrast, saturation, hue and channel order
   changed at random, in one of two orders.
1. expand_param (TRAIN augmentation): with probability ``prob`` the image is placed at a random
   integer offset on a canvas ``max_expand_ratio``-times larger at most, filled with the mean;
   boxes are re-normalized to the canvas.
2. batch_sampler: each sampler draws up to ``max_trials`` boxes (scale, aspect ratio, offset)
   and keeps those meeting its sample_constraint (Jaccard overlap / coverage with any object),
   at most ``max_sample``; one kept box is picked and the image cropped to it, the boxes
   projected into the crop (those whose centre or overlap fails ``emit_constraint`` dropped).
3. the transform: mirror's coin flip (in both phases when asked), resize_param (WARP,
   FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD) and then noise_param (``apply_noise``) for encoded
   images, crop_size (random in TRAIN, centred in TEST), (x - mean) * scale; boxes follow the
   resize policy, the crop and the flip.

Box arithmetic is single precision, as the fork's ``float`` fields and locals are, so TEST-phase
labels equal the fork's bit for bit. Random draws go through a ``Draws`` object (the fork's
caffe_rng_uniform and Rand); they need not follow Caffe's generator, and tests script them.

The fork's quirks kept: an expanded *raw* (not encoded) datum's canvas is filled with byte 32
(the fork builds it as a string of spaces) instead of the mean; a cropped or expanded *encoded*
image is encoded again as JPEG (quality 95, OpenCV's default) before the transform, so its pixels
go through that compression; a sampler's constraint is met as soon as one object passes the
first of its tests (the fork keeps ``found`` across objects); the ``difficult`` of a VOC object
is the one read before its bndbox; noise_param ignores its ``prob`` (the fork never reads it:
every op asked is applied to every encoded image, in TEST too) and leaves raw records alone (the
fork's raw-datum transform has no noise step). Deliberate differences: a sampled box's width or
height past 1 (a float rounding) is clipped to 1, where the fork's caffe_rng_uniform check
aborts; noise_param values the fork crashes on or misreads are errors: convert_to_lab (a float32
image whose bytes the fork's transform reads as pixels), saltpepper without a value (read from
an empty list) or with values outside 0..255 or a fraction outside [0, 1], jpeg above 100
(OpenCV clamps it), and decolorize, convert_to_hsv or jpeg on gray images (OpenCV rejects the
first two; jpeg decodes to colour, which the fork then reads as one channel).
"""

import numpy as np

from minicnn.data.datum import decode_datum, decode_image, resize_image
from minicnn.data.errors import DataError, need
from minicnn.errors import LayerError
from minicnn.proto import caffe_pb2

F = np.float32
_ONE, _ZERO = F(1), F(0)


# --- NormalizedBBox helpers (bbox_util.cpp), in float32 ----------------------------------------
# A box is a float32 array (xmin, ymin, xmax, ymax).

def as_box(xmin, ymin, xmax, ymax):
    return np.array([xmin, ymin, xmax, ymax], F)


def box_size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return _ZERO
    return F((b[2] - b[0]) * (b[3] - b[1]))


def clip_box(b):
    return np.minimum(np.maximum(b, _ZERO), _ONE).astype(F)


def intersect_box(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return np.zeros(4, F)
    return as_box(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def jaccard_overlap(a, b):
    i = intersect_box(a, b)
    w, h = F(i[2] - i[0]), F(i[3] - i[1])
    if w > 0 and h > 0:
        inter = F(w * h)
        return F(inter / (box_size(a) + box_size(b) - inter))
    return _ZERO


def box_coverage(a, b):
    """The part of box a that box b covers (BBoxCoverage(a, b))."""
    inter = box_size(intersect_box(a, b))
    if inter > 0:
        return F(inter / box_size(a))
    return _ZERO


def project_box(src, b):
    """b in the coordinates of src, clipped to [0, 1]; None when it misses src or is empty."""
    if b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]:
        return None
    sw, sh = F(src[2] - src[0]), F(src[3] - src[1])
    p = clip_box(as_box((b[0] - src[0]) / sw, (b[1] - src[1]) / sh,
                        (b[2] - src[0]) / sw, (b[3] - src[1]) / sh))
    return p if box_size(p) > 0 else None


def locate_box(src, b):
    sw, sh = F(src[2] - src[0]), F(src[3] - src[1])
    return as_box(src[0] + b[0] * sw, src[1] + b[1] * sh, src[0] + b[2] * sw,
                  src[1] + b[3] * sh)


def meet_emit_constraint(src, b, emit):
    if emit.emit_type == "CENTER":
        xc, yc = F((b[0] + b[2]) / F(2)), F((b[1] + b[3]) / F(2))
        return bool(src[0] <= xc <= src[2] and src[1] <= yc <= src[3])
    return bool(box_coverage(b, src) > F(emit.emit_overlap))        # MIN_OVERLAP


# --- resize policy (im_transforms.cpp) ---------------------------------------------------------

def infer_new_size(rp, width, height):
    """(new_width, new_height) of an image resized by resize_param (InferNewSize)."""
    w, h = int(rp.width), int(rp.height)
    if rp.resize_mode == "FIT_SMALL_SIZE":
        orig_aspect, aspect = F(width) / F(height), F(w) / F(h)
        if orig_aspect < aspect:
            h = int(F(w) / orig_aspect)
        else:
            w = int(orig_aspect * F(h))
    return w, h


def update_box_by_resize_policy(rp, old_w, old_h, b):
    """A box of an old_w x old_h image, in the coordinates of the image resize_param makes
    (UpdateBBoxByResizePolicy). FIT_LARGE_SIZE_AND_PAD's tall-image branch uses the corrected
    padding (new_width - aspect * new_height) / 2 of the fork's later commits."""
    nh, nw = F(rp.height), F(rp.width)
    ow, oh = F(old_w), F(old_h)
    orig_aspect, new_aspect = F(ow / oh), F(nw / nh)
    x0, y0, x1, y1 = F(b[0] * ow), F(b[1] * oh), F(b[2] * ow), F(b[3] * oh)
    mode = rp.resize_mode
    if mode == "FIT_SMALL_SIZE":
        if orig_aspect < new_aspect:
            nh = F(nw / orig_aspect)
        else:
            nw = F(orig_aspect * nh)
    if mode in ("WARP", "FIT_SMALL_SIZE"):
        x0, x1 = max(_ZERO, F(x0 * nw / ow)), min(nw, F(x1 * nw / ow))
        y0, y1 = max(_ZERO, F(y0 * nh / oh)), min(nh, F(y1 * nh / oh))
    elif orig_aspect > new_aspect:                                   # FIT_LARGE_SIZE_AND_PAD
        pad = F((nh - nw / orig_aspect) / F(2))
        x0, x1 = max(_ZERO, F(x0 * nw / ow)), min(nw, F(x1 * nw / ow))
        y0 = F(pad + max(_ZERO, F(y0 * (nh - F(2) * pad) / oh)))
        y1 = F(pad + min(nh, F(y1 * (nh - F(2) * pad) / oh)))
    else:
        pad = F((nw - orig_aspect * nh) / F(2))
        x0 = F(pad + max(_ZERO, F(x0 * (nw - F(2) * pad) / ow)))
        x1 = F(pad + min(nw, F(x1 * (nw - F(2) * pad) / ow)))
        y0, y1 = max(_ZERO, F(y0 * nh / oh)), min(nh, F(y1 * nh / oh))
    return as_box(x0 / nw, y0 / nh, x1 / nw, y1 / nh)


def extrapolate_box(rp, height, width, crop, b):
    """ExtrapolateBBox: only FIT_SMALL_SIZE with height_scale and width_scale changes b."""
    hs, ws = F(rp.height_scale), F(rp.width_scale)
    if not (hs > 0 and ws > 0 and rp.resize_mode == "FIT_SMALL_SIZE"):
        return b
    orig_aspect = F(width) / F(height)
    rh, rw = F(rp.height), F(rp.width)
    if orig_aspect < F(rw / rh):
        rh = F(rw / orig_aspect)
    else:
        rw = F(rh * orig_aspect)
    ch, cw = F(rh * (crop[3] - crop[1])), F(rw * (crop[2] - crop[0]))
    if cw < ws or ch < hs:
        raise DataError(f"resize_param: the crop ({cw} x {ch}) is smaller than width_scale x "
                        f"height_scale ({ws} x {hs})")
    return as_box(b[0] * cw / ws, b[1] * ch / hs, b[2] * cw / ws, b[3] * ch / hs)


_CV_INTERP = {"AREA": "INTER_AREA", "NEAREST": "INTER_NEAREST", "CUBIC": "INTER_CUBIC",
              "LANCZOS4": "INTER_LANCZOS4"}


def _resize(chw, width, height, interp):
    if interp == "LINEAR" and chw.dtype == np.uint8:
        return resize_image(chw, height, width)             # OpenCV's bilinear, exactly
    cv2 = need("cv2", "opencv-python")
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
    flag = getattr(cv2, _CV_INTERP.get(interp, "INTER_LINEAR"))
    out = cv2.resize(hwc, (int(width), int(height)), interpolation=flag)
    return np.ascontiguousarray(out.reshape(height, width, -1).transpose(2, 0, 1))


def apply_resize(chw, rp, interp="LINEAR"):
    """ApplyResize on a CHW uint8 image."""
    c, h, w = chw.shape
    nh, nw = int(rp.height), int(rp.width)
    mode = rp.resize_mode
    if mode == "WARP":
        return _resize(chw, nw, nh, interp)
    orig_aspect, new_aspect = F(w) / F(h), F(nw) / F(nh)
    if mode == "FIT_SMALL_SIZE":
        if orig_aspect < new_aspect:
            return _resize(chw, nw, int(np.floor(F(nw) / orig_aspect)), interp)
        return _resize(chw, int(np.floor(orig_aspect * F(nh))), nh, interp)
    pad_val = np.zeros(c)
    if len(rp.pad_value):
        if len(rp.pad_value) not in (1, c):
            raise LayerError(f"resize_param: {len(rp.pad_value)} pad_value values for an "
                             f"image of {c} channels: give one, or one per channel")
        pad_val = np.resize(np.asarray(rp.pad_value, np.float64), c)
    np_mode = {"CONSTANT": "constant", "MIRRORED": "reflect",
               "REPEAT_NEAREST": "edge"}[rp.pad_mode]
    if orig_aspect > new_aspect:
        rh = int(np.floor(F(nw) / orig_aspect))
        out = _resize(chw, nw, rh, interp)
        top = int(np.floor((nh - rh) / 2.0))
        pads = ((top, nh - rh - top), (0, 0))
    else:
        rw = int(np.floor(orig_aspect * F(nh)))
        out = _resize(chw, rw, nh, interp)
        left = int(np.floor((nw - rw) / 2.0))
        pads = ((0, 0), (left, nw - rw - left))
    if np_mode != "constant":
        return np.pad(out, ((0, 0), *pads), mode=np_mode)
    fill = np.clip(np.rint(pad_val), 0, 255).astype(np.uint8)
    return np.stack([np.pad(out[k], pads, constant_values=fill[k]) for k in range(c)])


# --- random draws --------------------------------------------------------------------------------

class Draws:
    """The fork's two kinds of random draws: ``uniform(a, b)`` (caffe_rng_uniform, float32) and
    ``rand(n)`` (Rand(n) / caffe_rng_rand() % n), from a NumPy generator."""

    def __init__(self, rng):
        self.rng = rng

    def uniform(self, a, b):
        a, b = F(a), F(b)
        return F(a + (b - a) * F(self.rng.random()))

    def rand(self, n):
        return int(self.rng.integers(n))


# --- annotations ------------------------------------------------------------------------------
# groups: a list of (group_label, [(instance_id, box, difficult), ...]), in the record's order.

def read_groups(anno_datum):
    groups = []
    for g in anno_datum.annotation_group:
        annos = [(a.instance_id, as_box(a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax),
                  bool(a.bbox.difficult)) for a in g.annotation]
        groups.append((g.group_label, annos))
    return groups


def transform_groups(groups, crop, mirror=False, emit=None, resize=None, size=None):
    """TransformAnnotation: each box (through the resize policy first when ``resize`` is given,
    with ``size`` = (width, height) of the image the boxes are relative to) kept if it meets
    ``emit`` and overlaps ``crop``, projected into ``crop``, flipped when ``mirror``. Groups left
    empty are dropped."""
    out = []
    for label, annos in groups:
        kept = []
        for instance_id, box, difficult in annos:
            if resize is not None:
                box = update_box_by_resize_policy(resize, size[0], size[1], box)
            if emit is not None and not meet_emit_constraint(crop, box, emit):
                continue
            proj = project_box(crop, box)
            if proj is None:
                continue
            if mirror:
                proj = as_box(_ONE - proj[2], proj[1], _ONE - proj[0], proj[3])
            if resize is not None:
                proj = extrapolate_box(resize, size[1], size[0], crop, proj)
            kept.append((instance_id, proj, difficult))
        if kept:
            out.append((label, kept))
    return out


# --- batch samplers (sampler.cpp) ---------------------------------------------------------------

def satisfy_sample_constraint(box, objects, c):
    has_j = c.HasField("min_jaccard_overlap") or c.HasField("max_jaccard_overlap")
    has_s = c.HasField("min_sample_coverage") or c.HasField("max_sample_coverage")
    has_o = c.HasField("min_object_coverage") or c.HasField("max_object_coverage")
    if not (has_j or has_s or has_o):
        return True
    found = False                     # kept across objects, as in the fork
    for obj in objects:
        if has_j:
            v = jaccard_overlap(box, obj)
            if c.HasField("min_jaccard_overlap") and v < F(c.min_jaccard_overlap):
                continue
            if c.HasField("max_jaccard_overlap") and v > F(c.max_jaccard_overlap):
                continue
            found = True
        if has_s:
            v = box_coverage(box, obj)
            if c.HasField("min_sample_coverage") and v < F(c.min_sample_coverage):
                continue
            if c.HasField("max_sample_coverage") and v > F(c.max_sample_coverage):
                continue
            found = True
        if has_o:
            v = box_coverage(obj, box)
            if c.HasField("min_object_coverage") and v < F(c.min_object_coverage):
                continue
            if c.HasField("max_object_coverage") and v > F(c.max_object_coverage):
                continue
            found = True
        if found:
            return True
    return found


def check_sampler(s):
    if not (s.max_scale >= s.min_scale and s.min_scale > 0 and s.max_scale <= 1):
        raise LayerError(f"batch_sampler: need 0 < min_scale <= max_scale <= 1, got "
                         f"min_scale {s.min_scale}, max_scale {s.max_scale}")
    if not (s.max_aspect_ratio >= s.min_aspect_ratio and s.min_aspect_ratio > 0):
        raise LayerError(f"batch_sampler: need 0 < min_aspect_ratio <= max_aspect_ratio, got "
                         f"{s.min_aspect_ratio}, {s.max_aspect_ratio}")


def sample_box(s, draws):
    """SampleBBox: a box of random scale and aspect ratio at a random place in [0, 1]^2."""
    scale = draws.uniform(s.min_scale, s.max_scale)
    ratio = draws.uniform(s.min_aspect_ratio, s.max_aspect_ratio)
    ratio = max(ratio, F(float(scale) ** 2))
    ratio = min(ratio, F(1 / float(scale) ** 2))
    w = min(F(float(scale) * np.sqrt(float(ratio))), _ONE)   # > 1 only by rounding: see above
    h = min(F(float(scale) / np.sqrt(float(ratio))), _ONE)
    w_off = draws.uniform(0, _ONE - w)
    h_off = draws.uniform(0, _ONE - h)
    return as_box(w_off, h_off, w_off + w, h_off + h)


def generate_batch_samples(groups, batch_samplers, draws):
    """GenerateBatchSamples: every sampler's boxes meeting its constraint, in sampler order."""
    objects = [box for _, annos in groups for _, box, _ in annos]
    unit = as_box(0, 0, 1, 1)
    sampled = []
    for bs in batch_samplers:
        if not bs.use_original_image:
            continue
        found = 0
        for _ in range(bs.max_trials):
            if bs.HasField("max_sample") and found >= bs.max_sample:
                break
            box = locate_box(unit, sample_box(bs.sampler, draws))
            if satisfy_sample_constraint(box, objects, bs.sample_constraint):
                found += 1
                sampled.append(box)
    return sampled


# --- the sample pipeline --------------------------------------------------------------------

def _jpeg_roundtrip(chw):
    """Encode as JPEG (quality 95, OpenCV's imencode default) and decode again, as the fork
    stores a cropped, expanded or distorted encoded image (EncodeCVMatToDatum(..., "jpg")). A
    4-channel image (a natively decoded file with alpha) comes back with 3: OpenCV's JPEG
    encoder writes its B, G, R and drops the alpha."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        _, buf = cv2.imencode(".jpg", np.ascontiguousarray(chw.transpose(1, 2, 0)))
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        img = img[:, :, None] if img.ndim == 2 else img
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    import io
    Image = need("PIL.Image", "Pillow")
    hwc = chw.transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(hwc[:, :, 0] if chw.shape[0] == 1
                                               else hwc[:, :, 2::-1]))     # B G R (A) -> RGB
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    return decode_image(out.getvalue(), None if chw.shape[0] == 1 else True)


class Sample:
    """One record on its way through the pipeline: the image (CHW), whether the record holds it
    encoded, its annotation groups and its Datum label."""

    def __init__(self, image, encoded, groups, label, has_type):
        self.image, self.encoded, self.groups = image, encoded, groups
        self.label, self.has_type = label, has_type


def decode_sample(value, is_color, where):
    """A Sample from an AnnotatedDatum's wire bytes."""
    from minicnn.errors import MinicnnError
    from minicnn.proto import parse_binary
    try:
        anno = parse_binary(value, "AnnotatedDatum", path=where)
    except DataError:
        raise
    except MinicnnError as e:
        raise DataError(f"not an AnnotatedDatum record ({e})", where) from None
    image, label = decode_datum(anno.datum, is_color, where=where)
    if anno.HasField("type") and anno.type != "BBOX":
        raise DataError(f"annotation type {anno.type} is not supported (only BBOX)", where)
    return Sample(image, bool(anno.datum.encoded), read_groups(anno), label,
                  anno.HasField("type"))


def _convert(x, alpha, beta):
    """cv::Mat::convertTo(-1, alpha, beta) on uint8: saturate(round(alpha * x + beta))."""
    y = x.astype(F) * F(alpha) + F(beta)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _hsv_channel(chw, k, alpha, beta):
    """Channel k of the image in OpenCV's 8-bit HSV, through convertTo, and back to BGR."""
    cv2 = need("cv2", "opencv-python")
    hsv = cv2.cvtColor(np.ascontiguousarray(chw.transpose(1, 2, 0)), cv2.COLOR_BGR2HSV)
    hsv[:, :, k] = _convert(hsv[:, :, k], alpha, beta)
    return np.ascontiguousarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).transpose(2, 0, 1))


def distort_channel_problem(dp, channels):
    """Why distort_param cannot run on images of ``channels`` channels, or None. The fork's
    brightness and contrast steps take any image; its saturation and hue steps convert BGR (or
    BGRA, whose alpha they drop) to HSV and back, which OpenCV refuses for a gray image; its
    channel shuffle CHECKs 3 channels. A step whose probability is 0 never runs; one above 0
    makes the fork abort on the first image it draws for, so it is an error here for every
    image (a 4-channel one with random_order_prob, which the fork shuffles only when a
    saturation or hue step made it 3-channel before, included)."""
    if channels == 3:
        return None
    steps = [f"{f} > 0" for f in ("saturation_prob", "hue_prob", "random_order_prob")
             if getattr(dp, f) > 0 and (channels != 4 or f == "random_order_prob")]
    if channels not in (1, 4):
        return f"distort_param needs 1, 3 or 4-channel images, got {channels} channel(s)"
    if not steps:
        return None
    return (f"distort_param with {' and '.join(steps)} needs colour (3-channel) images (the "
            f"fork's HSV conversion and channel shuffle), got {channels} channel(s)")


def apply_distort(chw, dp, draws):
    """ApplyDistort on a CHW uint8 BGR image: a coin (> 0.5) picks the order brightness,
    contrast, saturation, hue or brightness, saturation, hue, contrast; each step happens with
    its probability and draws its amount; then the channels are shuffled with
    random_order_prob. As in the fork, saturation always goes through HSV and back (its
    ``fabs(delta - 1) != 1e-3`` test is always true), and hue is shifted with saturation at
    0 and 255 in OpenCV's 0..180 hue. A gray image takes brightness and contrast only, a
    4-channel (B, G, R, A) one all but the shuffle: its saturation or hue step gives B, G, R
    (``distort_channel_problem``), as OpenCV's BGR to HSV conversion does in the fork."""
    img = chw
    problem = distort_channel_problem(dp, img.shape[0])
    if problem:
        raise DataError(problem)

    def brightness(img):
        if draws.uniform(0, 1) < F(dp.brightness_prob):
            if dp.brightness_delta < 0:
                raise LayerError("distort_param.brightness_delta must be non-negative")
            delta = draws.uniform(-dp.brightness_delta, dp.brightness_delta)
            if abs(delta) > 0:
                return _convert(img, 1, delta)
        return img

    def contrast(img):
        if draws.uniform(0, 1) < F(dp.contrast_prob):
            if not dp.contrast_upper >= dp.contrast_lower >= 0:
                raise LayerError("distort_param: need 0 <= contrast_lower <= contrast_upper")
            delta = draws.uniform(dp.contrast_lower, dp.contrast_upper)
            if abs(delta - F(1)) > F(1e-3):
                return _convert(img, delta, 0)
        return img

    def saturation(img):
        if draws.uniform(0, 1) < F(dp.saturation_prob):
            if not dp.saturation_upper >= dp.saturation_lower >= 0:
                raise LayerError("distort_param: need 0 <= saturation_lower <= "
                                 "saturation_upper")
            return _hsv_channel(img, 1, draws.uniform(dp.saturation_lower,
                                                      dp.saturation_upper), 0)
        return img

    def hue(img):
        if draws.uniform(0, 1) < F(dp.hue_prob):
            if dp.hue_delta < 0:
                raise LayerError("distort_param.hue_delta must be non-negative")
            delta = draws.uniform(-dp.hue_delta, dp.hue_delta)
            if abs(delta) > 0:
                return _hsv_channel(img, 0, 1, delta)
        return img

    steps = (brightness, contrast, saturation, hue) if draws.uniform(0, 1) > F(0.5) \
        else (brightness, saturation, hue, contrast)
    for step in steps:
        img = step(img)
    if draws.uniform(0, 1) < F(dp.random_order_prob):
        order = [0, 1, 2]
        for i in range(2, 0, -1):                  # a random permutation (Fisher-Yates)
            j = draws.rand(i + 1)
            order[i], order[j] = order[j], order[i]
        img = img[order]
    return np.ascontiguousarray(img)


def distort_sample(sample, dp, draws):
    """DistortImage: encoded records only (the fork logs an error for raw ones and leaves
    them), stored again as JPEG (so a 4-channel image comes out with B, G, R)."""
    if not sample.encoded:
        return sample
    image = _jpeg_roundtrip(apply_distort(sample.image, dp, draws))
    return Sample(image, True, sample.groups, sample.label, sample.has_type)


# --- noise_param (im_transforms.cpp ApplyNoise) ------------------------------------------------

_NOISE = "transform_param.noise_param"
_POSTERIZE = (np.arange(256) // 64 * 64 + 32).astype(np.uint8)    # colorReduce's div = 64


def check_noise(npar):
    """LayerErrors for noise_param values the fork crashes on or misreads (see apply_noise)."""
    if npar.convert_to_lab:
        raise LayerError(f"{_NOISE}.convert_to_lab is not supported: the fork's Lab image is "
                         "float32 and its transform reads those floats' bytes as 8-bit pixels")
    if npar.jpeg > 100:
        raise LayerError(f"{_NOISE}.jpeg is a JPEG quality: at most 100 (0 or less for none), "
                         f"got {npar.jpeg:g}")
    sp = npar.saltpepper_param
    for v in sp.value:
        if not -1 < v < 256:
            raise LayerError(f"{_NOISE}.saltpepper_param.value must be a byte value (0..255), "
                             f"got {v:g}")
    if npar.saltpepper:
        if not len(sp.value):
            raise LayerError(f"{_NOISE}.saltpepper needs saltpepper_param.value (the fork reads "
                             "the noise colour from an empty list)")
        if not 0 <= sp.fraction <= 1:
            raise LayerError(f"{_NOISE}.saltpepper_param.fraction must be in [0, 1], got "
                             f"{sp.fraction:g}")


def noise_channel_problem(npar, channels):
    """Why noise_param cannot run on images of ``channels`` channels, or None."""
    nv = len(npar.saltpepper_param.value)
    if nv and nv not in (1, channels):
        return (f"{_NOISE}.saltpepper_param has {nv} values for images of {channels} "
                "channels: give one, or one per channel")
    if channels != 3:
        for field, why in (("decolorize", "BGR to gray"), ("convert_to_hsv", "BGR to HSV"),
                           ("jpeg", "decoded as colour")):
            on = npar.jpeg > 0 if field == "jpeg" else getattr(npar, field)
            if on:
                return (f"{_NOISE}.{field} needs 3-channel (colour) images ({why}), got "
                        f"{channels} channel(s)")
    return None


def saltpepper_count(sp, rows, cols):
    """How many pixels saltpepper sets in a rows x cols image (the fork's float arithmetic)."""
    return int(np.floor(F(F(F(sp.fraction) * F(cols)) * F(rows))))


def _on_luma(hwc, op):
    """op on the Y plane of OpenCV's YCrCb (colour), or on the gray image itself."""
    cv2 = need("cv2", "opencv-python")
    if hwc.ndim == 2:
        return op(hwc)
    planes = list(cv2.split(cv2.cvtColor(hwc, cv2.COLOR_BGR2YCrCb)))
    planes[0] = op(planes[0])
    return cv2.cvtColor(cv2.merge(planes), cv2.COLOR_YCrCb2BGR)


def apply_noise(chw, npar, draws):
    """ApplyNoise on a CHW uint8 image, in the fork's order: decolorize (BGR -> gray -> BGR),
    gauss_blur (7 x 7, sigma 1.5), hist_eq and clahe (clip limit 4, 8 x 8 tiles) on YCrCb's
    Y plane (or the gray image), jpeg (imencode at quality int(jpeg), imdecode as colour),
    erode (3 x 3 ellipse), posterize (each byte to its 64-wide bin's centre), inverse
    (bitwise not), saltpepper (floor(fraction * cols * rows) pixels, each at column rand() %
    cols then row rand() % rows, set to the value(s)), convert_to_hsv (8-bit HSV, kept as the
    image). ``prob`` is not read: the fork applies every op asked, always, and these are
    its only draws."""
    cv2 = need("cv2", "opencv-python")
    c, rows, cols = chw.shape
    problem = noise_channel_problem(npar, c)
    if problem:
        raise DataError(problem)
    img = np.ascontiguousarray(chw[0] if c == 1 else chw.transpose(1, 2, 0))
    if npar.decolorize:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if npar.gauss_blur:
        img = cv2.GaussianBlur(img, (7, 7), 1.5)
    if npar.hist_eq:
        img = _on_luma(img, cv2.equalizeHist)
    if npar.clahe:
        clahe = cv2.createCLAHE()
        clahe.setClipLimit(4)
        img = _on_luma(img, clahe.apply)
    if npar.jpeg > 0:
        _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(npar.jpeg)])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if npar.erode:
        img = cv2.erode(img, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3), (1, 1)))
    if npar.posterize:
        img = cv2.LUT(img, _POSTERIZE)
    if npar.inverse:
        img = cv2.bitwise_not(img)
    if npar.saltpepper and c in (1, 3):                  # constantNoise knows these two
        sp = npar.saltpepper_param
        value = np.resize(np.asarray([int(v) for v in sp.value], np.uint8), c)
        img = np.array(img)                               # writable, and not the input's
        for _ in range(saltpepper_count(sp, rows, cols)):  # later pixels overwrite earlier
            i = draws.rand(cols)
            j = draws.rand(rows)
            img[j, i] = value if c == 3 else value[0]
    if npar.convert_to_hsv:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    return np.ascontiguousarray(img[None] if img.ndim == 2 else img.transpose(2, 0, 1))


def expand_sample(sample, ep, mean, draws, emit=None):
    """ExpandImage: None-op unless the draw is under ``prob`` and max_expand_ratio > ~1."""
    if draws.uniform(0, 1) > F(ep.prob):
        return sample
    if abs(float(F(ep.max_expand_ratio)) - 1.0) < 1e-2:
        return sample
    ratio = draws.uniform(1, ep.max_expand_ratio)
    c, h, w = sample.image.shape
    height, width = int(F(h * ratio)), int(F(w * ratio))
    h_off = F(np.floor(draws.uniform(0, F(height - h))))
    w_off = F(np.floor(draws.uniform(0, F(width - w))))
    crop = as_box(-w_off / F(w), -h_off / F(h), (F(width) - w_off) / F(w),
                  (F(height) - h_off) / F(h))
    if not sample.encoded:
        canvas = np.full((c, height, width), 32, sample.image.dtype)     # the fork's ' ' fill
    elif mean is None:
        canvas = np.zeros((c, height, width), np.uint8)
    elif mean.ndim == 3:
        if mean.shape != (c, height, width):
            raise DataError(f"expand_param with a mean_file: the mean ({mean.shape}) must be "
                            f"the expanded image's size ({c}x{height}x{width})")
        canvas = (np.trunc(mean).astype(np.int64) & 0xFF).astype(np.uint8)
    else:
        fill = np.clip(np.rint(np.resize(mean.astype(np.float64), c)), 0, 255)
        canvas = np.broadcast_to(fill.astype(np.uint8)[:, None, None],
                                 (c, height, width)).copy()
    ho, wo = int(h_off), int(w_off)
    canvas[:, ho:ho + h, wo:wo + w] = sample.image
    if sample.encoded:
        canvas = _jpeg_roundtrip(canvas)
    groups = transform_groups(sample.groups, crop, emit=emit)
    return Sample(canvas, sample.encoded, groups, sample.label, sample.has_type)


def crop_sample(sample, box, emit=None):
    """CropImage to a sampled box: pixels [int(ymin H), ...) of the clipped box, the boxes
    projected into it."""
    _, h, w = sample.image.shape
    clipped = clip_box(box)
    sx0, sy0 = F(clipped[0] * F(w)), F(clipped[1] * F(h))
    sx1, sy1 = F(clipped[2] * F(w)), F(clipped[3] * F(h))
    w_off, h_off = int(sx0), int(sy0)
    width, height = int(F(sx1 - sx0)), int(F(sy1 - sy0))
    image = np.ascontiguousarray(sample.image[:, h_off:h_off + height, w_off:w_off + width])
    if sample.encoded:
        image = _jpeg_roundtrip(image)
    groups = transform_groups(sample.groups, clipped, emit=emit)
    return Sample(image, sample.encoded, groups, sample.label, sample.has_type)


def label_rows(all_groups):
    """The label top's rows (item_id, group_label, instance_id, xmin, ymin, xmax, ymax,
    difficult) of a batch's transformed groups; one row of -1 when there is no box."""
    rows = [(item, label, inst, *box, float(diff))
            for item, groups in enumerate(all_groups)
            for label, annos in groups for inst, box, diff in annos]
    if not rows:
        return np.full((1, 1, 1, 8), -1, np.float32)
    return np.asarray(rows, np.float32).reshape(1, 1, len(rows), 8)


def make_anno_datum(image, groups, label=-1, encoding=""):
    """An AnnotatedDatum (type BBOX) of a CHW uint8 image and groups as ``read_groups`` gives."""
    from minicnn.data.datum import encode_datum
    anno = caffe_pb2.AnnotatedDatum(datum=encode_datum(image, label, encoding), type="BBOX")
    if encoding:
        c, h, w = np.asarray(image).shape
        anno.datum.channels, anno.datum.height, anno.datum.width = c, h, w
    for group_label, annos in groups:
        g = anno.annotation_group.add(group_label=int(group_label))
        for inst, box, diff in annos:
            g.annotation.add(instance_id=int(inst), bbox=caffe_pb2.NormalizedBBox(
                xmin=float(box[0]), ymin=float(box[1]), xmax=float(box[2]),
                ymax=float(box[3]), difficult=bool(diff)))
    return anno
