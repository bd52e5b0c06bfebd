"""V0 nets (2013-2014 Caffe: ``layers { layer { type: "conv" kernelsize: 11 } }``) upgraded as
Caffe's UpgradeV0Net does (src/caffe/util/upgrade_proto.cpp), prototxt and caffemodel."""

import numpy as np
import pytest

import minicnn
from minicnn.cli import main
from minicnn.errors import NetError
from minicnn.proto import caffe_pb2, parse_text, read_binary, read_prototxt, upgrade_net
from minicnn.proto import write_binary

V0_TRAIN = """name: "v0"
layers {
  layer { name: "data" type: "data" source: "train_db" meanfile: "mean.binaryproto"
          batchsize: 4 cropsize: 8 mirror: true scale: 0.5 rand_skip: 3 }
  top: "data" top: "label"
}
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1
          weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 }
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 biasterm: false }
         bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.4 } bottom: "fc" top: "fc" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc" bottom: "label" top: "loss" }
"""

V2_TRAIN = """name: "v0"
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.5 mirror: true crop_size: 8 mean_file: "mean.binaryproto" }
  data_param { source: "train_db" batch_size: 4 rand_skip: 3 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 pad: 2 kernel_size: 3 stride: 2 group: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 10 bias_term: false } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_a_v0_net_upgrades_to_the_v2_net_caffe_makes_of_it():
    assert upgrade_net(parse_text(V0_TRAIN)) == parse_text(V2_TRAIN)


def test_the_other_data_layers_fields_go_where_caffe_puts_them():
    net = upgrade_net(parse_text("""
    layers { layer { name: "img" type: "images" source: "list.txt" batchsize: 2 rand_skip: 1
                     shuffle_images: true new_height: 9 new_width: 7 cropsize: 5 } top: "a" }
    layers { layer { name: "win" type: "window_data" source: "w.txt" batchsize: 3
                     det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.3
                     det_context_pad: 16 det_crop_mode: "square" mirror: true } top: "b" }
    layers { layer { name: "h5" type: "hdf5_data" source: "h.txt" batchsize: 5 } top: "c" }
    layers { layer { name: "cat" type: "concat" concat_dim: 0 } bottom: "a" bottom: "b"
             top: "d" }
    layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } }
             bottom: "c" }
    layers { layer { name: "ig" type: "infogain_loss" source: "H.binaryproto" } bottom: "d"
             bottom: "c" }
    layers { layer { name: "sp" type: "pool" pool: STOCHASTIC kernelsize: 2 pad: 1 } bottom: "a"
             top: "e" }
    """))
    img, win, h5, cat, out, ig, sp = net.layer
    assert (img.type, win.type, h5.type, cat.type, out.type, ig.type) == (
        "ImageData", "WindowData", "HDF5Data", "Concat", "HDF5Output", "InfogainLoss")
    assert img.image_data_param == caffe_pb2.ImageDataParameter(
        source="list.txt", batch_size=2, rand_skip=1, shuffle=True, new_height=9, new_width=7)
    assert img.transform_param == caffe_pb2.TransformationParameter(crop_size=5)
    assert win.window_data_param == caffe_pb2.WindowDataParameter(
        source="w.txt", batch_size=3, fg_threshold=0.6, bg_threshold=0.4, fg_fraction=0.3,
        context_pad=16, crop_mode="square")
    assert win.transform_param.mirror
    assert h5.hdf5_data_param == caffe_pb2.HDF5DataParameter(source="h.txt", batch_size=5)
    assert cat.concat_param == caffe_pb2.ConcatParameter(concat_dim=0)
    assert out.hdf5_output_param.file_name == "o.h5"
    assert ig.infogain_loss_param.source == "H.binaryproto"
    assert sp.pooling_param == caffe_pb2.PoolingParameter(pool="STOCHASTIC", kernel_size=2, pad=1)


DEPLOY_V0 = """name: "d"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 3 stride: 2 }
         bottom: "pad2" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.75 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

DEPLOY_V2 = """name: "d"
layer { name: "input" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _v0_caffemodel(weights):
    """DEPLOY_V0 with ``weights`` ({layer: [arrays]}) in its V0 layers' blobs, as a 2014
    .caffemodel held them (legacy num/channels/height/width dims)."""
    model = parse_text(DEPLOY_V0)
    for entry in model.layers:
        for array in weights.get(entry.layer.name, []):
            dims = (1,) * (4 - array.ndim) + array.shape
            entry.layer.blobs.add(data=array.ravel(), num=dims[0], channels=dims[1],
                                  height=dims[2], width=dims[3])
    return model


def test_a_v0_net_and_its_v0_caffemodel_run_as_the_v2_net(tmp_path):
    (tmp_path / "v0.prototxt").write_text(DEPLOY_V0)
    (tmp_path / "v2.prototxt").write_text(DEPLOY_V2)
    assert upgrade_net(parse_text(DEPLOY_V0)) == parse_text(DEPLOY_V2)
    rng = np.random.default_rng(0)
    weights = {"conv1": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                         rng.standard_normal(4).astype(np.float32)],
               "fc": [rng.standard_normal((5, 36)).astype(np.float32),
                      rng.standard_normal(5).astype(np.float32)]}
    write_binary(_v0_caffemodel(weights), tmp_path / "v0.caffemodel")
    old = minicnn.Net(str(tmp_path / "v0.prototxt"), str(tmp_path / "v0.caffemodel"),
                      minicnn.TEST)
    new = minicnn.Net(str(tmp_path / "v2.prototxt"), minicnn.TEST)
    for name, arrays in weights.items():
        for blob, array in zip(new.params[name], arrays):
            blob.data[...] = array
        for blob, array in zip(old.params[name], arrays):     # the caffemodel filled them
            assert np.array_equal(blob.data, array)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    assert {k: b.shape for k, b in old.blobs.items()} == {k: b.shape for k, b in new.blobs.items()}
    assert old.blobs["pool1"].shape == (2, 4, 3, 3)      # the padding layers' pads were kept
    np.testing.assert_array_equal(old.forward(data=x)["prob"], new.forward(data=x)["prob"])

    # minicnn upgrade: Caffe's upgrade_net_proto_text and _binary on V0 files
    assert main(["upgrade", str(tmp_path / "v0.prototxt"), str(tmp_path / "up.prototxt")]) == 0
    assert read_prototxt(str(tmp_path / "up.prototxt")) == parse_text(DEPLOY_V2)
    assert main(["upgrade", str(tmp_path / "v0.caffemodel"),
                 str(tmp_path / "up.caffemodel")]) == 0
    upgraded = read_binary(tmp_path / "up.caffemodel")
    assert [layer.name for layer in upgraded.layer] == [
        "input", "conv1", "relu1", "pool1", "norm1", "fc", "drop", "prob"]
    assert np.array_equal(upgraded.layer[1].blobs[0].data, weights["conv1"][0].ravel())


def _error(tmp_path, text):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(NetError) as info:
        minicnn.Net(str(path), minicnn.TEST)
    return str(info.value).replace(str(path), "net.prototxt")


def test_padding_layers_caffe_cannot_fold_are_errors(tmp_path):
    head = 'input: "data"\ninput_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n' \
           'layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "p" }\n'
    assert _error(tmp_path, head + 'layers { layer { name: "r" type: "relu" }\n'
                  '  bottom: "p" top: "r" }\n') == (
        "net.prototxt:5: layer 'r' (type 'relu') reads the top of padding layer 'pad'; the V0 "
        "upgrade folds a padding layer only into the conv or pool layer after it")
    message = _error(tmp_path, head + 'layers { layer { name: "c" type: "conv" kernelsize: 1 '
                     'num_output: 1 } bottom: "p" bottom: "data" top: "c" }\n')
    assert message.startswith("net.prototxt:4: layer 'c' reads the top of padding layer 'pad' "
                              "and has 2 bottoms")
    two_tops = head.replace('top: "p" }', 'top: "p" top: "q" }')
    message = _error(tmp_path, two_tops + 'layers { layer { name: "c" type: "pool" kernelsize: 1 '
                     '} bottom: "p" top: "c" }\n')
    assert message.startswith("net.prototxt:3: padding layer 'pad' has 1 bottoms and 2 tops")
    message = _error(tmp_path, head + 'layers { layer { name: "c" type: "pool" kernelsize: 1 } '
                     'bottom: "nowhere" top: "c" }\n')
    assert message.startswith("net.prototxt:4: layer 'c': bottom 'nowhere' is not an input")


def test_a_field_caffe_does_not_upgrade_for_the_type_is_an_error_naming_its_line(tmp_path):
    net = ('input: "data"\ninput_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
           'layers {\n  layer { name: "r" type: "relu"\n    kernelsize: 3 }\n'
           '  bottom: "data" top: "r"\n}\n')
    assert _error(tmp_path, net) == (
        "net.prototxt:5: layer 'r': the V0 field 'kernelsize' is not a parameter of a 'relu' "
        "layer (Caffe's upgrade knows it for 'conv' or 'pool' layers only: 'Unknown parameter "
        "kernelsize for layer type relu')")
    assert _error(tmp_path, net.replace('kernelsize: 3', 'new_height: 3')).startswith(
        "net.prototxt:5: layer 'r': the V0 field 'new_height' is not a parameter of a 'relu' "
        "layer (Caffe's upgrade knows it for 'images' layers only")
    assert _error(tmp_path, net.replace('"relu"', '"prelu"')).startswith(
        "net.prototxt:4: layer 'r': 'prelu' is not a V0 layer type (Caffe's V0 upgrade knows "
        "accuracy, bnll,")
    with pytest.raises(NetError, match="^layer 'r': the V0 field 'kernelsize'"):
        upgrade_net(parse_text(net))                 # no file: no line


def test_v0_layers_mixed_with_v1_are_errors():
    with pytest.raises(NetError, match="layer 'b' is in the V1 format but others are V0"):
        upgrade_net(parse_text('layers { layer { name: "a" type: "relu" } } '
                               'layers { name: "b" type: RELU }'))
    with pytest.raises(NetError, match=r"with V1 fields beside it \(name, convolution_param\)"):
        upgrade_net(parse_text('layers { layer { name: "a" type: "conv" } name: "a" '
                               'convolution_param { num_output: 2 } }'))
    with pytest.raises(NetError, match="mixes V1 'layers' and current 'layer'"):
        upgrade_net(parse_text('layers { layer { name: "a" type: "relu" } } '
                               'layer { name: "b" type: "ReLU" }'))
    with pytest.raises(NetError, match="'input_shape' would be lost"):
        upgrade_net(parse_text('input: "x" input_shape { dim: 1 } '
                               'layers { layer { name: "a" type: "relu" } bottom: "x" }'))


def test_a_v0_caffemodel_with_a_type_caffe_does_not_know_names_the_file(tmp_path):
    (tmp_path / "v2.prototxt").write_text(DEPLOY_V2)
    model = _v0_caffemodel({})
    model.layers[2].layer.type = "rectifier"
    write_binary(model, tmp_path / "bad.caffemodel")
    net = minicnn.Net(str(tmp_path / "v2.prototxt"), minicnn.TEST)
    with pytest.raises(NetError, match=r"bad\.caffemodel: layer 'relu1': 'rectifier' is not a "
                                       "V0 layer type"):
        net.copy_from(str(tmp_path / "bad.caffemodel"))


def test_errors_of_a_v0_nets_layers_name_their_line(tmp_path):
    message = _error(tmp_path, 'input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 '
                     'input_dim: 8\n\nlayers { layer { name: "conv1" type: "conv" num_output: 4 '
                     'kernelsize: 20 }\n  bottom: "data" top: "conv1" }\n')
    assert message.startswith("net.prototxt:4: layer 'conv1' (Convolution; bottoms data "
                              "(1, 3, 8, 8)): convolution output would be")


def test_a_solver_trains_and_tests_a_v0_net(tmp_path):
    # Caffe upgrades a net file as it reads it, before the solver sets the net's state; the
    # V0 upgrade refuses a net with a state (it would drop it), so the solver must upgrade first
    from minicnn.solver import SOLVERS
    (tmp_path / "net.prototxt").write_text(
        'name: "v0"\ninput: "data"\ninput_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4\n'
        'layers { layer { name: "ip" type: "innerproduct" num_output: 5\n'
        '  weight_filler { type: "gaussian" std: 0.1 } } bottom: "data" top: "ip" }\n'
        'layers { layer { name: "loss" type: "euclidean_loss" } bottom: "ip" bottom: "ip"\n'
        '  top: "loss" }\n')
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\ntest_iter: 1\ntest_interval: 1\nbase_lr: 0.1\nmax_iter: 1\n'
        'lr_policy: "fixed"\nsnapshot_prefix: "' + str(tmp_path / "snap") + '"\n')
    solver = SOLVERS["SGD"](str(tmp_path / "solver.prototxt"), log=lambda message: None)
    assert {"InnerProduct", "EuclideanLoss"} <= {layer.type for layer in solver.net.layers}
    assert solver.net.state.phase == minicnn.TRAIN
    assert solver.test_nets[0].state.phase == minicnn.TEST
    solver.step(1)
    # a V0 net given in the solver itself (net_param) likewise
    text = (tmp_path / "net.prototxt").read_text()
    (tmp_path / "solver2.prototxt").write_text(
        "train_net_param {\n" + text + "}\nbase_lr: 0.1\nmax_iter: 1\nlr_policy: \"fixed\"\n"
        'snapshot_prefix: "' + str(tmp_path / "snap") + '"\n')
    solver = SOLVERS["SGD"](str(tmp_path / "solver2.prototxt"), log=lambda message: None)
    assert solver.net.state.phase == minicnn.TRAIN


def test_a_v0_solver_nets_errors_name_its_file_and_line(tmp_path):
    from minicnn.solver import SOLVERS
    (tmp_path / "net.prototxt").write_text(
        'input: "data"\ninput_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
        'layers {\n  layer { name: "r" type: "relu"\n    kernelsize: 3 }\n'
        '  bottom: "data" top: "r"\n}\n')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.1\n')
    with pytest.raises(NetError, match=r"net\.prototxt:5: layer 'r': the V0 field 'kernelsize'"):
        SOLVERS["SGD"](str(tmp_path / "solver.prototxt"), log=lambda message: None)
