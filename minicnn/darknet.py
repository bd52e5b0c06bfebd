"""Darknet models -> Caffe prototxt + caffemodel (``minicnn convert darknet``): YOLOv1 (tiny and
full), YOLOv2, YOLOv3 and Darknet's classifiers (darknet19/53, resnets, densenet, ...).

    convert_darknet("yolov3-tiny.cfg", "yolov3-tiny.weights", "out/")
    # -> out/yolov3-tiny.prototxt, out/yolov3-tiny.caffemodel
    convert_darknet("yolov3-tiny.cfg", None, "out/")
    # -> out/yolov3-tiny.prototxt, its fillers Darknet's random initialisation, and, to train
    #    it, out/yolov3-tiny_train.prototxt and out/yolov3-tiny_solver.prototxt (the [net]'s
    #    schedule: darknet_solver)

The cfg's sections become layers, in order (Darknet's parse_network_cfg defaults apply to keys a
section leaves out; layers are numbered from 0 after [net], as [route] and [shortcut] count):

  [net]            Input 1 x channels x height x width (Darknet feeds RGB scaled to [0, 1])
  [convolutional]  Convolution (pad=1 means padding size/2, as in Darknet); with
                   batch_normalize=1: Convolution without bias, BatchNorm, Scale (with bias);
                   then the activation: leaky -> ReLU negative_slope 0.1, relu, logistic ->
                   Sigmoid, tanh -> TanH, elu -> ELU, linear -> nothing, ramp (x * (x > 0) +
                   .1 x) -> ReLU negative_slope 1/11 and Power scale 1.1
  [maxpool]        Pooling MAX. Darknet pads padding // 2 (default (size-1) // 2) on the top and
                   left and the rest on the bottom and right; where Caffe's ceil rounding gives
                   the same windows it is that, an even padding with Darknet's floor is
                   round_mode FLOOR, and size 2 stride 1 (the tiny YOLOs') is a Pooling padded
                   on both sides and a Crop of its first row and column
  [avgpool]        Pooling AVE, global
  [local]          Local (a convolution with different filters at every place: YOLOv1's full
                   model), then the activation
  [connected]      InnerProduct (+ BatchNorm, Scale with batch_normalize), then the activation
  [dropout]        Dropout (identity at test time in both)
  [softmax]        Softmax (over a C x 1 x 1 output with groups=1; else over each of the groups
                   equal runs of the output in memory order: Reshape N x groups x run, Softmax
                   axis 2, Reshape back; a Power 1/t before it for a temperature t != 1);
                   [cost] is dropped (training only: see the train net below);
                   with tree= (darknet9000), SoftmaxTree: one softmax per group of siblings,
                   the tree's parents written into softmax_tree_param
  [route]          Concat of the named layers' outputs (one layer: its blob is read again)
  [shortcut]       Eltwise SUM (coeff alpha, beta when not 1) with an earlier output, then the
                   activation (default linear). Darknet adds over the channels both have: a
                   Slice and Concat keep this one's extra channels, a Crop drops the other's; an
                   earlier output k times larger is read at every k-th place (Pooling MAX of
                   kernel 1, stride k)
  [upsample]       Upsample (nearest, upsample_param scale = stride); a Power for scale != 1
  [reorg]          Reorg (Darknet's index arithmetic; reverse kept); extra=k (go.cfg): the
                   input flattened with k zeros after it (Flatten, Concat); flatten=1: the
                   input transposed to H x W x C (reverse=1: back from it), Permute and Reshape
  [region]         Region (YOLOv2's head: anchors, classes, coords, num, softmax, background;
                   and the loss's keys the cfg gives: object_scale, noobject_scale,
                   class_scale, coord_scale, thresh, rescore, bias_match, absolute; the
                   weights file's seen count when not 0); tree= (YOLO9000's softmax tree)
                   as region_param tree_parent, map= as class_map
  [yolo]           Yolo (YOLOv3's heads: anchors, mask, classes; net_width and net_height from
                   [net]; and the loss's ignore_thresh, truth_thresh, max when given)
  [detection]      Detection with one bottom (a deploy net), its parameters copied
  [crop]           the test-time centre crop (DummyData of the crop's size, Crop), then Power
                   2 x - 1 unless noadjust=1 (Darknet's random crop and flip in training are
                   not kept)

A tree= or map= file is read as Darknet opens it (from the current folder), else beside the
cfg; its numbers go into the prototxt (one parent per class, as a wrapped list), so the
converted net needs no Darknet data files: parents alone make the tree (its groups are the runs
of equal parents, as read_tree makes them).

A key a layer section does not use (a misspelt one, which Darknet would read as its default)
is warned about with its line, as Darknet prints "Unused field"; [net], [region], [yolo],
[detection] and [cost] hold training keys and are not checked.

The converted net is a deploy net (one bottom per head). Region and Yolo keep their training
keys, so a train prototxt only adds the box lists as each head's second bottom to make it
Darknet's loss. For a cfg whose last layer is [region] or [yolo], the loader's settings (that
layer's jitter, max and random, the [net]'s size, hue, saturation, exposure, batch /
subdivisions and max_batches) are written at the top of the prototxt as a commented TRAIN
DetectionData layer with augment: DARKNET_V2 (darknet_train_data), Darknet's detector-training
data; YOLOv1's [detection] jitter is not kept. ``minicnn detect`` decodes all three kinds
(minicnn.detection).

A classifier (the last section [softmax], or [softmax] then one [cost]) gets a train net
(classifier_train_data): a TRAIN ImageData ("path label" lines; R, G, B scaled to [0, 1],
resized to the [net]'s size, or to min_crop and cropped at random, mirrored at random), a TEST
one (val.txt, unmirrored, resized to the [net]'s size: Darknet's validation for square images),
a SoftmaxWithLoss in place of the last Softmax and TEST-only Accuracy layers (top-1; top-5 over
more than 5 classes); its solver's test_iter and test_interval are written commented out (the
conversion cannot count the validation images; without test_iter no test net is built, so a
train.txt alone trains).
Darknet's loss there (libdarknet trained against it: tests/test_darknet_solver.py): given a
truth, softmax_layer sets its delta to truth - output (the cross-entropy's gradient at the
softmax's *input*; the temperature t is not in it, noloss=1 leaves it out), and a [cost]
after it adds scale * (truth - output), its l2 delta, which the softmax's backward passes on
unchanged: (1 + scale) (output - truth) per image, summed over the batch, and update_network
steps by learning_rate / batch times that sum. SoftmaxWithLoss's gradient is (output - truth)
/ N (normalization VALID: the N images of a pass) and the solver divides by iter_size =
subdivisions, so base_lr learning_rate (the same solver as a detector's, whose Region / Yolo
losses are divided by N alike) with loss_weight (1 + scale) t is Darknet's step, weight decay
and momentum included.

Darknet's batch norm at test time is y = scales * (x - mean) / (sqrt(var) + 1e-6) + biases: the
epsilon is added *after* the square root, where Caffe's BatchNorm adds it inside. The
conversion is exact anyway: the BatchNorm gets mean = rolling_mean, var = 1, eps = 0 and scale
factor 1 (it only subtracts the mean), and the division moves into the Scale layer,
gamma = scales / (sqrt(var) + 1e-6) (computed in float64), beta = biases.

.weights layout: int32 major, minor, revision; ``seen`` as int64 when major*10 + minor >= 2
(and both < 1000), else int32; then per layer, in cfg order, float32 arrays: convolutional:
biases, [scales, rolling_mean, rolling_variance if batch_normalize], weights (n, c, k, k);
connected: biases, weights (outputs, inputs; stored transposed when major or minor > 1000),
[scales, rolling_mean, rolling_variance]. A file that ends early is an error; bytes left over are
reported.
"""

import math
import os
import warnings

import numpy as np

from minicnn.errors import MinicnnError

DARKNET_BN_EPS = 1e-6
DARKNET_FRESH_BN_EPS = 1e-12            # (1e-6)^2: see _fresh_batch_norm
ACTIVATIONS = {"leaky": ("ReLU", "relu_param { negative_slope: 0.1 }"), "relu": ("ReLU", ""),
               "logistic": ("Sigmoid", ""), "tanh": ("TanH", ""), "elu": ("ELU", ""),
               "linear": None,
               "ramp": ("ReLU", f"relu_param {{ negative_slope: {float(np.float32(1 / 11))!r} }}")}
KINDS = {"convolutional": "convolutional", "conv": "convolutional", "maxpool": "maxpool",
         "max": "maxpool", "connected": "connected", "conn": "connected", "dropout": "dropout",
         "avgpool": "avgpool", "avg": "avgpool", "softmax": "softmax", "soft": "softmax",
         "cost": "cost", "route": "route", "shortcut": "shortcut", "upsample": "upsample",
         "reorg": "reorg", "region": "region", "yolo": "yolo", "detection": "detection",
         "local": "local", "crop": "crop"}


RECURRENT = ("rnn", "gru", "lstm", "crnn", "conv_lstm")


# keys Darknet's parser reads in a layer section that do not change the converted net: training
# only (dot, spatial, noloss), or ignored by Darknet itself (a tree softmax's groups)
TRAINING_KEYS = {"convolutional": {"dot"}, "softmax": {"spatial", "noloss", "groups"}}


class DarknetError(MinicnnError):
    """A Darknet cfg or weights file minicnn cannot convert; names the file and the line."""


class Section:
    def __init__(self, kind, line, path):
        self.kind, self.line, self.path, self.options, self.used = kind, line, path, {}, set()
        self.key_lines = {}                   # key -> its line in the cfg

    def where(self):
        return f"{self.path}:{self.line}: [{self.kind}]"

    def _get(self, key, default, convert):
        self.used.add(key)
        if key not in self.options:
            return default
        value = self.options[key]
        try:
            return convert(value)
        except ValueError:
            raise DarknetError(f"{self.where()}: {key}={value} is not a number") from None

    def int(self, key, default):
        return self._get(key, default, lambda v: int(float(v)))

    def float(self, key, default):
        return self._get(key, default, float)

    def str(self, key, default):
        return self._get(key, default, str)


def read_cfg(path):
    """A Darknet cfg as a list of Sections (``[name]`` headers, ``key=value`` lines; '#' and ';'
    start comments; whitespace is ignored, as Darknet strips it)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        raise DarknetError(f"{path}: cannot read the cfg: {e.strerror or e}") from None
    if any("\ufffd" in line or "\x00" in line for line in lines[:4]):
        raise DarknetError(f"{path}: this is not a text cfg (a binary file: the .weights? the "
                           "arguments are: cfg weights outdir)")
    sections = []
    for n, raw in enumerate(lines, 1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise DarknetError(f"{path}:{n}: a section header must look like [name], got "
                                   f"{raw.strip()!r}")
            sections.append(Section(line[1:-1], n, path))
        elif "=" in line:
            if not sections:
                raise DarknetError(f"{path}:{n}: an option before the first [section]")
            key, _, value = line.partition("=")
            sections[-1].options[key] = value
            sections[-1].key_lines[key] = n
        else:
            raise DarknetError(f"{path}:{n}: expected [section] or key=value, got "
                               f"{raw.strip()!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError(f"{path}: the cfg must start with a [net] section")
    return sections


class WeightsReader:
    """The float32 arrays of a .weights file, read in order after its header."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.buf = f.read()
        except OSError as e:
            raise DarknetError(f"{path}: cannot read the weights: {e.strerror or e}") from None
        if self.buf[:256].lstrip().startswith((b"[", b"#", b";")):   # not a header of int32s
            raise DarknetError(f"{path}: this is a text cfg, not a .weights file (the arguments "
                               "are: cfg [weights] outdir)")
        if len(self.buf) < 16:
            raise DarknetError(f"{path}: {len(self.buf)} bytes is too short for a .weights "
                               "header (major, minor, revision, seen)")
        self.major, self.minor, self.revision = (int(v) for v in
                                                 np.frombuffer(self.buf, "<i4", 3))
        wide = self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000
        self.offset = 20 if wide else 16
        if len(self.buf) < self.offset:
            raise DarknetError(f"{path}: the file ends at byte {len(self.buf)} inside the header: "
                               f"version {self.major}.{self.minor} stores seen as int64, so the "
                               f"header is {self.offset} bytes")
        self.seen = int(np.frombuffer(self.buf, "<u8" if wide else "<i4", 1, 12)[0])
        self.transpose = self.major > 1000 or self.minor > 1000

    def read(self, count, what):
        end = self.offset + 4 * count
        if end > len(self.buf):
            have = (len(self.buf) - self.offset) // 4
            raise DarknetError(f"{self.path}: the file ends at byte {len(self.buf)} while "
                               f"reading {what} ({count} floats from byte {self.offset}, "
                               f"{have} left): the weights do not match the cfg")
        out = np.frombuffer(self.buf, "<f4", count, self.offset).astype(np.float32)
        self.offset = end
        return out

    @property
    def left(self):
        return len(self.buf) - self.offset


class _Builder:
    def __init__(self, name):
        self.lines = [f'name: "{name}"']
        self.weights = {}                     # layer name -> [arrays]
        self.labels = []                      # a train net's box lists: the heads' 2nd bottom

    def layer(self, name, type_, bottom, top, body="", blobs=None):
        lines = ["layer {", f'  name: "{name}"', f'  type: "{type_}"']
        bottoms = bottom if isinstance(bottom, list) else [bottom] if bottom else []
        lines += [f'  bottom: "{b}"' for b in bottoms]
        lines += [f'  top: "{t}"' for t in (top if isinstance(top, list) else [top])]
        lines += ["  " + line for line in body.strip().splitlines() if line.strip()]
        self.lines += lines + ["}"]
        if blobs is not None:
            self.weights[name] = blobs

    def text(self):
        return "\n".join(self.lines) + "\n"


def _batch_norm(b, name, top, n, biases, weights):
    """BatchNorm + Scale for Darknet's test-time batch norm (epsilon after the square root);
    without weights (``weights`` None), a BatchNorm that trains: see _fresh_batch_norm."""
    if weights is None:
        _fresh_batch_norm(b, name, top)
        return
    scales = weights.read(n, f"the scales of {name}")
    mean = weights.read(n, f"the rolling mean of {name}")
    var = weights.read(n, f"the rolling variance of {name}")
    if np.any(var < 0):
        raise DarknetError(f"{weights.path}: layer {name} has a negative rolling variance: "
                           "the weights do not match the cfg (another model's .weights?)")
    gamma = (scales.astype(np.float64) / (np.sqrt(var.astype(np.float64)) + DARKNET_BN_EPS))
    b.layer(f"{name}_bn", "BatchNorm", top, top,
            "batch_norm_param { use_global_stats: true eps: 0 }",
            [mean, np.ones(n, np.float32), np.ones(1, np.float32)])
    b.layer(f"{name}_scale", "Scale", top, top, "scale_param { bias_term: true }",
            [gamma.astype(np.float32), biases])


def _fresh_batch_norm(b, name, top):
    """Darknet's batch norm as make_convolutional_layer / make_connected_layer create it (scales
    1, biases and rolling statistics 0), to train: BatchNorm on the batch's statistics in TRAIN
    and the running ones in TEST, Scale with fillers constant 1 and 0. Darknet's rolling
    statistics move by .99 / .01 a batch (forward_batchnorm_layer): moving_average_fraction
    0.99. Darknet divides by sqrt(var) + 1e-6, Caffe by sqrt(var + eps): eps 1e-12 is the same
    where it matters (a nearly constant channel) and below float32's resolution elsewhere. Not
    the same: Darknet's batch variance is the unbiased one (1 / (m - 1)), Caffe's the biased
    one, a factor m / (m - 1) with m the batch's values per channel. Neither the scales nor
    the biases are decayed (decay_mult 0), as in Darknet."""
    b.layer(f"{name}_bn", "BatchNorm", top, top,
            f"batch_norm_param {{ moving_average_fraction: 0.99 eps: {DARKNET_FRESH_BN_EPS!r} }}")
    b.layer(f"{name}_scale", "Scale", top, top, _decay(False, False) +
            "scale_param { bias_term: true filler { type: \"constant\" value: 1 }\n"
            "  bias_filler { type: \"constant\" value: 0 } }")


def _he(fan_in):
    """Darknet's float scale = sqrt(2. / fan_in), as the float32 a prototxt float reads back."""
    return float(np.float32(math.sqrt(2.0 / fan_in)))


def _fillers(weight, bias=True):
    """A layer's weight_filler (and bias_filler constant 0, Darknet's calloc'ed biases) as
    prototxt text."""
    kind, value = weight
    body = (f' std: {value!r}' if kind == "gaussian" else f' min: {-value!r} max: {value!r}')
    text = f'\n  weight_filler {{ type: "{kind}"{body} }}'
    return text + ('\n  bias_filler { type: "constant" value: 0 }' if bias else "")


def _decay(*decayed):
    """The layer's param specs: Darknet's updates (update_convolutional_layer & co) decay the
    weights only, never the biases or batch norm scales."""
    return "".join(f"param {{ decay_mult: {int(d)} }}\n" for d in decayed)


def _activation(b, s, name, top, default="logistic"):
    kind = s.str("activation", default)
    if kind not in ACTIVATIONS:
        raise DarknetError(f"{s.where()}: activation={kind} has no minicnn layer (supported: "
                           f"{', '.join(ACTIVATIONS)})")
    if ACTIVATIONS[kind]:
        type_, body = ACTIVATIONS[kind]
        b.layer(f"{name}_{kind}", type_, top, top, body)
    if kind == "ramp":                         # x * (x > 0) + .1 x = 1.1 * leaky(x, 1/11)
        b.layer(f"{name}_ramp_scale", "Power", top, top, "power_param { scale: 1.1 }")


class _Out:
    """A section's output as the next sections see it: the blob, its C x H x W, and whether it
    is flat (after a connected layer)."""

    def __init__(self, top, c, h, w, flat=False):
        self.top, self.c, self.h, self.w, self.flat = top, c, h, w, flat


def _earlier(s, i, outs, value):
    """The output of the section a [route] or [shortcut] names: a negative value counts back
    from section i, a non-negative one is an index (Darknet's layers are numbered from 0 after
    [net])."""
    try:
        k = int(value)
    except ValueError:
        raise DarknetError(f"{s.where()}: '{value}' is not a layer index") from None
    j = i + k if k < 0 else k
    if not 0 <= j < i:
        raise DarknetError(f"{s.where()}: layer {value} (index {j}) is not an earlier layer of "
                           f"the {i} before this one")
    return outs[j]


def _anchors(s, count):
    text = s.str("anchors", "")
    try:
        values = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise DarknetError(f"{s.where()}: anchors={text} is not a list of numbers") from None
    if values and len(values) < count:
        raise DarknetError(f"{s.where()}: {len(values)} anchors values for {count // 2} "
                           f"anchors (a width and a height each)")
    return values[:count]


def _convolutional(b, s, i, x, weights):
    n, size = s.int("filters", 1), s.int("size", 1)
    stride, groups = s.int("stride", 1), s.int("groups", 1)
    padding = size // 2 if s.int("pad", 0) else s.int("padding", 0)
    bn = s.int("batch_normalize", 0)
    if s.int("binary", 0) or s.int("xnor", 0):
        raise DarknetError(f"{s.where()}: binary/xnor convolutions are not supported")
    if s.int("flipped", 0):                   # Darknet transposes such filters as it loads them
        raise DarknetError(f"{s.where()}: flipped=1 (filters stored transposed) is not "
                           "supported")
    if groups != 1 and (x.c % groups or n % groups):
        raise DarknetError(f"{s.where()}: groups={groups} must divide the {x.c} input "
                           f"channels and the {n} filters")
    name = f"conv{i}"
    head = (f"convolution_param {{ num_output: {n} kernel_size: {size} stride: {stride} "
            f"pad: {padding}" + (f" group: {groups}" if groups != 1 else "")
            + (" bias_term: false" if bn else ""))
    if weights is None:                      # scale * rand_normal(), scale = sqrt(2 / fan in)
        fill = _fillers(("gaussian", _he(size * size * x.c // groups)), bias=not bn)
        b.layer(name, "Convolution", x.top, name, _decay(True, *[False] * (not bn))
                + head + fill + " }")
        if bn:
            _batch_norm(b, name, name, n, None, None)
    else:
        biases = weights.read(n, f"the biases of {name}")
        bn_at = weights.offset
        if bn:
            weights.read(3 * n, f"the batch norm of {name}")        # after the weights below
        kernel = weights.read(n * (x.c // groups) * size * size, f"the weights of {name}")
        kernel = kernel.reshape(n, x.c // groups, size, size)
        b.layer(name, "Convolution", x.top, name, head + " }",
                [kernel] if bn else [kernel, biases])
        if bn:
            end, weights.offset = weights.offset, bn_at
            _batch_norm(b, name, name, n, biases, weights)
            weights.offset = end
    _activation(b, s, name, name)
    return _Out(name, n, (x.h + 2 * padding - size) // stride + 1,
                (x.w + 2 * padding - size) // stride + 1)


def _local(b, s, i, x, weights):
    """Darknet's [local]: pad is a flag there (out = (h - 1) / stride + 1 with it, (h - size) /
    stride + 1 without) while its im2col pads by the flag's value; minicnn converts the
    geometries where the two agree (size 3 with pad=1, any size without padding)."""
    n, size = s.int("filters", 1), s.int("size", 1)
    stride, pad = s.int("stride", 1), s.int("pad", 0)
    oh, ow = ((v - 1 if pad else v - size) // stride + 1 for v in (x.h, x.w))
    if (oh, ow) != tuple((v + 2 * pad - size) // stride + 1 for v in (x.h, x.w)) or \
            min(oh, ow) < 1:
        raise DarknetError(f"{s.where()}: size={size} stride={stride} pad={pad}: Darknet's "
                           "output size and its im2col disagree here; minicnn converts size 3 "
                           "with pad=1 or pad=0")
    name = f"local{i}"
    head = f"local_param {{ num_output: {n} kernel_size: {size} stride: {stride} pad: {pad}"
    if weights is None:                # scale * rand_uniform(-1, 1), scale = sqrt(2 / fan in)
        b.layer(name, "Local", x.top, name,
                _decay(True, False) + head + _fillers(("uniform", _he(size * size * x.c)))
                + " }")
    else:
        biases = weights.read(n * oh * ow, f"the biases of {name}")
        kernel = weights.read(oh * ow * n * x.c * size * size, f"the weights of {name}")
        b.layer(name, "Local", x.top, name, head + " }", [kernel, biases])
    _activation(b, s, name, name)
    return _Out(name, n, oh, ow)


def _maxpool(b, s, i, x):
    """Darknet pads (padding, default size - 1) on the top/left by padding // 2 and the rest on
    the bottom/right; Caffe pads both sides alike. Where they differ (size 2, stride 1: the
    tiny YOLOs) Caffe pads by the larger side and a Crop drops the extra first row and column,
    which works when the output keeps the input's size (the Crop's reference)."""
    stride = s.int("stride", 1)
    size = s.int("size", stride)
    padding = s.int("padding", size - 1)
    dh, dw = (x.h + padding - size) // stride + 1, (x.w + padding - size) // stride + 1
    pad = padding // 2
    name = f"pool{i}"

    def body(caffe_pad):
        return (f"pooling_param {{ pool: MAX kernel_size: {size} stride: {stride} "
                f"pad: {caffe_pad} }}")
    if tuple(_caffe_pool_size(v, size, stride, pad) for v in (x.h, x.w)) == (dh, dw):
        b.layer(name, "Pooling", x.top, name, body(pad))       # ceil rounding covers the rest
        return _Out(name, x.c, dh, dw)
    if padding == 2 * pad:                     # even padding: Darknet's floor is Caffe's FLOOR
        b.layer(name, "Pooling", x.top, name, body(pad)[:-2] + " round_mode: FLOOR }")
        return _Out(name, x.c, dh, dw)
    caffe_pad = padding - pad                   # pad both sides by the larger, bottom/right
    shift = caffe_pad - pad
    sizes = [_caffe_pool_size(v, size, stride, caffe_pad) for v in (x.h, x.w)]
    if shift % stride or (dh, dw) != (x.h, x.w) or min(sizes) < min(dh, dw) + shift // stride:
        raise DarknetError(f"{s.where()}: size={size} stride={stride} padding={padding} gives "
                           f"{dh}x{dw} in Darknet; Caffe's pooling cannot place these windows")
    b.layer(f"{name}_padded", "Pooling", x.top, f"{name}_padded", body(caffe_pad))
    b.layer(name, "Crop", [f"{name}_padded", x.top], name,
            f"crop_param {{ axis: 2 offset: {shift // stride} }}")
    return _Out(name, x.c, dh, dw)


def _connected(b, s, i, x, weights):
    n, bn = s.int("output", 1), s.int("batch_normalize", 0)
    inputs = x.c * x.h * x.w
    name = f"fc{i}"
    head = f"inner_product_param {{ num_output: {n}" + (" bias_term: false" if bn else "")
    if weights is None:                # scale * rand_uniform(-1, 1), scale = sqrt(2 / inputs)
        b.layer(name, "InnerProduct", x.top, name, _decay(True, *[False] * (not bn))
                + head + _fillers(("uniform", _he(inputs)), bias=not bn) + " }")
        biases = None
    else:
        biases = weights.read(n, f"the biases of {name}")
        matrix = weights.read(n * inputs, f"the weights of {name}")
        matrix = matrix.reshape(inputs, n).T.copy() if weights.transpose \
            else matrix.reshape(n, inputs)
        b.layer(name, "InnerProduct", x.top, name, head + " }",
                [matrix] if bn else [matrix, biases])
    if bn:
        _batch_norm(b, name, name, n, biases, weights)
    _activation(b, s, name, name)
    return _Out(name, n, 1, 1, flat=True)


def _route(b, s, i, outs):
    parts = [_earlier(s, i, outs, v) for v in s.str("layers", "").split(",") if v]
    if not parts:
        raise DarknetError(f"{s.where()}: a route needs layers=")
    if any(p.flat for p in parts) or len({(p.h, p.w) for p in parts}) != 1:
        sizes = ", ".join(f"{p.c}x{p.h}x{p.w}" for p in parts)
        raise DarknetError(f"{s.where()}: the routed layers' outputs ({sizes}) must share their "
                           "height and width")
    if len(parts) == 1:                              # the same blob, read again
        return _Out(parts[0].top, parts[0].c, parts[0].h, parts[0].w)
    name = f"route{i}"
    b.layer(name, "Concat", [p.top for p in parts], name)
    return _Out(name, sum(p.c for p in parts), parts[0].h, parts[0].w)


def _shortcut(b, s, i, x, outs):
    """Darknet adds the earlier output into this one over the channels both have (the rest of
    this one passes unchanged; the rest of the earlier one is dropped): out = alpha * out +
    beta * from there."""
    other = _earlier(s, i, outs, s.str("from", ""))
    stride = other.w // x.w if x.w else 0
    if other.flat or x.flat or stride < 1 or other.h // x.h != stride or \
            (other.h - 1) // stride + 1 != x.h or (other.w - 1) // stride + 1 != x.w:
        raise DarknetError(f"{s.where()}: adds a {other.c}x{other.h}x{other.w} output to a "
                           f"{x.c}x{x.h}x{x.w} one; minicnn converts shortcuts from outputs of "
                           "the same size or a whole multiple of it")
    alpha, beta = s.float("alpha", 1.0), s.float("beta", 1.0)
    name = f"shortcut{i}"
    coeff = "" if alpha == beta == 1 else f" coeff: {alpha!r} coeff: {beta!r}"
    add, rest = other.top, None
    if stride > 1:                              # Darknet reads every stride-th place of it
        add = f"{name}_sampled"
        b.layer(add, "Pooling", other.top, add, f"pooling_param {{ pool: MAX kernel_size: 1 "
                                                f"stride: {stride} round_mode: FLOOR }}")
    if other.c > x.c:
        b.layer(f"{name}_from", "Crop", [add, x.top], f"{name}_from",
                "crop_param { axis: 1 offset: 0 }")
        add = f"{name}_from"
    mine = x.top
    if x.c > other.c:
        mine, rest = f"{name}_head", f"{name}_rest"
        b.layer(f"{name}_slice", "Slice", x.top, [mine, rest],
                f"slice_param {{ axis: 1 slice_point: {other.c} }}")
    total = f"{name}_sum" if rest else name
    b.layer(total, "Eltwise", [mine, add], total, f"eltwise_param {{ operation: SUM{coeff} }}")
    if rest:
        b.layer(name, "Concat", [total, rest], name)
    _activation(b, s, name, name, default="linear")
    return _Out(name, x.c, x.h, x.w)


def _upsample(b, s, i, x):
    stride, scale = s.int("stride", 2), s.float("scale", 1.0)
    if stride < 1:
        raise DarknetError(f"{s.where()}: stride={stride} (Darknet's downsampling) is not "
                           "supported")
    name = f"upsample{i}"
    b.layer(name, "Upsample", x.top, name, f"upsample_param {{ scale: {stride} }}")
    if scale != 1:
        b.layer(f"{name}_scale", "Power", name, name, f"power_param {{ scale: {scale!r} }}")
    return _Out(name, x.c, x.h * stride, x.w * stride)


def _reorg(b, s, i, x):
    stride, reverse = s.int("stride", 1), s.int("reverse", 0)
    extra = s.int("extra", 0)
    flatten = s.int("flatten", 0)
    if flatten and extra:
        raise DarknetError(f"{s.where()}: flatten=1 with extra={extra}: Darknet copies "
                           "outputs = inputs + extra values from the input (past its end)")
    if extra > 0:
        return _reorg_extra(b, s, i, x, extra)
    if extra < 0:
        raise DarknetError(f"{s.where()}: extra={extra} must not be negative")
    if reverse:
        c, h, w = x.c // (stride * stride), x.h * stride, x.w * stride
    else:
        c, h, w = x.c * stride * stride, x.h // stride, x.w // stride
    if c * h * w != x.c * x.h * x.w:
        raise DarknetError(f"{s.where()}: stride {stride} does not divide the {x.c}x{x.h}x{x.w} "
                           "input")
    name = f"reorg{i}"
    if flatten:
        return _reorg_flatten(b, i, x, reverse, _Out(name, c, h, w))
    b.layer(name, "Reorg", x.top, name, f"reorg_param {{ stride: {stride}"
            + (" reverse: true" if reverse else "") + " }")
    return _Out(name, c, h, w)


def _reorg_flatten(b, i, x, reverse, out):
    """Darknet's reorg with flatten=1: the input copied as it is and transposed by blas.c's
    flatten over its own C and H*W (C x H x W -> H x W x C in memory; with reverse=1 the
    memory read as H x W x C and put back to C x H x W); the stride only changes the shape the
    next layer reads it as (out_c x out_h x out_w, as without flatten). A Permute, with
    Reshapes around it."""
    name, bottom = out.top, x.top
    dims = f"dim: 0 dim: {out.c} dim: {out.h} dim: {out.w}"
    if reverse:
        b.layer(f"{name}_hwc", "Reshape", bottom, f"{name}_hwc",
                f"reshape_param {{ shape {{ dim: 0 dim: {x.h} dim: {x.w} dim: {x.c} }} }}")
        order, bottom = (0, 3, 1, 2), f"{name}_hwc"
    else:
        order = (0, 2, 3, 1)
    b.layer(f"{name}_t", "Permute", bottom, f"{name}_t",
            "permute_param { " + " ".join(f"order: {a}" for a in order) + " }")
    b.layer(name, "Reshape", f"{name}_t", name, f"reshape_param {{ shape {{ {dims} }} }}")
    return out


def _reorg_extra(b, s, i, x, extra):
    """Darknet's reorg with extra=k (go.cfg: the "pass" move): the input flattened and k zeros
    after it (its output buffer is calloc'ed and only the input is copied in). The zeros are
    0 times the first k inputs, so the net keeps any batch size."""
    name = f"reorg{i}"
    count = x.c * x.h * x.w
    if extra > count:
        raise DarknetError(f"{s.where()}: extra={extra} is more than the {count} inputs minicnn "
                           "builds its zeros from")
    b.layer(f"{name}_flat", "Flatten", x.top, f"{name}_flat")
    parts = [f"{name}_flat"]
    if extra:
        b.layer(f"{name}_take", "Slice", f"{name}_flat", [f"{name}_zeros", f"{name}_rest"],
                f"slice_param {{ axis: 1 slice_point: {extra} }}")
        b.layer(f"{name}_unused", "Silence", f"{name}_rest", [])
        b.layer(f"{name}_zero", "Power", f"{name}_zeros", f"{name}_zeros",
                "power_param { scale: 0 }")
        parts.append(f"{name}_zeros")
    b.layer(name, "Concat", parts, name)
    return _Out(name, count + extra, 1, 1, flat=True)


def _softmax(b, s, i, x, loss_weight=None):
    """Darknet's softmax_cpu(input, inputs/groups, batch, inputs, groups, inputs/groups, 1, t):
    the C*H*W outputs, in memory order, cut into groups runs of equal length, a softmax over
    each run (the whole of C x H x W with groups=1, not one per place). A C x 1 x 1 output with
    groups=1 is a plain Softmax; otherwise a Reshape to N x groups x run, a Softmax along the
    run, and a Reshape back. With ``loss_weight`` (a classifier's train net) the plain Softmax
    is a SoftmaxWithLoss of the labels, top "loss", with that weight (_classifier_head), in both
    phases, after TEST-only Accuracy layers: top "accuracy" (top-1) and, over more than 5
    classes, "accuracy_top5" (top_k 5), as Caffe's ImageNet examples."""
    temperature, groups = s.float("temperature", 1.0), s.int("groups", 1)
    count = x.c * x.h * x.w
    if temperature <= 0:
        raise DarknetError(f"{s.where()}: temperature={temperature} must be positive")
    if groups < 1 or count % groups:               # make_softmax_layer: assert(inputs%groups == 0)
        raise DarknetError(f"{s.where()}: groups={groups} must divide the {count} inputs "
                           f"({x.c}x{x.h}x{x.w}), as Darknet asserts")
    name = f"softmax{i}"
    bottom = x.top
    if temperature != 1:                           # Darknet: exp(x / t - max / t)
        bottom = f"{name}_tempered"
        b.layer(bottom, "Power", x.top, bottom,
                f"power_param {{ scale: {float(np.float32(1 / temperature))!r} }}")
    if loss_weight is not None:
        if groups != 1 or x.h * x.w != 1:
            raise DarknetError(f"{s.where()}: a softmax over {x.c}x{x.h}x{x.w} in groups={groups}"
                               ": minicnn writes a classifier's loss (SoftmaxWithLoss) for one "
                               "softmax over C x 1 x 1 (groups=1)")
        b.layer("accuracy", "Accuracy", [bottom] + b.labels, "accuracy",
                "include { phase: TEST }")
        if x.c > 5:                                # as Caffe's ImageNet examples
            b.layer("accuracy_top5", "Accuracy", [bottom] + b.labels, "accuracy_top5",
                    "include { phase: TEST }\naccuracy_param { top_k: 5 }")
        b.layer("loss", "SoftmaxWithLoss", [bottom] + b.labels, "loss",
                f"loss_weight: {loss_weight!r}")
        return _Out("loss", 1, 1, 1, True)
    if groups == 1 and x.h * x.w == 1:
        b.layer(name, "Softmax", bottom, name)
        return _Out(name, x.c, 1, 1, x.flat)
    b.layer(f"{name}_runs", "Reshape", bottom, f"{name}_runs",
            f"reshape_param {{ shape {{ dim: 0 dim: {groups} dim: {count // groups} }} }}")
    b.layer(f"{name}_soft", "Softmax", f"{name}_runs", f"{name}_soft",
            "softmax_param { axis: 2 }")
    dims = f"dim: 0 dim: {x.c}" + ("" if x.flat else f" dim: {x.h} dim: {x.w}")
    b.layer(name, "Reshape", f"{name}_soft", name, f"reshape_param {{ shape {{ {dims} }} }}")
    return _Out(name, x.c, x.h, x.w, x.flat)


def _given(s, floats, flags):
    """The training keys the section gives, as prototxt fields (Darknet's defaults are the
    schema's, so keys left out stay out)."""
    out = "".join(f" {k}: {s.float(k, 0.0)!r}" for k in floats if k in s.options)
    return out + "".join(f" {k}: {'true' if s.int(k, 0) else 'false'}" for k in flags
                         if k in s.options)


def _data_file(s, key):
    """A file a section names (tree=, map=): as Darknet opens it (from the current folder), else
    beside the cfg; None when the key is not given."""
    name = s.str(key, "")
    if not name:
        return None
    for path in (name, os.path.join(os.path.dirname(os.path.abspath(s.path)), name)):
        if os.path.isfile(path):
            return path
    raise DarknetError(f"{s.where()}: {key}={name}: no such file (looked in the current folder "
                       "and beside the cfg)")


def _tree(s, nodes, field):
    """The parents of the tree= file (Darknet's read_tree), checked against ``nodes`` classes, as
    the prototxt list ``field`` (after a comment line), wrapped at 100 columns."""
    from minicnn.ops.softmax_tree import SoftmaxTree
    path = _data_file(s, "tree")
    try:
        tree = SoftmaxTree.read(path)
    except (OSError, ValueError) as e:
        raise DarknetError(f"{s.where()}: tree={s.str('tree', '')}: {e}") from None
    if tree.n != nodes:
        raise DarknetError(f"{s.where()}: the tree {s.str('tree', '')} has {tree.n} nodes, but "
                           f"the layer has {nodes} classes")
    return (f"# {os.path.basename(path)}: {tree.n} classes in {tree.groups} groups (runs of "
            f"siblings), each class's parent\n  {field}: " + _int_list(tree.parent))


def _int_list(values):
    lines, line = [], ""
    for v in values:
        word = f"{int(v)}, "
        if len(line) + len(word) > 96:
            lines.append(line.rstrip())
            line = ""
        line += word
    lines.append(line.rstrip().rstrip(","))
    return "[" + "\n  ".join(lines) + "]"


def _region(b, s, i, x):
    classes, coords, num = s.int("classes", 20), s.int("coords", 4), s.int("num", 1)
    softmax, background = s.int("softmax", 0), s.int("background", 0)
    tree = _tree(s, classes, "tree_parent") if s.options.get("tree") else None
    if tree and background:
        raise DarknetError(f"{s.where()}: a softmax tree with background=1 (Darknet's softmax "
                           "and its decoding would read different entries)")
    class_map = None
    if s.options.get("map"):
        path = _data_file(s, "map")
        with open(path, encoding="utf-8", errors="replace") as f:
            try:
                class_map = [int(line) for line in f.read().split()]
            except ValueError:
                raise DarknetError(f"{s.where()}: map={s.str('map', '')}: not a list of class "
                                   "numbers") from None
        if any(not 0 <= c < classes for c in class_map):
            raise DarknetError(f"{s.where()}: map={s.str('map', '')} names classes outside "
                               f"0..{classes - 1}")
    if x.c != num * (coords + 1 + classes) or x.flat:
        raise DarknetError(f"{s.where()}: num {num} x (coords {coords} + 1 + classes {classes}) "
                           f"channels, but the layer before gives {x.c}x{x.h}x{x.w}")
    anchors = _anchors(s, 2 * num)
    training = _given(s, ("object_scale", "noobject_scale", "class_scale", "coord_scale",
                          "thresh"), ("rescore", "bias_match", "absolute"))
    if getattr(b, "seen", 0):
        training += f" seen: {b.seen}"
    body = (f"region_param {{ classes: {classes} coords: {coords} num: {num}"
            + (" softmax: true" if softmax else "") + (" background: true" if background else "")
            + "".join(f" anchors: {a!r}" for a in anchors) + training
            + (f"\n  class_map: {_int_list(class_map)}" if class_map else "")
            + (f"\n  {tree}" if tree else "") + " }")
    b.layer(f"region{i}", "Region", [x.top] + b.labels, f"region{i}", body)
    return _Out(f"region{i}", x.c, x.h, x.w)


def _yolo(b, s, i, x):
    classes, total = s.int("classes", 20), s.int("num", 1)
    text = s.str("mask", "")
    try:
        mask = [int(v) for v in text.split(",") if v] or list(range(total))
    except ValueError:
        raise DarknetError(f"{s.where()}: mask={text} is not a list of integers") from None
    if any(not 0 <= m < total for m in mask):
        raise DarknetError(f"{s.where()}: mask {text} names anchors outside 0..{total - 1}")
    if x.c != len(mask) * (5 + classes) or x.flat:
        raise DarknetError(f"{s.where()}: {len(mask)} anchors x (5 + classes {classes}) "
                           f"channels, but the layer before gives {x.c}x{x.h}x{x.w}")
    anchors = _anchors(s, 2 * total)
    training = _given(s, ("ignore_thresh", "truth_thresh"), ())
    if "max" in s.options:
        training += f" max_boxes: {s.int('max', 90)}"
    body = (f"yolo_param {{ classes: {classes}" + "".join(f" mask: {m}" for m in mask)
            + "".join(f" anchors: {a!r}" for a in anchors)
            + f" net_width: {b.net_w} net_height: {b.net_h}" + training + " }")
    b.layer(f"yolo{i}", "Yolo", [x.top] + b.labels, f"yolo{i}", body)
    return _Out(f"yolo{i}", x.c, x.h, x.w)


def _crop(b, s, i, x):
    """Darknet's [crop] (crop_layer.c) as a test-time net: the centre crop_height x crop_width
    window (offsets (h - crop_height) / 2, (w - crop_width) / 2, rounded down), then 2 x - 1
    (its scale 2, trans -1) unless noadjust=1. In training Darknet crops at a random place and
    flips at random (flip=1; its GPU path also rotates by angle and jitters saturation, exposure
    and shift); the converted net, a deploy net, keeps the test-time crop."""
    ch, cw = s.int("crop_height", 1), s.int("crop_width", 1)
    noadjust = s.int("noadjust", 0)
    defaults = {"flip": 0, "angle": 0, "saturation": 1, "exposure": 1, "shift": 0}
    augment = [k for k, d in defaults.items() if s.float(k, d) != d]
    if augment:
        warnings.warn(f"{s.where()}: {', '.join(augment)} only change training in Darknet; "
                      "the converted net keeps the test-time centre crop", stacklevel=4)
    if x.flat or not (1 <= ch <= x.h and 1 <= cw <= x.w):
        raise DarknetError(f"{s.where()}: a {ch}x{cw} crop of a {x.c}x{x.h}x{x.w} output")
    name = f"crop{i}"
    b.layer(f"{name}_size", "DummyData", None, f"{name}_size",
            f"dummy_data_param {{ shape {{ dim: 1 dim: 1 dim: {ch} dim: {cw} }} }}")
    b.layer(name, "Crop", [x.top, f"{name}_size"], name,
            f"crop_param {{ axis: 2 offset: {(x.h - ch) // 2} offset: {(x.w - cw) // 2} }}")
    if not noadjust:
        b.layer(f"{name}_adjust", "Power", name, name, "power_param { scale: 2 shift: -1 }")
    return _Out(name, x.c, ch, cw)


def _detection(b, s, x):
    if s.int("random", 0) or s.int("forced", 0) or s.int("reorg", 0):
        warnings.warn(f"{s.where()}: random, forced and reorg only change training in "
                      "Darknet; minicnn's Detection layer ignores them", stacklevel=4)
    fields = dict(side=s.int("side", 7), num=s.int("num", 1),
                  classes=s.int("classes", 1), coords=s.int("coords", 1))
    d = fields["side"] ** 2 * (fields["classes"] + fields["num"] * (1 + fields["coords"]))
    if x.c * x.h * x.w != d:
        raise DarknetError(f"{s.where()}: side {fields['side']}, num {fields['num']}, "
                           f"classes {fields['classes']}, coords {fields['coords']} make "
                           f"{d} values, but the layer before gives {x.c * x.h * x.w}")
    if fields["coords"] != 4 or s.int("softmax", 0):
        raise DarknetError(f"{s.where()}: minicnn's Detection needs coords=4 and "
                           "softmax=0 (YOLOv1)")
    flags = dict(sqrt=s.int("sqrt", 0), rescore=s.int("rescore", 0))
    scales = {k: s.float(k, 1.0) for k in ("object_scale", "noobject_scale",
                                             "class_scale", "coord_scale")}
    body = " ".join([f"{k}: {v}" for k, v in fields.items()]
                    + [f"{k}: {'true' if v else 'false'}" for k, v in flags.items()]
                    + [f"{k}: {v!r}" for k, v in scales.items()])
    b.layer("detection", "Detection", [x.top] + b.labels, "detection",
            f"detection_param {{ {body} }}")
    return _Out("detection", d, 1, 1, flat=True)


def _warn_unused(s, kind):
    """Darknet's option_unused: a key no parser read is printed as "Unused field" (a misspelt
    key silently takes its default, filters=1 for a misspelt filters). The layer sections'
    keys are all read by the conversion; [net], [region], [yolo], [detection] and [cost] hold
    training keys minicnn does not use, and are not checked."""
    if kind in ("region", "yolo", "detection", "cost"):
        return
    for key in s.options:
        if key not in s.used and key not in TRAINING_KEYS.get(kind, ()):
            warnings.warn(f"{s.path}:{s.key_lines[key]}: [{s.kind}]: unused field "
                          f"'{key}={s.options[key]}' (not a key of this section that minicnn "
                          "converts: misspelt? Darknet prints 'Unused field' too)", stacklevel=4)


def build(sections, weights, train_data=None, label="boxes"):
    """(prototxt text, {layer name: [arrays]}) of a parsed cfg with its weights (a
    WeightsReader); with ``weights`` None, the layers get fillers instead (Darknet's random
    initialisation, see convert_darknet) and the dict is empty. ``train_data``, a data layer's
    text with tops "data" and ``label``, makes the train net instead: that layer in place of the
    Input, the label blob (a detector's box lists, "boxes") each Region / Yolo / Detection
    layer's second bottom, or a classifier's ("label") its SoftmaxWithLoss's."""
    net = sections[0]
    recurrent = [s for s in sections[1:] if s.kind in RECURRENT]
    if recurrent:
        raise DarknetError(f"{recurrent[0].where()}: Darknet's recurrent layers "
                           f"({', '.join(RECURRENT)}) are not converted: they keep a state from "
                           "one network_predict to "
                           "the next (char-rnn's time steps), which a Caffe deploy net has no "
                           "place for")
    c, h, w = net.int("channels", 0), net.int("height", 0), net.int("width", 0)
    if min(c, h, w) <= 0:
        raise DarknetError(f"{net.where()}: give height, width and channels (got {h}, {w}, {c})")
    b = _Builder(os.path.splitext(os.path.basename(net.path))[0])
    b.net_w, b.net_h, b.seen = w, h, getattr(weights, "seen", 0)
    head = None
    if train_data:
        b.lines.append(train_data.rstrip("\n"))
        b.labels = [label]
        head = _classifier_head(sections)
    else:
        b.layer("data", "Input", None, "data",
                f"input_param {{ shape {{ dim: 1 dim: {c} dim: {h} dim: {w} }} }}")
    x, outs = _Out("data", c, h, w), []
    for i, s in enumerate(sections[1:]):
        kind = KINDS.get(s.kind)
        if kind in ("convolutional", "local", "maxpool", "upsample", "reorg", "region",
                    "yolo") and x.flat:
            raise DarknetError(f"{s.where()}: a [{s.kind}] after a connected layer")
        if kind == "convolutional":
            x = _convolutional(b, s, i, x, weights)
        elif kind == "local":
            x = _local(b, s, i, x, weights)
        elif kind == "maxpool":
            x = _maxpool(b, s, i, x)
        elif kind == "connected":
            x = _connected(b, s, i, x, weights)
        elif kind == "dropout":
            p = s.float("probability", 0.5)
            b.layer(f"drop{i}", "Dropout", x.top, x.top,
                    f"dropout_param {{ dropout_ratio: {p!r} }}")
        elif kind == "avgpool":
            name = f"avgpool{i}"
            b.layer(name, "Pooling", x.top, name, "pooling_param { pool: AVE global_pooling: "
                                                  "true }")
            x = _Out(name, x.c, 1, 1)
        elif kind == "softmax" and s.options.get("tree"):
            if s.float("temperature", 1.0) != 1 or x.h * x.w != 1:
                raise DarknetError(f"{s.where()}: minicnn converts a softmax tree over a whole "
                                   "C x 1 x 1 output (temperature=1)")
            name = f"softmax{i}"
            b.layer(name, "SoftmaxTree", x.top, name,
                    "softmax_tree_param {\n  " + _tree(s, x.c, "parent") + " }")
            x = _Out(name, x.c, 1, 1, x.flat)
        elif kind == "softmax":
            x = _softmax(b, s, i, x, head[1] if head and head[0] is s else None)
        elif kind == "cost":
            pass                                 # training only; Darknet predicts before it
        elif kind == "route":
            x = _route(b, s, i, outs)
        elif kind == "shortcut":
            x = _shortcut(b, s, i, x, outs)
        elif kind == "upsample":
            x = _upsample(b, s, i, x)
        elif kind == "reorg":
            x = _reorg(b, s, i, x)
        elif kind == "region":
            x = _region(b, s, i, x)
        elif kind == "yolo":
            x = _yolo(b, s, i, x)
        elif kind == "detection":
            x = _detection(b, s, x)
        elif kind == "crop":
            x = _crop(b, s, i, x)
        else:
            raise DarknetError(f"{s.where()}: this kind of section cannot be converted "
                               f"(minicnn converts: {', '.join(sorted(set(KINDS.values())))})")
        _warn_unused(s, kind)
        outs.append(x)
    return b.text(), b.weights


def darknet_train_data(sections, source="train.txt"):
    """The TRAIN data layer (prototxt text) that feeds a YOLOv2/v3 cfg as Darknet's detector
    trainer does, or None when the cfg's last section is not a [region] or [yolo] (YOLOv1 and
    classifiers keep what they had). detector.c takes the loader's settings from the [net]
    (height, width; hue, saturation, exposure: Darknet's defaults 0, 1, 1) and from the net's
    last layer (jitter, default .2; max, the truths per image: 90 for [yolo], 30 for [region];
    random=1, multi-scale training: random_size with the [net]'s max_batches):
    a DetectionData with augment: DARKNET_V2 and those keys, R, G, B channels scaled to [0, 1],
    flip: true (the 2018 loader always flips at random), batch_size = batch / subdivisions.
    ``sections`` is read_cfg's list."""
    net, last = sections[0], sections[-1]
    kind = KINDS.get(last.kind)
    if kind not in ("region", "yolo"):
        return None
    h, w = net.int("height", 0), net.int("width", 0)
    batch = _pass_size(net)
    fields = (f"source: \"{source}\" batch_size: {batch} shuffle: true new_height: {h} "
              f"new_width: {w} rgb: true\n    augment: DARKNET_V2 jitter: "
              f"{last.float('jitter', 0.2)!r} hue: {net.float('hue', 0.0)!r} saturation: "
              f"{net.float('saturation', 1.0)!r} exposure: {net.float('exposure', 1.0)!r} "
              "flip: true")
    fields += f" max_boxes: {last.int('max', 90 if kind == 'yolo' else 30)}"
    if last.int("random", 0):
        fields += f"\n    random_size: true max_batches: {net.int('max_batches', 0)}"
    return ('layer { name: "data" type: "DetectionData" top: "data" top: "boxes"\n'
            "  include { phase: TRAIN }\n"
            "  transform_param { scale: 0.00392156862745098 }\n"
            f"  detection_data_param {{ {fields} }} }}\n")


def _yolov1_train_data(sections, source="train.txt"):
    """The TRAIN DetectionData for a cfg ending in [detection] (YOLOv1: yolo.c's train_yolo
    loads with load_data_region: a crop moving each side by up to the [detection]'s jitter, a
    random flip), or None. Darknet's HSV distortion there (the [net]'s hue, saturation,
    exposure) is not in minicnn's DARKNET_V1 loader: a note says so."""
    net, last = sections[0], sections[-1]
    if KINDS.get(last.kind) != "detection":
        return None, []
    h, w = net.int("height", 0), net.int("width", 0)
    batch = _pass_size(net)
    notes = []
    distort = {k: net.float(k, d) for k, d in (("hue", 0.0), ("saturation", 1.0),
                                                ("exposure", 1.0))}
    if distort != {"hue": 0.0, "saturation": 1.0, "exposure": 1.0}:
        notes.append("YOLOv1's data layer (DetectionData augment: DARKNET_V1) has no HSV "
                     "distortion: the [net]'s " + ", ".join(f"{k}={v:g}" for k, v in
                                                           distort.items()) + " are not kept")
    layer = ('layer { name: "data" type: "DetectionData" top: "data" top: "boxes"\n'
             "  include { phase: TRAIN }\n"
             "  transform_param { scale: 0.00392156862745098 }\n"
             f'  detection_data_param {{ source: "{source}" batch_size: {batch} shuffle: true '
             f"new_height: {h} new_width: {w} rgb: true\n    jitter: "
             f"{last.float('jitter', 0.2)!r} flip: true max_boxes: {last.int('max', 30)} }} }}\n")
    return layer, notes


# the [net]'s keys of Darknet's classifier loader (load_data_augment) with no ImageData field:
# (key, Darknet's default, what Darknet does with it)
CLASSIFIER_AUGMENT = (
    ("angle", 0.0, "rotates each image by a random angle within +-angle degrees"),
    ("aspect", 1.0, "stretches its aspect ratio by a random factor between aspect and "
                    "1/aspect"),
    ("hue", 0.0, "shifts its hue by a random amount within +-hue"),
    ("saturation", 1.0, "scales its saturation by a random factor between saturation and "
                        "1/saturation"),
    ("exposure", 1.0, "scales its brightness by a random factor between exposure and "
                      "1/exposure"))


def _classifier_head(sections):
    """(the [softmax] section, the SoftmaxWithLoss's loss_weight) of a classifier, a cfg whose
    last section is [softmax] or [softmax] then a [cost]; None for other nets. The weight makes
    Darknet's gradient (see the module's docstring): 1 for the softmax's own delta (0 with
    noloss=1), plus the [cost]'s scale (default 1; its types sse, masked and smooth all give
    truth - output where |truth - output| < 1, i.e. everywhere but a probability of exactly 0
    or 1 on the wrong side), times the softmax's temperature t, which Darknet's delta leaves out
    and the Power 1/t before the SoftmaxWithLoss puts in. A head minicnn cannot write this way
    is a DarknetError."""
    k = len(sections)
    while k > 1 and KINDS.get(sections[k - 1].kind) == "cost":
        k -= 1
    soft, costs = sections[k - 1], sections[k:]
    if k < 2 or KINDS.get(soft.kind) != "softmax":
        return None
    if soft.options.get("tree"):
        raise DarknetError(f"{soft.where()}: tree=: Darknet trains a softmax tree with its "
                           "hierarchy's labels (every ancestor of the class set), which "
                           "SoftmaxWithLoss's one label cannot hold")
    if len(costs) > 1:
        raise DarknetError(f"{costs[1].where()}: a second [cost] (Darknet feeds it the first "
                           "one's squared errors): minicnn writes the loss of [softmax] and one "
                           "[cost]")
    weight = (0.0 if soft.int("noloss", 0) else 1.0) + sum(c.float("scale", 1.0) for c in costs)
    if weight == 0:
        raise DarknetError(f"{soft.where()}: noloss=1 without a [cost] after it: Darknet "
                           "computes no gradient for this net")
    return soft, weight * soft.float("temperature", 1.0)


def classifier_train_data(sections, source="train.txt", val_source="val.txt"):
    """(data layers' text, notes) of a classifier's train net (_classifier_head), or (None, [])
    for other nets. Darknet's classifier trainer (classifier.c, load_data_augment) loads each
    image as R, G, B in [0, 1], resizes its shorter side to a random size in [min_crop,
    max_crop] (the [net]'s keys; defaults width and 2 x width), crops width x height at random
    (center=1: in the centre), flips it at random and distorts it (CLASSIFIER_AUGMENT); its
    labels come from the paths. The TRAIN layer: an ImageData (``path label`` lines) with
    shuffle, new_height x new_width the [net]'s size or min_crop with a crop_size
    (_classifier_resize), transform_param scale 1/255 and mirror. The TEST layer reads
    ``val_source`` as Darknet's validation (``darknet classifier valid``,
    validate_classifier_single) reads the data cfg's valid= list: no flip, no shuffle, each
    image's shorter side resized to width, keeping its aspect, and the centre width x height
    cropped from it; Caffe's nearest is the whole image resized to the [net]'s size (the same
    for square images: a crop_size there, Caffe's centre crop in TEST, would cut their edges,
    which Darknet keeps), the batch the TRAIN layer's. For channels=3 a Slice and a Concat, in
    both phases, turn OpenCV's B, G, R into R, G, B (is_color: false, gray, for channels=1).
    The random size of the crop and the distortions have no ImageData field:
    the notes say which of the distortions the cfg asks for."""
    if _classifier_head(sections) is None:
        return None, []
    net = sections[0]
    c, h, w = net.int("channels", 0), net.int("height", 0), net.int("width", 0)
    if c not in (1, 3):
        raise DarknetError(f"{net.where()}: channels={c}: Caffe's ImageData gives 3 (colour) or "
                           "1 (gray) channels")
    batch = _pass_size(net)
    side, crop = _classifier_resize(net)

    def image_data(phase, transform, fields):
        return (f'layer {{ name: "data" type: "ImageData" top: "{"data" if c == 1 else "bgr"}" '
                f'top: "label"\n  include {{ phase: {phase} }}\n'
                f"  transform_param {{ scale: 0.00392156862745098{transform} }}\n"
                f"  image_data_param {{ {fields}"
                + (" is_color: false" if c == 1 else "") + " } }\n")
    layer = image_data("TRAIN", " mirror: true" + (f" crop_size: {w}" if crop else ""),
                       f'source: "{source}" batch_size: {batch} shuffle: true '
                       f"new_height: {side or h} new_width: {side or w}")
    layer += image_data("TEST", "", f'source: "{val_source}" batch_size: {batch} '
                        f"new_height: {h} new_width: {w}")
    if c == 3:                      # OpenCV decodes B, G, R; Darknet's nets take R, G, B
        layer += ('layer { name: "bgr_planes" type: "Slice" bottom: "bgr" top: "b" top: "g" '
                  'top: "r" slice_param { axis: 1 } }\n'
                  'layer { name: "rgb" type: "Concat" bottom: "r" bottom: "g" bottom: "b" '
                  'top: "data" concat_param { axis: 1 } }\n')
    given = [(key, net.float(key, default), what) for key, default, what in CLASSIFIER_AUGMENT
             if net.float(key, default) != default]
    notes = [] if not given else [
        "[net] " + ", ".join(f"{key}={value:g}" for key, value, _ in given) + ": Darknet's "
        "classifier loader " + "; ".join(what for *_, what in given) + ". Caffe's ImageData has "
        "no such augmentation: the train net leaves " + ("it" if len(given) == 1 else "them")
        + " out"]
    return layer, notes


def _classifier_resize(net):
    """(side, crop) of a classifier's ImageData: Darknet's loader (random_augment_image) scales
    each image's shorter side to a random size in [min_crop, max_crop] and crops a random
    width x width from it (center=1: the centre square, resized to the net's size). Caffe's
    nearest is new_height = new_width = min_crop, the smallest of those sizes, and a random
    crop_size x crop_size (Caffe's crop is square): side min_crop and crop True where that
    crops (min_crop > width, a square net, no center); else (None, False): the whole image
    resized to the net's size. min_crop here is Darknet's args.min (_classifier_crop_range:
    min_ratio x width where the cfg gives min_ratio)."""
    w, h = net.int("width", 0), net.int("height", 0)
    lo, _ = _classifier_crop_range(net)
    if net.int("center", 0) or lo <= w or w != h:
        return None, False
    return lo, True


def _classifier_crop_range(net):
    """(min, max) of Darknet's classifier loader's random size: args.min = min_ratio * w and
    args.max = max_ratio * w (float products truncated), min_ratio / max_ratio defaulting to
    min_crop / w and max_crop / w (parse_net_options), min_crop w and max_crop 2 w."""
    f32, w = np.float32, net.int("width", 0)
    lo, hi = net.int("min_crop", w), net.int("max_crop", 2 * w)
    if not w:
        return lo, hi
    ratios = [f32(net.float(key, f32(crop) / f32(w))) for key, crop in (("min_ratio", lo),
                                                                          ("max_ratio", hi))]
    return tuple(int(r * f32(w)) for r in ratios)


def _classifier_loader_comment(sections):
    """The classifier train net's header (comment lines): how to write its image list from
    Darknet's, and where its ImageData's resize and crop differ from Darknet's loader."""
    net = sections[0]
    w, h = net.int("width", 0), net.int("height", 0)
    lo, hi = _classifier_crop_range(net)
    side, cropped = _classifier_resize(net)
    if net.int("center", 0):
        crop = (f"crops the centre square of each image and resizes it to {w}x{h}; this one "
                f"resizes the whole image to {w}x{h} (the same for square images)")
    else:
        crop = (f"resizes each image's shorter side to a random size in [{lo}, {hi}] (min_crop, "
                f"max_crop) and crops a random {w}x{h} from it; this one resizes the whole "
                + (f"image to {side}x{side} and crops a random {w}x{w} (the same for square "
                   f"images{'' if lo == hi else ' at the smallest size'})" if cropped else
                   f"image to {w}x{h}"))
    return ("# Point the TRAIN data layer's source at your image list: ImageData reads 'path "
            "label' lines, the label\n# the class number from 0. Darknet's classifier reads the "
            "data cfg's train= list (one path a\n# line) and labels= file (one class name a line): "
            "an image's class is the line whose name\n# occurs in its path (fill_truth; a path "
            "with no name or several trains towards zero or several\n# ones, which ImageData's "
            "one label cannot hold). So give each path its name's line number,\n# counted from "
            "0, e.g. (labels.txt and train.list as your data cfg names them):\n"
            "#   python3 -c 'import sys; names = open(sys.argv[1]).read().splitlines(); "
            "[print(p, [k for k, n in enumerate(names) if n in p][0]) for p in "
            "open(sys.argv[2]).read().splitlines()]' labels.txt train.list > train.txt\n"
            f"# Darknet's loader {crop}.\n"
            "# The TEST data layer reads val.txt, made the same way from the data cfg's valid= "
            "list\n# (... labels.txt valid.list > val.txt); the solver tests on it once you set "
            "its test_iter\n# and test_interval. Darknet's validation (darknet classifier valid) "
            f"resizes each image's shorter\n# side to {w}, keeping its aspect, and crops the "
            f"centre {w}x{h}, unflipped; this one resizes the whole\n# image to {w}x{h} "
            + ("(the same for square images).\n" if w == h else "(ImageData's crop is square, "
               f"so not even a square image gets Darknet's {w}x{h} centre).\n"))


def _pass_size(net):
    """The images of one pass (a data layer's batch_size): the [net]'s batch / subdivisions,
    at least 1 (Darknet's parse_net_options: net->batch /= subdivs)."""
    return max(net.int("batch", 1) // max(net.int("subdivisions", 1), 1), 1)


def _f32(value):
    """A float as the solver's float field holds it, written short (0.001, not 0.0009999...)."""
    from minicnn.proto.text import format_float
    return format_float(value)


def _steps_schedule(net, lr):
    """(solver lines, notes) for policy=steps. Darknet multiplies the rate by scales[i] once
    the batch number reaches steps[i], so from its update steps[i], Caffe's iteration
    steps[i] - 1 (darknet_solver); Caffe's multistep multiplies by one gamma at each
    stepvalue. Exact when the scales are equal (and the steps rise from above 0). Darknet's cfgs
    also warm up by steps (yolov1.cfg: scales=2.5,2,2,2,.1,.1): where the rate only rises to a
    peak and then falls by one factor, the solver starts at the peak and keeps the rest exactly.
    Anything else runs at the cfg's learning_rate, fixed, the schedule listed in a note. A
    negative step ends the schedule there, as libdarknet's unsigned comparison does."""
    where = net.where()
    try:
        steps = [int(v) for v in net.str("steps", "").split(",") if v.strip()]
        scales = [float(v) for v in net.str("scales", "").split(",") if v.strip()]
    except ValueError:
        raise DarknetError(f"{where}: steps= and scales= must be lists of numbers") from None
    if not steps or len(steps) != len(scales):
        raise DarknetError(f"{where}: policy=steps needs steps= and scales= of one length (got "
                           f"{len(steps)} steps, {len(scales)} scales)")
    unsigned = []
    if any(step < 0 for step in steps):
        # get_current_rate compares int steps[i] with its size_t batch number: a negative step
        # is huge unsigned, so the loop returns there and no later step is ever reached
        # (yolov2-tiny-voc.cfg's steps=-1,100,...: libdarknet trains at learning_rate throughout)
        cut = next(k for k, step in enumerate(steps) if step < 0)
        unsigned = [f"steps={','.join(map(str, steps))}: libdarknet compares step {steps[cut]} "
                    "with its unsigned batch number, so it is never reached and the rate keeps "
                    "the value before it; the steps from there on are ignored, as Darknet "
                    "ignores them"]
        steps, scales = steps[:cut], scales[:cut]
        if not steps:
            return [f"base_lr: {_f32(lr)}", 'lr_policy: "fixed"'], unsigned
    rates, rate = [], lr
    for scale in scales:
        rate *= scale
        rates.append(rate)
    schedule = ", ".join([f"{lr:g} from 0"] + [f"{r:g} from {k}" for k, r in zip(steps, rates)])
    for k in range(-1, len(steps)):
        peak = lr if k < 0 else rates[k]
        rest, gammas = steps[k + 1:], scales[k + 1:]
        start = 0 if k < 0 else steps[k]
        if any(r > peak * (1 + 1e-6) for r in [lr] + rates[:k + 1]) or len(set(gammas)) > 1 \
                or any(a >= b for a, b in zip([start] + rest, rest)):
            continue
        lines = [f"base_lr: {_f32(peak)}"]
        if rest:
            lines += ['lr_policy: "multistep"', f"gamma: {_f32(gammas[0])}"]
            lines += [f"stepvalue: {v - 1}" for v in rest]       # update v: iteration v - 1
        else:
            lines += ['lr_policy: "fixed"']
        notes = unsigned + ([] if k < 0 else [
            f"Darknet's rate ({schedule}) rises to {peak:g} by steps; Caffe's lr_policy cannot "
            f"raise the rate, so the solver runs at {peak:g} from iteration 0 (not the lower "
            f"rates of the first {steps[k] - 1} iterations), the rest of the schedule exactly"])
        return lines, notes
    return [f"base_lr: {_f32(lr)}", 'lr_policy: "fixed"'], unsigned + [
        f"Darknet's rate ({schedule}) changes by different factors, which Caffe's multistep "
        "(one gamma) cannot follow: the solver keeps learning_rate fixed; to follow Darknet, "
        "train in stages (edit base_lr and max_iter, resume with --snapshot)"]


def darknet_solver(sections, net_file):
    """(solver prototxt text, notes) for the [net]'s training keys, with Darknet's defaults
    (parse_net_options): one Darknet batch (batch images; ``subdivisions`` forward/backward
    passes of batch / subdivisions, the gradients summed, then one update divided by batch) is
    one Caffe iteration of iter_size = subdivisions (the data layer's batch_size is batch /
    subdivisions; Caffe divides the summed diffs by iter_size, its losses by batch_size);
    learning_rate, momentum and decay are base_lr, momentum and weight_decay; max_batches is
    max_iter; the policy (get_current_rate at batch_num n: Darknet counts the images seen
    before it updates, so its first update is at n = 1, and Caffe's iteration i is Darknet's
    n = i + 1): constant -> fixed, exp -> exp (base_lr learning_rate * gamma), sigmoid ->
    sigmoid (Darknet's lr / (1 + exp(gamma (n - step))): Caffe's gamma is -gamma, its stepsize
    step - 1; a note says that libdarknet's unsigned n - step makes its rate 0 before step),
    steps -> multistep (_steps_schedule, each stepvalue step - 1); step -> step (stepsize step,
    gamma scale) and poly -> poly (power), which Caffe's formulas cannot shift by one
    iteration: a comment in the solver says that each rate comes one iteration later than in
    Darknet (exact for step=1, which becomes base_lr learning_rate * scale). What has no Caffe
    equivalent is a note (written into
    the solver and warned about by convert_darknet): burn_in (Darknet's
    lr * (n / burn_in)^power warm-up), policy=random, adam=1."""
    net = sections[0]
    batch, subdivisions = net.int("batch", 1), max(net.int("subdivisions", 1), 1)
    lr, power = net.float("learning_rate", 0.001), net.float("power", 4.0)
    policy, notes, late = net.str("policy", "constant").strip(), [], None
    if policy == "constant":
        lines = [f"base_lr: {_f32(lr)}", 'lr_policy: "fixed"']
    elif policy == "step":
        step, scale = net.int("step", 1), net.float("scale", 1.0)
        if step == 0:       # get_current_rate's batch_num / step: libdarknet divides by 0
            raise DarknetError(f"{net.where()}: policy=step needs step > 0 (got 0, by which "
                               "Darknet would divide the batch number)")
        if step < 0:        # size_t batch_num / int step: the step is huge unsigned, the power 0
            lines = [f"base_lr: {_f32(lr)}", 'lr_policy: "fixed"']
            notes.append(f"policy=step with step={step}: libdarknet divides its unsigned batch "
                         "number by the step taken as unsigned, so the rate stays learning_rate")
        else:
            lines = [f"base_lr: {_f32(lr * scale if step == 1 else lr)}", 'lr_policy: "step"',
                     f"gamma: {_f32(scale)}", f"stepsize: {step}"]
        if step > 1:
            late = (f"policy=step: Darknet's rate changes at its updates {step}, {2 * step}, "
                    f"..., Caffe's iterations {step - 1}, {2 * step - 1}, ...; Caffe's step "
                    f"policy changes it at {step}, {2 * step}, ...: one iteration later")
    elif policy == "exp":
        gamma = net.float("gamma", 1.0)
        lines = [f"base_lr: {_f32(lr * gamma)}", 'lr_policy: "exp"', f"gamma: {_f32(gamma)}"]
    elif policy == "poly":
        lines = [f"base_lr: {_f32(lr)}", 'lr_policy: "poly"', f"power: {_f32(power)}"]
        late = ("policy=poly: Darknet's update i + 1 (Caffe's iteration i) runs at its rate "
                "of batch i + 1, Caffe's poly at that of batch i: each rate one iteration later")
    elif policy == "sigmoid":
        lines = [f"base_lr: {_f32(lr)}", 'lr_policy: "sigmoid"',
                 f"gamma: {_f32(-net.float('gamma', 1.0))}",
                 f"stepsize: {net.int('step', 1) - 1}"]
        notes.append(f"policy=sigmoid: Darknet computes batch - step in unsigned (size_t) "
                     f"arithmetic, so its rate is 0 for its first {net.int('step', 1) - 1} "
                     "updates (batches 1 to step - 1); "
                     "the solver follows the formula there too (learning_rate / (1 + exp(gamma "
                     "(batch - step))))")
    elif policy == "steps":
        lines, notes = _steps_schedule(net, lr)
    else:
        lines = [f"base_lr: {_f32(lr)}", 'lr_policy: "fixed"']
        notes.append(f"policy={policy} ("
                     + ("learning_rate * rand_uniform(0, 1)^power, drawn each batch"
                        if policy == "random" else "not a Darknet policy: Darknet uses constant")
                     + ") has no Caffe lr_policy: the solver keeps learning_rate fixed")
    burn_in = net.int("burn_in", 0)
    if burn_in > 0:
        notes.append(f"burn_in={burn_in}: Darknet warms up over the first {burn_in} batches "
                     f"(rate learning_rate * (batch / burn_in)^{power:g}); Caffe has no warm-up, "
                     "so the solver starts at the full rate (lower base_lr for the first "
                     f"{burn_in} iterations and resume with --snapshot if training diverges)")
    if net.int("adam", 0):
        notes.append("adam=1: written as SGD with momentum; Caffe's Adam solver (type: \"Adam\", "
                     "momentum B1, momentum2 B2, delta eps) is the nearest, not checked against "
                     "Darknet's update")
    max_batches = net.int("max_batches", 0)
    if max_batches <= 0:
        notes.append(f"max_batches is {max_batches} (0 is Darknet's default: it would train "
                     "no batch): set max_iter in the solver")
    if batch // subdivisions <= 1:
        notes.append(f"batch={batch} subdivisions={subdivisions}: one image per pass (Darknet's "
                     "cfgs ship set for testing, batch=1; their training values, e.g. batch=64 "
                     "subdivisions=16, are commented out in the [net]: set them before "
                     "converting)")
    stem = os.path.splitext(os.path.basename(net.path))[0]
    lines = [f'net: "{net_file}"'] + lines + [
        f"momentum: {_f32(net.float('momentum', 0.9))}",
        f"weight_decay: {_f32(net.float('decay', 0.0001))}",
        f"iter_size: {subdivisions}", f"max_iter: {max(max_batches, 0)}",
        "display: 10", "average_loss: 10", "snapshot: 1000",
        f'snapshot_prefix: "snapshots/{stem}"']
    head = [f"# Converted by minicnn from {os.path.basename(net.path)}'s [net]: Darknet's "
            "training schedule as a Caffe solver.",
            f"# One iteration is one Darknet batch: iter_size {subdivisions} passes of "
            f"{max(batch // subdivisions, 1)} images.",
            "# Caffe's momentum keeps the rate in its history (Darknet applies the rate after "
            "it):", "# the same updates under a fixed rate, a few iterations' difference after "
            "a step."]
    if late:          # like the momentum's difference: said in the solver, not warned about
        head.append(f"# {late}.")
    head += [f"# Note: {n}" for n in notes]
    return "\n".join(head + lines) + "\n", notes


def _caffe_pool_size(size_in, kernel, stride, pad):
    out = -(-(size_in + 2 * pad - kernel) // stride) + 1            # ceil, as Caffe
    if pad and (out - 1) * stride >= size_in + pad:
        out -= 1
    return out


def darknet_resize(image, height, width):
    """Darknet's resize_image (src/image.c) on a float32 (C, H, W) image, in its float32
    arithmetic: a horizontal pass, sx = c * (W-1)/(width-1), (1 - dx) * p[ix] + dx * p[ix+1]
    (the last column copies the last pixel), then a vertical one that writes (1 - dy) * row iy
    and adds dy * row iy+1 except on the last output row (Darknet's quirk: where sy rounds
    below H-1 there, that row is dimmed)."""
    f = np.float32
    image = np.asarray(image, f)
    c, h, w = image.shape
    if height < 1 or width < 1:
        raise DarknetError(f"cannot resize to {height}x{width}")

    def taps(n_in, n_out):
        scale = f(n_in - 1) / f(n_out - 1) if n_out > 1 else f(0)
        s = np.arange(n_out, dtype=f) * scale
        i = np.minimum(s.astype(np.int64), n_in - 1)
        return i, s - i.astype(f)
    ix, dx = taps(w, width)
    part = (f(1) - dx) * image[:, :, ix] + dx * image[:, :, np.minimum(ix + 1, w - 1)]
    if w == 1 or width == 1:
        part[...] = image[:, :, w - 1:w]
    else:
        part[:, :, -1] = image[:, :, -1]
    iy, dy = taps(h, height)
    out = (f(1) - dy)[None, :, None] * part[:, iy]
    if h > 1:
        more = dy[:-1, None] * part[:, np.minimum(iy[:-1] + 1, h - 1)]
        out[:, :-1] += more
    return out


def _train_data_comment(sections):
    layer = darknet_train_data(sections)
    if layer is None:
        return ""
    return ("# To train it as Darknet's detector trainer does, take this data layer (the box lists "
            "as\n# each Region/Yolo layer's second bottom):\n"
            + "".join(f"#   {line}\n" for line in layer.splitlines()))


def convert_darknet(cfg, weights, out_dir):
    """Write ``<cfg name>.prototxt`` and ``.caffemodel`` into ``out_dir``; returns their
    paths. With ``weights`` None (a cfg alone, as ``darknet detector train`` starts from
    scratch) no caffemodel is written but a train net and a solver are (_training_files), and
    the prototxt's layers' fillers Darknet's random initialisation
    (Debian's 2018 libdarknet): [convolutional] weights gaussian, std sqrt(2 / (size * size *
    channels / groups)) (scale * rand_normal()); [connected] uniform in +-sqrt(2 / inputs) and
    [local] in +-sqrt(2 / (size * size * channels)) (scale * rand_uniform(-1, 1)); biases 0;
    batch norm scales 1, rolling statistics 0, a BatchNorm that uses the batch's statistics in
    TRAIN (see _fresh_batch_norm). Darknet's make_local_layer draws only the first place's
    filters and leaves the other places' at 0 (its loop stops at c * n * size * size); the
    filler draws every place's alike."""
    from minicnn.net import TEST, Net
    from minicnn.proto.text import parse_text
    from minicnn.proto.wire import atomic_write
    out, place = os.fspath(out_dir), "second" if weights is None else "third"
    if out.endswith(".weights") and not os.path.isdir(out):
        raise DarknetError(f"{out_dir}: the {place} argument is the output folder, not a "
                           ".weights file: the arguments are cfg [weights] outdir")
    if out.endswith((".prototxt", ".caffemodel")) and not os.path.isdir(out):
        raise DarknetError(f"{out_dir}: the {place} argument is a folder: the prototxt and the "
                           "caffemodel are written into it, named after the cfg (e.g. out/)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DarknetError(f"{out_dir}: the {place} argument, the output folder, is a file (the "
                           "arguments are cfg [weights] outdir)")
    sections = read_cfg(cfg)
    reader = None if weights is None else WeightsReader(weights)
    text, arrays = build(sections, reader)
    if reader is not None and reader.left:
        warnings.warn(f"{weights}: {reader.left} bytes after the last layer's weights were not "
                      "used", stacklevel=2)
    net = Net(parse_text(text, "NetParameter", path=cfg), phase=TEST)
    for name, blobs in arrays.items():
        layer = net.layer_dict[name]
        for blob, array in zip(layer.blobs, blobs):
            blob.data[...] = array.reshape(blob.shape)
    stem = os.path.splitext(os.path.basename(cfg))[0]
    training, notes = _training_files(sections, stem) if reader is None else ([], [])
    os.makedirs(out_dir, exist_ok=True)
    prototxt = os.path.join(out_dir, stem + ".prototxt")
    caffemodel = os.path.join(out_dir, stem + ".caffemodel")
    if reader is None:
        source = (f"{os.path.basename(cfg)} without weights: the fillers are Darknet's random "
                  "initialisation, to train from scratch; no caffemodel")
    else:
        source = (f"{os.path.basename(cfg)} and {os.path.basename(weights)} (Darknet "
                  f"{reader.major}.{reader.minor}.{reader.revision}, seen {reader.seen})")
    with atomic_write(prototxt, "w") as f:
        f.write(f"# Converted by minicnn from {source}.\n# Input: RGB scaled to [0, 1] "
                f"({input_hint(sections)}).\n" + _train_data_comment(sections) + text)
    if reader is None:
        written = [prototxt]
        for name, content in training:
            written.append(os.path.join(out_dir, name))
            with atomic_write(written[-1], "w") as f:
                f.write(content)
        for note in notes:
            warnings.warn(f"{cfg}: {note}", stacklevel=2)
        return written
    net.save(caffemodel)
    return [prototxt, caffemodel]


def input_hint(sections):
    """The command that feeds a converted net Darknet's input (R, G, B scaled to [0, 1]): a
    detector's (last section [region], [yolo] or [detection]) `minicnn detect --rgb`, any
    other net's `minicnn classify` with the flags that turn off its BGR x 255 minus ImageNet's
    mean."""
    if KINDS.get(sections[-1].kind) in ("region", "yolo", "detection"):
        return "minicnn detect --rgb"
    return "minicnn classify --channel-swap none --raw-scale 1 --mean none"


def _train_data(sections):
    """(data layer text or None, its label top, the train net's header, notes): the TRAIN data
    layer of a detector's train net (box lists) or a classifier's (labels)."""
    layer = darknet_train_data(sections)
    notes = []
    if layer is None:
        layer, notes = _yolov1_train_data(sections)
    if layer is not None:
        return layer, "boxes", ("# Point the data layer's source at your image list (Darknet's "
                                "train.txt: one image path a line,\n# its boxes in the labels/ "
                                "file beside images/, class x y w h relative to the image).\n"), \
            notes
    layer, notes = classifier_train_data(sections)
    return layer, "label", _classifier_loader_comment(sections), notes


def _training_files(sections, stem):
    """([(file name, text)], notes) for a cfg without weights, to train from scratch:
    ``<stem>_solver.prototxt`` (darknet_solver) and, for a detector (the last section [region],
    [yolo] or [detection]) or a classifier (the last [softmax], then a [cost] or not), the train
    net ``<stem>_train.prototxt`` the solver names, its data layer's source the placeholder
    train.txt (a detector's: Darknet's image list, labels found by its images -> labels rule; a
    classifier's: ImageData's "path label" lines, its header comment says how to make them from
    Darknet's list; its TEST data layer's source val.txt, the solver's test_iter and
    test_interval commented out: _classifier_test_comment). Other nets, and classifiers whose
    head minicnn cannot write as a SoftmaxWithLoss, get the solver alone, and a note says to
    write the train net. The notes are written into the train net too. Nothing is written here,
    so that an error in the cfg's training keys (a step of 0) leaves no file behind."""
    from minicnn.proto.text import parse_text
    net_file = f"{stem}_train.prototxt"
    solver_text, notes = darknet_solver(sections, net_file)
    test = _classifier_test_comment(sections)
    files, why = [], "minicnn writes one for detectors (last section [region], [yolo] or " \
        "[detection]) and classifiers (last section [softmax], or [softmax] and [cost])"
    try:
        layer, label, header, data_notes = _train_data(sections)
        if layer is not None:
            with warnings.catch_warnings():          # the deploy net's build said them already
                warnings.simplefilter("ignore")
                text, _ = build(sections, None, train_data=layer, label=label)
    except DarknetError as e:                       # a classifier's head it cannot write
        layer, why = None, str(e)
    if layer is not None:
        parse_text(text, "NetParameter", path=sections[0].path)      # a bad net fails here
        files.append((net_file, f"# Converted by minicnn from {os.path.basename(sections[0].path)}"
                      f": the train net {stem}_solver.prototxt names (fillers: Darknet's "
                      "initialisation).\n" + header
                      + "".join(f"# Note: {n}\n" for n in data_notes) + text))
        notes = data_notes + notes
    else:
        notes = [f"no train net written: {why}; write {net_file} yourself (the prototxt with a "
                 "data layer in place of the Input and a loss layer at the end)"] + notes
    files.append((f"{stem}_solver.prototxt", solver_text + (test if layer is not None and
                                                            label == "label" else "")))
    return files, notes


def _classifier_test_comment(sections):
    """The classifier solver's test schedule, commented out: test_iter depends on the
    validation images, which the conversion does not see, and a solver without test_iter
    builds no test net (Caffe's InitTestNets), so a train.txt alone trains."""
    net = sections[0]
    batch = _pass_size(net)
    return ("# To test while training (\"Test net output #0: accuracy = ...\"), make val.txt as "
            "the train net's\n# header says and uncomment these two lines, with test_iter = "
            f"ceil(validation images / {batch}),\n# the TEST batches that score each once (100 "
            f"here: {100 * batch} images; minicnn train notes the value\n# that covers your "
            "val.txt, and stops at once, naming it, if there is none):\n"
            "# test_iter: 100\n# test_interval: 1000\n")
