"""Caffe's upgrade of V0 nets (2013-2014) to V1, before the V1 upgrade in upgrade.py.

A V0 layer is a V1 ``layers`` entry holding only ``bottom``, ``top`` and a ``layer`` message with
a lower-case type string and all parameters flat::

    layers { layer { name: "conv1" type: "conv" num_output: 96 kernelsize: 11 stride: 4 }
             bottom: "data" top: "conv1" }

becomes ``layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }``, as Caffe's UpgradeV0Net
(src/caffe/util/upgrade_proto.cpp) does it:

- a "padding" layer is dropped, and the conv or pool layer reading its top reads its bottom
  instead, with the padding layer's ``pad`` (UpgradeV0PaddingLayers);
- each field goes to the parameter message of the layer types that have it (``kernelsize`` to
  convolution_param or pooling_param, ``batchsize`` to data, hdf5_data, images or window_data's);
  ``scale``, ``meanfile``, ``cropsize`` and ``mirror`` go to transform_param whatever the type;
- ``blobs``, ``blobs_lr`` and ``weight_decay`` move over as they are (the V1 upgrade turns the
  last two into ParamSpecs); ``new_num`` and ``new_channels`` are read by no type and dropped.

Where Caffe logs "Unknown parameter X for layer type T" and goes on without the field, minicnn
stops: the net Caffe builds is not the one the file describes. The net itself keeps only its
``name``, ``input``, ``input_dim`` and ``force_backward`` in Caffe's upgrade; minicnn refuses a V0
net with other net-level fields rather than drop them.
"""

from minicnn.errors import NetError
from minicnn.proto.caffe_pb2 import V1LayerParameter

V0_TYPES = {   # Caffe's UpgradeV0LayerType: the V0 type strings, as V1 enum names
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

_CONV_IP = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_CONV_POOL = {"conv": "convolution_param", "pool": "pooling_param"}
_SOURCES = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
            "window_data": "window_data_param"}
# V0 field -> (the field's name in the new message, {V0 type: the V1 parameter message it goes to})
_PLACES = {
    "num_output": ("num_output", _CONV_IP),
    "biasterm": ("bias_term", _CONV_IP),
    "weight_filler": ("weight_filler", _CONV_IP),
    "bias_filler": ("bias_filler", _CONV_IP),
    "pad": ("pad", _CONV_POOL),
    "kernelsize": ("kernel_size", _CONV_POOL),
    "group": ("group", {"conv": "convolution_param"}),
    "stride": ("stride", _CONV_POOL),
    "pool": ("pool", {"pool": "pooling_param"}),
    "dropout_ratio": ("dropout_ratio", {"dropout": "dropout_param"}),
    "local_size": ("local_size", {"lrn": "lrn_param"}),
    "alpha": ("alpha", {"lrn": "lrn_param"}),
    "beta": ("beta", {"lrn": "lrn_param"}),
    "k": ("k", {"lrn": "lrn_param"}),
    "source": ("source", {**_SOURCES, "infogain_loss": "infogain_loss_param"}),
    "batchsize": ("batch_size", _SOURCES),
    "rand_skip": ("rand_skip", {"data": "data_param", "images": "image_data_param"}),
    "shuffle_images": ("shuffle", {"images": "image_data_param"}),
    "new_height": ("new_height", {"images": "image_data_param"}),
    "new_width": ("new_width", {"images": "image_data_param"}),
    "concat_dim": ("concat_dim", {"concat": "concat_param"}),
    "det_fg_threshold": ("fg_threshold", {"window_data": "window_data_param"}),
    "det_bg_threshold": ("bg_threshold", {"window_data": "window_data_param"}),
    "det_fg_fraction": ("fg_fraction", {"window_data": "window_data_param"}),
    "det_context_pad": ("context_pad", {"window_data": "window_data_param"}),
    "det_crop_mode": ("crop_mode", {"window_data": "window_data_param"}),
    "hdf5_output_param": ("hdf5_output_param", {"hdf5_output": None}),   # the layer's own field
}
_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
              "mirror": "mirror"}
_AS_IS = ("blobs", "blobs_lr", "weight_decay")
_IGNORED = ("new_num", "new_channels")          # Caffe's upgrade reads neither
_NET_FIELDS = ("name", "layers", "input", "input_dim", "force_backward")


def is_v0_net(net):
    """Caffe's NetNeedsV0ToV1Upgrade: some ``layers`` entry holds a V0 ``layer``."""
    return any(entry.HasField("layer") for entry in net.layers)


def upgrade_v0_net(net, locate=None):
    """Upgrade a V0 NetParameter's ``layers`` to V1 entries, in place; return it.

    ``locate(index, field, nth, in_v0)`` gives 'file:line: ' for an error about the field (None:
    the entry) of net.layers[index] (the V0 ``layer {}``'s field when ``in_v0``), or ''."""
    locate = locate or (lambda *args: "")
    for field, _ in net.ListFields():
        if field.name not in _NET_FIELDS:
            raise NetError(f"the net is in the V0 format (layers {{ layer {{ ... }} }}), whose "
                           f"upgrade keeps only {', '.join(_NET_FIELDS)}; '{field.name}' would "
                           "be lost: upgrade the layers and set it afterwards")
    for i, entry in enumerate(net.layers):
        if not entry.HasField("layer"):
            name = f"'{entry.name}'" if entry.name else f"number {i + 1}"
            raise NetError(f"{locate(i, None, 0, False)}layer {name} is in the V1 format but "
                           "others are V0 (layers { layer { ... } }); write all in one of them")
        extra = [f.name for f, _ in entry.ListFields() if f.name not in ("layer", "bottom", "top")]
        if extra:
            raise NetError(f"{locate(i, extra[0], 0, False)}layer '{entry.layer.name}' is a V0 "
                           f"layer (layers {{ layer {{ ... }} }}) with V1 fields beside it "
                           f"({', '.join(extra)}), which the V0 upgrade drops; move them into "
                           "its layer { } in V0 spelling, or write the layer in V1")
    entries = _fold_padding_layers(net, locate)
    net.ClearField("layers")
    for i, entry in entries:
        net.layers.append(_upgrade_v0_layer(entry, lambda *a, i=i: locate(i, *a)))
    return net


def _fold_padding_layers(net, locate):
    """Caffe's UpgradeV0PaddingLayers: [(index in net.layers, entry)] without the "padding"
    layers, the conv or pool layer reading one's top reading its bottom with its pad instead."""
    last_writer = {name: None for name in net.input}    # blob -> index of the layer that wrote it
    kept = []
    for i, entry in enumerate(net.layers):
        v0 = entry.layer
        if v0.type != "padding":
            kept.append((i, entry.copy()))
        for j, blob in enumerate(entry.bottom):
            if blob not in last_writer:
                raise NetError(f"{locate(i, 'bottom', j, False)}layer '{v0.name}': bottom "
                               f"'{blob}' is not an input of the net nor a top of a layer "
                               "before it")
            src = last_writer[blob]
            if src is None or net.layers[src].layer.type != "padding":
                continue
            pad = net.layers[src]
            pad_name = pad.layer.name
            if v0.type not in ("conv", "pool"):
                raise NetError(f"{locate(i, 'bottom', j, False)}layer '{v0.name}' (type "
                               f"'{v0.type}') reads the top of padding layer '{pad_name}'; the "
                               "V0 upgrade folds a padding layer only into the conv or pool "
                               "layer after it")
            if len(entry.bottom) != 1:
                raise NetError(f"{locate(i, 'bottom', j, False)}layer '{v0.name}' reads the top "
                               f"of padding layer '{pad_name}' and has {len(entry.bottom)} "
                               "bottoms; a conv or pool layer after a padding layer takes one")
            if len(pad.bottom) != 1 or len(pad.top) != 1:
                raise NetError(f"{locate(src, None, 0, False)}padding layer '{pad_name}' has "
                               f"{len(pad.bottom)} bottoms and {len(pad.top)} tops; it takes "
                               "one of each")
            upgraded = kept[-1][1]
            upgraded.layer.pad = pad.layer.pad
            upgraded.bottom[j] = pad.bottom[0]
        for blob in entry.top:
            last_writer[blob] = i
    return kept


def _upgrade_v0_layer(entry, locate):
    """Caffe's UpgradeV0LayerParameter: one V0 entry as a V1LayerParameter."""
    v0 = entry.layer
    v1 = V1LayerParameter(bottom=list(entry.bottom), top=list(entry.top))
    if v0.HasField("name"):
        v1.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            known = ", ".join(sorted([*V0_TYPES, "padding"]))
            raise NetError(f"{locate('type', 0, True)}layer '{v0.name}': '{kind}' is not a V0 "
                           f"layer type (Caffe's V0 upgrade knows {known})")
        v1.type = V0_TYPES[kind]
    for field, value in v0.ListFields():
        name = field.name
        if name in ("name", "type") or name in _IGNORED:
            continue
        if name in _AS_IS:
            getattr(v1, name).extend(value)
        elif name in _TRANSFORM:
            setattr(v1.transform_param, _TRANSFORM[name], value)
        elif name in _PLACES:
            new_name, places = _PLACES[name]
            if kind not in places:
                takers = " or ".join(f"'{t}'" for t in places)
                raise NetError(f"{locate(name, 0, True)}layer '{v0.name}': the V0 field '{name}' "
                               f"is not a parameter of a '{kind}' layer (Caffe's upgrade knows it "
                               f"for {takers} layers only: 'Unknown parameter {name} for layer "
                               f"type {kind}')")
            target = v1 if places[kind] is None else getattr(v1, places[kind])
            if name in ("new_height", "new_width") and value < 0:
                raise NetError(f"{locate(name, 0, True)}layer '{v0.name}': {name} is {value}; "
                               "it must be 0 or more")
            _put(target, new_name, value)
        else:                                   # a field of the schema the upgrade does not know
            raise NetError(f"{locate(name, 0, True)}layer '{v0.name}': the V0 upgrade does not "
                           f"know the field '{name}'")
    return v1


def _put(message, name, value):
    """Set a field of ``message``: a repeated one (convolution's kernel_size) gets one value."""
    field = type(message).DESCRIPTOR.fields_by_name[name]
    if field.is_message:
        getattr(message, name).CopyFrom(value)
    elif field.repeated:
        getattr(message, name).append(value)
    else:
        setattr(message, name, value)
