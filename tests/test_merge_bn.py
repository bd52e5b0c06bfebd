"""minicnn merge-bn (minicnn/merge_bn.py): BatchNorm, Scale, Bias and the fork's BN folded into
the convolution before them.

Every net here is built from text with random, non-trivial statistics (scale factors other than
1, small variances, eps other than the default) in float64: the merged net's outputs equal the
original's to 1e-10 relative, and the layers and blob names are the ones expected. Chains that
must stay (a second reader, a BatchNorm with batch statistics, shared weights) are checked to
stay. The real open_nsfw ResNet-50-1by2 is merged and compared in float32, with minicnn and
with OpenCV's Caffe importer reading the merged files; a MobileNet-SSD-style net is compared
through DetectionOutput.
"""

import os

import numpy as np
import pytest

from minicnn import Net
from minicnn.cli import main
from minicnn.merge_bn import merge_bn
from minicnn.proto import parse_text, write_binary, write_prototxt


def random_weights(net, rng, zero_factor=(), variances=(1e-3, 0.5)):
    """Random parameters for every layer of a float64 Net; BatchNorm statistics as Caffe stores
    them (sums times a scale factor s != 1, s = 0 for the layers in ``zero_factor``), variances
    drawn uniformly from the range ``variances`` (nonzero sums where s = 0)."""
    for name, layer in zip(net.layer_names, net.layers):
        if layer.type == "BatchNorm":
            c = layer.blobs[0].shape[0]
            s = 0.0 if name in zero_factor else rng.uniform(0.2, 5.0)
            # s = 0 with nonzero sums: Caffe's statistics are 0 all the same
            layer.blobs[0].data[...] = rng.normal(0, 1, c) * (s or 1)
            layer.blobs[1].data[...] = rng.uniform(*variances, c) * (s or 1)
            layer.blobs[2].data[...] = s
        elif layer.type == "BN":
            shape = layer.blobs[0].shape
            layer.blobs[0].data[...] = rng.normal(1, 0.5, shape)
            layer.blobs[1].data[...] = rng.normal(0, 1, shape)
            layer.blobs[2].data[...] = rng.normal(0, 1, shape)
            layer.blobs[3].data[...] = rng.uniform(1e-3, 0.5, shape)
        else:                   # weights ~ 1 / sqrt(fan in): outputs stay near 1 in size
            for k, blob in enumerate(layer.blobs):
                fan_in = np.prod(blob.shape[1:]) if k == 0 and len(blob.shape) > 1 else 1
                blob.data[...] = rng.normal(0, 1, blob.shape) / np.sqrt(fan_in)
    return net.to_proto()


def merged_pair(text, seed=0, **draw):
    """(original net, merged net, MergeResult), both nets float64 with the same weights."""
    rng = np.random.default_rng(seed)
    param = parse_text(text, "NetParameter")
    original = Net(param, phase="TEST", dtype=np.float64)
    weights = random_weights(original, rng, **draw)
    result = merge_bn(param, weights, dtype=np.float64)
    merged = Net(result.net, weights=result.weights, phase="TEST", dtype=np.float64)
    return original, merged, result


def assert_same_outputs(original, merged, seed=1, rtol=1e-10):
    rng = np.random.default_rng(seed)
    inputs = {name: rng.normal(0, 1, original.blobs[name].shape) for name in original.inputs}
    want = {k: v.copy() for k, v in original.forward(**inputs).items()}
    got = merged.forward(**inputs)
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=0,
                                   atol=rtol * np.abs(values).max(), err_msg=name)


def types(net):
    return [layer.type for layer in net.layers]


def conv_bn_scale(name, bottom, num_output, extra="", conv_type="Convolution", in_place=True,
                  bn_param=""):
    top = name if in_place else name + "_bn"
    return f"""
layer {{ name: "{name}" type: "{conv_type}" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {num_output} kernel_size: 3 pad: 1 {extra} }} }}
layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{top}"
  batch_norm_param {{ {bn_param} }} }}
layer {{ name: "{name}/scale" type: "Scale" bottom: "{top}" top: "{top}"
  scale_param {{ bias_term: true }} }}
layer {{ name: "{name}/relu" type: "ReLU" bottom: "{top}" top: "{top}" }}
"""


def data(c=3, h=7, w=6, n=2):
    return f'layer {{ name: "data" type: "Input" top: "data" ' \
           f'input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}\n'


def test_conv_bn_scale_relu_chains_fold_and_keep_the_outputs():
    text = (data() + conv_bn_scale("conv1", "data", 4, "bias_term: false",
                                   bn_param="eps: 0.001")
            + conv_bn_scale("conv2", "conv1", 5, "stride: 2")
            + """
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 6 } }
layer { name: "fc/bn" type: "BatchNorm" bottom: "fc" top: "fc" }
layer { name: "fc/scale" type: "Scale" bottom: "fc" top: "fc" scale_param { bias_term: true } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""")
    original, merged, result = merged_pair(text)
    assert types(merged) == ["Input", "Convolution", "ReLU", "Convolution", "ReLU",
                             "InnerProduct", "Softmax"]
    assert [(f.conv, f.folded, f.top, f.added_bias) for f in result.folds] == [
        ("conv1", ["conv1/bn", "conv1/scale"], "conv1", True),
        ("conv2", ["conv2/bn", "conv2/scale"], "conv2", False),
        ("fc", ["fc/bn", "fc/scale"], "fc", False)]
    assert result.kept == []
    assert list(merged.blobs) == ["data", "conv1", "conv2", "fc", "prob"]
    assert [layer.name for layer in result.weights.layer if layer.blobs] == [
        "conv1", "conv2", "fc"]
    assert merged.layer_dict["conv1"].blobs[1].shape == (4,)      # the bias it gained
    assert_same_outputs(original, merged)


def test_scale_factor_zero_means_zero_statistics():
    text = data() + conv_bn_scale("conv1", "data", 4)
    original, merged, result = merged_pair(text, zero_factor=("conv1/bn",))
    assert len(result.folds) == 1
    assert_same_outputs(original, merged)


@pytest.mark.parametrize("conv", [
    ('ConvolutionDepthwise', ""),
    ('DepthwiseConvolution', "group: 6"),
    ('Convolution', "group: 6"),
    ('Convolution', "group: 2"),
    ('ConvolutionDepthwise', "num_output: 12"),           # a channel multiplier of 2
])
def test_depthwise_and_grouped_convolutions(conv):
    conv_type, extra = conv
    num = "" if "num_output" in extra or conv_type == "ConvolutionDepthwise" else "num_output: 6"
    text = data(c=6) + f"""
layer {{ name: "dw" type: "{conv_type}" bottom: "data" top: "dw"
  convolution_param {{ {num} {extra} kernel_size: 3 pad: 1 bias_term: false }} }}
layer {{ name: "dw/bn" type: "BatchNorm" bottom: "dw" top: "dw" }}
layer {{ name: "dw/scale" type: "Scale" bottom: "dw" top: "dw" scale_param {{ bias_term: true }} }}
"""
    original, merged, result = merged_pair(text)
    assert [layer.type for layer in result.net.layer] == ["Input", conv_type]
    assert_same_outputs(original, merged)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_deconvolution_weights_are_scaled_along_their_second_axis(group):
    text = data(c=4) + f"""
layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up"
  convolution_param {{ num_output: 8 group: {group} kernel_size: 4 stride: 2 pad: 1 }} }}
layer {{ name: "up/bn" type: "BatchNorm" bottom: "up" top: "up_bn" }}
layer {{ name: "up/scale" type: "Scale" bottom: "up_bn" top: "up_scaled"
  scale_param {{ bias_term: true }} }}
layer {{ name: "out" type: "Sigmoid" bottom: "up_scaled" top: "out" }}
"""
    original, merged, result = merged_pair(text)
    assert types(merged) == ["Input", "Deconvolution", "Sigmoid"]
    # not in place: the convolution writes the last folded top, later layers read it
    assert result.folds[0].top == "up_scaled"
    assert list(merged.blobs) == ["data", "up_scaled", "out"]
    assert_same_outputs(original, merged)


@pytest.mark.parametrize("transpose", ["false", "true"])
def test_inner_product_with_batchnorm(transpose):
    text = data(c=3, h=2, w=2) + f"""
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param {{ num_output: 5 transpose: {transpose} bias_term: false }} }}
layer {{ name: "fc/bn" type: "BatchNorm" bottom: "fc" top: "fc" }}
layer {{ name: "fc/scale" type: "Scale" bottom: "fc" top: "fc"
  scale_param {{ axis: -1 num_axes: -1 }} }}
"""
    original, merged, _ = merged_pair(text)
    assert types(merged) == ["Input", "InnerProduct"]
    assert_same_outputs(original, merged)


def test_batchnorm_alone_scale_alone_bias_and_the_fork_bn():
    text = data(c=3) + """
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "c1/bn" type: "BatchNorm" bottom: "c1" top: "c1" batch_norm_param { eps: 0.01 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 5 kernel_size: 3 } }
layer { name: "c2/scale" type: "Scale" bottom: "c2" top: "c2" }
layer { name: "c2/bias" type: "Bias" bottom: "c2" top: "c2" }
layer { name: "c2/bn" type: "BatchNorm" bottom: "c2" top: "c2" }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
  convolution_param { num_output: 3 kernel_size: 1 bias_term: false } }
layer { name: "c3/bn" type: "BN" bottom: "c3" top: "c3" bn_param { eps: 0.0001 } }
layer { name: "c3/scale" type: "Scale" bottom: "c3" top: "c3" scale_param { bias_term: true } }
"""
    original, merged, result = merged_pair(text)
    assert types(merged) == ["Input", "Convolution", "Convolution", "Convolution"]
    assert [f.folded for f in result.folds] == [["c1/bn"], ["c2/scale", "c2/bias", "c2/bn"],
                                                ["c3/bn", "c3/scale"]]
    assert_same_outputs(original, merged)


def test_what_cannot_be_folded_exactly_stays():
    text = data(c=3) + """
layer { name: "ip_gamma" type: "Input" top: "ip_gamma" input_param { shape { dim: 3 } } }
layer { name: "two" type: "Convolution" bottom: "data" top: "two"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "two/bn" type: "BatchNorm" bottom: "two" top: "two_bn" }
layer { name: "raw" type: "ReLU" bottom: "two" top: "raw" }
layer { name: "c" type: "Convolution" bottom: "two_bn" top: "c"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "c/bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "c/relu" type: "ReLU" bottom: "c" top: "c_relu" }
layer { name: "c/scale" type: "Scale" bottom: "c" top: "c_sc" }
layer { name: "batch" type: "Convolution" bottom: "c_sc" top: "batch"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "batch/bn" type: "BatchNorm" bottom: "batch" top: "batch"
  batch_norm_param { use_global_stats: false } }
layer { name: "s1" type: "Convolution" bottom: "batch" top: "s1"
  param { name: "shared_w" } param { name: "shared_b" }
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "s1/bn" type: "BatchNorm" bottom: "s1" top: "s1" }
layer { name: "s2" type: "Convolution" bottom: "batch" top: "s2"
  param { name: "shared_w" } param { name: "shared_b" }
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "s1" bottom: "s2" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip"
  inner_product_param { num_output: 3 } }
layer { name: "ip/bn" type: "BatchNorm" bottom: "ip" top: "ip" }
layer { name: "ip/scale" type: "Scale" bottom: "ip" bottom: "ip_gamma" top: "ip" }
"""
    original, merged, result = merged_pair(text)
    # c/bn folds into c (its output is read by the Scale and a ReLU: the Scale stays)
    assert [f.folded for f in result.folds] == [["c/bn"], ["ip/bn"]]
    kept = "\n".join(result.kept)
    assert "two/bn" in kept and "2 readers" in kept
    assert "c/scale" in kept
    assert "batch/bn" in kept and "use_global_stats" in kept
    assert "s1/bn" in kept and "shared" in kept
    assert "ip/scale" in kept and "several bottoms" in kept
    assert len(merged.layers) == len(original.layers) - 2
    assert_same_outputs(original, merged)


def test_an_in_place_convolution_and_an_inner_product_on_another_axis_keep_their_bn():
    text = data(c=3, h=2, w=2) + """
layer { name: "c" type: "Convolution" bottom: "data" top: "data"
  convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "c/bn" type: "BatchNorm" bottom: "data" top: "data" }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 axis: 2 } }
layer { name: "ip/bn" type: "BatchNorm" bottom: "ip" top: "ip" }
"""
    original, merged, result = merged_pair(text)
    assert result.folds == []
    kept = "\n".join(result.kept)
    assert "kept c/bn: c (Convolution) cannot take it: it runs in place" in kept
    assert "kept ip/bn: ip (InnerProduct) cannot take it: its inner_product_param.axis is 2" \
        in kept
    assert types(merged) == types(original)
    assert_same_outputs(original, merged)


def test_a_split_between_batchnorm_and_scale_keeps_the_scale():
    text = data(c=3) + """
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "c/bn" type: "BatchNorm" bottom: "c" top: "c_bn" }
layer { name: "c/scale" type: "Scale" bottom: "c_bn" top: "c_sc" }
layer { name: "other" type: "TanH" bottom: "c_bn" top: "other" }
"""
    original, merged, result = merged_pair(text)
    assert [f.folded for f in result.folds] == [["c/bn"]]
    assert result.folds[0].top == "c_bn"
    assert [layer.type for layer in result.net.layer] == ["Input", "Convolution", "Scale",
                                                          "TanH"]
    assert_same_outputs(original, merged)


def test_a_net_trained_here_merges_with_the_statistics_it_gathered():
    """BatchNorm's sums and scale factor as training leaves them (s = 1 + 0.999 + ...)."""
    body = conv_bn_scale("conv1", "data", 4, "bias_term: false") + conv_bn_scale(
        "conv2", "conv1", 4, "stride: 2") + """
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""
    for name in ("conv1", "conv2"):
        body = body.replace(f'top: "{name}"\n  convolution_param {{',
                            f'top: "{name}"\n  convolution_param {{ weight_filler '
                            '{ type: "msra" } ')
    train = data(n=8) + """
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
""" + body + """
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
    deploy = data(n=8) + body + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }'
    rng = np.random.default_rng(7)
    net = Net(parse_text(train, "NetParameter"), phase="TRAIN", dtype=np.float64)
    losses = []
    for _ in range(5):
        net.blobs["data"].data[...] = rng.normal(0, 1, net.blobs["data"].shape)
        net.blobs["label"].data[...] = rng.integers(0, 3, 8)
        net.clear_param_diffs()
        losses.append(net.forward_backward())
        for blob in net.learnable_params:
            blob.diff[...] *= 0.1
        net.update()
    assert np.all(np.isfinite(losses))
    factor = net.layer_dict["conv1/bn"].blobs[2].data[0]
    assert 4.9 < factor < 5
    param = parse_text(deploy, "NetParameter")
    result = merge_bn(param, net.to_proto(), dtype=np.float64)
    assert len(result.folds) == 2
    original = Net(param, weights=net.to_proto(), dtype=np.float64)
    merged = Net(result.net, weights=result.weights, dtype=np.float64)
    assert_same_outputs(original, merged)


def test_layers_of_other_phases_count_as_readers_and_writers():
    text = data(c=3) + """
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "train_only" type: "Sigmoid" bottom: "data" top: "c_bn" include { phase: TRAIN } }
layer { name: "c/bn" type: "BatchNorm" bottom: "c" top: "c_bn" }
layer { name: "d" type: "Convolution" bottom: "data" top: "d"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "d/bn" type: "BatchNorm" bottom: "d" top: "d" }
layer { name: "d/train" type: "TanH" bottom: "d" top: "d_train" include { phase: TRAIN } }
layer { name: "d/scale" type: "Scale" bottom: "d" top: "d" }
"""
    original, merged, result = merged_pair(text)
    assert [f.folded for f in result.folds] == [["d/bn"]]
    kept = "\n".join(result.kept)
    assert "c/bn" in kept and "uses its top 'c_bn'" in kept
    assert "d/scale" in kept and "2 readers" in kept
    assert [layer.name for layer in result.net.layer] == [
        "data", "c", "train_only", "c/bn", "d", "d/train", "d/scale"]
    assert_same_outputs(original, merged)


def mobilenet_ssd(width=8, classes=21, size=300):
    """MobileNet-SSD's deploy net with its BatchNorm and Scale layers, as chuanqi305's
    template/MobileNetSSD_deploy_bn_template.prototxt lays it out (legacy input, depthwise
    convolutions as Convolution with group and engine CAFFE, conv0 .. conv13, the extra layers
    conv14_1 .. conv17_2, heads on conv11, conv13, conv14_2 .. conv17_2, DetectionOutput), with
    every channel count divided by ``width``."""
    def block(name, bottom, out, kernel=1, stride=1, group=0):
        pad = kernel // 2
        extra = f"group: {group} engine: CAFFE " if group else ""
        return f"""
layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  param {{ lr_mult: 0.1 decay_mult: 0.1 }}
  convolution_param {{ num_output: {out} bias_term: false pad: {pad} kernel_size: {kernel}
    stride: {stride} {extra}weight_filler {{ type: "msra" }} }} }}
layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}"
  param {{ lr_mult: 0 decay_mult: 0 }} param {{ lr_mult: 0 decay_mult: 0 }}
  param {{ lr_mult: 0 decay_mult: 0 }} }}
layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}"
  param {{ lr_mult: 0.1 decay_mult: 0.0 }} param {{ lr_mult: 0.2 decay_mult: 0.0 }}
  scale_param {{ filler {{ value: 1 }} bias_term: true bias_filler {{ value: 0 }} }} }}
layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}
"""
    text = (f'name: "MobileNet-SSD"\ninput: "data"\ninput_shape {{ dim: 1 dim: 3 dim: {size} '
            f'dim: {size} }}\n' + block("conv0", "data", 32 // width, 3, 2))
    channels, bottom = 32 // width, "conv0"
    for i, (out, stride) in enumerate([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
                                       (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)],
                                      start=1):
        text += block(f"conv{i}/dw", bottom, channels, 3, stride, group=channels)
        channels, bottom = out // width, f"conv{i}"
        text += block(bottom, f"conv{i}/dw", channels)
    for i, (mid, out) in enumerate([(256, 512), (128, 256), (128, 256), (64, 128)], start=14):
        text += block(f"conv{i}_1", bottom, mid // width)
        text += block(f"conv{i}_2", f"conv{i}_1", out // width, 3, 2)
        bottom = f"conv{i}_2"
    heads = ["conv11", "conv13", "conv14_2", "conv15_2", "conv16_2", "conv17_2"]
    sizes = [60, 105, 150, 195, 240, 285, 300]
    for k, head in enumerate(heads):
        priors = 3 if k == 0 else 6
        box = f"min_size: {sizes[k]} " + ("aspect_ratio: 2 " if k == 0 else
                                         f"max_size: {sizes[k + 1]} aspect_ratio: 2 "
                                         "aspect_ratio: 3 ")
        for part, out in (("loc", 4 * priors), ("conf", classes * priors)):
            text += f"""
layer {{ name: "{head}_mbox_{part}" type: "Convolution" bottom: "{head}" top: "{head}_mbox_{part}"
  convolution_param {{ num_output: {out} kernel_size: 1 }} }}
layer {{ name: "{head}_mbox_{part}_perm" type: "Permute" bottom: "{head}_mbox_{part}"
  top: "{head}_mbox_{part}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{head}_mbox_{part}_flat" type: "Flatten" bottom: "{head}_mbox_{part}_perm"
  top: "{head}_mbox_{part}_flat" flatten_param {{ axis: 1 }} }}
"""
        text += f"""
layer {{ name: "{head}_mbox_priorbox" type: "PriorBox" bottom: "{head}" bottom: "data"
  top: "{head}_mbox_priorbox" prior_box_param {{ {box} flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 }} }}
"""
    for part, axis in (("loc", 1), ("conf", 1), ("priorbox", 2)):
        bottoms = " ".join(f'bottom: "{head}_mbox_{part}' + ('"' if part == "priorbox"
                                                            else '_flat"') for head in heads)
        text += f"""layer {{ name: "mbox_{part}" type: "Concat" {bottoms} top: "mbox_{part}"
  concat_param {{ axis: {axis} }} }}
"""
    return text + f"""
layer {{ name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
  reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }} }}
layer {{ name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape"
  top: "mbox_conf_softmax" softmax_param {{ axis: 2 }} }}
layer {{ name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax"
  top: "mbox_conf_flatten" flatten_param {{ axis: 1 }} }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc"
  bottom: "mbox_conf_flatten" bottom: "mbox_priorbox" top: "detection_out"
  include {{ phase: TEST }}
  detection_output_param {{ num_classes: {classes} share_location: true background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: 100 }} code_type: CENTER_SIZE keep_top_k: 100
    confidence_threshold: 0.25 }} }}
"""


def test_mobilenet_ssd_detects_the_same_boxes_after_merging():
    # variances near 1: 35 blocks of 1 / sqrt(1e-3) would overflow DetectionOutput's exp
    original, merged, result = merged_pair(mobilenet_ssd(), variances=(0.3, 1.5))
    assert len(result.folds) == 35                    # conv0, 13 x (dw, pointwise), 8 extra
    assert len(merged.layers) == len(original.layers) - 70
    assert "BatchNorm" not in types(merged) and "Scale" not in types(merged)
    x = np.random.default_rng(3).normal(0, 1, (1, 3, 300, 300))
    want = original.forward(data=x)["detection_out"].copy()
    got = merged.forward(data=x)["detection_out"]
    assert want.shape == got.shape and want.shape[2] > 3
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    for blob in ("mbox_loc", "mbox_conf_softmax"):
        np.testing.assert_allclose(merged.blobs[blob].data, original.blobs[blob].data,
                                   rtol=0, atol=1e-10 * np.abs(original.blobs[blob].data).max())


def _write_pair(tmp_path, text, seed=0):
    param = parse_text(text, "NetParameter")
    net = Net(param, phase="TEST")
    weights = random_weights(net, np.random.default_rng(seed))
    model, caffemodel = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    write_prototxt(param, model)
    write_binary(weights, caffemodel)
    return str(model), str(caffemodel)


def test_the_command_writes_both_files_and_opencv_reads_them(tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    text = data(n=1) + conv_bn_scale("conv1", "data", 4, "bias_term: false") \
        + conv_bn_scale("conv2", "conv1", 4)
    model, weights = _write_pair(tmp_path, text)
    out_model, out_weights = str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel")
    assert main(["merge-bn", model, weights, out_model, out_weights]) == 0
    printed = capsys.readouterr().out
    assert "merged conv1/bn + conv1/scale into conv1 (Convolution) (bias added)" in printed
    assert "4 layer(s) merged into 2 layer(s); 5 layers left" in printed
    x = np.random.default_rng(5).normal(0, 1, (1, 3, 7, 6)).astype(np.float32)
    want = Net(model, weights=weights).forward(data=x)["conv2"].copy()
    got = Net(out_model, weights=out_weights).forward(data=x)["conv2"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    cv_net = cv2.dnn.readNetFromCaffe(out_model, out_weights)
    cv_net.setInput(x)
    np.testing.assert_allclose(cv_net.forward("conv2/relu"), got, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())


def test_the_command_never_overwrites_its_inputs_and_names_bad_files(tmp_path, capsys):
    model, weights = _write_pair(tmp_path, data() + conv_bn_scale("c", "data", 4))
    assert main(["merge-bn", model, weights, model, str(tmp_path / "o.caffemodel")]) == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert main(["merge-bn", model, weights, str(tmp_path / "o.prototxt"), weights]) == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert not (tmp_path / "o.prototxt").exists()
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "c" type: "Convolution" bottom: "nothing" top: "c" }\n')
    assert main(["merge-bn", str(bad), weights, str(tmp_path / "o.prototxt"),
                 str(tmp_path / "o.caffemodel")]) == 1
    assert "nothing" in capsys.readouterr().err
    assert not (tmp_path / "o.prototxt").exists()


def test_weights_of_another_net_are_an_error_not_a_merged_net_of_fillers(tmp_path, capsys):
    # the net's layers are looked up by name in the weights file; one that names none of them
    # (another net's snapshot) used to give "0 layer(s) merged" and a caffemodel of the
    # fillers' values, whose outputs are NaN where BatchNorm's stored statistics are zeros
    model, _ = _write_pair(tmp_path, data() + conv_bn_scale("c", "data", 4)
                           + conv_bn_scale("d", "c", 4))
    other = Net(parse_text(data() + conv_bn_scale("x", "data", 4), "NetParameter"), phase="TEST")
    write_binary(random_weights(other, np.random.default_rng(0)), tmp_path / "other.caffemodel")
    out = [str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")]
    assert main(["merge-bn", model, str(tmp_path / "other.caffemodel"), *out]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/other.caffemodel: holds no blobs for any of the 6 layers with " \
           f"parameters of {model} (c, c/bn, c/scale, d, d/bn and 1 more): are these its " \
           "weights?" in err
    assert not any(os.path.exists(p) for p in out)
    # a weights file missing some layers merges what it has and says which layers it lacked
    param = parse_text(data() + conv_bn_scale("c", "data", 4) + conv_bn_scale("d", "c", 4),
                       "NetParameter")
    weights = random_weights(Net(param, phase="TEST", dtype=np.float64),
                             np.random.default_rng(1))
    kept = [layer for layer in weights.layer if not layer.name.startswith("d")]
    weights.ClearField("layer")
    weights.layer.extend(kept)
    with pytest.warns(UserWarning, match=r"the weights: holds no blobs for 3 of the 6 layers "
                                         r"with parameters of the net \(d, d/bn, d/scale\)"):
        result = merge_bn(param, weights, dtype=np.float64)
    assert [fold.conv for fold in result.folds] == ["c"]


def test_open_nsfw_resnet50_merged_agrees_with_itself_and_opencv(open_nsfw, tmp_path):
    deploy, weights = open_nsfw
    out_model, out_weights = str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel")
    assert main(["merge-bn", deploy, weights, out_model, out_weights]) == 0
    original, merged = Net(deploy, weights=weights), Net(out_model, weights=out_weights)
    assert len(original.layers) - len(merged.layers) == 106
    assert not {"BatchNorm", "Scale"} & set(types(merged))
    x = np.random.default_rng(0).uniform(-120, 120, (2, 3, 224, 224)).astype(np.float32)
    want = original.forward(data=x)["prob"].copy()
    got = merged.forward(data=x)["prob"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    logits = [net.blobs["fc_nsfw"].data.copy() for net in (original, merged)]
    np.testing.assert_allclose(logits[1], logits[0], rtol=0,
                               atol=1e-5 * np.abs(logits[0]).max())
    cv2 = pytest.importorskip("cv2")
    cv_net = cv2.dnn.readNetFromCaffe(out_model, out_weights)
    cv_net.setInput(x)
    np.testing.assert_allclose(cv_net.forward("prob"), got, rtol=0, atol=1e-6)
