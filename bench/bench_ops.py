"""Times every implementation of the hot ops at shapes from real nets, next to PyTorch's CPU ops
when torch is installed. Prints one table; nothing here is asserted.

    python bench/bench_ops.py [--repeat 5]

GFLOP/s counts 2 flops per multiply-add of the convolution (forward: 2*N*F*C/G*kh*kw*oh*ow).
"""

import argparse
import time

import numpy as np

from minicnn.ops.conv import ConvGeometry, conv2d_backward, conv2d_forward
from minicnn.ops.lrn import lrn_forward
from minicnn.ops.pool import PoolGeometry, max_pool2d_forward

CONV_CASES = [  # name, x shape, (F, kernel, stride, pad, dilation, group)
    ("lenet conv2", (64, 20, 12, 12), (50, 5, 1, 0, 1, 1)),
    ("caffenet conv1", (8, 3, 227, 227), (96, 11, 4, 0, 1, 1)),
    ("caffenet conv4 (group 2)", (8, 384, 13, 13), (384, 3, 1, 1, 1, 2)),
    ("googlenet 3a 1x1", (8, 192, 28, 28), (64, 1, 1, 0, 1, 1)),
    ("mobilenet depthwise", (8, 128, 56, 56), (128, 3, 1, 1, 1, 128)),
    ("deeplab atrous 3x3 d6", (4, 256, 33, 33), (256, 3, 1, 6, 6, 1)),
]


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def torch_ops():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    return torch, F


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    torch = torch_ops()
    rows = []
    for name, xs, (f, k, s, p, d, g) in CONV_CASES:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal((f, xs[1] // g, k, k), dtype=np.float32)
        b = np.zeros(f, np.float32)
        geom = ConvGeometry(k, s, p, d)
        oh, ow = geom.out_hw(*xs[2:])
        flops = 2 * xs[0] * f * (xs[1] // g) * k * k * oh * ow
        dy = rng.standard_normal((xs[0], f, oh, ow), dtype=np.float32)
        for kind in conv2d_forward.impls:
            fwd = best_time(lambda: conv2d_forward.impls[kind](x, w, b, geom=geom, group=g),
                            args.repeat)
            bwd = best_time(lambda: conv2d_backward.impls[kind](dy, x, w, geom=geom, group=g),
                            args.repeat)
            rows.append((name, kind, fwd, bwd, flops))
        if torch:
            t, F = torch
            tx, tw, tb = (t.from_numpy(a).requires_grad_() for a in (x, w, b))

            def torch_fwd():
                return F.conv2d(tx, tw, tb, s, p, d, g)
            y = torch_fwd()
            fwd = best_time(torch_fwd, args.repeat)
            bwd = best_time(lambda: t.autograd.grad(torch_fwd(), (tx, tw, tb), t.from_numpy(dy)),
                            args.repeat) - fwd
            rows.append((name, "torch", fwd, bwd, flops))
            del y
    print(f"{'convolution':28} {'impl':6} {'fwd ms':>9} {'bwd ms':>9} {'fwd GFLOP/s':>12}")
    for name, kind, fwd, bwd, flops in rows:
        print(f"{name:28} {kind:6} {fwd * 1e3:9.2f} {bwd * 1e3:9.2f} {flops / fwd / 1e9:12.2f}")

    x = rng.standard_normal((8, 96, 55, 55), dtype=np.float32)
    geom = PoolGeometry.from_fields(kernel_size=3, stride=2)
    pool_ms = best_time(lambda: max_pool2d_forward.impls["ref"](x, geom=geom), args.repeat)
    lrn_ms = best_time(lambda: lrn_forward.impls["ref"](x, local_size=5, alpha=1e-4),
                       args.repeat)
    print(f"\nMAX pool 3x3/2 on (8, 96, 55, 55), ref: {pool_ms * 1e3:.2f} ms")
    print(f"LRN 5 across channels on (8, 96, 55, 55), ref: {lrn_ms * 1e3:.2f} ms")

if __name__ == "__main__":
    main()
