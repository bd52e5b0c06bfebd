"""Caffe's image-set tools as functions: list files, convert_imageset, compute_image_mean.

A list file has one sample per line, ``path label``, split at the **last** space (so a path may
contain spaces); the label is an integer. ``convert_imageset`` writes one Datum per line into an
LMDB under the key ``f"{index:08d}_{path}"``; ``compute_image_mean`` averages a database into the
.binaryproto mean file that ``transform_param { mean_file: ... }`` reads.
"""

import os
import warnings

import numpy as np

from minicnn.data.datum import (
    decode_image,
    decode_record,
    encode_datum,
    read_image,
    serialize_datum,
)
from minicnn.data.db import db_writer, open_db, remove_db, replace_db
from minicnn.data.errors import DataError, read_lines
from minicnn.proto import caffe_pb2, serialize, write_binary


def parse_list_line(line, path="<list>", lineno=0):
    """(image path, integer label) of one list-file line, split at its last space."""
    text = line.rstrip("\r\n").rstrip()
    pos = text.rfind(" ")
    if pos <= 0:
        raise DataError(f"expected 'path label', got {text!r}", path, lineno)
    name, label = text[:pos].rstrip(" "), text[pos + 1:]
    try:
        return name, int(label)
    except ValueError:
        raise DataError(f"the label {label!r} is not an integer (line {text!r})",
                        path, lineno) from None


def read_list_file(path):
    """[(image path, label, line number)] of a list file; blank lines are skipped."""
    lines = read_lines(path)
    out = []
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            out.append((*parse_list_line(line, path, lineno), lineno))
    if not out:
        raise DataError("the list file names no images", path)
    return out


def grouped_by_label(labels, run=2):
    """"N images, K labels, one run each" where ``labels`` come grouped by label (each label in
    one contiguous run, at least two labels, runs of ``run`` or more on average: a list sorted
    by class), else None. Read in that order, most batches of ``run`` hold a single class."""
    labels = list(labels)
    distinct = len(set(labels))
    runs = 1 + sum(a != b for a, b in zip(labels, labels[1:]))
    if distinct < 2 or runs != distinct or len(labels) < distinct * max(run, 2):
        return None
    return f"{len(labels)} images, {distinct} labels, one run each"


def _guess_encoding(name):
    ext = os.path.splitext(name)[1].lower().lstrip(".")
    if not ext:
        raise DataError("cannot guess the image encoding from the file name; give encode_type",
                        name)
    return ext


def convert_imageset(root, list_file, db_path, resize_height=0, resize_width=0, gray=False,
                     shuffle=False, encoded=False, encode_type="", check_size=False, seed=None,
                     overwrite=False, verbose=False, backend="lmdb"):
    """Caffe's convert_imageset: the images of ``list_file`` (paths relative to ``root``) into a
    new LMDB (``backend="leveldb"``: a LevelDB) at ``db_path``; returns the number of records
    written.

    Each Datum holds the image as BGR (or gray, ``gray=True``) uint8 CHW, resized to
    (resize_height, resize_width) as Caffe resizes (OpenCV's bilinear, pixel for pixel) when
    both are > 0, and its label.
    ``encoded`` stores image-file bytes instead, by Caffe 1.0's rule: without ``encode_type``
    the file itself when it is not resized, else the image re-encoded in the file's format;
    with an ``encode_type`` the image is re-encoded in it (cv::imencode), unless it is given
    with its dot (".png") and the file has that extension and is not resized. A file stored
    as it is keeps its own colours whatever ``gray`` says (a Data layer decodes it natively:
    a gray PNG to 1 channel, an RGBA one to 4, unless transform_param.force_color /
    force_gray); the files whose channels differ from the ones asked for are warned about
    once (the first named, the rest counted). An ``encode_type`` alone encodes too, as in
    Caffe. ``shuffle`` permutes the lines first, with ``np.random.default_rng(seed)`` (seed
    None: minicnn's global generator). ``check_size`` makes differently sized images an
    error. An image that cannot be read is skipped with a warning, as Caffe does (its index
    is still used up).
    """
    from minicnn.rng import get_rng
    if (resize_height > 0) != (resize_width > 0):
        raise ValueError("give both resize_height and resize_width, or neither")
    entries = read_list_file(list_file)
    if shuffle:
        rng = get_rng() if seed is None else np.random.default_rng(seed)
        entries = [entries[i] for i in rng.permutation(len(entries))]
    else:
        grouped = grouped_by_label(label for _, label, _ in entries)
        if grouped:
            warnings.warn(f"{list_file} is in label order ({grouped}) and shuffle is off: a "
                          "Data layer reads the records in this order (it cannot shuffle "
                          "them), so most training batches would hold a single class; "
                          "shuffle a training set (--shuffle)", stacklevel=2)
    db_path = os.fspath(db_path)
    if os.path.lexists(db_path) and not overwrite:
        raise DataError("already exists (remove it first, as Caffe's convert_imageset "
                        "wants, or give another name)", db_path)
    is_color = not gray
    encoded = encoded or bool(encode_type)    # Caffe encodes whenever the encoding is known
    tmp = f"{db_path}.tmp-{os.getpid()}"
    remove_db(tmp)
    size = None
    count = skipped = 0
    other_channels = []               # (path, native channels, asked-for channels)
    unrotated = []                    # paths stored as they are whose EXIF turns them
    try:
        with db_writer(tmp, backend) as writer:
            for index, (name, label, lineno) in enumerate(entries):
                image_path = os.path.join(root, name) if root else name
                try:
                    value = _image_record(image_path, label, resize_height, resize_width,
                                          is_color, encoded, encode_type)
                    if value[2]:
                        other_channels.append((image_path, value[2], value[1][0]))
                    if value[3]:
                        unrotated.append(image_path)
                except DataError as e:
                    warnings.warn(f"{list_file}:{lineno}: skipping {image_path}: {e.reason}",
                                  stacklevel=2)
                    skipped += 1
                    continue
                if check_size and not encoded:
                    shape = value[1]
                    if size is None:
                        size = shape
                    elif shape != size:
                        raise DataError(f"image {image_path} is {shape[0]}x{shape[1]}x"
                                        f"{shape[2]}, the first one was {size[0]}x{size[1]}x"
                                        f"{size[2]} (check_size)", list_file, lineno)
                writer.put(f"{index:08d}_{name}", value[0])
                count += 1
        replace_db(tmp, db_path)
    except BaseException:
        remove_db(tmp)
        raise
    if other_channels:
        warnings.warn(_other_channels_message(other_channels), stacklevel=2)
    if unrotated:
        more = f" (and {len(unrotated) - 1} more files)" if len(unrotated) > 1 else ""
        warnings.warn(f"{unrotated[0]}{more} has an EXIF orientation and is stored unchanged: "
                      "its record decodes unrotated, as Caffe decodes an encoded Datum natively "
                      "(IMREAD_UNCHANGED ignores the orientation), where ImageData and "
                      "convert-imageset without --encoded turn it upright; transform_param "
                      "force_color (or force_gray) applies it, as does --encode-type png or jpg "
                      "(every image encoded again)", stacklevel=2)
    if verbose:
        print(f"wrote {count} records to {db_path}" + (f" ({skipped} skipped)" if skipped else ""))
    return count


def native_differences(data, chw):
    """(channels, turned) of an image file stored as it is (``data``), read by imread as
    ``chw``: channels is 0, or the channel count of its native decode (a Data layer's,
    IMREAD_UNCHANGED) where it differs from chw's; turned is True where imread applied an EXIF
    orientation that the native decode does not (the record decodes unrotated), also for a
    file whose channels differ and for a turn that keeps the size (180 degrees, a square)."""
    try:
        native = decode_image(data, None)
        if native.shape[0] == chw.shape[0]:
            turned = not np.array_equal(native, chw)
        else:        # compare like with like: chw's channels, the orientation left unapplied
            turned = not _colour_of(native, chw) and not np.array_equal(
                decode_image(data, chw.shape[0] == 3, orient=False), chw)
    except DataError:                     # a 16-bit file: the Data layer names it
        return 0, False
    return (0 if native.shape[0] == chw.shape[0] else native.shape[0]), turned


def _colour_of(native, chw):
    """Whether colour ``chw`` is the native gray decode repeated or its alpha dropped, as
    imread gives an unturned gray or RGBA file: then no third decode is needed (it made
    convert-imageset --encoded of gray files 1.5 times as slow)."""
    if chw.shape[0] != 3 or native.shape[1:] != chw.shape[1:]:
        return False
    if native.shape[0] == 1:
        return np.array_equal(np.broadcast_to(native, chw.shape), chw)
    return native.shape[0] == 4 and np.array_equal(native[:3], chw)


def _other_channels_message(files, tool="convert_imageset",
                            way_out="--encode-type png or jpg encodes every image again instead"):
    """The warning for the files stored as they are whose native channels differ from the
    ones asked for: the first named, the rest counted by their channels."""
    path, native, asked = files[0]
    message = (f"{path} is stored as it is, as Caffe's {tool} stores it whatever its "
               f"colours: its record decodes to {native} channel(s), not {asked}")
    if len(files) > 1:
        counts = {}
        for _, n, _ in files[1:]:
            counts[n] = counts.get(n, 0) + 1
        message += (f"; so do {len(files) - 1} more files (" + ", ".join(
            f"{k} to {n} channel(s)" for n, k in sorted(counts.items())) + ")")
    return (message + ", unless transform_param sets force_color or force_gray "
            f"({way_out})")


def _match_ext(path, encoding):
    """Caffe 1.0's matchExt (io.cpp): the path from its last dot, *with* the dot, against the
    encoding, both lower-cased (its "jpg" / "jpeg" alias compares "jpg" with ".jpeg": never
    true). So the encoding convert_imageset guesses (the name from its last dot: ".jpg")
    always matches, and an ``encode_type`` without a dot ("jpg", "png") never does."""
    pos = path.rfind(".")
    return (path[pos:] if pos >= 0 else path).lower() == encoding.lower()


def _image_record(path, label, height, width, is_color, encoded, encode_type):
    """(serialized Datum, CHW shape, native channels) of one image file, as Caffe's
    ReadImageToDatum: with an encoding, the file's own bytes when it is not resized and its
    extension matches (_match_ext; Caffe's channel test, (channels == 3) == is_color, always
    holds, as the image was read with is_color's flag), else the image read with is_color,
    resized, encoded again. The third item is 0, or for a file stored as it is whose native
    decode (a Data layer's) has another channel count than ``is_color`` asked for, that count
    (a gray file without gray, a colour one with gray, one with alpha). The fourth is True
    for a file stored as it is whose EXIF orientation imread applies and the native decode
    does not (its record decodes unrotated)."""
    chw = read_image(path, height, width, is_color)
    if encoded:
        encoding = encode_type or _guess_encoding(path)
        resized = height > 0 and width > 0
        if not resized and (not encode_type or _match_ext(path, encode_type)):
            with open(path, "rb") as f:           # ReadFileToDatum
                data = f.read()
            datum = caffe_pb2.Datum(data=data, label=label, encoded=True)
            return (serialize(datum), chw.shape, *native_differences(data, chw))
        return serialize(encode_datum(chw, label, encoding)), chw.shape, 0, False
    return serialize_datum(chw, label), chw.shape, 0, False


def _mismatch(name, shape, first, encoded):
    """compute_image_mean's error for a record of another shape than the first one."""
    if shape[0] != first[0]:
        why = ("an encoded record is decoded natively, as Caffe's compute_image_mean decodes "
               "it (a gray file 1 channel, one with alpha 4): convert-imageset --encode-type "
               "png or jpg (or a resize) encodes every image again in colour (--gray: gray), "
               "as does converting without --encoded; or give the Data layer mean_value "
               "instead of a mean file") if encoded else "every record must have as many channels"
        return (f"record '{name}' decodes to {shape[0]} channel(s), the first one to "
                f"{first[0]}: {why}")
    return (f"record '{name}' is {shape[1]} x {shape[2]}, the first one {first[1]} x "
            f"{first[2]}: every image must have the same size (convert-imageset "
            "--resize-height and --resize-width make it so)")


def compute_image_mean(db_path, out_path=None):
    """Caffe's compute_image_mean: the mean of every record of a database, as a float32 array
    of shape (1, C, H, W); written to ``out_path`` as a .binaryproto when given (legacy
    num/channels/height/width fields, as Caffe writes it). Summed and divided in float32, record
    by record in the database's order, as Caffe does: the same bits."""
    db = open_db(db_path)
    total, shape, count = None, None, 0
    try:
        for key, value in db.items():
            name = key.decode(errors="replace")
            array, _, encoded = decode_record(value, where=f"{db_path} key {name}")
            if total is None:          # Caffe adds into the BlobProto's float data: float32
                shape, total = array.shape, np.zeros(array.shape, np.float32)
            elif array.shape != shape:
                raise DataError(_mismatch(name, array.shape, shape, encoded), db_path)
            total += array
            count += 1
    finally:
        db.close()
    if not count:
        raise DataError("the database is empty", db_path)
    mean = (total / np.float32(count))[None]
    if out_path is not None:
        proto = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
        proto.data = mean.ravel()
        write_binary(proto, out_path)
    return mean
