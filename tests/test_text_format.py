"""minicnn.proto.text_format: protobuf's text_format calls, as pycaffe scripts make them, on
minicnn's messages (Parse refuses a singular field given twice, Merge keeps the last; both add to
the message given)."""

import io
import os

import numpy as np
import pytest

from minicnn.proto import caffe_pb2, read_prototxt, text_format

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAFFENET = os.path.join(REPO, "models", "caffenet", "train_val.prototxt")
LENET_SOLVER = os.path.join(REPO, "models", "lenet", "lenet_solver.prototxt")


def test_the_fine_tuning_script_pattern(tmp_path):
    # the usual surgery: read the net, rename and resize the last layer, write it back
    net = caffe_pb2.NetParameter()
    with open(CAFFENET) as f:
        assert text_format.Merge(f.read(), net) is net
    fc8 = [layer for layer in net.layer if layer.name == "fc8"][0]
    fc8.name = "fc8_flickr"
    fc8.inner_product_param.num_output = 20
    out = tmp_path / "ft.prototxt"
    with open(out, "w") as f:
        f.write(text_format.MessageToString(net))
    again = read_prototxt(str(out))
    assert again == net and again != read_prototxt(CAFFENET)
    assert [layer.inner_product_param.num_output for layer in again.layer
            if layer.name == "fc8_flickr"] == [20]
    assert text_format.MessageToString(net) == str(net)


def test_a_solver_read_edited_and_printed():
    solver = caffe_pb2.SolverParameter()
    with open(LENET_SOLVER) as f:
        text_format.Parse(f.read(), solver)
    assert solver == read_prototxt(LENET_SOLVER, "SolverParameter")
    solver.base_lr = 0.001
    buffer = io.StringIO()
    text_format.PrintMessage(solver, buffer)
    assert "base_lr: 0.001\n" in buffer.getvalue()
    assert text_format.Parse(buffer.getvalue(), caffe_pb2.SolverParameter()) == solver


def test_parse_refuses_a_singular_field_given_twice_merge_keeps_the_last():
    text = 'base_lr: 0.1\nmax_iter: 10\nbase_lr: 0.5\n'
    with pytest.raises(text_format.ParseError, match="base_lr.*set twice") as e:
        text_format.Parse(text, caffe_pb2.SolverParameter())
    assert (e.value.GetLine(), e.value.GetColumn()) == (3, 1)
    solver = text_format.Merge(text, caffe_pb2.SolverParameter())
    assert solver.base_lr == np.float32(0.5) and solver.max_iter == 10


def test_merging_adds_to_what_the_message_holds():
    solver = caffe_pb2.SolverParameter(test_iter=[100], max_iter=5)
    text_format.Merge("test_iter: 7 stepvalue: [10, 20]", solver)
    assert list(solver.test_iter) == [100, 7] and solver.max_iter == 5
    assert list(solver.stepvalue) == [10, 20]
    # a singular message field given twice: its fields merge, as protobuf's Merge does
    layer = text_format.Merge('transform_param { scale: 0.5 } transform_param { mirror: true }',
                              caffe_pb2.LayerParameter())
    assert layer.transform_param.scale == 0.5 and layer.transform_param.mirror
    # blob values (packed arrays) go after those already there
    blob = caffe_pb2.BlobProto(data=[1.0, 2.0])
    text_format.Merge("data: 3 data: [4, 5]", blob)
    assert blob.data.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_lines_and_one_line_output():
    with open(LENET_SOLVER) as f:
        solver = text_format.ParseLines(f, caffe_pb2.SolverParameter())
    assert solver == read_prototxt(LENET_SOLVER, "SolverParameter")
    net = text_format.Merge('name: "n" layer { name: "a" type: "ReLU" }', caffe_pb2.NetParameter())
    assert text_format.MessageToString(net, as_one_line=True) == \
        'name: "n" layer { name: "a" type: "ReLU" }'


def test_one_line_output_keeps_line_separators_inside_strings():
    # U+0085 and U+2028 are printed as themselves; str.splitlines() would cut the string there
    net = caffe_pb2.NetParameter(name="a\x85b\u2028c ", input=["x"])
    line = text_format.MessageToString(net, as_one_line=True)
    assert line == 'name: "a\x85b\u2028c " input: "x"'
    assert text_format.Parse(line, caffe_pb2.NetParameter()) == net


def test_errors_name_the_field_and_the_message_type():
    with pytest.raises(text_format.ParseError, match="SolverParameter has no field named "
                                                     "'base_rl'; did you mean 'base_lr'"):
        text_format.Merge("base_rl: 0.1", caffe_pb2.SolverParameter())
    with pytest.raises(ValueError, match="does not skip unknown fields"):
        text_format.Merge("base_rl: 0.1", caffe_pb2.SolverParameter(), allow_unknown_field=True)
    with pytest.raises(TypeError, match="needs a minicnn message"):
        text_format.Merge("base_lr: 0.1", object())
