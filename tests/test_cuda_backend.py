"""The CUDA backend's host side, on any machine: asking for a GPU without CuPy or without a
device fails with an error naming what is missing (Net, Solver, set_mode_gpu, the CLI); device
names; launch hygiene; the kernel sources CuPy is handed; which layers a GPU net runs on the
host; and CPU nets untouched by all of it."""

import os
import sys
import types
import warnings

import numpy as np
import pytest

import minicnn
from minicnn import cuda
from minicnn.cli import main
from minicnn.layer import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(REPO, "models", "lenet", "lenet.prototxt")


@pytest.fixture
def no_cupy(monkeypatch):
    """CuPy cannot be imported (as on machines without it)."""
    previous = cuda.use_backend(None, None)
    monkeypatch.setitem(sys.modules, "cupy", None)
    yield
    cuda.use_backend(*previous)


@pytest.fixture
def no_device():
    """CuPy imports, but the driver finds no GPU."""
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 0)
    previous = cuda.use_backend(types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    yield
    cuda.use_backend(*previous)


def test_a_gpu_net_without_cupy_says_to_install_it(no_cupy):
    with pytest.raises(cuda.CudaUnavailable, match=r"needs CuPy.*pip install.*minicnn\[cuda"):
        minicnn.Net(LENET, device="cuda:0")
    with pytest.raises(cuda.CudaUnavailable, match="CuPy"):
        minicnn.set_mode_gpu()
    assert cuda.mode() == "CPU" and not cuda.available()


def test_a_gpu_net_without_a_device_says_there_is_none(no_device):
    with pytest.raises(cuda.CudaUnavailable, match="found no CUDA device"):
        minicnn.Net(LENET, device=0)
    with pytest.raises(cuda.CudaUnavailable, match="no CUDA device"):
        minicnn.set_device(0)
    assert not cuda.available()


@pytest.mark.parametrize("argv", [
    ["train", "models/lenet/lenet_solver.prototxt", "--gpu", "0"],
    ["test", LENET, "--gpu", "0", "--iterations", "1"],
    ["time", LENET, "--gpu", "0", "--iterations", "1"],
    ["extract", "--model", LENET, "--blob", "prob", "--iterations", "1", "--out", "f.npy",
     "--gpu", "0"],
])
def test_cli_gpu_flag_without_cupy_is_a_clear_error(no_cupy, argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO if argv[0] == "train" else tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error" in err and "CuPy" in err and "pip install" in err


def test_device_names():
    assert cuda.parse_device(None) is None and cuda.parse_device("cpu") is None
    assert cuda.parse_device("cuda:1") == 1 and cuda.parse_device("GPU:2") == 2
    assert cuda.parse_device(3) == 3 and cuda.parse_device("0") == 0
    assert cuda.parse_device("cuda") == cuda._mode["device"]
    for bad in ("tpu", "cuda:x", 1.5, True):
        with pytest.raises(minicnn.MinicnnError, match="device must be"):
            cuda.parse_device(bad)


def test_launches_refuse_python_numbers():
    with pytest.raises(minicnn.MinicnnError, match="NumPy scalar"):
        cuda.launch(lambda grid, block, args: None, 10, (np.int64(1), 2))
    with pytest.raises(minicnn.MinicnnError, match="NumPy scalar"):
        cuda.launch(lambda grid, block, args: None, 10, (np.float32(1), 0.5))
    cuda.launch(lambda grid, block, args: pytest.fail("launched"), 0, (3,))  # nothing to do



def test_the_emulator_refuses_grids_a_gpu_refuses():
    """gridDim.y and .z stop at 65535 and a block at 1024 threads on a GPU; the emulator would
    run any grid, so it checks the limits itself (a (channels, splits) grid with the channels
    on y would pass here and fail on the device)."""
    from tests.cuda_emu import fake_cupy
    assert fake_cupy.check_launch("k", (2**31 - 1, 65535, 65535), (1024,)) == \
        ((2**31 - 1, 65535, 65535), (1024, 1, 1))
    for grid, block in [((1, 65536), 256), ((1, 1, 65536), 256), (2**31, 256), (1, 1025),
                        (1, (1, 1, 65)), (1, (64, 32))]:
        with pytest.raises(fake_cupy.CUDARuntimeError, match="invalid configuration"):
            fake_cupy.check_launch("k", grid, block)


NEIGHBOUR = """
template <typename T>
__global__ void left_neighbour(const T* x, T* y, int barrier, long long n) {
  __shared__ T s[256];
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = x[i];
  if (barrier) __syncthreads();           // the same for the whole block: not divergent
  T left = threadIdx.x > 0 ? s[threadIdx.x - 1] : T(0);
  __syncthreads();
  y[i] = left;
}
"""


def test_the_emulator_runs_threads_out_of_index_order():
    """A GPU runs a block's threads between two barriers, and a grid's blocks, in no promised
    order. Thread t reading s[t - 1] without a barrier after the writes is a race there; in
    index order (thread t - 1 first) the emulator would compute the right values anyway and
    hide it. Its shuffled order exposes the race, and the kernel with the barrier is right."""
    from tests import cuda_emu
    from tests.cuda_emu import fake_cupy
    if not cuda_emu.available():
        pytest.skip("no C++ compiler for the CUDA host emulator")
    module = fake_cupy.RawModule(code=cuda.kernel_source("common.cuh") + NEIGHBOUR,
                                 name_expressions=["left_neighbour<float>"])
    k = module.get_function("left_neighbour<float>")
    x = np.arange(1, 3 * 256 + 1, dtype=np.float32)
    want = np.concatenate([np.concatenate([[0], part[:-1]]) for part in np.split(x, 3)])
    for barrier, right in ((0, False), (1, True)):
        y = fake_cupy.full(x.shape, np.nan, np.float32)
        k((3,), (256,), (fake_cupy.asarray(x), y, np.int32(barrier), np.int64(x.size)))
        assert np.array_equal(y.get(), want) == right, f"barrier {barrier}"


BARRIERS = """
template <typename T>
__global__ void prefix_sums(const T* x, T* y, int quit_below) {
  __shared__ double s[256];
  double mine = x[threadIdx.x], scale = 1.5;        // held across every barrier
  if ((int)threadIdx.x < quit_below) return;          // divergent when some threads leave
  for (unsigned step = 1; step < blockDim.x; step <<= 1) {
    s[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x >= step) mine += s[threadIdx.x - step];
    __syncthreads();
  }
  y[threadIdx.x] = (T)(mine * scale);
}
"""


def test_the_emulators_fibers_keep_their_state_and_report_divergent_barriers():
    """Threads run as fibers that __syncthreads switches between (emu.h's emu_switch on
    x86-64): each keeps its locals across 16 barriers, and a barrier that some threads of the
    block never reach (they returned) is the error it is on a GPU, not a hang or wrong sums."""
    from tests import cuda_emu
    from tests.cuda_emu import fake_cupy
    if not cuda_emu.available():
        pytest.skip("no C++ compiler for the CUDA host emulator")
    module = fake_cupy.RawModule(code=cuda.kernel_source("common.cuh") + BARRIERS,
                                 name_expressions=["prefix_sums<double>"])
    k = module.get_function("prefix_sums<double>")
    x = np.random.default_rng(0).standard_normal(256)
    y = fake_cupy.full(x.shape, np.nan, np.float64)
    k((1,), (256,), (fake_cupy.asarray(x), y, np.int32(0)))
    np.testing.assert_allclose(y.get(), 1.5 * np.cumsum(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(fake_cupy.CUDARuntimeError, match="divergent __syncthreads"):
        k((1,), (256,), (fake_cupy.asarray(x), y, np.int32(100)))


SHIFTED = """
template <typename T>
__global__ void shifted_read(const T* x, T* y, int shift, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i] = x[i + shift]; }
}
template <typename T>
__global__ void shifted_write(const T* x, T* y, int shift, long long n) {
  MINICNN_KERNEL_LOOP(i, n) { y[i + shift] = x[i]; }
}
"""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [5, 6])          # 5 float32: the end is not 8-byte aligned
def test_the_emulators_guard_bytes_read_as_nan_and_catch_writes(dtype, size):
    """A kernel reading just past either end of an array reads garbage on a GPU (or faults);
    in the emulator it reads the guard bytes, which are NaN in float32 and float64, so the
    NaN reaches the output the GPU tests check. Writing there (even a NaN) fails the launch."""
    from tests import cuda_emu
    from tests.cuda_emu import fake_cupy
    if not cuda_emu.available():
        pytest.skip("no C++ compiler for the CUDA host emulator")
    ctype = cuda.CTYPES[np.dtype(dtype)]
    names = [f"shifted_read<{ctype}>", f"shifted_write<{ctype}>"]
    module = fake_cupy.RawModule(code=cuda.kernel_source("common.cuh") + SHIFTED,
                                 name_expressions=names)
    read, write = (module.get_function(name) for name in names)
    x = fake_cupy.asarray(np.arange(1, size + 1, dtype=dtype))
    for shift, outside in ((1, size - 1), (-1, 0)):
        y = fake_cupy.zeros(size, dtype)
        read((1,), (256,), (x, y, np.int32(shift), np.int64(size)))
        got = y.get()
        assert np.isnan(got[outside]), (shift, got)
        assert not np.isnan(np.delete(got, outside)).any(), (shift, got)
    nan = fake_cupy.full(size, np.nan, dtype)
    for shift in (1, -1):
        with pytest.raises(fake_cupy.CUDARuntimeError, match="wrote outside"):
            write((1,), (256,), (nan, fake_cupy.zeros(size, dtype), np.int32(shift),
                                 np.int64(size)))


def test_the_emulators_gemm_refuses_what_cublas_races_on():
    """cuBLAS's strided-batched GEMM writes C while reading A and B, and every C_i at once: C
    overlapping A, B or another C_i is undefined on the GPU; the emulator, computing before it
    writes, would give the right product, so it refuses such calls."""
    from tests.cuda_emu import fake_cupy
    a = fake_cupy.asarray(np.ones(16, np.float32))
    b = fake_cupy.asarray(np.ones(16, np.float32))
    c = fake_cupy.zeros(16, np.float32)
    gemm = fake_cupy.gemm_strided_batched
    gemm("N", "N", 2, 2, 2, 1.0, a, 0, 2, 4, b, 0, 2, 4, 0.0, c, 0, 2, 4, 4)   # C_i apart: fine
    assert c.get().tolist() == [2.0] * 16
    with pytest.raises(fake_cupy.CUDARuntimeError, match="C matrices overlap"):
        gemm("N", "N", 2, 2, 2, 1.0, a, 0, 2, 4, b, 0, 2, 4, 0.0, c, 0, 2, 3, 4)
    with pytest.raises(fake_cupy.CUDARuntimeError, match="overlaps A"):
        gemm("N", "N", 2, 2, 2, 1.0, c, 0, 2, 0, b, 0, 2, 0, 0.0, c, 3, 2, 0, 1)
    with pytest.raises(fake_cupy.CUDARuntimeError, match="overlaps B"):
        gemm("N", "N", 2, 2, 2, 1.0, a, 0, 2, 0, c, 8, 2, 0, 0.0, c, 6, 2, 0, 1)
    gemm("N", "N", 2, 2, 2, 1.0, c, 0, 2, 0, c, 4, 2, 0, 0.0, c, 8, 2, 0, 1)  # disjoint parts


def _cupy_cublas_signatures():
    """{function: [parameter names]} of CuPy's cuBLAS binding, read from the signatures Cython
    embeds in the installed module (it does not import without libcublas, i.e. without a
    GPU's CUDA); None where CuPy is not installed."""
    import glob
    import importlib.util
    import re
    spec = importlib.util.find_spec("cupy_backends")
    if spec is None or not spec.submodule_search_locations:
        return None
    paths = glob.glob(os.path.join(spec.submodule_search_locations[0], "cuda", "libs",
                                   "cublas.*"))
    paths = [p for p in paths if p.endswith((".so", ".pyd"))]
    if not paths:
        return None
    with open(paths[0], "rb") as f:
        data = f.read()
    found = {}
    for name in ("sgemmStridedBatched", "dgemmStridedBatched", "setMathMode"):
        m = re.search(rb"\b" + name.encode() + rb"\(([^)]*)\)", data)
        assert m, f"CuPy's cuBLAS binding has no {name}"
        found[name] = [p.split()[-1] for p in m.group(1).decode().split(",")]
    for constant in (b"CUBLAS_TF32_TENSOR_OP_MATH", b"CUBLAS_DEFAULT_MATH"):
        assert constant in data, constant
    return found


def test_cublas_gemm_hands_cublas_its_arguments(monkeypatch):
    """minicnn.cuda._cublas_gemm, the GPU's GEMM call, is the one piece of the GPU path no
    emulated test runs (the emulator's GEMM stands in for it). Here it calls a stand-in for
    CuPy's cuBLAS binding that takes the binding's parameters by name (read from the installed
    CuPy) and computes cuBLAS's column-major product from the host addresses it is given
    (the emulator's arrays live on the host): transposes, leading dimensions, offsets, batch
    strides and alpha/beta as host pointers must all arrive where cuBLAS reads them."""
    import ctypes
    from tests import cuda_emu
    from tests.cuda_emu import fake_cupy
    signatures = _cupy_cublas_signatures()
    if signatures is None:
        pytest.skip("CuPy is not installed (CI installs cupy-cuda13x)")
    if not cuda_emu.available():
        pytest.skip("no C++ compiler for the CUDA host emulator")
    calls = []

    def strided_batched(dtype, name):
        def run(*args):
            assert len(args) == len(signatures[name]), (name, args)
            p = dict(zip(signatures[name], args))
            calls.append((name, p["handle"]))
            item = np.dtype(dtype).itemsize

            def host(address, count):
                return np.frombuffer((ctypes.c_byte * (count * item)).from_address(address),
                                     dtype)
            alpha, beta = host(p["alpha"], 1)[0], host(p["beta"], 1)[0]
            m, n, k, batch = p["m"], p["n"], p["k"], p["batchCount"]

            def matrices(ptr, ld, stride, rows, cols, trans):   # op(X_i): rows x cols
                stored = (cols, rows) if trans else (rows, cols)
                count = (batch - 1) * stride + (stored[1] - 1) * ld + stored[0]
                flat = host(ptr, count)
                x = np.lib.stride_tricks.as_strided(
                    flat, (batch, *stored), (stride * item, item, ld * item))
                return x.transpose(0, 2, 1) if trans else x
            a = matrices(p["A"], p["lda"], p["strideA"], m, k, p["transa"] == 1)
            b = matrices(p["B"], p["ldb"], p["strideB"], k, n, p["transb"] == 1)
            c = matrices(p["C"], p["ldc"], p["strideC"], m, n, False)
            value = alpha * np.matmul(a, b)
            c[...] = value + beta * c if beta != 0 else value
        return run

    math_modes = []
    binding = types.SimpleNamespace(
        sgemmStridedBatched=strided_batched(np.float32, "sgemmStridedBatched"),
        dgemmStridedBatched=strided_batched(np.float64, "dgemmStridedBatched"),
        setMathMode=lambda handle, mode: math_modes.append((handle, mode)),
        CUBLAS_TF32_TENSOR_OP_MATH=3, CUBLAS_DEFAULT_MATH=0)
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = binding
    device = types.ModuleType("cupy.cuda.device")
    device.get_cublas_handle = lambda: 12345
    cupy_cuda = types.ModuleType("cupy.cuda")
    cupy_cuda.device = device
    for name, module in (("cupy_backends", types.ModuleType("cupy_backends")),
                         ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                         ("cupy_backends.cuda.libs", libs), ("cupy", types.ModuleType("cupy")),
                         ("cupy.cuda", cupy_cuda), ("cupy.cuda.device", device)):
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["cupy_backends"].cuda = sys.modules["cupy_backends.cuda"]
    sys.modules["cupy_backends.cuda"].libs = libs
    sys.modules["cupy"].cuda = cupy_cuda
    previous = cuda.use_backend(fake_cupy, None)          # gemm goes to _cublas_gemm
    try:
        rng = np.random.default_rng(5)
        for dtype in (np.float32, np.float64):
            for trans_a in (False, True):
                for trans_b in (False, True):
                    m, n, k, batch = 3, 4, 5, 2
                    a = rng.standard_normal((batch, k, m) if trans_a else (batch, m, k))
                    b = rng.standard_normal((batch, n, k) if trans_b else (batch, k, n))
                    c0 = rng.standard_normal((batch, m, n))
                    a, b, c0 = (v.astype(dtype) for v in (a, b, c0))
                    # a and b one element into larger buffers: the offsets count elements
                    a_dev = fake_cupy.asarray(np.concatenate([[7], a.ravel()]).astype(dtype))
                    b_dev = fake_cupy.asarray(np.concatenate([[7], b.ravel()]).astype(dtype))
                    c_dev = fake_cupy.asarray(c0)
                    cuda.gemm(a_dev, b_dev, c_dev, m, n, k, trans_a=trans_a, trans_b=trans_b,
                              alpha=0.5, beta=2.0, batch=batch, stride_a=m * k, stride_b=k * n,
                              offset_a=1, offset_b=1)
                    op_a = a.transpose(0, 2, 1) if trans_a else a
                    op_b = b.transpose(0, 2, 1) if trans_b else b
                    want = 0.5 * (op_a.astype(np.float64) @ op_b) + 2.0 * c0
                    np.testing.assert_allclose(c_dev.get(), want, rtol=1e-5, atol=1e-5,
                                               err_msg=f"{dtype} {trans_a} {trans_b}")
        assert {name for name, _ in calls} == {"sgemmStridedBatched", "dgemmStridedBatched"}
        assert all(handle == 12345 for _, handle in calls)
        assert math_modes == [(12345, 3 if cuda._tf32["on"] else 0)]     # once for the handle
    finally:
        cuda.use_backend(*previous)


def test_kernel_sources_are_self_contained():
    for path in sorted(cuda.kernels_dir().glob("*.cu")):
        source = cuda.kernel_source(path.name)
        assert "#include" not in source and "MINICNN_KERNEL_LOOP" in source, path.name
        assert cuda.template_kernels(source), path.name
    assert cuda.template_kernels(cuda.kernel_source("relu.cu")) == ["relu_forward",
                                                                     "relu_backward"]


# Ops written for the host only, and the layers that call them (which a GPU net runs on host
# copies): ArgMax (a sort), BatchReindex and Filter (indices checked on the host; Filter's top
# shape depends on its selector's values), SSD's PriorBox and DetectionOutput (box geometry and
# NMS, at the end of the net), the recurrent layers (a loop over time steps in NumPy), Fast
# R-CNN's ROIPooling and R-FCN's PSROIPooling (loops over the rois and bins), the forks' Upsample
# (mask checks and scatters on the host), YOLOv2/v3's output heads (a few maps on the last blob),
# SSD's MultiBoxLoss (matching and mining, per image), the face forks' losses (per-class loops)
# and happynear's Normalize, ChannelScale and GlobalLSEMargin (NumPy layers beside them),
# zimenglan's and sciencefans's FocalLoss, Longqi-S's SoftmaxWithFocalLoss, happynear's
# SoftmaxWithLoss with a weights bottom (a variant class, sorting for hard_ratio), Darknet's Local
# (einsum over places; no kernel yet) and SoftmaxTree (per-group reductions), DeepLab's DenseCRF
# (a permutohedral lattice per image).
HOST_OPS = sorted(["argmax_forward", "batch_reindex_backward", "batch_reindex_forward",
                   "center_loss_backward", "center_loss_forward", "channel_scale_backward",
                   "channel_scale_forward", "dense_crf_forward", "detection_evaluate_forward",
                   "detection_output_forward", "face_normalize_backward",
                   "face_normalize_forward", "focal_loss_backward", "focal_loss_forward",
                   "global_lse_margin_backward", "global_lse_margin_forward",
                   "label_specific_add_forward", "lstm_backward",
                   "lstm_forward", "local_backward", "local_forward", "lstm_unit_backward",
                   "lstm_unit_forward",
                   "margin_inner_product_backward", "margin_inner_product_forward",
                   "max_unpool2d_backward", "max_unpool2d_forward", "multibox_loss_forward",
                   "nearest_upsample_backward", "nearest_upsample_forward", "prior_box_forward",
                   "psroi_pool_backward", "psroi_pool_forward", "region_loss_forward",
                   "rnn_backward", "rnn_forward", "roi_pool_backward", "roi_pool_forward",
                   "seg_confusion_forward", "sigmoid_focal_loss_backward",
                   "sigmoid_focal_loss_forward", "softmax_focal_loss_backward",
                   "softmax_focal_loss_forward", "softmax_tree_backward", "softmax_tree_forward",
                   "weighted_softmax_loss_backward", "weighted_softmax_loss_forward",
                   "weighted_softmax_loss_mine", "yolo_head_backward", "yolo_head_forward",
                   "yolo_loss_forward"])
HOST_LAYERS = sorted(["ArgMax", "BatchReindex", "CenterLoss", "ChannelScale", "DenseCRF",
                      "DetectionEvaluate", "DetectionOutput", "Filter", "FocalLoss",
                      "GlobalLSEMargin", "LSTM", "LSTMUnit",
                      "LabelSpecificAdd", "Local",
                      "MarginInnerProduct", "MultiBoxLoss", "PSROIPooling", "PriorBox", "RNN",
                      "ROIPooling", "Region", "SegAccuracy", "SoftmaxTree", "SoftmaxWithFocalLoss",
                      "Upsample", "Yolo"])


def test_every_op_but_the_host_ones_has_a_cuda_impl():
    from minicnn import ops
    lacking = sorted(name for name in ops.__all__ if isinstance(getattr(ops, name), ops.Op)
                     and "cuda" not in getattr(ops, name).declared)
    assert lacking == HOST_OPS
    assert ("cuda" in ops.relu_forward.impls) == cuda.importable


def test_gpu_nets_run_data_python_and_host_op_layers_on_the_host():
    from minicnn.net import _cuda_ready
    assert sorted(cls.type for cls in set(LAYERS.values()) if not _cuda_ready(cls)) == \
        HOST_LAYERS
    assert LAYERS["Python"].host_only and not LAYERS["Convolution"].host_only


def test_cuda_md_names_every_host_layer():
    # docs/cuda.md's "Host layers" bullet is the user's list of what a GPU net leaves on the CPU
    text = open(os.path.join(REPO, "docs", "cuda.md")).read()
    bullet = text.split("- **Host layers.**", 1)[1].split("\n- **", 1)[0]
    words = set(bullet.replace(",", " ").replace("(", " ").replace(")", " ").split())
    assert [name for name in HOST_LAYERS if name not in words] == []


def test_cpu_nets_stay_numpy():
    net = minicnn.Net(LENET)
    assert net.device is None and net._mirrors == {}
    assert all(type(b.data) is np.ndarray for b in net.blobs.values())
    assert "device" not in repr(net.blobs["data"])


def test_a_cpu_net_run_after_set_mode_gpu_warns_once(monkeypatch):
    # pycaffe's notebooks time `caffe.set_mode_gpu(); net.forward()` on a net made before it;
    # minicnn keeps that net on the CPU, and says so instead of running there silently
    net = minicnn.Net(LENET, minicnn.TEST)
    x = np.zeros(net.blobs["data"].shape, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.forward(data=x)                          # CPU mode: nothing to say
    monkeypatch.setitem(cuda._mode, "gpu", True)    # as set_mode_gpu() leaves it
    with pytest.warns(UserWarning, match="made in CPU mode.*device='cuda'"):
        net.forward(data=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.forward(data=x)                          # once per net
        chosen = minicnn.Net(LENET, minicnn.TEST, device="cpu")
        chosen.forward(data=x)                       # put on the CPU on purpose: no note
