"""The ``minicnn`` command, after Caffe's ``caffe`` tool and its helpers.

    minicnn data mnist                                   # real digits -> data/mnist/*_lmdb
    minicnn train models/lenet/lenet_solver.prototxt     # or: minicnn train NET --max-iter ...
    minicnn train --solver S --snapshot S_iter_500.solverstate        # resume
    minicnn test --model M --weights W --iterations 100
    minicnn time models/lenet/lenet.prototxt --iterations 20
    minicnn time -model models/lenet/lenet.prototxt -iterations 20     (Caffe's spelling)
    minicnn convert-imageset ROOT/ LIST.txt DB           # Caffe's convert_imageset
    minicnn compute-image-mean DB mean.binaryproto
    minicnn draw NET.prototxt net.png --rankdir TB --phase TRAIN       # Caffe's draw_net.py

Caffe's single-dash long options (``-model``, ``-iterations``, ``-sigint_effect``) are accepted
alongside the usual ``--model``. Errors in user files print one line naming the file and place,
never a traceback.
"""

import argparse
import contextlib
import os
import re
import signal
import sys
import time

import numpy as np

from minicnn.errors import MinicnnError

COMMANDS = {}


def command(fn):
    COMMANDS[fn.__name__.rstrip("_").replace("_", "-")] = fn
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


def _no_gpu(args):
    if getattr(args, "gpu", None) not in (None, ""):
        raise MinicnnError("minicnn's GPU backend is not available yet: run without --gpu")


# --- train -------------------------------------------------------------------------------------

SOLVER_FLAGS = {  # command-line flag -> SolverParameter field (for quick runs and overrides)
    "base_lr": "base_lr", "max_iter": "max_iter", "lr_policy": "lr_policy",
    "momentum": "momentum", "momentum2": "momentum2", "weight_decay": "weight_decay",
    "gamma": "gamma", "power": "power", "stepsize": "stepsize", "solver_type": "type",
    "display": "display", "average_loss": "average_loss", "test_interval": "test_interval",
    "snapshot_interval": "snapshot", "snapshot_prefix": "snapshot_prefix",
    "random_seed": "random_seed", "iter_size": "iter_size", "clip_gradients": "clip_gradients",
    "delta": "delta",
}


def _is_net_prototxt(path):
    """A net prototxt (layer/layers/input at the top level) rather than a solver one."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return False
    text = re.sub(r"#[^\n]*", "", text)
    depth, tops = 0, set()
    for m in re.finditer(r"[{}]|[A-Za-z_]\w*", text):
        token = m.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
        elif depth == 0:
            tops.add(token)
    return bool(tops & {"layer", "layers", "input"})


def _solver_param(args):
    from minicnn.proto import caffe_pb2
    from minicnn.solver import read_solver
    path = args.solver or args.solver_path
    if not path:
        raise MinicnnError("give a solver prototxt (or a net prototxt with --max-iter), e.g. "
                           "minicnn train models/lenet/lenet_solver.prototxt")
    if _is_net_prototxt(path):                 # quick mode: a net and solver settings as flags
        param = caffe_pb2.SolverParameter(net=path, base_lr=0.01, lr_policy="fixed",
                                          momentum=0.9, weight_decay=0.0005, display=100,
                                          snapshot_prefix=os.path.splitext(path)[0])
        if args.max_iter is None:
            raise MinicnnError(f"{path} is a net, not a solver: give --max-iter (and, as you "
                               "like, --base-lr, --batch-size, --test-iter ...)")
    else:
        param = read_solver(path)
    for flag, field in SOLVER_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(param, field, value)
    if args.test_iter is not None:
        param.ClearField("test_iter")
        param.test_iter.append(args.test_iter)
        if not param.test_interval:
            param.test_interval = max(1, param.max_iter // 10)
    if args.level or args.stage:
        param.train_state.level = args.level
        param.train_state.stage.extend(args.stage)
    return param, path


@contextlib.contextmanager
def _signal_effects(solver, sigint_effect, sighup_effect):
    """SIGINT/SIGHUP ask the solver to stop or snapshot at the end of the iteration (Caffe's
    -sigint_effect/-sighup_effect); a second Ctrl-C stops at once."""
    def handler_for(effect, name):
        def handle(signum, frame):
            if effect == "none":
                return
            if effect == "stop" and solver.requested_early_exit or \
                    solver.requested_action == "stop":
                raise KeyboardInterrupt
            solver.log(f"{name} received: will {effect} after this iteration"
                       + (" (press Ctrl-C again to quit at once)" if effect == "stop" else ""))
            solver.requested_action = effect
        return handle
    previous = {}
    for sig, effect, name in ((signal.SIGINT, sigint_effect, "SIGINT"),
                              (getattr(signal, "SIGHUP", None), sighup_effect, "SIGHUP")):
        if sig is not None:
            previous[sig] = signal.signal(sig, handler_for(effect, name))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@command
def train(args):
    """Train a net with a solver (Caffe's `caffe train`)."""
    from minicnn.monitor import TrainingMonitor
    from minicnn.solver import SOLVERS
    _no_gpu(args)
    if args.snapshot and args.weights:
        raise MinicnnError("give --snapshot (resume) or --weights (fine-tune), not both")
    param, path = _solver_param(args)
    if param.solver_mode == "GPU" and param.HasField("solver_mode"):
        print("note: the solver asks for the GPU; minicnn runs it on the CPU", file=sys.stderr)
    if param.type not in SOLVERS:
        raise MinicnnError(f"unknown solver type '{param.type}'; minicnn supports: "
                           f"{', '.join(sorted(SOLVERS))}")
    if param.max_iter <= 0:
        raise MinicnnError(f"{path}: max_iter is {param.max_iter}: nothing to train")
    solver = SOLVERS[param.type](param, source=path, train_batch_size=args.batch_size)
    monitor = TrainingMonitor(solver, param.snapshot_prefix,
                              progress=False if args.no_progress else None)
    try:
        for weights in (args.weights.split(",") if args.weights else []):
            solver.log(f"Finetuning from {weights}")
            for net in [solver.net] + solver.test_nets:
                net.copy_from(weights)
        with _signal_effects(solver, args.sigint_effect, args.sighup_effect), \
                np.errstate(over="ignore", invalid="ignore"):   # divergence is reported instead
            solver.solve(args.snapshot)
    finally:
        monitor.close()
    finals = {k: v for k, v in monitor.last_test.items()}
    if finals:
        print(f"Final test at iteration {solver.iter}: "
              + ", ".join(f"{k.split('/', 1)[1]} = {v:.4g}" for k, v in finals.items()))
    if solver.last_snapshot:
        print(f"Weights: {solver.last_snapshot}")
    print(f"Log: {monitor.log_path}  Curve: {monitor.csv_path}"
          + (f", {monitor.png_path}" if os.path.exists(monitor.png_path) else ""))
    return 0


# --- test --------------------------------------------------------------------------------------

@command
def test(args):
    """Score a trained net: forward --iterations batches and average each output (Caffe's
    `caffe test`)."""
    from minicnn import Net
    _no_gpu(args)
    if not args.weights:
        print("note: no --weights given: testing the net's initial (filler) weights",
              file=sys.stderr)
    net = Net(_model(args), weights=args.weights, phase=args.phase, level=args.level,
              stages=args.stage)
    sums, loss = {}, 0.0
    for i in range(args.iterations):
        loss += net.forward_from_to()
        for name in net.outputs:
            values = np.asarray(net.blobs[name].data, dtype=np.float64).reshape(-1)
            for k, value in enumerate(values):
                print(f"Batch {i}, {name}{'' if values.size == 1 else f'[{k}]'} = {value:.6g}")
            sums[name] = sums[name] + values if name in sums else values.copy()
    print(f"Loss: {loss / args.iterations:.6g}")
    for name, total in sums.items():
        weight = net.blob_loss_weights.get(name, 0.0)
        for k, value in enumerate(total / args.iterations):
            extra = f" (* {weight:g} = {weight * value:.6g} loss)" if weight else ""
            print(f"{name}{'' if total.size == 1 else f'[{k}]'} = {value:.6g}{extra}")
    return 0


# --- data tools --------------------------------------------------------------------------------

@command
def data(args):
    """Write a dataset that ships offline in a package as Caffe-standard LMDB or HDF5 files."""
    from minicnn.data import datasets
    prepare = {"mnist": datasets.prepare_mnist,
               "fashion-mnist": datasets.prepare_fashion_mnist}[args.dataset]
    out = args.out or {"mnist": "data/mnist", "fashion-mnist": "data/fashion_mnist"}[args.dataset]
    prepare(out, fmt=args.format)            # it reports what it wrote
    return 0


@command
def convert_imageset(args):
    """Caffe's convert_imageset: a list of `path label` lines -> an LMDB of Datum records."""
    from minicnn.data.imageset import convert_imageset as convert
    n = convert(args.root, args.list_file, args.db, resize_height=args.resize_height,
                resize_width=args.resize_width, gray=args.gray, shuffle=args.shuffle,
                encoded=args.encoded, encode_type=args.encode_type, check_size=args.check_size)
    print(f"Processed {n} files into {args.db}" if n is not None else f"Wrote {args.db}")
    return 0


@command
def compute_image_mean(args):
    """Caffe's compute_image_mean: the mean image of an LMDB, as a .binaryproto."""
    from minicnn.data.imageset import compute_image_mean as compute
    mean = compute(args.db, args.output)
    for c, value in enumerate(np.asarray(mean).reshape(mean.shape[-3], -1).mean(axis=1)):
        print(f"mean_value channel [{c}]: {value:.6g}")
    return 0


@command
def draw(args):
    """Draw the net as a graph picture (Caffe's draw_net.py)."""
    from minicnn.draw import draw_net
    draw_net(args.model_path, args.output, rankdir=args.rankdir, phase=args.phase,
             display_lrm=args.display_lrm)
    print(f"Drawing net to {args.output}")
    return 0


@command
def layers(args):
    """List every layer type minicnn knows, with its parameters and backends."""
    from minicnn import catalogue
    print(catalogue.markdown() if args.markdown else catalogue.table(), end="" if args.markdown
          else "\n")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minicnn", description="Run Caffe nets with minicnn (commands after Caffe's tool).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("train", help="train with a solver (like `caffe train`)")
    p.add_argument("solver_path", nargs="?", metavar="SOLVER",
                   help="solver prototxt, or a net prototxt with --max-iter and friends")
    p.add_argument("--solver", help="solver prototxt (Caffe's -solver)")
    p.add_argument("--weights", help="fine-tune from these .caffemodel files (comma-separated)")
    p.add_argument("--snapshot", help="resume from this .solverstate")
    p.add_argument("--gpu", help="GPU id (not available yet)")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--stage", action="append", default=[])
    p.add_argument("--sigint-effect", choices=["stop", "snapshot", "none"], default="stop",
                   help="on Ctrl-C: stop (writing a snapshot, as snapshot_after_train does; "
                        "the default), snapshot and go on, or nothing")
    p.add_argument("--sighup-effect", choices=["stop", "snapshot", "none"], default="snapshot")
    p.add_argument("--batch-size", type=int, help="batch size of the train net's data layers")
    p.add_argument("--test-iter", type=int, help="test batches per test")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag in SOLVER_FLAGS:
        kind = str if flag in ("lr_policy", "solver_type", "snapshot_prefix") else (
            float if flag in ("base_lr", "momentum", "momentum2", "weight_decay", "gamma",
                              "power", "clip_gradients", "delta") else int)
        p.add_argument("--" + flag.replace("_", "-"), type=kind, dest=flag,
                       help=f"solver field {SOLVER_FLAGS[flag]}")

    p = sub.add_parser("test", help="average a net's outputs over batches (like `caffe test`)")
    _add_net_options(p, "TEST")
    p.add_argument("--iterations", type=int, default=50, help="batches (default 50)")
    p.add_argument("--gpu", help="GPU id (not available yet)")

    p = sub.add_parser("time", help="time forward/backward of each layer (like `caffe time`)")
    _add_net_options(p, "TRAIN")
    p.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")

    p = sub.add_parser("draw", help="draw a net as a graph picture (like draw_net.py)")
    p.add_argument("model_path", metavar="NET", help="net prototxt")
    p.add_argument("output", help="picture file: .png, .svg, .pdf, or .dot for the source")
    p.add_argument("--rankdir", choices=["LR", "RL", "TB", "BT"], default="LR",
                   help="direction of the flow (default LR: left to right)")
    p.add_argument("--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL", type=str.upper,
                   help="draw the layers of this phase (default ALL)")
    p.add_argument("--display-lrm", action="store_true", help="show lr_mult and decay_mult")

    p = sub.add_parser("layers", help="list the layer types, their parameters and backends")
    p.add_argument("--markdown", action="store_true", help="the full catalogue as Markdown")

    p = sub.add_parser("data", help="write a packaged dataset as LMDB (or HDF5) files")
    p.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    p.add_argument("--out", help="output folder (default data/mnist or data/fashion_mnist)")
    p.add_argument("--format", choices=["lmdb", "hdf5"], default="lmdb")

    p = sub.add_parser("convert-imageset", help="image list -> LMDB (Caffe's convert_imageset)")
    p.add_argument("root", help="folder the list's paths are relative to")
    p.add_argument("list_file", help="text file of `path label` lines")
    p.add_argument("db", help="LMDB to write")
    p.add_argument("--resize-height", type=int, default=0)
    p.add_argument("--resize-width", type=int, default=0)
    p.add_argument("--gray", action="store_true")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--encoded", action="store_true", help="store the encoded image files")
    p.add_argument("--encode-type", default="", help="re-encode as png or jpg")
    p.add_argument("--check-size", action="store_true", help="all images must share a size")

    p = sub.add_parser("compute-image-mean", help="LMDB -> mean .binaryproto")
    p.add_argument("db")
    p.add_argument("output", nargs="?")
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
