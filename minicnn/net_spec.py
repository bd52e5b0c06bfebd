"""Nets written in Python, as pycaffe's ``caffe.net_spec`` writes them.

    from minicnn.net_spec import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.Data(batch_size=64, backend=P.Data.LMDB, source="mnist_train_lmdb",
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=10, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    net_param = n.to_proto()          # a NetParameter: str(net_param) is its prototxt,
    net = minicnn.Net(net_param, minicnn.TRAIN)       # or build a Net from it directly

``L.<Type>(*bottoms, **fields)`` describes one layer of Caffe type ``<Type>`` and returns its top
(a tuple of ``ntop`` tops when ``ntop > 1``; the layer itself when ``ntop=0``, e.g. Silence).
``in_place=True`` makes the top the bottom's blob. A keyword goes into the type's own parameter
message (``convolution_param`` for Convolution) when that message has the field, otherwise into
the LayerParameter (``loss_weight``, ``include``, ``param``, ``name``, ...); keywords ending in
``_param`` are whole sub-messages. Values are assigned as pycaffe's ``assign_proto`` assigns them:
a dict fills a sub-message, a list of dicts adds repeated sub-messages (``param=[dict(lr_mult=1),
dict(lr_mult=2)]``), a scalar for a repeated field is a list of one (``kernel_size=5``).

Blob and layer names: a top stored as ``n.<name>`` is called ``<name>``, and a layer takes the name
of its first top. Tops never stored get pycaffe's automatic names, the type and a count
(``Convolution1``). ``P.<Type>.<VALUE>`` is an enum value of ``<Type>Parameter``
(``P.Pooling.MAX``).

Where minicnn goes further than pycaffe: a type whose parameter message is not named after it
(Deconvolution's ``convolution_param``, SoftmaxWithLoss's ``loss_param``) takes its fields as
keywords too, and a keyword that is a field of neither message is an error naming the layer, the
field and the closest field name, raised when the layer is written (``to_proto``).
"""

import difflib
from collections import Counter, OrderedDict

from minicnn.layer import LAYERS
from minicnn.proto import caffe_pb2
from minicnn.proto.message import NESTED_ENUMS
from minicnn.proto.schema import ENUMS

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "assign_proto",
           "param_name_dict"]


def param_name_dict():
    """pycaffe's net_spec.param_name_dict: Caffe type name -> its parameters' field less
    "_param" ("Pooling" -> "pooling")."""
    return {type_name: field[:-len("_param")] for type_name, field in
            _param_fields_by_type().items()}


def _param_fields_by_type():
    """Caffe type name -> the LayerParameter field of its parameters ("Pooling" -> pooling_param).

    pycaffe derives it from the message names (PoolingParameter is pooling_param's type); the
    registry adds minicnn's layers whose message is named otherwise.
    """
    fields = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message.name if field.is_message else ""
        if field.name.endswith("_param") and message.endswith("Parameter"):
            fields[message[:-len("Parameter")]] = field.name
    for type_name, cls in LAYERS.items():
        if cls.param_field:
            fields.setdefault(type_name, cls.param_field)
    return fields


def assign_proto(proto, name, value):
    """Set field ``name`` of message ``proto`` from a Python value, as pycaffe's assign_proto.

    A dict fills the sub-message, a list of dicts adds one repeated sub-message per dict, any
    other list extends a repeated field, and a single value for a repeated field is a list of one.
    An unknown field raises AttributeError (so callers can try another message).
    """
    field = type(proto).DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        getattr(proto, name)                       # raises the message's AttributeError
    repeated = field.repeated and not field.array
    if repeated and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (list, tuple)) and repeated:
        target = getattr(proto, name)
        for item in value:
            if isinstance(item, dict):
                entry = target.add()
                for key, sub in item.items():
                    assign_proto(entry, key, sub)
            else:
                target.append(item)
    elif isinstance(value, dict):
        sub_message = getattr(proto, name)
        for key, sub in value.items():
            assign_proto(sub_message, key, sub)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a Function: what ``L.<Type>(...)`` returns and later calls take."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer this top needs."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer as written: its Caffe type, its bottoms (Tops) and its fields."""

    def __init__(self, type_name, inputs, fields):
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                hint = " (unpack a tuple of tops with *)" if isinstance(bottom, tuple) else ""
                raise TypeError(f"{type_name} input {index} is not a Top (type is "
                                f"{type(bottom)}){hint}")
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(fields)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise ValueError(f"L.{type_name}: ntop must be a whole number >= 0, not {self.ntop!r}")
        if self.in_place and len(self.inputs) != self.ntop:
            raise ValueError(f"L.{type_name}: in_place=True needs as many bottoms as tops "
                             f"({len(self.inputs)} bottoms, ntop={self.ntop})")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top, names, autonames):
        if top not in names:
            autonames[self.type_name] += 1
            names[top] = f"{self.type_name}{autonames[self.type_name]}"
        return names[top]

    def _layer_name(self, names, autonames):
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers, names, autonames):
        """Add this layer (after the layers of its bottoms) to ``layers``, once."""
        if self in layers:
            return
        bottom_names = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottom_names.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottom_names)
        if self.in_place:
            layer.top.extend(bottom_names)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._layer_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer, key, value):
        """Put keyword ``key`` in the type's own parameter message if it has such a field,
        else in the LayerParameter (pycaffe's order)."""
        own_field = None if key.endswith("_param") else _param_fields_by_type().get(self.type_name)
        own = getattr(layer, own_field) if own_field else None
        if own is not None and key in type(own).DESCRIPTOR.fields_by_name:
            target, where = own, own_field
        elif key in layer.DESCRIPTOR.fields_by_name:
            target, where = layer, "LayerParameter"
        else:
            known = list(layer.DESCRIPTOR.fields_by_name)
            if own is not None:
                known += list(type(own).DESCRIPTOR.fields_by_name)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            mine = f"{own_field} nor of " if own is not None else ""
            raise AttributeError(f"layer '{layer.name}' ({self.type_name}): '{key}' is a field "
                                 f"neither of {mine}LayerParameter{hint}") from None
        try:
            assign_proto(target, key, value)
        except (AttributeError, TypeError, ValueError) as e:
            raise type(e)(f"layer '{layer.name}' ({self.type_name}), {where}.{key}: {e}") from None


class NetSpec:
    """Named tops, in the order they were stored: ``n.conv1 = L.Convolution(n.data, ...)``.

    A layer without tops (``ntop=0``) can be stored too; its name is then the layer's name.
    """

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name, value):
        if not isinstance(value, (Top, Function)):
            raise TypeError(f"NetSpec.{name}: store what an L.<Type>(...) call returned, "
                            f"not a {type(value).__name__}")
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"this NetSpec has no top named '{name}'") from None

    __setitem__ = __setattr__

    def __getitem__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise KeyError(f"this NetSpec has no top named '{name}'") from None

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        """The NetParameter: the layers the stored tops need, in the order first needed."""
        names = {top: name for name, top in self.tops.items()}
        autonames, layers = Counter(), OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        return caffe_pb2.NetParameter(layer=list(layers.values()))


def to_proto(*tops):
    """A NetParameter with every layer the given tops need, all names automatic."""
    layers, autonames = OrderedDict(), Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    return caffe_pb2.NetParameter(layer=list(layers.values()))


class Layers:
    """``layers.Convolution(bottom, ...)``: a layer of any Caffe type, by attribute name."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)        # copy/pickle probing, not a layer type

        def layer(*bottoms, **fields):
            fn = Function(type_name, bottoms, fields)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        layer.__name__ = type_name
        return layer


class _EnumValues:
    def __init__(self, message):
        self._message = message

    def __getattr__(self, value_name):
        if value_name.startswith("__"):
            raise AttributeError(value_name)
        cls = getattr(caffe_pb2, self._message)
        if not isinstance(getattr(cls, value_name, None), str):
            enums = sorted({v for f in cls.DESCRIPTOR.fields if f.kind == "enum"
                            for v in f.enum.values}
                           | {v for e in NESTED_ENUMS.get(self._message, ())
                              for v in ENUMS[e].values})
            raise AttributeError(f"{self._message} has no enum value '{value_name}' "
                                 f"(it has: {', '.join(enums) or 'none'})")
        return getattr(cls, value_name)


class Parameters:
    """``params.Pooling.MAX``: the enum values of ``<Type>Parameter``."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        message = f"{type_name}Parameter"
        if not hasattr(caffe_pb2, message):
            raise AttributeError(f"caffe.proto has no message {message}")
        return _EnumValues(message)


layers = Layers()
params = Parameters()
