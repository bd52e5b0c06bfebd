"""Blob: shapes, lazy diffs, reshape semantics, sharing, BlobProto conversion."""

import numpy as np
import pytest

from minicnn.blob import Blob, array_to_blob_proto, blob_proto_to_array, legacy_shape_matches
from minicnn.errors import MinicnnError
from minicnn.proto.caffe_pb2 import BlobProto


def test_shape_count_and_legacy_accessors():
    b = Blob((2, 3, 4, 5))
    assert (b.shape, b.count, b.num_axes) == ((2, 3, 4, 5), 120, 4)
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 4, 5)
    assert Blob((7,)).height == 1
    assert b.data.dtype == np.float32 and np.all(b.data == 0)


def test_reshape_keeps_contents_only_when_the_shape_is_unchanged():
    b = Blob((2, 2))
    b.data[...] = 5
    b.reshape(2, 2)
    assert np.all(b.data == 5)
    b.reshape((4,))
    assert b.shape == (4,) and np.all(b.data == 0)
    with pytest.raises(MinicnnError, match="negative"):
        b.reshape(-1, 2)
    for shape in [(10 ** 11, 10 ** 11, 0), (1,) * 65]:        # no bytes, but no array either
        with pytest.raises(MinicnnError, match="cannot be an array"):
            b.reshape(shape)
    assert b.shape == (4,)


def test_diff_is_allocated_on_first_use_and_assignment_writes_in_place():
    b = Blob((3,))
    assert b._diff is None
    d = b.diff
    b.diff = [1, 2, 3]
    assert d is b.diff and list(d) == [1, 2, 3]
    data = b.data
    b.data = 7
    assert data is b.data and np.all(data == 7)


def test_share_data_views_the_owner_in_another_shape():
    owner, user = Blob((2, 3)), Blob((6,))
    user.share_data(owner)
    owner.data[1, 2] = 9
    assert user.data[5] == 9
    user.diff[0] = 4
    assert owner.diff[0, 0] == 4
    with pytest.raises(MinicnnError, match="cannot share"):
        Blob((5,)).share_data(owner)


def test_canonical_axis():
    b = Blob((2, 3, 4))
    assert b.canonical_axis(-1) == 2 and b.canonical_axis(1) == 1
    with pytest.raises(MinicnnError, match="out of range"):
        b.canonical_axis(3)


def test_blob_proto_round_trip_and_legacy_shapes():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(blob_proto_to_array(array_to_blob_proto(a)), a)
    d = np.arange(4, dtype=np.float64)
    proto = array_to_blob_proto(d, diff=d * 2)
    assert len(proto.double_data) == 4 and len(proto.data) == 0
    np.testing.assert_array_equal(blob_proto_to_array(proto, diff=True), d * 2)
    legacy = BlobProto(num=1, channels=1, height=2, width=3, data=list(range(6)))
    assert blob_proto_to_array(legacy).shape == (1, 1, 2, 3)
    assert legacy_shape_matches((1, 1, 2, 3), (2, 3))
    assert not legacy_shape_matches((2, 1, 3), (2, 3))
    with pytest.raises(MinicnnError, match="holds 5 data values, expected 6"):
        blob_proto_to_array(BlobProto(num=1, channels=1, height=2, width=3, data=[0] * 5))


def test_scalar_blob_proto():
    proto = array_to_blob_proto(np.array(3.5, np.float32))
    assert not proto.HasField("shape")              # as Caffe writes it (OpenCV needs that)
    assert blob_proto_to_array(proto).shape == () and float(blob_proto_to_array(proto)) == 3.5


@pytest.mark.parametrize("dims, values, message", [
    ((-2, -3), 6, "negative dimension"),               # -2 x -3 = 6: NumPy's reshape refused it
    ((2 ** 32, 2 ** 32), 0, "expected 18446744073709551616"),     # an int64 product wraps to 0
    ((2 ** 62, 4, 0), 0, "cannot be an array"),        # 0 values, but past NumPy's index range
    ((1,) * 65, 1, "cannot be an array"),              # more axes than NumPy has
])
def test_blob_proto_with_an_impossible_shape_is_a_minicnn_error(dims, values, message):
    proto = BlobProto(data=[0] * values)
    proto.shape.dim.extend(dims)
    with pytest.raises(MinicnnError, match=message):
        blob_proto_to_array(proto)
