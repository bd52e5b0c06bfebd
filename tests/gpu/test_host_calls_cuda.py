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
layer {{ name: "bn{i}" type: "BatchNorm" bottom: "conv{i}" top: "conv{i}" }}
layer {{ name: "sc{i}" type: "Scale" bottom: "conv{i}" top: "conv{i}"
        scale_param {{ bias_term: true }} }}
layer {{ name: "relu{i}" type: "ReLU" bottom: "conv{i}" top: "conv{i}" }}
"""


def net_param(blocks):
    text = ('layer { name: "data" type: "Input" top: "data" top: "label" '
            'input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 } } }')
    bottom = "data"
    for i in range(blocks):
        text += BLOCK.format(i=i, bottom=bottom)
        bottom = f"conv{i}"
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
