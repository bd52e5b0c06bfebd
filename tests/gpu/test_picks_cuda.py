"""Im2col's CUDA op (the convolution's im2col/col2im kernels) against its reference, and a net of
Im2col, BatchReindex, Filter and Parameter on the GPU as on the CPU (BatchReindex and Filter,
whose ops are NumPy only, on host copies; Parameter's blob on the device)."""

import numpy as np
import pytest

import minicnn
from minicnn import cuda
from minicnn.ops.conv import ConvGeometry
from minicnn.ops.im2col import im2col_backward, im2col_forward
from minicnn.proto.text import parse_text

from .conftest import assert_close, rel_error


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, geom", [
    ((2, 3, 7, 6), ConvGeometry(3, 1, 1)),
    ((1, 2, 9, 8), ConvGeometry((3, 2), (2, 1), (1, 0), (2, 1))),
    ((2, 1, 5, 5), ConvGeometry(1, 2, 0)),
])
def test_im2col_on_the_gpu_equals_the_reference(gpu, shape, geom, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    want = im2col_forward.impls["ref"](x, geom=geom)
    assert_close(im2col_forward(gpu.asarray(x), geom=geom), want, 0, "columns")
    dy = rng.standard_normal(want.shape).astype(dtype)
    assert_close(im2col_backward(gpu.asarray(dy), x_hw=shape[2:], geom=geom),
                 im2col_backward.impls["ref"](dy, x_hw=shape[2:], geom=geom),
                 1e-6 if dtype == np.float32 else 1e-14, "dx")


NET = """
layer { name: "in" type: "Input" top: "x" top: "order" top: "sel"
        input_param { shape { dim: 3 dim: 2 dim: 5 dim: 5 } shape { dim: 4 } shape { dim: 4 } } }
layer { name: "cols" type: "Im2col" bottom: "x" top: "cols"
        convolution_param { kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "bias" type: "Parameter" top: "bias"
        parameter_param { shape { dim: 3 dim: 18 dim: 3 dim: 3 } } }
layer { name: "sum" type: "Eltwise" bottom: "cols" bottom: "bias" top: "sum" }
layer { name: "reindex" type: "BatchReindex" bottom: "sum" bottom: "order" top: "picked" }
layer { name: "filter" type: "Filter" bottom: "picked" bottom: "sel" top: "kept" }
layer { name: "other" type: "Power" bottom: "picked" top: "picked2" power_param { scale: 0.5 } }
layer { name: "filter2" type: "Filter" bottom: "picked2" bottom: "sel" top: "kept2" }
layer { name: "loss" type: "EuclideanLoss" bottom: "kept" bottom: "kept2" top: "loss" }
"""


def test_the_new_layers_in_a_gpu_net_as_on_the_cpu(gpu):
    param = parse_text(NET, "NetParameter")
    cpu = minicnn.Net(param, phase=minicnn.TRAIN)
    dev = minicnn.Net(param, phase=minicnn.TRAIN, device=0)
    assert sorted(dev.layers[i].type for i in dev._mirrors) == \
        ["BatchReindex", "Filter", "Filter"]
    rng = np.random.default_rng(3)
    bias = rng.standard_normal((3, 18, 3, 3)).astype(np.float32)
    inputs = dict(x=rng.standard_normal((3, 2, 5, 5)).astype(np.float32),
                  order=np.array([2, 0, 2, 1], np.float32), sel=np.array([1, 0, 1, 1], np.float32))
    for net in (cpu, dev):
        net.params["bias"][0].data = bias
        net.params["bias"][0].diff[...] = 0
        net.forward(**inputs)
        net.backward()
    for name in ("cols", "sum", "picked", "kept", "loss"):
        assert rel_error(cuda.to_host(dev.blobs[name].data), cpu.blobs[name].data) < 1e-6, name
    assert rel_error(cuda.to_host(dev.blobs["x"].diff), cpu.blobs["x"].diff) < 1e-6
    got = dev.params["bias"][0].diff
    assert cuda.is_device_array(got)
    assert rel_error(cuda.to_host(got), cpu.params["bias"][0].diff) < 1e-6
