"""minicnn's CPU path against PyTorch's CPU build, side by side on the same shapes and nets.

    python bench/cpu_vs_torch.py                  # everything: about 10 minutes on 2 cores
    python bench/cpu_vs_torch.py --only layers    # or nets, memory
    python bench/cpu_vs_torch.py --markdown       # tables as Markdown (for bench/RESULTS.md)
    python bench/cpu_vs_torch.py --one-thread     # both engines on one thread, CPU time
    python bench/cpu_vs_torch.py --match depthwise --match mobilenet   # only those rows

Each row runs both engines interleaved: a warm-up of each, then `--repeat` rounds of one timed
block of minicnn and one of PyTorch, each block long enough to time (at least `--block`
seconds), with a pause between blocks (OpenBLAS's threads spin for about 0.1 s after a call and
would slow whichever side came next). The tables give medians in milliseconds and the ratio
PyTorch / minicnn: above 1 means minicnn is faster. ``--one-thread`` runs both engines on one
thread and times them by CPU time (time.process_time), which other programs on the machine do
not inflate: the per-core efficiency of each engine.

GFLOP/s counts 2 flops per multiply-add (convolution forward 2*N*F*C/G*kh*kw*oh*ow, backward
twice that: the data and the filter gradients); "of sgemm" divides by the rate NumPy's BLAS
reaches on a large square product here, "of peak" by the float32 multiply-add rate of the
machine, measured by a register-only AVX-512 loop on the same threads (minicnn's
`fma_peak_gflops`; blank without AVX-512). Convolutions that minicnn runs by Winograd (3x3 and
5x5, stride 1: minicnn/ops/conv.py, _winograd) do 0.36-0.52 of those multiply-adds, so their
rates are effective ones (the direct convolution's flops over the time) and can pass 100% of
peak. Peak memory is the growth of the resident set during a
training step, each engine in a fresh process. PyTorch is a bench-only dependency
(`pip install torch==2.13.0`, the CPU build); nothing in minicnn imports it.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from minicnn import native, ops  # noqa: E402
from minicnn.ops.conv import ConvGeometry  # noqa: E402
from minicnn.ops.pool import PoolGeometry  # noqa: E402
from nets import TorchNet, minicnn_net, minicnn_solver  # noqa: E402

PAUSE = 0.15
ONE_THREAD = os.environ.get("MINICNN_BENCH_ONE_THREAD") == "1"
clock = time.process_time if ONE_THREAD else time.perf_counter


def timed(fn, min_seconds):
    """Seconds per call of fn, over a block of calls lasting at least min_seconds."""
    calls, start = 0, clock()
    while True:
        fn()
        calls += 1
        elapsed = clock() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def side_by_side(ours, theirs, repeat, block):
    """Median seconds per call of ours() and theirs(), interleaved block by block."""
    ours(), theirs()                                     # warm-up: buffers, caches, threads
    a, b = [], []
    for _ in range(repeat):
        time.sleep(PAUSE)
        a.append(timed(ours, block))
        time.sleep(PAUSE)
        b.append(timed(theirs, block))
    return statistics.median(a), statistics.median(b)


def sgemm_rate(repeat=5):
    """GFLOP/s of NumPy's float32 matrix product (OpenBLAS) on a 2048-cube."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    best = min(timed(lambda: np.matmul(a, a, out=out), 0.3) for _ in range(repeat))
    return 2 * 2048**3 / best / 1e9


# --- single layers --------------------------------------------------------------------------------

CONVS = [  # name, x shape, (F, kernel, stride, pad, dilation, group)
    ("CaffeNet conv1 11x11/4", (16, 3, 227, 227), (96, 11, 4, 0, 1, 1)),
    ("CaffeNet conv2 5x5 g2", (16, 96, 27, 27), (256, 5, 1, 2, 1, 2)),
    ("CaffeNet conv3 3x3", (16, 256, 13, 13), (384, 3, 1, 1, 1, 1)),
    ("CaffeNet conv4 3x3 g2", (16, 384, 13, 13), (384, 3, 1, 1, 1, 2)),
    ("CaffeNet conv5 3x3 g2", (16, 384, 13, 13), (256, 3, 1, 1, 1, 2)),
    ("ResNet 1x1 256->64 @56", (8, 256, 56, 56), (64, 1, 1, 0, 1, 1)),
    ("ResNet 3x3 64->64 @56", (8, 64, 56, 56), (64, 3, 1, 1, 1, 1)),
    ("ResNet 1x1 64->256 @56", (8, 64, 56, 56), (256, 1, 1, 0, 1, 1)),
    ("depthwise 3x3 256 @56", (8, 256, 56, 56), (256, 3, 1, 1, 1, 256)),
    ("depthwise 3x3/2 128 @56", (8, 128, 56, 56), (128, 3, 2, 1, 1, 128)),   # MobileNet's
    ("depthwise 3x3 512 @14", (8, 512, 14, 14), (512, 3, 1, 1, 1, 512)),
    ("depthwise 3x3 1024 @7", (8, 1024, 7, 7), (1024, 3, 1, 1, 1, 1024)),
    ("atrous depthwise 3x3 rate 6 @33", (8, 256, 33, 33), (256, 3, 1, 6, 6, 256)),
    ("pointwise 1x1 256 @56", (8, 256, 56, 56), (256, 1, 1, 0, 1, 1)),
    ("atrous 3x3 rate 2 @33", (8, 256, 33, 33), (256, 3, 1, 2, 2, 1)),
    ("atrous 3x3 rate 4 @33", (8, 256, 33, 33), (256, 3, 1, 4, 4, 1)),
    ("atrous 3x3 rate 6 @33", (8, 256, 33, 33), (256, 3, 1, 6, 6, 1)),
]


def fma_peak():
    """GFLOP/s of AVX-512 float32 multiply-adds on minicnn's threads, or None."""
    rate = native.lib.fma_peak_gflops(0.6) if native.lib else 0.0
    return rate or None


def wanted(args, label):
    """Whether --match (any of its words) picks this row."""
    return not args.match or any(word.lower() in label.lower() for word in args.match)


def layer_rows(args, torch, sgemm, peak=None):
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    rows = []
    for name, xs, (f, k, s, p, d, g) in CONVS:
        if not wanted(args, name):
            continue
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal((f, xs[1] // g, k, k), dtype=np.float32) * 0.01
        b = rng.standard_normal(f, dtype=np.float32)
        geom = ConvGeometry(k, s, p, d)
        oh, ow = geom.out_hw(*xs[2:])
        dy = rng.standard_normal((xs[0], f, oh, ow), dtype=np.float32)
        flops = 2 * xs[0] * f * (xs[1] // g) * k * k * oh * ow
        tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
        ty, tdy = F.conv2d(tx, tw, tb, s, p, d, g), torch.from_numpy(dy)
        fwd = side_by_side(lambda: ops.conv2d_forward(x, w, b, geom=geom, group=g),
                           lambda: F.conv2d(tx, tw, tb, s, p, d, g), args.repeat, args.block)
        bwd = side_by_side(lambda: ops.conv2d_backward(dy, x, w, geom=geom, group=g),
                           lambda: torch.autograd.grad(ty, (tx, tw, tb), tdy, retain_graph=True),
                           args.repeat, args.block)
        rows.append((name, "forward", *fwd, flops))
        rows.append((name, "backward", *bwd, 2 * flops))
    rows += lrn_and_pool_rows(args, torch, rng)
    header = ("layer", "pass", "minicnn ms", "PyTorch ms", "PyTorch/minicnn", "minicnn GFLOP/s",
              "of sgemm", "of peak", "PyTorch of peak")
    table = []
    for name, kind, ours, theirs, flops in rows:
        rate = f"{flops / ours / 1e9:.1f}" if flops else ""
        share = f"{flops / ours / 1e9 / sgemm:.0%}" if flops else ""
        of_peak = f"{flops / ours / 1e9 / peak:.0%}" if flops and peak else ""
        theirs_of_peak = f"{flops / theirs / 1e9 / peak:.0%}" if flops and peak else ""
        table.append((name, kind, f"{ours * 1e3:.2f}", f"{theirs * 1e3:.2f}",
                      f"{theirs / ours:.2f}x", rate, share, of_peak, theirs_of_peak))
    return header, table


def lrn_and_pool_rows(args, torch, rng):
    """CaffeNet's norm1 and pool1, forward and backward (inputs drawn either way, so --match
    leaves the other rows' data as it was)."""
    F = torch.nn.functional
    rows = []
    x = rng.standard_normal((16, 96, 27, 27), dtype=np.float32)
    label = "LRN 5 (CaffeNet norm1)"
    if wanted(args, label):
        tx = torch.from_numpy(x).requires_grad_()
        lrn = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
        ty = F.local_response_norm(tx, 5, 1e-4, 0.75, 1.0)
        dy = np.ones_like(x)
        rows.append((label, "forward", *side_by_side(
            lambda: ops.lrn_forward(x, **lrn),
            lambda: F.local_response_norm(tx, 5, 1e-4, 0.75, 1.0), args.repeat, args.block),
            None))
        rows.append((label, "backward", *side_by_side(
            lambda: ops.lrn_backward(dy, x, **lrn),
            lambda: torch.autograd.grad(ty, tx, torch.from_numpy(dy), retain_graph=True),
            args.repeat, args.block), None))
    x = rng.standard_normal((16, 96, 55, 55), dtype=np.float32)
    label = "MAX pool 3x3/2 (CaffeNet pool1)"
    if wanted(args, label):
        tx = torch.from_numpy(x).requires_grad_()
        geom = PoolGeometry((3, 3), (2, 2), (0, 0))
        ty = F.max_pool2d(tx, 3, 2, ceil_mode=True)
        y, mask = ops.max_pool2d_forward(x, geom=geom)
        dy = np.ones_like(y)
        rows.append((label, "forward", *side_by_side(
            lambda: ops.max_pool2d_forward(x, geom=geom),
            lambda: F.max_pool2d(tx, 3, 2, ceil_mode=True), args.repeat, args.block), None))
        rows.append((label, "backward", *side_by_side(
            lambda: ops.max_pool2d_backward(dy, mask, x.shape),
            lambda: torch.autograd.grad(ty, tx, torch.from_numpy(dy), retain_graph=True),
            args.repeat, args.block), None))
    return rows


# --- whole nets -----------------------------------------------------------------------------------

NET_ROWS = [  # label, net, batch, what runs: "train" (an SGD step), "test", "saliency"
    ("LeNet training step", "lenet", 64, "train"),
    ("CaffeNet training step", "caffenet", 16, "train"),
    ("CaffeNet inference", "caffenet", 16, "test"),
    ("CaffeNet saliency map", "caffenet", 1, "saliency"),
    ("ResNet-50-1by2 (open_nsfw) inference", "resnet50_1by2", 1, "test"),
    ("ResNet-50-1by2 (open_nsfw) inference", "resnet50_1by2", 8, "test"),
    ("ResNet-50-1by2 (open_nsfw) training step", "resnet50_1by2", 8, "train"),
    ("ResNet-50-1by2 (open_nsfw) saliency map", "resnet50_1by2", 1, "saliency"),
    ("MobileNet v1 inference", "mobilenet", 8, "test"),
    ("MobileNet v1 training step", "mobilenet", 8, "train"),
    ("MobileNet v1 saliency map", "mobilenet", 1, "saliency"),
]


def engines(name, batch, mode, torch):
    """(minicnn step, PyTorch step) closures for one row. A saliency map is the gradient of
    one class score with respect to the image: a forward, then a backward from the output
    (every parameter's gradient included, as pycaffe's ``net.backward()`` and autograd with
    trainable weights both compute them)."""
    solver = minicnn_solver(name, batch) if mode == "train" else None
    net = solver.net if solver else minicnn_net(name, batch, False,
                                                force_backward=mode == "saliency")
    model = TorchNet(net)
    inputs = {n: net.blobs[n].data.copy() for n in net.inputs}
    if mode == "train":
        optimizer = model.sgd()

        def ours():
            solver.step(1)

        def theirs():
            optimizer.zero_grad()
            model.forward(inputs)["loss"].backward()
            optimizer.step()
        return ours, theirs
    if mode == "saliency":
        top = net.outputs[0]
        score = min(3, net.blobs[top].count // batch - 1)        # any one class

        def ours():
            net.forward()
            net.blobs[top].diff[...] = 0
            net.blobs[top].diff.reshape(batch, -1)[0, score] = 1
            net.backward()

        def theirs():
            data = torch.from_numpy(inputs["data"]).requires_grad_(True)
            model.forward({"data": data})[top].flatten(1)[0, score].backward()
        return ours, theirs

    def theirs():
        with torch.no_grad():
            model.forward(inputs)
    return net.forward, theirs


def net_rows(args, torch):
    header = ("net", "batch", "minicnn ms", "PyTorch ms", "PyTorch/minicnn", "minicnn img/s",
              "PyTorch img/s")
    table = []
    for label, name, batch, mode in NET_ROWS:
        if not wanted(args, label):
            continue
        ours, theirs = engines(name, batch, mode, torch)
        a, b = side_by_side(ours, theirs, args.repeat, args.block)
        table.append((label, batch, f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", f"{b / a:.2f}x",
                      f"{batch / a:.1f}", f"{batch / b:.1f}"))
    return header, table


def peak_step_memory(engine, name, batch, steps=3):
    """MiB of peak resident memory over `steps` training steps, above what the process held
    before building the net (weights, gradients, solver history and activations included)."""
    build = {
        "minicnn": f"solver = nets.minicnn_solver({name!r}, {batch})\n"
                   f"step = lambda: solver.step(1)\n",
        # PyTorch's weights are copies of a minicnn net's, which is then freed again
        "torch": f"net = nets.minicnn_net({name!r}, {batch}, True)\n"
                 "model = nets.TorchNet(net)\n"
                 "inputs = {n: net.blobs[n].data.copy() for n in net.inputs}\n"
                 "del net\n"
                 "opt = model.sgd()\n"
                 "def step():\n"
                 "    opt.zero_grad(); model.forward(inputs)['loss'].backward(); opt.step()\n",
    }[engine]
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import gc\n"
        + ("import torch\n" if engine == "torch" else "")
        + "import numpy as np, minicnn, nets\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) / 1024\n"
        "before = status('VmRSS')\n"
        + build
        + "gc.collect()\n"
        "open('/proc/self/clear_refs', 'w').write('5')      # peak := current\n"
        f"for _ in range({steps}):\n"
        "    step()\n"
        "print(status('VmHWM') - before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return float(out.stdout.split()[-1])


def memory_rows(args, torch):
    header = ("training step", "batch", "minicnn MiB", "PyTorch MiB", "minicnn/PyTorch")
    table = []
    for label, name, batch, mode in NET_ROWS:
        if mode != "train":
            continue
        ours = peak_step_memory("minicnn", name, batch)
        theirs = peak_step_memory("torch", name, batch)
        table.append((label, batch, f"{ours:.0f}", f"{theirs:.0f}", f"{ours / theirs:.2f}x"))
    return header, table


# --- output ---------------------------------------------------------------------------------------

def machine(torch):
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}, "
            f"NumPy {np.__version__}, minicnn native extension "
            f"{'loaded' if native.lib else 'MISSING'} ({native.num_threads()} OpenMP threads), "
            f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)")


def show(title, header, table, markdown):
    print(f"\n{'### ' if markdown else ''}{title}\n")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in table:
            print("| " + " | ".join(str(c) for c in row) + " |")
        return
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for row in (header, *table):
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["layers", "nets", "memory"], action="append")
    parser.add_argument("--repeat", type=int, default=7, help="timed blocks per side (median)")
    parser.add_argument("--block", type=float, default=0.2, help="seconds per timed block")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--match", action="append", metavar="TEXT",
                        help="only the rows whose name holds TEXT (case ignored; repeatable)")
    parser.add_argument("--one-thread", action="store_true",
                        help="one thread per engine, timed by CPU time")
    args = parser.parse_args()
    if args.one_thread and not ONE_THREAD:      # thread counts must be set before the imports
        env = dict(os.environ, MINICNN_BENCH_ONE_THREAD="1", MINICNN_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))
    try:
        import torch
    except ImportError:
        raise SystemExit("PyTorch is needed for the comparison: pip install torch==2.13.0")
    if ONE_THREAD:
        torch.set_num_threads(1)
    only = set(args.only or ["layers", "nets", "memory"])
    print(machine(torch))
    print("one thread per engine, CPU time" if ONE_THREAD else
          "all cores, wall-clock time, engines interleaved")
    sgemm = sgemm_rate()
    print(f"NumPy float32 sgemm (2048^3): {sgemm:.1f} GFLOP/s")
    peak = fma_peak()
    if peak:
        print(f"float32 multiply-add peak (AVX-512, measured): {peak:.1f} GFLOP/s")
    if "layers" in only:
        show("Single layers (float32)", *layer_rows(args, torch, sgemm, peak), args.markdown)
    if "nets" in only:
        show("Whole nets (float32)", *net_rows(args, torch), args.markdown)
    if "memory" in only:
        show("Peak memory of a training step", *memory_rows(args, torch), args.markdown)


if __name__ == "__main__":
    main()
