"""What one GPU training step asks of CuPy, counted without a GPU (docs/cuda.md, "Host time").

CuPy spends microseconds of host time on every kernel launch and every array operation; a deep
net's step is thousands of them, and where the GPU is fast they set the pace. This runs the
benchmark nets (bench/nets.py) on the host emulator of the CUDA backend (tests/cuda_emu) with
the kernels and GEMMs made no-ops, so only the calls are made, and counts per part of a step:
kernel launches, cuBLAS GEMMs, CuPy array operations (arithmetic, reductions, copies, views;
by the line of minicnn that asked), new arrays, and reads back to the host (each waits for the
GPU to finish the work queued before it).

    python3 bench/gpu_host_calls.py                      # ResNet-50-1by2 (open_nsfw), batch 1
    python3 bench/gpu_host_calls.py --net caffenet --sites 10
"""

import argparse
import collections
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "bench")]

import nets  # noqa: E402
from tests import cuda_emu  # noqa: E402
from tests.cuda_emu import fake_cupy  # noqa: E402

COUNTS, SITES = collections.Counter(), collections.Counter()


def _site():
    """file:line of the innermost minicnn frame outside minicnn/cuda.py."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "minicnn" + os.sep in name and not name.endswith(os.path.join("minicnn", "cuda.py")):
            return f"{os.path.relpath(name, REPO)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _count(kind, fn, site=False):
    def counted(*args, **kwargs):
        COUNTS[kind] += 1
        if site:
            SITES[_site()] += 1
        return fn(*args, **kwargs)
    return counted


def instrument():
    """No-op kernels and GEMMs; every CuPy array operation and new array counted."""
    fake_cupy.RawKernel.__call__ = _count("launches", lambda self, *a, **k: None)
    fake_cupy.gemm_strided_batched = _count("gemms", lambda *a: None)
    for name in ("__array_ufunc__", "__array_function__", "__getitem__", "__setitem__", "get",
                 "set", "astype", "copy"):
        setattr(fake_cupy.ndarray, name,
                _count("array operations", getattr(fake_cupy.ndarray, name), site=True))
    passthrough = fake_cupy._passthrough
    fake_cupy._passthrough = lambda name: _count("array operations", passthrough(name),
                                                 site=True)
    for name in ("empty", "zeros", "ones", "full", "empty_like", "zeros_like", "asarray",
                 "ascontiguousarray"):
        setattr(fake_cupy, name, _count("new arrays", getattr(fake_cupy, name)))
    for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__"):  # each one waits
        setattr(fake_cupy.ndarray, name, _count("reads", getattr(fake_cupy.ndarray, name)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="resnet50_1by2", choices=sorted(nets.NETS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sites", type=int, default=0, help="show the N lines asking most")
    args = parser.parse_args()
    instrument()
    with cuda_emu.installed():
        solver = nets.minicnn_solver(args.net, args.batch, device=0)
        net = solver.net
        pending = []                              # Net.forward_backward, in its parts
        parts = [("clear diffs", net.clear_param_diffs),
                 ("forward", lambda: pending.append(net._forward_layers())),
                 ("backward", net.backward), ("read loss", lambda: net._settle(*pending.pop())),
                 ("update", solver.apply_update)]
        for _, run in parts:                      # first calls make tables and kernels
            run()
        rows = []
        SITES.clear()
        for label, run in parts:
            COUNTS.clear()
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            rows.append((label, COUNTS["launches"], COUNTS["gemms"], COUNTS["array operations"],
                         COUNTS["new arrays"], COUNTS["reads"], seconds * 1e3))
    print(f"{args.net}, batch {args.batch}: {len(net.layers)} layers, "
          f"{len(net.learnable_params)} parameter blobs (host emulator, kernels not run)")
    print(f"{'part':<12} {'launches':>9} {'GEMMs':>6} {'array ops':>10} {'new arrays':>11} "
          f"{'reads':>6} {'host ms':>8}")
    for row in rows + [("step", *(sum(r[i] for r in rows) for i in range(1, 7)))]:
        print(f"{row[0]:<12} {row[1]:>9} {row[2]:>6} {row[3]:>10} {row[4]:>11} {row[5]:>6} "
              f"{row[6]:>8.1f}")
    print("(host ms: this machine, the emulator's stand-in for CuPy; CuPy's own cost per call "
          "differs)")
    for site, n in SITES.most_common(args.sites):
        print(f"{n:6d} array operations  {site}")


if __name__ == "__main__":
    main()
