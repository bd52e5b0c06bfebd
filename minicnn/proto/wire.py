"""Protobuf binary (wire) format: .caffemodel, .binaryproto and .solverstate files.

    net = read_binary("bvlc_reference_caffenet.caffemodel", "NetParameter")
    write_binary(net, "copy.caffemodel")

Our own reader and writer, driven by schema.py. A file is read through a memory map, and blob data
is copied once, straight from the file into its NumPy array, so a 500 MB model needs about 500 MB.
Packed and unpacked repeated fields are both accepted, unknown fields are skipped, and every length
is checked against the bytes that are really there before anything is allocated. Errors name the
byte offset and the message being read.

The wire format in four lines: a message is a run of (key, value) records; key = field_number << 3
| wire_type; wire type 0 is a varint, 1 eight bytes, 5 four bytes, 2 a varint length then that many
bytes (strings, sub-messages, packed arrays). Fields may come in any order and repeat.
"""

import contextlib
import errno
import mmap
import os
import re
import struct
import tempfile

import numpy as np

from minicnn.errors import WireFormatError
from minicnn.proto.schema import ARRAY_DTYPES, MESSAGES

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_SCALAR_WIRE = {"int32": VARINT, "int64": VARINT, "uint32": VARINT, "uint64": VARINT,
                "bool": VARINT, "float": FIXED32, "double": FIXED64}
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "start-group",
               4: "end-group", 5: "fixed32"}
_MAX_DEPTH = 64
_MAX_FIELD = (1 << 29) - 1               # protobuf's largest field number (a key is 32 bits)

# Caffe forks that reused a BVLC field number for their own layer parameter: in a layer of the
# given type, the number means the fork's field. (DeepLab and PSPNet put interp_param at 143,
# BVLC's input_param; a layer's type, field 2, is written before its parameters.)
FORK_FIELDS = {("LayerParameter", 143): {"Interp": "interp_param"}}
_CHUNK = 1 << 20                         # records examined at once when reading unpacked floats


# --- reading -----------------------------------------------------------------------------------

class _Reader:
    def __init__(self, buf, path, keep=None):
        self.buf, self.path, self.keep = buf, path, keep
        self.trail = []                   # [(message, "field[index]")] for error messages

    def fail(self, message, offset):
        parts = []
        for msg, label in self.trail:
            name = ""
            desc = type(msg).DESCRIPTOR
            if "name" in desc.fields_by_name and msg.HasField("name"):
                name = f" '{msg.name}'"
            parts.append(f"{label}{name}" if label else desc.name + name)
        raise WireFormatError(message, self.path, offset, " > ".join(parts))

    def varint(self, pos, end):
        buf, result, shift, start = self.buf, 0, 0, pos
        while True:
            if pos >= end:
                self.fail("truncated varint (the data ends in the middle of a number)", start)
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result & 0xFFFFFFFFFFFFFFFF, pos
            shift += 7
            if shift >= 70:
                self.fail("varint longer than 10 bytes", start)

    def skip(self, number, wire_type, pos, end, depth):
        if wire_type == VARINT:
            return self.varint(pos, end)[1]
        if wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if pos + size > end:
                self.fail(f"truncated {size}-byte value of unknown field {number}", pos)
            return pos + size
        if wire_type == LENGTH:
            length, pos = self.varint(pos, end)
            if length > end - pos:
                self.fail(f"unknown field {number} claims {length} bytes but only {end - pos} "
                          "remain", pos)
            return pos + length
        if wire_type == START_GROUP:
            if depth > _MAX_DEPTH:
                self.fail("groups nested too deeply", pos)
            while True:
                if pos >= end:
                    self.fail(f"group {number} is not closed", pos)
                key_pos = pos
                key, pos = self.varint(pos, end)
                if not 0 < key >> 3 <= _MAX_FIELD:
                    self.fail(f"field number {key >> 3} is not allowed (1 to {_MAX_FIELD}; "
                              "corrupt data?)", key_pos)
                if key & 7 == END_GROUP:
                    if key >> 3 != number:
                        self.fail(f"group {number} closed by end-group {key >> 3}", pos)
                    return pos
                pos = self.skip(key >> 3, key & 7, pos, end, depth + 1)
        self.fail(f"invalid wire type {wire_type} for field {number}", pos)

    def parse(self, msg, pos, end, depth=0):
        if depth > _MAX_DEPTH:
            self.fail(f"messages nested more than {_MAX_DEPTH} deep", pos)
        desc = type(msg).DESCRIPTOR
        keep = self.keep.get(desc.name) if self.keep else None
        arrays, counts = {}, {}
        while pos < end:
            key_pos = pos
            key, pos = self.varint(pos, end)
            number, wire_type = key >> 3, key & 7
            if not 0 < number <= _MAX_FIELD:
                self.fail(f"field number {number} is not allowed (1 to {_MAX_FIELD}; corrupt "
                          "data?)", key_pos)
            field = desc.fields_by_number.get(number)
            if (desc.name, number) in FORK_FIELDS and getattr(msg, "type", None) in \
                    FORK_FIELDS[desc.name, number]:
                field = desc.fields_by_name[FORK_FIELDS[desc.name, number][msg.type]]
            if field is None or (keep is not None and field.name not in keep):
                pos = self.skip(number, wire_type, pos, end, depth)
                continue
            if field.array:
                pos = self._read_array(field, wire_type, key_pos, pos, end, arrays)
                continue
            if field.is_message:
                if wire_type != LENGTH:
                    self._wrong_type(field, wire_type, key_pos)
                length, pos = self.varint(pos, end)
                self._check_length(field, length, pos, end)
                index = counts.get(field.name, 0)
                counts[field.name] = index + 1
                child = field.message.cls()
                label = f"{field.name}[{index}]" if field.repeated else field.name
                self.trail.append((child, f"{label} ({field.message.name})"))
                self.parse(child, pos, pos + length, depth + 1)
                self.trail.pop()
                if field.repeated:
                    getattr(msg, field.name).append(child)
                else:                                     # proto rule: a repeated singular merges
                    getattr(msg, field.name).MergeFrom(child)
                    msg._touch()
                pos += length
                continue
            t = field.type_name
            if t in ("string", "bytes"):
                if wire_type != LENGTH:
                    self._wrong_type(field, wire_type, key_pos)
                length, pos = self.varint(pos, end)
                self._check_length(field, length, pos, end)
                raw = bytes(self.buf[pos:pos + length])
                if t == "string":
                    try:
                        raw = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        self.fail(f"string field '{field.name}' is not valid UTF-8", pos)
                values, pos = [raw], pos + length
            elif wire_type == LENGTH and field.repeated:   # a packed run of numbers
                length, pos = self.varint(pos, end)
                self._check_length(field, length, pos, end)
                values = self._unpack(field, pos, pos + length)
                pos += length
            else:
                expected = _SCALAR_WIRE[t] if field.kind == "scalar" else VARINT
                if wire_type != expected:
                    self._wrong_type(field, wire_type, key_pos)
                value, pos = self._read_scalar(field, wire_type, pos, end)
                values = [value]
            values = [self._convert(field, v, key_pos) for v in values]
            if field.repeated:
                getattr(msg, field.name).extend(values)
            else:
                setattr(msg, field.name, values[-1])       # last one wins, as protobuf does
        for name, chunks in arrays.items():
            setattr(msg, name, chunks[0] if len(chunks) == 1 else np.concatenate(chunks))
        msg._touch()
        return msg

    def _wrong_type(self, field, wire_type, pos):
        self.fail(f"field '{field.name}' ({field.type_name}) arrived with wire type "
                  f"{_WIRE_NAMES.get(wire_type, wire_type)}", pos)

    def _check_length(self, field, length, pos, end):
        if length > end - pos:
            self.fail(f"field '{field.name}' claims {length} bytes but only {end - pos} remain "
                      "(truncated or corrupt file)", pos)

    def _read_scalar(self, field, wire_type, pos, end):
        if wire_type == VARINT:
            return self.varint(pos, end)
        size = 4 if wire_type == FIXED32 else 8
        if pos + size > end:
            self.fail(f"truncated value of field '{field.name}'", pos)
        fmt = "<f" if wire_type == FIXED32 else "<d"
        return struct.unpack_from(fmt, self.buf, pos)[0], pos + size

    def _unpack(self, field, pos, end):
        t = field.type_name
        if t in ("float", "double"):
            size = 4 if t == "float" else 8
            if (end - pos) % size:
                self.fail(f"packed field '{field.name}' has {end - pos} bytes, not a multiple "
                          f"of {size}", pos)
            return np.frombuffer(self.buf, ARRAY_DTYPES[t], (end - pos) // size, pos).tolist()
        values = []
        while pos < end:
            value, pos = self.varint(pos, end)
            values.append(value)
        return values

    def _convert(self, field, raw, pos):
        """A decoded number as the field's Python value (two's complement, enum names)."""
        t = field.type_name
        if field.kind == "enum" or t == "int32":
            raw &= 0xFFFFFFFF
            raw = raw - (1 << 32) if raw >= (1 << 31) else raw
            if field.kind == "enum":
                if raw not in field.enum.names:
                    self.fail(f"{raw} is not a value of enum {field.enum.name} (field "
                              f"'{field.name}'); the file may come from a Caffe fork", pos)
                return field.enum.names[raw]
            return raw
        if t == "int64":
            return raw - (1 << 64) if raw >= (1 << 63) else raw
        if t == "uint32":
            return raw & 0xFFFFFFFF
        if t == "bool":
            return raw != 0
        if t == "float":
            return float(np.float32(raw))
        return raw

    def _read_array(self, field, wire_type, key_pos, pos, end, arrays):
        dtype = ARRAY_DTYPES[field.type_name]
        if wire_type == LENGTH:                                  # packed (what Caffe writes)
            length, pos = self.varint(pos, end)
            self._check_length(field, length, pos, end)
            if length % dtype.itemsize:
                self.fail(f"packed field '{field.name}' has {length} bytes, not a multiple of "
                          f"{dtype.itemsize}", pos)
            chunk = np.frombuffer(self.buf, dtype, length // dtype.itemsize, pos).copy()
            arrays.setdefault(field.name, []).append(chunk)
            return pos + length
        expected = FIXED32 if dtype.itemsize == 4 else FIXED64
        if wire_type != expected:
            self._wrong_type(field, wire_type, key_pos)
        # Unpacked: a run of records [key][value]; read the whole run at once with NumPy.
        key_bytes = bytes(self.buf[key_pos:pos])
        record = len(key_bytes) + dtype.itemsize
        start = key_pos
        while True:
            n_max = min((end - start) // record, _CHUNK)
            if n_max == 0:        # under one record left: the run ended, unless it is our key
                if start > key_pos and bytes(self.buf[start:start + len(key_bytes)]) != key_bytes:
                    return start
                self.fail(f"truncated value of field '{field.name}'", start + len(key_bytes))
            rows = np.frombuffer(self.buf, np.uint8, n_max * record, start).reshape(n_max, record)
            same = (rows[:, :len(key_bytes)] == np.frombuffer(key_bytes, np.uint8)).all(axis=1)
            n = n_max if same.all() else int(np.argmin(same))
            arrays.setdefault(field.name, []).append(
                np.ascontiguousarray(rows[:n, len(key_bytes):]).view(dtype).reshape(-1))
            start += n * record
            if n < n_max or start >= end:
                return start


def parse_binary(data, message_type="NetParameter", path="<bytes>", keep=None):
    """Decode ``data`` (bytes-like) as a message of ``message_type``.

    ``keep`` optionally maps message names to the field names to decode; other fields of those
    messages are skipped unread (``copy_from`` reads only layer names, types and blobs).
    """
    buf = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    msg = MESSAGES[message_type].cls()
    reader = _Reader(buf, path, keep)
    reader.trail.append((msg, ""))
    return reader.parse(msg, 0, len(buf))


def read_binary(path, message_type="NetParameter", keep=None):
    """Read a binary protobuf file through a memory map (see ``parse_binary``)."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise WireFormatError(f"cannot read file: {e.strerror}", path, 0, message_type) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return MESSAGES[message_type].cls()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view, error = memoryview(mapped), None
            try:
                result = parse_binary(view, message_type, path, keep)
            except WireFormatError as e:
                # the traceback's frames hold NumPy views of the map, which could not be closed
                # under them: raise a copy once they are gone
                error = WireFormatError(e.reason, e.path, e.offset, e.context)
            view.release()
    if error is not None:
        raise error
    return result


# --- writing -----------------------------------------------------------------------------------

def encode_varint(value):
    """The varint bytes of an integer (negatives as 10-byte two's complement, as int32 fields
    are written)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number, wire_type):
    return encode_varint(number << 3 | wire_type)


def _number(field, value):
    return field.enum.values[value] if field.kind == "enum" else int(value)


def _scalar_bytes(field, value):
    t = field.type_name
    if t == "float":
        return struct.pack("<f", value)
    if t == "double":
        return struct.pack("<d", value)
    if t == "string":
        return value.encode("utf-8")
    if t == "bytes":
        return value
    return encode_varint(_number(field, value))


class _Writer:
    """Serializes in two passes: sizes first (a sub-message's length precedes it), then bytes."""

    def __init__(self):
        self.sizes = {}

    def size(self, msg):
        total = 0
        for field, value in msg.ListFields():
            key = len(_key(field.number, 0))
            if field.array:
                payload = len(value) * ARRAY_DTYPES[field.type_name].itemsize
                if field.packed:
                    total += key + len(encode_varint(payload)) + payload
                else:
                    total += len(value) * (key + ARRAY_DTYPES[field.type_name].itemsize)
            elif field.is_message:
                for item in (value if field.repeated else [value]):
                    n = self.size(item)
                    total += key + len(encode_varint(n)) + n
            elif field.repeated and field.packed:
                payload = sum(len(_scalar_bytes(field, v)) for v in value)
                total += key + len(encode_varint(payload)) + payload
            else:
                for item in (value if field.repeated else [value]):
                    raw = _scalar_bytes(field, item)
                    length = len(encode_varint(len(raw))) if field.type_name in ("string",
                                                                                "bytes") else 0
                    total += key + length + len(raw)
        self.sizes[id(msg)] = total
        return total

    def write(self, msg, out):
        for field, value in msg.ListFields():
            if field.array:
                arr = np.ascontiguousarray(value, dtype=ARRAY_DTYPES[field.type_name])
                if field.packed:
                    out.write(_key(field.number, LENGTH) + encode_varint(arr.nbytes))
                    out.write(memoryview(arr).cast("B"))
                else:
                    wire = FIXED32 if arr.itemsize == 4 else FIXED64
                    key = _key(field.number, wire)
                    records = np.empty((len(arr), len(key) + arr.itemsize), np.uint8)
                    records[:, :len(key)] = np.frombuffer(key, np.uint8)
                    records[:, len(key):] = arr.view(np.uint8).reshape(len(arr), arr.itemsize)
                    out.write(memoryview(records).cast("B"))
            elif field.is_message:
                for item in (value if field.repeated else [value]):
                    out.write(_key(field.number, LENGTH) + encode_varint(self.sizes[id(item)]))
                    self.write(item, out)
            elif field.repeated and field.packed:
                payload = b"".join(_scalar_bytes(field, v) for v in value)
                out.write(_key(field.number, LENGTH) + encode_varint(len(payload)) + payload)
            else:
                t = field.type_name
                wire = LENGTH if t in ("string", "bytes") else (
                    _SCALAR_WIRE[t] if field.kind == "scalar" else VARINT)
                for item in (value if field.repeated else [value]):
                    raw = _scalar_bytes(field, item)
                    prefix = encode_varint(len(raw)) if wire == LENGTH else b""
                    out.write(_key(field.number, wire) + prefix + raw)


def serialize(msg):
    """The message as wire-format bytes."""
    import io
    writer, out = _Writer(), io.BytesIO()
    writer.size(msg)
    writer.write(msg, out)
    return out.getvalue()


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    A crash or an error mid-write leaves the previous file untouched, never a half-written one.
    The temporary file's name holds the writer's process id and host (``NAME.PID-HOST.XXXX.tmp``,
    HOST a hash of the host name), so that one left by a killed process can be told from one
    being written (remove_stale_temporaries).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):                   # said of the path, not of the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "no such folder to write into", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.{_writer_tag()}.",
                                   suffix=".tmp", dir=directory)
    except OSError as e:                      # said of the path asked for, not the temporary
        raise type(e)(e.errno, f"cannot create a file in its folder ({e.strerror})",
                      path) from None
    try:
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_TEMPORARY_NAME = re.compile(r"\.(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp$")


def _host_tag():
    import hashlib
    import socket
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _writer_tag():
    """PID-HOST for a temporary file's name: which process on which machine writes it."""
    return f"{os.getpid()}-{_host_tag()}"


def remove_stale_temporaries(prefix):
    """Remove the temporary files atomic_write left behind when its process was killed
    mid-write (SIGKILL, power loss): those beside ``prefix`` whose names start with its last
    part, written on this machine by a process no longer running. Returns the paths removed.
    A file of a process still running is kept, whatever it is; so is one another machine
    wrote (a folder shared over the network: its pid means nothing here), and any other file.
    (POSIX only: elsewhere there is no harmless way to ask whether a process is running, and
    nothing is removed.)"""
    if os.name != "posix":
        return []
    host = _host_tag()
    folder, start = os.path.dirname(prefix) or ".", os.path.basename(prefix)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        match = _TEMPORARY_NAME.search(name)
        if not (name.startswith(start) and match) or match.group(2) != host \
                or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)    # signal 0: only asks whether it exists
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):   # another user's process, or no such pid
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):    # gone meanwhile, or not ours to remove: a
            os.unlink(path)                     # cleanup that must not stop the snapshot
            removed.append(path)
    return removed


def write_binary(msg, path):
    """Write ``msg`` to ``path`` in wire format, atomically, streaming blob data from its arrays."""
    writer = _Writer()
    writer.size(msg)
    with atomic_write(path, "wb") as f:
        writer.write(msg, f)
