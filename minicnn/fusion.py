"""Inference fusion: BatchNorm (stored statistics) -> Scale -> ReLU as one pass over memory.

ResNet-style nets follow every convolution with three in-place layers, BatchNorm, Scale and
ReLU: three passes over the same blob where one would do (a quarter of ResNet-50's inference
time at batch 1 on a CPU). When none of the three needs backward (a deploy net without
force_backward), ``Net.forward`` runs such a chain as one native kernel that does the three
layers' own operations in their order, so the blob ends bit-identical to the layer-by-layer
run (tests/test_fusion.py checks it). Anything else (a net that trains, a GPU net, other
dtypes or shapes) runs layer by layer. ``MINICNN_FUSE=0`` turns fusion off; ``minicnn time``
and ``Net.forward_layer`` always time and run single layers.
"""

import os
from dataclasses import dataclass

import numpy as np

from minicnn import ops
from minicnn.native import lib


@dataclass
class BatchNormChain:
    """Layers first .. first + count - 1: BatchNorm, Scale in place on its top, maybe ReLU."""
    first: int
    count: int

    def run(self, net):
        """Forward of the chain if its arrays suit the kernel; False (nothing done) if not."""
        bn, scale = net.layers[self.first], net.layers[self.first + 1]
        relu = net.layers[self.first + 2] if self.count == 3 else None
        for i in range(self.first, self.first + self.count):
            net.layers[i].reshape(net.bottom_vecs[i], net.top_vecs[i])
        x = net.bottom_vecs[self.first][0].data
        y = net.top_vecs[self.first][0].data
        gamma = scale.blobs[0].data
        beta = scale.blobs[scale.bias_index].data if scale.bias_term else None
        mean, var = ops.batch_norm_global_stats(*(b.data for b in bn.blobs))
        arrays = [a for a in (x, y, gamma, beta, mean, var) if a is not None]
        if not (all(type(a) is np.ndarray and a.dtype == x.dtype and a.flags.c_contiguous
                    for a in arrays)
                and x.dtype in (np.float32, np.float64) and x.ndim >= 2 and scale.axis == 1
                and gamma.shape == (x.shape[1],) and y.shape == x.shape):
            return False
        std = np.empty(x.shape[1], x.dtype)
        slope = relu.negative_slope if relu is not None else 0.0
        lib.bn_scale_relu(x, y, mean, var, std, float(bn.eps), gamma, beta, relu is not None,
                          float(slope))
        bn._y, bn._std, scale._x = None, std, None       # what the layers keep without backward
        return True


def plan(net):
    """{first layer index: chain} of the chains the net may run fused."""
    if lib is None or os.environ.get("MINICNN_FUSE", "1") == "0":
        return {}
    from minicnn.layers.neuron import ReLULayer
    from minicnn.layers.normalization import BatchNormLayer, ScaleLayer

    def plain(i):          # runs on the host, keeps nothing for backward, no loss
        layer = net.layers[i]
        return (not layer.backward_needed and i not in net._mirrors
                and not any(layer.loss_weight(j) for j in range(len(net.top_vecs[i]))))

    def in_place_on(i, blob):
        bottoms, tops = net.bottom_vecs[i], net.top_vecs[i]
        return len(bottoms) == len(tops) == 1 and bottoms[0] is blob and tops[0] is blob

    chains, i, n = {}, 0, len(net.layers)
    while i + 1 < n:
        bn, scale = net.layers[i], net.layers[i + 1]
        if (type(bn) is BatchNormLayer and bn.use_global_stats and plain(i)
                and type(scale) is ScaleLayer and scale.scale_is_param and plain(i + 1)
                and len(net.top_vecs[i]) == 1 and in_place_on(i + 1, net.top_vecs[i][0])):
            blob = net.top_vecs[i][0]
            count = 3 if (i + 2 < n and type(net.layers[i + 2]) is ReLULayer and plain(i + 2)
                          and in_place_on(i + 2, blob)) else 2
            chains[i] = BatchNormChain(i, count)
            i += count
        else:
            i += 1
    return chains
