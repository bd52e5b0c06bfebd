"""``minicnn merge-bn``: fold BatchNorm and Scale into the convolution before them, for deploy.

Caffe users run a merge_bn.py script on a net trained with Convolution -> BatchNorm -> Scale
(ResNet, MobileNet, MobileNet-SSD): each BatchNorm (and the Scale after it) becomes part of the
preceding Convolution, Deconvolution, depthwise convolution or InnerProduct, which gains a bias
if it had none, and the deploy net loses two layers per block. chuanqi305/MobileNet-SSD's
merge_bn.py is the best known; it finds the pairs by layer name ("conv1" + "conv1/bn" +
"conv1/scale"), fixes eps at 1e-5, scales the weights along their first axis (so a
Deconvolution's (C_in, C_out/g, kh, kw) weights come out wrong) and needs a hand-written deploy
prototxt without the BN layers. Here the pairs are found from the graph, the prototxt is written
too, and every layer's own parameters are used.

Per channel the chain after the convolution is an affine map y = A x + B, composed from:

    BatchNorm   mean = blobs[0] / s, var = blobs[1] / s with s = blobs[2] (0 when s is 0, as
                Caffe's BatchNormLayer), a = 1 / sqrt(var + eps):
                                                    A <- a A,      B <- a (B - mean)
    Scale       gamma, beta (0 without bias_term):  A <- gamma A,  B <- gamma B + beta
    Bias        beta:                                              B <- B + beta
    BN          the PSPNet fork's (TEST: running statistics, any frozen flag):
                A <- slope A / sqrt(var + eps),  B <- slope (B - mean) / sqrt(var + eps) + bias

and the convolution's weights and bias become A w (along the output channels) and A b + B. The
arithmetic is float64; the weights are stored in ``dtype`` (float32 by default, as Caffe's).

A chain is folded only where that is exact:

- the convolution has one bottom and one top, its output channels on axis 1 (InnerProduct: axis
  1, so its top is N x num_output), no parameter shared with another layer by ``param { name }``
  (folding would change the other layer too), and no include/exclude rules;
- each folded layer is the only reader of the blob before it (counting every layer of the
  prototxt, in every phase, and in-place layers as readers and writers): a Split, a second
  branch, or a layer that reads the raw convolution output keeps the chain from growing there;
- BatchNorm uses its stored statistics in TEST (use_global_stats unset or true), Scale and Bias
  have one bottom and one value per channel (axis 1), none shares a parameter or has rules.

A chain stops at the first layer that fails a test; what was folded before it stays folded. The
convolution's top takes the name of the last folded layer's top, so every later layer (and the
net's outputs) read the same blob names as before; where the chain was in place nothing is
renamed. A not-in-place BatchNorm's input blob (the raw convolution output) no longer exists.

The prototxt is written from the parsed NetParameter (upgraded from V1 if it was old): names,
other layers, include/exclude rules and parameters are kept, comments and formatting are not.
The caffemodel keeps every layer of the weights file except the folded ones, whose blobs are
gone, and the convolutions, whose blobs are replaced.
"""

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from minicnn.blob import array_to_blob_proto
from minicnn.errors import MinicnnError
from minicnn.proto import caffe_pb2, read_binary, read_prototxt, upgrade_net

CONV_TYPES = ("Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution",
              "InnerProduct")
AFFINE_TYPES = ("BatchNorm", "Scale", "Bias", "BN")


@dataclass
class Fold:
    """One convolution and the layers folded into it."""
    conv: str
    conv_type: str
    folded: list = field(default_factory=list)          # layer names, in order
    top: str = ""                                       # the convolution's top after folding
    added_bias: bool = False

    def summary(self):
        names = " + ".join(self.folded)
        extra = " (bias added)" if self.added_bias else ""
        return f"merged {names} into {self.conv} ({self.conv_type}){extra}, top '{self.top}'"


@dataclass
class MergeResult:
    net: object                       # caffe_pb2.NetParameter: the prototxt
    weights: object                   # caffe_pb2.NetParameter: the caffemodel
    folds: list                       # [Fold]
    kept: list                        # [str]: why a BatchNorm/Scale next to a conv stays


def _read_net(model):
    if isinstance(model, caffe_pb2.NetParameter):
        return upgrade_net(model.copy())
    return upgrade_net(read_prototxt(os.fspath(model), "NetParameter"), os.fspath(model))


def _read_weights(weights):
    if isinstance(weights, caffe_pb2.NetParameter):
        return upgrade_net(weights.copy())
    return upgrade_net(read_binary(os.fspath(weights), "NetParameter"))


class _Graph:
    """Who reads each version of each blob: a version is (index of the layer that wrote it, or
    -1 for an input never written by a layer, blob name). In-place layers read the version
    before them and write a new one."""

    def __init__(self, layers):
        self.written_by = []                     # per layer: [(version) per top]
        self.readers = {}                        # version -> [layer index]
        self.touches = [set() for _ in layers]   # per layer: blob names read or written
        current = {}
        for i, layer in enumerate(layers):
            for name in layer.bottom:
                version = current.get(name, (-1, name))
                self.readers.setdefault(version, []).append(i)
                self.touches[i].add(name)
            tops = []
            for name in layer.top:
                current[name] = (i, name)
                tops.append((i, name))
                self.readers.setdefault((i, name), [])
                self.touches[i].add(name)
            self.written_by.append(tops)


def _shared_names(layers):
    """Parameter names (param { name }) that more than one layer uses."""
    counts = Counter(name for layer in layers for name in {p.name for p in layer.param if p.name})
    return {name for name, n in counts.items() if n > 1}


def _why_not_conv(layer, obj, shared):
    if len(layer.bottom) != 1 or len(layer.top) != 1:
        return "it has several bottoms or tops"
    if layer.bottom[0] == layer.top[0]:
        return "it runs in place"
    if layer.include or layer.exclude:
        return "it has include/exclude rules"
    if any(p.name in shared for p in layer.param):
        return "its parameters are shared with another layer (param { name })"
    if obj is None:
        return "it is not in the TEST-phase net"
    if layer.type == "InnerProduct" and obj.axis != 1:
        return f"its inner_product_param.axis is {obj.axis}, not 1"
    return None


def _why_not_affine(layer, obj, shared, channels):
    if len(layer.bottom) != 1 or len(layer.top) != 1:
        return "it has several bottoms or tops"
    if layer.include or layer.exclude:
        return "it has include/exclude rules"
    if any(p.name in shared for p in layer.param):
        return "its parameters are shared with another layer (param { name })"
    if obj is None:
        return "it is not in the TEST-phase net"
    if layer.type == "BatchNorm" and not obj.use_global_stats:
        return "use_global_stats is false (it normalizes with each batch's statistics)"
    if layer.type in ("Scale", "Bias") and (obj.axis != 1 or
                                            obj.blobs[0].shape != (channels,)):
        return f"its {layer.type.lower()} is not one value per channel on axis 1 " \
               f"(shape {obj.blobs[0].shape}, axis {obj.axis})"
    return None


def _compose(layer_type, obj, a, b):
    """The affine map x -> a x + b (per channel) followed by this layer's, as (a, b)."""
    blobs = [np.asarray(blob.data, np.float64).reshape(-1) for blob in obj.blobs]
    if layer_type == "BatchNorm":
        s = blobs[2][0]
        factor = 0.0 if s == 0 else 1.0 / s
        mean, var = blobs[0] * factor, blobs[1] * factor
        inv = 1.0 / np.sqrt(var + float(obj.eps))
        return a * inv, (b - mean) * inv
    if layer_type == "Scale":
        gamma = blobs[0]
        beta = blobs[obj.bias_index] if obj.bias_term else 0.0
        return a * gamma, b * gamma + beta
    if layer_type == "Bias":
        return a, b + blobs[0]
    slope, bias, mean, var = blobs                       # the PSPNet fork's BN
    k = slope / np.sqrt(var + float(obj.eps))
    return a * k, (b - mean) * k + bias


def _fold_weights(layer_type, obj, a, b):
    """The convolution's (weights, bias) in float64 after the per-channel map a x + b."""
    w = np.asarray(obj.blobs[0].data, np.float64)
    bias = np.asarray(obj.blobs[1].data, np.float64) if len(obj.blobs) > 1 else \
        np.zeros(len(a))
    if layer_type == "InnerProduct":
        w = w * (a[None, :] if obj.transpose else a[:, None])
    elif layer_type == "Deconvolution":                 # (C_in, C_out / g, kh, kw)
        g = obj.group
        shape = w.shape
        w = (w.reshape(g, shape[0] // g, shape[1], -1) *
             a.reshape(g, 1, shape[1], 1)).reshape(shape)
    else:                                               # (C_out, C_in / g, kh, kw)
        w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    return w, a * bias + b


def _check_weights_cover(layers, objects, stored, model, weights):
    """A weights file that holds no blobs for any of the net's layers with parameters is the
    wrong file (another net's, a renamed net's): merging would write the fillers' values as
    "trained" weights, silently. Some layers missing is a warning: they keep their fillers."""
    learned = [layer.name for layer in layers
               if objects.get(layer.name) is not None and objects[layer.name].blobs]
    missing = [name for name in learned if stored[name] == 0]
    if not missing:
        return
    where = weights if isinstance(weights, (str, os.PathLike)) else "the weights"
    net_name = model if isinstance(model, (str, os.PathLike)) else "the net"
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                      else "")
    if len(missing) == len(learned):
        raise MinicnnError(f"{where}: holds no blobs for any of the {len(learned)} layers with "
                           f"parameters of {net_name} ({shown}): are these its weights?")
    warnings.warn(f"{where}: holds no blobs for {len(missing)} of the {len(learned)} layers "
                  f"with parameters of {net_name} ({shown}); they keep their fillers' values",
                  stacklevel=3)


def merge_bn(model, weights, dtype=np.float32):
    """Fold BatchNorm/Scale/Bias/BN chains into the convolutions before them.

    ``model`` is a deploy prototxt path (or NetParameter), ``weights`` a .caffemodel path (or
    NetParameter). Returns a MergeResult: the new net and weights as NetParameters, the folds
    made and, for each BatchNorm-like layer next to a convolution that stays, why. The weights
    of folded convolutions are stored as ``dtype`` (float64 ones go to double_data)."""
    from minicnn.net import Net
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, not {dtype}")
    param = _read_net(model)
    weight_param = _read_weights(weights)
    net = Net(param, phase="TEST", dtype=np.float64)
    objects = net.layer_dict
    stored = Counter(layer.name for layer in weight_param.layer if layer.blobs)
    layers = list(param.layer)
    _check_weights_cover(layers, objects, stored, model, weights)
    net.copy_from(weight_param)
    graph = _Graph(layers)
    shared = _shared_names(layers)
    folds, kept, removed, new_blobs = [], [], set(), {}
    for i, layer in enumerate(layers):
        if layer.type not in CONV_TYPES:
            continue
        obj = objects.get(layer.name)
        readers = graph.readers.get((i, layer.top[0]), []) if len(layer.top) == 1 else []
        follows = [j for j in readers if layers[j].type in AFFINE_TYPES]
        if not follows:
            continue
        why = _why_not_conv(layer, obj, shared)
        if why is None and stored[layer.name] == 0:
            why = "the weights file has no blobs for it"
        if why is None and len(readers) > 1:
            why = f"its top '{layer.top[0]}' has {len(readers)} readers"
        if why is not None:
            kept.append(f"kept {layers[follows[0]].name}: {layer.name} ({layer.type}) cannot "
                        f"take it: {why}")
            continue
        channels = obj.num_output
        chain, version = [], (i, layer.top[0])
        a, b = np.ones(channels), np.zeros(channels)
        while True:
            readers = graph.readers.get(version, [])
            if len(readers) != 1 or layers[readers[0]].type not in AFFINE_TYPES:
                for j in readers:
                    if chain and layers[j].type in AFFINE_TYPES:
                        kept.append(f"kept {layers[j].name}: the blob '{version[1]}' before it "
                                    f"has {len(readers)} readers")
                break
            j = readers[0]
            nxt, nobj = layers[j], objects.get(layers[j].name)
            why = _why_not_affine(nxt, nobj, shared, channels)
            if why is None and stored[nxt.name] == 0:
                why = "the weights file has no blobs for it"
            if why is None:
                top = nxt.top[0]
                between = set(range(i + 1, j)) - set(chain)
                if top != layer.top[0] and any(top in graph.touches[k] for k in between):
                    why = f"a layer between it and {layer.name} uses its top '{top}'"
            if why is not None:
                kept.append(f"kept {nxt.name} ({nxt.type}) after {layer.name}: {why}")
                break
            a, b = _compose(nxt.type, nobj, a, b)
            chain.append(j)
            version = (j, nxt.top[0])
        if not chain:
            continue
        w, bias = _fold_weights(layer.type, obj, a, b)
        fold = Fold(layer.name, layer.type, [layers[j].name for j in chain],
                    layers[chain[-1]].top[0], added_bias=len(obj.blobs) == 1)
        folds.append(fold)
        removed.update(chain)
        new_blobs[layer.name] = (w.astype(dtype), bias.astype(dtype))
        layer.top[0] = fold.top
        type_param = layer.inner_product_param if layer.type == "InnerProduct" \
            else layer.convolution_param
        type_param.bias_term = True
        layer.ClearField("blobs")
    out_net = param.copy()
    out_net.ClearField("layer")
    out_net.layer.extend(layer for k, layer in enumerate(layers) if k not in removed)
    removed_names = {layers[k].name for k in removed}
    out_weights = weight_param.copy()
    out_weights.ClearField("layer")
    for layer in weight_param.layer:
        if layer.name in removed_names:
            continue
        if layer.name in new_blobs:
            layer = layer.copy()
            layer.ClearField("blobs")
            layer.blobs.extend(array_to_blob_proto(v) for v in new_blobs[layer.name])
            for fold in folds:
                if fold.conv == layer.name:
                    if layer.top:
                        layer.top[0] = fold.top
                    field_name = "inner_product_param" if layer.type == "InnerProduct" \
                        else "convolution_param"
                    if layer.HasField(field_name):
                        getattr(layer, field_name).bias_term = True
        out_weights.layer.append(layer)
    return MergeResult(out_net, out_weights, folds, kept)


def merge_bn_files(model, weights, out_model, out_weights, dtype=np.float32):
    """merge_bn on files, writing both outputs atomically; returns the MergeResult."""
    from minicnn.proto import write_binary, write_prototxt
    for path in (out_model, out_weights):
        if os.path.abspath(path) in (os.path.abspath(model), os.path.abspath(weights)):
            raise MinicnnError(f"{path}: the output would overwrite an input; name a new file")
    result = merge_bn(model, weights, dtype)
    write_prototxt(result.net, out_model)
    write_binary(result.weights, out_weights)
    return result
