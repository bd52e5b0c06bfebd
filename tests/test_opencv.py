"""Forward agreement with an independent engine: OpenCV's Caffe importer (opencv-python-headless<5).

Each case writes a prototxt and a .caffemodel (with minicnn's own writer, so OpenCV's protobuf
reader also checks our wire format), runs both engines on the same input, and compares every blob
OpenCV can report, by the norm-wise relative error ||ours - opencv|| / ||opencv|| <= 1e-5.
Left out, because OpenCV itself differs from Caffe there: LRN with k != 1 and InnerProduct with
transpose (shown below as known disagreements), pad_w given without pad_h (OpenCV then ignores
it), and Caffe's pooling windows that lie wholly outside the image (OpenCV clips them away).
"""

import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn

cv2 = pytest.importorskip("cv2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5


def relative_error(ours, theirs):
    theirs = np.asarray(theirs).reshape(ours.shape)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def randomize(net, rng):
    """Weights that keep activations in a sane range (He init), and valid BatchNorm statistics."""
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        if kind == "BatchNorm":
            blobs[0].data[...] = rng.standard_normal(blobs[0].shape) * 0.1
            blobs[1].data[...] = rng.uniform(0.5, 2.0, blobs[1].shape)
            blobs[2].data[...] = 1.0
            continue
        fan_in = max(1, int(np.prod(blobs[0].shape[1:])))
        gain = 2.0 if kind == "Convolution" else 0.5       # keep logits moderate, as trained
        blobs[0].data[...] = rng.standard_normal(blobs[0].shape) * np.sqrt(gain / fan_in)
        if kind == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].shape)
        for blob in blobs[1:]:
            blob.data[...] = rng.standard_normal(blob.shape) * 0.1


def run_both(tmp_path, prototxt, input_shape, seed=0, weights=None):
    """(minicnn net, {blob: (ours, opencv)}) for every non-input blob OpenCV can produce."""
    rng = np.random.default_rng(seed)
    model = tmp_path / "net.prototxt"
    model.write_text(prototxt)
    net = minicnn.Net(str(model), weights)
    if weights is None:
        randomize(net, rng)
        weights = str(tmp_path / "net.caffemodel")
        net.save(weights)
    x = (rng.standard_normal(input_shape) * 2).astype(np.float32)
    net.forward(data=x)
    cv_net = cv2.dnn.readNetFromCaffe(str(model), weights)
    cv_net.enableFusion(False)                  # else BN/Scale/ReLU vanish into the conv
    cv_net.setInput(x, "data")
    last_writer = {}                            # blob -> the layer whose output it finally holds
    for layer, tops in net.top_names.items():
        if not layer.endswith("_split") and net.layer_dict[layer].type != "Input":
            for top in tops:
                last_writer[top] = layer
    layers = list(dict.fromkeys(last_writer.values()))
    outputs = cv_net.forward(layers)
    return net, {blob: (net.blobs[blob].data, outputs[layers.index(layer)])
                 for blob, layer in last_writer.items()}


def assert_agree(pairs):
    errors = {blob: relative_error(ours, theirs) for blob, (ours, theirs) in pairs.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"blob '{worst}' differs by {errors[worst]:.3g}"


def single_layer_net(body, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'name: "t"\ninput: "data"\ninput_shape {{ {dims} }}\n{body}\n'


LAYER_CASES = {
    "conv": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
            'convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }',
    "conv_no_bias_rect": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                         'convolution_param { num_output: 2 kernel_h: 1 kernel_w: 3 pad_h: 0 '
                         'pad_w: 1 '
                         'stride_h: 2 stride_w: 1 bias_term: false } }',
    "conv_stride_gt_kernel": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                             'convolution_param { num_output: 4 kernel_size: 2 stride: 3 } }',
    "conv_atrous_depthwise": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                             'convolution_param { num_output: 6 kernel_size: 3 dilation: 2 '
                             'pad: 2 group: 6 } }',
    "conv_group": 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                  'convolution_param { num_output: 4 kernel_size: 3 group: 2 } }',
    "pool_max_ceil": 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                     'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }',
    "pool_max_drop_last_window": 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                                 'pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }',
    "pool_ave_pad": 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                    'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }',
    "pool_global": 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                   'pooling_param { pool: AVE global_pooling: true } }',
    "lrn_across": 'layer { name: "l" type: "LRN" bottom: "data" top: "l" '
                  'lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 } }',
    "lrn_within": 'layer { name: "l" type: "LRN" bottom: "data" top: "l" '
                  'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }',
    "inner_product": 'layer { name: "f" type: "InnerProduct" bottom: "data" top: "f" '
                     'inner_product_param { num_output: 5 } }',
    "leaky_relu": 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" '
                  'relu_param { negative_slope: 0.1 } }',
    "softmax": 'layer { name: "s" type: "Softmax" bottom: "data" top: "s" }',
    "batch_norm_scale_in_place": 'layer { name: "b" type: "BatchNorm" bottom: "data" top: "b" }'
                                 'layer { name: "s" type: "Scale" bottom: "b" top: "b" '
                                 'scale_param { bias_term: true } }',
    "eltwise_sum_coeff": 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'
                         'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "r" top: "e" '
                         'eltwise_param { coeff: 1 coeff: -0.5 } }',
    "eltwise_prod": 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'
                    'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "r" top: "e" '
                    'eltwise_param { operation: PROD } }',
    "eltwise_max": 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" '
                   'relu_param { negative_slope: 0.5 } }'
                   'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "r" top: "e" '
                   'eltwise_param { operation: MAX } }',
    "concat_flatten": 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'
                      'layer { name: "c" type: "Concat" bottom: "data" bottom: "r" top: "c" }'
                      'layer { name: "f" type: "Flatten" bottom: "c" top: "f" }',
    "dropout_is_identity_in_test": 'layer { name: "d" type: "Dropout" bottom: "data" top: "d" }',
    # drawn by a differential fuzzer over more layer types (OpenCV differs from Caffe, so left
    # out: Log's log_param, MVN's eps (sqrt(var + eps) for sqrt(var) + eps), Interp's pad_end
    # and zoom with shrink, Scale with a 2nd bottom and bias_term or a negative axis,
    # Deconvolution with dilation or pad >= kernel, BatchNorm with batch statistics)
    "deconv_group_stride": 'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
                           'convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 '
                           'group: 2 } }',
    "prelu_per_channel": 'layer { name: "p" type: "PReLU" bottom: "data" top: "p" }',
    "elu_alpha": 'layer { name: "e" type: "ELU" bottom: "data" top: "e" elu_param { alpha: 0.7 } }',
    "bnll": 'layer { name: "b" type: "BNLL" bottom: "data" top: "b" }',
    "power": 'layer { name: "p" type: "Power" bottom: "data" top: "p" '
             'power_param { power: 2 scale: -0.5 shift: 1.5 } }',
    "exp_base_scale_shift": 'layer { name: "e" type: "Exp" bottom: "data" top: "e" '
                            'exp_param { base: 2 scale: 0.5 shift: -0.3 } }',
    "softmax_axis_2": 'layer { name: "s" type: "Softmax" bottom: "data" top: "s" '
                      'softmax_param { axis: 2 } }',
    "mvn_across_channels": 'layer { name: "m" type: "MVN" bottom: "data" top: "m" '
                           'mvn_param { across_channels: true } }',
    "shuffle_channel": 'layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "s" '
                       'shuffle_channel_param { group: 3 } }',
    "interp_zoom": 'layer { name: "i" type: "Interp" bottom: "data" top: "i" '
                   'interp_param { zoom_factor: 2 } }',
    "reshape_copy_and_infer": 'layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
                              'reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }',
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_agrees_with_opencv(case, tmp_path):
    _, pairs = run_both(tmp_path, single_layer_net(LAYER_CASES[case], (2, 6, 9, 11)), (2, 6, 9, 11))
    assert_agree(pairs)


@st.composite
def conv_pool_cases(draw):
    c = draw(st.integers(1, 4))
    h, w = draw(st.integers(3, 12)), draw(st.integers(3, 12))
    k, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    if draw(st.booleans()):
        group = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
        d = draw(st.integers(1, 2))
        if (h + 2 * p - d * (k - 1) - 1) < 0 or (w + 2 * p - d * (k - 1) - 1) < 0:
            d, p = 1, k
        body = (f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" '
                f'convolution_param {{ num_output: {group * draw(st.integers(1, 2))} '
                f'kernel_size: {k} stride: {s} pad: {p} dilation: {d} group: {group} }} }}')
    else:
        k = max(k, p + 1)                      # Caffe needs pad < kernel
        for size in (h, w):                    # skip Caffe's windows wholly outside the image
            out = -(-(size + 2 * p - k) // s) + 1          # (OpenCV clips them, Caffe does not)
            assume(not (p == 0 and (out - 1) * s >= size) and size + 2 * p >= k)
        pool = draw(st.sampled_from(["MAX", "AVE"]))
        body = (f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" '
                f'pooling_param {{ pool: {pool} kernel_size: {k} stride: {s} pad: {p} }} }}')
    return body, (2, c, h, w)


@given(conv_pool_cases(), st.integers(0, 1000))
@settings(max_examples=40)
def test_drawn_conv_and_pool_geometries_agree(case, seed):
    import tempfile
    from pathlib import Path
    body, shape = case
    with tempfile.TemporaryDirectory() as tmp:
        _, pairs = run_both(Path(tmp), single_layer_net(body, shape), shape, seed)
    assert_agree(pairs)


@pytest.mark.parametrize("path", ["lenet/lenet.prototxt", "googlenet/deploy.prototxt",
                                  "resnet50/deploy.prototxt", "caffenet/deploy.prototxt",
                                  "mobilenet/deploy.prototxt"])
def test_whole_nets_agree_blob_by_blob(path, tmp_path):
    prototxt = open(os.path.join(REPO, "models", path)).read()
    net_shape = minicnn.Net(os.path.join(REPO, "models", path)).blobs["data"].shape
    _, pairs = run_both(tmp_path, prototxt, (1, *net_shape[1:]))
    assert len(pairs) >= 7
    assert_agree(pairs)


def test_real_pretrained_resnet_agrees_blob_by_blob(open_nsfw, tmp_path):
    """Yahoo's open_nsfw ResNet-50-1by2 with its real weights (its .caffemodel holds the training
    net: MemoryData, Split and loss layers the deploy net lacks are skipped by name)."""
    deploy, weights = open_nsfw
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
    image = np.stack([yy, xx, (yy + xx) / 2])[None] - 110            # a smooth BGR-like ramp
    net = minicnn.Net(deploy, weights, minicnn.TEST)
    assert net.params["conv_1"][0].data.std() > 0
    _, pairs = run_both(tmp_path, open(deploy).read(), (1, 3, 224, 224), weights=weights)
    assert len(pairs) == 73
    assert_agree(pairs)
    probs = net.forward(data=image)["prob"]
    cv_net = cv2.dnn.readNetFromCaffe(deploy, weights)
    cv_net.setInput(image.astype(np.float32))
    np.testing.assert_allclose(probs, cv_net.forward().reshape(probs.shape), atol=1e-5)


@pytest.mark.parametrize("case", [
    'layer { name: "l" type: "LRN" bottom: "data" top: "l" lrn_param { local_size: 3 k: 2 } }',
    'layer { name: "f" type: "InnerProduct" bottom: "data" top: "f" '
    'inner_product_param { num_output: 5 transpose: true } }',
], ids=["lrn_k", "inner_product_transpose"])
def test_known_opencv_disagreements(case, tmp_path):
    """OpenCV ignores LRN's k and InnerProduct's transpose; minicnn follows Caffe (the layers'
    own tests check Caffe's formulas), so here the engines must differ."""
    _, pairs = run_both(tmp_path, single_layer_net(case, (2, 6, 9, 11)), (2, 6, 9, 11))
    assert max(relative_error(a, b) for a, b in pairs.values()) > 1e-2
