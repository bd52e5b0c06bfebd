"""Google's protobuf, built from minicnn's own schema at test time: the reference implementation
of the wire and text formats, to hold minicnn's reader and writer against
(tests/test_protobuf_oracle.py).

    NetParameter = pb_class("NetParameter")            # a real protobuf message class
    pb = NetParameter.FromString(serialize(net))

No protoc: schema.MESSAGES and schema.ENUMS become one proto2 FileDescriptorProto (package
``caffe``), with each field's number, label, type, ``packed`` option and default as the schema's
text gives it, so protobuf parses the defaults itself. Every enum sits inside a message of its own
(``caffe.PoolMethodScope.PoolMethod``): schema.py's enums are top-level and several share value
names (MAX, SUM, NONE), which protobuf's C++ scoping would refuse in one package.
"""

import functools
import math
import struct

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import strategies as st

from minicnn.proto.schema import ENUMS, INT_RANGES, MESSAGES

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32,
          "uint64": _F.TYPE_UINT64, "bool": _F.TYPE_BOOL, "float": _F.TYPE_FLOAT,
          "double": _F.TYPE_DOUBLE, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES}


def _enum_type_name(enum_name):
    return f".caffe.{enum_name}Scope.{enum_name}"


def file_descriptor(packed="schema"):
    """minicnn's schema as a FileDescriptorProto. ``packed``: "schema" (each field as schema.py
    says), "flipped" (every repeated number packed where the schema has it unpacked and the other
    way round: a writer that chose the other encoding, which proto2 readers must accept)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"minicnn_caffe_{packed}.proto",
                                             package="caffe", syntax="proto2")
    for enum in ENUMS.values():
        scope = fdp.message_type.add(name=enum.name + "Scope")
        e = scope.enum_type.add(name=enum.name)
        for name, number in enum.values.items():
            e.value.add(name=name, number=number)
    for desc in MESSAGES.values():
        m = fdp.message_type.add(name=desc.name)
        for f in desc.fields:
            fp = m.field.add(name=f.name, number=f.number,
                             label=_F.LABEL_REPEATED if f.repeated else _F.LABEL_OPTIONAL)
            if f.kind == "scalar":
                fp.type = _TYPES[f.type_name]
            elif f.kind == "enum":
                fp.type, fp.type_name = _F.TYPE_ENUM, _enum_type_name(f.enum.name)
            else:
                fp.type, fp.type_name = _F.TYPE_MESSAGE, f".caffe.{f.message.name}"
            numeric = f.kind == "enum" or f.type_name not in ("string", "bytes")
            if f.repeated and f.kind != "message" and numeric:
                want = f.packed if packed == "schema" else not f.packed
                if want:
                    fp.options.packed = True
            if f.default_text is not None:
                text = f.default_text
                fp.default_value = text[1:-1] if f.type_name in ("string", "bytes") else text
    return fdp


@functools.lru_cache(maxsize=None)
def _pool(packed):
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor(packed))
    return pool


@functools.lru_cache(maxsize=None)
def pb_class(type_name, packed="schema"):
    """The protobuf message class of ``type_name`` (see file_descriptor for ``packed``)."""
    return message_factory.GetMessageClass(
        _pool(packed).FindMessageTypeByName(f"caffe.{type_name}"))


def is_repeated(fd):
    """protobuf 7 dropped FieldDescriptor.label for is_repeated, which older ones lack."""
    flag = getattr(fd, "is_repeated", None)
    return flag if flag is not None else fd.label == fd.LABEL_REPEATED


# --- comparing a minicnn message with a protobuf one, type by type ----------------------------

def _float_key(value, double, exact):
    """A float as a comparable key: its bits (so -0.0 != 0.0 and NaN payloads count) when
    ``exact``, else its value with every NaN alike (text has one NaN)."""
    if math.isnan(value) and not exact:
        return "nan"
    return struct.pack("<d" if double else "<f", value)


def _scalar_key(type_name, value, exact):
    if type_name in ("float", "double"):
        return _float_key(value, type_name == "double", exact)
    return (type(value).__name__, value)


def tree(msg, exact=True):
    """A minicnn message as nested tuples: (field number, value key) for each present field, in
    number order; enums as names, floats as their float32 (or float64) bits."""
    out = []
    for field, value in msg.ListFields():
        if field.array:
            dtype = "<f4" if field.type_name == "float" else "<f8"
            items = [float(v) for v in np.asarray(value, dtype)]
            if exact:                       # bits straight from the array (no float64 trip)
                raw = np.asarray(value, dtype).tobytes()
                size = np.dtype(dtype).itemsize
                keys = [raw[k:k + size] for k in range(0, len(raw), size)]
            else:
                keys = [_float_key(v, field.type_name == "double", False) for v in items]
            out.append((field.number, tuple(keys)))
            continue
        items = value if field.repeated else [value]
        if field.is_message:
            keys = [tree(item, exact) for item in items]
        elif field.kind == "enum":
            keys = [("enum", item) for item in items]
        else:
            keys = [_scalar_key(field.type_name, item, exact) for item in items]
        out.append((field.number, tuple(keys) if field.repeated else keys[0]))
    return tuple(out)


def pb_tree(pb, exact=True):
    """A protobuf message as ``tree`` gives a minicnn one (unknown fields are not in it)."""
    out = []
    for fd, value in pb.ListFields():
        items = list(value) if is_repeated(fd) else [value]
        if fd.type == fd.TYPE_MESSAGE:
            keys = [pb_tree(item, exact) for item in items]
        elif fd.type == fd.TYPE_ENUM:
            keys = [("enum", fd.enum_type.values_by_number[item].name) for item in items]
        else:
            t = {v: k for k, v in _TYPES.items()}[fd.type]
            keys = [_scalar_key(t, item, exact) for item in items]
        out.append((fd.number, tuple(keys) if is_repeated(fd) else keys[0]))
    return tuple(out)


# --- messages built by protobuf, independently of tests/proto_strategies.py -------------------

_FLOAT32 = st.floats(width=32)
_DOUBLE = st.floats()
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)


def _pb_values(fd):
    if fd.type == fd.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values])
    t = {v: k for k, v in _TYPES.items()}[fd.type]
    if t in INT_RANGES:
        return st.integers(*INT_RANGES[t])
    return {"bool": st.booleans(), "float": _FLOAT32, "double": _DOUBLE, "string": _TEXT,
            "bytes": st.binary(max_size=10)}[t]


@st.composite
def pb_messages(draw, type_name, depth=2, max_fields=4, packed="schema"):
    """A protobuf message of ``type_name`` with a few fields set through protobuf's own API."""
    pb = pb_class(type_name, packed)()
    _fill(draw, pb, depth, max_fields)
    return pb


def _fill(draw, pb, depth, max_fields):
    fields = [fd for fd in pb.DESCRIPTOR.fields if depth > 0 or fd.type != fd.TYPE_MESSAGE]
    chosen = draw(st.lists(st.sampled_from(fields), max_size=max_fields, unique_by=id)) \
        if fields else []
    for fd in chosen:
        repeated = is_repeated(fd)
        if fd.type == fd.TYPE_MESSAGE:
            for _ in range(draw(st.integers(1, 2)) if repeated else 1):
                child = getattr(pb, fd.name).add() if repeated else getattr(pb, fd.name)
                child.SetInParent()
                _fill(draw, child, depth - 1, max_fields)
        elif repeated:
            getattr(pb, fd.name).extend(draw(st.lists(_pb_values(fd), min_size=1, max_size=4)))
        else:
            setattr(pb, fd.name, draw(_pb_values(fd)))
