"""pycaffe's remaining API: caffe.io's proto conversions. Each is checked against the same steps
done by hand."""

import numpy as np
import pytest

from minicnn import io
from minicnn.errors import MinicnnError
from minicnn.proto import caffe_pb2, parse_binary, serialize

RNG = np.random.default_rng(7)


# --- caffe.io: BlobProto, BlobProtoVector, Datum ---------------------------------------------

def test_array_blobproto_bytes_round_trip_is_exact():
    arrays = [RNG.standard_normal((2, 3, 4, 5)).astype(np.float32),
              RNG.standard_normal((7,)), np.arange(6, dtype=np.uint8).reshape(2, 3)]
    for arr in arrays:
        proto = io.array_to_blobproto(arr, diff=2 * arr)
        assert tuple(proto.shape.dim) == arr.shape and not proto.HasField("num")
        assert len(proto.data) == arr.size and not len(proto.double_data)   # float32 data
        back = parse_binary(serialize(proto), "BlobProto")
        got = io.blobproto_to_array(back)
        assert got.dtype == np.float64 and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr.astype(np.float32))
        np.testing.assert_array_equal(io.blobproto_to_array(back, return_diff=True),
                                      (2 * arr).astype(np.float32))
    with pytest.raises(ValueError, match=r"diff of shape \(3,\) for an array of shape \(2,\)"):
        io.array_to_blobproto(np.zeros(2), diff=np.zeros(3))


def test_blobproto_to_array_reads_legacy_four_field_blobs():
    values = np.arange(24, dtype=np.float32)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4, data=values)
    legacy = parse_binary(serialize(legacy), "BlobProto")
    np.testing.assert_array_equal(io.blobproto_to_array(legacy), values.reshape(1, 2, 3, 4))
    one_field = caffe_pb2.BlobProto(channels=24, data=values)    # the others read as 0 ...
    with pytest.raises(MinicnnError, match="expected 0"):        # ... as Caffe's num() does
        io.blobproto_to_array(one_field)
    no_diff = caffe_pb2.BlobProto(shape={"dim": [24]}, data=values)
    with pytest.raises(MinicnnError, match="0 diff values, expected 24"):
        io.blobproto_to_array(no_diff, return_diff=True)


def test_blobprotovector_string_round_trip():
    arrays = [RNG.standard_normal((3, 2)).astype(np.float32), np.ones((1, 3, 2, 2), np.float32)]
    text = io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(text, bytes)
    vec = parse_binary(text, "BlobProtoVector")
    assert [tuple(b.shape.dim) for b in vec.blobs] == [(3, 2), (1, 3, 2, 2)]
    back = io.blobprotovector_str_to_arraylist(text)
    assert len(back) == 2
    for got, want in zip(back, arrays):
        np.testing.assert_array_equal(got, want)


def test_datum_round_trips_uint8_as_bytes_and_floats_as_float_data():
    pixels = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == pixels.tobytes() and not len(datum.float_data)
    back = io.datum_to_array(parse_binary(serialize(datum), "Datum"))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)

    values = RNG.standard_normal((2, 3, 1)).astype(np.float32)
    datum = io.array_to_datum(values)
    assert not datum.HasField("label") and not datum.data and len(datum.float_data) == 6
    back = io.datum_to_array(parse_binary(serialize(datum), "Datum"))
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, values)
    for bad in (np.zeros((4, 5), np.uint8), np.zeros((1, 2, 3, 4))):
        with pytest.raises(ValueError, match=rf"C x H x W .*{bad.shape}"):
            io.array_to_datum(bad)
