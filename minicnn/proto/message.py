"""Messages: Python objects with the fields that schema.py declares, and proto2 presence rules.

    >>> from minicnn.proto import caffe_pb2
    >>> p = caffe_pb2.PoolingParameter(pool="AVE", kernel_size=3)
    >>> p.stride, p.HasField("stride"), p.pool == caffe_pb2.PoolingParameter.AVE
    (1, False, True)

An unset field reads as its default. Enum values are their names (``"AVE"``), float fields hold the
float32 value Caffe would hold, ``array`` fields (blob data) are NumPy arrays, other repeated fields
are lists. Reading an unset sub-message gives an empty one that becomes present once written to.
The method names follow Google's protobuf (HasField, ClearField, CopyFrom, MergeFrom, ListFields,
SerializeToString, ParseFromString), so code written against pycaffe's caffe_pb2 reads the same.
"""

import difflib
import math

import numpy as np

from minicnn.proto.schema import ARRAY_DTYPES, ENUMS, INT_RANGES, MESSAGES


def _unknown_field(desc, name):
    close = difflib.get_close_matches(name, desc.fields_by_name, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return AttributeError(f"{desc.name} has no field named '{name}'{hint}")


def coerce_scalar(field, value):
    """Check and convert one value for ``field`` (not a message); raise TypeError/ValueError."""
    t = field.type_name
    if field.kind == "enum":
        if isinstance(value, str):
            if value not in field.enum.values:
                raise ValueError(f"'{value}' is not a value of enum {field.enum.name} "
                                 f"(one of {', '.join(field.enum.values)})")
            return field.enum.members[value]
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if int(value) not in field.enum.names:
                raise ValueError(f"{value} is not a value of enum {field.enum.name}")
            return field.enum.names[int(value)]
        raise TypeError(f"field '{field.name}' takes an enum name, not {type(value).__name__}")
    if t in INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"field '{field.name}' ({t}) takes an integer, not {value!r}")
        lo, hi = INT_RANGES[t]
        if not lo <= int(value) <= hi:
            raise ValueError(f"{value} is out of range for field '{field.name}' ({t})")
        return int(value)
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"field '{field.name}' ({t}) takes a number, not {value!r}")
        if t == "float":
            with np.errstate(over="ignore"):
                return float(np.float32(value))           # exactly what Caffe's float holds
        return float(value)
    if t == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"field '{field.name}' takes true or false, not {value!r}")
        return bool(value)
    if t == "string":
        if not isinstance(value, str):
            raise TypeError(f"field '{field.name}' takes a string, not {type(value).__name__}")
        return value
    if t == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"field '{field.name}' takes bytes, not {type(value).__name__}")
        return bytes(value)
    raise AssertionError(t)


class ArrayField(np.ndarray):
    """An array field's values as read from its message: a NumPy array (blob data stays one),
    which also takes protobuf's ``extend`` and ``append``, so code written against pycaffe's
    caffe_pb2 runs (caffe.io.array_to_blobproto's ``blob.data.extend(arr.flat)``, a float
    Datum's ``datum.float_data.extend(...)``). They set the field to the longer array."""

    def __array_finalize__(self, obj):
        self._owner = None          # views taken from the values are not fields

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # what NumPy computes from the values (blob.data * 2, .sum()) is a plain array
        array = array.view(np.ndarray)
        return array[()] if return_scalar else array

    def __repr__(self):
        return repr(self.view(np.ndarray))

    def extend(self, values):
        if self._owner is None:
            raise TypeError("extend() works on a message's array field itself (msg.data), not "
                            "on values taken from it")
        msg, name = self._owner
        if not isinstance(values, np.ndarray):
            values = np.fromiter(values, self.dtype) if not hasattr(values, "__len__") else values
        setattr(msg, name, np.concatenate([self.view(np.ndarray),
                                           np.asarray(values, self.dtype).reshape(-1)]))

    def append(self, value):
        self.extend([value])


def _array_field(values, msg, name):
    view = values.view(ArrayField)
    view._owner = (msg, name)
    return view


class RepeatedField(list):
    """A list that checks what goes in and marks its message present when it changes."""

    __slots__ = ("_owner", "_field")

    def __init__(self, owner, field, items=()):
        super().__init__()
        self._owner, self._field = owner, field
        if items:
            self.extend(items)

    def _coerce(self, value):
        f = self._field
        if f.is_message:
            return f.message.cls._adopt(value, self._owner)
        return coerce_scalar(f, value)

    def append(self, value):
        super().append(self._coerce(value))
        self._owner._touch()

    def extend(self, values):
        super().extend([self._coerce(v) for v in values])
        self._owner._touch()

    def insert(self, index, value):
        super().insert(index, self._coerce(value))
        self._owner._touch()

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            super().__setitem__(index, [self._coerce(v) for v in value])
        else:
            super().__setitem__(index, self._coerce(value))
        self._owner._touch()

    def add(self, **fields):
        """Append a new sub-message (repeated message fields), as protobuf's ``add()``."""
        if not self._field.is_message:
            raise TypeError(f"add() is for repeated messages; '{self._field.name}' holds scalars")
        msg = self._field.message.cls(**fields)
        self.append(msg)
        return self[-1]

    def __eq__(self, other):
        return list.__eq__(self, other)

    __hash__ = None


class Message:
    """Base of every schema message class (see caffe_pb2). Field access is by attribute."""

    __slots__ = ("_values", "_present", "_parent")
    DESCRIPTOR = None

    def __init__(self, **fields):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_present", False)
        object.__setattr__(self, "_parent", None)
        for name, value in fields.items():
            setattr(self, name, value)

    # --- construction helpers ---
    @classmethod
    def _adopt(cls, value, parent):
        """``value`` (a message of this type or a dict of its fields) as a child of ``parent``."""
        if isinstance(value, dict):
            value = cls(**value)
        elif not isinstance(value, cls):
            raise TypeError(f"expected a {cls.__name__} or a dict, not {type(value).__name__}")
        object.__setattr__(value, "_parent", parent)
        value._touch()
        return value

    def _touch(self):
        """Mark this message and its ancestors present (a field was written)."""
        msg = self
        while msg is not None and not msg._present:
            object.__setattr__(msg, "_present", True)
            msg = msg._parent

    # --- attribute access ---
    def __getattr__(self, name):
        desc = type(self).DESCRIPTOR
        field = desc.fields_by_name.get(name) if desc else None
        if field is None:
            raise _unknown_field(desc, name)
        values = self._values
        if field.array:
            return _array_field(values[name] if name in values else
                                np.zeros(0, ARRAY_DTYPES[field.type_name]), self, name)
        if name in values:
            return values[name]
        if field.repeated:
            values[name] = RepeatedField(self, field)
            return values[name]
        if field.is_message:
            child = field.message.cls()
            object.__setattr__(child, "_parent", self)     # present only once written to
            values[name] = child
            return child
        return field.default

    def __setattr__(self, name, value):
        field = type(self).DESCRIPTOR.fields_by_name.get(name)
        if field is None:
            raise _unknown_field(type(self).DESCRIPTOR, name)
        if field.array:
            value = np.ascontiguousarray(value, dtype=ARRAY_DTYPES[field.type_name]).reshape(-1)
        elif field.repeated:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError(f"field '{name}' is repeated: assign a list")
            value = RepeatedField(self, field, list(value))
        elif field.is_message:
            value = field.message.cls._adopt(value, self)
        else:
            value = coerce_scalar(field, value)
        self._values[name] = value
        self._touch()

    def __delattr__(self, name):
        self.ClearField(name)

    # --- protobuf-style API ---
    def HasField(self, name):
        field = type(self).DESCRIPTOR.fields_by_name.get(name)
        if field is None:
            raise _unknown_field(type(self).DESCRIPTOR, name)
        if name not in self._values:
            return False
        value = self._values[name]
        if field.array or field.repeated:
            return len(value) > 0
        if field.is_message:
            return value._present
        return True

    def ClearField(self, name):
        if name not in type(self).DESCRIPTOR.fields_by_name:
            raise _unknown_field(type(self).DESCRIPTOR, name)
        self._values.pop(name, None)

    def Clear(self):
        self._values.clear()

    def ListFields(self):
        """(field descriptor, value) for every present field, in field-number order."""
        desc = type(self).DESCRIPTOR
        out = [(desc.fields_by_name[n], v) for n, v in self._values.items() if self.HasField(n)]
        return sorted(out, key=lambda fv: fv[0].number)

    def CopyFrom(self, other):
        if other is self:
            return
        self.Clear()
        self.MergeFrom(other)

    def MergeFrom(self, other):
        """protobuf's merge: scalars overwrite, repeated fields append, messages merge."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for field, value in other.ListFields():
            if field.array:
                setattr(self, field.name, np.concatenate([getattr(self, field.name), value]))
            elif field.repeated:
                target = getattr(self, field.name)
                for item in value:
                    if field.is_message:
                        target.add().MergeFrom(item)
                    else:
                        target.append(item)
            elif field.is_message:
                getattr(self, field.name).MergeFrom(value)
                self._touch()
            else:
                setattr(self, field.name, value)
        if other._present:
            self._touch()

    def SerializeToString(self):
        """The message's wire-format bytes (what an LMDB value or a .caffemodel holds)."""
        from minicnn.proto.wire import serialize
        return serialize(self)

    def MergeFromString(self, data):
        """Merge wire-format bytes into this message; the number of bytes read, as protobuf."""
        from minicnn.proto.wire import parse_binary
        self.MergeFrom(parse_binary(data, type(self).DESCRIPTOR.name,
                                    path=f"<{type(self).DESCRIPTOR.name} bytes>"))
        return len(data)

    @classmethod
    def FromString(cls, data):
        """A new message read from wire-format bytes (protobuf's Message.FromString; called
        on an instance, as in ``caffe.io.caffe_pb2.Datum().FromString(lmdb_value)``, it
        still returns a new message and leaves the instance as it was)."""
        message = cls()
        message.MergeFromString(data)
        return message

    def ParseFromString(self, data):
        """Replace the message's fields with those of wire-format bytes (protobuf's
        ParseFromString, e.g. ``datum.ParseFromString(lmdb_value)``); the number of bytes."""
        self.Clear()
        return self.MergeFromString(data)

    def copy(self):
        clone = type(self)()
        clone.MergeFrom(self)
        return clone

    def __copy__(self):
        return self.copy()                  # a whole copy, as protobuf's copy.copy gives

    def __deepcopy__(self, memo=None):      # copy.deepcopy(layer), as net surgery scripts do
        return self.copy()

    def __reduce__(self):
        """Pickled as its wire bytes (multiprocessing hands messages to workers this way)."""
        return type(self).FromString, (self.SerializeToString(),)

    def ByteSize(self):
        """The length of SerializeToString(), without building it."""
        from minicnn.proto.wire import _Writer
        return _Writer().size(self)

    def SetInParent(self):
        """Make this (possibly empty) sub-message present, as protobuf's SetInParent."""
        self._touch()

    def IsInitialized(self):
        return True                         # caffe.proto has no required fields

    def DiscardUnknownFields(self):
        """Nothing to do: minicnn keeps no unknown fields (the wire reader skips them)."""

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        mine, theirs = self.ListFields(), other.ListFields()
        if [f.number for f, _ in mine] != [f.number for f, _ in theirs]:
            return False
        return all(_values_equal(f, a, b) for (f, a), (_, b) in zip(mine, theirs))

    __hash__ = None

    def __repr__(self):
        from minicnn.proto.text import to_text
        body = to_text(self).strip()
        return f"{type(self).__name__}({body!r})" if body else f"{type(self).__name__}()"

    def __str__(self):
        """The message as prototxt, as protobuf's str() of a message."""
        from minicnn.proto.text import to_text
        return to_text(self)

    def __dir__(self):
        return list(type(self).DESCRIPTOR.fields_by_name) + [
            "HasField", "ClearField", "Clear", "ListFields", "CopyFrom", "MergeFrom", "copy",
            "SerializeToString", "ParseFromString", "MergeFromString", "FromString", "ByteSize",
            "SetInParent", "IsInitialized", "DiscardUnknownFields"]


def _scalar_equal(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True                                       # NaN equals NaN for message equality
    return a == b


def _values_equal(field, a, b):
    if field.array:
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    if field.repeated:
        return len(a) == len(b) and all(_scalar_equal(x, y) if not field.is_message else x == y
                                        for x, y in zip(a, b))
    if field.is_message:
        return a == b
    return _scalar_equal(a, b)


# Enums that caffe.proto declares inside a message none of whose own fields has that type: their
# values are constants of the message all the same. SSD's PriorBoxParameter.CodeType is the type
# of MultiBoxLoss's and DetectionOutput's code_type; ssd_pascal.py writes P.PriorBox.CENTER_SIZE.
NESTED_ENUMS = {"PriorBoxParameter": ("CodeType",)}


def _make_classes():
    classes = {}
    for name, desc in MESSAGES.items():
        attrs = {"__slots__": (), "DESCRIPTOR": desc, "__module__": "minicnn.proto.caffe_pb2"}
        enums = [f.enum for f in desc.fields if f.kind == "enum"]
        enums += [ENUMS[e] for e in NESTED_ENUMS.get(name, ())]
        for enum in enums:                               # enum constants: PoolingParameter.MAX
            for value_name in enum.values:
                attrs.setdefault(value_name, enum.members[value_name])
        cls = type(name, (Message,), attrs)
        desc.cls = cls
        classes[name] = cls
    return classes


CLASSES = _make_classes()
