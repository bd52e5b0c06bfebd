"""Caffe's message classes by their caffe.proto names, as pycaffe's ``caffe.proto.caffe_pb2``
offers them.

    from minicnn.proto import caffe_pb2
    net = caffe_pb2.NetParameter(name="tiny")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 8
"""

from minicnn.proto.message import CLASSES

globals().update(CLASSES)

TRAIN, TEST = "TRAIN", "TEST"          # the Phase enum

__all__ = sorted(CLASSES) + ["TRAIN", "TEST"]
