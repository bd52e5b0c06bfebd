"""minicnn's CUDA backend against PyTorch + cuDNN on the same GPU, side by side.

    python bench/gpu_vs_torch.py                   # layers and whole nets (a few minutes, H200)
    python bench/gpu_vs_torch.py --only layers     # or: nets
    python bench/gpu_vs_torch.py --markdown        # tables as Markdown (for bench/RESULTS.md)
    python bench/gpu_vs_torch.py --quick           # fewer, shorter rounds (a smoke run)

Both engines run float32 with TF32 off (cuBLAS's default math for minicnn; PyTorch's
allow_tf32 off for matmul and cuDNN) and cuDNN's autotuner on (benchmark = True). The training
rows are then repeated with TF32 on for both (minicnn.cuda.set_tf32, PyTorch's allow_tf32),
reported separately. Each row runs the two engines interleaved: a warm-up of each, then
`--repeat` rounds of one timed block of minicnn and one of PyTorch; a block is as many calls
as fill `--block` seconds, timed from a device synchronization to the next, so the time is the
GPU's (plus each engine's launch overhead, which is part of the engine). Medians in
milliseconds; the ratio PyTorch / minicnn: above 1 means minicnn is faster.

GFLOP/s count 2 flops per multiply-add (convolution forward 2*N*F*C/G*kh*kw*oh*ow, backward
twice that); "of FP32 peak" divides by the GPU's nominal FP32 rate (SMs x FP32 lanes per SM x 2
x clock, from the device's properties), "of sgemm" by the rate cuBLAS's float32 GEMM reaches
here on an 8192-cube. PyTorch is a bench-only dependency; nothing in minicnn imports it.
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from minicnn import cuda, ops  # noqa: E402
from minicnn.ops import conv  # noqa: E402
from minicnn.ops.conv import ConvGeometry  # noqa: E402
from minicnn.ops.pool import PoolGeometry  # noqa: E402
from nets import TorchNet, minicnn_solver  # noqa: E402

FP32_LANES = {(9, 0): 128, (8, 0): 64, (8, 6): 128, (8, 9): 128, (7, 0): 64, (7, 5): 64,
              (10, 0): 128, (12, 0): 128}    # FP32 units per SM, by compute capability
TF32_PER_FP32 = {(9, 0): 7.4, (8, 0): 8.0}    # dense TF32 tensor rate / FP32 rate (datasheets)
TORCH_DEVICE = "cuda"                          # tests run the bench's code on the CPU emulator


def sync():
    cuda.cupy().cuda.Device().synchronize()


def timed(fn, min_seconds):
    """Seconds per call of fn over a block of calls lasting at least min_seconds, from one
    device synchronization to the next."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - start
    calls = max(1, min(1000, math.ceil(min_seconds / max(once, 1e-6))))
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def side_by_side(ours, theirs, repeat, block):
    """Median seconds per call of ours() and theirs(), interleaved block by block."""
    ours(), theirs()                                    # warm-up: kernels compiled, autotuned
    ours(), theirs()
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(ours, block))
        b.append(timed(theirs, block))
    return statistics.median(a), statistics.median(b)


def clock_khz(cp, props, device):
    """The SM clock (boost) in kHz: the property (gone from CUDA 13's cudaDeviceProp), the
    device attribute, or nvidia-smi's max SM clock."""
    if props.get("clockRate"):
        return float(props["clockRate"])
    try:
        return float(cp.cuda.runtime.deviceGetAttribute(13, device))   # cudaDevAttrClockRate
    except Exception:                                 # noqa: BLE001
        pass
    import subprocess
    out = subprocess.run(["nvidia-smi", "-i", str(device), "--query-gpu=clocks.max.sm",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True)
    return float(out.stdout.split()[0]) * 1e3


def gpu_facts():
    """(name, FP32 peak GFLOP/s, TF32 peak GFLOP/s or None, SMs, clock GHz)."""
    cp = cuda.cupy()
    device = cp.cuda.Device().id
    props = cp.cuda.runtime.getDeviceProperties(device)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    cc = (int(props["major"]), int(props["minor"]))
    sms, clock = int(props["multiProcessorCount"]), clock_khz(cp, props, device) / 1e6
    fp32 = sms * FP32_LANES.get(cc, 128) * 2 * clock
    tf32 = fp32 * TF32_PER_FP32[cc] if cc in TF32_PER_FP32 else None
    return name, fp32, tf32, sms, clock


def sgemm_rate(repeat=3):
    """GFLOP/s of cuBLAS's float32 GEMM (TF32 off) on an 8192-cube, through minicnn.cuda.gemm."""
    cp = cuda.cupy()
    n = 8192
    a = cp.random.standard_normal((n, n), dtype=np.float32)
    c = cp.empty_like(a)
    best = min(timed(lambda: cuda.gemm(a, a, c, n, n, n), 0.3) for _ in range(repeat))
    return 2 * n ** 3 / best / 1e9


# --- single layers --------------------------------------------------------------------------------

CONVS = [  # name, x shape, (F, kernel, stride, pad, dilation, group)
    ("CaffeNet conv1 11x11/4", (128, 3, 227, 227), (96, 11, 4, 0, 1, 1)),
    ("CaffeNet conv2 5x5 g2", (128, 96, 27, 27), (256, 5, 1, 2, 1, 2)),
    ("CaffeNet conv3 3x3", (128, 256, 13, 13), (384, 3, 1, 1, 1, 1)),
    ("CaffeNet conv4 3x3 g2", (128, 384, 13, 13), (384, 3, 1, 1, 1, 2)),
    ("CaffeNet conv5 3x3 g2", (128, 384, 13, 13), (256, 3, 1, 1, 1, 2)),
    ("ResNet 1x1 256->64 @56", (64, 256, 56, 56), (64, 1, 1, 0, 1, 1)),
    ("ResNet 3x3 64->64 @56", (64, 64, 56, 56), (64, 3, 1, 1, 1, 1)),
    ("ResNet 1x1 64->256 @56", (64, 64, 56, 56), (256, 1, 1, 0, 1, 1)),
    ("depthwise 3x3 256 @56", (64, 256, 56, 56), (256, 3, 1, 1, 1, 256)),
    ("pointwise 1x1 256 @56", (64, 256, 56, 56), (256, 1, 1, 0, 1, 1)),
    ("depthwise 3x3/2 512 @28", (64, 512, 28, 28), (512, 3, 2, 1, 1, 512)),
    ("atrous 3x3 rate 2 @33", (16, 256, 33, 33), (256, 3, 1, 2, 2, 1)),
    ("atrous 3x3 rate 4 @33", (16, 256, 33, 33), (256, 3, 1, 4, 4, 1)),
    ("atrous 3x3 rate 6 @33", (16, 256, 33, 33), (256, 3, 1, 6, 6, 1)),
]
LRN_SHAPE = (128, 96, 27, 27)          # CaffeNet's norm1 input at batch 128
POOL_SHAPE = (128, 96, 55, 55)         # CaffeNet's pool1 input


def layer_rows(args, torch, sgemm, peak):
    F = torch.nn.functional
    cp = cuda.cupy()
    rng = np.random.default_rng(0)
    rows = []

    def both(values):
        """(CuPy arrays, torch tensors needing gradients) of the same values."""
        dev = [cp.asarray(v) for v in values]
        return dev, [torch.tensor(v, device=TORCH_DEVICE, requires_grad=True) for v in values]

    for name, xs, (f, k, s, p, d, g) in CONVS:
        if args.quick and name.startswith(("CaffeNet conv4", "CaffeNet conv5", "atrous 3x3 rate 4")):
            continue
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal((f, xs[1] // g, k, k), dtype=np.float32) * 0.01
        b = rng.standard_normal(f, dtype=np.float32)
        geom = ConvGeometry(k, s, p, d)
        oh, ow = geom.out_hw(*xs[2:])
        dy = rng.standard_normal((xs[0], f, oh, ow), dtype=np.float32)
        (dx_, dw_, db_, ddy), (tx, tw, tb, _) = both((x, w, b, dy))
        tdy = torch.tensor(dy, device=TORCH_DEVICE)
        y = cp.empty((xs[0], f, oh, ow), np.float32)
        dx_out = cp.empty_like(dx_)
        ty = F.conv2d(tx, tw, tb, s, p, d, g)
        flops = 2 * xs[0] * f * (xs[1] // g) * k * k * oh * ow
        fwd = side_by_side(lambda: ops.conv2d_forward(dx_, dw_, db_, geom=geom, group=g, out=y),
                           lambda: F.conv2d(tx, tw, tb, s, p, d, g), args.repeat, args.block)
        bwd = side_by_side(
            lambda: ops.conv2d_backward(ddy, dx_, dw_, geom=geom, group=g, dx_out=dx_out),
            lambda: torch.autograd.grad(ty, (tx, tw, tb), tdy, retain_graph=True),
            args.repeat, args.block)
        rows.append((name, "forward", *fwd, flops))
        if oh * ow < conv.CUDA_WIDE_BELOW and g < xs[1] and xs[0] > 1 and not args.quick:
            wide_below, conv.CUDA_WIDE_BELOW = conv.CUDA_WIDE_BELOW, 0
            try:                  # the other way to lay out a small map's products, for the record
                rows.append((name, "forward, a GEMM per image", *side_by_side(
                    lambda: ops.conv2d_forward(dx_, dw_, db_, geom=geom, group=g, out=y),
                    lambda: F.conv2d(tx, tw, tb, s, p, d, g), args.repeat, args.block), flops))
            finally:
                conv.CUDA_WIDE_BELOW = wide_below
        rows.append((name, "backward", *bwd, 2 * flops))
        del ty
    x = rng.standard_normal(LRN_SHAPE, dtype=np.float32)
    (dx_,), (tx,) = both((x,))
    lrn = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
    ty = F.local_response_norm(tx, 5, 1e-4, 0.75, 1.0)
    ddy, tdy = cp.ones_like(dx_), torch.ones_like(ty)
    out = cp.empty_like(dx_)
    rows.append(("LRN 5 (CaffeNet norm1)", "forward", *side_by_side(
        lambda: ops.lrn_forward(dx_, **lrn, out=out),
        lambda: F.local_response_norm(tx, 5, 1e-4, 0.75, 1.0), args.repeat, args.block), None))
    rows.append(("LRN 5 (CaffeNet norm1)", "backward", *side_by_side(
        lambda: ops.lrn_backward(ddy, dx_, **lrn, out=out),
        lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True),
        args.repeat, args.block), None))
    x = rng.standard_normal(POOL_SHAPE, dtype=np.float32)
    (dx_,), (tx,) = both((x,))
    geom = PoolGeometry((3, 3), (2, 2), (0, 0))
    ty = F.max_pool2d(tx, 3, 2, ceil_mode=True)
    y, mask = ops.max_pool2d_forward(dx_, geom=geom)
    ddy, tdy = cp.ones_like(y), torch.ones_like(ty)
    dx_out = cp.empty_like(dx_)
    rows.append(("MAX pool 3x3/2 (CaffeNet pool1)", "forward", *side_by_side(
        lambda: ops.max_pool2d_forward(dx_, geom=geom, out=y),
        lambda: F.max_pool2d(tx, 3, 2, ceil_mode=True), args.repeat, args.block), None))
    rows.append(("MAX pool 3x3/2 (CaffeNet pool1)", "backward", *side_by_side(
        lambda: ops.max_pool2d_backward(ddy, mask, x.shape, out=dx_out),
        lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True),
        args.repeat, args.block), None))
    header = ("layer", "pass", "minicnn ms", "PyTorch ms", "PyTorch/minicnn", "minicnn GFLOP/s",
              "of FP32 peak", "of sgemm")
    table = []
    for name, kind, ours, theirs, flops in rows:
        rate = flops / ours / 1e9 if flops else None
        table.append((name, kind, f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}",
                      f"{theirs / ours:.2f}x", f"{rate:.0f}" if rate else "",
                      f"{rate / peak:.0%}" if rate else "", f"{rate / sgemm:.0%}" if rate else ""))
    return header, table


# --- whole nets -----------------------------------------------------------------------------------

NET_ROWS = [  # label, net, batch
    ("CaffeNet training step", "caffenet", 128),
    ("ResNet-50-1by2 (open_nsfw) training step", "resnet50_1by2", 64),
]


def engines(name, batch, torch):
    """(minicnn step, PyTorch step) closures of one SGD training step on the GPU."""
    solver = minicnn_solver(name, batch, device=cuda.resolve_device("cuda"))
    model = TorchNet(solver.net, device=TORCH_DEVICE)
    inputs = {n: torch.tensor(cuda.to_host(solver.net.blobs[n].data), device=TORCH_DEVICE)
              for n in solver.net.inputs}
    optimizer = model.sgd()

    def theirs():
        optimizer.zero_grad()
        model.forward(inputs)["loss"].backward()
        optimizer.step()
    return lambda: solver.step(1), theirs


def launches_per_step(step):
    """Kernel launches and cuBLAS GEMMs that one call of ``step`` makes through minicnn.cuda:
    at some microseconds of host time each, they say whether the host keeps the GPU fed."""
    count = [0]
    real = {name: getattr(cuda, name) for name in ("launch", "launch_blocks", "gemm")}

    def counting(fn):
        def counted(*args, **kwargs):
            count[0] += 1
            return fn(*args, **kwargs)
        return counted
    for name, fn in real.items():
        setattr(cuda, name, counting(fn))
    try:
        step()
    finally:
        for name, fn in real.items():
            setattr(cuda, name, fn)
    return count[0]


def net_rows(args, torch, tf32):
    header = ("net", "batch", "TF32", "minicnn ms", "PyTorch ms", "PyTorch/minicnn",
              "minicnn img/s", "PyTorch img/s", "minicnn launches/step")
    table = []
    for label, name, batch in NET_ROWS:
        if args.quick:
            batch //= 4
        try:
            ours, theirs = engines(name, batch, torch)
        except SystemExit as e:                          # open_nsfw not installed
            table.append((label, batch, "on" if tf32 else "off", "-", "-", str(e), "", "", ""))
            continue
        a, b = side_by_side(ours, theirs, args.repeat, max(args.block, 0.5))
        table.append((label, batch, "on" if tf32 else "off", f"{a * 1e3:.1f}", f"{b * 1e3:.1f}",
                      f"{b / a:.2f}x", f"{batch / a:.0f}", f"{batch / b:.0f}",
                      launches_per_step(ours)))
        del ours, theirs
        if TORCH_DEVICE == "cuda":
            cuda.cupy().get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    return header, table


def set_tf32(torch, on):
    cuda.set_tf32(on)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


# --- output ---------------------------------------------------------------------------------------

def show(title, header, table, markdown):
    print(f"\n### {title}\n" if markdown else f"\n{title}")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in table:
            print("| " + " | ".join(str(c) for c in row) + " |")
        return
    widths = [max(len(str(r[i])) for r in [header] + table) for i in range(len(header))]
    for row in [header] + table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["layers", "nets"])
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per row (median)")
    p.add_argument("--block", type=float, default=0.1, help="seconds per timed block")
    p.add_argument("--quick", action="store_true", help="fewer rows and smaller batches")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--no-tf32-rows", action="store_true", help="skip the TF32 training rows")
    args = p.parse_args()
    import cupy
    import torch
    cuda.resolve_device("cuda")
    torch.backends.cudnn.benchmark = True
    set_tf32(torch, False)
    name, peak, tf32_peak, sms, clock = gpu_facts()
    sgemm = sgemm_rate()
    versions = (f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, CuPy {cupy.__version__}, "
                f"PyTorch {torch.__version__} (cuDNN {torch.backends.cudnn.version()}), "
                f"Python {platform.python_version()}")
    print(f"{'**' if args.markdown else ''}{name}{'**' if args.markdown else ''}, "
          f"{sms} SMs at {clock:.2f} GHz: FP32 peak "
          f"{peak / 1e3:.1f} TFLOP/s" + (f", TF32 dense peak {tf32_peak / 1e3:.0f} TFLOP/s"
                                         if tf32_peak else "")
          + f"; cuBLAS sgemm (8192^3, TF32 off) {sgemm / 1e3:.1f} TFLOP/s. {versions}. "
          f"{datetime.date.today().isoformat()}.")
    if args.only in (None, "layers"):
        show("Layers (float32, TF32 off)", *layer_rows(args, torch, sgemm, peak), args.markdown)
    if args.only in (None, "nets"):
        header, table = net_rows(args, torch, False)
        if not args.no_tf32_rows:
            set_tf32(torch, True)
            table += net_rows(args, torch, True)[1]
            set_tf32(torch, False)
        show("Training steps (SGD, momentum 0.9)", header, table, args.markdown)


if __name__ == "__main__":
    main()
