"""Caffe's message classes by their caffe.proto names, as pycaffe's ``caffe.proto.caffe_pb2``
offers them.

    from minicnn.proto import caffe_pb2
    net = caffe_pb2.NetParameter(name="tiny")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 8
"""

from minicnn.proto.message import CLASSES, NESTED_ENUMS
from minicnn.proto.schema import ENUMS

globals().update(CLASSES)

TRAIN, TEST = ENUMS["Phase"].members["TRAIN"], ENUMS["Phase"].members["TEST"]


class EnumTypeWrapper:
    """A top-level enum of caffe.proto as protobuf's EnumTypeWrapper offers it: Phase.Value,
    Name, keys, values, items and Phase.TRAIN. minicnn's messages hold an enum value as a name
    that also equals its number (schema.EnumValue: caffe_pb2.TRAIN == "TRAIN" == 0), so Value
    gives that value where protobuf gives the number; a message field takes either. Name takes
    the number or the name. SSD's ssd_pascal.py writes
    include=dict(phase=caffe_pb2.Phase.Value('TRAIN'))."""

    def __init__(self, enum):
        self.DESCRIPTOR = enum
        for name, value in enum.members.items():
            setattr(self, name, value)

    def Value(self, name):
        if name not in self.DESCRIPTOR.values:
            raise ValueError(f"enum {self.DESCRIPTOR.name} has no value named {name!r}")
        return self.DESCRIPTOR.members[name]

    def Name(self, number):
        if isinstance(number, str) and number in self.DESCRIPTOR.values:
            return str(number)
        if number not in self.DESCRIPTOR.names:
            raise ValueError(f"enum {self.DESCRIPTOR.name} has no value with number {number!r}")
        return str(self.DESCRIPTOR.names[number])

    def keys(self):
        return list(self.DESCRIPTOR.values)

    def values(self):
        return list(self.DESCRIPTOR.members.values())

    def items(self):
        return list(self.DESCRIPTOR.members.items())


Phase = EnumTypeWrapper(ENUMS["Phase"])


def _nest_enum_types():
    """Each message's enum types as class attributes, as protobuf nests them:
    PoolingParameter.PoolMethod.items() (pycaffe's draw.py reads it), SolverParameter.SolverType."""
    for name, cls in CLASSES.items():
        enums = [f.enum for f in cls.DESCRIPTOR.fields if f.kind == "enum"]
        enums += [ENUMS[e] for e in NESTED_ENUMS.get(name, ())]
        for enum in enums:
            if enum.name != "Phase" and enum.name not in cls.DESCRIPTOR.fields_by_name \
                    and not hasattr(cls, enum.name):
                setattr(cls, enum.name, EnumTypeWrapper(enum))


_nest_enum_types()

__all__ = sorted(CLASSES) + ["TRAIN", "TEST", "Phase"]
