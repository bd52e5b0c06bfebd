"""Caffe's file formats: the message schema, prototxt text, and the binary wire format."""

from minicnn.proto import caffe_pb2
from minicnn.proto.message import Message
from minicnn.proto.text import parse_text, read_prototxt, to_text, write_prototxt
from minicnn.proto.upgrade import upgrade_net, upgrade_solver
from minicnn.proto.wire import parse_binary, read_binary, serialize, write_binary

__all__ = ["caffe_pb2", "Message", "parse_text", "read_prototxt", "to_text", "write_prototxt",
           "upgrade_net", "upgrade_solver", "parse_binary", "read_binary", "serialize",
           "write_binary"]
