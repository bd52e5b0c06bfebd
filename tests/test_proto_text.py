"""Prototxt (protobuf text format): parsing, defaults, writing, errors, legacy forms, fuzzing."""

import glob
import math
import os

import minicnn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.errors import MinicnnError, NetError, PrototxtError
from minicnn.proto import caffe_pb2, parse_text, read_prototxt, to_text, upgrade_net
from minicnn.proto.text import write_prototxt
from tests.proto_strategies import message_types, messages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILES = sorted(glob.glob(os.path.join(REPO, "models", "**", "*.prototxt"), recursive=True))


def parse_layer(text):
    return parse_text(text, "LayerParameter")


# --- the grammar ---------------------------------------------------------------------------------

def test_nested_messages_repeated_fields_enums_and_comments():
    net = parse_text("""
        name: "tiny"   # a comment
        layer {
          name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
          pooling_param: { pool: AVE kernel_size: 3 stride: 2 }   # ':' before '{' is allowed
          include < phase: TEST >
        }
        layer { name: "x"; type: "ReLU", bottom: "pool1" top: "pool1" }
    """)
    assert net.name == "tiny" and len(net.layer) == 2
    pool = net.layer[0]
    assert (pool.pooling_param.pool, pool.pooling_param.kernel_size) == ("AVE", 3)
    assert pool.include[0].phase == "TEST"
    assert list(net.layer[1].top) == ["pool1"]


def test_numbers_in_every_form():
    p = parse_layer("""
        loss_weight: 1.5 loss_weight: -2e-3 loss_weight: .5 loss_weight: 3. loss_weight: 1e+2
        loss_weight: inf loss_weight: -inf loss_weight: nan loss_weight: 2.5f loss_weight: 7
        loss_weight: 0 loss_weight: 0.25 loss_weight: -0 loss_weight: 1F loss_weight: 0e1
        convolution_param { num_output: 0x10 group: 010 axis: -1 }
    """)
    w = list(p.loss_weight)
    assert w[:5] == [np.float32(1.5), np.float32(-2e-3), 0.5, 3.0, 100.0]
    assert w[5] == math.inf and w[6] == -math.inf and math.isnan(w[7])
    assert w[8:] == [2.5, 7.0, 0.0, 0.25, 0.0, 1.0, 0.0]
    assert math.copysign(1, w[10]) == 1 and math.copysign(1, w[12]) == -1
    c = p.convolution_param
    assert (c.num_output, c.group, c.axis) == (16, 8, -1)


def test_float_fields_hold_float32_values_like_caffe():
    p = parse_layer("relu_param { negative_slope: 0.1 }")
    assert p.relu_param.negative_slope == float(np.float32(0.1)) != 0.1


def test_strings_escapes_and_concatenation():
    p = parse_layer(r"""name: "a\"b\\c\n\t\x41\101" 'single' " more" """)
    assert p.name == 'a"b\\c\n\tAAsingle more'
    p = parse_layer('name: "ünïcode"')
    assert p.name == "ünïcode"


def test_every_c_escape_and_its_limits_as_protobuf_reads_them():
    """Each simple escape is its own byte (protobuf's text_format agrees), \\x takes at most
    two hex digits, an octal escape at most three and up to \\377."""
    p = parse_layer(r'name: "\a\b\f\n\r\t\v\?\'" type: "\x414\1014"')
    assert p.name == "\a\b\f\n\r\t\v?'" and p.type == "A4A4"
    assert parse_text(r'data: "\377"', "Datum").data == b"\xff"
    with pytest.raises(PrototxtError, match=r"octal escape \\400 is larger than a byte"):
        parse_layer(r'name: "\400"')
    # two low surrogates are two lone ones (only a high one pairs with a low one): not text
    with pytest.raises(PrototxtError, match="UTF-8"):
        parse_layer(r'name: "\uDC00\uDC01"')


def test_the_writer_escapes_delete_and_drops_a_floats_trailing_zero():
    """As Caffe's C++ protobuf writes: DEL (0x7f) as \\177 in strings and bytes, 1.0 as 1."""
    text = to_text(caffe_pb2.LayerParameter(name="a\x7fb"))
    assert text == 'name: "a\\177b"\n'
    assert to_text(caffe_pb2.Datum(data=b"\x7f~")) == 'data: "\\177~"\n'
    assert to_text(caffe_pb2.ReLUParameter(negative_slope=1.0)) == "negative_slope: 1\n"
    assert parse_text(text, "LayerParameter").name == "a\x7fb"


def test_list_syntax_and_bool_spellings():
    p = parse_layer("top: ['a', 'b'] propagate_down: [true, False, 1, t]")
    assert list(p.top) == ["a", "b"]
    assert list(p.propagate_down) == [True, False, True, True]
    for bad in ("-1", "-0", "2"):                 # protobuf: Expected "true" or "false"
        with pytest.raises(PrototxtError, match="expected true or false"):
            parse_layer(f"propagate_down: {bad}")
    net = parse_text("layer: [ { name: 'a' }, < name: 'b' > ] layer [] input: []")
    assert [layer.name for layer in net.layer] == ["a", "b"] and not net.HasField("input")


def test_enum_by_number():
    assert parse_layer("pooling_param { pool: 1 }").pooling_param.pool == "AVE"


# --- defaults -------------------------------------------------------------------------------------

def test_caffe_defaults_for_unset_fields():
    layer = caffe_pb2.LayerParameter()
    assert layer.convolution_param.bias_term is True
    assert layer.convolution_param.group == 1
    assert layer.pooling_param.pool == "MAX" and layer.pooling_param.stride == 1
    assert layer.pooling_param.round_mode == "CEIL"
    assert layer.lrn_param.local_size == 5 and layer.lrn_param.beta == 0.75
    assert layer.loss_param.normalization == "VALID"
    assert layer.batch_norm_param.moving_average_fraction == pytest.approx(0.999)
    assert layer.dropout_param.dropout_ratio == 0.5
    assert layer.flatten_param.end_axis == -1
    assert layer.convolution_param.weight_filler.type == "constant"
    assert caffe_pb2.ParamSpec().lr_mult == 1 and caffe_pb2.ParamSpec().decay_mult == 1
    assert caffe_pb2.NetState().phase == "TEST"
    solver = caffe_pb2.SolverParameter()
    assert (solver.type, solver.solver_mode, solver.random_seed) == ("SGD", "GPU", -1)
    assert solver.delta == pytest.approx(1e-8) and solver.clip_gradients == -1
    assert not layer.HasField("convolution_param"), "reading a default must not set it"


def test_presence_follows_proto2_rules():
    layer = caffe_pb2.LayerParameter()
    assert not layer.batch_norm_param.HasField("use_global_stats")
    layer.convolution_param.kernel_size.append(3)
    assert layer.HasField("convolution_param")
    assert parse_layer("dropout_param { }").HasField("dropout_param")
    assert caffe_pb2.PoolingParameter.AVE == "AVE"


# --- writing and round trips ----------------------------------------------------------------------

def test_writer_output_reads_like_caffe_prototxt():
    p = parse_layer('name: "c" type: "Convolution" convolution_param { num_output: 8 '
                    'weight_filler { type: "xavier" } } param { lr_mult: 0.1 }')
    assert to_text(p) == (
        'name: "c"\ntype: "Convolution"\nparam {\n  lr_mult: 0.1\n}\nconvolution_param {\n'
        '  num_output: 8\n  weight_filler {\n    type: "xavier"\n  }\n}\n')


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_round_trip_of_shipped_models(path):
    kind = "SolverParameter" if "solver" in os.path.basename(path) else "NetParameter"
    message = read_prototxt(path, kind)
    assert parse_text(to_text(message), kind) == message


@given(message_types.flatmap(lambda name: messages(name)))
@settings(max_examples=60)
def test_round_trip_of_random_messages(msg):
    again = parse_text(to_text(msg), type(msg).DESCRIPTOR.name)
    assert again == msg, to_text(msg)


def test_write_prototxt_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "net.prototxt"
    net = parse_text('name: "a" layer { name: "x" type: "Input" top: "x" }')
    write_prototxt(net, path)
    assert read_prototxt(path) == net
    assert os.listdir(tmp_path) == ["net.prototxt"]


# --- errors ---------------------------------------------------------------------------------------

def error_of(text, type_name="NetParameter", path="net.prototxt"):
    with pytest.raises(PrototxtError) as info:
        parse_text(text, type_name, path=path)
    return info.value


def test_unknown_field_names_file_line_column_and_suggests():
    e = error_of('layer {\n  name: "conv1"\n  convolution_param {\n    kernel_sise: 3\n  }\n}')
    assert (e.path, e.line, e.column) == ("net.prototxt", 4, 5)
    assert "ConvolutionParameter has no field named 'kernel_sise'" in str(e)
    assert "did you mean 'kernel_size'?" in str(e)
    assert "in layer 'conv1'" in str(e)
    assert str(e).startswith("net.prototxt:4:5: ")


def test_field_at_the_wrong_level_says_where_it_belongs():
    e = error_of('layer { name: "ip" type: "InnerProduct" num_output: 10 }')
    assert "belongs inside" in str(e) and "inner_product_param" in str(e)


@pytest.mark.parametrize("text, message", [
    ('name "x"', "expected ':' after field 'name'"),
    ("layer { pooling_param { pool: MAXX } }", "did you mean 'MAX'?"),
    ("layer { pooling_param { pool: 7 } }", "7 is not a value of field 'pool'"),
    ("layer { convolution_param { num_output: -1 } }", "out of range"),
    ("layer { convolution_param { group: 4294967296 } }", "out of range"),
    ("layer { convolution_param { num_output: 1.5 } }", "expected an integer"),
    ("layer { convolution_param { bias_term: yes } }", "expected true or false"),
    ("layer { relu_param { negative_slope: abc } }", "expected a number"),
    ("layer { relu_param { negative_slope: 08 } }", "a float takes a decimal number"),
    ("layer { relu_param { negative_slope: 010.5 } }", "a float takes a decimal number"),
    ("layer { relu_param { negative_slope: 010 } }", "a float takes a decimal number"),
    ("layer { relu_param { negative_slope: -00 } }", "a float takes a decimal number"),
    ("layer { relu_param { negative_slope: 0x10 } }", "a float takes a decimal number"),
    ('layer { name: 3 }', "expected a quoted string"),
    ('layer { name: "a" name: "b" }', "is set twice"),
    ("layer { include { phase: TEST }", "missing its '}'"),
    ('layer { name: "abc }', "not closed"),
    (r'layer { name: "\q" }', "unknown escape"),
    ("layer { name: 'x' } }", "expected a field name in NetParameter, got '}'"),
    ("layer < name: 'x' }", "expected a field name or '>' in LayerParameter, got '}'"),
    ("layer { $ }", "unexpected character"),
    ("layer { top: [1, 2] }", "expected a quoted string"),
    ("name: ['a']", "not repeated"),
    ("layer { convolution_param { num_output: 0x1bias_term: true } }",
     "a number must be followed by a space or a symbol, not a letter: '0x1bias_term'"),
    ("layer { convolution_param { num_output: 10kernel_size: 3 } }", "not a letter"),
    ("layer { relu_param { negative_slope: 1e } }", "not a letter: '1e'"),
    ("layer [ { name: 'a' } { name: 'b' } ]", "expected ',' or ']' in the list"),
    ("layer [ { name: 'a' }, ]", "expected '{' to open LayerParameter 'layer', got ']'"),
    ("layer { pooling_param 3 }", "expected '{'"),
    ("name:", "unexpected end of file"),
])
def test_every_error_path_has_a_clear_message(text, message):
    assert message in str(error_of(text))


def test_huge_integers_are_reported_as_written():
    huge = "0x" + "F" * 4000                   # past the 4,300 digits str() of an int allows
    e = error_of(f"layer {{ convolution_param {{ num_output: {huge} }} }}")
    assert f"{huge} is out of range for field 'num_output'" in str(e)
    e = error_of(f"layer {{ pooling_param {{ pool: -{huge} }} }}")
    assert f"-{huge} is not a value of field 'pool'" in str(e)
    e = error_of(f"layer {{ relu_param {{ negative_slope: {huge} }} }}")
    assert f"'{huge}' for field 'negative_slope' (float): a float takes a decimal" in str(e)


def test_unicode_escapes_as_protobufs_tokenizer_reads_them():
    # \u takes four hex digits, \U eight; a UTF-16 pair is one code point; all become UTF-8
    p = parse_text(r'name: "caf\u00e9 \U0001F600 \uD83D\uDE00\u0041" type: "\U0010FFFF"',
                   "LayerParameter")
    assert p.name == "caf\u00e9 \U0001F600 \U0001F600A" and p.type == "\U0010FFFF"
    # a lone surrogate gives the three bytes protobuf's C++ tokenizer gives: bytes, not text
    assert parse_text(r'data: "\ud800\ud800"', "Datum").data == b"\xed\xa0\x80" * 2
    with pytest.raises(PrototxtError, match="'name' is not valid UTF-8"):
        parse_text(r'name: "\udc00"', "LayerParameter")


@pytest.mark.parametrize("escape, message", [
    (r"\u00e", "must be followed by 4 hex digits"),
    (r"\u", "must be followed by 4 hex digits"),
    (r"\U0001F60", "must be followed by 8 hex digits"),
    (r"\U00110000", "past the last Unicode code point"),
])
def test_bad_unicode_escapes_are_errors(escape, message):
    e = error_of(f'name: "{escape}"')
    assert message in str(e) and (e.line, e.column) == (1, 9)


def test_invalid_utf8_is_an_error():
    with pytest.raises(PrototxtError, match="UTF-8"):
        parse_text(b'name: "\xff\xfe"')


def test_a_lone_surrogate_in_a_string_is_an_error():
    text = b'layer {\n  name: "caf\xe9"\n}'.decode("utf-8", "surrogateescape")
    e = error_of(text)
    assert (e.line, e.column) == (2, 13) and "'\\udce9', a lone surrogate" in str(e)


def test_missing_file(tmp_path):
    with pytest.raises(PrototxtError, match="cannot read file"):
        read_prototxt(tmp_path / "nope.prototxt")


# --- legacy forms ---------------------------------------------------------------------------------

V1_NET = """
name: "old"
input: "data"
input_dim: 10 input_dim: 3 input_dim: 32 input_dim: 32
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "shared_w"
  convolution_param { num_output: 4 kernel_size: 3 }
  include { phase: TRAIN }
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv1" bottom: "label" top: "loss" }
layers { name: "d" type: DATA top: "x" data_param { source: "db" scale: 0.5 mirror: true } }
"""


def test_v1_layers_and_input_dims_upgrade():
    net = upgrade_net(parse_text(V1_NET))
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("loss", "SoftmaxWithLoss"), ("d", "Data")]
    assert list(net.layer[0].input_param.shape[0].dim) == [10, 3, 32, 32]
    conv = net.layer[1]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [
        ("shared_w", 1, 1), ("", 2, 0)]
    assert conv.convolution_param.num_output == 4 and conv.include[0].phase == "TRAIN"
    data = net.layer[3]
    assert data.transform_param.scale == 0.5 and data.transform_param.mirror
    assert not data.data_param.HasField("scale")
    assert not net.HasField("layers") and not net.HasField("input")


def test_input_shape_upgrade_and_errors():
    net = upgrade_net(parse_text('input: "a" input: "b" input_shape { dim: 1 dim: 2 } '
                                 'input_shape { dim: 3 }'))
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2], [3]]
    assert list(net.layer[0].top) == ["a", "b"]
    with pytest.raises(NetError, match="input_dim"):
        upgrade_net(parse_text('input: "a" input_dim: 1 input_dim: 2'))
    with pytest.raises(NetError, match="2 inputs but 1 input_shape entries: give exactly one"):
        upgrade_net(parse_text('input: "a" input: "b" input_shape { dim: 1 }'))  # as Caffe
    with pytest.raises(NetError, match="mixes V1"):
        upgrade_net(parse_text('layers { name: "a" } layer { name: "b" }'))
    with pytest.raises(NetError, match="'convolution' is not a V0 layer type"):
        upgrade_net(parse_text('layers { layer { name: "old" type: "convolution" } }'))


# --- fuzzing --------------------------------------------------------------------------------------

SAMPLE = """name: "LeNet"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 10 bias_filler { type: "constant" value: -0.5e-2 } } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_random_bytes_raise_only_prototxt_errors(data):
    try:
        parse_text(data)
    except PrototxtError:
        pass


@st.composite
def mutated_sample(draw):
    text = list(SAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        char = draw(st.sampled_from(list('{}:"\'#-.0123456789eE\\ \nabcxyz_[],;<>')))
        if op == "delete":
            del text[pos]
        elif op == "insert":
            text.insert(pos, char)
        else:
            text[pos] = char
    return "".join(text)


@given(mutated_sample())
@settings(max_examples=300)
def test_mutations_of_a_real_prototxt_raise_only_prototxt_errors(text):
    try:
        net = parse_text(text)
    except PrototxtError:
        return
    assert parse_text(to_text(net)) == net


def test_errors_are_minicnn_errors_and_value_errors():
    e = error_of("bogus: 1")
    assert isinstance(e, MinicnnError) and isinstance(e, ValueError)


def test_input_names_without_shapes_are_dropped_as_caffe_does(tmp_path):
    # Caffe 1.0's UpgradeNetInput: a legacy caffemodel (2014-2015 Net::ToProto) lists its input
    # names alone; they are stripped, and no Input layer with unshaped tops is made
    net = upgrade_net(parse_text('input: "data" layer { name: "ip" type: "InnerProduct" '
                                 'bottom: "data" top: "ip" }'))
    assert not net.HasField("input") and [layer.name for layer in net.layer] == ["ip"]
    path = tmp_path / "bare.prototxt"
    path.write_text('input: "data"\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    with pytest.raises(NetError, match=r"bare.prototxt:2: .*bottom 'data' is not produced.*"
                                       r"input 'data' has no input_shape or input_dim"):
        minicnn.Net(str(path), minicnn.TEST)
