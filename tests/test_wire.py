"""Protobuf wire format: hand-encoded bytes, round trips, legacy shapes, errors, fuzzing, memory."""

import os
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.blob import array_to_blob_proto, blob_proto_to_array
from minicnn.errors import WireFormatError
from minicnn.proto import caffe_pb2, parse_binary, read_binary, serialize, write_binary
from minicnn.proto.wire import atomic_write
from tests.proto_strategies import message_types, messages


def varint(value):
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        if value < 0x80:
            return bytes(out + bytes([value]))
        out.append(value & 0x7F | 0x80)
        value >>= 7


def field(number, wire_type, payload):
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def small_model():
    net = caffe_pb2.NetParameter(name="m")
    for i, shape in enumerate([(4, 3, 3, 3), (4,), (10, 36)]):
        layer = net.layer.add(name=f"l{i}", type="Convolution", bottom=["x"], top=[f"t{i}"])
        layer.blobs.append(array_to_blob_proto(np.arange(np.prod(shape), dtype=np.float32)
                                               .reshape(shape) / 7))
    return net


# --- decoding hand-made bytes ------------------------------------------------------------------

def test_packed_and_unpacked_floats_are_both_read():
    values = np.array([1.5, -2.25, 3.0], np.float32)
    packed = field(5, 2, values.tobytes())
    unpacked = b"".join(field(5, 5, struct.pack("<f", v)) for v in values)
    for data in (packed, unpacked, unpacked[:10] + packed + unpacked[10:]):
        blob = parse_binary(data, "BlobProto")
        expected = values if data in (packed, unpacked) else np.concatenate(
            [values[:2], values, values[2:]])
        np.testing.assert_array_equal(blob.data, expected)


def test_long_unpacked_runs_and_doubles():
    values = np.random.default_rng(0).standard_normal(3000)
    data = b"".join(field(8, 1, struct.pack("<d", v)) for v in values)
    np.testing.assert_array_equal(parse_binary(data, "BlobProto").double_data, values)


def test_negative_int32_is_a_ten_byte_varint():
    data = field(2, 0, varint(-1))
    assert len(data) == 11
    assert parse_binary(data, "FlattenParameter").end_axis == -1
    assert serialize(caffe_pb2.FlattenParameter(end_axis=-1)) == data


def test_oversized_varints_are_cut_as_protobuf_cuts_them():
    """A varint's bits above 64 are dropped, a uint32 keeps its low 32 bits, and any nonzero
    bool is true, as Google's protobuf reads them (tests/protobuf_oracle.py)."""
    from tests.protobuf_oracle import pb_class
    for data in (b"\xff" * 9 + b"\x7f", b"\xfe" * 9 + b"\x03"):    # 10 bytes, 70 bits
        want = list(pb_class("BlobShape").FromString(field(1, 0, data)).dim)
        assert list(parse_binary(field(1, 0, data), "BlobShape").dim) == want
    assert want == [-72624976668147842]
    data = field(1, 0, varint(2 ** 32 + 7)) + field(2, 0, varint(2))
    pb = pb_class("ConvolutionParameter").FromString(data)
    got = parse_binary(data, "ConvolutionParameter")
    assert (got.num_output, got.bias_term) == (pb.num_output, pb.bias_term) == (7, True)
    assert parse_binary(field(2, 0, varint(0)), "ConvolutionParameter").bias_term is False


def test_unknown_fields_of_every_wire_type_are_skipped():
    unknown = (field(50, 0, varint(300)) + field(51, 1, b"\0" * 8) + field(52, 2, b"xyz")
               + field(53, 5, b"\0" * 4)
               + varint(54 << 3 | 3) + field(1, 0, varint(5)) + varint(54 << 3 | 4))
    data = unknown + field(1, 2, b"conv") + unknown
    assert parse_binary(data, "LayerParameter").name == "conv"


def test_legacy_blob_shape():
    proto = parse_binary(field(1, 0, varint(1)) + field(2, 0, varint(1)) + field(3, 0, varint(2))
                         + field(4, 0, varint(3)) + field(5, 2, np.arange(6, dtype="<f4")
                                                          .tobytes()), "BlobProto")
    assert blob_proto_to_array(proto).shape == (1, 1, 2, 3)


def test_repeated_singular_message_merges_and_last_scalar_wins():
    data = (field(106, 2, field(1, 0, varint(8))) + field(106, 2, field(5, 0, varint(2)))
            + field(1, 2, b"a") + field(1, 2, b"b"))
    layer = parse_binary(data, "LayerParameter")
    assert (layer.convolution_param.num_output, layer.convolution_param.group) == (8, 2)
    assert layer.name == "b"


def test_keep_decodes_only_the_named_fields():
    net = small_model()
    net.layer[0].convolution_param.num_output = 4
    got = parse_binary(serialize(net), keep={"LayerParameter": {"name", "blobs"}})
    assert got.layer[0].name == "l0" and not got.layer[0].HasField("convolution_param")
    np.testing.assert_array_equal(got.layer[2].blobs[0].data, net.layer[2].blobs[0].data)


# --- round trips ----------------------------------------------------------------------------------

@given(message_types.flatmap(lambda name: messages(name)))
@settings(max_examples=80)
def test_round_trip_of_random_messages(msg):
    assert parse_binary(serialize(msg), type(msg).DESCRIPTOR.name) == msg


def test_file_round_trip(tmp_path):
    net = small_model()
    path = tmp_path / "m.caffemodel"
    write_binary(net, path)
    assert read_binary(path) == net
    assert path.read_bytes() == serialize(net)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.caffemodel"]


def test_a_folder_that_refuses_new_files_is_said_of_the_path_asked_for(tmp_path):
    # the temporary file beside it is an implementation detail: name the user's path
    with pytest.raises(OSError, match=r"cannot create a file in its folder .*'/proc/m.caffemodel'"):
        with atomic_write("/proc/m.caffemodel") as f:
            f.write(b"x")


def test_empty_file_is_an_empty_message(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    assert read_binary(tmp_path / "e") == caffe_pb2.NetParameter()


# --- errors ---------------------------------------------------------------------------------------

def test_every_truncation_is_an_error_naming_offset_and_message():
    data = serialize(small_model())
    for cut in range(1, len(data)):
        try:
            parse_binary(data[:cut])
        except WireFormatError as e:
            assert 0 <= e.offset <= cut
            assert "byte" in str(e)
        # a cut exactly between two top-level fields is a valid (shorter) message


def test_error_message_names_the_layer_and_blob():
    good = serialize(small_model())
    bad_blob = field(7, 2, field(5, 0, varint(3)))             # float data sent as a varint
    data = good + field(100, 2, field(1, 2, b"l3") + bad_blob)
    with pytest.raises(WireFormatError) as info:
        parse_binary(data, path="m.caffemodel")
    e = info.value
    assert str(e).startswith(f"m.caffemodel: byte {e.offset} while reading NetParameter 'm' > ")
    assert "layer[3] (LayerParameter) 'l3' > blobs[0] (BlobProto)" in str(e)
    assert data[e.offset] == 5 << 3 | 0                         # the offending key byte


@pytest.mark.parametrize("data, message", [
    (field(1, 0, varint(3)), "arrived with wire type varint"),
    (field(5, 0, varint(3)), "arrived with wire type varint"),          # float data as varint
    (field(1, 2, b"\xff\xfe"), "not valid UTF-8"),
    (varint(0), "field number 0 is not allowed"),
    (varint(1 << 32) + varint(1), "field number 536870912 is not allowed"),      # 2**29
    (varint(77 << 3 | 3) + varint(0), "field number 0 is not allowed"),           # in a group
    (b"\xff" * 11, "longer than 10 bytes"),
    (b"\xff" * 10 + b"\x01", "longer than 10 bytes"),          # ends on its 11th byte
    (varint(77 << 3 | 3) + varint(78 << 3 | 4), "group 77 closed by end-group 78"),
    (field(53, 5, b"\0" * 3), "truncated 4-byte value of unknown field 53"),
    (field(53, 1, b"\0" * 7), "truncated 8-byte value of unknown field 53"),
    (field(106, 2, b"") [:-1] + varint(2 ** 31), "claims 2147483648 bytes"),
    (field(121, 2, field(1, 0, varint(9))), "9 is not a value of enum PoolMethod"),
    (varint(77 << 3 | 6), "invalid wire type 6"),
    (varint(77 << 3 | 3) + field(1, 0, varint(1)), "group 77 is not closed"),
    (field(5, 2, b"abc"), "not a multiple of 4"),
])
def test_corrupt_data_errors(data, message):
    with pytest.raises(WireFormatError, match=message):
        parse_binary(data, "LayerParameter")


def test_missing_file(tmp_path):
    with pytest.raises(WireFormatError, match="cannot read file"):
        read_binary(tmp_path / "none.caffemodel")


def test_huge_length_claim_allocates_nothing():
    data = field(7, 2, b"")[:-1] + varint(2 ** 31) + b"\0" * 1000      # blobs claiming 2 GB
    tracemalloc.start()
    with pytest.raises(WireFormatError, match="claims 2147483648 bytes but only 1000 remain"):
        parse_binary(data, "LayerParameter")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


# --- fuzzing --------------------------------------------------------------------------------------

@given(st.binary(max_size=300), st.sampled_from(["NetParameter", "BlobProto", "SolverState"]))
@settings(max_examples=300)
def test_random_bytes_raise_only_wire_errors(data, type_name):
    try:
        parse_binary(data, type_name)
    except WireFormatError:
        pass


MODEL_BYTES = serialize(small_model())


@given(st.lists(st.tuples(st.integers(0, len(MODEL_BYTES) - 1), st.integers(0, 255)),
                min_size=1, max_size=5))
@settings(max_examples=300)
def test_mutations_of_a_real_model_raise_only_wire_errors(edits):
    data = bytearray(MODEL_BYTES)
    for pos, value in edits:
        data[pos] = value
    tracemalloc.start()
    try:
        parse_binary(bytes(data))
    except WireFormatError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 20 * len(MODEL_BYTES) + (1 << 20)


# --- streaming large files ------------------------------------------------------------------------

def test_reading_a_large_model_needs_about_its_own_size(tmp_path):
    net = caffe_pb2.NetParameter(name="big")
    for i in range(4):
        layer = net.layer.add(name=f"fc{i}", type="InnerProduct")
        layer.blobs.append(array_to_blob_proto(np.ones((1000, 2500), np.float32)))
    path = tmp_path / "big.caffemodel"
    write_binary(net, path)
    size = os.path.getsize(path)
    assert size > 39_000_000
    del net, layer
    tracemalloc.start()
    model = read_binary(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.15 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
    assert model.layer[3].blobs[0].data.shape == (2_500_000,)


def test_fork_interp_param_at_bvlc_input_param_number():
    """DeepLab/PSPNet caffemodels store interp_param at 143, BVLC's input_param."""
    interp = field(1, 0, varint(65)) + field(2, 0, varint(33))              # height, width
    data = field(1, 2, b"up") + field(2, 2, b"Interp") + field(143, 2, interp)
    layer = parse_binary(data, "LayerParameter")
    assert (layer.interp_param.height, layer.interp_param.width) == (65, 33)
    assert not layer.HasField("input_param")
    shape = field(1, 2, field(1, 2, varint(1) + varint(3)))                   # input_param.shape
    data = field(1, 2, b"data") + field(2, 2, b"Input") + field(143, 2, shape)
    assert list(parse_binary(data, "LayerParameter").input_param.shape[0].dim) == [1, 3]


def test_unpacked_floats_followed_by_a_short_field():
    """A run of unpacked fixed32 records ends where fewer bytes than one record remain and they
    belong to another field (found by hypothesis: Datum float_data then encoded)."""
    msg = caffe_pb2.Datum()
    msg.channels, msg.encoded = 0, False
    msg.float_data = np.array([0.0], np.float32)
    data = serialize(msg)
    assert parse_binary(data, "Datum") == msg
    with pytest.raises(WireFormatError, match="truncated value of field 'float_data'"):
        parse_binary(b"\x35\x00\x00\x00\x00\x35\x00\x00", "Datum")
