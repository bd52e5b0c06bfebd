"""minicnn.net_spec: nets written in Python as pycaffe's caffe.net_spec writes them.

The nets below are pycaffe's own examples (python/caffe/test/test_net_spec.py and the LeNet
tutorial); each is checked field by field against the prototxt Caffe writes for it, then built
and run.
"""

import os

import numpy as np
import pytest

import minicnn
from minicnn.net_spec import NetSpec, layers as L, params as P, to_proto
from minicnn.proto import caffe_pb2, parse_text, read_prototxt


def lenet(batch_size, source="mnist_train_lmdb"):
    n = NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=source,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


LENET_PROTOTXT = """
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.003921568627 }
        data_param { source: "mnist_train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def test_named_lenet_is_the_prototxt_caffe_writes():
    net_param = lenet(64)
    assert net_param == parse_text(LENET_PROTOTXT, "NetParameter")
    # str() is the prototxt (protobuf's text format), so pycaffe's f.write(str(...)) works
    assert parse_text(str(net_param), "NetParameter") == net_param
    assert str(net_param).startswith('layer {\n  name: "data"\n  type: "Data"\n')


def test_anonymous_tops_take_pycaffes_automatic_names():
    data, label = L.DummyData(shape=[dict(dim=[4, 1, 12, 12]), dict(dim=[4, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=3, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=3, num_output=4, weight_filler=dict(type="xavier"))
    relu = L.ReLU(conv2, in_place=True)
    ip = L.InnerProduct(relu, num_output=10, weight_filler=dict(type="xavier"))
    net_param = L.SoftmaxWithLoss(ip, label).to_proto()
    assert [(layer.name, list(layer.bottom), list(layer.top)) for layer in net_param.layer] == [
        ("DummyData1", [], ["DummyData1", "DummyData2"]),
        ("Convolution1", ["DummyData1"], ["Convolution1"]),
        ("Pooling1", ["Convolution1"], ["Pooling1"]),
        ("Convolution2", ["Pooling1"], ["Convolution2"]),
        ("ReLU1", ["Convolution2"], ["Convolution2"]),        # in place: top = bottom
        ("InnerProduct1", ["Convolution2"], ["InnerProduct1"]),
        ("SoftmaxWithLoss1", ["InnerProduct1", "DummyData2"], ["SoftmaxWithLoss1"]),
    ]
    net = minicnn.Net(net_param, minicnn.TEST)
    assert len(net.layers) == 7
    assert set(net.forward()) == {"SoftmaxWithLoss1"}


def test_a_layer_reached_twice_is_written_once_before_its_users():
    x = L.Input(shape=dict(dim=[2, 3]))
    a, b = L.TanH(x), L.Sigmoid(x)
    net_param = to_proto(L.Eltwise(a, b), L.Eltwise(a, x))
    assert [layer.name for layer in net_param.layer] == ["Input1", "TanH1", "Sigmoid1", "Eltwise1",
                                                 "Eltwise2"]


def test_topless_layers_and_their_names():
    n = NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    net_param = n.to_proto()
    assert [layer.name for layer in net_param.layer] == ["data", "silence_data", "silence_data2"]
    assert list(net_param.layer[1].top) == []
    assert len(minicnn.Net(net_param, minicnn.TEST).forward()) == 0
    anonymous = L.Silence(*L.DummyData(shape=dict(dim=2), ntop=2), ntop=0)
    assert [layer.name for layer in to_proto(*anonymous.inputs).layer] == ["DummyData1"]


def test_keywords_go_where_pycaffe_puts_them():
    x = L.Input(shape=dict(dim=[1, 2, 6, 6]))
    conv = L.Convolution(x, name="my_conv", num_output=4, kernel_size=[3], pad=1,
                         param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                         include=dict(phase=caffe_pb2.TRAIN), loss_weight=0.5,
                         convolution_param=dict(bias_term=False), propagate_down=[True])
    layer = to_proto(conv).layer[1]
    assert layer.name == "my_conv" and list(layer.top) == ["Convolution1"]
    assert list(layer.convolution_param.kernel_size) == [3]
    assert layer.convolution_param.pad == [1]                       # one value: a list of one
    assert layer.convolution_param.num_output == 4 and not layer.convolution_param.bias_term
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)]
    assert [r.phase for r in layer.include] == ["TRAIN"] and layer.loss_weight == [0.5]
    assert list(layer.propagate_down) == [True]
    # a dict with no keys writes nothing, as pycaffe (proto2 presence)
    assert not to_proto(L.Input(shape=dict(dim=[1]), transform_param={})).layer[0].HasField(
        "transform_param")


def test_enum_values_and_types_whose_message_is_named_otherwise():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    x = L.Input(shape=dict(dim=[1, 2, 3, 3]))
    deconv = to_proto(L.Deconvolution(x, num_output=2, kernel_size=2, stride=2)).layer[1]
    assert deconv.convolution_param.num_output == 2          # pycaffe would refuse num_output
    loss = to_proto(L.SoftmaxWithLoss(x, x, ignore_label=3, loss_param=dict(normalize=False)))
    assert loss.layer[1].loss_param.ignore_label == 3
    assert loss.layer[1].loss_param.normalize is False
    lstm = to_proto(L.LSTM(x, x, num_output=5)).layer[1]
    assert lstm.recurrent_param.num_output == 5


def test_mistakes_are_named():
    x = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    pair = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class "
                                        r"'tuple'>\) \(unpack a tuple of tops with \*\)$"):
        L.Silence(pair, ntop=0)
    L.Silence(*pair, ntop=0)
    with pytest.raises(AttributeError, match=r"layer 'Convolution1' \(Convolution\): "
                                             r"'num_ouput' .* did you mean 'num_output'"):
        L.Convolution(x, num_ouput=3).to_proto()
    with pytest.raises(AttributeError, match=r"convolution_param.weight_filler: FillerParameter "
                                             r"has no field named 'tpye'; did you mean 'type'"):
        L.Convolution(x, num_output=3, weight_filler=dict(tpye="xavier")).to_proto()
    with pytest.raises(ValueError, match=r"convolution_param.num_output: -1 is out of range"):
        L.Convolution(x, num_output=-1).to_proto()
    with pytest.raises(ValueError, match="'MAXIMUM' is not a value of enum PoolMethod"):
        L.Pooling(x, pool="MAXIMUM").to_proto()
    with pytest.raises(AttributeError, match="PoolingParameter has no enum value 'MAXX'"):
        P.Pooling.MAXX
    with pytest.raises(AttributeError, match="caffe.proto has no message PoolParameter"):
        P.Pool.MAX
    with pytest.raises(ValueError, match="in_place=True needs as many bottoms as tops"):
        L.ReLU(x, x, in_place=True)
    with pytest.raises(ValueError, match="ntop must be a whole number"):
        L.Data(ntop=-1)
    n = NetSpec()
    with pytest.raises(TypeError, match="NetSpec.bad: store what an L.<Type>"):
        n.bad = 3
    with pytest.raises(AttributeError, match="no top named 'missing'"):
        n.missing


def test_netspec_is_a_mapping_of_tops():
    n = NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1, 3]))
    n.out = L.TanH(n["data"])
    assert n.keys() == ["data", "out"] and n.vals() == [n.data, n.out]
    del n["out"]
    assert [layer.name for layer in n.to_proto().layer] == ["data"]


def test_a_written_net_trains(tmp_path):
    """The whole path pycaffe's tutorial takes: NetSpec -> prototxt file -> solver -> training."""
    rng = np.random.default_rng(0)
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[32, 1, 6, 6]))
    n.label = L.Input(shape=dict(dim=[32]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3,
                           weight_filler=dict(type="gaussian", std=0.3))
    n.relu = L.ReLU(n.conv, in_place=True, negative_slope=0.1)
    n.score = L.InnerProduct(n.relu, num_output=2, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    path = tmp_path / "net.prototxt"
    path.write_text(str(n.to_proto()))
    assert read_prototxt(str(path)).layer[3].relu_param.negative_slope == pytest.approx(0.1)
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(f'net: "{path}"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\n'
                           'max_iter: 40\ndisplay: 0\nsnapshot_after_train: false\n')
    solver = minicnn.get_solver(str(solver_path))
    x = rng.standard_normal((32, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].sum(axis=(1, 2)) > 0).astype(np.float32)
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["label"].data[...] = y
    first = float(solver.net.forward()["loss"])
    solver.step(40)
    assert float(solver.net.forward()["loss"]) < 0.5 * first


def test_the_readme_example_writes_its_prototxt(tmp_path, monkeypatch):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    block = readme.split("```python\nfrom minicnn.net_spec import")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile("from minicnn.net_spec import" + block, "README.md", "exec"), {})
    written = read_prototxt(str(tmp_path / "lenet_auto.prototxt"))
    assert [layer.name for layer in written.layer] == ["data", "conv1", "pool1", "ip1", "loss"]
    assert written.layer[0].data_param.backend == "LMDB"


def test_caffe_layers_and_params_as_pycaffe_exports_them():
    """pycaffe's tutorials write ``from caffe import layers as L`` and ``from caffe import
    params as P``: under ``import minicnn as caffe`` those are minicnn.layers (the package of
    layer modules, which makes NetSpec layers for Caffe type names) and minicnn.params."""
    from minicnn import layers as CL
    from minicnn import params as CP
    assert CP is P
    n = NetSpec()
    n.data, n.label = CL.Data(batch_size=64, backend=CP.Data.LMDB, source="mnist_train_lmdb",
                              transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = CL.Convolution(n.data, kernel_size=5, num_output=20,
                             weight_filler=dict(type="xavier"))
    n.pool1 = CL.Pooling(n.conv1, kernel_size=2, stride=2, pool=CP.Pooling.MAX)
    n.ip1 = CL.InnerProduct(n.pool1, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = CL.ReLU(n.ip1, in_place=True)
    n.ip2 = CL.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = CL.SoftmaxWithLoss(n.ip2, n.label)
    assert str(n.to_proto()) == str(lenet(64))
    # the package's own names are untouched; other lower-case names are not layers
    from minicnn.layers.conv import ConvolutionLayer
    assert CL.ConvolutionLayer is ConvolutionLayer and CL.conv.ConvolutionLayer is ConvolutionLayer
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        _ = CL.not_a_module
    with pytest.raises(AttributeError):
        _ = CL.__wrapped__
    # no name of the package may hide a Caffe type from L.<Type>
    from minicnn.layer import LAYERS
    assert not set(vars(CL)) & set(LAYERS)


def test_param_name_dict_is_pycaffes():
    """net_spec.param_name_dict: type name -> its parameters' field less "_param"."""
    from minicnn.net_spec import param_name_dict
    names = param_name_dict()
    assert names["Pooling"] == "pooling" and names["InnerProduct"] == "inner_product"
    assert names["Convolution"] == "convolution" and names["Data"] == "data"
    assert all(f"{field}_param" in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
               for type_name, field in names.items() if type_name in ("Pooling", "ReLU", "LRN"))
