"""Blob: an N-d array of values (``data``) and of gradients (``diff``), as in Caffe.

    b = Blob((2, 3, 4, 4))
    b.data[...] = x            # forward values
    b.diff                     # d(loss)/d(data), same shape; allocated on first use

Layers read bottom blobs and write top blobs; backward writes the diffs. ``data`` and ``diff`` are
plain NumPy arrays, or CuPy arrays on a GPU (``Blob(shape, device=0)``, ``blob.to_device(0)``: a
Net on the GPU keeps every blob there). They are replaced only by ``reshape`` to a new shape, so
code that holds a reference to ``blob.data`` keeps seeing the blob's values between reshapes.
``blob.data = values`` copies NumPy values onto the device (and device values to the host).
"""

import math
import os

import numpy as np

from minicnn import cuda
from minicnn.errors import MinicnnError


def _physical_memory():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


# A blob larger than this is refused with a clear error instead of an out-of-memory crash (a
# typo such as num_output: 10000000 would otherwise take the machine down). The environment
# variable MINICNN_MAX_BLOB_BYTES overrides it.
MAX_BLOB_BYTES = int(os.environ.get("MINICNN_MAX_BLOB_BYTES", 0)) or _physical_memory()


def _zeros_on_a_line(shape, dtype, line=64):
    """np.zeros(shape, dtype) starting on a cache-line boundary: the native kernels write a
    parameter's diff with streaming stores (csrc/inner_product.cpp), which need one."""
    count = math.prod(shape)
    buffer = np.zeros(count + line // dtype.itemsize, dtype)
    start = (-buffer.ctypes.data % line) // dtype.itemsize
    return buffer[start:start + count].reshape(shape)


class Blob:
    """``Blob(shape, dtype=float32, device=None)``: ``data`` and ``diff`` arrays of one shape
    (see the module's docstring); ``device`` a GPU number, None for host memory."""

    __slots__ = ("_data", "_diff", "_diff_source", "_shape", "_count", "dtype", "device")

    def __init__(self, shape=(), dtype=np.float32, device=None):
        self.dtype = np.dtype(dtype)
        self.device = device              # None: host memory (NumPy); a number: that CUDA GPU
        self._shape = None
        self._data = self._diff = self._diff_source = None
        self.reshape(shape)

    @classmethod
    def from_array(cls, array, dtype=None):
        device = array.device.id if cuda.is_device_array(array) else None
        array = array if device is not None else np.asarray(array)
        blob = cls(array.shape, dtype or (array.dtype if array.dtype.kind == "f" else np.float32),
                   device)
        blob.data[...] = array
        return blob

    # --- shape ---
    @property
    def shape(self):
        return self._shape

    def reshape(self, *shape):
        """New shape (ints or one tuple). Contents are kept when the shape does not change."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise MinicnnError(f"blob shape {shape} has a negative dimension")
        if shape != self._shape:
            nbytes = int(np.prod(shape, dtype=object)) * self.dtype.itemsize
            if nbytes > MAX_BLOB_BYTES:
                raise MinicnnError(f"a blob of shape {shape} would need {nbytes / 2**30:.3g} GiB, "
                                   f"more than the {MAX_BLOB_BYTES / 2**30:.3g} GiB allowed "
                                   "(this machine's memory, or MINICNN_MAX_BLOB_BYTES)")
            try:
                data = cuda.zeros(shape, self.dtype, self.device)
            except ValueError as e:    # NumPy's limits: 64 axes; huge dimensions beside a zero
                raise MinicnnError(f"a blob of shape {shape} cannot be an array: {e}") from None
            self._shape = shape
            self._count = math.prod(shape)
            self._data = data
            self._diff = self._diff_source = None
        return self

    @property
    def count(self):
        return self._count

    @property
    def num_axes(self):
        return len(self._shape)

    def canonical_axis(self, axis):
        """Caffe's CanonicalAxisIndex: -1 is the last axis; out of range is an error."""
        n = len(self._shape)
        if not -n <= axis < n:
            raise MinicnnError(f"axis {axis} is out of range for a blob of shape {self._shape}")
        return axis % n if n else 0

    # Caffe's legacy 4-D accessors (pycaffe has them too).
    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def _legacy(self, i):
        if len(self._shape) > 4:
            raise MinicnnError(f"legacy accessors need at most 4 axes, blob has {self._shape}")
        return self._shape[i] if i < len(self._shape) else 1

    # --- values ---
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        if value is not self._data:       # `blob.data -= step` has written in place already
            self._check_values(value, "data")
            cuda.assign(self._data, value)    # write in place: keeps shared views alive

    @property
    def diff(self):
        if self._diff is None:            # inference never touches diffs: allocate lazily
            self._diff = _zeros_on_a_line(self._shape, self.dtype) if self.device is None \
                else cuda.zeros(self._shape, self.dtype, self.device)
        if self._diff_source is not None:   # defer_diff: the copy, now that it is read
            source, self._diff_source = self._diff_source, None
            np.copyto(self._diff, source.reshape(self._shape))
        return self._diff

    @diff.setter
    def diff(self, value):
        target = self.diff
        if value is not target:           # `blob.diff += g` has written in place already
            self._check_values(value, "diff")
            cuda.assign(target, value)

    def _check_values(self, value, field):
        """``blob.data = value`` takes a scalar (every element) or an array of the blob's own
        shape: NumPy would broadcast a (5, 5) array into every filter of a (20, 1, 5, 5) blob
        without a word. (``blob.data[...] = value`` still broadcasts, as NumPy does.)"""
        shape = getattr(value, "shape", None)
        if shape is None:
            shape = np.shape(value)
        if shape and tuple(shape) != self._shape:
            raise MinicnnError(f"cannot set a blob of shape {self._shape} from {field} of shape "
                               f"{tuple(shape)}; reshape the blob first, or write "
                               f"blob.{field}[...] = values to broadcast on purpose")
        dtype = getattr(value, "dtype", None)
        if (dtype if dtype is not None else np.asarray(value).dtype).kind == "c":
            raise MinicnnError(f"cannot set a blob's {field} from complex values: minicnn's "
                               "blobs are real")

    def defer_diff(self, source):
        """The diff is a copy of the host array ``source``, taken when the diff is next read
        (``source`` must not change before then unless the diff should follow it). The SGD
        step that InnerProduct takes in its backward leaves the step in the diff, as Caffe's
        update does, and the step is the new momentum history itself: writing CaffeNet fc6's
        151 MB diff every iteration for nobody to read made that step 29.5-34.8 ms instead of
        25.4-27.1 (2 cores, Zen 4)."""
        if self.device is not None or source.size != self._count or source.dtype != self.dtype:
            raise MinicnnError(f"defer_diff: a host {self.dtype} array of {self._count} values "
                               f"is needed, not {source.dtype} {source.shape}")
        self._diff_source = source

    def to_device(self, device, move=None):
        """Move data (and diff) to CUDA device ``device`` (None: to the host), in place.
        ``move`` (array -> array) replaces the plain copy (the Net's keeps views shared)."""
        if device == self.device:
            return self
        if move is None:
            move = (lambda a: cuda.to_device(a, device)) if device is not None else cuda.to_host
        self._data = move(self._data)
        if self._diff is not None:
            self._diff = move(self.diff)          # (a deferred copy made first)
        self.device = device
        return self

    def alias_data(self, other):
        """Take ``other``'s shape and data array (not its diff), as Caffe's Blob::ShareData:
        writes to either are seen by both. The diff stays this blob's own."""
        if self._shape != other.shape or self.dtype != other.dtype or \
                self.device != other.device:
            self._shape, self.dtype, self._diff = other.shape, other.dtype, None
            self._diff_source = None
            self._count = other.count
        self._data, self.device = other.data, other.device

    def share_data(self, other):
        """Use ``other``'s data and diff arrays (shared weights), viewed in this blob's shape."""
        if other.count != self.count:
            raise MinicnnError(f"cannot share a blob of shape {other.shape} as {self._shape}")
        self._data = other.data.reshape(self._shape)
        self._diff, self._diff_source = other.diff.reshape(self._shape), None
        self.dtype, self.device = other.dtype, other.device

    def __repr__(self):
        where = "" if self.device is None else f", device=cuda:{self.device}"
        return f"Blob(shape={self._shape}, dtype={self.dtype.name}{where})"


# --- BlobProto (the message .caffemodel files store blobs in) ----------------------------------

def blob_proto_shape(proto):
    """The shape a BlobProto declares: legacy num/channels/height/width if any is set."""
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return tuple(proto.shape.dim)


def legacy_shape_matches(have, want):
    """Caffe's rule for old 4-D blobs: shapes align from the end, missing leading axes are 1,
    so a stored InnerProduct weight (1, 1, N, K) fits an (N, K) blob."""
    n = max(len(have), len(want))
    return (1,) * (n - len(have)) + tuple(have) == (1,) * (n - len(want)) + tuple(want)


def blob_proto_to_array(proto, diff=False):
    """A BlobProto's data (or diff) as an array of its declared shape (float32 or float64)."""
    shape = blob_proto_shape(proto)
    if any(d < 0 for d in shape):                   # NumPy would read -1 as "the rest"
        raise MinicnnError(f"blob shape {shape} has a negative dimension")
    single, double = (proto.diff, proto.double_diff) if diff else (proto.data, proto.double_data)
    values = double if len(double) else single
    count = math.prod(shape)                        # exact: an int64 product wraps around
    if len(values) != count:
        what = "diff" if diff else "data"
        raise MinicnnError(f"blob of shape {shape} holds {len(values)} {what} values, "
                           f"expected {count}")
    try:
        return values.reshape(shape)
    except ValueError as e:          # NumPy's limits: 64 axes; huge dimensions beside a zero
        raise MinicnnError(f"blob of shape {shape} cannot be an array: {e}") from None


def array_to_blob_proto(data, diff=None):
    """A BlobProto holding ``data`` (and ``diff``): float32 arrays go to data, float64 to
    double_data, as Caffe's Blob<float>/Blob<double>::ToProto write them."""
    from minicnn.proto.caffe_pb2 import BlobProto
    data = cuda.to_host(data)             # a GPU blob's values come to the host here
    proto = BlobProto()
    if data.shape:                       # a 0-axis blob has no shape field (Caffe's ToProto)
        proto.shape.dim.extend(data.shape)
    if data.dtype == np.float64:
        proto.double_data = data.reshape(-1)
        if diff is not None:
            proto.double_diff = cuda.to_host(diff).reshape(-1)
    else:
        proto.data = data.reshape(-1)
        if diff is not None:
            proto.diff = cuda.to_host(diff).reshape(-1)
    return proto
