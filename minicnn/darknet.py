"""Darknet YOLOv1 models -> Caffe prototxt + caffemodel (``minicnn convert darknet``).

    convert_darknet("yolov1-tiny.cfg", "yolov1-tiny.weights", "out/")
    # -> out/yolov1-tiny.prototxt, out/yolov1-tiny.caffemodel

The cfg's sections become layers, in order (Darknet's parse_network_cfg defaults apply to keys a
section leaves out):

  [net]            Input 1 x channels x height x width (Darknet feeds RGB scaled to [0, 1])
  [convolutional]  Convolution (pad=1 means padding size/2, as in Darknet); with
                   batch_normalize=1: Convolution without bias, BatchNorm, Scale (with bias);
                   then the activation: leaky -> ReLU negative_slope 0.1, relu, logistic ->
                   Sigmoid, tanh -> TanH, elu -> ELU, linear -> nothing
  [maxpool]        Pooling MAX (Darknet's default padding size-1 is Caffe's ceil rounding; other
                   geometries must give the same output size or are refused)
  [connected]      InnerProduct (+ BatchNorm, Scale with batch_normalize), then the activation
  [dropout]        Dropout (identity at test time in both)
  [detection]      Detection with one bottom (a deploy net), its parameters copied

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

import os
import warnings

import numpy as np

from minicnn.errors import MinicnnError

DARKNET_BN_EPS = 1e-6
ACTIVATIONS = {"leaky": ("ReLU", "relu_param { negative_slope: 0.1 }"), "relu": ("ReLU", ""),
               "logistic": ("Sigmoid", ""), "tanh": ("TanH", ""), "elu": ("ELU", ""),
               "linear": None}
SECTIONS = ("net", "network", "convolutional", "conv", "maxpool", "max", "connected", "conn",
            "dropout", "detection")


class DarknetError(MinicnnError):
    """A Darknet cfg or weights file minicnn cannot convert; names the file and the line."""


class Section:
    def __init__(self, kind, line, path):
        self.kind, self.line, self.path, self.options, self.used = kind, line, path, {}, set()

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
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        raise DarknetError(f"{path}: cannot read the cfg: {e.strerror or e}") from None
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

    def layer(self, name, type_, bottom, top, body="", blobs=None):
        lines = ["layer {", f'  name: "{name}"', f'  type: "{type_}"']
        lines += [f'  bottom: "{b}"' for b in ([bottom] if bottom else [])]
        lines += [f'  top: "{top}"']
        lines += ["  " + line for line in body.strip().splitlines() if line.strip()]
        self.lines += lines + ["}"]
        if blobs is not None:
            self.weights[name] = blobs

    def text(self):
        return "\n".join(self.lines) + "\n"


def _batch_norm(b, name, top, n, biases, weights):
    """BatchNorm + Scale for Darknet's test-time batch norm (epsilon after the square root)."""
    scales = weights.read(n, f"the scales of {name}")
    mean = weights.read(n, f"the rolling mean of {name}")
    var = weights.read(n, f"the rolling variance of {name}")
    if np.any(var < 0):
        raise DarknetError(f"{weights.path}: layer {name} has a negative rolling variance")
    gamma = (scales.astype(np.float64) / (np.sqrt(var.astype(np.float64)) + DARKNET_BN_EPS))
    b.layer(f"{name}_bn", "BatchNorm", top, top,
            "batch_norm_param { use_global_stats: true eps: 0 }",
            [mean, np.ones(n, np.float32), np.ones(1, np.float32)])
    b.layer(f"{name}_scale", "Scale", top, top, "scale_param { bias_term: true }",
            [gamma.astype(np.float32), biases])


def _activation(b, s, name, top):
    kind = s.str("activation", "logistic")
    if kind not in ACTIVATIONS:
        raise DarknetError(f"{s.where()}: activation={kind} has no minicnn layer (supported: "
                           f"{', '.join(ACTIVATIONS)})")
    if ACTIVATIONS[kind]:
        type_, body = ACTIVATIONS[kind]
        b.layer(f"{name}_{kind}", type_, top, top, body)


def build(sections, weights):
    """(prototxt text, {layer name: [arrays]}) of a parsed cfg with its weights."""
    net = sections[0]
    c, h, w = net.int("channels", 0), net.int("height", 0), net.int("width", 0)
    if min(c, h, w) <= 0:
        raise DarknetError(f"{net.where()}: give height, width and channels (got {h}, {w}, {c})")
    b = _Builder(os.path.splitext(os.path.basename(net.path))[0])
    b.layer("data", "Input", None, "data",
            f"input_param {{ shape {{ dim: 1 dim: {c} dim: {h} dim: {w} }} }}")
    top, flat = "data", False
    for i, s in enumerate(sections[1:]):
        kind = s.kind
        if kind in ("convolutional", "conv"):
            if flat:
                raise DarknetError(f"{s.where()}: a convolution after a connected layer")
            n, size = s.int("filters", 1), s.int("size", 1)
            stride, groups = s.int("stride", 1), s.int("groups", 1)
            padding = size // 2 if s.int("pad", 0) else s.int("padding", 0)
            bn = s.int("batch_normalize", 0)
            if s.int("binary", 0) or s.int("xnor", 0):
                raise DarknetError(f"{s.where()}: binary/xnor convolutions are not supported")
            if groups != 1 and (c % groups or n % groups):
                raise DarknetError(f"{s.where()}: groups={groups} must divide the {c} input "
                                   f"channels and the {n} filters")
            name = f"conv{i}"
            biases = weights.read(n, f"the biases of {name}")
            bn_at = weights.offset
            if bn:
                weights.read(3 * n, f"the batch norm of {name}")    # after the weights below
            kernel = weights.read(n * (c // groups) * size * size, f"the weights of {name}")
            kernel = kernel.reshape(n, c // groups, size, size)
            body = (f"convolution_param {{ num_output: {n} kernel_size: {size} stride: {stride} "
                    f"pad: {padding}" + (f" group: {groups}" if groups != 1 else "")
                    + (" bias_term: false" if bn else "") + " }")
            b.layer(name, "Convolution", top, name, body, [kernel] if bn else [kernel, biases])
            top = name
            if bn:
                end, weights.offset = weights.offset, bn_at
                _batch_norm(b, name, top, n, biases, weights)
                weights.offset = end
            h = (h + 2 * padding - size) // stride + 1
            w = (w + 2 * padding - size) // stride + 1
            c = n
            _activation(b, s, name, top)
        elif kind in ("maxpool", "max"):
            if flat:
                raise DarknetError(f"{s.where()}: max pooling after a connected layer")
            stride = s.int("stride", 1)
            size = s.int("size", stride)
            padding = s.int("padding", size - 1)
            dh, dw = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
            pad = padding // 2
            ch, cw = (_caffe_pool_size(v, size, stride, pad) for v in (h, w))
            if (ch, cw) != (dh, dw):
                raise DarknetError(f"{s.where()}: size={size} stride={stride} padding={padding} "
                                   f"gives {dh}x{dw} in Darknet but {ch}x{cw} with Caffe's "
                                   "pooling: this geometry cannot be converted")
            name = f"pool{i}"
            b.layer(name, "Pooling", top, name, f"pooling_param {{ pool: MAX kernel_size: "
                                                f"{size} stride: {stride} pad: {pad} }}")
            top, h, w = name, dh, dw
        elif kind in ("connected", "conn"):
            n, bn = s.int("output", 1), s.int("batch_normalize", 0)
            inputs = c * h * w
            name = f"fc{i}"
            biases = weights.read(n, f"the biases of {name}")
            matrix = weights.read(n * inputs, f"the weights of {name}")
            matrix = matrix.reshape(inputs, n).T.copy() if weights.transpose \
                else matrix.reshape(n, inputs)
            b.layer(name, "InnerProduct", top, name,
                    f"inner_product_param {{ num_output: {n}"
                    + (" bias_term: false" if bn else "") + " }",
                    [matrix] if bn else [matrix, biases])
            top = name
            if bn:
                _batch_norm(b, name, top, n, biases, weights)
            c, h, w, flat = n, 1, 1, True
            _activation(b, s, name, top)
        elif kind == "dropout":
            p = s.float("probability", 0.5)
            b.layer(f"drop{i}", "Dropout", top, top, f"dropout_param {{ dropout_ratio: {p!r} }}")
        elif kind == "detection":
            if s.int("random", 0) or s.int("forced", 0) or s.int("reorg", 0):
                warnings.warn(f"{s.where()}: random, forced and reorg only change training in "
                              "Darknet; minicnn's Detection layer ignores them", stacklevel=3)
            fields = dict(side=s.int("side", 7), num=s.int("num", 1),
                          classes=s.int("classes", 1), coords=s.int("coords", 1))
            d = fields["side"] ** 2 * (fields["classes"] + fields["num"] * (1 + fields["coords"]))
            if c * h * w != d:
                raise DarknetError(f"{s.where()}: side {fields['side']}, num {fields['num']}, "
                                   f"classes {fields['classes']}, coords {fields['coords']} make "
                                   f"{d} values, but the layer before gives {c * h * w}")
            if fields["coords"] != 4 or s.int("softmax", 0):
                raise DarknetError(f"{s.where()}: minicnn's Detection needs coords=4 and "
                                   "softmax=0 (YOLOv1)")
            flags = dict(sqrt=s.int("sqrt", 0), rescore=s.int("rescore", 0))
            scales = {k: s.float(k, 1.0) for k in ("object_scale", "noobject_scale",
                                                     "class_scale", "coord_scale")}
            body = " ".join([f"{k}: {v}" for k, v in fields.items()]
                            + [f"{k}: {'true' if v else 'false'}" for k, v in flags.items()]
                            + [f"{k}: {v!r}" for k, v in scales.items()])
            b.layer("detection", "Detection", top, "detection", f"detection_param {{ {body} }}")
            top = "detection"
        else:
            raise DarknetError(f"{s.where()}: this kind of section cannot be converted "
                               f"(minicnn converts YOLOv1 nets: {', '.join(SECTIONS[2:])})")
    return b.text(), b.weights


def _caffe_pool_size(size_in, kernel, stride, pad):
    out = -(-(size_in + 2 * pad - kernel) // stride) + 1            # ceil, as Caffe
    if pad and (out - 1) * stride >= size_in + pad:
        out -= 1
    return out


def convert_darknet(cfg, weights, out_dir):
    """Write ``<cfg name>.prototxt`` and ``.caffemodel`` into ``out_dir``; returns their
    paths."""
    from minicnn.net import TEST, Net
    from minicnn.proto.text import parse_text
    from minicnn.proto.wire import atomic_write
    sections = read_cfg(cfg)
    reader = WeightsReader(weights)
    text, arrays = build(sections, reader)
    if reader.left:
        warnings.warn(f"{weights}: {reader.left} bytes after the last layer's weights were not "
                      "used", stacklevel=2)
    net = Net(parse_text(text, "NetParameter", path=cfg), phase=TEST)
    for name, blobs in arrays.items():
        layer = net.layer_dict[name]
        for blob, array in zip(layer.blobs, blobs):
            blob.data[...] = array.reshape(blob.shape)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(cfg))[0]
    prototxt = os.path.join(out_dir, stem + ".prototxt")
    caffemodel = os.path.join(out_dir, stem + ".caffemodel")
    with atomic_write(prototxt, "w") as f:
        f.write(f"# Converted by minicnn from {os.path.basename(cfg)} and "
                f"{os.path.basename(weights)} (Darknet {reader.major}.{reader.minor}."
                f"{reader.revision}, seen {reader.seen}).\n# Input: RGB scaled to [0, 1] "
                "(minicnn detect --rgb).\n" + text)
    net.save(caffemodel)
    return [prototxt, caffemodel]
