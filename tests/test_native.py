"""The native extension (csrc/ -> minicnn._native): it loads where CI requires it, its thread
control works, and ops pick their "cpu" implementation unless MINICNN_CPU=ref."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minicnn
from minicnn.native import lib
from minicnn.ops import Op

needs_native = pytest.mark.skipif(lib is None, reason="minicnn._native was not built")


def test_native_extension_loaded_where_required():
    """.ci/run sets MINICNN_REQUIRE_NATIVE=1: there the extension must have been built."""
    if os.environ.get("MINICNN_REQUIRE_NATIVE") == "1":
        assert lib is not None, minicnn.native.load_error
    else:
        pytest.skip("MINICNN_REQUIRE_NATIVE is not set")


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_build_sums_with_threads(dtype):
    a = np.arange(100_001, dtype=dtype)
    assert lib.sum_all(a) == a.astype(np.float64).sum()


@needs_native
def test_thread_count_follows_minicnn_num_threads():
    code = "from minicnn.native import num_threads; print(num_threads())"
    env = dict(os.environ, MINICNN_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    env["MINICNN_NUM_THREADS"] = "zero"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "MINICNN_NUM_THREADS" in out.stderr


def _libgomp_spincount(**env_vars):
    """GNU OpenMP's GOMP_SPINCOUNT as libgomp read it in a fresh process importing minicnn
    (OMP_DISPLAY_ENV=verbose prints it when libgomp loads), and GOMP_SPINCOUNT in that
    process's environment afterwards; None where the extension uses another OpenMP."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_vars, OMP_DISPLAY_ENV="verbose")
    code = ("import os, minicnn\n"
            "print('gomp' in open('/proc/self/maps').read(), os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded, left = out.stdout.split()
    if loaded != "True":
        return None
    read = [line.split("=")[1].strip(" '") for line in out.stderr.splitlines()
            if line.strip().startswith("GOMP_SPINCOUNT =")]
    assert len(read) == 1, out.stderr
    return int(read[0]), left


@needs_native
def test_openmp_threads_spin_briefly_unless_the_user_says_otherwise():
    """libgomp's default 300000 spins (milliseconds) made two threads several times slower than
    one beside another busy process: minicnn sets minicnn.native.SPINCOUNT for libgomp to read
    as it loads, without leaving it to child processes; the user's settings win."""
    seen = _libgomp_spincount()
    if seen is None:
        pytest.skip("the extension's OpenMP is not GNU's")
    assert seen[0] < 300000, "libgomp kept its default spin count"
    assert seen == (minicnn.native.SPINCOUNT, "None")
    assert _libgomp_spincount(GOMP_SPINCOUNT="12345") == (12345, "12345")
    assert _libgomp_spincount(OMP_WAIT_POLICY="active")[0] > 300000     # libgomp's "active"


def test_dispatch_prefers_cpu_unless_told_ref(monkeypatch):
    op = Op("twice")
    op.impl("ref")(lambda x: ("ref", x))
    op.impl("cpu")(lambda x: ("cpu", x))
    assert op(np.ones(2))[0] == "cpu"
    monkeypatch.setenv("MINICNN_CPU", "ref")
    assert op(np.ones(2))[0] == "ref"


@needs_native
def test_fma_peak_is_a_plausible_rate():
    """The benchmark's 'of peak' divisor: GFLOP/s of a register-only AVX-512 loop (0 without
    AVX-512), a rate between one slow core's and a large server's."""
    rate = lib.fma_peak_gflops(0.05)
    if "avx512" not in lib.gemm_kernel():
        assert rate == 0.0
    else:
        assert 1.0 < rate < 100_000.0, rate


@needs_native
def test_zero_fill_of_small_diffs_wakes_no_other_thread():
    """ClearParamDiffs of a small net (under 1 MB of diffs) is one memset on this thread:
    waking OpenMP's other threads for it cost milliseconds a step on busy cores. Seen from a
    fresh process: OpenMP's worker threads appear only with the large fill."""
    code = """if True:
        import os
        import numpy as np
        from minicnn.native import lib
        tasks = lambda: len(os.listdir("/proc/self/task"))
        small = [np.ones(n, np.float32) for n in (36, 4, 640, 10)]
        large = [np.ones(1 << 19, np.float32) for _ in range(3)]
        before = tasks()
        lib.zero_fill(small)
        after_small = tasks()
        lib.zero_fill(large)
        print(before, after_small, tasks(), sum(a.sum() for a in small + large))
        """
    env = dict(os.environ, MINICNN_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    before, after_small, after_large, total = out.stdout.split()
    assert float(total) == 0.0
    assert int(after_large) > int(before)         # the large fill runs on both threads
    assert after_small == before


@needs_native
def test_a_one_image_yolov1_loss_wakes_no_other_thread():
    """The YOLOv1 loss runs serially below PARALLEL_WORK, as the other kernels' loops: a
    one-image loss woke a second thread (3 ms a call on a busy machine, against 0.006 on one
    thread). Seen from a fresh process: the worker threads appear with a batch of 64."""
    code = """if True:
        import os
        import numpy as np
        from minicnn.native import lib
        tasks = lambda: len(os.listdir("/proc/self/task"))
        def loss(n):                      # side 7, 2 boxes, 20 classes: 1470 values an image
            x = np.full((n, 1470), 0.5, np.float32)
            truth = np.zeros((n, 49, 25), np.float32)
            truth[:, 3, 0], truth[:, 3, 1], truth[:, 3, 21:] = 1, 1, 0.5
            return lib.detection_loss_forward(x, truth, 7, 2, 20, True, True, 1, 0.5, 1, 5)[0]
        before = tasks()
        one = loss(1)
        after_one = tasks()
        many = loss(64)
        print(before, after_one, tasks(), many / one)
        """
    env = dict(os.environ, MINICNN_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    before, after_one, after_many, ratio = out.stdout.split()
    assert float(ratio) == pytest.approx(64)          # the same loss for each image
    assert int(after_many) > int(before)               # the batch runs on both threads
    assert after_one == before


@needs_native
def test_zero_fill_zeroes_the_short_last_piece_of_a_large_array():
    """zero_fill cuts the arrays into 1 MiB pieces shared by the threads; an array that is no
    whole number of pieces (1 MiB + 4 bytes, 2.5 MiB, an odd float64 size) has its last,
    shorter piece zeroed too, and so do the small arrays beside them."""
    arrays = [np.ones((1 << 18) + 1, np.float32), np.ones(5 << 17, np.float32),
              np.ones((3 << 17) + 7, np.float64), np.ones(3, np.float32)]
    lib.zero_fill(arrays)
    for a in arrays:
        assert not a.any(), (a.size, np.flatnonzero(a)[:3])


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _without_native(tmp_path, require):
    """An environment that imports a copy of the package without its compiled extension, as
    pip installs it where no C++ compiler is (pip hides setup.py's warning about that). Run
    Python with -S in it: an editable install's import hook (a .pth file in site-packages)
    would find minicnn._native in the checkout whatever the copy lacks; the site-packages
    folders come in through PYTHONPATH instead."""
    shutil.copytree(os.path.dirname(minicnn.__file__), tmp_path / "pkg" / "minicnn",
                    ignore=shutil.ignore_patterns("_native*", "__pycache__"))
    site_dirs = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "pkg"), *site_dirs]),
               MPLBACKEND="Agg")
    env.pop("MINICNN_CPU", None)
    if require:
        env["MINICNN_REQUIRE_NATIVE"] = "1"
    else:
        env.pop("MINICNN_REQUIRE_NATIVE", None)
    return env


def test_a_missing_extension_is_named_where_it_is_required(tmp_path):
    """Not Python's "cannot import name '_native' from partially initialized module 'minicnn'
    (most likely due to a circular import)", which sends one looking for an import cycle."""
    out = subprocess.run([sys.executable, "-S", "-c", "import minicnn"], cwd=tmp_path,
                         env=_without_native(tmp_path, True), capture_output=True, text=True)
    assert out.returncode != 0
    assert "No module named 'minicnn._native'" in out.stderr, out.stderr
    assert "circular" not in out.stderr


def test_without_the_extension_minicnn_runs_on_numpy_and_time_says_so(tmp_path):
    """The NumPy path gives the native path's outputs (LeNet forward with seeded weights), and
    `minicnn time` tells why its times are those of the reference ops."""
    code = """if True:
        import sys
        import numpy as np
        import minicnn
        assert minicnn.native.lib is None and minicnn.__file__.startswith(sys.argv[2])
        minicnn.set_random_seed(3)
        net = minicnn.Net(sys.argv[1], minicnn.TEST)
        net.blobs["data"].data = np.linspace(-1, 1, net.blobs["data"].count).reshape(
            net.blobs["data"].shape).astype(np.float32)
        np.save(sys.argv[2] + "/prob.npy", net.forward()["prob"])
        """
    lenet = os.path.join(REPO, "models", "lenet", "lenet.prototxt")
    env = _without_native(tmp_path, False)
    out = subprocess.run([sys.executable, "-S", "-c", code, lenet, str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    minicnn.set_random_seed(3)
    net = minicnn.Net(lenet, minicnn.TEST)
    net.blobs["data"].data = np.linspace(-1, 1, net.blobs["data"].count).reshape(
        net.blobs["data"].shape).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "prob.npy"), net.forward()["prob"],
                               rtol=1e-5, atol=1e-7)
    out = subprocess.run([sys.executable, "-S", "-m", "minicnn", "time", lenet, "--iterations",
                          "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "native extension did not load (No module named 'minicnn._native')" in out.stdout
    if lib is not None:       # with it, no such note
        out = subprocess.run([sys.executable, "-m", "minicnn", "time", lenet, "--iterations",
                              "1"], cwd=tmp_path, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=os.path.dirname(
                                 os.path.dirname(minicnn.__file__))))
        assert out.returncode == 0, out.stderr
        assert "native extension" not in out.stdout
