"""The error types minicnn raises on bad input.

Every error a user can cause with a file or a net definition is a ``MinicnnError``. Each one says
where the problem is: a prototxt error names file:line:column and the field, a caffemodel error the
byte offset and the message being read, a net error the layer, its bottoms and their shapes.
"""


class MinicnnError(Exception):
    """Base class of every error minicnn raises on bad input."""


class PrototxtError(MinicnnError, ValueError):
    """A text-format (prototxt) file that does not parse.

    Attributes ``path``, ``line`` and ``column`` (1-based) locate the problem.
    """

    def __init__(self, message, path="<string>", line=0, column=0):
        self.path, self.line, self.column, self.reason = path, line, column, message
        where = f"{path}:{line}:{column}" if line else path      # line 0: the file as a whole
        super().__init__(f"{where}: {message}")


class WireFormatError(MinicnnError, ValueError):
    """A binary protobuf file (.caffemodel, .binaryproto, .solverstate) that does not decode.

    Attributes ``path``, ``offset`` (absolute byte offset) and ``context`` (the message being read).
    """

    def __init__(self, message, path="<bytes>", offset=0, context=""):
        self.path, self.offset, self.context, self.reason = path, offset, context, message
        where = f" while reading {context}" if context else ""
        super().__init__(f"{path}: byte {offset}{where}: {message}")


class NetError(MinicnnError, ValueError):
    """A net that cannot be built or run: bad wiring, wrong shapes, unknown layer types."""


class LayerError(NetError):
    """A layer whose parameters or input shapes are invalid; the Net adds its name and bottoms."""


class LayerNotSetUp(LayerError, AttributeError):
    """A layer driven by hand whose forward or backward ran before its setup: the state setup
    makes is missing. An AttributeError too, so getattr(layer, name, default) still works."""


class SnapshotError(MinicnnError, OSError):
    """A snapshot file that could not be written (disk full, no permission, no such folder).
    It is an OSError too, with the write's errno; the message names the file and the reason.
    The previous snapshot is never touched: each file appears whole or not at all."""

    def __init__(self, message, errno=None, filename=None):
        super().__init__(errno, message)
        self.message, self.filename = message, filename

    def __str__(self):
        return self.message


def os_reason(error):
    """What went wrong in an OSError, without the file name (the caller says it): "File too
    large", "No space left on device", or the message of an error without an errno (h5py's)."""
    return error.strerror or str(error) or type(error).__name__
