"""The ``minicnn`` command, after Caffe's ``caffe`` tool and its helpers.

    minicnn data mnist                                   # real digits -> data/mnist/*_lmdb
    minicnn train models/lenet/lenet_solver.prototxt     # or: minicnn train NET --max-iter ...
    minicnn train --solver S --snapshot S_iter_500.solverstate        # resume
    minicnn test --model M --weights W --iterations 100
    minicnn time models/lenet/lenet.prototxt --iterations 20
    minicnn time -model models/lenet/lenet.prototxt -iterations 20     (Caffe's spelling)
    minicnn convert-imageset ROOT/ LIST.txt DB           # Caffe's convert_imageset
    minicnn convert-annoset ROOT/ LIST.txt DB --anno-type detection --label-map-file M
    minicnn compute-image-mean DB mean.binaryproto
    minicnn upgrade old.prototxt new.prototxt            # V1 nets and solvers; .caffemodel too
    minicnn merge-bn deploy.prototxt W.caffemodel merged.prototxt merged.caffemodel  # merge_bn.py
    minicnn parse-log snapshots/lenet_train.log out/     # Caffe's parse_log.py: CSV per phase
    minicnn draw NET.prototxt net.png --rankdir TB --phase TRAIN       # Caffe's draw_net.py
    minicnn classify cat.jpg @more.txt --model M --weights W --labels synset_words.txt
    minicnn extract --model M --weights W --blob pool --images list.txt --out feats.h5
    minicnn extract-features W.caffemodel net.prototxt fc7,fc8 fc7_db,fc8_db 10 lmdb    # Caffe's
    minicnn retrieve --model M --weights W --blob pool --database list.txt --query q.jpg -k 5
    minicnn visualize --model M --weights W --layer conv1 --out filters.png
    minicnn data segmentation-digits                     # images + per-pixel labels
    minicnn segment --model M --weights W image.png --out masks/
    minicnn eval-segmentation --model M --weights W --list data/segmentation_digits/test.txt

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
import warnings

import numpy as np

from minicnn.errors import MinicnnError, SnapshotError

COMMANDS = {}


def command(fn):
    COMMANDS[fn.__name__.rstrip("_").replace("_", "-")] = fn
    return fn


# convert_imageset's bools
GFLAGS_SWITCHES = {"gray", "shuffle", "encoded", "check-size", "check-label"}


def _caffe_style(argv):
    """-model -> --model, --sigint_effect -> --sigint-effect (Caffe's gflags spellings); the
    boolean flags also as gflags writes them: --shuffle=true, --gray=false, --nogray."""
    out = []
    for arg in argv:
        m = re.match(r"^-{1,2}([A-Za-z][A-Za-z0-9_-]+)(=.*)?$", arg)
        if m and (arg.startswith("--") or len(m.group(1)) > 1):
            name, value = m.group(1).replace("_", "-"), m.group(2) or ""
            if name.startswith("no") and name[2:] in GFLAGS_SWITCHES and not value:
                continue                                       # --nogray: the default
            if name in GFLAGS_SWITCHES and value:
                if value[1:].lower() in ("false", "f", "no", "n", "0"):
                    continue
                if value[1:].lower() in ("true", "t", "yes", "y", "1"):
                    value = ""
            arg = "--" + name + value
        out.append(arg)
    return out


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_net_options(p, phase_default):
    p.add_argument("model_path", nargs="?", metavar="MODEL", help="net prototxt")
    p.add_argument("--model", help="net prototxt (Caffe's -model)")
    p.add_argument("--weights", help="a .caffemodel to load first")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default=phase_default, type=str.upper)
    p.add_argument("--level", type=int, default=0, help="net state level")
    p.add_argument("--stage", action="append", default=[],
                   help="net state stage (repeatable, or a,b)")


def _model(args):
    model = args.model or args.model_path
    if not model:
        raise MinicnnError("give the net prototxt, e.g. minicnn time models/lenet/lenet.prototxt")
    return model


@command
def time_(args):
    """Time forward and backward of every layer, as `caffe time` does."""
    from minicnn import Net

    from minicnn import cuda, native
    net = Net(_model(args), weights=args.weights, phase=args.phase, level=args.level,
              stages=args.stage, device=_device(args))
    rng = np.random.default_rng(0)
    indices = set()                           # blobs read as labels, Embed's ids, ...
    for name, layer in reversed(list(zip(net.layer_names, net.layers))):
        bottoms = net.bottom_names[name]
        if layer.index_bottom is not None and layer.index_bottom < len(bottoms):
            indices.add(bottoms[layer.index_bottom])
        if layer.type == "Split" and indices & set(net.top_names[name]):
            indices.update(bottoms)           # a blob read by several layers: its source
    for name in net.inputs:                   # inputs get random data of their declared shape,
        blob = net.blobs[name]                # zeros where a layer reads indices (as Caffe's)
        blob.data = np.zeros(blob.shape, blob.dtype) if name in indices else \
            rng.standard_normal(blob.shape).astype(blob.dtype)
    sync = cuda.synchronize if net.device is not None else (lambda: None)
    n_layers = len(net.layers)
    print(f"Net '{net.name}' ({net.phase}): {n_layers} layers, input "
          + ", ".join(f"{n} {net.blobs[n].shape}" for n in net.inputs))
    if net.device is None and native.lib is None:   # pip shows no build warning: say it here
        print(f"Note: minicnn's native extension did not load ({native.load_error}); these are "
              "the NumPy reference path's times (reinstall with pybind11 and a C++17 compiler)")
    print("Performing Forward")
    print(f"Initial loss: {net.forward_from_to():g}")
    print("Performing Backward")
    with warnings.catch_warnings():           # the note below says it for `time`
        warnings.simplefilter("ignore")
        net.backward()
    if not any(net.layer_need_backward):
        print("Note: nothing in this net needs a gradient (no loss, or force_backward unset); "
              "backward times below cover parameter diffs only.")
    forward_ms, backward_ms = np.zeros(n_layers), np.zeros(n_layers)
    start = time.perf_counter()
    sync()
    for k in range(args.iterations):
        iteration_start = time.perf_counter()
        for i in range(n_layers):             # on a GPU each layer is waited for (as Caffe's
            t = time.perf_counter()           # CUDA events time them)
            net.forward_layer(i, reshape=False)
            sync()
            forward_ms[i] += time.perf_counter() - t
        for i in reversed(range(n_layers)):   # every layer, as Caffe's time does
            t = time.perf_counter()
            net.backward_layer(i)
            sync()
            backward_ms[i] += time.perf_counter() - t
        print(f"Iteration: {k + 1} forward-backward time: "      # as Caffe's, as it goes
              f"{(time.perf_counter() - iteration_start) * 1000:.4g} ms.", flush=True)
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
    print_time_split(net, forward_ms, backward_ms)
    return 0


def print_time_split(net, forward_ms, backward_ms, top=10):
    """Where the time goes: each layer type's share, then the slowest layers."""
    both = forward_ms + backward_ms
    total = both.sum() or 1.0
    by_type = {}
    for layer, f, b in zip(net.layers, forward_ms, backward_ms):
        entry = by_type.setdefault(layer.type, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += f
        entry[2] += b
    print("\nBy layer type (share of forward + backward):")
    for kind, (count, f, b) in sorted(by_type.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
        print(f"  {kind:<18} x{count:<4} forward {f:9.3f} ms  backward {b:9.3f} ms  "
              f"{100 * (f + b) / total:5.1f}%")
    print(f"Slowest {min(top, len(both))} layers:")
    for i in np.argsort(-both)[:top]:
        print(f"  {net.layer_names[i]:<24} {net.layers[i].type:<16} {both[i]:9.3f} ms  "
              f"{100 * both[i] / total:5.1f}%")


def _device(args):
    """The GPU that --gpu names, or None (the CPU). One GPU per process: several (train's
    data-parallel runs) go through minicnn.distributed, one rank per GPU."""
    text = getattr(args, "gpu", None)
    if text in (None, ""):
        return None
    from minicnn.distributed import parse_gpus
    gpus = parse_gpus(text)
    if len(gpus) != 1:
        raise MinicnnError(f"--gpu {text}: minicnn {args.command} runs on one GPU; give one "
                           "number (e.g. --gpu 0)")
    from minicnn import cuda
    cuda.check_device(gpus[0])
    return gpus[0]


def _train_device(args, param, root):
    """The GPU of a one-process `minicnn train`: --gpu, else the solver's solver_mode: GPU
    (device_id) as Caffe's tool reads it, when a GPU is there; None for the CPU."""
    from minicnn import cuda
    if getattr(args, "gpu", None) not in (None, ""):
        return _device(args)
    if param.HasField("solver_mode") and param.solver_mode == "GPU":
        if cuda.available():
            return param.device_id
        if root:
            print("note: the solver asks for the GPU, but none can be used here (CuPy or a "
                  "CUDA device is missing); minicnn runs it on the CPU", file=sys.stderr)
    return None


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
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
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
def _signal_effects(solver, sigint_effect, sighup_effect, sigterm_effect=None):
    """SIGINT/SIGHUP ask the solver to stop or snapshot at the end of the iteration (Caffe's
    -sigint_effect/-sighup_effect); a second Ctrl-C stops at once. SIGTERM (a cluster's
    scheduler ending or preempting the job), which Caffe leaves to end the process at once,
    likewise where ``sigterm_effect`` is given (a second SIGTERM quits at once)."""
    def handler_for(effect, name):
        def handle(signum, frame):
            if effect == "none":
                return
            if effect == "stop" and solver.requested_early_exit or \
                    solver.requested_action == "stop":
                if name != "SIGTERM":
                    raise KeyboardInterrupt
                print(f"{name} received again: quitting at once", file=sys.stderr)
                raise SystemExit(128 + signal.SIGTERM)     # the status SIGTERM's death gives
            again = "press Ctrl-C again" if name == "SIGINT" else f"send {name} again"
            solver.log_from_signal(
                f"{name} received: will {effect} after this iteration"
                + (f" ({again} to quit at once)" if effect == "stop" else ""))
            solver.requested_action = effect
        return handle
    previous = {}
    for sig, effect, name in ((signal.SIGINT, sigint_effect, "SIGINT"),
                              (getattr(signal, "SIGHUP", None), sighup_effect, "SIGHUP"),
                              (signal.SIGTERM, sigterm_effect, "SIGTERM")):
        if sig is not None and effect is not None:
            previous[sig] = signal.signal(sig, handler_for(effect, name))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@command
def train(args):
    """Train a net with a solver (Caffe's `caffe train`); under mpirun or srun, data-parallel
    over the ranks (minicnn.distributed)."""
    from minicnn import distributed
    world = distributed.from_environment(args.gpu)      # None: one process, no MPI loaded
    if world is None:
        return _train(args, None)
    return world.run(lambda: _train(args, world))


def _train(args, world):
    from minicnn.monitor import TrainingMonitor
    from minicnn.solver import SOLVERS, TrainingDiverged, check_snapshot_prefix
    root = world is None or world.rank == 0           # the rank that logs, tests, snapshots
    if args.snapshot and args.weights:
        raise MinicnnError("give --snapshot (resume) or --weights (fine-tune), not both")
    param, path = _solver_param(args)
    # as Caffe's train: --weights replaces the solver file's weights and a resume drops them;
    # other ranks load none (rank 0's weights are broadcast to them)
    if args.snapshot or args.weights or not root:
        param.ClearField("weights")
        if args.weights and root:
            param.weights.append(args.weights)
    device = world.device if world is not None else _train_device(args, param, root)
    if param.type not in SOLVERS:
        raise MinicnnError(f"unknown solver type '{param.type}'; minicnn supports: "
                           f"{', '.join(sorted(SOLVERS))}")
    # max_iter 0 trains nothing but still runs Solve's last display and test, as in Caffe:
    # SSD's score_ssd_pascal.py scores a model that way (max_iter 0, test_initialization)
    if param.max_iter < 0:
        raise MinicnnError(f"{path}: max_iter is {param.max_iter}: it must be 0 (only the "
                           "final test) or more")
    solver = SOLVERS[param.type](param if world is None else world.rank_param(param),
                                 source=path, train_batch_size=args.batch_size,
                                 log=None if root else world.quiet, device=device)
    if root:                      # the log and curve go there even with no snapshot to write
        check_snapshot_prefix(param.snapshot_prefix)
    monitor = TrainingMonitor(solver, param.snapshot_prefix,
                              progress=False if args.no_progress else None) if root else None
    try:
        parallel = world.attach(solver, param) if world is not None else None
        with _signal_effects(solver if parallel is None else parallel.requests,
                             args.sigint_effect, args.sighup_effect,
                             # mpirun's SIGTERM comes with an abort: each rank ends at once
                             args.sigterm_effect if world is None else None), \
                np.errstate(over="ignore", invalid="ignore"):   # divergence is reported instead
            (solver if parallel is None else parallel).solve(args.snapshot)
    except SnapshotError as e:
        if monitor is not None:           # the log file, too, says why training ended
            monitor.log(f"error: {e}", console=False)
        raise
    except TrainingDiverged as e:
        if monitor is None:
            raise
        # the monitor has shown the reason as the "Divergence:" line: don't print it twice
        raise TrainingDiverged(f"training diverged at iteration {solver.iter} (the reason is "
                               f"the Divergence line above, also in {monitor.log_path})") from e
    finally:
        if monitor is not None:
            monitor.close()
    if not root:
        return 0
    finals = {k: v for k, v in monitor.last_test.items()}
    if finals:
        scores = ", ".join(f"{k.split('/', 1)[1]} = {v:.4g}" for k, v in finals.items())
        if monitor.last_test_iter == solver.iter:
            monitor.say(f"Final test at iteration {solver.iter}: {scores}")
        else:                         # not the trained weights' score: say whose it is
            monitor.say(f"Last test at iteration {monitor.last_test_iter} (training ended at "
                        f"{solver.iter}; test_interval {param.test_interval}): {scores}")
    if solver.last_snapshot:
        monitor.say(f"Weights: {solver.last_snapshot}")
    monitor.say(f"Log: {monitor.log_path}  Curve: {monitor.csv_path}"
                + (f", {monitor.png_path}" if os.path.exists(monitor.png_path) else ""))
    return 0


# --- test --------------------------------------------------------------------------------------

@command
def test(args):
    """Score a trained net: forward --iterations batches and average each output (Caffe's
    `caffe test`)."""
    from minicnn import Net, cuda
    device = _device(args)
    if not args.weights:
        print("note: no --weights given: testing the net's initial (filler) weights",
              file=sys.stderr)
    net = Net(_model(args), weights=args.weights, phase=args.phase, level=args.level,
              stages=args.stage, device=device)
    from minicnn.solver import test_coverage_notes
    for note in test_coverage_notes(net, args.iterations, "the net", "--iterations"):
        print(note, file=sys.stderr)
    if args.eval_type == "detection":
        return _test_detection(net, args)
    from minicnn.solver import detection_eval_note
    note = detection_eval_note(net, "the net", "--eval-type detection")
    if note:
        print(note, file=sys.stderr)
    sums, loss = {}, 0.0
    for i in range(args.iterations):
        loss += net.forward_from_to()
        for name in net.outputs:
            values = np.asarray(cuda.to_host(net.blobs[name].data), dtype=np.float64)
            values = values.reshape(-1)
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


def _test_detection(net, args):
    """`minicnn test --eval-type detection`: the SSD fork's solver test (TestDetection) on a
    net with DetectionEvaluate outputs: their rows over --iterations batches, then the mAP."""
    from minicnn.proto import caffe_pb2
    from minicnn.solver import add_detection_rows, check_eval_type, detection_results
    check_eval_type(caffe_pb2.SolverParameter(eval_type="detection",
                                              ap_version=args.ap_version))
    stats, loss = {}, 0.0
    for _ in range(args.iterations):
        loss += net.forward_from_to()
        add_detection_rows(net, stats)
    print(f"Loss: {loss / args.iterations:.6g}")
    detection_results(net, stats, args.ap_version, args.show_per_class_result, print)
    return 0


# --- data tools --------------------------------------------------------------------------------

# the options of `minicnn data` each dataset reads (--out and --seed: all of them); another one
# given is an error, not a flag taken and ignored
_SIZES = ("train_images", "val_images", "test_images", "size")
DATA_FLAGS = {"mnist": ("format", "train_per_class", "test_per_class"),
              "fashion-mnist": ("format", "train_per_class", "test_per_class"),
              "detection-digits": _SIZES, "canvas-digits": (),
              "segmentation-digits": _SIZES + ("ignore_coverage",),
              "sos": _SIZES, "face-area": _SIZES}


def _check_data_flags(args):
    flags = sorted({f for taken in DATA_FLAGS.values() for f in taken})
    wrong = [f for f in flags if getattr(args, f) is not None
             and f not in DATA_FLAGS[args.dataset]]
    if wrong:
        takes = ", ".join("--" + f.replace("_", "-") for f in DATA_FLAGS[args.dataset] +
                          ("out", "seed"))
        raise MinicnnError(f"minicnn data {args.dataset} does not take "
                           f"{', '.join('--' + f.replace('_', '-') for f in wrong)} (it takes "
                           f"{takes})")
    if args.format is None:
        args.format = "lmdb"
    if args.ignore_coverage is None:
        args.ignore_coverage = 0.75


@command
def data(args):
    """Write a dataset that ships offline in a package as Caffe-standard LMDB or HDF5 files,
    or as PNG files with Caffe list files (for ImageData, convert_imageset, extract)."""
    from minicnn.data import datasets
    _check_data_flags(args)
    if args.dataset in ("canvas-digits", "segmentation-digits"):
        return _any_size_data(args)
    if args.dataset in ("sos", "face-area"):
        return _saliency_data(args)
    for flag, default in (("train_images", 3000), ("val_images", 300), ("test_images", 500),
                          ("size", 160)):            # detection-digits' defaults
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.dataset == "detection-digits":
        from minicnn.data.detection_digits import prepare_detection_digits
        try:
            prepare_detection_digits(args.out or "data/detection_digits",
                                     train=args.train_images, val=args.val_images,
                                     test=args.test_images, size=args.size,
                                     seed=args.seed if args.seed is not None else 4242)
        except ValueError as e:
            raise MinicnnError(str(e)) from None
        return 0
    if args.seed is None:
        args.seed = 2024
    prepare = {"mnist": datasets.prepare_mnist,
               "fashion-mnist": datasets.prepare_fashion_mnist}[args.dataset]
    out = args.out or {"mnist": "data/mnist", "fashion-mnist": "data/fashion_mnist"}[args.dataset]
    try:                                     # it reports what it wrote
        prepare(out, fmt=args.format, train_per_class=args.train_per_class,
                test_per_class=args.test_per_class, seed=args.seed)
    except ValueError as e:
        raise MinicnnError(str(e)) from None
    return 0


@command
def convert_imageset(args):
    """Caffe's convert_imageset: a list of `path label` lines -> an LMDB (or LevelDB) of
    Datum records."""
    from minicnn.data.imageset import convert_imageset as convert
    if (args.resize_height > 0) != (args.resize_width > 0):
        raise MinicnnError("give both --resize-height and --resize-width (images are resized "
                           "only when both are set)")
    n = convert(args.root, args.list_file, args.db, resize_height=args.resize_height,
                resize_width=args.resize_width, gray=args.gray, shuffle=args.shuffle,
                encoded=args.encoded, encode_type=args.encode_type, check_size=args.check_size,
                backend=args.backend)
    print(f"Processed {n} files into {args.db}" if n is not None else f"Wrote {args.db}")
    return 0


@command
def convert_annoset(args):
    """SSD's convert_annoset: `image annotation` lines -> an LMDB (or LevelDB) of
    AnnotatedDatum records for the AnnotatedData layer."""
    from minicnn.data.annoset import convert_annoset as convert
    n = convert(args.root, args.list_file, args.db, anno_type=args.anno_type,
                label_type=args.label_type, label_map_file=args.label_map_file,
                resize_height=args.resize_height, resize_width=args.resize_width,
                gray=args.gray, shuffle=args.shuffle, encoded=args.encoded,
                encode_type=args.encode_type, check_size=args.check_size,
                backend=args.backend, min_dim=args.min_dim, max_dim=args.max_dim)
    print(f"Processed {n} files into {args.db}")
    return 0


@command
def compute_image_mean(args):
    """Caffe's compute_image_mean: the mean image of an LMDB, as a .binaryproto."""
    from minicnn.data.imageset import compute_image_mean as compute
    mean = compute(args.db, args.output)
    for c, plane in enumerate(mean.reshape(mean.shape[-3], -1)):   # Caffe's float sums, in order
        value = np.add.accumulate(plane, dtype=np.float32)[-1] / np.float32(plane.size)
        print(f"mean_value channel [{c}]: {value:.6g}")
    return 0


def _is_text(path):
    """A prototxt is UTF-8 text; a .caffemodel's tags and blob bytes are not."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise MinicnnError(f"{path}: cannot read file: {e.strerror}") from None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start > len(head) - 4                 # only a character cut at the end
    return b"\0" not in head


@command
def upgrade(args):
    """Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and upgrade_solver_proto_text:
    an old net (V0 or V1 `layers`, `input_dim`, data-layer transforms) or solver (`solver_type`)
    written in the current format, text for text and binary for binary."""
    from minicnn.errors import NetError, PrototxtError
    from minicnn.proto import (parse_text, read_binary, upgrade_net, upgrade_solver,
                               write_binary, write_prototxt)
    from minicnn.proto.wire import atomic_write
    if not _is_text(args.input):
        net = read_binary(args.input, "NetParameter")
        try:
            upgrade_net(net)
        except NetError as e:
            raise NetError(f"{args.input}: {e}") from None
        write_binary(net, args.output)
        print(f"Wrote upgraded NetParameter binary proto to {args.output}")
        return 0
    with open(args.input, "rb") as f:
        text = f.read()
    try:
        kind, message = "NetParameter", parse_text(text, "NetParameter", path=args.input)
    except PrototxtError as net_error:
        try:                                            # not a net: perhaps a solver
            kind, message = "SolverParameter", parse_text(text, "SolverParameter",
                                                          path=args.input)
        except PrototxtError:
            raise net_error from None
    before = message.copy()
    if kind == "NetParameter":
        upgrade_net(message, args.input)
    else:
        upgrade_solver(message, args.input)
    if message == before:                           # the file as it is, comments and all
        if not (os.path.exists(args.output) and os.path.samefile(args.input, args.output)):
            with atomic_write(args.output) as f:
                f.write(text)
        print(f"{args.input}: already in the latest format; {args.output} holds it unchanged")
        return 0
    write_prototxt(message, args.output)
    print(f"Wrote upgraded {kind} text proto to {args.output}")
    return 0


@command
def merge_bn(args):
    """The merge_bn.py scripts of Caffe users: BatchNorm, Scale (and Bias, and the PSPNet
    fork's BN) folded into the Convolution, Deconvolution or InnerProduct before them, where that
    is exact (minicnn/merge_bn.py); a new prototxt and caffemodel."""
    from minicnn.merge_bn import merge_bn_files
    result = merge_bn_files(args.model, args.weights, args.out_model, args.out_weights)
    for fold in result.folds:
        print(fold.summary())
    for line in result.kept:
        print(line)
    count = sum(len(fold.folded) for fold in result.folds)
    print(f"{count} layer(s) merged into {len(result.folds)} layer(s); "
          f"{len(result.net.layer)} layers left")
    print(f"Wrote {args.out_model} and {args.out_weights}")
    return 0


@command
def parse_log(args):
    """Caffe's tools/extra/parse_log.py: a training log as LOG.train and LOG.test CSV files."""
    from minicnn.monitor import parse_log as parse, write_parsed_log
    if not os.path.isfile(args.logfile):
        raise MinicnnError(f"{args.logfile}: no such log file")
    rows = parse(args.logfile)
    if rows["train"] or rows["test"]:       # README's `parse-log LOG out/` makes out/, as mkdir -p
        os.makedirs(args.output_dir, exist_ok=True)
    base = os.path.join(args.output_dir, os.path.basename(args.logfile))
    for kind in ("train", "test"):
        path = f"{base}.{kind}"
        if write_parsed_log(rows[kind], path, delimiter=args.delimiter):
            print(f"Wrote {len(rows[kind])} {kind} rows to {path}")
        else:
            print(f"Not writing {path}; no lines to write")
    if not (rows["train"] or rows["test"]):
        print("(parse-log reads the solver's glog-style lines, 'I1207 12:00:00.000000 ... "
              "Iteration N ...': the <snapshot_prefix>_train.log that minicnn train writes, "
              "or Caffe's own log; what minicnn train prints to the terminal has no such "
              "prefix)")
    return 0


@command
def device_query(args):
    """caffe device_query: the properties of each GPU --gpu names (Caffe::DeviceQuery)."""
    from minicnn import cuda
    from minicnn.distributed import parse_gpus
    every = (args.gpu or "").strip().lower() == "all"
    gpus = parse_gpus(args.gpu, device_count=cuda.device_count() if every else None)
    if not gpus:
        raise MinicnnError("device-query needs --gpu (a number, a list such as 0,1, or all)")
    for gpu in gpus:
        lines = cuda.device_query(gpu)
        width = max(len(label) for label, _ in lines) + 2
        print(f"Querying GPU {gpu}")
        for label, text in lines:
            print(f"{label + ':':<{width}}{text}")
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


# --- using a trained net: classify, extract, retrieve, visualize -------------------------------

def _mean_values(text):
    """--mean: comma-separated per-channel values, 'none', or a mean image file (.binaryproto,
    as compute-image-mean writes, or .npy), averaged per channel as pycaffe's classification
    example does with ilsvrc_2012_mean.npy (a 256 x 256 mean does not fit a 227 x 227 crop)."""
    if text.lower().endswith((".binaryproto", ".npy")):
        from minicnn.io import blobproto_to_array
        from minicnn.proto import read_binary
        try:
            mean = (np.load(text, allow_pickle=False) if text.lower().endswith(".npy")
                    else blobproto_to_array(read_binary(text, "BlobProto")))
        except (OSError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"cannot read the mean file {text}: {e}") from None
        mean = np.asarray(mean, np.float64)
        if mean.ndim == 4 and mean.shape[0] == 1:
            mean = mean[0]
        if mean.ndim != 3:
            raise argparse.ArgumentTypeError(f"the mean file {text} holds shape {mean.shape}, "
                                             "not C x H x W")
        return tuple(float(v) for v in mean.mean(axis=(1, 2)))
    return _numbers(float)(text)


def _numbers(kind):
    def parse(text):
        if text.strip().lower() == "none":
            return None
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return parse


def _add_deploy_options(p, phase=False, oversample=True):
    p.add_argument("--model", help="net prototxt, usually a deploy.prototxt (Caffe's -model)")
    p.add_argument("--weights", help="the trained .caffemodel")
    if phase:
        p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST", type=str.upper)
        p.add_argument("--level", type=int, default=0, help="net state level")
        p.add_argument("--stage", action="append", default=[], help="net state stage")
    p.add_argument("--mean", type=_mean_values, default=(104.0, 117.0, 123.0),
                   help="per-channel mean subtracted after the raw scale, in the net's channel "
                        "order (default 104,117,123: ImageNet's BGR mean; 'none' for none), or "
                        "a mean image (.binaryproto, .npy) averaged per channel")
    p.add_argument("--raw-scale", type=float, default=255.0,
                   help="multiply the [0, 1] pixels by this (default 255)")
    p.add_argument("--channel-swap", type=_numbers(int), default=(2, 1, 0),
                   help="channel order the net wants (default 2,1,0: RGB -> BGR; 'none')")
    p.add_argument("--resize", type=_positive_int, default=256,
                   help="resize images to this square size before the centre crop to the net "
                        "input's size (default 256; 0 keeps their size)")
    if oversample:
        p.add_argument("--oversample", action="store_true",
                       help="average over Caffe's 10 crops (corners, centre, mirrored)")
    p.add_argument("--root-folder", default="", help="folder prepended to the images' paths")
    p.add_argument("--batch-size", type=_positive_int, default=10,
                   help="net items per forward pass (default 10; an oversampled image is 10)")


def _input_options(args):
    return {"mean": args.mean, "raw_scale": args.raw_scale, "channel_swap": args.channel_swap,
            "resize": args.resize or None, "oversample": getattr(args, "oversample", False)}


def _deploy_net(args):
    from minicnn import Net
    if not args.model:
        raise MinicnnError(f"give the net prototxt: minicnn {args.command} --model "
                           "deploy.prototxt --weights trained.caffemodel ...")
    if not args.weights:
        print("note: no --weights given: using the net's initial (filler) weights",
              file=sys.stderr)
    return Net(args.model, weights=args.weights, phase=getattr(args, "phase", "TEST"),
               level=getattr(args, "level", 0), stages=getattr(args, "stage", ()),
               device=_device(args))


def _image_paths(items, root_folder=""):
    """Image arguments as paths: `@LIST` reads a list file (labels, if any, are ignored)."""
    from minicnn.data.db import root_joined
    from minicnn.deploy import read_image_list
    paths = []
    for item in items:
        if item.startswith("@"):
            paths.extend(read_image_list(item[1:], root_folder)[0])
        else:
            paths.append(root_joined(root_folder, item))
    return paths


def _progress(args):
    return False if getattr(args, "no_progress", False) else None


def _print_table(header, rows, right=()):
    """Columns as wide as their widest cell; the indices in ``right`` right-aligned."""
    cells = [header] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())


@command
def classify(args):
    """Classify images with a trained net (Caffe's classify.py): the top-k classes of each."""
    import json

    from minicnn.deploy import classify as run_classify
    images = _image_paths(args.image, args.root_folder)
    if args.images:
        images += _image_paths(["@" + args.images], args.root_folder)
    if not images:
        raise MinicnnError("give the images to classify: minicnn classify IMAGE... (or "
                           "@LIST, --images LIST)")
    net = _deploy_net(args)
    results = run_classify(net, images, labels=args.labels, top_k=args.top_k,
                           batch_size=args.batch_size, blob=args.blob,
                           progress=_progress(args), **_input_options(args))
    if args.json:
        print(json.dumps([{"image": r["image"], "predictions": [
            {"rank": rank, "index": index, "label": label, "probability": p}
            for rank, (index, label, p) in enumerate(r["predictions"], 1)]}
            for r in results], indent=2))
        return 0
    rows = [(r["image"] if rank == 1 else "", rank, index if label is None else label,
             f"{p:.4f}")
            for r in results for rank, (index, label, p) in enumerate(r["predictions"], 1)]
    _print_table(["image", "rank", "class" if args.labels is None else "label",
                  "probability"], rows, right=(1, 3))
    return 0


@command
def extract(args):
    """Extract a blob's values as features (Caffe's extract_features), from images or from the
    net's own data layers, into .npy, .npz or .h5 (+ a list file for HDF5Data)."""
    from minicnn.deploy import extract_features, save_features
    if (args.images is None) == (args.iterations is None):
        raise MinicnnError("give --images LIST (images through the net input) or --iterations "
                           "N (batches of the net's own data layers)")
    net = _deploy_net(args)
    features, labels = extract_features(net, args.blob, images=args.images,
                                        batch_size=args.batch_size, progress=_progress(args),
                                        iterations=args.iterations,
                                        root_folder=args.root_folder, **_input_options(args))
    written = save_features(args.out, features, labels)
    kept = labels is not None and not args.out.lower().endswith(".npy")
    print(f"Extracted {len(features)} features of shape {features.shape[1:]} from blob "
          f"'{args.blob}'" + (" with labels" if kept else "") + " -> " + ", ".join(written)
          + (" (a .npy holds the features alone: .npz, .h5 or an LMDB keep the labels)"
             if labels is not None and not kept else ""))
    return 0


@command
def extract_features(args):
    """Caffe's extract_features tool with its positional arguments: the net's own data layers
    run num_mini_batches times (TEST phase), each named blob into a new database of Datums of
    float values keyed by the item index (no label, as Caffe's)."""
    from minicnn import Net, cuda
    from minicnn.deploy import run_data_layers, save_features_db
    blobs = [b for b in args.blob_names.split(",") if b]
    datasets = [d for d in args.dataset_names.split(",") if d]
    if len(blobs) != len(datasets):
        raise MinicnnError(f"{len(blobs)} blob name(s) but {len(datasets)} dataset name(s): "
                           "give one dataset per blob (comma-separated, in the same order)")
    backend = args.db_type.lower()
    if backend not in ("lmdb", "leveldb"):
        raise MinicnnError(f"db_type must be lmdb or leveldb, not '{args.db_type}'")
    existing = [d for d in datasets if os.path.lexists(d)]
    if existing:
        raise MinicnnError(f"{', '.join(existing)}: already exists (extract_features makes new "
                           "databases)")
    mode = (args.mode or "CPU").upper()
    if mode not in ("CPU", "GPU"):
        raise MinicnnError(f"the mode must be CPU or GPU, not '{args.mode}'")
    device = None
    if mode == "GPU":
        device = int(args.device_id.split("=")[-1]) if args.device_id else 0
        cuda.check_device(device)
    net = Net(args.proto, weights=args.weights, phase="TEST", device=device)
    features, _ = run_data_layers(net, blobs, args.num_mini_batches, _progress(args))
    for blob, dataset in zip(blobs, datasets):
        save_features_db(dataset, features[blob], None, backend)
        print(f"Extracted features of {len(features[blob])} query images for feature blob "
              f"{blob} -> {dataset}")
    return 0


@command
def retrieve(args):
    """Find the database images most similar to query images (cosine similarity of a blob's
    features), or score the database against its own labels (--evaluate)."""
    import json

    from minicnn import deploy
    if not args.evaluate and not args.query:
        raise MinicnnError("give --query IMAGE (or --evaluate to score the database against "
                           "its own labels)")
    paths, labels = deploy.read_image_list(args.database, args.root_folder)
    if args.evaluate and labels is None:
        raise MinicnnError(f"{args.database}: --evaluate needs 'path label' lines")
    queries = _image_paths(args.query or [], args.root_folder)
    net = _deploy_net(args)
    inp = deploy.ImageInput(net, **_input_options(args))
    database = deploy.run_images(net, inp, paths, args.blob, args.batch_size, _progress(args))
    if args.evaluate:
        value = deploy.mean_average_precision(database, labels, args.k)
        print(f"mean average precision{f'@{args.k}' if args.k else ''} of {len(paths)} images "
              f"({len(set(labels.tolist()))} labels, cosine similarity of '{args.blob}'): "
              f"{value:.4f}")
        return 0
    query = deploy.run_images(net, inp, queries, args.blob, args.batch_size)
    found, similarity = deploy.retrieve(query, database, args.k or 10)
    results = [{"query": q, "matches": [
        {"rank": rank, "image": paths[j], "similarity": float(s)}
        | ({} if labels is None else {"label": labels[j].item()})
        for rank, (j, s) in enumerate(zip(row, sims), 1)]}
        for q, row, sims in zip(queries, found, similarity)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"query: {r['query']}")
        _print_table(["rank", "similarity", "image"] + ([] if labels is None else ["label"]),
                     [(m["rank"], f"{m['similarity']:.4f}", m["image"])
                      + (() if labels is None else (m["label"],)) for m in r["matches"]],
                     right=(0, 1))
    return 0


@command
def visualize(args):
    """Draw a layer's filters (--layer) or a blob's feature maps for an image (--blob --image)
    as a PNG grid."""
    from minicnn.deploy import ImageInput, run_images
    from minicnn.visualize import feature_map_grid, filter_grid, save_png
    if bool(args.layer) == bool(args.blob):
        raise MinicnnError("give --layer L (its filters) or --blob B --image IMAGE (feature "
                           "maps), one of them")
    if args.blob and not args.image:
        raise MinicnnError("--blob needs --image: the image whose feature maps to draw")
    net = _deploy_net(args)
    if args.layer:
        with_weights = [name for name, blobs in net.params.items() if blobs]
        if args.layer not in net.layer_dict or args.layer not in with_weights:
            what = "no layer named" if args.layer not in net.layer_dict else "no weights in"
            raise MinicnnError(f"{what} '{args.layer}'; layers with weights: "
                               f"{', '.join(with_weights) or 'none'}")
        weights = net.params[args.layer][0].data
        if weights.ndim != 4:
            raise MinicnnError(f"layer '{args.layer}' ({net.layer_dict[args.layer].type}) has "
                               f"weights of shape {weights.shape}, not filters (F, C, kh, kw)")
        picture = filter_grid(weights, scale=args.scale)
        what = (f"{weights.shape[0]} filters {'x'.join(map(str, weights.shape[1:]))} of layer "
                f"'{args.layer}'")
    else:
        inp = ImageInput(net, **_input_options(args))
        maps = run_images(net, inp, _image_paths([args.image], args.root_folder), args.blob, 1)[0]
        picture = feature_map_grid(maps, scale=args.scale)
        what = f"feature maps {maps.shape} of blob '{args.blob}'"
    save_png(picture, args.out)
    print(f"Wrote {args.out} ({picture.shape[1]}x{picture.shape[0]} pixels): {what}")
    return 0


# --- saliency maps and crops (Yahoo JAPAN's case 2) --------------------------------------------

def _saliency_data(args):
    """minicnn data sos | face-area."""
    if args.dataset == "sos":
        from minicnn.data.sos import SOS_SEED, prepare_sos
        prepare, seed, out = prepare_sos, SOS_SEED, "data/sos"
        defaults = {"train": 5000, "val": 500, "test": 1000, "size": 128}
    else:
        from minicnn.data.face_area import FACE_SEED, prepare_face_area
        prepare, seed, out = prepare_face_area, FACE_SEED, "data/face_area"
        defaults = {"train": 4000, "val": 400, "test": 1000, "size": 64}
    pick = lambda value, key: defaults[key] if value is None else value     # noqa: E731
    try:
        prepare(args.out or out, train=pick(args.train_images, "train"),
                val=pick(args.val_images, "val"), test=pick(args.test_images, "test"),
                size=pick(args.size, "size"), seed=seed if args.seed is None else args.seed)
    except ValueError as e:
        raise MinicnnError(str(e)) from None
    return 0


def _output_name(path, used):
    """The name an image's output files start with: its file name without the extension,
    numbered (``a_2``, ``a_3``) when an earlier image had the same name; added to ``used``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def _saliency_options(args):
    return {"mean": args.mean, "raw_scale": args.raw_scale, "channel_swap": args.channel_swap}


def _saliency_net(args):
    from minicnn.saliency import saliency_net
    if not args.model:
        raise MinicnnError(f"give the classifier: minicnn {args.command} --model "
                           "deploy.prototxt --weights trained.caffemodel ...")
    if not args.weights:
        print("note: no --weights given: using the net's initial (filler) weights",
              file=sys.stderr)
    return saliency_net(args.model, args.weights)


def _methods(text):
    from minicnn.saliency import METHODS
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise MinicnnError(f"unknown method '{bad[0] if bad else text}'; methods: "
                           f"{', '.join(METHODS)} (comma-separated for several)")
    return methods


def _ratios(text):
    from minicnn.saliency import parse_ratio
    ratios = tuple(r.strip() for r in (text or "").split(",") if r.strip())
    for r in ratios:
        parse_ratio(r)
    return ratios


CROP_COLOURS = [(255, 255, 255), (0, 255, 0), (255, 0, 255), (255, 255, 0), (0, 255, 255)]


@command
def saliency(args):
    """Saliency maps of images (PNG, .npy, overlay) and, with --crop, the best crop for each
    aspect ratio (PNG and crops.json)."""
    from minicnn import saliency as sal
    images = _image_paths(args.image, args.root_folder)
    if not images:
        raise MinicnnError("give the images: minicnn saliency --model M --weights W --blob B "
                           "IMAGE... (@LIST reads a list file)")
    methods, ratios = _methods(args.method), _ratios(args.crop)
    net = _saliency_net(args)
    maps, predictions = sal.saliency_maps(net, images, args.blob, methods, output=args.output,
                                          target=args.target, smooth=args.smooth,
                                          batch_size=args.batch_size, **_saliency_options(args))
    from minicnn.deploy import ImageInput
    inp = ImageInput(net, **_saliency_options(args), resize=None, crop=(1, 1))
    results, used = [], set()
    for i, path in enumerate(images):
        name = _output_name(path, used)
        pixels = inp.load(path)
        rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
        entry = {"image": path, "width": rgb.shape[1], "height": rgb.shape[0],
                 "class": predictions[i][0],
                 "probabilities": [round(float(p), 6) for p in predictions[i][1]], "maps": {}}
        for method in methods:
            m = maps[method][i]
            base = os.path.join(args.out, f"{name}_{method}")
            sal.write_png(np.round(m * 255).astype(np.uint8), base + ".png")
            sal.write_npy(m, base + ".npy")
            picture = sal.overlay(rgb, m)
            crops = {}
            for j, ratio in enumerate(ratios):
                c = sal.best_crop(m, ratio, min_size=args.min_size)
                tag = ratio.replace(":", "x").replace("/", "x")
                out_crop = f"{base}_crop_{tag}.png"
                sal.write_png(np.round(rgb[c.y0:c.y1, c.x0:c.x1] * 255).astype(np.uint8),
                              out_crop)
                sal.draw_box(picture, c, CROP_COLOURS[j % len(CROP_COLOURS)])
                crops[ratio] = {"box": [c.x0, c.y0, c.x1, c.y1], "mass": round(c.mass, 6),
                                "output": out_crop}
            sal.write_png(picture, base + "_overlay.png")
            entry["maps"][method] = {"png": base + ".png", "npy": base + ".npy",
                                     "overlay": base + "_overlay.png", "crops": crops}
        results.append(entry)
        print(f"{path}: class {entry['class']} (p = {max(entry['probabilities']):.3f})"
              + "".join(f"\n  {method}: {base_m['overlay']}" + "".join(
                  f"\n    crop {r}: x {v['box'][0]}-{v['box'][2]}, y {v['box'][1]}-{v['box'][3]}"
                  f" (saliency kept {100 * v['mass']:.1f}%)" for r, v in base_m["crops"].items())
                  for method, base_m in entry["maps"].items()))
    if ratios:
        path = sal.write_json({"ratios": list(ratios), "min_size": args.min_size,
                               "images": results}, os.path.join(args.out, "crops.json"))
        print(f"Wrote {path}")
    return 0


@command
def eval_saliency(args):
    """Score saliency maps and crops against the object masks of `minicnn data sos`: AUC per
    method, object area kept by each ratio's crop, against a centre prior; and the count
    accuracy of the classifier."""
    from minicnn import saliency as sal
    methods, ratios = _methods(args.method), _ratios(args.crop)
    records = sal.read_objects(args.data, args.split)
    if args.limit:
        records = records[:args.limit]
    net = _saliency_net(args)
    from minicnn.deploy import _progress_bar
    bar = _progress_bar(len(records), _progress(args), "img")
    try:
        summary, shown = sal.evaluate(net, records, args.blob, methods, ratios,
                                      min_size=args.min_size, smooth=args.smooth,
                                      batch_size=args.batch_size, examples=args.examples,
                                      progress=bar.update if bar else None,
                                      **_saliency_options(args))
    finally:
        if bar:
            bar.close()
    rows = []
    for m, e in summary["methods"].items():
        rows.append([m, "-" if e["auc"] is None else f"{e['auc']:.3f}"]
                    + [f"{100 * e['crops'][r]['object_kept']:.1f}% "
                       f"({100 * e['crops'][r]['centred_same_size']:.1f}%, "
                       f"{100 * e['crops'][r]['area']:.0f}%)" for r in ratios])
    _print_table(["map", "AUC"] + [f"kept {r} (centred, area)" for r in ratios], rows)
    print(f"{summary['images']} images of {args.data} ({args.split}), {summary['with_objects']} "
          f"with objects; blob '{args.blob}'; count accuracy {100 * summary['accuracy']:.1f}%")
    print("kept: the objects' pixels inside the best crop; centred: inside a crop of the same "
          "size at the centre; area: the crop's share of the image")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for k, ex in enumerate(shown):
            from minicnn.io import load_image
            rgb = load_image(ex["record"]["image"])
            tiles = [np.round(rgb * 255).astype(np.uint8)]
            for m in methods + ("centre prior",):
                picture = sal.overlay(rgb, ex["maps"][m])
                for j, r in enumerate(ratios):
                    sal.draw_box(picture, ex["crops"][m, r], CROP_COLOURS[j % len(CROP_COLOURS)])
                tiles.append(picture)
            mask = ex["maps"]["mask (ideal)"]
            tiles.append(np.repeat(np.round(mask * 255).astype(np.uint8)[:, :, None], 3, 2))
            gap = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
            row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
            sal.write_png(row, os.path.join(args.out, f"example_{k:02d}.png"))
        path = sal.write_json(summary, os.path.join(args.out, "eval.json"))
        print(f"Wrote {path}" + (f" and {len(shown)} example pictures (image, "
                                 f"{', '.join(methods)}, centre prior, mask)" if shown else ""))
    return 0


def _add_saliency_options(p):
    p.add_argument("--model", help="the classifier's deploy prototxt")
    p.add_argument("--weights", help="the trained .caffemodel")
    p.add_argument("--blob", help="the intermediate conv blob of the entropy and sum methods, "
                                  "e.g. inception_4a/output")
    p.add_argument("--method", default="entropy",
                   help="entropy (the talk's), gradient (Simonyan et al.), sum (naive), or a "
                        "comma-separated list (default entropy)")
    p.add_argument("--crop", help="aspect ratios W:H, comma-separated, e.g. 2:1,1:1,4:3")
    p.add_argument("--min-size", type=float, default=0.5,
                   help="a crop's height is at least this fraction of the largest crop of its "
                        "ratio (default 0.5)")
    p.add_argument("--smooth", type=float, default=0.03,
                   help="Gaussian smoothing sigma as a fraction of the image's longer side "
                        "(default 0.03)")
    p.add_argument("--mean", type=_mean_values, default=(104.0, 117.0, 123.0),
                   help="per-channel mean subtracted after the raw scale (default 104,117,123), "
                        "or a mean image (.binaryproto, .npy) averaged per channel")
    p.add_argument("--raw-scale", type=float, default=255.0, help="default 255")
    p.add_argument("--channel-swap", type=_numbers(int), default=(2, 1, 0),
                   help="default 2,1,0: RGB -> BGR")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward pass")


# --- detection: detect, eval-detection, convert darknet ----------------------------------------

def _detection_net(args):
    from minicnn import Net
    if not args.model:
        raise MinicnnError(f"give the detector's deploy prototxt: minicnn {args.command} "
                           "--model deploy.prototxt --weights trained.caffemodel ...")
    if not args.weights:
        print("note: no --weights given: using the net's initial (filler) weights",
              file=sys.stderr)
    net = Net(args.model, weights=args.weights, phase="TEST")
    if not args.rgb and _converted_from_darknet(args.model):
        print(f"note: {args.model} was converted from Darknet, whose nets take RGB: give --rgb "
              "(this run feeds BGR, as for nets trained by minicnn)", file=sys.stderr)
    return net


def _converted_from_darknet(model):
    """Whether a prototxt is `minicnn convert darknet`'s (its first line says so)."""
    try:
        with open(model, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith("# Converted by minicnn from")
    except OSError:
        return False


def _detection_inputs(args):
    return {"scale": args.scale, "rgb": args.rgb, "mean": args.mean}


def _class_names(args, classes):
    if not args.names:
        return None
    from minicnn.deploy import read_labels
    names = read_labels(args.names)
    if re.match(r"\s*item\s*\{", "\n".join(n for n in names if not n.lstrip().startswith("#"))):
        names = _label_map_names(args.names)           # SSD's labelmap_voc.prototxt
    if len(names) < classes:
        raise MinicnnError(f"{args.names} names {len(names)} classes, the net has {classes}")
    return names


def _label_map_names(path):
    """Names by label from a LabelMap prototxt: each item's display_name (its name if it has
    none); labels the map skips are named by their number."""
    from minicnn.proto import read_prototxt
    items = read_prototxt(path, "LabelMap").item
    names = [str(k) for k in range(max((item.label for item in items), default=-1) + 1)]
    for item in items:
        if item.label >= 0:
            names[item.label] = item.display_name or item.name
    return names


@command
def detect(args):
    """Detect objects with a YOLO net (YOLOv1's Detection layer, YOLOv2's Region, YOLOv3's Yolo
    layers) or an SSD net (DetectionOutput, run as the fork's ssd_detect): PNGs with the boxes
    drawn and a JSON of the detections (boxes x0, y0, x1, y1 in the image's pixels)."""
    from minicnn import detection
    images = _image_paths(args.image, args.root_folder)
    if not images:
        raise MinicnnError("give the images: minicnn detect --model M --weights W IMAGE... "
                           "(@LIST reads a list file)")
    net = _detection_net(args)
    names = _class_names(args, detection.net_classes(net))
    found = detection.detect(net, images, args.thresh, args.nms, names=names,
                             batch_size=args.batch_size,
                             letterbox=False if args.no_letterbox else None,
                             hier_thresh=args.hier_thresh, **_detection_inputs(args))
    results, used = [], set()
    for path, dets in zip(images, found):
        name = _output_name(path, used)
        out_png = os.path.join(args.out, name + ".png")
        detection.draw_detections(path, dets, out_png)
        width, height = detection.image_size(path)
        results.append({"image": path, "width": width, "height": height, "output": out_png,
                        "detections": dets})
        print(f"{path}: {len(dets)} detection(s)"
              + "".join(f"\n  {d['label']} {d['score']:.3f} at "
                        + ", ".join(f"{v:.1f}" for v in d["box"]) for d in dets))
    path = detection.write_json(results, os.path.join(args.out, "detections.json"))
    print(f"Wrote {len(results)} picture(s) and {path}")
    return 0


def _fmt4(value):
    """A score with 4 decimals, "-" for none."""
    return "-" if value is None else f"{value:.4f}"


@command
def eval_detection(args):
    """Mean average precision at IoU 0.5 (VOC2007 11-point and all-point) of a YOLO net (v1, v2
    or v3) on a Darknet image list, per class, with a precision/recall plot."""
    from minicnn import detection
    net = _detection_net(args)
    if not detection.head_layers(net) and detection.ssd_output(net) is not None:
        raise MinicnnError("eval-detection scores YOLO nets on Darknet label files; score an "
                           "SSD net with its test net: minicnn test --model test.prototxt "
                           "--weights W --iterations N --eval-type detection (docs/ssd.md)")
    images = detection.read_detection_list(args.list, args.root_folder)
    if args.limit:
        images = images[:args.limit]
    names = _class_names(args, detection.net_classes(net))
    result, found = detection.evaluate_images(
        net, images, iou=args.iou, thresh=args.thresh, nms_thresh=args.nms, names=names,
        batch_size=args.batch_size, progress=False if args.no_progress else None,
        hier_thresh=args.hier_thresh, **_detection_inputs(args))
    rows = [(e["label"], e["ground_truths"], e["detections"],
             "-" if e["ap_11point"] is None else f"{e['ap_11point']:.4f}",
             "-" if e["ap_allpoint"] is None else f"{e['ap_allpoint']:.4f}")
            for e in result["classes"]]
    _print_table(["class", "truths", "detections", "AP 11-point", "AP all-point"], rows,
                 right=(1, 2, 3, 4))
    fmt = _fmt4
    print(f"mAP@{args.iou:g} over {len(images)} images: {fmt(result['map_11point'])} "
          f"(VOC2007 11-point), {fmt(result['map_allpoint'])} (all-point)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        plot = detection.plot_pr_curves(result, os.path.join(args.out, "pr_curve.png"))
        result["images"] = [{"image": path, "detections": dets}
                            for path, dets in zip(images, found)]
        path = detection.write_json(result, os.path.join(args.out, "eval.json"))
        print(f"Wrote {plot} and {path}")
    return 0


@command
def convert(args):
    """Convert another framework's model to a prototxt and a caffemodel."""
    from minicnn.darknet import convert_darknet, input_hint, read_cfg
    written = convert_darknet(args.cfg, args.weights, args.outdir)
    for path in written:
        print(f"Wrote {path}")
    if args.weights is None:
        print("No caffemodel: no .weights given, so the layers' fillers are Darknet's random "
              "initialisation. To train from scratch: "
              + ("point the train net's data layer at your image list, then "
                 if written[-2].endswith("_train.prototxt") else "write the train net, then ")
              + f"minicnn train {written[-1]} (the warnings above say what of Darknet's "
              "schedule the solver cannot follow)")
    print("The net takes RGB input scaled to [0, 1] (Darknet's): "
          + input_hint(read_cfg(args.cfg)))
    return 0


def _add_detection_options(p):
    p.add_argument("--model", help="the detector's deploy prototxt (ends in a Detection layer, "
                                   "Region/Yolo layers, or, for detect, SSD's DetectionOutput)")
    p.add_argument("--weights", help="the trained .caffemodel (required in practice: without "
                                     "it the net keeps its fillers' values)")
    p.add_argument("--nms", type=float, default=None,
                   help="per-class NMS: drop boxes overlapping a better one by IoU > this "
                        "(default Darknet's: 0.4 for YOLOv1, 0.45 for v2/v3; SSD nets use "
                        "their DetectionOutput's own)")
    p.add_argument("--scale", type=float, default=None,
                   help="multiply the 0..255 pixels by this, after the mean (default 1/255; "
                        "1 for SSD nets, as ssd_detect; MobileNet-SSD: 0.007843)")
    p.add_argument("--mean", type=_numbers(float), default=None,
                   help="per-channel mean subtracted before the scale, in the net's channel "
                        "order, e.g. 104,117,123 (default none; 104,117,123 for SSD nets, as "
                        "ssd_detect; MobileNet-SSD: 127.5; --mean 0 for none)")
    p.add_argument("--rgb", action="store_true",
                   help="feed RGB (Darknet nets) instead of BGR (nets trained by minicnn)")
    p.add_argument("--names", help="class names, one per line (line 1 is class 0: for SSD "
                                   "nets the background), or SSD's LabelMap prototxt "
                                   "(labelmap_voc.prototxt)")
    p.add_argument("--root-folder", default="", help="folder prepended to the images' paths")
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="images per forward pass (default 8)")
    p.add_argument("--hier-thresh", type=float, default=0.5,
                   help="YOLO9000's softmax tree: go down the tree while the class probability "
                        "stays above this (default 0.5, Darknet's)")


# --- any-size inputs and segmentation: data canvas-digits / segmentation-digits, segment,
# eval-segmentation ------------------------------------------------------------------------------

def _any_size_data(args):
    out = args.out or "data/" + args.dataset.replace("-", "_")
    try:
        if args.dataset == "canvas-digits":
            from minicnn.data.canvas_digits import CANVAS_SEED, prepare_canvas_digits
            prepare_canvas_digits(out, seed=CANVAS_SEED if args.seed is None else args.seed)
        else:
            from minicnn.data import segmentation_digits as sd
            given = {k: v for k, v in (("train", args.train_images), ("val", args.val_images),
                                       ("test", args.test_images), ("size", args.size))
                     if v is not None}
            sd.prepare_segmentation_digits(
                out, ignore_coverage=args.ignore_coverage,
                seed=sd.SEGMENTATION_SEED if args.seed is None else args.seed, **given)
    except ValueError as e:
        raise MinicnnError(str(e)) from None
    return 0


def _add_segmentation_options(p):
    p.add_argument("--model", help="the segmentation net's deploy prototxt (an Input blob, "
                                   "score maps at the input's size out)")
    p.add_argument("--weights", help="the trained .caffemodel")
    p.add_argument("--mean", type=float, default=127.5,
                   help="subtracted from every 0..255 pixel (default 127.5, models/deeplab's)")
    p.add_argument("--scale", type=float, default=0.0078125,
                   help="then multiplied by this (default 1/128, models/deeplab's)")
    p.add_argument("--blob", help="the score maps (default: the net's first output)")
    p.add_argument("--names", help="class names, one per line")
    p.add_argument("--root-folder", default="", help="folder prepended to the images' paths")
    p.add_argument("--scales", type=_scales, default=(1.0,),
                   help="multi-scale inference: comma-separated input scales whose score maps "
                        "are averaged, e.g. 0.75,1,1.25 (DeepLab's MS; default 1)")


def _scales(text):
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        scales = ()
    if not scales or any(not s > 0 for s in scales):
        raise argparse.ArgumentTypeError(f"expected positive numbers like 0.75,1,1.25, got "
                                         f"{text!r}")
    return scales


def _segmentation_net(args):
    from minicnn import Net
    if not args.model:
        raise MinicnnError(f"give the net: minicnn {args.command} --model deploy.prototxt "
                           "--weights trained.caffemodel ...")
    if not args.weights:
        print("note: no --weights given: using the net's initial (filler) weights",
              file=sys.stderr)
    return Net(args.model, weights=args.weights, phase="TEST")


@command
def segment(args):
    """Segment images with a net at each image's own size: a colour-coded mask (VOC colours),
    an overlay on the image and the raw class ids, as PNGs, per image."""
    from minicnn import segmentation as seg
    images = _image_paths(args.image, args.root_folder)
    if not images:
        raise MinicnnError("give the images: minicnn segment --model M --weights W IMAGE... "
                           "--out DIR (@LIST reads a list file)")
    net = _segmentation_net(args)
    names = _read_names(args.names)
    used = set()
    for path in images:
        labels, _, chw = seg.segment(net, path, args.mean, args.scale, output_blob=args.blob,
                                     scales=args.scales)
        name = _output_name(path, used)
        base = os.path.join(args.out, name)
        seg.save_png(seg.colorize(labels), base + "_mask.png")
        seg.save_png(seg.overlay(seg.rgb_of(chw), labels), base + "_overlay.png")
        seg.save_png(labels.astype(np.uint8), base + "_labels.png")
        counts = np.bincount(labels.ravel(), minlength=1)
        found = ", ".join(f"{_class_name(names, c)} {n}" for c, n in enumerate(counts) if n)
        print(f"{path}: {labels.shape[1]}x{labels.shape[0]} -> {base}_mask.png, "
              f"_overlay.png, _labels.png; pixels per class: {found}")
    return 0


def _read_names(path):
    if not path:
        return None
    from minicnn.deploy import read_labels
    return read_labels(path)


def _class_name(names, c):
    return names[c] if names is not None and c < len(names) else str(c)


@command
def eval_segmentation(args):
    """Score a segmentation net on an `image label` list: per-class IoU, mIoU, pixel and mean
    class accuracy, and the mIoU within a band along the true boundaries."""
    from minicnn import segmentation as seg
    pairs = seg.read_segmentation_list(args.list, args.root_folder, args.labels_dir)
    if args.limit:
        pairs = pairs[:args.limit]
    net = _segmentation_net(args)
    names = _read_names(args.names)
    bands = tuple(args.band or ())
    result = seg.evaluate(net, pairs, args.mean, args.scale, args.ignore_label, bands,
                          output_blob=args.blob, progress=_progress(args),
                          scales=args.scales)
    fmt = _fmt4
    overall = result["overall"]
    confusion = np.asarray(result["confusion"])
    heads = ["class", "IoU"] + [f"IoU@{b}px" for b in bands] + ["truth px", "predicted px"]
    rows = [[_class_name(names, c), fmt(iou)]
            + [fmt(result["boundary"][b]["iou"][c]) for b in bands]
            + [int(confusion[c].sum()), int(confusion[:, c].sum())]
            for c, iou in enumerate(overall["iou"])]
    _print_table(heads, rows, right=tuple(range(1, len(heads))))
    if tuple(args.scales) != (1.0,):
        print(f"multi-scale inference: score maps averaged over scales "
              f"{', '.join(f'{s:g}' for s in args.scales)}")
    print(f"mIoU over {result['images']} images ({overall['pixels']} scored pixels): "
          f"{fmt(overall['miou'])}; pixel accuracy {fmt(overall['pixel_accuracy'])}, mean "
          f"class accuracy {fmt(overall['mean_class_accuracy'])}")
    for b in bands:
        near = result["boundary"][b]
        print(f"boundary mIoU within {b} px of a true boundary ({near['pixels']} pixels): "
              f"{fmt(near['miou'])}")
    if args.out:
        result["names"] = names
        path = seg.write_json(result, os.path.join(args.out, "eval.json"))
        print(f"Wrote {path}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minicnn", description="Run Caffe nets with minicnn (commands after Caffe's tool).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("train", help="train with a solver (like `caffe train`)")
    p.add_argument("solver_path", nargs="?", metavar="SOLVER",
                   help="solver prototxt, or a net prototxt with --max-iter and friends")
    p.add_argument("--solver", help="solver prototxt (Caffe's -solver)")
    p.add_argument("--weights", help="fine-tune from these .caffemodel (or .caffemodel.h5) files "
                                     "(comma-separated)")
    p.add_argument("--snapshot", help="resume from this .solverstate (or .solverstate.h5)")
    p.add_argument("--gpu", help="train on this GPU (e.g. 0); several (0,1 or all) train "
                                 "data-parallel, one process per GPU")
    p.add_argument("--level", type=int, default=0,
                   help="net state level of the train net (the solver's train_state)")
    p.add_argument("--stage", action="append", default=[],
                   help="net state stage of the train net (repeat, or a,b)")
    p.add_argument("--sigint-effect", choices=["stop", "snapshot", "none"], default="stop",
                   help="on Ctrl-C: stop (writing a snapshot, as snapshot_after_train does; "
                        "the default), snapshot and go on, or nothing")
    p.add_argument("--sighup-effect", choices=["stop", "snapshot", "none"], default="snapshot",
                   help="on SIGHUP (the terminal closed): snapshot and go on (the default), "
                        "stop, or nothing")
    p.add_argument("--sigterm-effect", choices=["stop", "snapshot", "none"], default="stop",
                   help="on SIGTERM (a scheduler ending the job; Caffe dies at once): stop "
                        "after the iteration, writing a snapshot (the default; a second "
                        "SIGTERM quits at once), snapshot and go on, or nothing (one process "
                        "only: under mpirun each rank ends at once)")
    p.add_argument("--batch-size", type=_positive_int,
                   help="batch size of the train net's data layers")
    p.add_argument("--test-iter", type=_positive_int, help="test batches per test")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag in SOLVER_FLAGS:
        kind = str if flag in ("lr_policy", "solver_type", "snapshot_prefix") else (
            float if flag in ("base_lr", "momentum", "momentum2", "weight_decay", "gamma",
                              "power", "clip_gradients", "delta") else int)
        p.add_argument("--" + flag.replace("_", "-"), type=kind, dest=flag,
                       help=f"solver field {SOLVER_FLAGS[flag]}")

    p = sub.add_parser("test", help="average a net's outputs over batches (like `caffe test`)")
    _add_net_options(p, "TEST")
    p.add_argument("--iterations", type=_positive_int, default=50, help="batches (default 50)")
    p.add_argument("--gpu", help="run on this GPU (e.g. 0)")
    p.add_argument("--eval-type", choices=["classification", "detection"],
                   default="classification",
                   help="detection: mAP of the net's DetectionEvaluate outputs, as the SSD "
                        "fork's solver test (default: average each output)")
    p.add_argument("--ap-version", default="Integral",
                   help="with --eval-type detection: 11point, MaxIntegral or Integral (default)")
    p.add_argument("--show-per-class-result", action="store_true",
                   help="with --eval-type detection: each class's AP too")

    p = sub.add_parser("time", help="time forward/backward of each layer (like `caffe time`)")
    _add_net_options(p, "TRAIN")
    p.add_argument("--iterations", type=_positive_int, default=50,
                   help="timed iterations (default 50)")
    p.add_argument("--gpu", help="time on this GPU (e.g. 0; each layer is synchronized)")

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

    p = sub.add_parser("data", help="write a packaged dataset as LMDB, HDF5 or PNG files")
    p.add_argument("dataset", choices=["mnist", "fashion-mnist", "detection-digits",
                                       "canvas-digits", "segmentation-digits", "sos",
                                       "face-area"])
    p.add_argument("--out", help="output folder (default data/<dataset> with _ for -)")
    p.add_argument("--format", choices=["lmdb", "hdf5", "images"],
                   help="mnist, fashion-mnist: lmdb (default), hdf5 (+ list files), or images "
                        "(PNGs + list files)")
    p.add_argument("--train-per-class", type=int,
                   help="mnist, fashion-mnist: keep a balanced subset: this many training "
                        "images of each class")
    p.add_argument("--test-per-class", type=int,
                   help="mnist, fashion-mnist: keep this many test images of each class")
    p.add_argument("--seed", type=int,
                   help="seed of the per-class subsets (default 2024), or of detection-digits "
                        "(default 4242), canvas-digits (606), segmentation-digits (5151)")
    p.add_argument("--train-images", type=int,
                   help="detection-digits: training images (default 3000); "
                        "segmentation-digits: 2000; sos: 5000; face-area: 4000")
    p.add_argument("--val-images", type=int, help="detection-digits: default 300; "
                                                  "segmentation-digits: 200; sos: 500; "
                                                  "face-area: 400")
    p.add_argument("--test-images", type=int, help="detection-digits: default 500; "
                                                   "segmentation-digits: 500; sos, face-area: "
                                                   "1000")
    p.add_argument("--size", type=int,
                   help="detection-digits: image width and height (default 160); "
                        "segmentation-digits: 97; sos: 128; face-area: 64")
    p.add_argument("--ignore-coverage", type=float,
                   help="segmentation-digits: label 255 (ignore) the pixels whose class covers "
                        "less than this fraction of them (default 0.75; 0: none)")

    p = sub.add_parser("convert-imageset", help="image list -> LMDB or LevelDB (Caffe's "
                                                  "convert_imageset)")
    p.add_argument("root", help="folder the list's paths are relative to")
    p.add_argument("list_file", help="text file of `path label` lines")
    p.add_argument("db", help="the database folder to write")
    p.add_argument("--resize-height", type=int, default=0)
    p.add_argument("--resize-width", type=int, default=0)
    p.add_argument("--gray", action="store_true")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--encoded", action="store_true", help="store the encoded image files")
    p.add_argument("--encode-type", default="",
                   help="encode every image again as png or jpg (given with its dot, .png, "
                        "files of that extension are stored as they are, as in Caffe 1.0); "
                        "without it, --encoded stores each file as it is, unless resized")
    p.add_argument("--check-size", action="store_true", help="all images must share a size")
    p.add_argument("--backend", choices=["lmdb", "leveldb"], default="lmdb", type=str.lower,
                   help="database to write: lmdb (the default) or leveldb (needs plyvel)")

    p = sub.add_parser("convert-annoset", help="image + annotation list -> LMDB or LevelDB of "
                                                 "AnnotatedDatum (SSD's convert_annoset)")
    p.add_argument("root", help="folder the list's paths are under (root + path, as the fork "
                                "joins them; a missing trailing slash is added)")
    p.add_argument("list_file", help="text file of `image annotation` lines (or `image label` "
                                     "with --anno-type classification)")
    p.add_argument("db", help="the database folder to write")
    p.add_argument("--anno-type", choices=["detection", "classification"],
                   default="classification", type=str.lower,
                   help="detection: the second word of a line is an annotation file (VOC XML, "
                        "JSON or txt boxes); classification: an integer label (default "
                        "classification, as the fork's: SSD's create_data.sh passes "
                        "--anno-type=detection)")
    p.add_argument("--label-type", choices=["xml", "json", "txt"], default="xml",
                   type=str.lower, help="the annotation files' format with --anno-type "
                                        "detection (default xml)")
    p.add_argument("--label-map-file", default="",
                   help="LabelMap prototxt: names -> labels (needed for xml and json)")
    p.add_argument("--check-label", action="store_true", help="accepted; names are always "
                                                              "checked for duplicates")
    p.add_argument("--resize-height", type=int, default=0,
                   help="resize every image to this height (default 0: keep; give both "
                        "--resize-height and --resize-width)")
    p.add_argument("--resize-width", type=int, default=0,
                   help="resize every image to this width (default 0: keep)")
    p.add_argument("--min-dim", type=int, default=0,
                   help="scale up so the shorter side is at least this (keeps the aspect ratio; "
                        "wins over --resize-*)")
    p.add_argument("--max-dim", type=int, default=0,
                   help="scale so the longer side is at most this (keeps the aspect ratio)")
    p.add_argument("--gray", action="store_true", help="store the images as one gray channel")
    p.add_argument("--shuffle", action="store_true",
                   help="write the records in a random order (default: the list's order)")
    p.add_argument("--encoded", action="store_true",
                   help="store encoded image files (default: raw pixels)")
    p.add_argument("--encode-type", default="",
                   help="png or jpg: files of that extension (jpg: .jpg or .jpeg) are "
                        "stored as they are, the others encoded again in it, as in the SSD "
                        "fork (default with --encoded: every image encoded again in its own "
                        "format; a resize encodes every image again)")
    p.add_argument("--check-size", action="store_true", help="all images must share a size")
    p.add_argument("--backend", choices=["lmdb", "leveldb"], default="lmdb", type=str.lower,
                   help="database to write: lmdb (the default) or leveldb (needs plyvel)")

    p = sub.add_parser("compute-image-mean", help="LMDB or LevelDB -> mean .binaryproto")
    p.add_argument("db")
    p.add_argument("output", nargs="?")
    p.add_argument("--backend", choices=["lmdb", "leveldb"], default="lmdb", type=str.lower,
                   help="the database's kind, as Caffe's flag (either kind is recognised by "
                        "its content)")

    p = sub.add_parser("upgrade", help="an old net (V1 layers, input_dim) or solver in the "
                                       "current format (Caffe's upgrade_*_proto_* tools)")
    p.add_argument("input", help="net prototxt, binary .caffemodel or solver prototxt")
    p.add_argument("output", help="where to write it (text for text, binary for binary)")

    p = sub.add_parser("merge-bn", help="fold BatchNorm and Scale into the convolutions before "
                                        "them, for deploy (the merge_bn.py scripts)")
    p.add_argument("model", help="the net's deploy prototxt")
    p.add_argument("weights", help="its trained .caffemodel")
    p.add_argument("out_model", help="where the merged prototxt goes")
    p.add_argument("out_weights", help="where the merged .caffemodel goes")

    p = sub.add_parser("parse-log", help="a training log as .train and .test CSV files "
                                         "(Caffe's parse_log.py)")
    p.add_argument("logfile", help="a log of Caffe's or minicnn's training (glog lines)")
    p.add_argument("output_dir", help="where LOGFILE.train and LOGFILE.test go")
    p.add_argument("--delimiter", default=",", help="column separator (default ',')")

    p = sub.add_parser("device-query", help="a GPU's properties (like `caffe device_query`)")
    p.add_argument("--gpu", help="GPU number, list (0,1) or all")

    p = sub.add_parser("classify", help="the top-k classes of images (like classify.py)")
    p.add_argument("image", nargs="*", metavar="IMAGE", help="image files; @LIST reads a list")
    p.add_argument("--images", help="a list file of images (`path` or `path label` lines)")
    _add_deploy_options(p)
    p.add_argument("--labels", help="class names, one per line (synset_words.txt)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--blob", help="the scores or probabilities (default: the first output)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--gpu", help="run the net on this GPU (e.g. 0)")

    p = sub.add_parser("extract", help="a blob's values as features (like extract_features)")
    _add_deploy_options(p, phase=True)
    p.add_argument("--blob", required=True, help="the blob to extract, e.g. pool or fc7")
    p.add_argument("--images", help="list file of images (`path label` or `path` lines)")
    p.add_argument("--iterations", type=_positive_int, help="batches of the net's own data layers")
    p.add_argument("--out", required=True, help="features file: .npy, .npz or .h5 (+ .txt), "
                                                "or a database folder named *lmdb / *leveldb")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--gpu", help="run the net on this GPU (e.g. 0)")

    p = sub.add_parser("extract-features", help="Caffe's extract_features, its positional "
                                                "arguments as Caffe takes them")
    p.add_argument("weights", help="pretrained_net_param: the .caffemodel")
    p.add_argument("proto", help="feature_extraction_proto_file: a net with data layers")
    p.add_argument("blob_names", help="extract_feature_blob_name1[,name2,...]")
    p.add_argument("dataset_names", help="save_feature_dataset_name1[,name2,...]")
    p.add_argument("num_mini_batches", type=_positive_int, help="batches to run")
    p.add_argument("db_type", help="lmdb or leveldb")
    p.add_argument("mode", nargs="?", default="CPU", help="CPU (default) or GPU")
    p.add_argument("device_id", nargs="?", help="the GPU (DEVICE_ID=0 or 0; default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("retrieve", help="database images most similar to a query image")
    _add_deploy_options(p)
    p.add_argument("--blob", required=True, help="the features' blob, e.g. pool or fc7")
    p.add_argument("--database", required=True, help="list file of the images to search")
    p.add_argument("--query", nargs="+", metavar="IMAGE", help="query images (@LIST too)")
    p.add_argument("-k", type=_positive_int,
                   help="matches per query (default 10); with --evaluate, mean average precision "
                        "at k")
    p.add_argument("--evaluate", action="store_true",
                   help="print the mean average precision of the database against its labels")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("visualize", help="draw a layer's filters or a blob's feature maps")
    _add_deploy_options(p, oversample=False)
    p.add_argument("--layer", help="draw this layer's filters (its first blob)")
    p.add_argument("--blob", help="draw this blob's feature maps for --image")
    p.add_argument("--image", help="the image whose feature maps to draw")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--scale", type=_positive_int,
                   help="enlarge each tile this many times (default: automatic)")

    p = sub.add_parser("saliency", help="saliency maps (entropy, gradient, sum) of images, "
                                        "and the best crop for each aspect ratio")
    p.add_argument("image", nargs="*", metavar="IMAGE", help="image files; @LIST reads a list")
    _add_saliency_options(p)
    p.add_argument("--output", help="the probabilities or scores blob (default: first output)")
    p.add_argument("--target", type=int, help="gradient method: explain this class's score "
                                              "(default: the predicted class)")
    p.add_argument("--root-folder", default="", help="folder prepended to the images' paths")
    p.add_argument("--out", required=True, help="folder for the maps, overlays and crops")

    p = sub.add_parser("eval-saliency", help="AUC and crop scores of saliency maps against the "
                                             "object masks of `minicnn data sos`")
    _add_saliency_options(p)
    p.add_argument("--data", default="data/sos", help="the set's folder (default data/sos)")
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--limit", type=_positive_int, help="only the first N images")
    p.add_argument("--examples", type=int, default=6,
                   help="with --out, pictures of the first N images (default 6)")
    p.add_argument("--out", help="folder for eval.json and example pictures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("detect", help="detect objects with a YOLO net (v1 Detection, v2 Region, "
                                      "v3 Yolo layers) or an SSD net (DetectionOutput): PNGs "
                                      "with boxes + JSON")
    p.add_argument("image", nargs="*", metavar="IMAGE", help="image files; @LIST reads a list")
    _add_detection_options(p)
    p.add_argument("--thresh", type=float, default=None,
                   help="report boxes whose objectness x class probability exceeds this "
                        "(default Darknet's: 0.2 for YOLOv1, 0.5 for v2/v3; SSD: boxes scoring "
                        "at least this, default 0.01 as ssd_detect's confidence_threshold)")
    p.add_argument("--no-letterbox", action="store_true",
                   help="stretch the image to the input size (the default for YOLOv1) "
                        "instead of Darknet's letterbox (the default for v2/v3)")
    p.add_argument("--out", required=True, help="folder for the pictures and detections.json")

    p = sub.add_parser("eval-detection", help="mAP@0.5 (VOC 11-point and all-point) of a "
                                              "YOLO net (v1, v2, v3) on a labelled image list "
                                              "(SSD nets: minicnn test --eval-type detection)")
    p.add_argument("--list", required=True, help="image list; labels by Darknet's rule "
                                                 "(images/ -> labels/, .txt)")
    _add_detection_options(p)
    p.add_argument("--thresh", type=float, default=0.005,
                   help="keep detections scoring above this (default 0.005)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a true positive (0.5)")
    p.add_argument("--limit", type=_positive_int, help="only the first N images")
    p.add_argument("--out", help="folder for pr_curve.png and eval.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("segment", help="segment images with a net: colour masks, overlays "
                                       "and label PNGs")
    p.add_argument("image", nargs="*", metavar="IMAGE", help="image files; @LIST reads a list")
    _add_segmentation_options(p)
    p.add_argument("--out", required=True, help="folder for <image>_mask.png (colours), "
                                                "<image>_overlay.png and <image>_labels.png")

    p = sub.add_parser("eval-segmentation", help="mIoU, per-class IoU, pixel accuracy and "
                                                 "boundary mIoU of a net on a labelled list")
    p.add_argument("--list", required=True, help="`image_path label_path` lines")
    _add_segmentation_options(p)
    p.add_argument("--labels-dir", help="read the labels from this folder instead of the "
                                        "list's 'labels' folder (e.g. labels_full)")
    p.add_argument("--band", type=_numbers(int), default=(2,),
                   help="boundary bands for the trimap mIoU, in pixels (default 2; e.g. 1,2,4)")
    p.add_argument("--ignore-label", type=int, default=255, help="truth not scored (255)")
    p.add_argument("--limit", type=_positive_int, help="only the first N images")
    p.add_argument("--out", help="write eval.json (scores and confusion matrix) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("convert", help="another framework's model -> prototxt + caffemodel")
    p.add_argument("framework", choices=["darknet"])
    p.add_argument("cfg", help="Darknet .cfg: YOLOv1 (tiny and full), YOLOv2, YOLO9000, YOLOv3 "
                               "and the classifiers (sections convolutional, local, maxpool, "
                               "avgpool, connected, dropout, softmax, cost, crop, route, "
                               "shortcut, upsample, reorg, region, yolo, detection)")
    p.add_argument("weights", nargs="?",
                   help="Darknet .weights; leave it out (cfg outdir) to start from scratch: the "
                        "prototxt's fillers are then Darknet's random initialisation and no "
                        "caffemodel is written")
    p.add_argument("outdir", help="folder for <cfg name>.prototxt and .caffemodel")
    return parser


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(_caffe_style(sys.argv[1:] if argv is None else argv))
    if extra:               # said by the command's parser, with its usage, not the top one's
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices.get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "stage", None):        # Caffe's -stage a,b names two stages
        args.stage = [s for text in args.stage for s in text.split(",") if s]
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _warning_format(args.command, formatwarning)
    try:
        return COMMANDS[args.command](args)
    except MinicnnError as e:
        print(f"minicnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:                # a file that cannot be written: a folder, no such folder
        where = f"{e.filename}: " if e.filename else ""
        print(f"minicnn {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        warnings.formatwarning = formatwarning


def _warning_format(command, default):
    """minicnn's own warnings (UserWarning: a skipped image, unused bytes, an ignored field) as
    one line like its errors, not Python's file:line and source line of minicnn's code; other
    warnings (NumPy's RuntimeWarning, deprecations) keep Python's form."""
    def format_(message, category, filename, lineno, line=None):
        if issubclass(category, UserWarning):
            return f"minicnn {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)
    return format_


if __name__ == "__main__":
    sys.exit(main())
