"""The ``minicnn`` command, after Caffe's ``caffe`` tool.

    minicnn time models/lenet/lenet.prototxt --iterations 20
    minicnn time -model models/lenet/lenet.prototxt -iterations 20     (Caffe's spelling)

Caffe's single-dash long options (``-model``, ``-iterations``, ``-sigint_effect``) are accepted
alongside the usual ``--model``. Errors in user files print one line naming the file and place,
never a traceback.
"""

import argparse
import re
import sys
import time

import numpy as np

from minicnn.errors import MinicnnError

COMMANDS = {}


def command(fn):
    COMMANDS[fn.__name__.rstrip("_")] = fn
    return fn


def _caffe_style(argv):
    """-model -> --model, --sigint_effect -> --sigint-effect (Caffe's gflags spellings)."""
    out = []
    for arg in argv:
        m = re.match(r"^-{1,2}([A-Za-z][A-Za-z0-9_-]+)(=.*)?$", arg)
        if m and (arg.startswith("--") or len(m.group(1)) > 1):
            arg = "--" + m.group(1).replace("_", "-") + (m.group(2) or "")
        out.append(arg)
    return out


def _add_net_options(p, phase_default):
    p.add_argument("model_path", nargs="?", metavar="MODEL", help="net prototxt")
    p.add_argument("--model", help="net prototxt (Caffe's -model)")
    p.add_argument("--weights", help="a .caffemodel to load first")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default=phase_default, type=str.upper)
    p.add_argument("--level", type=int, default=0, help="net state level")
    p.add_argument("--stage", action="append", default=[], help="net state stage (repeatable)")


def _model(args):
    model = args.model or args.model_path
    if not model:
        raise MinicnnError("give the net prototxt, e.g. minicnn time models/lenet/lenet.prototxt")
    return model


@command
def time_(args):
    """Time forward and backward of every layer, as `caffe time` does."""
    from minicnn import Net

    net = Net(_model(args), weights=args.weights, phase=args.phase, level=args.level,
              stages=args.stage)
    rng = np.random.default_rng(0)
    for name in net.inputs:                   # inputs get random data of their declared shape
        blob = net.blobs[name]
        blob.data[...] = rng.standard_normal(blob.shape)
    n_layers = len(net.layers)
    print(f"Net '{net.name}' ({net.phase}): {n_layers} layers, input "
          + ", ".join(f"{n} {net.blobs[n].shape}" for n in net.inputs))
    print("Performing Forward")
    print(f"Initial loss: {net.forward_from_to():g}")
    print("Performing Backward")
    net.backward()
    if not any(net.layer_need_backward):
        print("Note: nothing in this net needs a gradient (no loss, or force_backward unset); "
              "backward times below cover parameter diffs only.")
    forward_ms, backward_ms = np.zeros(n_layers), np.zeros(n_layers)
    start = time.perf_counter()
    for _ in range(args.iterations):
        for i, (layer, bottoms, tops) in enumerate(zip(net.layers, net.bottom_vecs,
                                                       net.top_vecs)):
            t = time.perf_counter()
            layer.forward(bottoms, tops)
            forward_ms[i] += time.perf_counter() - t
        for i in reversed(range(n_layers)):   # every layer, as Caffe's time does
            t = time.perf_counter()
            net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                   net.bottom_vecs[i])
            backward_ms[i] += time.perf_counter() - t
    total = (time.perf_counter() - start) * 1000
    forward_ms *= 1000 / args.iterations
    backward_ms *= 1000 / args.iterations
    width = max(10, max(len(n) for n in net.layer_names))
    print("Average time per layer:")
    for name, f, b in zip(net.layer_names, forward_ms, backward_ms):
        print(f"{name:>{width}}\tforward: {f:.4f} ms.")
        print(f"{name:>{width}}\tbackward: {b:.4f} ms.")
    print(f"Average Forward pass: {forward_ms.sum():.4f} ms.")
    print(f"Average Backward pass: {backward_ms.sum():.4f} ms.")
    print(f"Average Forward-Backward: {total / args.iterations:.4f} ms.")
    print(f"Total Time: {total:.4f} ms.")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minicnn", description="Run Caffe nets with minicnn (commands after Caffe's tool).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("time", help="time forward/backward of each layer (like `caffe time`)")
    _add_net_options(p, "TRAIN")
    p.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(_caffe_style(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except MinicnnError as e:
        print(f"minicnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
