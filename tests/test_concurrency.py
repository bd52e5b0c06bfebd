"""Several Python threads and processes running minicnn: separate nets in threads give what one
thread gives, bit for bit; the kernels' thread count holds in every thread; a forked child runs
(GNU OpenMP would hang it) and its data layers prefetch again. docs/pycaffe.md, "Threads and
processes", states the rules."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import minicnn
from minicnn import native
from minicnn.proto import parse_text

needs_openmp = pytest.mark.skipif(native.lib is None or not native.lib.openmp,
                                  reason="needs the native extension built with OpenMP")

# conv 3x3 (Winograd where it pays), 5x5, 1x1, depthwise and dilated, BatchNorm + Scale + ReLU,
# LRN, max and average pooling, InnerProduct, softmax loss
NET = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 3 dim: 8 dim: 16 dim: 16 } shape { dim: 3 } } }
layer { name: "c3" type: "Convolution" bottom: "data" top: "c3"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "c3" top: "c3" }
layer { name: "sc" type: "Scale" bottom: "c3" top: "c3" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c3" top: "c3" }
layer { name: "c5" type: "Convolution" bottom: "c3" top: "c5"
        convolution_param { num_output: 16 kernel_size: 5 pad: 2
                            weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "lrn" type: "LRN" bottom: "c5" top: "lrn" lrn_param { local_size: 5 } }
layer { name: "c1" type: "Convolution" bottom: "lrn" top: "c1"
        convolution_param { num_output: 16 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "dw" type: "Convolution" bottom: "c1" top: "dw"
        convolution_param { num_output: 16 group: 16 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "dil" type: "Convolution" bottom: "dw" top: "dil"
        convolution_param { num_output: 16 kernel_size: 3 pad: 2 dilation: 2
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "dil" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ave" type: "Pooling" bottom: "pool" top: "ave"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "ave" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def make_net():
    minicnn.set_random_seed(3)
    return minicnn.Net(parse_text(NET), minicnn.TRAIN)


def run(net, worker, out, iterations=3):
    """Forward and backward on this worker's inputs (each worker its own batch size):
    every blob's data and diff and every parameter's diff, after each iteration."""
    batch = 2 + 2 * worker
    net.blobs["data"].reshape(batch, 8, 16, 16)
    net.blobs["label"].reshape(batch)
    net.reshape()
    results = []
    for i in range(iterations):
        rng = np.random.default_rng([worker, i])
        net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
        net.blobs["label"].data[...] = rng.integers(0, 10, batch)
        net.forward()
        net.backward()
        arrays = {f"{k} data": b.data.copy() for k, b in net.blobs.items()}
        arrays.update({f"{k} diff": b.diff.copy() for k, b in net.blobs.items()})
        arrays.update({f"{k}[{j}] diff": p.diff.copy()
                       for k, ps in net.params.items() for j, p in enumerate(ps)})
        results.append(arrays)
    out[worker] = results


@pytest.fixture
def one_kernel_thread():
    """The kernels on one thread, set from this (the main) thread; the count restored after."""
    was = native.num_threads()
    native.set_num_threads(1)
    yield
    native.set_num_threads(was)


@pytest.mark.parametrize("winograd", ["1", "2"])
def test_separate_nets_in_threads_give_what_one_thread_gives(monkeypatch, one_kernel_thread,
                                                              winograd):
    import minicnn.ops.conv as conv
    monkeypatch.setattr(conv, "WINOGRAD_MODE", winograd)       # 2: Winograd wherever it can
    workers = 3
    serial = {}
    for w in range(workers):
        run(make_net(), w, serial)
    nets = [make_net() for _ in range(workers)]
    threaded = {}
    threads = [threading.Thread(target=run, args=(nets[w], w, threaded)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    differ = [(w, i, name) for w in range(workers) for i, arrays in enumerate(serial[w])
              for name, a in arrays.items() if not np.array_equal(a, threaded[w][i][name])]
    assert not differ, f"{len(differ)} arrays differ from the serial run, e.g. {differ[:5]}"


@needs_openmp
def test_the_thread_count_holds_in_every_python_thread():
    # omp_set_num_threads sets the calling thread's count only: another thread's kernels ran
    # on OpenMP's default (every core) whatever set_num_threads had said
    was = native.num_threads()
    wanted = was + 1
    seen = []
    try:
        native.set_num_threads(wanted)
        t = threading.Thread(target=lambda: seen.append(native.num_threads()))
        t.start()
        t.join()
    finally:
        native.set_num_threads(was)
    assert seen == [wanted]


FORK_SCRIPT = """
import multiprocessing as mp, sys
import numpy as np
import minicnn
from minicnn import native
from minicnn.proto import parse_text

NET = parse_text('''
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 8 dim: 24 dim: 24 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 16 kernel_size: 3 weight_filler { type: "xavier" } } }
''')

def forward():
    minicnn.set_random_seed(1)
    net = minicnn.Net(NET)
    net.blobs["x"].data[...] = np.linspace(-1, 1, net.blobs["x"].count).reshape(4, 8, 24, 24)
    return net.forward()["c"].copy()

def child(queue):
    c = forward()
    try:
        native.set_num_threads(2)
        refused = False
    except RuntimeError as e:
        refused = "spawn" in str(e)
    queue.put((c, native.num_threads(), native.lib.forked_single_threaded(), refused))

if __name__ == "__main__":
    native.set_num_threads(2)              # the parent's kernels start OpenMP's threads
    parent = forward()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    try:
        c, threads, single, refused = queue.get(timeout=30)
    except Exception:
        print("child hung")
        p.kill()
        sys.exit(1)
    p.join()
    print("threads", threads, "single", single, "refused", refused,
          "close", bool(np.allclose(c, parent, rtol=1e-5, atol=1e-6)))
"""


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_of_a_multithreaded_parent_runs_on_one_thread(tmp_path):
    script = tmp_path / "fork_child.py"
    script.write_text(textwrap.dedent(FORK_SCRIPT))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(minicnn.__file__)))] +
        [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("MINICNN_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=90, env=env)
    assert done.stdout.strip() == "threads 1 single True refused True close True", \
        done.stdout + done.stderr
