"""The message objects: attribute access, type checks, presence, copy/merge, caffe_pb2 names."""

import numpy as np
import pytest

import minicnn
from minicnn.proto import caffe_pb2, parse_binary, parse_text, serialize


def test_constructor_dicts_and_repeated_add():
    layer = caffe_pb2.LayerParameter(name="c", bottom=["a", "b"],
                                     convolution_param={"num_output": 3, "kernel_size": [5]})
    assert layer.convolution_param.num_output == 3 and list(layer.bottom) == ["a", "b"]
    spec = layer.param.add(lr_mult=2)
    assert layer.param[0] is spec and spec.decay_mult == 1


@pytest.mark.parametrize("field, value, error", [
    ("name", 3, TypeError), ("phase", "TRAINING", ValueError), ("phase", 7, ValueError),
    ("bottom", "a", TypeError), ("loss_weight", ["x"], TypeError),
    ("propagate_down", [1], TypeError), ("convolution_param", 3, TypeError),
])
def test_wrong_types_are_refused(field, value, error):
    layer = caffe_pb2.LayerParameter()
    with pytest.raises(error):
        if field in ("loss_weight", "propagate_down"):
            getattr(layer, field).extend(value)
        else:
            setattr(layer, field, value)


def test_integer_ranges_and_float32_rounding():
    p = caffe_pb2.ConvolutionParameter()
    with pytest.raises(ValueError, match="out of range"):
        p.num_output = -1
    p.num_output = 2**32 - 1
    f = caffe_pb2.FillerParameter(std=0.1)
    assert f.std == float(np.float32(0.1))
    assert caffe_pb2.PoolingParameter(pool=1).pool == "AVE"


def test_unknown_attribute_suggests_a_field():
    with pytest.raises(AttributeError, match="did you mean 'kernel_size'"):
        caffe_pb2.ConvolutionParameter().kernel_sise


def test_presence_clear_copy_merge_and_equality():
    a = caffe_pb2.LayerParameter(name="x", top=["t"])
    a.pooling_param.kernel_size = 2
    b = caffe_pb2.LayerParameter()
    b.CopyFrom(a)
    assert a == b and b.pooling_param.kernel_size == 2
    b.pooling_param.kernel_size = 3
    assert a != b and a.pooling_param.kernel_size == 2, "CopyFrom must not share sub-messages"
    c = caffe_pb2.LayerParameter(top=["u"], name="y")
    c.MergeFrom(a)
    assert list(c.top) == ["u", "t"] and c.name == "x"
    c.ClearField("pooling_param")
    assert not c.HasField("pooling_param")
    assert [f.name for f, _ in a.ListFields()] == ["name", "top", "pooling_param"]
    assert caffe_pb2.LayerParameter().copy() == caffe_pb2.LayerParameter()


def test_blob_data_fields_are_numpy_arrays():
    blob = caffe_pb2.BlobProto(data=[1, 2, 3])
    assert isinstance(blob.data, np.ndarray) and blob.data.dtype == np.float32
    assert caffe_pb2.BlobProto().data.size == 0


def test_enum_constants_and_repr():
    assert caffe_pb2.PoolingParameter.MAX == "MAX"
    assert caffe_pb2.TEST == "TEST"
    assert "kernel_size: 3" in repr(caffe_pb2.PoolingParameter(kernel_size=3))


@pytest.mark.parametrize("how", ["default", "name", "number", "text", "wire", "copy", "pickle"])
def test_an_enum_value_is_its_name_and_equals_its_number_as_protobufs(how):
    """pycaffe code compares enum fields with numbers (protobuf's values are ints): pool == 1,
    phase == 0; minicnn's name-valued fields must answer as protobuf would, however they were
    set or read."""
    import copy
    import pickle
    make = {"name": lambda: caffe_pb2.PoolingParameter(pool="AVE"),
            "number": lambda: caffe_pb2.PoolingParameter(pool=1),
            "text": lambda: parse_text("pool: AVE", "PoolingParameter"),
            "wire": lambda: parse_binary(serialize(caffe_pb2.PoolingParameter(pool="AVE")),
                                         "PoolingParameter"),
            "copy": lambda: copy.deepcopy(caffe_pb2.PoolingParameter(pool="AVE")),
            "pickle": lambda: caffe_pb2.PoolingParameter(
                pool=pickle.loads(pickle.dumps(caffe_pb2.PoolingParameter.AVE)))}
    if how == "default":                       # proto2: the first value listed, MAX = 0
        pool, name, number = caffe_pb2.PoolingParameter().pool, "MAX", 0
    else:
        pool, name, number = make[how]().pool, "AVE", 1
    assert pool == name and pool == number and number == pool and not pool != number
    assert pool != number + 1 and pool != "STOCHASTIC" and pool != 2.5
    assert int(pool) == number and ["MAX", "AVE", "STOCHASTIC"][pool] == name
    assert str(pool) == name and f"{pool}" == name and "%d" % pool == str(number)
    assert {name: "found"}[pool] == "found"            # hashes as its name
    assert pool == getattr(caffe_pb2.PoolingParameter, name)
    assert caffe_pb2.PoolingParameter.PoolMethod.Value(name) == number


def test_phase_constants_equal_protobufs_numbers():
    assert caffe_pb2.TRAIN == 0 and caffe_pb2.TEST == 1 and minicnn.TEST == 1
    assert caffe_pb2.Phase.Value("TEST") == 1 and caffe_pb2.Phase.Name(1) == "TEST"
    assert type(caffe_pb2.Phase.Name(caffe_pb2.TEST)) is str
    rule = parse_text("phase: TEST", "NetStateRule")
    assert rule.phase == caffe_pb2.TEST and rule.phase == 1 and rule.phase != 0


def test_serialize_and_parse_from_string_as_protobuf():
    # pycaffe code reads LMDB values with datum.ParseFromString(value) and writes
    # datum.SerializeToString(); ParseFromString replaces what the message held
    datum = caffe_pb2.Datum(channels=2, height=1, width=3, data=bytes(range(6)), label=4)
    wire = datum.SerializeToString()
    assert isinstance(wire, bytes)
    other = caffe_pb2.Datum(label=9, float_data=[1.0])
    assert other.ParseFromString(wire) == len(wire)
    assert other == datum and not other.HasField("float_data")
    blob = caffe_pb2.BlobProto(data=np.arange(3, dtype=np.float32))
    blob.MergeFromString(caffe_pb2.BlobProto(data=[5.0]).SerializeToString())
    assert blob.data.tolist() == [0.0, 1.0, 2.0, 5.0]
    with pytest.raises(Exception, match="Datum"):
        caffe_pb2.Datum().ParseFromString(b"\x0a\xff")


def test_the_schema_refuses_a_name_or_field_given_twice():
    """Forks' messages are appended to the schema by different hands: a second definition of a
    name would silently replace the first (and its fields' numbers), so it is an error."""
    from minicnn.proto.schema import _load
    one = "message A\n  1   x                   float\n"
    with pytest.raises(ValueError, match="A is defined twice"):
        _load(one + "\n" + one)
    with pytest.raises(ValueError, match="E is defined twice"):
        _load("enum E X=0\nenum E Y=0\n")
    with pytest.raises(ValueError, match="duplicate field y=1 in A"):
        _load(one + "  1   y                   float\n")
    assert set(_load(one)[1]) == {"A"}


def test_copy_deepcopy_and_pickle_give_whole_independent_messages():
    import copy
    import pickle

    net = caffe_pb2.NetParameter(name="n", input_dim=[1, 3])
    layer = net.layer.add(name="c", type="Convolution")
    layer.blobs.add(data=np.array([1.5, -0.0, np.nan], np.float32))
    layer.convolution_param.SetInParent()               # present, though empty
    for clone in (copy.deepcopy(net), copy.copy(net), pickle.loads(pickle.dumps(net)),
                  copy.deepcopy(net.layer[0])):
        original = net if type(clone) is type(net) else net.layer[0]
        assert clone == original and clone.SerializeToString() == original.SerializeToString()
        assert clone is not original
    clone = copy.deepcopy(net)
    clone.layer[0].blobs[0].data[0] = 9
    clone.layer[0].name = "d"
    clone.input_dim.append(5)
    assert net.layer[0].blobs[0].data[0] == 1.5 and net.layer[0].name == "c"
    assert list(net.input_dim) == [1, 3]


def test_protobufs_other_message_methods():
    net = caffe_pb2.NetParameter(name="n")
    assert not net.HasField("state")
    net.state.SetInParent()
    assert net.HasField("state") and net.SerializeToString() == b"\n\x01n\x32\x00"
    assert net.ByteSize() == len(net.SerializeToString()) == 5
    assert net.IsInitialized() and net.DiscardUnknownFields() is None
    assert {"ByteSize", "SetInParent"} <= set(dir(net))


def test_array_fields_take_protobufs_extend_and_append_as_pycaffe_code_calls_them():
    # caffe.io.array_to_blobproto: blob.shape.dim.extend(arr.shape); blob.data.extend(arr.flat)
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    assert blob.HasField("data") and blob.data.dtype == np.float32
    np.testing.assert_array_equal(blob.data, arr.ravel())
    datum = caffe_pb2.Datum(channels=3, height=1, width=1)
    datum.float_data.extend(x for x in (0.5, 1.5))          # a generator too
    datum.float_data.append(2)
    assert datum.float_data.tolist() == [0.5, 1.5, 2.0]
    assert caffe_pb2.Datum.FromString(datum.SerializeToString()) == datum
    doubled = blob.data * 2                                 # values computed: plain arrays
    assert type(doubled) is np.ndarray and repr(blob.data).startswith("array(")
    with pytest.raises(TypeError, match="on a message's array field itself"):
        blob.data[1:].extend([1.0])


def test_nested_enum_types_as_protobuf_nests_them():
    # pycaffe's draw.py: {v: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.items()}, then
    # indexed by layer.pooling_param.pool
    names = {v: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.items()}
    assert names[caffe_pb2.PoolingParameter(pool="AVE").pool] == "AVE"
    assert caffe_pb2.PoolingParameter.PoolMethod.Name(1) == "AVE"
    assert caffe_pb2.SolverParameter.SolverType.Value("ADAM") == "ADAM"
    assert caffe_pb2.PriorBoxParameter.CodeType.keys() == ["CORNER", "CENTER_SIZE", "CORNER_SIZE"]
    with pytest.raises(ValueError, match="has no value named 'MIN'"):
        caffe_pb2.PoolingParameter.PoolMethod.Value("MIN")
