"""The solver's work on the GPU, every parameter blob in one launch (kernels/solver.cu): the SGD
and Nesterov step bit for bit what the CPU computes (csrc/solver.cpp's momentum_update, and the
NumPy formula it follows), L2 and L1 decay, a decay of 0, iter_size's scale, float32 and
float64, blobs of 0 to 20,000 values across the 8,192-value chunks; zeroing the diffs; a
solver's apply_update on a GPU net equal to the same update on the CPU."""

import numpy as np
import pytest

import minicnn
from minicnn import cuda
from minicnn.native import lib

from .conftest import poisoned
from .test_net_cuda import digits, lenet_memory_data

SIZES = [0, 1, 7, 8191, 8192, 8193, 20000, 300]


def momentum_step_numpy(diff, data, history, lr, momentum, decay, regularization, scale,
                        nesterov):
    """csrc/solver.cpp's momentum_update in NumPy, one rounding per operation (new arrays)."""
    t = data.dtype.type
    lr, momentum, decay, scale = t(lr), t(momentum), t(decay), t(scale)
    g = diff * scale if scale != 1 else diff.copy()
    if regularization == 1:
        g = g + decay * data
    elif regularization == 2:
        g = g + decay * np.sign(data)
    with np.errstate(invalid="ignore"):                      # inf - inf where data is inf
        v = momentum * history + lr * g
        step = (t(1) + momentum) * v - momentum * history if nesterov else v
        return step, data - step, v


def blobs(sizes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [tuple(rng.standard_normal(n).astype(dtype) for _ in range(3)) for n in sizes]


def intact(*arrays):
    """The emulator's guard bytes around each array are untouched (a kernel reached through a
    table of addresses is not checked at launch); nothing to check on a real GPU."""
    return all(a._buf.intact() for a in arrays if getattr(a, "_buf", None) is not None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("regularization, scale", [(1, 1.0), (2, 1.0), (1, 0.5)])
def test_momentum_step_equals_the_cpu_bit_for_bit(gpu, dtype, nesterov, regularization, scale):
    host = blobs(SIZES, dtype, seed=regularization)
    host[3][1][:5] = [0, -0.0, np.inf, -np.inf, np.nan]    # sign(0), sign(NaN), infinities
    # no gradient and no decay (blob 6): the history decays into subnormals, which the CPU
    # keeps and CuPy's -ftz=true would flush to 0 in __fmul_rn (kernels/common.cuh)
    host[6][0][:4] = 0
    host[6][2][:4] = np.finfo(dtype).tiny * np.array([0.75, -0.5, 2.0 ** -20, 1.5])
    rate, momentum = 0.0123, 0.9
    mults = [(1.0 + i % 3, 0.0005 * (i % 2)) for i in range(len(SIZES))]   # some decay 0
    mults[4] = (0.1, 0.0005)                 # lr = T(rate * 0.1), not T(rate) * T(0.1)
    host[1][1][0] = np.nan                                  # decay 0 there: NaN stays out of g
    mults[1] = (2.0, 0.0)
    device = [tuple(gpu.asarray(a) for a in (data, diff, history))
              for diff, data, history in host]
    cuda.momentum_step(device, mults, rate, momentum, scale, regularization, nesterov)
    for i, ((diff, data, history), (d_data, d_diff, d_history)) in enumerate(zip(host, device)):
        lr, decay = rate * mults[i][0], mults[i][1]
        step, new_data, v = momentum_step_numpy(diff, data, history, lr, momentum, decay,
                                                regularization if decay else 0, scale, nesterov)
        np.testing.assert_array_equal(d_diff.get(), step, err_msg=f"diff of blob {i}")
        np.testing.assert_array_equal(d_data.get(), new_data, err_msg=f"data of blob {i}")
        np.testing.assert_array_equal(d_history.get(), v, err_msg=f"history of blob {i}")
        assert intact(d_data, d_diff, d_history)
        if lib is not None:                                 # the CPU's own fast path
            diff, data, history = diff.copy(), data.copy(), history.copy()
            lib.momentum_update(diff, data, history, lr, momentum, decay,
                                regularization if decay else 0, scale, nesterov)
            np.testing.assert_array_equal(d_diff.get(), diff, err_msg=f"native, blob {i}")
            np.testing.assert_array_equal(d_data.get(), data)
            np.testing.assert_array_equal(d_history.get(), history)


def test_zero_fill_zeroes_every_array_and_nothing_else(gpu):
    arrays = [poisoned(gpu, n, np.float32) for n in SIZES] + \
        [poisoned(gpu, (3, 5000), np.float64), poisoned(gpu, 9000, np.float32)]
    cuda.zero_fill(arrays)
    for a in arrays:
        assert not np.any(a.get()), a.shape
    assert intact(*arrays)
    cuda.zero_fill([])                                       # nothing to do


def test_segment_tables_are_made_once_per_set_of_arrays(gpu):
    a, b = gpu.zeros(5, np.float32), gpu.zeros(9000, np.float32)
    first = cuda.segment_table([(a,), (b,)])
    assert cuda.segment_table([(a,), (b,)]) is first
    segments, mults, chunks, count = first
    assert mults is None and count == 1 + 2 and segments.shape == (2, 2)
    assert chunks.get().tolist() == [[0, 0], [1, 0], [1, 8192]]
    assert cuda.segment_table([(b,), (a,)]) is not first
    assert cuda.segment_table([(a,), (b,)], [1.0, 0.5, 2.0, 0.0])[1].get().tolist() == \
        [1.0, 0.5, 2.0, 0.0]


def lenet(device, solver_type, **settings):
    from minicnn.proto import caffe_pb2
    fields = dict(base_lr=0.01, momentum=0.9, weight_decay=0.0005, lr_policy="inv",
                  gamma=0.0001, power=0.75, max_iter=100, random_seed=1701,
                  snapshot_after_train=False, type=solver_type)
    param = caffe_pb2.SolverParameter(**{**fields, **settings})
    param.net_param.CopyFrom(lenet_memory_data())
    solver = minicnn.get_solver(param, log=lambda m: None, device=device)
    solver.net.set_input_arrays(*digits())
    return solver


@pytest.mark.parametrize("solver_type, settings", [
    ("SGD", {}), ("Nesterov", {}), ("SGD", {"regularization_type": "L1", "iter_size": 2}),
    ("AdaGrad", {"momentum": 0.0})])
def test_apply_update_on_the_gpu_equals_the_cpu(gpu, solver_type, settings, monkeypatch):
    cpu, dev = lenet(None, solver_type, **settings), lenet(0, solver_type, **settings)
    rng = np.random.default_rng(3)
    for _ in range(2):                                       # the second one has a history
        for a, b in zip(cpu.net.learnable_params, dev.net.learnable_params):
            a.diff = rng.standard_normal(a.shape).astype(a.dtype)
            b.diff = a.diff
        launches = []
        real_launch_blocks = cuda.launch_blocks
        monkeypatch.setattr(cuda, "launch_blocks",
                            lambda k, *args, **kw: launches.append(k) or
                            real_launch_blocks(k, *args, **kw))
        cpu.apply_update()
        dev.apply_update()
        monkeypatch.undo()
        if solver_type in ("SGD", "Nesterov"):               # every blob in one launch
            assert len(launches) == 1
        exact = solver_type != "AdaGrad"                     # CuPy's sqrt and divide
        for i, (a, b) in enumerate(zip(cpu.net.learnable_params, dev.net.learnable_params)):
            for what in ("data", "diff"):
                got, want = getattr(b, what).get(), getattr(a, what)
                if exact:
                    np.testing.assert_array_equal(got, want, err_msg=f"{what} of blob {i}")
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        for a, b in zip(cpu.history, dev.history):
            np.testing.assert_allclose(b.get(), a, rtol=0 if exact else 1e-6)
        cpu.iter += 1
        dev.iter += 1


def test_clear_param_diffs_on_the_gpu_is_one_launch(gpu, monkeypatch):
    dev = lenet(0, "SGD")
    for b in dev.net.learnable_params:
        b.diff = np.ones(b.shape, np.float32)
    launches = []
    real_launch_blocks = cuda.launch_blocks
    monkeypatch.setattr(cuda, "launch_blocks", lambda k, *args, **kw: launches.append(k) or
                        real_launch_blocks(k, *args, **kw))
    dev.net.clear_param_diffs()
    assert len(launches) == 1
    assert all(not np.any(b.diff.get()) for b in dev.net.learnable_params)
