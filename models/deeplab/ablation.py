"""The ablation table of models/deeplab/README.md: parameters, FLOPs and inference time of each
variant's deploy net, with the scores `minicnn eval-segmentation --out` wrote for it.

    python models/deeplab/ablation.py --eval-dir runs/deeplab     # reads <dir>/<variant>/eval.json

Parameters: every learned blob (convolution weights, biases, Scale's scale and shift); the
BatchNorm statistics are not counted. FLOPs: 2 x the multiply-adds of the convolutions,
deconvolutions and fully connected layers for one image of --size x --size (BatchNorm, ReLU,
Interp, pooling and softmax add under 2% here and are left out). Time: the median over --runs
forward passes of one image, after one warm-up pass, in this process (so it depends on the
machine and on what else runs on it; the README says how it was measured).
"""

import argparse
import json
import os
import time

import numpy as np

import minicnn

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("deeplab", "deeplab_nodec", "deeplab_plain")


def count_params(net):
    return sum(b.count for layer in net.layers if layer.type != "BatchNorm"
               for b in layer.blobs)


def count_flops(net):
    """2 x multiply-adds of the convolutions, deconvolutions and inner products, as the net is
    shaped now."""
    macs = 0
    for layer, bottoms, tops in zip(net.layers, net.bottom_vecs, net.top_vecs):
        if layer.type in ("Convolution", "ConvolutionDepthwise", "DepthwiseConvolution"):
            w = layer.blobs[0].shape                      # (F, C/G, kh, kw)
            for top in tops:
                macs += int(np.prod(top.shape)) * int(np.prod(w[1:]))
        elif layer.type == "Deconvolution":
            w = layer.blobs[0].shape                      # (C, F/G, kh, kw)
            for bottom in bottoms:
                macs += int(np.prod(bottom.shape)) * int(np.prod(w[1:]))
        elif layer.type == "InnerProduct":
            macs += int(np.prod(tops[0].shape)) * layer.blobs[0].shape[1]
    return 2 * macs


def time_forward(net, size, runs):
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    net.forward(data=x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        net.forward(data=x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def row(variant, size, runs, eval_dir, band):
    minicnn.set_random_seed(0)
    net = minicnn.Net(os.path.join(HERE, f"{variant}_deploy.prototxt"))
    net.blobs["data"].reshape((1, 3, size, size))
    net.reshape()
    for layer in net.layers:                  # unit statistics: no overflow in the timing
        if layer.type == "BatchNorm":
            for blob, value in zip(layer.blobs, (0.0, 1.0, 1.0)):
                blob.data[...] = value
    out = {"variant": variant, "params": count_params(net), "gflops": count_flops(net) / 1e9,
           "ms": 1000 * time_forward(net, size, runs)}
    path = os.path.join(eval_dir, variant, "eval.json") if eval_dir else None
    if path and os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
        out["miou"] = result["overall"]["miou"]
        out["boundary"] = result["boundary"].get(str(band), {}).get("miou")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=97)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--eval-dir", help="folder of <variant>/eval.json files")
    ap.add_argument("--band", type=int, default=2, help="the boundary band to report")
    args = ap.parse_args(argv)
    fmt = (lambda v: "-" if v is None else f"{v:.4f}")
    print(f"| variant | parameters | GFLOPs ({args.size}x{args.size}) | forward ms | mIoU | "
          f"boundary mIoU ({args.band} px) |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant in VARIANTS:
        r = row(variant, args.size, args.runs, args.eval_dir, args.band)
        print(f"| {variant} | {r['params']:,} | {r['gflops']:.3f} | {r['ms']:.1f} | "
              f"{fmt(r.get('miou'))} | {fmt(r.get('boundary'))} |")


if __name__ == "__main__":
    main()
