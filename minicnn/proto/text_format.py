"""protobuf's ``google.protobuf.text_format`` for minicnn's messages, so the pycaffe scripts that
read, edit and write prototxt in Python run with one import changed:

    from minicnn.proto import caffe_pb2, text_format   # for: from caffe.proto import caffe_pb2
                                                      #      from google.protobuf import text_format
    solver = caffe_pb2.SolverParameter()
    with open("solver.prototxt") as f:
        text_format.Merge(f.read(), solver)
    solver.base_lr = 0.001
    with open("solver_ft.prototxt", "w") as f:
        f.write(text_format.MessageToString(solver))

minicnn's messages are its own (no protobuf), so protobuf's module cannot take them; this one
keeps its names and its rules: ``Parse`` refuses a non-repeated field given twice, ``Merge`` lets
the last one win; both add to the message given (repeated fields are extended, nothing cleared)
and return it. Errors are ParseError (a PrototxtError too), with line and column.
"""

from minicnn.errors import PrototxtError
from minicnn.proto.message import Message
from minicnn.proto.text import parse_text, to_text

__all__ = ["ParseError", "Parse", "Merge", "ParseLines", "MergeLines", "MessageToString",
           "PrintMessage"]


class ParseError(PrototxtError):
    """text_format.ParseError: the text is not a valid message of the type given."""

    def GetLine(self):
        return self.line

    def GetColumn(self):
        return self.column


def _parse(text, message, merge):
    if not isinstance(message, Message):
        raise TypeError(f"text_format needs a minicnn message (minicnn.proto.caffe_pb2), got "
                        f"{type(message).__name__}; a protobuf message belongs to protobuf's "
                        f"own text_format")
    if not isinstance(text, (str, bytes)):          # ParseLines / MergeLines: an iterable
        text = "\n".join(line.rstrip("\n") for line in text)
    try:
        return parse_text(text, type(message).DESCRIPTOR.name, path="<text_format>",
                          into=message, merge=merge)
    except ParseError:
        raise
    except PrototxtError as e:
        raise ParseError(e.reason, e.path, e.line, e.column) from None


def Parse(text, message, allow_unknown_extension=False, allow_field_number=False,
          descriptor_pool=None, allow_unknown_field=False):
    """Parse ``text`` into ``message`` and return it; a non-repeated field given twice is an
    error. The keyword arguments are protobuf's; unknown fields are always errors here."""
    if allow_unknown_field or allow_unknown_extension:
        raise ValueError("minicnn's text_format does not skip unknown fields: a misspelt "
                         "field is an error naming it (Caffe's tools refuse them too)")
    return _parse(text, message, merge=False)


def Merge(text, message, allow_unknown_extension=False, allow_field_number=False,
          descriptor_pool=None, allow_unknown_field=False):
    """As Parse, but a non-repeated field given again takes the last value (protobuf's Merge)."""
    if allow_unknown_field or allow_unknown_extension:
        raise ValueError("minicnn's text_format does not skip unknown fields: a misspelt "
                         "field is an error naming it (Caffe's tools refuse them too)")
    return _parse(text, message, merge=True)


ParseLines = Parse
MergeLines = Merge


def MessageToString(message, as_utf8=False, as_one_line=False, **options):
    """The message as prototxt text, fields in field-number order (as protobuf prints them);
    ``as_one_line`` joins it into one line. ``str(message)`` is the same text."""
    text = to_text(message)
    if as_one_line:
        # split at "\n" only: a string may hold U+0085 or U+2028, which splitlines() splits at
        return " ".join(line.lstrip(" ") for line in text.split("\n") if line)
    return text


def PrintMessage(message, out, **options):
    """Write MessageToString(message) to the file-like ``out``."""
    out.write(MessageToString(message, **options))
