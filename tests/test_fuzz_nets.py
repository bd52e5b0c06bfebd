"""Fuzzing the whole path from text to numbers: random mutations of a real net definition are
parsed, built into a Net and run forward and backward. Whatever the mutation, the only errors
allowed are minicnn's own (a file, layer or shape problem explained to the user), never a
NumPy traceback, a ZeroDivisionError or an out-of-memory crash."""

import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minicnn
import minicnn.blob
from minicnn.errors import MinicnnError
from minicnn.proto import parse_text

KITCHEN_SINK = """
name: "sink"
input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
input: "label" input_shape { dim: 2 }
force_backward: true
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 dilation: 1 group: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "dw" type: "Convolution" bottom: "conv" top: "dw"
  convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 2 dilation: 2
    weight_filler { type: "msra" } } }
layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "dw" top: "sum"
  eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm" type: "LRN" bottom: "pool" top: "norm"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 norm_region: ACROSS_CHANNELS } }
layer { name: "apool" type: "Pooling" bottom: "sum" top: "apool"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "norm" bottom: "apool" top: "cat"
  concat_param { axis: 1 } }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" flatten_param { axis: 1 } }
layer { name: "drop" type: "Dropout" bottom: "flat" top: "flat"
  dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc"
  inner_product_param { num_output: 5 axis: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" softmax_param { axis: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
  loss_param { ignore_label: 4 normalization: VALID } }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc"
  accuracy_param { top_k: 2 } include { phase: TEST } }
layer { name: "silence" type: "Silence" bottom: "prob" }
"""

ZOO = """
name: "zoo"
input: "data" input_shape { dim: 2 dim: 4 dim: 8 dim: 8 }
input: "target" input_shape { dim: 2 dim: 4 dim: 4 dim: 4 }
force_backward: true
layer { name: "deconv" type: "Deconvolution" bottom: "data" top: "up"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 4 bias_term: false
    weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop"
  crop_param { axis: 2 offset: 1 } }
layer { name: "prelu" type: "PReLU" bottom: "crop" top: "crop"
  prelu_param { channel_shared: false } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "crop" top: "dw"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
                      weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "elu" type: "ELU" bottom: "dw" top: "dw" elu_param { alpha: 0.5 } }
layer { name: "bias" type: "Bias" bottom: "dw" top: "dw" bias_param { axis: 1 num_axes: 1 } }
layer { name: "mvn" type: "MVN" bottom: "dw" top: "mvn" mvn_param { normalize_variance: true } }
layer { name: "slice" type: "Slice" bottom: "mvn" top: "s1"
  top: "s2" slice_param { axis: 1 slice_point: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "s1" top: "s1" }
layer { name: "tanh" type: "TanH" bottom: "s2" top: "s2" }
layer { name: "abs" type: "AbsVal" bottom: "s2" top: "abs" }
layer { name: "pow" type: "Power" bottom: "abs" top: "pow"
  power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "log" type: "Log" bottom: "pow" top: "log" log_param { base: 2 shift: 0.5 } }
layer { name: "exp" type: "Exp" bottom: "s1" top: "exp" exp_param { base: -1 scale: 0.5 } }
layer { name: "bnll" type: "BNLL" bottom: "exp" top: "bnll" }
layer { name: "cat" type: "Concat" bottom: "bnll" bottom: "log" top: "cat" }
layer { name: "interp" type: "Interp" bottom: "cat" top: "interp"
  interp_param { shrink_factor: 2 } }
layer { name: "spp" type: "SPP" bottom: "cat" top: "spp" spp_param { pyramid_height: 2 pool: MAX } }
layer { name: "reshape" type: "Reshape" bottom: "spp" top: "reshape"
  reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "argmax" type: "ArgMax" bottom: "reshape" top: "argmax" argmax_param { top_k: 2 } }
layer { name: "thr" type: "Threshold" bottom: "reshape" top: "thr"
  threshold_param { threshold: 0.5 } }
layer { name: "silence" type: "Silence" bottom: "argmax" bottom: "thr" }
layer { name: "l2" type: "EuclideanLoss" bottom: "interp" bottom: "target" top: "l2" }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "log" bottom: "s2" top: "sce"
  propagate_down: true propagate_down: false loss_param { normalization: BATCH_SIZE } }
"""

NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d+)?(e-?\d+)?")
INTEGERS = ["0", "1", "2", "3", "4", "5", "-1", "-2", "7", "13", "100", "4294967295", "99999999"]
REALS = ["0.5", "1e9", "2.5", "-0.5", "1e-30", "inf", "nan"]


@st.composite
def mutated_net(draw):
    """One of the kitchen-sink nets with a few numbers, names or characters changed."""
    text = draw(st.sampled_from([KITCHEN_SINK, ZOO]))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["integer"] * 6 + ["real", "word", "line", "char"]))
        if kind in ("integer", "real"):
            matches = list(NUMBER.finditer(text))
            m = draw(st.sampled_from(matches))
            new = draw(st.sampled_from(INTEGERS if kind == "integer" else REALS))
            text = text[:m.start()] + new + text[m.end():]
        elif kind == "word":
            words = ["MAX", "AVE", "SUM", "PROD", "WITHIN_CHANNEL", "TRAIN", "TEST", "FULL",
                     "BATCH_SIZE", "NONE", "STOCHASTIC"]
            old = draw(st.sampled_from(["MAX", "SUM", "ACROSS_CHANNELS", "VALID", "TEST"]))
            text = text.replace(old, draw(st.sampled_from(words)), 1)
        elif kind == "line":
            lines = text.splitlines()
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "\n".join(lines)
        else:
            pos = draw(st.integers(0, len(text) - 1))
            text = text[:pos] + draw(st.sampled_from(list('{}:" 0-'))) + text[pos + 1:]
    return text


@pytest.fixture(autouse=True)
def small_memory(monkeypatch):
    monkeypatch.setattr(minicnn.blob, "MAX_BLOB_BYTES", 64 << 20)    # absurd shapes: an error


def run_everything(text):
    try:
        param = parse_text(text)
        for phase in ("TRAIN", "TEST"):
            net = minicnn.Net(param, phase=phase)
            rng = np.random.default_rng(0)
            for name in net.inputs:
                blob = net.blobs[name]
                blob.data[...] = rng.integers(0, 5, blob.shape) if name == "label" \
                    else rng.random(blob.shape) if name == "target" \
                    else rng.standard_normal(blob.shape)
            net.forward_from_to()
            net.backward()
    except MinicnnError:
        pass


def test_the_unmutated_nets_run():
    net = minicnn.Net(parse_text(KITCHEN_SINK), phase="TEST")
    net.blobs["label"].data[...] = [1, 2]
    net.forward_from_to()
    assert np.isfinite(net.blobs["loss"].data) and net.blobs["acc"].data >= 0
    net = minicnn.Net(parse_text(ZOO), phase="TRAIN")
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((2, 4, 8, 8))
    net.blobs["target"].data[...] = 0.5
    with np.errstate(all="raise"):
        net.forward_from_to()
        grads = net.backward()
    assert np.isfinite(net.loss) and np.all(np.isfinite(grads["data"]))


@given(mutated_net())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_nets_raise_only_minicnn_errors(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            run_everything(text)


SMALL = KITCHEN_SINK.replace("force_backward: true", "")


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "sink.caffemodel"
    minicnn.Net(parse_text(SMALL)).save(path)
    return path.read_bytes()


@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.floats(0, 1)))
@settings(max_examples=150)
def test_mutated_caffemodels_raise_only_minicnn_errors(saved_weights, edits, cut,
                                                       tmp_path_factory):
    data = bytearray(saved_weights)
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[:int(cut * len(data))]
    path = tmp_path_factory.getbasetemp() / "mutated.caffemodel"
    path.write_bytes(bytes(data))
    net = minicnn.Net(parse_text(SMALL))
    try:
        net.copy_from(path)
    except MinicnnError:
        pass
