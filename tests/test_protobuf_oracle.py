"""Google's protobuf as the oracle of minicnn's own wire and text formats (minicnn.proto).

protobuf's message classes are built at test time from minicnn's schema (tests/protobuf_oracle.py),
so these tests hold minicnn's reader, writer, printer and defaults against the reference
implementation for the same fields: bytes identical both ways, text read back equal both ways,
defaults equal. Where minicnn differs on purpose, the test below says so and why; Caffe's parser
is protobuf's C++ one, and where Python's text_format differs from it minicnn follows C++.
"""

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("google.protobuf", minversion="6.30",
                    reason="protobuf 6.30 or later is not installed (pip install -e .[test])")

from google.protobuf import text_format as pb_text  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402

from minicnn.errors import PrototxtError, WireFormatError  # noqa: E402
from minicnn.proto import caffe_pb2, parse_binary, parse_text, serialize, to_text  # noqa: E402
from minicnn.proto import text_format as mc_text  # noqa: E402
from minicnn.proto.schema import MESSAGES  # noqa: E402
from minicnn.proto.wire import encode_varint  # noqa: E402
from tests.proto_strategies import message_types, messages  # noqa: E402
from tests.protobuf_oracle import is_repeated, pb_class, pb_messages, pb_tree, tree  # noqa: E402

# protobuf's default backend (upb) keeps the bits of every float it parses; the pure-Python one
# (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python) makes each NaN the same and does not round a float
# field's default to float32, so the bit-for-bit comparisons here hold only for upb.
pytestmark = pytest.mark.skipif(api_implementation.Type() != "upb",
                                reason="needs protobuf's default (upb) backend")

# The messages Caffe's files hold, and some with every kind of field between them.
KEY_TYPES = ["NetParameter", "LayerParameter", "V1LayerParameter", "SolverParameter",
             "SolverState", "BlobProto", "BlobProtoVector", "Datum", "NetState", "NetStateRule",
             "ParamSpec", "FillerParameter", "TransformationParameter"]


# --- defaults -----------------------------------------------------------------------------------

def test_every_default_is_protobufs():
    """protobuf parses the defaults from the schema's text itself: a float default that reads
    differently, a bool spelt True, a string with quotes in it would show here."""
    checked = 0
    for desc in MESSAGES.values():
        pb, mine = pb_class(desc.name)(), desc.cls()
        for f in desc.fields:
            if f.repeated or f.is_message:
                continue
            ours, theirs = getattr(mine, f.name), getattr(pb, f.name)
            assert not pb.HasField(f.name) and not mine.HasField(f.name)
            if f.kind == "enum":                      # the name, equal to the number too
                assert ours == theirs and int(ours) == theirs, (desc.name, f.name)
                ours, theirs = str(ours), pb.DESCRIPTOR.fields_by_name[f.name].enum_type \
                    .values_by_number[theirs].name
            if f.type_name in ("float", "double"):        # the same float32 (or float64) bits
                ours, theirs = struct.pack("<d", ours), struct.pack("<d", theirs)
            assert (ours, type(ours)) == (theirs, type(theirs)), (desc.name, f.name)
            checked += 1
    assert checked > 500


# --- wire format --------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", KEY_TYPES)
@given(data=st.data())
def test_protobuf_reads_minicnn_bytes_and_writes_the_same_bytes(type_name, data):
    msg = data.draw(messages(type_name))
    raw = serialize(msg)
    pb = pb_class(type_name).FromString(raw)
    assert pb_tree(pb) == tree(msg)               # bit for bit: -0.0, NaN payloads, enums
    assert pb.SerializeToString() == raw           # both write fields in number order
    assert msg.ByteSize() == pb.ByteSize()


@given(data=st.data())
def test_any_message_type_through_protobuf(data):
    type_name = data.draw(message_types)
    msg = data.draw(messages(type_name))
    raw = serialize(msg)
    assert pb_class(type_name).FromString(raw).SerializeToString() == raw


@pytest.mark.parametrize("type_name", KEY_TYPES)
@given(data=st.data())
def test_minicnn_reads_protobuf_bytes_and_writes_the_same_bytes(type_name, data):
    pb = data.draw(pb_messages(type_name))
    raw = pb.SerializeToString()
    msg = parse_binary(raw, type_name)
    assert tree(msg) == pb_tree(pb)
    assert serialize(msg) == raw


def _every_value(fd):
    """Values for one protobuf field that reach the corners of its encoding."""
    if fd.type == fd.TYPE_ENUM:
        return [v.number for v in fd.enum_type.values][-2:]
    return {fd.TYPE_INT32: [-1, 2**31 - 1], fd.TYPE_INT64: [-2**63, 2**63 - 1],
            fd.TYPE_UINT32: [2**32 - 1, 0], fd.TYPE_UINT64: [2**64 - 1, 1],
            fd.TYPE_BOOL: [True, False], fd.TYPE_FLOAT: [-0.0, 1e-45],
            fd.TYPE_DOUBLE: [5e-324, -math.inf], fd.TYPE_STRING: ["é\n\"'\\", ""],
            fd.TYPE_BYTES: [b"\x00\xff\x7f", b""]}[fd.type]


def _fill_every_field(pb, depth):
    for fd in pb.DESCRIPTOR.fields:
        if fd.type == fd.TYPE_MESSAGE:
            if depth > 0:
                child = getattr(pb, fd.name).add() if is_repeated(fd) else getattr(pb, fd.name)
                child.SetInParent()
                _fill_every_field(child, depth - 1)
        elif is_repeated(fd):
            getattr(pb, fd.name).extend(_every_value(fd))
        else:
            setattr(pb, fd.name, _every_value(fd)[0])


@pytest.mark.parametrize("type_name", sorted(MESSAGES))
def test_every_field_of_every_message(type_name):
    """Each field of each message set once (sub-messages one level down), through both formats."""
    pb = pb_class(type_name)()
    _fill_every_field(pb, depth=1)
    raw = pb.SerializeToString()
    msg = parse_binary(raw, type_name)
    assert tree(msg) == pb_tree(pb)
    assert serialize(msg) == raw
    assert pb_tree(pb_text.Parse(to_text(msg), pb_class(type_name)())) == pb_tree(pb)
    assert tree(parse_text(pb_text.MessageToString(pb), type_name)) == pb_tree(pb)


def test_negative_int32_is_a_ten_byte_varint_in_both():
    raw = serialize(caffe_pb2.FillerParameter(sparse=-1))
    assert raw == pb_class("FillerParameter")(sparse=-1).SerializeToString()
    assert raw == b"\x38" + b"\xff" * 9 + b"\x01"
    # and a five-byte one (what a writer that sign-extends only to 32 bits would emit) reads the
    # same in both
    short = b"\x38\xff\xff\xff\xff\x0f"
    assert parse_binary(short, "FillerParameter").sparse == -1
    assert pb_class("FillerParameter").FromString(short).sparse == -1


@pytest.mark.parametrize("bits", [0x80000000, 0x7FC00001, 0xFFC12345, 0x7F800000, 0x00000001])
def test_float_bits_survive_both_ways(bits):
    """-0.0, quiet NaNs with payloads, inf and the smallest subnormal keep every bit."""
    raw = b"\x15" + struct.pack("<I", bits)                     # FillerParameter.value
    assert serialize(parse_binary(raw, "FillerParameter")) == raw
    assert pb_class("FillerParameter").FromString(raw).SerializeToString() == raw


def test_a_signalling_nan_in_a_float_field_comes_back_quiet():
    """An intended difference: minicnn holds a float field as a Python float (protobuf's Python
    API gives the same value), and float32 -> float64 quiets a signalling NaN, so it is written
    back with the quiet bit set; upb keeps the float32 bits. Still a NaN; blob data (arrays)
    keeps every bit."""
    raw = b"\x15" + struct.pack("<I", 0x7F800001)
    assert pb_class("FillerParameter").FromString(raw).SerializeToString() == raw
    assert serialize(parse_binary(raw, "FillerParameter")) == b"\x15" + struct.pack(
        "<I", 0x7FC00001)
    blob = b"\x2a\x04" + struct.pack("<I", 0x7F800001)          # BlobProto.data, packed
    assert serialize(parse_binary(blob, "BlobProto")) == blob


@pytest.mark.parametrize("type_name", ["BlobProto", "BlobShape", "Datum", "NetParameter",
                                       "SolverState", "LayerParameter"])
@given(data=st.data())
def test_packed_and_unpacked_are_both_read(type_name, data):
    """proto2 readers take a repeated number packed or not, whichever the schema says: protobuf
    built with every `packed` option flipped writes the other encoding, and minicnn reads it;
    protobuf reads minicnn's bytes through the flipped schema too."""
    pb = data.draw(pb_messages(type_name, packed="flipped"))
    flipped = pb.SerializeToString()
    msg = parse_binary(flipped, type_name)
    assert tree(msg) == pb_tree(pb)
    assert pb_tree(pb_class(type_name).FromString(flipped)) == pb_tree(pb)
    assert pb_tree(pb_class(type_name, "flipped").FromString(serialize(msg))) == pb_tree(pb)
    assert serialize(msg) == pb_class(type_name).FromString(flipped).SerializeToString()


def _unknown_record(number, wire_type, payload):
    key = encode_varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + encode_varint(len(payload)) + payload
    if wire_type == 3:                                  # a group: its records, then end-group
        return key + payload + encode_varint(number << 3 | 4)
    return key + payload


@st.composite
def unknown_records(draw, known):
    number = draw(st.integers(1, 2**29 - 1).filter(lambda n: n not in known))
    wire_type = draw(st.sampled_from([0, 1, 2, 3, 5]))
    payload = {0: lambda: encode_varint(draw(st.integers(0, 2**64 - 1))),
               1: lambda: draw(st.binary(min_size=8, max_size=8)),
               2: lambda: draw(st.binary(max_size=6)),
               3: lambda: _unknown_record(draw(st.integers(1, 99)), 0, b"\x05"),
               5: lambda: draw(st.binary(min_size=4, max_size=4))}[wire_type]()
    return _unknown_record(number, wire_type, payload)


@pytest.mark.parametrize("type_name", ["NetParameter", "LayerParameter", "BlobProto", "Datum"])
@given(data=st.data())
def test_unknown_fields_are_skipped(type_name, data):
    """Fields a fork added (numbers the schema lacks), of every wire type, groups too: protobuf
    keeps them as unknown fields, minicnn skips them (an intended difference: minicnn does not
    carry unknown fields into what it writes; Caffe's tools rebuild the message anyway)."""
    pb = data.draw(pb_messages(type_name, max_fields=3))
    known = {f.number for f in MESSAGES[type_name].fields}
    before = b"".join(data.draw(st.lists(unknown_records(known), max_size=2)))
    after = b"".join(data.draw(st.lists(unknown_records(known), min_size=1, max_size=2)))
    raw = before + pb.SerializeToString() + after
    theirs = pb_class(type_name).FromString(raw)
    msg = parse_binary(raw, type_name)
    assert tree(msg) == pb_tree(theirs) == pb_tree(pb)
    theirs.DiscardUnknownFields()
    assert serialize(msg) == theirs.SerializeToString()


def test_an_enum_value_the_schema_lacks_is_an_error():
    """An intended difference: proto2 protobuf keeps an unknown enum number as an unknown field
    (the field reads as its default); minicnn refuses the file naming the field, since a fork's
    pooling method read as MAX would be a silent wrong answer."""
    raw = b"\x08\x07"                                           # PoolingParameter.pool = 7
    pb = pb_class("PoolingParameter").FromString(raw)
    assert not pb.HasField("pool") and pb.SerializeToString() == raw
    with pytest.raises(WireFormatError, match="7 is not a value of enum PoolMethod.*'pool'"):
        parse_binary(raw, "PoolingParameter")


@pytest.mark.parametrize("type_name, raw, message", [
    ("LayerParameter", b"\x0a\x02\xff\xfe", "string field 'name' is not valid UTF-8"),
    ("LayerParameter", b"\x08\x05", "field 'name' \\(string\\) arrived with wire type varint"),
    ("FillerParameter", b"\x10\x01", "field 'value' \\(float\\) arrived with wire type varint"),
])
def test_what_protobuf_keeps_and_minicnn_refuses(type_name, raw, message):
    """Intended differences: proto2 protobuf takes a string that is not UTF-8 (its Python API
    then hands out bytes) and keeps a known field that arrives with another wire type as an
    unknown field; minicnn refuses both, naming the field and the byte, since the first is not
    text and the second a fork that gave the number to a field of another type."""
    pb = pb_class(type_name).FromString(raw)
    assert pb.SerializeToString() == raw
    with pytest.raises(WireFormatError, match=message):
        parse_binary(raw, type_name)


def test_corrupt_data_is_corrupt_for_both():
    for raw in [b"\x38" + b"\x80" * 10 + b"\x00",           # an 11-byte varint
                b"\x2a\x03\x00\x00\x00",                   # packed floats, 3 bytes
                b"\x0c",                                      # an end-group with no group
                b"\x00\x01",                                  # field number 0
                encode_varint(1 << 32) + b"\x01",              # field number 2**29
                b"\x2a\x08\x00\x00\x80\x3f"]:                  # packed floats cut short
        with pytest.raises(Exception, match="corrupt|Error parsing"):
            pb_class("BlobProto").FromString(raw)
        with pytest.raises(WireFormatError):
            parse_binary(raw, "BlobProto")


# --- text format --------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", KEY_TYPES)
@given(data=st.data())
def test_protobuf_parses_minicnns_text(type_name, data):
    msg = data.draw(messages(type_name))
    pb = pb_class(type_name).FromString(serialize(msg))
    text = to_text(msg)
    assert pb_tree(pb_text.Parse(text, pb_class(type_name)()), exact=False) == \
        pb_tree(pb, exact=False)
    one_line = mc_text.MessageToString(msg, as_one_line=True)
    assert pb_tree(pb_text.Parse(one_line, pb_class(type_name)()), exact=False) == \
        pb_tree(pb, exact=False)


@pytest.mark.parametrize("type_name", KEY_TYPES)
@given(data=st.data(), as_utf8=st.booleans(), as_one_line=st.booleans())
def test_minicnn_parses_protobufs_text(type_name, data, as_utf8, as_one_line):
    pb = data.draw(pb_messages(type_name))
    text = pb_text.MessageToString(pb, as_utf8=as_utf8, as_one_line=as_one_line)
    assert tree(parse_text(text, type_name), exact=False) == pb_tree(pb, exact=False)
    assert tree(mc_text.Parse(text, caffe_pb2.__dict__[type_name]()), exact=False) == \
        pb_tree(pb, exact=False)


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


@given(data=st.data())
def test_minicnn_prints_what_protobuf_prints(data):
    """Line for line protobuf's MessageToString(as_utf8=True) but for the spelling of floats
    (1 for 1.0, 1e+15 for 1000000000000000.0: the same float32) and of a single quote inside a
    string, which protobuf escapes and minicnn need not (both read either)."""
    type_name = data.draw(message_types)
    msg = data.draw(messages(type_name))
    pb = pb_class(type_name).FromString(serialize(msg))
    mine = to_text(msg).splitlines()
    theirs = pb_text.MessageToString(pb, as_utf8=True).splitlines()
    assert len(mine) == len(theirs)
    shorter_float32 = False
    for a, b in zip(mine, theirs):
        if a == b or a == b.replace("\\'", "'"):
            continue
        name_a, value_a = a.split(": ", 1)
        name_b, value_b = b.split(": ", 1)
        assert name_a == name_b and _is_number(value_a) and _is_number(value_b), (a, b)
        if float(value_a) == float(value_b) or math.isnan(float(value_a)):
            continue
        # a float field's value spelled as the shortest text giving the same float32 (1e-45
        # for 1.4013e-45, the smallest subnormal): protobuf must read it back bit for bit
        assert np.float32(value_a) == np.float32(value_b), (a, b)
        shorter_float32 = True
    if shorter_float32 and not any(line.endswith("nan") for line in mine):
        back = pb_text.Parse("\n".join(mine), pb_class(type_name)())
        assert back.SerializeToString(deterministic=True) == \
            pb.SerializeToString(deterministic=True)


@pytest.mark.parametrize("value", [1.401298464324817e-45, 3.4028234663852886e38,
                                   1.1754942106924411e-38, -2.802596928649634e-45])
def test_float32_extremes_print_short_and_read_back_exactly(value):
    """The smallest subnormal prints as 1e-45 (protobuf: 1.4013e-45), the same float32."""
    text = to_text(caffe_pb2.FillerParameter(value=value))
    theirs = pb_text.Parse(text, pb_class("FillerParameter")())
    assert np.float32(theirs.value) == np.float32(value)
    assert caffe_pb2.FillerParameter(value=value).value == parse_text(text,
                                                                      "FillerParameter").value


@given(st.floats(width=32))
def test_float32_values_cross_exactly_both_ways(value):
    mine = caffe_pb2.FillerParameter(value=value)
    theirs = pb_class("FillerParameter")(value=value)
    exact = not math.isnan(value)                         # text has one NaN
    assert pb_tree(pb_text.Parse(to_text(mine), pb_class("FillerParameter")()), exact) == \
        tree(mine, exact)
    assert tree(parse_text(pb_text.MessageToString(theirs), "FillerParameter"), exact) == \
        tree(mine, exact)


@given(st.lists(st.floats(), min_size=1, max_size=4))
def test_double_values_cross_exactly_both_ways(values):
    mine = caffe_pb2.BlobProto(double_data=np.array(values))
    theirs = pb_class("BlobProto")(double_data=values)
    assert pb_tree(pb_text.Parse(to_text(mine), pb_class("BlobProto")()), False) == \
        tree(mine, False)
    assert tree(parse_text(pb_text.MessageToString(theirs), "BlobProto"), False) == \
        tree(mine, False)


@pytest.mark.parametrize("spelling", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity",
                                      "-infinity", "INF", "1e39", "-1e39", "1e-46", "3.4028235e38",
                                      "1.5f", "2F", ".5", "5.", "1E+2", "0", "-0"])
def test_float_spellings_read_as_protobuf_reads_them(spelling):
    text = f"value: {spelling}"
    assert tree(parse_text(text, "FillerParameter"), exact=False) == \
        pb_tree(pb_text.Parse(text, pb_class("FillerParameter")()), exact=False)


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
       st.binary(max_size=20), st.booleans())
def test_strings_and_bytes_cross_both_ways(name, data, as_utf8):
    for msg, type_name in ((caffe_pb2.Datum(data=data), "Datum"),
                           (caffe_pb2.LayerParameter(name=name), "LayerParameter")):
        pb = pb_class(type_name).FromString(serialize(msg))
        assert pb_tree(pb_text.Parse(to_text(msg), pb_class(type_name)())) == tree(msg)
        text = pb_text.MessageToString(pb, as_utf8=as_utf8)
        assert tree(parse_text(text, type_name)) == tree(msg)


@given(st.lists(st.integers(0, 0x10FFFF).filter(lambda c: not 0xD800 <= c < 0xE000),
                max_size=6))
def test_unicode_escapes_read_as_protobuf_reads_them(code_points):
    text = "name: \"" + "".join(f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08X}"
                                for c in code_points) + "\""
    assert tree(parse_text(text, "LayerParameter")) == \
        pb_tree(pb_text.Parse(text, pb_class("LayerParameter")()))


def test_parse_refuses_a_field_given_twice_and_merge_takes_the_last_as_protobuf():
    text = 'name: "a" name: "b" input: "x" input: "y"'
    with pytest.raises(pb_text.ParseError):
        pb_text.Parse(text, pb_class("NetParameter")())
    with pytest.raises(mc_text.ParseError):
        mc_text.Parse(text, caffe_pb2.NetParameter())
    assert tree(mc_text.Merge(text, caffe_pb2.NetParameter())) == \
        pb_tree(pb_text.Merge(text, pb_class("NetParameter")()))


# Where Python's text_format (the oracle here) and protobuf's C++ parser (Caffe's) disagree,
# minicnn reads as C++ does. Each: (type, text, what minicnn reads or None for an error, why).
CPP_NOT_PYTHON = [
    ("FillerParameter", "value: inff", None, "C++ takes inf/infinity/nan, no f suffix on them"),
    ("FillerParameter", "value: nanf", None, "as inff"),
    ("FillerParameter", "value: +1", None, "C++ has no unary plus (Python's float() has)"),
    ("FillerParameter", "sparse: +1", None, "as above"),
    ("FillerParameter", "value: 1_0", None, "C++'s tokenizer: a number then an identifier "
                                            "(Python's float() reads 1_0 as 10)"),
    ("FillerParameter", "value: - 1", -1.0, "C++'s minus is a token of its own; space may follow"),
    ("FillerParameter", "value: -  inf", -math.inf, "as above"),
    ("FillerParameter", "sparse: - 1", -1, "as above"),
    ("PoolingParameter", "pool: 01", caffe_pb2.PoolingParameter.AVE,
     "C++ reads an enum number as an integer, octal too"),
    ("LayerParameter", r'name: "\?"', "?", r"C++ (and C): \? is ?; Python keeps the backslash"),
    ("LayerParameter", r'name: "\q"', None, "C++: invalid escape sequence (Python keeps it)"),
    ("LayerParameter", r'name: "\8"', None, "as above"),
    ("LayerParameter", r'name: "\ud83d\ude00"', "\U0001F600", "C++ joins a UTF-16 pair; "
                                                             "Python refuses surrogates"),
    ("Datum", r'data: "\udc00"', b"\xed\xb0\x80", "C++ writes a lone surrogate's three bytes"),
    ("LayerParameter", r'name: "\udc00"', None, "the same bytes are not UTF-8 for a string"),
]


@pytest.mark.parametrize("type_name, text, expected, why", CPP_NOT_PYTHON)
def test_where_python_text_format_differs_from_cpp_minicnn_reads_as_cpp(type_name, text,
                                                                        expected, why):
    if expected is None:
        with pytest.raises(PrototxtError):
            parse_text(text, type_name)
        return
    field = text.split(":")[0]
    value = getattr(parse_text(text, type_name), field)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["value: 010", "value: 00", "value: 0x10", "value: -0x1"])
def test_octal_and_hex_floats_are_refused_as_protobuf_refuses_them(text):
    """protobuf's tokenizer makes 010 and 0x10 integers, and both its parsers refuse them for a
    float field (protobuf 2 took 010 as 8: a value no one who wrote it meant)."""
    with pytest.raises(pb_text.ParseError):
        pb_text.Parse(text, pb_class("FillerParameter")())
    with pytest.raises(PrototxtError, match="a float takes a decimal number"):
        parse_text(text, "FillerParameter")
