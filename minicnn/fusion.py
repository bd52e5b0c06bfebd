"""Fusion: BatchNorm -> Scale (-> ReLU) in fewer passes over memory.

ResNet-style nets follow every convolution with three in-place layers, BatchNorm, Scale and
ReLU: three passes over the same blob where one would do (a quarter of ResNet-50's inference
time at batch 1 on a CPU). ``Net.forward`` runs such chains specially, and the blobs end
bit-identical to the layer-by-layer run (tests/test_fusion.py checks it):

- inference (none of the layers needs backward, BatchNorm uses its stored statistics): one
  native kernel does the three layers' own operations in their order (BatchNormChain);
- training: each layer must keep its input or output for backward, and in place that costs a
  copy apiece (BatchNorm keeps y, Scale keeps x, which is the same y). In the chain BatchNorm
  writes y into its kept buffer only and Scale reads it from there, keeps that by reference and
  writes the top: two passes over the blob fewer (TrainingBatchNormChain).

On a GPU the training chain runs the same way (Scale and ReLU as one kernel forward, the
backward in two passes over the blob); anything else (a loss on the way, other dtypes or
shapes) runs layer by layer.
``MINICNN_FUSE=0`` turns fusion off; ``minicnn time`` and ``Net.forward_layer`` always time and
run single layers.
"""

import os
from dataclasses import dataclass

import numpy as np

from minicnn import cuda, ops
from minicnn.native import lib
from minicnn.ops.batch_norm import bn_scale_relu_backward_cuda
from minicnn.ops.scale import scale_relu_forward_cuda


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


@dataclass
class TrainingBatchNormChain:
    """Layers first .. first + count - 1: BatchNorm that keeps y for backward, Scale in place
    on its top, maybe an in-place ReLU; all three need backward."""
    first: int
    count: int

    def _layers(self, net):
        bn, scale = net.layers[self.first], net.layers[self.first + 1]
        return bn, scale, (net.layers[self.first + 2] if self.count == 3 else None)

    def run(self, net):
        """Forward: BatchNorm's y into its kept buffer only; Scale (+ ReLU) from there into the
        top in one pass. False (nothing done) for arrays the kernels do not take."""
        bn, scale, relu = self._layers(net)
        for i in range(self.first, self.first + self.count):
            net.layers[i].reshape(net.bottom_vecs[i], net.top_vecs[i])
        x = net.bottom_vecs[self.first][0].data
        top = net.top_vecs[self.first + 1][0].data
        gamma, beta = _scale_params(scale)
        on_gpu = _device_arrays(x, top, gamma, beta)
        if not (on_gpu or (lib is not None and _native_arrays(x, top, gamma, beta))) \
                or scale.axis != 1 or gamma.shape != (x.shape[1],):
            return False
        y = bn.forward_keeping_y(net.bottom_vecs[self.first])
        scale._x = y                     # Scale's x is BatchNorm's y: kept once, by reference
        slope = relu.negative_slope if relu is not None else 0.0
        if on_gpu:                       # Scale (+ ReLU) in one kernel (kernels/normalization.cu)
            scale_relu_forward_cuda(y, gamma, beta, out=top,
                                    relu_slope=float(slope) if relu is not None else None)
        else:
            lib.scale_forward(y, gamma, beta, top, None, relu is not None, float(slope))
        return True

    def run_backward(self, net):
        """Backward of the whole chain in one native call (on a GPU, the chain_backward_*
        kernels of kernels/normalization.cu), when forward ran as the chain (so Scale's x is
        BatchNorm's y) and every diff goes where the layers would put it. False (nothing done)
        otherwise."""
        bn, scale, relu = self._layers(net)
        first, last = self.first, self.first + self.count - 1
        if not (bn._y is not None and scale._x is bn._y and net.bottom_need_backward[first][0]
                and all(net.bottom_need_backward[i][0] for i in range(first + 1, last + 1))):
            return False
        blob = net.top_vecs[first][0]
        dx = net.bottom_vecs[first][0].diff
        gamma, _ = _scale_params(scale)
        dscale = scale.blobs[0].diff if scale.param_propagate_down[0] else None
        dbias = scale.blobs[scale.bias_index].diff if scale.bias_term and \
            scale.param_propagate_down[scale.bias_index] else None
        arrays = (blob.diff, blob.data, dx, bn._y, bn._std, gamma, dscale, dbias)
        if dx.shape != blob.diff.shape or gamma.shape != bn._std.shape:
            return False
        if _device_arrays(*arrays):      # on the GPU: two kernels' passes over the blob
            bn_scale_relu_backward_cuda(blob.diff, blob.data if relu is not None else None,
                                        float(relu.negative_slope) if relu is not None else 0.0,
                                        bn._y, bn._std, gamma, blob.diff, dx, dscale, dbias,
                                        bool(bn.use_global_stats))
            return True
        if lib is None or not _native_arrays(*arrays):
            return False
        lib.bn_scale_relu_backward(blob.diff, blob.data if relu is not None else None,
                                   float(relu.negative_slope) if relu is not None else 0.0,
                                   bn._y, bn._std, gamma, blob.diff, dx, dscale, dbias,
                                   bool(bn.use_global_stats))
        return True


def _scale_params(scale):
    return scale.blobs[0].data, (scale.blobs[scale.bias_index].data if scale.bias_term
                                 else None)


def _device_arrays(*arrays):
    """GPU arrays of one float dtype, C-contiguous (None entries skipped)."""
    arrays = [a for a in arrays if a is not None]
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        cuda.is_device_array(a) and a.dtype == dtype and a.flags.c_contiguous for a in arrays)


def _native_arrays(*arrays):
    """Host arrays of one float dtype, C-contiguous (None entries skipped)."""
    arrays = [a for a in arrays if a is not None]
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous for a in arrays)


def plan(net):
    """{first layer index: chain} of the chains the net may run fused (the inference chain on
    the host's native kernel, the training chain there or on the GPU)."""
    if os.environ.get("MINICNN_FUSE", "1") == "0":
        return {}
    from minicnn.layers.neuron import ReLULayer
    from minicnn.layers.normalization import BatchNormLayer, ScaleLayer

    def plain(i):          # runs on the host, keeps nothing for backward, no loss
        layer = net.layers[i]
        return (not layer.backward_needed and i not in net._mirrors
                and not any(layer.loss_weight(j) for j in range(len(net.top_vecs[i]))))

    def host(i):           # runs on the host, no loss
        layer = net.layers[i]
        return i not in net._mirrors and \
            not any(layer.loss_weight(j) for j in range(len(net.top_vecs[i])))

    def in_place_on(i, blob):
        bottoms, tops = net.bottom_vecs[i], net.top_vecs[i]
        return len(bottoms) == len(tops) == 1 and bottoms[0] is blob and tops[0] is blob

    chains, i, n = {}, 0, len(net.layers)
    while i + 1 < n:
        bn, scale = net.layers[i], net.layers[i + 1]
        if (lib is not None and type(bn) is BatchNormLayer and bn.use_global_stats and plain(i)
                and type(scale) is ScaleLayer and scale.scale_is_param and plain(i + 1)
                and len(net.top_vecs[i]) == 1 and in_place_on(i + 1, net.top_vecs[i][0])):
            blob = net.top_vecs[i][0]
            count = 3 if (i + 2 < n and type(net.layers[i + 2]) is ReLULayer and plain(i + 2)
                          and in_place_on(i + 2, blob)) else 2
            chains[i] = BatchNormChain(i, count)
            i += count
        elif (type(bn) is BatchNormLayer and bn.backward_needed and host(i)
                and type(scale) is ScaleLayer and scale.scale_is_param and host(i + 1)
                and scale.backward_needed and len(net.top_vecs[i]) == 1
                and in_place_on(i + 1, net.top_vecs[i][0])):
            blob = net.top_vecs[i][0]
            count = 3 if (i + 2 < n and type(net.layers[i + 2]) is ReLULayer and host(i + 2)
                          and net.layers[i + 2].backward_needed
                          and not net.layers[i + 2].keeps_mask    # its backward needs the mask
                          and in_place_on(i + 2, blob)) else 2
            chains[i] = TrainingBatchNormChain(i, count)
            i += count
        else:
            i += 1
    return chains
