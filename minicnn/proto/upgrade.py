"""Caffe's automatic upgrades of old net and solver definitions, done on parsed messages.

- V1 ``layers { type: CONVOLUTION blobs_lr: 1 weight_decay: 1 param: "w" }`` becomes
  ``layer { type: "Convolution" param { name: "w" lr_mult: 1 decay_mult: 1 } }``.
- ``input: "data"`` with ``input_dim`` (four per input) or ``input_shape`` becomes an ``Input``
  layer; ``input`` names with neither (what a 2014-2015 caffemodel holds) are dropped, as Caffe
  1.0 drops them, so a prototxt written that way has no such blob.
- a V1 data layer's ``scale``/``mean_file``/``crop_size``/``mirror`` move into
  ``transform_param`` (in a current ``layer`` Caffe leaves them, and its data layers ignore them).
- a BatchNorm layer with three ``param`` specs gets lr_mult 0 and decay_mult 0 in each (its
  statistics are not learned); their other fields, such as a shared ``name``, stay.
- Pooling's ``ceil_mode: false`` (the forks' spelling, from BVLC/caffe#3057: soeaver's
  caffe-model, PyTorch-to-Caffe converters, OpenCV) becomes ``round_mode: FLOOR``.
- the solver's enum ``solver_type: ADAM`` becomes ``type: "Adam"``.
- V0 nets (2013-2014: ``layers { layer { type: "conv" kernelsize: 11 } }``) first become V1
  nets, as Caffe's UpgradeV0Net does (upgrade_v0.py).
- DeepLab v1's V1 nets: its enum types (IMAGE_SEG_DATA, SEG_ACCURACY, INTERP, MAT_WRITE, ...)
  become their type names, convolution_param's ``hole`` becomes ``dilation``, and SOFTMAX_LOSS's
  ``softmaxloss_param { ignore_label }`` becomes ``loss_param { ignore_label }``.
"""

from minicnn.errors import NetError
from minicnn.proto.caffe_pb2 import BlobShape, LayerParameter
from minicnn.proto.text import field_lines, v0_layer_lines
from minicnn.proto.upgrade_v0 import is_v0_net, upgrade_v0_net

V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    # DeepLab v1 (deeplab-public) wrote its nets in the V1 format with its own enum names
    "IMAGE_SEG_DATA": "ImageSegData", "SEG_ACCURACY": "SegAccuracy", "INTERP": "Interp",
    "MAT_WRITE": "MatWrite", "MAT_READ": "MatRead", "DENSE_CRF": "DenseCRF",
    "PADDING": "Padding", "DOMINANT_CHANNEL": "DominantChannel", "BIAS_CHANNEL": "BiasChannel",
    "UNIQUE_LABEL": "UniqueLabel", "CENSOR_LABEL": "CensorLabel",
    "ADAPTIVE_BIAS_CHANNEL": "AdaptiveBiasChannel", "CHANNEL_AGGREGATOR": "ChannelAggregator",
    "IGNORE_OVERLAY": "IgnoreOverlay", "HISTOGRAM": "Histogram",
    "RELATIVE_ERROR": "RelativeError", "GAIN_CHANNEL": "GainChannel", "ONEHOT": "OneHot",
}
SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                     "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_V1_COPIED = ("bottom", "top", "name", "include", "exclude", "blobs", "loss_weight")


def upgrade_v1_layer(v1):
    """One V1LayerParameter as a LayerParameter."""
    layer = LayerParameter()
    for field, value in v1.ListFields():       # sub-messages move over; v1 is discarded after
        if field.name == "softmaxloss_param":
            _upgrade_softmaxloss(v1, layer)
        elif field.name in _V1_COPIED or (field.name.endswith("_param")
                                          and field.name != "param"):
            setattr(layer, field.name, value)
    if v1.HasField("type"):
        if v1.type == "NONE":
            raise NetError(f"layer '{v1.name}' has type NONE")
        layer.type = V1_TYPE_NAMES[v1.type]
    n_specs = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_specs):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    return layer


def _upgrade_softmaxloss(v1, layer):
    """DeepLab v1's SOFTMAX_LOSS options: its loss is divided by the number of pixels not
    ignored, which is loss_param's VALID normalization with one ignore_label."""
    p = v1.softmaxloss_param
    if p.HasField("weight_source"):
        raise NetError(f"layer '{v1.name}': softmaxloss_param.weight_source (DeepLab v1's "
                       "per-class loss weights) is not supported by minicnn's SoftmaxWithLoss")
    if len(p.ignore_label) > 1:
        raise NetError(f"layer '{v1.name}': softmaxloss_param gives {len(p.ignore_label)} "
                       "ignore_label values; minicnn's SoftmaxWithLoss ignores one label")
    if p.ignore_label:
        layer.loss_param.ignore_label = p.ignore_label[0]


def _upgrade_hole(layer):
    """DeepLab v1's convolution_param hole (or hole_h and hole_w) is dilation: the fork takes
    hole_h and hole_w when hole_h is given, else hole for both."""
    p = layer.convolution_param
    if not layer.HasField("convolution_param") or not any(
            p.HasField(f) for f in ("hole", "hole_h", "hole_w")):
        return
    if p.HasField("dilation"):
        raise NetError(f"layer '{layer.name}': convolution_param has both dilation and "
                       "DeepLab v1's hole; give one of them")
    p.dilation = [p.hole_h, p.hole_w] if p.HasField("hole_h") else [p.hole]
    for name in ("hole", "hole_h", "hole_w"):
        p.ClearField(name)


def _upgrade_input(net):
    inputs = list(net.input)
    if not inputs:
        if net.HasField("input_dim") or net.HasField("input_shape"):
            raise NetError("input_dim/input_shape are given but no 'input' names the blobs")
        return
    if net.HasField("input_shape") and net.HasField("input_dim"):
        raise NetError("give either input_shape or input_dim, not both")
    if not (net.HasField("input_shape") or net.HasField("input_dim")):
        # Caffe's UpgradeNetInput: names alone are a legacy caffemodel's (2014-2015 Net::ToProto
        # wrote them without shapes): the field is stripped and no Input layer made
        net.ClearField("input")
        return
    shapes = []
    if net.HasField("input_shape"):
        if len(net.input_shape) != len(inputs):         # Caffe's UpgradeNetInput
            raise NetError(f"{len(inputs)} inputs but {len(net.input_shape)} input_shape "
                           "entries: give exactly one input_shape per input, in order")
        shapes = [s.copy() for s in net.input_shape]
    elif net.HasField("input_dim"):
        dims = list(net.input_dim)
        if len(dims) != 4 * len(inputs):
            raise NetError(f"{len(inputs)} inputs need {4 * len(inputs)} input_dim values "
                           f"(num, channels, height, width each), got {len(dims)}")
        shapes = [BlobShape(dim=dims[4 * i:4 * i + 4]) for i in range(len(inputs))]
    layer = LayerParameter(name="input", type="Input", top=inputs)
    for shape in shapes:
        layer.input_param.shape.append(shape)
    net.layer.insert(0, layer)
    for name in ("input", "input_dim", "input_shape"):
        net.ClearField(name)


def _upgrade_ceil_mode(layer):
    p = layer.pooling_param
    if not p.HasField("ceil_mode"):
        return
    if p.HasField("round_mode") and (p.round_mode == "CEIL") != p.ceil_mode:
        raise NetError(f"layer '{layer.name}': pooling_param has round_mode {p.round_mode} and "
                       f"ceil_mode {str(p.ceil_mode).lower()}; give one of them")
    p.round_mode = "CEIL" if p.ceil_mode else "FLOOR"
    p.ClearField("ceil_mode")


def _upgrade_data_transform(layer):
    for param_name in ("data_param", "image_data_param", "window_data_param"):
        if not layer.HasField(param_name):
            continue
        param = getattr(layer, param_name)
        for field in _TRANSFORM_FIELDS:
            if field in type(param).DESCRIPTOR.fields_by_name and param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


def upgrade_layer(layer):
    """The upgrades of one LayerParameter's own fields (ceil_mode, hole), in place: a Net's
    upgrade_net runs them, and so does a layer built on its own (minicnn.layer.Layer)."""
    _upgrade_ceil_mode(layer)
    _upgrade_hole(layer)
    return layer


def _v0_locator(path):
    """upgrade_v0_net's ``locate`` for the prototxt at ``path`` (None: no file): the file is
    read again only when there is an error to place."""
    found = []

    def locate(index, field, nth, in_v0):
        if path is None:
            return ""
        if not found:
            found.append(v0_layer_lines(path))
        if index >= len(found[0]):
            return ""
        line, entry_lines, v0_lines = found[0][index]
        lines = (v0_lines if in_v0 else entry_lines).get(field) if field else None
        if lines:
            line = lines[min(nth, len(lines) - 1)]
        return f"{path}:{line}: "
    return locate


def upgrade_net(net, path=None, source_file=None):
    """Upgrade a NetParameter in place to the current format; return it. ``path``: the prototxt
    it was read from, for errors of the V0 upgrade to name the line; ``source_file``: the file a
    NetParameter was read from (a solver's net), for the error about mixed formats only."""
    if net.HasField("layers") and net.HasField("layer"):
        raise NetError(_mixed_formats_message(path or source_file))
    if is_v0_net(net):
        upgrade_v0_net(net, _v0_locator(path))
    if net.HasField("layers"):
        for v1 in net.layers:
            net.layer.append(upgrade_v1_layer(v1))
            _upgrade_data_transform(net.layer[-1])   # V1 entries only, as Caffe's upgrade
        net.ClearField("layers")
    _upgrade_input(net)
    for layer in net.layer:
        upgrade_layer(layer)
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:      # Caffe's UpgradeNetBatchNorm keeps the names (sharing)
                spec.lr_mult = 0
                spec.decay_mult = 0
    return net


def _mixed_formats_message(source):
    """Caffe's UpgradeV1Net refuses a net with both fields; say where each kind starts."""
    lines = field_lines(source, "NetParameter") if source else {}
    where = f"{source}:{lines['layers']}: " if "layers" in lines else ""
    first = f" (the first 'layer' is on line {lines['layer']})" if "layer" in lines else ""
    return (f"{where}the net mixes V1 'layers' and current 'layer' definitions{first}; Caffe "
            "refuses to upgrade such a net: write every entry in one format (minicnn upgrade "
            "converts a whole V1 file)")


def upgrade_solver(solver, path=None):
    """Upgrade a SolverParameter in place (enum solver_type -> string type); return it.
    Caffe 1.0 refuses a solver that gives both, even when they agree (UpgradeSolverType)."""
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            line = field_lines(path, "SolverParameter").get("solver_type") if path else None
            where = f"{path}:{line}: " if line else f"{path}: " if path else ""
            raise NetError(f"{where}the solver gives both the old enum 'solver_type' "
                           f"({solver.solver_type}) and the new string 'type' "
                           f"('{solver.type}'); Caffe refuses that: give only 'type'")
        solver.type = SOLVER_TYPE_NAMES[solver.solver_type]
        solver.ClearField("solver_type")
    return solver
