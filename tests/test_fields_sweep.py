"""No field parsed and silently ignored: every field of every registered layer's parameter
messages is read by the code the layer runs, or has a decision written down here.

The sweep is static, then checked by building layers. For each layer class (the registered
ones and the variants a type name dispatches to), the code it runs is gathered: its methods
(inherited ones too) and, by name, the minicnn functions, classes, Ops and upper-case constants
they use, to a few levels. A field counts as read when that code names it (``.field`` or
"field"). The messages swept are the layer's own (param_field), those the code reads off the
LayerParameter (``param.x_param``, merged_transform_param's), and loss_param for loss layers.
transform_param is swept separately: each data layer has a decision for each of its fields
(read, warned about, refused), and the warnings and refusals are observed on built layers.

A new field in minicnn/proto/schema.py, or a new layer, fails test_every_field_is_read_or_
decided until its code reads the field or an entry below says why not. LayerParameter's own
fields (param, loss_weight, propagate_down, include/exclude, transform_param and loss_param on
layers that are neither data nor loss layers) are the Net's business and ignored where Caffe
ignores them; they are not swept.
"""

import ast
import inspect
import re
import sys
import textwrap
import warnings

import numpy as np
import pytest

from minicnn.errors import LayerError, MinicnnError
from minicnn.layer import LAYERS, Layer
from minicnn.layers.face import FaceNormalizeLayer
from minicnn.ops._dispatch import Op
from minicnn.proto.caffe_pb2 import LayerParameter, TransformationParameter

# --- what a layer's code reads ------------------------------------------------------------------

CLASSES = {name: cls for name, cls in LAYERS.items() if cls.__module__.startswith("minicnn.")
           and name == cls.type}
CLASSES["Normalize (happynear)"] = FaceNormalizeLayer          # Normalize without norm_param


def _minicnn(obj):
    return (getattr(obj, "__module__", None) or "").startswith("minicnn.")


def _names(source):
    """The names the code uses (not those its docstrings and comments mention)."""
    tree = ast.parse(textwrap.dedent(source))
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _strings(value):
    if isinstance(value, dict):
        value = [*value, *value.values()]
    return isinstance(value, (tuple, list, set, frozenset)) and value and \
        all(isinstance(v, str) for v in value)


def gathered_source(cls, depth=4):
    """The source of the code a layer class runs, as far as names lead (see the docstring);
    Layer's own is followed (its __init__ runs minicnn.proto.upgrade.upgrade_layer)."""
    parts, seen = [], set()
    todo = [(c, 0) for c in cls.__mro__ if c is not object]
    while todo:
        obj, level = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Op):
            todo += [(impl, level) for impl in obj.impls.values()]
            continue
        try:
            source = inspect.getsource(obj)
        except (TypeError, OSError):
            continue
        if obj is not Layer:                 # its helpers' defaults (field="axis") read nothing
            parts.append(source)
        names = vars(sys.modules[obj.__module__]) if level < depth else {}
        for name in _names(source) & set(names):
            target = names[name]
            if isinstance(target, Op) or ((inspect.isfunction(target) or inspect.isclass(target))
                                          and _minicnn(target)):
                todo.append((target, level + 1))
            elif name.isupper() and _strings(target):        # field-name tables
                parts.append(repr(target))
    return "\n".join(parts)


def reads(source, field):
    return re.search(rf"(\.{field}\b|[\"']{field}[\"'])", source) is not None


SOURCES = {name: gathered_source(cls) for name, cls in CLASSES.items()}
MESSAGES = LayerParameter.DESCRIPTOR.fields_by_name


def messages_of(name):
    cls, source = CLASSES[name], SOURCES[name]
    found = set(re.findall(r"param\.(\w+_param)\b", source))
    found |= set(re.findall(r"merged_transform_param\(self\.param, \"(\w+)\"", source))
    found |= {cls.param_field} | ({"loss_param"} if cls.is_loss else set())
    return sorted((found & set(MESSAGES)) - {None, "transform_param"})


def unread_fields():
    """(layer, message, field) for every field the layer's code does not name."""
    out = []
    for name in sorted(CLASSES):
        for message in messages_of(name):
            for field in MESSAGES[message].message.fields_by_name:
                if not reads(SOURCES[name], field):
                    out.append((name, message, field))
    return out


# --- the decisions --------------------------------------------------------------------------------
# (layer or "*", message, field) -> why the layer does not read it. "*" matches any layer.

ENGINE = "CAFFE or CUDNN picks an implementation of the same math; minicnn has one (as Caffe)"
NO_NORMALIZATION = ("Caffe's layer ignores loss_param (it divides by the batch size); so does "
                    "minicnn")
ALLOWED = {
    ("*", "bn_param", "engine"): ENGINE,
    ("*", "convolution_param", "engine"): ENGINE,
    ("*", "lrn_param", "engine"): ENGINE,
    ("*", "pooling_param", "engine"): ENGINE,
    ("*", "relu_param", "engine"): ENGINE,
    ("*", "sigmoid_param", "engine"): ENGINE,
    ("*", "softmax_param", "engine"): ENGINE,
    ("*", "spp_param", "engine"): ENGINE,
    ("*", "tanh_param", "engine"): ENGINE,
    ("*", "convolution_param", "force_nd_im2col"):
        "Caffe's N-d im2col for 2-D convolutions: the same result",
    # Caffe's Im2col reads the geometry only
    **{("Im2col", "convolution_param", f): "Caffe's Im2col reads the geometry only"
       for f in ("num_output", "bias_term", "group", "weight_filler", "bias_filler")},
    # loss layers whose Caffe ignores loss_param
    **{(layer, "loss_param", f): NO_NORMALIZATION
       for layer in ("EuclideanLoss", "ContrastiveLoss", "SmoothL1Loss", "CenterLoss")
       for f in ("ignore_label", "normalize", "normalization")},
    ("HingeLoss", "loss_param", "normalize"): NO_NORMALIZATION,
    ("HingeLoss", "loss_param", "normalization"): NO_NORMALIZATION,
    ("MultinomialLogisticLoss", "loss_param", "normalize"): NO_NORMALIZATION,
    ("MultinomialLogisticLoss", "loss_param", "normalization"): NO_NORMALIZATION,
    ("MultiBoxLoss", "loss_param", "ignore_label"):
        "SSD's MultiBoxLoss reads loss_param's normalization only (its confidence loss gets a "
        "fresh LayerParameter)",
    # the forks' own unread fields
    ("AnnotatedData", "annotated_data_param", "label_map_file"):
        "SSD's AnnotatedData keeps it and never uses it",
    ("ChannelScale", "channel_scale_param", "init_global_scale"):
        "read by no code of happynear's fork",
    ("LabelSpecificAdd", "label_specific_add_param", "transform_test"):
        "no effect in happynear's fork: its setup keeps it only in TRAIN, its forward adds the "
        "margin in TRAIN only",
    ("Region", "region_param", "absolute"): "parsed by Darknet's [region], never used",
    ("SegAccuracy", "seg_accuracy_param", "metric"): "read by DeepLab's fork, never used",
    ("Softmax", "softmax_param", "normalize_type"):
        "happynear's Softmax ignores it (SoftmaxWithLoss reads it)",
    **{("Softmax", "softmax_param", f):
       "happynear's loss fields: his Softmax ignores them (SoftmaxWithLoss reads or refuses them)"
       for f in ("hard_ratio", "class_weight", "hard_mining_label", "cutting_point",
                 "label_smooth_factor")},
    **{("GlobalLSEMargin", "scale_param", f):
       "happynear's GlobalLSEMargin reads scale_param's filler, min_value and max_value only"
       for f in ("axis", "num_axes", "bias_term", "bias_filler")},
    ("DetectionOutput", "detection_output_param", "visualize_threshold"):
        "used by SSD's visualize only, which warns",
    ("DetectionOutput", "detection_output_param", "save_file"):
        "used by SSD's visualize only, which warns",
    # Caffe's bookkeeping
    ("*", "recurrent_param", "debug_info"): "Caffe's debug log of the unrolled net",
    ("Python", "python_param", "share_in_parallel"):
        "Caffe's multi-GPU sharing of one Python layer instance",
}


def allowed(layer, message, field):
    return (layer, message, field) in ALLOWED or ("*", message, field) in ALLOWED


def test_every_field_is_read_or_decided():
    undecided = [k for k in unread_fields() if not allowed(*k)]
    assert not undecided, (
        "fields parsed but never read (read them, refuse them with a LayerError, warn, or add "
        "an ALLOWED entry saying why Caffe ignores them too): "
        + ", ".join(f"{layer}: {message}.{field}" for layer, message, field in undecided))


def test_the_allow_list_has_no_stale_entries():
    """Each entry names an existing field that a layer indeed leaves unread."""
    unread = set(unread_fields())
    for layer, message, field in ALLOWED:
        assert field in MESSAGES[message].message.fields_by_name, (message, field)
        if layer == "*":
            assert any(m == message and f == field for _, m, f in unread), (message, field)
        else:
            assert (layer, message, field) in unread, (layer, message, field)


def test_the_sweep_sees_what_layers_read():
    """The static part works: fields read through helpers count, unread ones do not."""
    assert reads(SOURCES["Pooling"], "stride_h")              # through _GEOMETRY_FIELDS
    assert reads(SOURCES["Interp"], "zoom_factor")            # through _SIZE_FIELDS
    assert reads(SOURCES["Convolution"], "dilation")          # through ConvGeometry
    assert "loss_param" in messages_of("SoftmaxWithLoss")
    assert "softmax_param" in messages_of("SoftmaxWithLoss")
    assert ("ReLU", "relu_param", "engine") in unread_fields()
    assert ("ReLU", "relu_param", "negative_slope") not in unread_fields()


# --- upgrades a layer built on its own runs ---------------------------------------------------

def test_a_layer_on_its_own_runs_the_field_upgrades():
    """ceil_mode and hole were upgraded by a Net only: a layer built on its own ignored them."""
    from minicnn.layers import ConvolutionLayer, PoolingLayer
    x = np.zeros((1, 1, 5, 5), np.float32)
    assert PoolingLayer(kernel_size=2, stride=2)(x).shape == (1, 1, 3, 3)         # CEIL
    assert PoolingLayer(kernel_size=2, stride=2, ceil_mode=False)(x).shape == (1, 1, 2, 2)
    assert ConvolutionLayer(num_output=1, kernel_size=3, hole=2)(x).shape == (1, 1, 1, 1)
    assert ConvolutionLayer(num_output=1, kernel_size=3, hole_h=2, hole_w=1)(x).shape == \
        (1, 1, 1, 3)


# --- fields a layer reads only to warn about or refuse ---------------------------------------

def _caught(build):
    """(warnings, exception) of building and running a layer."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        try:
            build()
            error = None
        except (MinicnnError, OSError) as e:
            error = e
    return [str(w.message) for w in got], error


def test_data_warns_for_force_encoded_color(tmp_path):
    from minicnn.layers import DataLayer
    from tests.layers.test_data import make_lmdb
    make_lmdb(tmp_path / "db", n=2)
    got, error = _caught(lambda: DataLayer(source=str(tmp_path / "db"), batch_size=1,
                                           backend="LMDB", force_encoded_color=True)())
    assert error is None
    assert any("ignores data_param.force_encoded_color" in m for m in got)


def test_image_data_warns_for_deeplabs_label_fields(tmp_path):
    from minicnn.layers import ImageDataLayer
    source = _image_list(tmp_path)
    got, error = _caught(lambda: ImageDataLayer(source=source, label_type="PIXEL",
                                                ignore_label=0)())
    assert error is None
    assert any("ignores image_data_param.label_type" in m for m in got)
    assert any("ignores image_data_param.ignore_label" in m for m in got)


def test_image_seg_data_refuses_bucket_by_size():
    param = LayerParameter(type="ImageSegData", name="d", top=["data", "label"],
                           image_data_param={"source": "x", "bucket_by_size": True})
    with pytest.raises(LayerError, match="bucket_by_size is minicnn's ImageData field"):
        LAYERS["ImageSegData"](param)()


@pytest.mark.parametrize("output_directory, warned", [("out", True), ("", False)])
def test_detection_output_warns_when_the_fork_would_write_files(output_directory, warned):
    from minicnn.layers import DetectionOutputLayer
    layer = DetectionOutputLayer(num_classes=2, save_output_param={
        "output_directory": output_directory, "output_format": "VOC"})
    loc, conf = np.zeros((1, 4), np.float32), np.full((1, 2), 0.5, np.float32)
    prior = np.array([[[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]]], np.float32).reshape(1, 2, 4)
    got, error = _caught(lambda: layer(loc, conf, prior))
    assert error is None
    assert any("ignores detection_output_param.save_output_param" in m for m in got) == warned


# --- transform_param: every field of every layer that reads it ---------------------------------

BVLC = ("scale", "mirror", "crop_size", "mean_file", "mean_value")
FORCE = ("force_color", "force_gray")
SSD_TRANSFORMER = ("resize_param", "noise_param", "crop_h", "crop_w")
SSD_ANNOTATED = ("distort_param", "expand_param", "emit_constraint")
DEEPLAB = ("scale_factors", "crop_width", "crop_height")
TRANSFORM = {
    # the SSD fork's Data runs its DataTransformer (resize, noise, crop_h/w); DeepLab's ignores
    # DeepLab's fields; both ignore AnnotatedData's
    "Data": {"read": BVLC + FORCE + SSD_TRANSFORMER, "warn": SSD_ANNOTATED + DEEPLAB},
    "ImageData": {"read": BVLC + SSD_TRANSFORMER, "warn": FORCE + SSD_ANNOTATED + DEEPLAB},
    "AnnotatedData": {"read": BVLC + FORCE + SSD_TRANSFORMER + SSD_ANNOTATED,
                      "refuse": DEEPLAB},
    # Caffe's WindowData crops, warps and flips itself: crop_size, mirror and the mean only
    "WindowData": {"read": BVLC, "warn": FORCE + SSD_TRANSFORMER + SSD_ANNOTATED + DEEPLAB},
    # Caffe serves their arrays as they are
    "HDF5Data": {"warn": BVLC + FORCE + SSD_TRANSFORMER + SSD_ANNOTATED + DEEPLAB},
    "MemoryData": {"warn": BVLC + FORCE + SSD_TRANSFORMER + SSD_ANNOTATED + DEEPLAB},
    "ImageSegData": {"read": ("scale", "mirror", "crop_size", "mean_value") + DEEPLAB,
                     "warn": FORCE, "refuse": ("mean_file",) + SSD_TRANSFORMER + SSD_ANNOTATED},
    # minicnn's own: scale and mean_value, the rest would not move their labels
    "DetectionData": {"read": ("scale", "mean_value"),
                      "refuse": ("crop_size", "mirror", "mean_file") + FORCE + SSD_TRANSFORMER
                      + SSD_ANNOTATED + DEEPLAB},
    "SegmentationData": {"read": ("scale", "mean_value"),
                         "refuse": ("crop_size", "mirror", "mean_file") + FORCE
                         + SSD_TRANSFORMER + SSD_ANNOTATED + DEEPLAB},
}


def test_every_layer_that_reads_transform_param_has_a_decision_for_every_field():
    readers = {name for name, source in SOURCES.items()
               if "transform_param" in source and issubclass(CLASSES[name], _source_layers())}
    readers |= {"MemoryData"}
    assert readers == set(TRANSFORM)
    fields = set(TransformationParameter.DESCRIPTOR.fields_by_name)
    for name, decision in TRANSFORM.items():
        listed = [f for kind in decision.values() for f in kind]
        assert sorted(listed) == sorted(fields), name      # each field once
        for field in decision.get("read", ()):
            assert reads(SOURCES[name], field), (name, field)


def _source_layers():
    from minicnn.layers.data import _SourceDataLayer
    return _SourceDataLayer


VALUES = {"scale": 2.0, "mirror": True, "crop_size": 2, "mean_file": "mean.binaryproto",
          "mean_value": [1.0], "force_color": True, "force_gray": True,
          "resize_param": {"height": 4, "width": 4}, "noise_param": {"inverse": True},
          "crop_h": 2, "crop_w": 2, "distort_param": {"brightness_prob": 0.5},
          "expand_param": {"prob": 0.5, "max_expand_ratio": 2.0},
          "emit_constraint": {"emit_type": "CENTER"}, "scale_factors": [1.5],
          "crop_width": 2, "crop_height": 2}


def _image_list(tmp_path):
    from PIL import Image
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png 0\n")
    return str(tmp_path / "list.txt")


def _build(name, tmp_path, field):
    """A layer of type ``name`` with transform_param.field set, sources in tmp_path."""
    param = LayerParameter(type=name, name="d", top=["data", "label"])
    setattr(param.transform_param, field, VALUES[field])
    if name == "Data":
        from tests.layers.test_data import make_lmdb
        make_lmdb(tmp_path / "db", n=2)
        param.data_param.source, param.data_param.backend = str(tmp_path / "db"), "LMDB"
        param.data_param.batch_size = 1
    elif name in ("ImageData", "ImageSegData"):
        param.image_data_param.source = _image_list(tmp_path)        # IMAGE labels: class 0
    elif name == "WindowData":
        from tests.layers.test_io_layers import window_file
        path, _ = window_file(tmp_path, [("a.png", (12, 10), [(1, 0.9, 1, 1, 8, 8),
                                                              (0, 0.1, 0, 0, 4, 4)])])
        param.window_data_param.source, param.window_data_param.batch_size = path, 2
        if field != "crop_size":
            param.transform_param.crop_size = 4
    elif name == "HDF5Data":
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp_path / "a.h5", "w") as f:
            f["data"], f["label"] = np.zeros((2, 1), np.float32), np.zeros(2, np.float32)
        (tmp_path / "h5.txt").write_text(str(tmp_path / "a.h5") + "\n")
        param.hdf5_data_param.source, param.hdf5_data_param.batch_size = \
            str(tmp_path / "h5.txt"), 1
    elif name == "MemoryData":
        param.memory_data_param.batch_size = param.memory_data_param.channels = 1
        param.memory_data_param.height = param.memory_data_param.width = 1
    else:                      # refusals come before the source is read
        own = {"AnnotatedData": "data_param", "ImageSegData": "image_data_param",
               "DetectionData": "detection_data_param",
               "SegmentationData": "segmentation_data_param"}[name]
        getattr(param, own).source, getattr(param, own).batch_size = "x", 1
    layer = LAYERS[name](param)
    if name == "MemoryData":
        layer.set_input_arrays(np.zeros((1, 1, 1, 1)), np.zeros(1))
    return layer


OBSERVED = [(name, field, kind) for name, decision in TRANSFORM.items()
            for kind in ("warn", "refuse") for field in decision.get(kind, ())]


@pytest.mark.parametrize("name, field, kind", OBSERVED)
def test_transform_fields_warned_about_or_refused(tmp_path, name, field, kind):
    got, error = _caught(lambda: _build(name, tmp_path, field)())
    if kind == "warn":
        assert error is None, error
        assert any(f"ignores transform_param.{field}:" in m for m in got), got
    else:
        assert isinstance(error, LayerError) and field in str(error), error
