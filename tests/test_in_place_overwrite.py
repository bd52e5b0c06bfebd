"""A layer whose backward reads the data of a blob it computed (ReLU in place reads its own y
for x) gets a wrong gradient when a later layer computes in place on that blob too: by
backward, the blob holds the later layer's output. Caffe computes the same gradient and says
nothing; minicnn warns as it builds the net (Net._warn_overwritten_backward_data)."""

import warnings

import numpy as np
import pytest

import minicnn
from minicnn.proto import parse_text

torch = pytest.importorskip("torch")

HEAD = """input: "data" input_shape { dim: 4 dim: 3 dim: 5 dim: 5 }
input: "label" input_shape { dim: 4 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.3 } } }
"""
LOSS = """layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
LAYERS = {
    "relu1": 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n',
    "bn1": 'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n',
    "scale1": 'layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"\n'
              '  scale_param { bias_term: true filler { type: "gaussian" std: 1 }\n'
              '                bias_filler { type: "gaussian" std: 1 } } }\n',
    "drop1": 'layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }\n',
    "drop_fork": 'layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1"\n'
                 '  dropout_param { scale_train: false } }\n',
    "relu6": 'layer { name: "relu6" type: "ReLU6" bottom: "conv1" top: "conv1" }\n',
    "sig1": 'layer { name: "sig1" type: "Sigmoid" bottom: "conv1" top: "conv1" }\n',
    "pool1": 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"\n'
             '  pooling_param { pool: AVE kernel_size: 3 } }\n',
}


def build(tmp_path, names, loss=True, phase=minicnn.TRAIN, head="", dtype=np.float32):
    """The net data -> conv1 -> the named layers (in place on conv1) -> [fc -> loss], from a
    file (so that warnings name its lines), and the overwrite warnings its building gave."""
    path = tmp_path / "net.prototxt"
    path.write_text(head + HEAD + "".join(LAYERS[n] for n in names) + (LOSS if loss else ""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = minicnn.Net(str(path), phase=phase, dtype=dtype)
    return net, [str(w.message) for w in caught if "overwrites it in place" in str(w.message)]


def test_relu_then_batch_norm_and_scale_in_place_warns_naming_both_layers_and_the_blob(tmp_path):
    _, said = build(tmp_path, ["relu1", "bn1", "scale1"])
    assert len(said) == 1
    path = tmp_path / "net.prototxt"
    assert said[0].startswith(f"{path}:6: layer 'relu1' (ReLU, in place on 'conv1') reads "
                              "'conv1' in its backward, but layer 'bn1' (BatchNorm, "
                              f"{path}:7) overwrites it in place afterwards")
    assert "relu1's gradient is computed from bn1's output (Caffe does the same)" in said[0]
    assert said[0].endswith("give relu1 or bn1 a top of its own")


def test_sigmoid_then_an_in_place_scale_warns_that_caffe_differs(tmp_path):
    """Caffe's Sigmoid reads y from its top; minicnn's keeps a copy, so only Caffe's gradient
    comes from Scale's output."""
    _, said = build(tmp_path, ["sig1", "scale1"])
    assert len(said) == 1
    assert "layer 'sig1' (Sigmoid, in place on 'conv1'): Caffe's Sigmoid reads 'conv1'" in said[0]
    assert "layer 'scale1' (Scale" in said[0] and "training here differs from Caffe's" in said[0]
    assert said[0].endswith("give scale1 a top of its own")


@pytest.mark.parametrize("names", [
    ["bn1", "scale1", "relu1"],       # ResNet's order: BatchNorm and Scale keep what they read
    ["relu1", "drop1"],               # AlexNet's: Dropout keeps ReLU's mask (x > 0) as it was
    ["relu1", "pool1"],               # the next layer has its own top
])
def test_the_usual_in_place_chains_do_not_warn(tmp_path, names):
    _, said = build(tmp_path, names)
    assert said == []


def test_a_later_dropout_does_not_hide_a_batch_norm_after_it(tmp_path):
    _, said = build(tmp_path, ["relu1", "drop1", "bn1"])
    assert len(said) == 1 and "layer 'bn1' (BatchNorm" in said[0]


def test_dropout_warns_after_relu6_in_train_only(tmp_path):
    """ReLU6 reads y < 6 from its top; TRAIN's Dropout scales y by 1 / (1 - ratio), TEST's is
    the identity (with scale_train false it scales in TEST instead)."""
    head = "force_backward: true\n"
    _, said = build(tmp_path, ["relu6", "drop1"], head=head)
    assert len(said) == 1 and "layer 'drop1' (Dropout" in said[0]
    _, said = build(tmp_path, ["relu6", "drop1"], head=head, phase=minicnn.TEST)
    assert said == []
    _, said = build(tmp_path, ["relu6", "drop_fork"], head=head, phase=minicnn.TEST)
    assert len(said) == 1 and "layer 'drop1' (Dropout" in said[0]


def test_a_deploy_net_that_runs_no_backward_does_not_warn(tmp_path):
    _, said = build(tmp_path, ["relu1", "bn1", "scale1"], loss=False, phase=minicnn.TEST)
    assert said == []
    _, said = build(tmp_path, ["relu1", "bn1", "scale1"], loss=False, phase=minicnn.TEST,
                    head="force_backward: true\n")
    assert len(said) == 1


def test_the_gradient_is_the_one_from_the_final_data_as_caffe_computes_it(tmp_path):
    """Pinned so that nobody changes it silently: with relu1, bn1 and scale1 in place, ReLU's
    backward masks with scale1's output > 0 (Caffe's bottom[0]->cpu_data()), not with its own
    input > 0. PyTorch, with the mask taken from the final data, gives conv1's gradients."""
    net, _ = build(tmp_path, ["relu1", "bn1", "scale1"], dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5))
    label = rng.integers(0, 3, 4).astype(np.float64)
    net.forward(data=x, label=label)
    net.backward()
    w, b = (torch.tensor(p.data, requires_grad=True) for p in net.params["conv1"])
    gamma, beta = (torch.tensor(p.data).reshape(1, -1, 1, 1) for p in net.params["scale1"])
    fc_w, fc_b = (torch.tensor(p.data) for p in net.params["fc"])

    conv = torch.nn.functional.conv2d(torch.tensor(x), w, b)
    relu = torch.relu(conv)
    mean = relu.mean(dim=(0, 2, 3), keepdim=True)
    var = ((relu - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    final = (relu - mean) / torch.sqrt(var + 1e-5) * gamma + beta
    loss = torch.nn.functional.cross_entropy(final.reshape(4, -1) @ fc_w.T + fc_b,
                                             torch.tensor(label, dtype=torch.long))
    d_relu, = torch.autograd.grad(loss, relu, retain_graph=True)
    as_caffe = torch.autograd.grad(conv, (w, b), d_relu * (final > 0), retain_graph=True)
    true = torch.autograd.grad(loss, (w, b))

    for got, want, other in zip(net.params["conv1"], as_caffe, true):
        np.testing.assert_allclose(got.diff, want.numpy(), rtol=1e-9, atol=1e-12)
        assert np.abs(got.diff - other.numpy()).max() > 0.05 * np.abs(other.numpy()).max()


def test_a_layer_that_reads_its_top_warns_for_an_in_place_layer_after_it(tmp_path):
    """Softmax's backward reads y from its top, in place or not."""
    path = tmp_path / "net.prototxt"
    path.write_text(HEAD.replace('input: "label" input_shape { dim: 4 }\n', "") + """
layer { name: "prob" type: "Softmax" bottom: "conv1" top: "prob" }
layer { name: "pow" type: "Power" bottom: "prob" top: "prob" power_param { scale: 2 } }
layer { name: "sum" type: "Reduction" bottom: "pow" top: "sum" loss_weight: 1 }
""".replace('bottom: "pow"', 'bottom: "prob"'))
    with pytest.warns(UserWarning, match=r"layer 'prob' \(Softmax, top 'prob'\) reads 'prob' in "
                      r"its backward, but layer 'pow' \(Power.*give pow a top of its own"):
        minicnn.Net(str(path), phase=minicnn.TRAIN)


SPLIT_THEN_IN_PLACE = """input: "y" input_shape { dim: 2 dim: 3 }
layer { name: "split" type: "Split" bottom: "y" top: "a" top: "b" }
layer { name: "scale" type: "%s" bottom: "b" top: "b" %s }
layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
"""


def test_an_in_place_layer_on_a_split_top_warns_that_it_overwrites_the_bottom_and_siblings(
        tmp_path):
    # Caffe's Split shares its bottom's data with every top: Scale in place on 'b' scales 'y'
    # and 'a' too, so the loss compares 3y with 3y (0, not sum((y - 3y)^2) / 4)
    path = tmp_path / "net.prototxt"
    path.write_text(SPLIT_THEN_IN_PLACE % (
        "Scale", 'scale_param { filler { type: "constant" value: 3 } }'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = minicnn.Net(str(path), dtype=np.float64)
    said = [str(w.message) for w in caught]
    assert said == [f"{path}:3: layer 'scale' (Scale) computes in place on 'b', a top of Split "
                    "'split', whose tops share its bottom's values: it overwrites 'y', 'a' too, "
                    "and the layers that read them see scale's output (Caffe does the same); "
                    "give scale a top of its own"]
    net.forward(y=np.ones((2, 3)))
    assert net.loss == 0 and np.all(net.blobs["a"].data == 3)


def test_split_tops_kept_as_they_are_do_not_warn():
    out_of_place = SPLIT_THEN_IN_PLACE.replace('bottom: "b" top: "b"', 'bottom: "b" top: "c"')
    for text in (SPLIT_THEN_IN_PLACE % ("Dropout", ""),       # in the TEST phase: the identity
                 out_of_place.replace('bottom: "b" top: "loss"', 'bottom: "c" top: "loss"')
                 % ("Scale", "")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            minicnn.Net(parse_text(text), phase=minicnn.TEST)
