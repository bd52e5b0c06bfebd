"""Caffe's `Python` layer: pycaffe's protocol (setup, reshape, forward, backward on blobs with
data/diff/reshape/count/num/channels...), param_str, learnable blobs, modules found on sys.path
or next to the prototxt, errors that name the user's code, and no code run when reading a
.caffemodel."""

import os
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError, NetError
from minicnn.layers.python_layer import PythonLayer, PythonLayerBase
from minicnn.proto import caffe_pb2, parse_text
from minicnn.proto.wire import write_binary
from minicnn.testing import check_layer_gradient

THIS_MODULE = __name__


# --- layers written here, in pycaffe's style ----------------------------------------------------

class ScaledSquare(PythonLayerBase):
    """y = scale * x^2 elementwise; scale from param_str. Records the calls it gets."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("ScaledSquare takes one bottom")
        self.scale = float(self.param_str or 1)
        self.calls = ["setup"]

    def reshape(self, bottom, top):
        self.calls.append("reshape")
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls.append("forward")
        top[0].data[...] = self.scale * bottom[0].data ** 2

    def backward(self, top, propagate_down, bottom):
        self.calls.append("backward")
        if propagate_down[0]:
            bottom[0].diff[...] = 2 * self.scale * bottom[0].data * top[0].diff


class Affine(PythonLayerBase):
    """y = w * x + b with learnable per-channel w, b made by blobs.add_blob (pycaffe's way)."""

    def setup(self, bottom, top):
        channels = bottom[0].channels
        if not self.blobs:                       # weights come from a caffemodel, or start here
            self.blobs.add_blob(channels)
            self.blobs.add_blob(channels)
            self.blobs[0].data[...] = 1.0 + np.arange(channels)
            self.blobs[1].data[...] = 0.5

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        w, b = self.blobs[0].data, self.blobs[1].data
        top[0].data[...] = bottom[0].data * w[None, :, None, None] + b[None, :, None, None]

    def backward(self, top, propagate_down, bottom):
        dy, x = top[0].diff, bottom[0].data
        self.blobs[0].diff[...] += (dy * x).sum(axis=(0, 2, 3))     # parameters accumulate
        self.blobs[1].diff[...] += dy.sum(axis=(0, 2, 3))
        if propagate_down[0]:
            bottom[0].diff[...] = dy * self.blobs[0].data[None, :, None, None]


class DuckTyped:
    """No base class: pycaffe's protocol by duck typing; records the legacy blob accessors."""

    def setup(self, bottom, top):
        b = bottom[0]
        self.seen = (b.num, b.channels, b.height, b.width, b.count, tuple(b.shape))

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.sum()

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff[0]


class Broken(PythonLayerBase):
    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        raise ValueError("the user's forward failed")


def python_layer(name, param_str="", **fields):
    return PythonLayer(module=THIS_MODULE, layer=name, param_str=param_str, **fields)


# --- the protocol ---------------------------------------------------------------------------------

def test_protocol_calls_setup_once_then_reshape_forward_backward():
    layer = python_layer("ScaledSquare", "2.5")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = layer(x)
    np.testing.assert_allclose(y, 2.5 * x ** 2)
    assert y.dtype == np.float32
    dx = layer.backprop(np.ones_like(x))
    np.testing.assert_allclose(dx, 5 * x)
    assert layer.impl.calls == ["setup", "reshape", "forward", "backward"]
    assert layer.impl.param_str == "2.5" and layer.impl.phase == minicnn.TRAIN   # the default
    layer(np.ones((4, 3), np.float32))                  # a new shape: reshape again, no setup
    assert layer.impl.calls[-2:] == ["reshape", "forward"] and layer.impl.calls.count("setup") == 1


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.floats(0.25, 4.0))
def test_user_backward_passes_the_gradient_checker(n, c, scale):
    x = np.random.default_rng(n * 10 + c).standard_normal((n, c, 2, 2))
    check_layer_gradient(lambda: python_layer("ScaledSquare", repr(scale)), [x])


def test_learnable_blobs_made_with_add_blob_are_checked_trained_and_saved(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2))
    check_layer_gradient(lambda: python_layer("Affine"), [x])
    net_text = f"""
        name: "py"
        layer {{ name: "data" type: "Input" top: "data"
                input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
        layer {{ name: "affine" type: "Python" bottom: "data" top: "y"
                python_param {{ module: "{THIS_MODULE}" layer: "Affine" }} }}
        layer {{ name: "target" type: "Input" top: "target"
                input_param {{ shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} }} }}
        layer {{ name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }}
    """
    net = minicnn.Net(parse_text(net_text, "NetParameter"), minicnn.TRAIN)
    assert [b.shape for b in net.params["affine"]] == [(3,), (3,)]
    assert len(net.learnable_params) == 2
    net.forward(data=x, target=np.zeros_like(x))
    net.clear_param_diffs()
    net.backward()
    dy = net.blobs["y"].data / 2                         # EuclideanLoss: (y - t) / N, N = 2
    np.testing.assert_allclose(net.params["affine"][1].diff, dy.sum(axis=(0, 2, 3)), rtol=1e-5)
    net.params["affine"][0].data[...] = [7.0, 8.0, 9.0]
    path = str(tmp_path / "py.caffemodel")
    net.save(path)
    again = minicnn.Net(parse_text(net_text, "NetParameter"), path, minicnn.TEST)
    np.testing.assert_array_equal(again.params["affine"][0].data, [7.0, 8.0, 9.0])


def test_duck_typed_class_and_pycaffe_blob_accessors():
    layer = python_layer("DuckTyped")
    x = np.ones((2, 3, 4, 5), np.float32)
    assert layer(x).shape == (1,) and layer(x)[0] == 120
    assert layer.impl.seen == (2, 3, 4, 5, 120, (2, 3, 4, 5))
    np.testing.assert_array_equal(layer.backprop(np.array([2.0], np.float32)), 2 * x)


# --- in a net: a loss written by the user equals the built-in one ---------------------------------

PYLOSS = '''
import numpy as np
import minicnn as caffe


class EuclideanLossLayer(caffe.Layer):
    """Caffe's examples/pycaffe/layers/pyloss.py, ported by its import line alone:
    L = sum((a - b)^2) / 2N."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num
'''


def regression_net(loss_layer):
    return f"""
        name: "regression"
        layer {{ name: "data" type: "Input" top: "data" top: "target"
                input_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 dim: 2 }} }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "pred"
                inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 1 }}
                                       bias_filler {{ type: "constant" value: 0.1 }} }} }}
        layer {{ name: "loss" bottom: "pred" bottom: "target" top: "loss" {loss_layer} }}
    """


def test_user_loss_next_to_the_prototxt_trains_like_the_builtin(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pyloss_next_to_prototxt.py").write_text(PYLOSS)
    (folder / "py.prototxt").write_text(regression_net(
        'type: "Python" loss_weight: 1 python_param { module: "pyloss_next_to_prototxt" '
        'layer: "EuclideanLossLayer" }'))
    (folder / "builtin.prototxt").write_text(regression_net('type: "EuclideanLoss"'))
    assert str(folder) not in sys.path
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    nets = []
    for name in ("py", "builtin"):
        minicnn.set_random_seed(5)
        nets.append(minicnn.Net(str(folder / f"{name}.prototxt"), minicnn.TRAIN,
                                dtype=np.float64))
    assert str(folder) not in sys.path                   # the folder was only borrowed
    py, builtin = nets
    assert py.blob_loss_weights["loss"] == 1.0
    for _ in range(5):                                   # a few SGD steps, same path
        losses = []
        for net in nets:
            net.forward(data=x, target=t)
            losses.append(float(net.blobs["loss"].data.reshape(-1)[0]))
            net.clear_param_diffs()
            net.backward()
        # pyloss.py keeps its difference in float32, as the original does
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
        for a, b in zip(py.params["ip"], builtin.params["ip"]):
            np.testing.assert_allclose(a.diff, b.diff, rtol=1e-5, atol=1e-7)
            a.data[...] -= 0.1 * a.diff
            b.data[...] -= 0.1 * b.diff


def test_python_layer_without_loss_weight_is_not_a_loss(tmp_path):
    (tmp_path / "pyloss_not_a_loss.py").write_text(PYLOSS)
    (tmp_path / "net.prototxt").write_text(regression_net(
        'type: "Python" python_param { module: "pyloss_not_a_loss" layer: "EuclideanLossLayer" }'))
    net = minicnn.Net(str(tmp_path / "net.prototxt"), minicnn.TRAIN)
    assert net.blob_loss_weights["loss"] == 0.0 and "loss" in net.outputs


# --- errors -----------------------------------------------------------------------------------------

def net_with(python_param, tmp_path, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(f"""
        layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 }} }} }}
        layer {{ name: "user" type: "Python" bottom: "data" top: "out"
                python_param {{ {python_param} }} }}
    """)
    return str(path)


def test_missing_module_class_or_methods_are_clear_errors(tmp_path):
    with pytest.raises(NetError, match=r"layer 'user'.*'no_such_module_xyz' is not on sys.path "
                                       r"nor in the prototxt's folder"):
        minicnn.Net(net_with('module: "no_such_module_xyz" layer: "X"', tmp_path))
    with pytest.raises(NetError, match=r"has no class 'Nope'; its classes: .*ScaledSquare"):
        minicnn.Net(net_with(f'module: "{THIS_MODULE}" layer: "Nope"', tmp_path))
    with pytest.raises(NetError, match="needs both module and layer"):
        minicnn.Net(net_with('layer: "X"', tmp_path))
    (tmp_path / "half_a_layer.py").write_text("class Half:\n    def setup(self, b, t): pass\n")
    with pytest.raises(NetError, match="lacks reshape, forward, backward"):
        minicnn.Net(net_with('module: "half_a_layer" layer: "Half"', tmp_path))
    # minicnn's own layer base is not the Python layers' (minicnn.Layer, pycaffe's caffe.Layer)
    (tmp_path / "native_base_layer.py").write_text(
        "from minicnn.layer import Layer\n\nclass Loss(Layer):\n"
        "    def setup(self, bottom, top): pass\n")
    with pytest.raises(NetError, match=r"'Loss' of module 'native_base_layer' subclasses "
                                       r"minicnn.layer.Layer.*class Loss\(minicnn.Layer\)"):
        minicnn.Net(net_with('module: "native_base_layer" layer: "Loss"', tmp_path))
    (tmp_path / "bad_syntax_layer.py").write_text("def oops(:\n")
    with pytest.raises(NetError, match=r"bad_syntax_layer.*failed to import: SyntaxError"):
        minicnn.Net(net_with('module: "bad_syntax_layer" layer: "X"', tmp_path))


def test_a_missing_module_of_a_package_names_the_file_to_put_there(tmp_path):
    """py-faster-rcnn's and R-FCN's nets name 'rpn.proposal_layer' (lib/rpn/proposal_layer.py):
    the error had said to put rpn.py next to the prototxt, which can hold no proposal_layer. It
    names rpn/proposal_layer.py, and a package folder put there then loads."""
    param = 'module: "rpn_hh.proposal_layer" layer: "Same"'
    with pytest.raises(NetError) as e:
        minicnn.Net(net_with(param, tmp_path))
    message = str(e.value)
    assert f"put {os.path.join('rpn_hh', 'proposal_layer.py')} next to the prototxt" in message
    assert "rpn_hh.py" not in message
    (tmp_path / "rpn_hh").mkdir()
    (tmp_path / "rpn_hh" / "proposal_layer.py").write_text(
        "class Same:\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): pass\n")
    try:
        net = minicnn.Net(net_with(param, tmp_path))
        np.testing.assert_array_equal(net.forward(data=np.array([1.0, 2.0]))["out"], [1, 2])
    finally:
        for name in [m for m in sys.modules if m == "rpn_hh" or m.startswith("rpn_hh.")]:
            del sys.modules[name]


def test_errors_in_user_code_name_the_layer_method_and_line(tmp_path):
    net = minicnn.Net(net_with(f'module: "{THIS_MODULE}" layer: "Broken"', tmp_path))
    with pytest.raises(NetError) as info:
        net.forward(data=np.zeros(2, np.float32))
    message = str(info.value)
    assert "layer 'user' (Python" in message and f"{THIS_MODULE}.Broken: forward raised " \
        "ValueError: the user's forward failed" in message
    assert f"{os.path.abspath(__file__)}:" in message
    with pytest.raises(NetError, match="construction|setup raised Exception: ScaledSquare takes"):
        net_text = f"""
            layer {{ name: "a" type: "Input" top: "a" top: "b"
                    input_param {{ shape {{ dim: 2 }} }} }}
            layer {{ name: "user" type: "Python" bottom: "a" bottom: "b" top: "out"
                    python_param {{ module: "{THIS_MODULE}" layer: "ScaledSquare" }} }}"""
        minicnn.Net(parse_text(net_text, "NetParameter"))


# --- a .caffemodel never runs code -------------------------------------------------------------------

def test_reading_a_caffemodel_with_python_layers_imports_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "on_path"
    folder.mkdir()
    marker = tmp_path / "imported"
    (folder / "side_effect_layer_xyz.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("ran")
        class Evil:
            def setup(self, b, t): pass
            def reshape(self, b, t): t[0].reshape(b[0].shape)
            def forward(self, b, t): t[0].data[...] = b[0].data
            def backward(self, t, p, b): pass
    """))
    monkeypatch.syspath_prepend(str(folder))
    model = caffe_pb2.NetParameter(name="weights")
    ip = model.layer.add(name="ip", type="InnerProduct")
    ip.blobs.append(minicnn.blob.array_to_blob_proto(np.full((2, 2), 3.0, np.float32)))
    evil = model.layer.add(name="evil", type="Python")
    evil.python_param.module = "side_effect_layer_xyz"
    evil.python_param.layer = "Evil"
    evil.blobs.append(minicnn.blob.array_to_blob_proto(np.zeros(1, np.float32)))
    path = str(tmp_path / "evil.caffemodel")
    write_binary(model, path)
    net = minicnn.Net(parse_text("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y"
                inner_product_param { num_output: 2 bias_term: false } }""", "NetParameter"),
        path)
    np.testing.assert_array_equal(net.params["ip"][0].data, 3.0)
    assert not marker.exists() and "side_effect_layer_xyz" not in sys.modules
    # the same layer named in a prototxt is user code, run by design
    minicnn.Net(net_with('module: "side_effect_layer_xyz" layer: "Evil"', tmp_path))
    assert marker.read_text() == "ran"


def test_catalogue_lists_the_python_layer():
    from minicnn import catalogue
    entries = {e["type"]: e for e in catalogue.layer_entries()}
    assert "Python" in entries
    assert ("param_str", "string", '""') in entries["Python"]["params"]
    with pytest.raises(LayerError, match="needs both module and layer"):
        PythonLayer()(np.zeros(2))


FEED_LAYER = '''
import minicnn as caffe


class Feed(caffe.Layer):
    def setup(self, bottom, top):
        self.value = 0.0
        self.data_state = "the user's own"

    def set_data(self, value):
        self.value = value

    def reshape(self, bottom, top):
        top[0].reshape(2, 3)

    def forward(self, bottom, top):
        top[0].data[...] = self.value

    def backward(self, top, propagate_down, bottom):
        pass
'''


def test_net_layers_reach_the_users_python_object(tmp_path):
    """pycaffe's net.layers[i] of a Python layer is the user's object: py-faster-rcnn's
    train.py calls solver.net.layers[0].set_roidb(roidb) before solving."""
    (tmp_path / "feed_layer.py").write_text(FEED_LAYER)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "feed" type: "Python" top: "x" '
        'python_param { module: "feed_layer" layer: "Feed" } }\n')
    net = minicnn.Net(str(tmp_path / "net.prototxt"), minicnn.TEST)
    net.layers[0].set_data(5.0)
    np.testing.assert_array_equal(net.forward()["x"], np.full((2, 3), 5.0))
    assert net.layer_dict["feed"].value == 5.0 and net.layers[0].type == "Python"
    with pytest.raises(AttributeError, match="no attribute 'set_roidb'"):
        _ = net.layers[0].set_roidb
    # minicnn's own probes are not answered by the user's attributes of the same name
    assert not hasattr(net.layers[0], "data_state")
    # setting an attribute the user's layer has sets it there; a new name stays on minicnn's
    net.layers[0].value = 7.0
    np.testing.assert_array_equal(net.forward()["x"], np.full((2, 3), 7.0))
    net.layers[0].note = "mine"
    assert net.layers[0].note == "mine" and not hasattr(net.layers[0].impl, "note")
    net.layers[0].data_state = "minicnn's"
    assert net.layers[0].impl.data_state == "the user's own"
