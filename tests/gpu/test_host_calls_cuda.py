"""Host work of a GPU training step: CuPy spends microseconds of host time on every array
operation, so the per-blob and per-channel work of Convolution, BatchNorm, Scale and the solver
runs in kernels, not as CuPy arithmetic. On the emulator (where CuPy's array operations can be
counted), a training step of a deeper net asks for no more arithmetic array operations than a
shallower one, and the SGD step and clearing the diffs are one launch each."""

import collections

import numpy as np
import pytest

import minicnn
from minicnn import cuda
from minicnn.proto import caffe_pb2
from minicnn.proto.text import parse_text
from tests import cuda_emu

BLOCK = """
layer {{ name: "conv{i}" type: "Convolution" bottom: "{bottom}" top: "conv{i}"
        convolution_param {{ num_output: 6 kernel_size: 3 pad: 1
                            weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "bn{i}" type: "BatchNorm" bottom: "conv{i}" top: "{bn_top}" {bn_param} }}
layer {{ name: "sc{i}" type: "Scale" bottom: "{bn_top}" top: "{bn_top}"
        scale_param {{ bias_term: true filler {{ type: "gaussian" std: 1 }} }} }}
"""
RELU = """
layer {{ name: "relu{i}" type: "ReLU" bottom: "{bn_top}" top: "{bn_top}"
        relu_param {{ negative_slope: 0.1 }} }}
"""


def net_param(blocks, bn_in_place=True, global_stats=False, relu=True):
    """Input -> blocks of Convolution, BatchNorm, Scale (in place on BatchNorm's top), ReLU
    -> InnerProduct -> SoftmaxWithLoss."""
    text = ('layer { name: "data" type: "Input" top: "data" top: "label" '
            'input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 } } }')
    bottom = "data"
    bn_param = "batch_norm_param { use_global_stats: true }" if global_stats else ""
    for i in range(blocks):
        bn_top = f"conv{i}" if bn_in_place else f"bn{i}"
        text += BLOCK.format(i=i, bottom=bottom, bn_top=bn_top, bn_param=bn_param)
        if relu:
            text += RELU.format(i=i, bn_top=bn_top)
        bottom = bn_top
    text += f"""
layer {{ name: "ip" type: "InnerProduct" bottom: "{bottom}" top: "ip"
        inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}"""
    return parse_text(text, "NetParameter")


def solver(blocks):
    param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                                      lr_policy="fixed", max_iter=10, random_seed=3,
                                      snapshot_after_train=False)
    param.net_param.CopyFrom(net_param(blocks))
    s = minicnn.SGDSolver(param, log=lambda m: None, device=0)
    rng = np.random.default_rng(0)
    s.net.blobs["data"].data = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    s.net.blobs["label"].data = np.array([1, 3], np.float32)
    return s


def counted_step(gpu, s, monkeypatch):
    """{kind: count} of the arithmetic CuPy operations, kernel launches and GEMMs of one
    training step (views, copies and allocations are not counted)."""
    counts = collections.Counter()
    ndarray = gpu.ndarray
    for name in ("__array_ufunc__", "__array_function__"):
        real = getattr(ndarray, name)

        def counting(self, *args, _real=real, **kwargs):
            counts["array operations"] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(ndarray, name, counting)
    real_call = gpu.RawKernel.__call__
    monkeypatch.setattr(gpu.RawKernel, "__call__", lambda self, *a, **k: (
        counts.__setitem__("launches", counts["launches"] + 1), real_call(self, *a, **k))[1])
    real_gemm = cuda._gemm_backend
    monkeypatch.setattr(cuda, "_gemm_backend", lambda *a: (
        counts.__setitem__("gemms", counts["gemms"] + 1), real_gemm(*a))[1])
    s.step(1)
    monkeypatch.undo()
    return counts


@pytest.fixture
def emu():
    """The emulator only (CuPy's own types cannot be patched to count calls)."""
    if not cuda_emu.available():
        pytest.skip("no C++ compiler for the CUDA host emulator")
    with cuda_emu.installed() as cp:
        yield cp


def test_a_deeper_net_asks_for_no_more_cupy_arithmetic(emu, monkeypatch):
    gpu = emu
    shallow, deep = solver(1), solver(4)
    for s in (shallow, deep):
        s.step(1)                                    # segment tables and kernels made once
    few, many = counted_step(gpu, shallow, monkeypatch), counted_step(gpu, deep, monkeypatch)
    assert many["array operations"] == few["array operations"], (few, many)
    assert many["array operations"] <= 8, many
    assert many["launches"] > few["launches"] and many["gemms"] > few["gemms"]
    assert np.isfinite(deep.smoothed_loss)


def test_host_to_device_copies_do_not_wait_for_the_gpu(emu, monkeypatch):
    """cuda.assign stages host arrays through pinned buffers and copies asynchronously: a
    buffer whose copy may still be in flight is not written again (another is taken, up to
    PINNED_PER_SIZE of a size; then the oldest copy is waited for), and the values arrive."""
    waited, events = [], []

    class SlowEvent:                    # a copy stays in flight until someone waits for it
        def __init__(self, *args, **kwargs):
            self.done = True
            events.append(self)

        def record(self, stream=None):
            self.done = False

        def synchronize(self):
            waited.append(self)
            self.done = True
    monkeypatch.setattr(emu.cuda, "Event", SlowEvent)
    monkeypatch.setattr(cuda, "_pinned", {})
    buffers = []
    real_alloc = emu.cuda.alloc_pinned_memory
    monkeypatch.setattr(emu.cuda, "alloc_pinned_memory",
                        lambda n: buffers.append(real_alloc(n)) or buffers[-1])
    targets = [emu.empty((3, 5), np.float32) for _ in range(cuda.PINNED_PER_SIZE + 2)]
    for i, target in enumerate(targets):
        cuda.assign(target, np.full((3, 5), i, np.float32))
    assert len(buffers) == cuda.PINNED_PER_SIZE                 # one each while in flight
    assert len(waited) == 2                                     # then the oldest, waited for
    for i, target in enumerate(targets):
        np.testing.assert_array_equal(target.get(), np.full((3, 5), i, np.float32))
    events[2].done = True                                       # the third copy has finished
    cuda.assign(targets[0], np.ones((3, 5), np.float32))       # its buffer, without a wait
    assert len(waited) == 2 and len(buffers) == cuda.PINNED_PER_SIZE


def test_a_gpu_dropout_layer_copies_its_mask_once(emu):
    net = minicnn.Net(parse_text("""
        force_backward: true
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
        layer { name: "drop" type: "Dropout" bottom: "data" top: "drop" }
        layer { name: "loss" type: "EuclideanLoss" bottom: "drop" bottom: "data" top: "loss" }
        """, "NetParameter"), phase=minicnn.TRAIN, device=0)
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    net.forward(data=x)
    layer = net.layer_dict["drop"]
    assert cuda.is_device_array(layer.mask) and layer.mask is layer._device_mask
    kept = layer.mask.get()
    np.testing.assert_array_equal(net.blobs["drop"].data.get(), x * kept * np.float32(2))
    net.backward()
    assert layer.mask is layer._device_mask                      # the same mask, not copied again


def test_a_training_step_waits_for_the_gpu_once_after_its_backward(emu, monkeypatch):
    """Reading a value back from the GPU waits for all the work queued before it. A training
    step reads the loss (and the flag of the label check) once, after its backward is queued
    and before the update: never between layers, so the host runs ahead of the GPU through
    the whole forward and backward. (Before: the labels, the VALID count and the loss in the
    forward, the loss weight in the backward.)"""
    s = solver(2)
    s.step(1)
    events = []
    for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(emu.ndarray, name)
        monkeypatch.setattr(emu.ndarray, name, lambda self, *a, _real=real, **k: (
            events.append("read"), _real(self, *a, **k))[1])
    real_call = emu.RawKernel.__call__
    monkeypatch.setattr(emu.RawKernel, "__call__", lambda self, *a, **k: (
        events.append(self.name), real_call(self, *a, **k))[1])
    s.step(1)
    monkeypatch.undo()
    first = events.index("read")
    assert events.count("read") == 2, events                 # the loss, the labels' flag
    assert events[first:first + 2] == ["read", "read"]
    assert any(name.startswith("softmax_loss_backward") for name in events[:first])
    assert all(name.startswith("momentum_step") for name in events[first + 2:]), events
    assert np.isfinite(s.smoothed_loss)
