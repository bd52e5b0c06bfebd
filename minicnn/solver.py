"""Solver: trains a Net from a SolverParameter, iteration by iteration as Caffe's Solver does.

    solver = minicnn.get_solver("models/lenet/lenet_solver.prototxt")
    solver.solve()                       # or solver.step(100); solver.net, solver.test_nets

One iteration, in Caffe's order:
 1. zero the parameter diffs; every test_interval iterations run the test nets first;
 2. forward + backward iter_size times (diffs accumulate), the loss averaged over them;
 3. ApplyUpdate: learning rate from lr_policy; clip the global gradient norm to
    clip_gradients; divide the diffs by iter_size; add weight decay (L2: decay * w, L1:
    decay * sign(w), decay = weight_decay * decay_mult); the solver type turns each diff into
    the step (momentum and friends live in ``history``, with the learning rate *inside* it, as
    Caffe keeps it); then w -= step;
 4. iter += 1, then snapshot every ``snapshot`` iterations (and on request).

The update rules of the six solver types are in sgd_solvers.py. Snapshots are Caffe's pair of
files, ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate``; minicnn's solverstate also keeps the
data layers' positions, the random generator and the layers' counters (Layer.counters: the
images a Region loss has seen, SphereFace's and AM-Softmax's annealing iterations), so a resumed
run repeats an uninterrupted one exactly (Caffe's own .solverstate files load too).
"""

import json
import logging
import math
import os
import sys
import time
import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from minicnn import cuda
from minicnn.blob import array_to_blob_proto, blob_proto_to_array
from minicnn.data.db import resolve_path
from minicnn.data.errors import DataError
from minicnn.libm import c_math
from minicnn.errors import MinicnnError, NetError, SnapshotError, WireFormatError, os_reason
from minicnn.net import Net, layer_included
from minicnn.ops.ssd_eval import AP_VERSIONS, EVAL_TYPES, DetectionStats
from minicnn.proto import caffe_pb2, read_binary, read_prototxt, upgrade_solver, write_binary
from minicnn.proto.text import field_lines
from minicnn.proto.upgrade import upgrade_net
from minicnn.proto.wire import remove_stale_temporaries
from minicnn.rng import get_rng, set_random_seed

SOLVERS = {}                      # type name ("SGD", "Adam", ...) -> Solver subclass

log = logging.getLogger("minicnn.solver")


def register_solver(type_name):
    def decorate(cls):
        if type_name in SOLVERS:
            raise ValueError(f"solver type '{type_name}' is registered twice")
        SOLVERS[type_name] = cls
        cls.type = type_name
        return cls
    return decorate


@dataclass
class ParamStep:
    """The solver's update of one parameter, handed to the layer that computes its gradient so
    that its backward takes the step in the same pass (Layer.steppable_params; InnerProduct's
    weights, csrc/inner_product.cpp): SGD, or Nesterov, with csrc/solver.cpp's arguments. The
    layer sets ``taken``. ``cleared``: whether the diff was zeroed this iteration (the solver
    skips the clear of a diff the step will write whole; a layer that does not take the step
    zeroes it before adding its gradient)."""
    lr: float
    momentum: float
    decay: float
    regularization: int          # 0 none, 1 L2, 2 L1
    nesterov: bool
    history: np.ndarray
    cleared: bool = False
    taken: bool = False


class TrainingDiverged(MinicnnError):
    """The loss became NaN or infinite; training stopped without saving the bad weights."""


def _weak_log(solver):
    """A net's debug_log that writes to ``solver.log`` while the solver lives (then stderr, as
    a lone net logs). The bound method itself would make a cycle, solver -> net -> solver, so a
    dropped solver, its nets and all their arrays would wait for the cycle collector."""
    ref = weakref.ref(solver)

    def debug_log(message):
        owner = ref()
        if owner is None:
            print(message, file=sys.stderr, flush=True)
        else:
            owner.log(message)
    return debug_log


def read_solver(path):
    """A SolverParameter from a solver prototxt, upgraded, with snapshot_prefix defaulted as
    Caffe does (the solver file's path without extension; a folder gets the file's stem)."""
    param = upgrade_solver(read_prototxt(path, "SolverParameter"), path)
    stem = os.path.splitext(os.fspath(path))[0]
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = stem
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, os.path.basename(stem))
    return param


def get_solver(solver, **kwargs):
    """The Solver of the type the parameter names (Caffe's SolverRegistry::CreateSolver)."""
    param = read_solver(solver) if not isinstance(solver, caffe_pb2.SolverParameter) \
        else upgrade_solver(solver.copy())
    if param.type not in SOLVERS:
        raise MinicnnError(f"unknown solver type '{param.type}'; minicnn supports: "
                           f"{', '.join(sorted(SOLVERS))}")
    return SOLVERS[param.type](param, source=solver if isinstance(solver, (str, os.PathLike))
                               else None, **kwargs)


# --- learning-rate policies --------------------------------------------------------------------
#   fixed  base_lr                       step       base_lr * gamma^floor(iter / stepsize)
#   exp    base_lr * gamma^iter          inv        base_lr * (1 + gamma * iter)^-power
#   multistep  base_lr * gamma^(steps passed, one per iteration at most)
#   poly   base_lr * (1 - iter / max_iter)^power
#   sigmoid    base_lr * (1 / (1 + exp(-gamma * (iter - stepsize))))  (gamma > 0 rises, < 0 decays)
# with iter the number of updates done so far.

def _need(param, *fields):
    for field in fields:
        if not param.HasField(field):
            raise MinicnnError(f"lr_policy '{param.lr_policy}' needs {field} in the solver")


def learning_rate(param, iteration, current_step, log=None, dtype=np.float32):
    """(rate, current_step) at ``iteration`` under param.lr_policy, in Caffe's arithmetic for a
    net of ``dtype`` (SGDSolver<Dtype>::GetLearningRate). The rate is a value of ``dtype``, as
    Caffe's ``Dtype rate``: a parameter's lr is then dtype(rate * lr_mult), Caffe's
    ``Dtype local_rate = rate * net_params_lr[i]`` (with a float32 net, one rounding of the
    policy's double result before the lr_mult, not one after it). A rate that is not finite
    is an error naming the policy's fields: Caffe trains on with it, the weights turning inf or
    NaN, which the divergence check would then blame on base_lr."""
    rate, current_step = _policy_rate(param, iteration, current_step, log, dtype)
    with np.errstate(over="ignore"):           # a float32 rate past 3.4e38 is inf, as Caffe's
        rate = float(np.dtype(dtype).type(rate))
    if not math.isfinite(rate):
        fields = ("base_lr",) + _POLICY_FIELDS.get(param.lr_policy, ())
        values = ", ".join(f"{f} {getattr(param, f):g}" for f in fields)
        raise MinicnnError(f"lr_policy '{param.lr_policy}' gives lr = {rate} at iteration "
                           f"{iteration} ({values}): an update with it leaves no weight finite")
    return rate, current_step


# the fields besides base_lr that can make a policy's rate inf or NaN
_POLICY_FIELDS = {"step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
                  "multistep": ("gamma",), "poly": ("power", "max_iter"),
                  "sigmoid": ("gamma", "stepsize")}


def _policy_rate(param, iteration, current_step, log, dtype):
    # Caffe's types: base_lr, gamma and power are floats (caffe.proto), iter an int. pow(gamma,
    # int) is a double pow (float * double: a double); the others are computed in the net's
    # float, whose pow and exp are powf and expf for a float32 net (minicnn.libm)
    policy, base = param.lr_policy, param.base_lr
    t, c, f32, dpow = np.dtype(dtype).type, c_math(dtype), np.float32, c_math(np.float64).pow
    if policy == "fixed":
        return base, current_step
    if policy == "step":
        _need(param, "gamma", "stepsize")
        if param.stepsize <= 0:
            raise MinicnnError("lr_policy 'step' needs stepsize > 0")
        current_step = iteration // param.stepsize
        return base * dpow(param.gamma, current_step), current_step
    if policy == "exp":
        _need(param, "gamma")
        return base * dpow(param.gamma, iteration), current_step
    if policy == "inv":
        _need(param, "gamma", "power")
        # Dtype(1) + gamma() * iter_, with gamma() * iter_ a float product whatever Dtype is
        return t(base) * c.pow(t(1) + t(f32(param.gamma) * f32(iteration)),
                               t(-param.power)), current_step
    if policy == "multistep":
        _need(param, "gamma")
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
            if log:
                log(f"MultiStep Status: Iteration {iteration}, step = {current_step}")
        return base * dpow(param.gamma, current_step), current_step
    if policy == "poly":
        _need(param, "power")
        if param.max_iter <= 0:
            raise MinicnnError("lr_policy 'poly' needs max_iter > 0")
        if iteration > param.max_iter:      # Caffe's rate: negative (ascent) or NaN
            raise MinicnnError(f"lr_policy 'poly' reaches lr 0 at max_iter {param.max_iter}; "
                               f"iteration {iteration} is past it, where Caffe's rate is no "
                               "decay (negative, NaN, or rising with an even power): raise "
                               "max_iter or step fewer")
        return t(base) * c.pow(t(1) - t(iteration) / t(param.max_iter),
                               t(param.power)), current_step
    if policy == "sigmoid":
        _need(param, "gamma", "stepsize")
        # gamma < 0: a decay, to exactly 0 once exp overflows to inf
        e = c.exp(t(-param.gamma) * (t(iteration) - t(param.stepsize)))
        return t(base) * (t(1) / (t(1) + e)), current_step
    known = "fixed, step, exp, inv, multistep, poly, sigmoid"
    raise MinicnnError(f"unknown lr_policy '{policy}'; Caffe's policies are: {known}"
                       if policy else f"the solver gives no lr_policy (one of: {known})")


def clip_scale(threshold, sums_of_squares, dtype):
    """(L2 norm, scale factor or None) of clip_gradients: Caffe's ClipGradients sums each
    blob's sum of squares, takes the root and divides in the net's float (a float32 net's norm
    in float64 was an ulp off, and compared with the threshold there)."""
    t = np.dtype(dtype).type
    total = t(0)
    with np.errstate(over="ignore"):           # an inf norm scales by 0, as in Caffe
        for value in sums_of_squares:
            total += t(value)
    norm = np.sqrt(total)
    return float(norm), (float(t(threshold) / norm) if norm > t(threshold) else None)


# Values Caffe's solvers refuse (their CHECKs) or that an update rule cannot take (Adam's bias
# correction divides by 1 - momentum^t): (field, test, what it must be, the solver types it is
# for, None for all). Checked before any net is built, naming the solver file's line.
_SOLVER_RULES = [
    ("average_loss", lambda v: v >= 1, ">= 1 (the number of losses averaged for display)", None),
    ("iter_size", lambda v: v >= 1, ">= 1 (forward/backward passes per update)", None),
    ("momentum", lambda v: v == 0, "0: AdaGrad takes no momentum", {"AdaGrad"}),
    ("momentum", lambda v: v == 0, "0: RMSProp takes no momentum, its decay is rms_decay",
     {"RMSProp"}),
    ("rms_decay", lambda v: 0 <= v < 1, "in [0, 1)", {"RMSProp"}),
    ("momentum", lambda v: 0 <= v <= 1, "in [0, 1] (AdaDelta's decay rate)", {"AdaDelta"}),
    ("momentum", lambda v: 0 <= v < 1, "in [0, 1) (Adam's beta1)", {"Adam"}),
    ("momentum2", lambda v: 0 <= v < 1, "in [0, 1) (Adam's beta2)", {"Adam"}),
]


def solver_field_where(source):
    """field -> "file:line: " where the solver prototxt ``source`` sets it ("file: " where it
    does not, "" without a file), to begin an error about a field's value."""
    lines = field_lines(source, "SolverParameter") if source else {}

    def where(field):
        if field in lines:
            return f"{source}:{lines[field]}: "
        return f"{source}: " if source else ""
    return where


def check_solver_values(param, solver_type, source=None):
    """A MinicnnError naming the file, line and field of the first value of ``param`` that
    _SOLVER_RULES refuses. (The learning-rate policy's own fields are checked as it is first
    used, as Caffe's are: a solver that never trains needs none.)"""
    where = solver_field_where(source)
    for field, ok, must, types in _SOLVER_RULES:
        if (types is None or solver_type in types) and not ok(getattr(param, field)):
            raise MinicnnError(f"{where(field)}{field} must be {must}; it is "
                               f"{getattr(param, field):g}")


def check_snapshot_prefix(prefix):
    """Caffe's CheckSnapshotWritePermissions, made at the start rather than at the first
    snapshot an hour into training: a MinicnnError if files ``<prefix>_iter_N...`` cannot be
    written. A folder that does not exist yet is fine where it can be made (snapshot() makes
    it; Caffe would fail): then the nearest folder that exists must take new entries."""
    folder = os.path.dirname(prefix) or "."
    missing = folder
    while not os.path.exists(missing):
        missing = os.path.dirname(missing) or "."
    reason = None
    if not os.path.isdir(missing):
        reason = f"{missing} is a file, not a folder"
    elif missing == folder:               # as Caffe: write a probe file, then remove it
        import tempfile
        try:
            fd, probe = tempfile.mkstemp(prefix=os.path.basename(prefix) + ".",
                                         suffix=".tempfile", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            reason = f"cannot write a file in {folder} ({os_reason(e)})"
    elif not os.access(missing, os.W_OK | os.X_OK):
        reason = f"cannot make {folder}: {missing} cannot be written"
    if reason:
        raise MinicnnError(f"snapshot_prefix '{prefix}': {reason}. Make sure that the folder "
                           "exists (or can be made) and can be written")


class Solver:
    """Trains ``self.net`` and evaluates ``self.test_nets`` (pycaffe's Solver interface).

    ``solver`` is a solver prototxt path or a SolverParameter. ``dtype`` chooses float32 or
    float64 nets; ``train_batch_size`` overrides the train net's data-layer batch size;
    ``log`` receives each log line (default: the "minicnn.solver" logger, or stderr when
    logging is not configured). ``device`` puts the nets on a GPU ("cuda:0", 0; None follows
    minicnn.set_mode_gpu): the update then runs on the device arrays the blobs hold.
    """
    type = None
    history_per_param = 1                 # AdaDelta and Adam keep two

    def __init__(self, solver, *, source=None, dtype=np.float32, train_batch_size=None,
                 log=None, device=None):
        if not isinstance(solver, caffe_pb2.SolverParameter):
            source, solver = solver, read_solver(solver)
        self.param = param = upgrade_solver(solver.copy())
        check_solver_values(param, self.type, source)
        check_eval_type(param)
        if param.snapshot > 0:             # as Caffe's Solver::Init, before the nets are built
            check_snapshot_prefix(param.snapshot_prefix)
        self.source = os.fspath(source) if source else None
        self.source_dir = os.path.dirname(os.path.abspath(source)) if source else None
        self._log = log
        self._signal_messages = []           # what signal handlers had to say (log_from_signal)
        self._stale_snapshots_checked = False  # snapshot() removes a killed run's .tmp once
        self.on_iteration, self.on_test = [], []       # callbacks (see _notify_*)
        self.callbacks = []                  # (on_start, on_gradients_ready): add_callback
        if param.type != self.type and type(self) is not Solver:
            self.log(f"note: the solver file says type '{param.type}', running {self.type}")
        if param.random_seed >= 0:
            set_random_seed(param.random_seed)
        self.dtype = np.dtype(dtype)
        self.device = cuda.resolve_device(device)
        self.net = self._train_net(train_batch_size)
        self.test_nets = self._test_nets()
        if param.eval_type != "detection":
            for i, test_net in enumerate(self.test_nets):
                note = detection_eval_note(test_net, f"test net #{i}", 'eval_type: "detection" '
                                           "(ssd_pascal.py's solver sets it)")
                if note:
                    self.log(note)
        for i, test_net in enumerate(self.test_nets):
            for note in test_coverage_notes(test_net, param.test_iter[i], f"test net #{i}"):
                self.log(note)
        for net in [self.net] + self.test_nets:
            net.debug_log = _weak_log(self)
        for test_net in self.test_nets:
            test_net.share_with(self.net)
            test_net.debug_info = bool(param.debug_info)
        for models in param.weights:         # the solver file's weights: fine-tune from them
            self.load_weights(models)
        self.iter = 0
        self.current_step = 0
        self.losses, self.smoothed_loss = [], 0.0
        self.requested_action = None         # "stop" or "snapshot", set by signal handlers
        self.requested_early_exit = False
        self.diverged = None
        self.last_snapshot, self.last_snapshot_iter = None, None
        self.gradient_reducer = None         # data-parallel: (solver, loss) -> averaged loss
        self.history = [np.zeros_like(p.data) for _ in range(self.history_per_param)
                        for p in self.net.learnable_params]

    # --- logging --------------------------------------------------------------------------------
    def log(self, message):
        self.log_signal_messages()
        self._write_log(message)

    def log_from_signal(self, message):
        """Log ``message`` from a signal handler: it is only queued here, and written by the
        next log() or at the end of the iteration. (Written from the handler itself, it could
        land in the middle of a write to the same log file, which Python refuses with
        "reentrant call inside BufferedWriter".)"""
        self._signal_messages.append(message)

    def log_signal_messages(self):
        while self._signal_messages:
            self._write_log(self._signal_messages.pop(0))

    def _write_log(self, message):
        if self._log is not None:
            self._log(message)
        elif log.hasHandlers():
            log.info(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def load_weights(self, models):
        """Caffe's LoadNetWeights: copy the layers of each .caffemodel in ``models`` (a path, or
        paths separated by commas) into the train net and every test net, by layer name. A
        relative path is looked for as given, then next to the solver file."""
        for model in str(models).split(","):
            path = resolve_path(model, self.source_dir, what="weights file")
            self.log(f"Finetuning from {model}")
            for net in [self.net] + self.test_nets:
                net.copy_from(path)

    # --- building the nets (Caffe's InitTrainNet / InitTestNets) ---------------------------------
    def _net_file(self, path):
        return resolve_path(path, self.source_dir, what="net file")

    def _read_net(self, path):
        """The net file, upgraded as Caffe's ReadNetParamsFromTextFileOrDie does: before the
        solver sets its state (the V0 upgrade refuses a net with one, as it would drop it)."""
        path = self._net_file(path)
        return upgrade_net(read_prototxt(path, "NetParameter"), path)

    def _net_folder(self, path):
        return os.path.dirname(os.path.abspath(resolve_path(path, self.source_dir)))

    def _train_net(self, batch_size):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise MinicnnError("the solver must name exactly one train net with one of net, "
                               f"net_param, train_net, train_net_param (it gives "
                               f"{', '.join(given) or 'none'})")
        field = given[0]
        if field.endswith("_param"):
            net_param, folder = upgrade_net(getattr(p, field).copy()), self.source_dir
        else:
            net_param, folder = self._read_net(getattr(p, field)), self._net_folder(getattr(p,
                                                                                        field))
        state = caffe_pb2.NetState(phase="TRAIN")
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        if batch_size and not set_batch_size(net_param, batch_size):
            raise MinicnnError(
                f"a train batch size of {batch_size} was asked for (--batch-size), but the train "
                f"net has no data layer with a batch_size ({', '.join(BATCH_SIZE_FIELDS)}): "
                "set the batch in its Input or DummyData shape, or its Python layer's param_str")
        self.log(f"Creating training net from {field}"
                 + (f" {getattr(p, field)}" if not field.endswith("_param") else ""))
        return Net(net_param, dtype=self.dtype, source_dir=folder, device=self.device,
                   source_file=None if field.endswith("_param") else
                   self._net_file(getattr(p, field)))

    def _test_nets(self):
        p = self.param
        if p.HasField("net") and p.HasField("net_param"):
            raise MinicnnError("give the solver's net or net_param, not both")
        sources = [(f"test_net_param #{i}", upgrade_net(q.copy()), self.source_dir, None)
                   for i, q in enumerate(p.test_net_param)]
        sources += [(f"test_net file {f}", self._read_net(f), self._net_folder(f),
                     self._net_file(f)) for f in p.test_net]
        generic = p.HasField("net") or p.HasField("net_param")
        if (len(p.test_iter) < len(sources)) if generic else (len(p.test_iter) != len(sources)):
            raise MinicnnError(f"test_iter must be given once per test net: {len(sources)} test "
                               f"net(s), {len(p.test_iter)} test_iter value(s)")
        for _ in range(len(p.test_iter) - len(sources)):   # the net's TEST phase, once per iter
            if p.HasField("net_param"):
                sources.append(("net_param", upgrade_net(p.net_param.copy()), self.source_dir,
                                None))
            else:
                sources.append((f"net file {p.net}", self._read_net(p.net),
                                self._net_folder(p.net), self._net_file(p.net)))
        if p.test_state and len(p.test_state) != len(sources):
            raise MinicnnError(f"test_state must be unspecified or given once per test net "
                               f"({len(sources)} test nets, {len(p.test_state)} test_state)")
        if sources and p.test_interval <= 0:     # Caffe's InitTestNets: CHECK_GT
            raise MinicnnError(f"{solver_field_where(self.source)('test_iter')}the solver has "
                               f"{len(sources)} test net(s) (test_iter) but test_interval is "
                               f"{p.test_interval}: give test_interval > 0 to test every that "
                               "many iterations, or no test_iter to train without testing")
        nets = []
        for i, (label, net_param, folder, path) in enumerate(sources):
            state = caffe_pb2.NetState(phase="TEST")
            state.MergeFrom(net_param.state)
            if p.test_state:
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            self.log(f"Creating test net (#{i}) specified by {label}")
            nets.append(Net(net_param, dtype=self.dtype, source_dir=folder,
                            device=self.device, source_file=path))
        return nets

    # --- the loop -------------------------------------------------------------------------------
    def share_weights(self, net):
        """pycaffe's ``solver.share_weights(net)``: ``net`` uses the train net's parameter blobs
        for its same-named layers (as the solver's own test nets do)."""
        net.share_with(self.net)

    def add_callback(self, on_start, on_gradients_ready):
        """pycaffe's ``solver.add_callback``: ``on_start()`` is called at the start of each
        iteration (after any testing, before the forward pass) and ``on_gradients_ready()``
        once the gradients are in the parameters' diffs, before the update (which then uses
        the diffs as the callback leaves them). Both take no arguments."""
        self.callbacks.append((on_start, on_gradients_ready))

    def step(self, iters):
        """Run ``iters`` iterations (fewer if stopped by a request or divergence)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self.losses, self.smoothed_loss = [], 0.0
        timer, iter_last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            steps = self._layer_steps()
            self.net.clear_param_diffs(skip=steps)
            if p.test_interval and self.iter % p.test_interval == 0 and (
                    self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    self._clear_untaken(steps)
                    break
            for on_start, _ in self.callbacks:
                on_start()
            display = p.display and self.iter % p.display == 0
            self.net.debug_info = bool(display and p.debug_info)    # as Caffe's Step
            if steps:
                loss = self._forward_backward_taking(steps)
            else:
                loss = 0.0
                for _ in range(max(1, p.iter_size)):
                    loss += self.net.forward_backward()
                loss /= max(1, p.iter_size)
            if self.gradient_reducer is not None:    # averages diffs and loss over the ranks
                loss = self.gradient_reducer(self, loss)
            if not math.isfinite(loss):
                self._diverge(loss)
                break
            self._update_smoothed_loss(loss, start_iter)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iter_last) / lapse if lapse else 0.0
                self.log(f"Iteration {self.iter} ({per_s:.4g} iter/s, {lapse:.4g}s/{p.display} "
                         f"iters), loss = {self.smoothed_loss:.6g}")
                timer, iter_last = time.perf_counter(), self.iter
                self._log_outputs(self.net, "Train", {n: self.net.blobs[n].data
                                                      for n in self.net.outputs})
            for _, on_gradients_ready in self.callbacks:
                on_gradients_ready()
            rate = self.apply_update(display, taken={i for i, st in steps.items() if st.taken})
            self.iter += 1
            for callback in self.on_iteration:
                callback(self, loss, rate)
            self.log_signal_messages()
            action, self.requested_action = self.requested_action, None
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self._snapshot_if_finite()    # if not, the next forward's loss stops the run
            if action == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume_file=None):
        """Train to max_iter (Caffe's Solver::Solve): optionally resume from a .solverstate,
        snapshot at the end (unless snapshot_after_train: false), then a last display/test."""
        p = self.param
        self.log(f"Solving {self.net.name}")
        self.log(f"Learning Rate Policy: {p.lr_policy}")
        self.requested_early_exit = False
        if p.snapshot_after_train and not p.snapshot:  # else checked by __init__
            check_snapshot_prefix(p.snapshot_prefix)
        if resume_file:
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0) and \
                not self.diverged:
            self._snapshot_if_finite()
        if self.diverged:
            raise TrainingDiverged(self.diverged)
        if self.requested_early_exit:
            self.log("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_from_to()
            self._update_smoothed_loss(loss, start_iter)
            self.log(f"Iteration {self.iter}, loss = {self.smoothed_loss:.6g}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log("Optimization Done.")

    def _update_smoothed_loss(self, loss, start_iter):
        """The mean of the last average_loss losses (Caffe's UpdateSmoothedLoss)."""
        window = max(1, self.param.average_loss)
        if len(self.losses) < window:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            index = (self.iter - start_iter) % window
            self.smoothed_loss += (loss - self.losses[index]) / window
            self.losses[index] = loss

    def _log_outputs(self, net, kind, outputs):
        index = 0
        for name, values in outputs.items():
            weight = net.blob_loss_weights.get(name, 0.0)
            for value in np.asarray(cuda.to_host(values), dtype=np.float64).reshape(-1):
                extra = f" (* {weight:g} = {weight * value:.6g} loss)" if weight else ""
                self.log(f"    {kind} net output #{index}: {name} = {value:.6g}{extra}")
                index += 1

    def _diverge(self, loss=None, weights=None):
        """Stop: the loss of this iteration's forward is not finite, or (``weights``, the
        parameter named) the last update left a weight that is not."""
        if weights is not None:
            what = (f"the update to iteration {self.iter} left {weights} not finite, so it is "
                    "not written as a snapshot")
        else:
            what = (f"the loss is {loss}; "
                    f"{self.net.find_non_finite() or 'no single layer could be blamed'}")
        if not self.last_snapshot:
            kept = "no snapshot was written"
        elif self.last_snapshot_iter == self.iter:     # its weights gave this loss
            kept = (f"the last snapshot, {self.last_snapshot}, holds the weights whose loss "
                    "this is")
        else:
            kept = f"the last snapshot, {self.last_snapshot}, is kept"
        self.diverged = (f"iteration {self.iter}: {what}. Training stopped and {kept}. Try a "
                         f"lower base_lr (now {self.param.base_lr:g}) or clip_gradients, and "
                         "check the data.")
        self.log("Divergence: " + self.diverged)

    def _snapshot_if_finite(self):
        """snapshot() unless an update has left a weight that is not finite, which the next
        forward's loss has not shown yet (after the last update it never would): then it is a
        divergence. (Training goes on to that forward, which stops it on every rank of a
        data-parallel run alike; only rank 0 writes snapshots.)"""
        for name, blobs in self.net.params.items():
            for k, blob in enumerate(blobs):
                if not bool(np.all(np.isfinite(blob.data))):
                    self._diverge(weights=f"param {k} of layer '{name}'")
                    return
        self._snapshot_in_training()

    # --- testing --------------------------------------------------------------------------------
    def test_all(self):
        results = []
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            results.append(self.test(i))
        return results

    def test(self, index=0):
        """Run test net ``index`` for test_iter batches; returns {output: mean over batches}
        (with eval_type "detection", {output: mAP}: test_detection)."""
        if self.param.eval_type == "detection":
            return self.test_detection(index)
        net, sums = self.test_nets[index], {}

        def add_outputs():
            for name in net.outputs:
                values = np.asarray(cuda.to_host(net.blobs[name].data),
                                    dtype=np.float64).reshape(-1)
                sums[name] = sums[name] + values if name in sums else values.copy()
        n_iter = self._run_test_batches(index, add_outputs)
        if n_iter is None:
            return None
        means = {name: values / n_iter for name, values in sums.items()}
        self._log_outputs(net, "Test", means)
        scalars = {name: float(v[0]) if v.size == 1 else v for name, v in means.items()}
        for callback in self.on_test:
            callback(self, index, scalars)
        return scalars

    def _run_test_batches(self, index, gather):
        """Forward test net ``index`` test_iter times with the train net's weights, calling
        ``gather()`` after each batch and answering snapshot/stop requests between batches;
        logs the mean loss with test_compute_loss. Returns test_iter, or None if stopped."""
        net = self.test_nets[index]
        net.share_with(self.net)
        self.log(f"Iteration {self.iter}, Testing net (#{index})")
        loss, n_iter = 0.0, self.param.test_iter[index]
        for _ in range(n_iter):
            self.log_signal_messages()
            action, self.requested_action = self.requested_action, None
            if action == "snapshot":
                self._snapshot_in_training()
            elif action == "stop":
                self.requested_early_exit = True
                self.log("Test interrupted.")
                return None
            loss += net.forward_from_to()
            gather()
        if self.param.test_compute_loss:
            self.log(f"Test loss: {loss / n_iter:.6g}")
        return n_iter

    def test_detection(self, index=0):
        """The SSD fork's TestDetection (eval_type: "detection"): run test net ``index`` for
        test_iter batches, gather each output's DetectionEvaluate rows, and log its mAP
        (ap_version; each class's AP with show_per_class_result). Returns {output: mAP}."""
        net, stats = self.test_nets[index], {}
        if self._run_test_batches(index, lambda: add_detection_rows(net, stats)) is None:
            return None
        scalars = detection_results(net, stats, self.param.ap_version,
                                    self.param.show_per_class_result, self.log)
        for callback in self.on_test:
            callback(self, index, scalars)
        return scalars

    # --- the update ------------------------------------------------------------------------------
    def learning_rate(self):
        rate, self.current_step = self._rate(self.log)
        return rate

    def _rate(self, log):
        """learning_rate() at this iteration; its errors name the solver file's line."""
        try:
            return learning_rate(self.param, self.iter, self.current_step, log, self.dtype)
        except MinicnnError as e:
            raise MinicnnError(f"{solver_field_where(self.source)('lr_policy')}{e}") from None

    def apply_update(self, display=False, taken=()):
        """One update of every learnable parameter; returns the learning rate used. ``taken``:
        the parameters whose layers took their step in the backward (_layer_steps)."""
        rate = self.learning_rate()
        if display:
            self.log(f"Iteration {self.iter}, lr = {rate:.6g}")
        self.clip_gradients()
        applied = set(taken)
        applied |= self.fused_device_update(rate, applied)
        for param_id in range(len(self.net.learnable_params)):
            if param_id in applied:
                continue
            if self.fused_update(param_id, rate):
                applied.add(param_id)
                continue
            self.normalize(param_id)
            self.regularize(param_id)
            self.compute_update_value(param_id, rate)
        self.net.update(skip=applied)
        return rate

    def fused_update(self, param_id, rate):
        """normalize + regularize + compute_update_value + the net's update of this parameter
        in one pass, where a rule has a fast path for it (bit for bit the same result); False
        to take the separate steps instead."""
        return False

    def fused_device_update(self, rate, skip):
        """fused_update for every parameter on the GPU at once (one launch, not a few CuPy
        operations per blob), where a rule has that path; returns the parameter ids it updated
        (none here). ``skip``: ids already updated."""
        return set()

    def param_step(self, param_id, rate):
        """The update of this parameter as a ParamStep a layer can take in its backward, or
        None (the solver applies it after the backward, as always)."""
        return None

    # --- steps taken by the layers ----------------------------------------------------------------
    # A layer that computes a parameter's gradient may also take the solver's step with it, in
    # the same pass over memory (InnerProduct's weights: CaffeNet's fc6 and fc7 are 89% of its
    # parameters, and the step reads and writes each of them several times). The result is bit
    # for bit the same; only the order of the work changes. It applies to one plain iteration
    # a step (iter_size 1, no gradient clipping, no averaging over ranks, no add_callback: all
    # of these need every gradient before any step) and to parameters no other layer shares.

    def _layer_steps(self):
        """{param_id: ParamStep} for this iteration's steps the layers may take."""
        p = self.param
        if p.iter_size > 1 or p.clip_gradients >= 0 or self.gradient_reducer is not None \
                or self.callbacks or p.debug_info or os.environ.get("MINICNN_FUSE", "1") == "0":
            return {}
        rate = None
        steps = {}
        for layer, k, param_id in self.net.steppable_params():
            if rate is None:    # the rate apply_update will use, without its log lines
                rate = self._rate(lambda *_: None)[0]
            step = self.param_step(param_id, rate)
            if step is not None:
                steps[param_id] = step
        return steps

    def _forward_backward_taking(self, steps):
        """forward + backward with the steps handed to their layers (iter_size is 1)."""
        loss = self.net.forward_from_to()
        if not math.isfinite(loss):       # about to stop: the weights must stay as they were
            self._clear_untaken(steps)
            self.net.backward()
            return loss
        handed = {}
        for layer, k, param_id in self.net.steppable_params():
            if param_id in steps:
                handed.setdefault(layer, {})[k] = steps[param_id]
        for layer, layer_steps in handed.items():
            layer.param_steps = layer_steps
        try:
            self.net.backward()
        finally:
            for layer in handed:
                layer.param_steps = {}
        self._clear_untaken(steps)        # a layer whose backward did not run: gradient 0
        return loss

    def _clear_untaken(self, steps):
        for param_id, step in steps.items():
            if not step.taken and not step.cleared:
                self.net.learnable_params[param_id].diff[...] = 0
                step.cleared = True

    def clip_gradients(self):
        threshold = self.param.clip_gradients
        if threshold < 0:
            return
        norm, factor = clip_scale(threshold, (float(np.dot(b.diff.reshape(-1), b.diff.reshape(-1)))
                                              for b in self.net.learnable_params), self.dtype)
        if factor is not None:
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {norm:.6g} > "
                     f"{threshold:g}) by scale factor {factor:.6g}")
            for blob in self.net.learnable_params:
                blob.diff[...] *= blob.dtype.type(factor)

    def normalize(self, param_id):
        if self.param.iter_size > 1:
            diff = self.net.learnable_params[param_id].diff
            diff *= diff.dtype.type(1.0 / self.param.iter_size)

    def regularize(self, param_id):
        blob = self.net.learnable_params[param_id]
        decay = self.param.weight_decay * self.net.params_weight_decay[param_id]
        if not decay:
            return
        kind = self.param.regularization_type
        if kind == "L2":
            blob.diff[...] += blob.dtype.type(decay) * blob.data
        elif kind == "L1":
            blob.diff[...] += blob.dtype.type(decay) * np.sign(blob.data)
        else:
            raise MinicnnError(f"unknown regularization_type '{kind}' (L1 or L2)")

    def compute_update_value(self, param_id, rate):
        raise NotImplementedError(f"{type(self).__name__} must define compute_update_value")

    # --- snapshots ------------------------------------------------------------------------------
    def snapshot_filename(self, extension):
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write <prefix>_iter_<N>.caffemodel, then .solverstate (with snapshot_format HDF5:
        .caffemodel.h5 and .solverstate.h5, Caffe's HDF5 layouts); each appears whole or not
        at all. Returns the two paths."""
        hdf5 = self.param.snapshot_format == "HDF5"
        model = self.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
        state_path = self.snapshot_filename(".solverstate.h5" if hdf5 else ".solverstate")
        kind = "HDF5" if hdf5 else "binary proto"
        target = model
        try:
            folder = os.path.dirname(model)
            if folder:
                os.makedirs(folder, exist_ok=True)
            if not self._stale_snapshots_checked:
                self._stale_snapshots_checked = True
                for stale in remove_stale_temporaries(self.param.snapshot_prefix + "_iter_"):
                    self.log(f"Removed {stale}: an unfinished snapshot file of a run that "
                             "was killed while writing it")
            self.log(f"Snapshotting to {kind} file {model}")
            if hdf5:
                self.net.save_hdf5(model, write_diff=self.param.snapshot_diff)
            else:
                self.net.save(model, write_diff=self.param.snapshot_diff)
            target = state_path
            self.log(f"Snapshotting solver state to {kind} file {state_path}")
            (write_state_hdf5 if hdf5 else write_binary)(self.solver_state(model), state_path)
        except OSError as e:
            raise SnapshotError(f"{target}: cannot write the snapshot: {os_reason(e)}",
                                e.errno, target) from e
        self.last_snapshot, self.last_snapshot_iter = model, self.iter
        return model, state_path

    def _snapshot_in_training(self):
        """snapshot() from the training loop: a snapshot that cannot be written stops training,
        as in Caffe (whose write is a CHECK), with the error saying where it stopped and which
        snapshot holds the last weights. (Going on would train on without any snapshot.)"""
        try:
            self.snapshot()
        except SnapshotError as e:
            kept = (f"the last snapshot, {self.last_snapshot}, is kept" if self.last_snapshot
                    else "no snapshot was written")
            raise SnapshotError(f"{e}. Training stopped at iteration {self.iter}; {kept}",
                                e.errno, e.filename) from e.__cause__

    def solver_state(self, model_path):
        state = caffe_pb2.SolverState(iter=self.iter, learned_net=model_path,
                                      current_step=self.current_step)
        for h in self.history:
            state.history.append(array_to_blob_proto(h))
        extra = state.minicnn
        extra.solver_type = self.type
        extra.rng_state = json.dumps(get_rng().bit_generator.state)
        for label, net in [("train", self.net)] + [(f"test{i}", n)
                                                   for i, n in enumerate(self.test_nets)]:
            for layer, s in net.data_state().items():
                extra.data_state.add(net=label, layer=layer, seed=s["seed"],
                                     batches_served=s["batches_served"])
            for layer, values in net.layer_counters().items():
                for name, value in values.items():
                    extra.layer_counter.add(net=label, layer=layer, name=name, value=value)
        return state

    def restore(self, path):
        """Continue from a .solverstate or .solverstate.h5 (minicnn's or Caffe's): iteration,
        lr step, history, the weights it names and, when minicnn wrote it, the data positions
        and RNG state. The whole state is read and checked first: after an error the solver is
        as it was."""
        if os.fspath(path).endswith(".h5"):           # Caffe also tells the two by the name
            state = read_state_hdf5(path)
        else:
            try:
                state = read_binary(path, "SolverState")
            except WireFormatError as e:
                hint = ("; it looks like weights, not a solver state: resume from the "
                        ".solverstate written beside it, or fine-tune from these weights "
                        "(--weights)" if "caffemodel" in os.path.basename(os.fspath(path))
                        else "")
                raise MinicnnError(f"{e}{hint}") from None
        if len(state.history) != len(self.history):
            raise MinicnnError(f"{path}: {len(state.history)} history blobs, but the {self.type} "
                               f"solver on this net keeps {len(self.history)} (is it a state of "
                               "another net or solver type?)")
        if state.iter < 0 or state.current_step < 0:
            raise MinicnnError(f"{path}: iter {state.iter} and current_step "
                               f"{state.current_step}: neither can be negative")
        history = []
        for k, (h, proto) in enumerate(zip(self.history, state.history)):
            try:
                values = blob_proto_to_array(proto)
            except MinicnnError as e:
                raise MinicnnError(f"{path}: history blob {k}: {e}") from None
            if values.size != h.size:
                raise MinicnnError(f"{path}: history blob {k} has {values.size} values, the "
                                   f"parameter has {h.size}")
            history.append(values.reshape(h.shape))
        model = None
        if state.HasField("learned_net"):
            here = os.path.dirname(os.path.abspath(path))
            beside = os.path.join(here, os.path.basename(state.learned_net))
            try:
                model = resolve_path(state.learned_net, here,
                                     what=f"weights file (learned_net) of {path}")
            except DataError:
                if not (state.learned_net and os.path.isfile(beside)):
                    raise
                model = beside          # the snapshots' folder moved: the pair stays together
            if not os.path.isabs(state.learned_net) and os.path.isfile(beside) \
                    and not os.path.samefile(model, beside):
                # a relative learned_net found from this folder (Caffe's rule), another run's
                # snapshot of the same name: the one written with this state sits beside it
                warnings.warn(f"{path}: its learned_net '{state.learned_net}' names {model} "
                              f"from the current folder, but {beside} sits beside the state: "
                              f"resuming from {beside}, the pair snapshot() wrote together "
                              "(Caffe would read the other)")
                model = beside
        extra = state.minicnn
        rng_state = None
        if extra.HasField("rng_state"):
            try:            # not JSON, or not a state of this generator: tried on a spare one
                rng_state = json.loads(extra.rng_state)
                type(get_rng().bit_generator)().state = rng_state
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
                raise MinicnnError(f"{path}: the saved random generator state (minicnn."
                                   f"rng_state) is corrupt: {type(e).__name__}: {e}") from None
        nets = {"train": self.net, **{f"test{i}": n for i, n in enumerate(self.test_nets)}}
        by_net = {}
        for s in extra.data_state:
            if s.net not in nets:
                raise NetError(f"{path}: the saved data position names net '{s.net}', which "
                               "this solver does not have")
            layer = nets[s.net].layer_dict.get(s.layer)
            if layer is None or not hasattr(layer, "restore_data_state"):
                raise NetError(f"{path}: the saved data position names layer '{s.layer}', "
                               f"which is not a data layer of the {s.net} net")
            by_net.setdefault(s.net, {})[s.layer] = {"seed": s.seed,
                                                     "batches_served": s.batches_served}
        counters = {}
        for c in extra.layer_counter:
            net = nets.get(c.net)
            layer = net.layer_dict.get(c.layer) if net is not None else None
            if layer is None or c.name not in layer.counters:
                raise NetError(f"{path}: the saved counter '{c.name}' names layer '{c.layer}' of "
                               f"the {c.net} net, which has no such counter")
            counters.setdefault(c.net, {}).setdefault(c.layer, {})[c.name] = c.value
        if model is not None:                     # checks every blob before it copies one
            self.net.copy_from(model, complete=True)
        for blob in self.net.learnable_params:    # a diff deferred to a history (InnerProduct's
            blob.diff                             # SGD step) keeps the step it holds now
        for h, values in zip(self.history, history):
            cuda.assign(h, values)
        self.iter, self.current_step = state.iter, state.current_step
        if rng_state is not None:
            get_rng().bit_generator.state = rng_state
        for label, states in by_net.items():
            nets[label].restore_data_state(states)
        for label, values in counters.items():
            nets[label].restore_layer_counters(values)
        self.log(f"Restored from {path} at iteration {self.iter}")
        if extra.solver_type and extra.solver_type != self.type:     # Caffe does not check
            self.log(f"note: {path} was written by the {extra.solver_type} solver; its history is "
                     f"taken as {self.type}'s, which keeps other quantities in it")


def write_state_hdf5(state, path):
    """A SolverState as Caffe's .solverstate.h5 (SGDSolver::SnapshotSolverStateToHDF5), in the
    layout of caffe/util/hdf5.cpp: ``iter`` and ``current_step`` one-element int32 datasets
    (hdf5_save_int), ``learned_net`` a NUL-terminated string (hdf5_save_string: Caffe reads it
    into a buffer of the type's size and takes the C string there, so the NUL must be inside),
    a group ``history`` of datasets "0", "1", ... in the parameters' shapes; minicnn's own part
    (random generator and data positions) as the wire bytes of its message in ``minicnn``,
    which Caffe skips."""
    from minicnn.data.errors import need
    from minicnn.proto import serialize
    from minicnn.proto.wire import atomic_write
    h5py = need("h5py")
    with atomic_write(path, "w+b") as f, h5py.File(f, "w") as h5:
        h5.create_dataset("iter", data=np.array([state.iter], np.int32))
        _write_c_string(h5py, h5, "learned_net", state.learned_net.encode("utf-8"))
        h5.create_dataset("current_step", data=np.array([state.current_step], np.int32))
        history = h5.create_group("history")
        for k, proto in enumerate(state.history):
            history.create_dataset(str(k), data=blob_proto_to_array(proto))
        if state.HasField("minicnn"):
            h5.create_dataset("minicnn", data=np.void(serialize(state.minicnn)))


def _write_c_string(h5py, h5, name, text):
    """A scalar string dataset as HDF5's H5LTmake_dataset_string makes it: the C string's bytes
    and its NUL, padded NULLTERM (h5py's own fixed strings are NULLPAD, without the NUL)."""
    string_type = h5py.h5t.C_S1.copy()
    string_type.set_size(len(text) + 1)
    string_type.set_strpad(h5py.h5t.STR_NULLTERM)
    dataset = h5py.h5d.create(h5.id, name.encode(), string_type,
                              h5py.h5s.create(h5py.h5s.SCALAR))
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(text + b"\0", f"S{len(text) + 1}"),
                  mtype=string_type)


def read_state_hdf5(path):
    """A .solverstate.h5 (Caffe's or minicnn's) as a SolverState message."""
    from minicnn.data.errors import need
    from minicnn.proto import parse_binary
    h5py = need("h5py")
    where = os.fspath(path)
    try:
        h5 = h5py.File(where, "r")
    except OSError as e:
        raise MinicnnError(f"{where}: not a readable HDF5 solver state ({e})") from None
    with h5:
        if "iter" not in h5 and isinstance(h5.get("data"), h5py.Group):
            raise MinicnnError(f"{where}: it looks like HDF5 weights (a group 'data' of "
                               "layers), not a solver state: resume from the .solverstate.h5 "
                               "written beside it, or fine-tune from these weights (--weights)")

        def scalar(name, kind):
            item = h5.get(name)
            if not isinstance(item, h5py.Dataset) or item.shape not in ((), (1,)) or (
                    item.dtype.kind not in kind):
                found = "missing" if item is None else f"{getattr(item, 'shape', '')} " \
                    f"{getattr(item, 'dtype', type(item).__name__)}"
                raise MinicnnError(f"{where}: '{name}' should be a single "
                                   f"{'integer' if kind == 'iu' else 'string'} ({found})")
            return item[()] if item.shape == () else item[0]

        state = caffe_pb2.SolverState(iter=int(scalar("iter", "iu")),
                                      current_step=int(scalar("current_step", "iu")))
        if "learned_net" in h5:
            name = scalar("learned_net", "SOU")
            state.learned_net = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        history = h5.get("history")
        if not isinstance(history, h5py.Group):
            raise MinicnnError(f"{where}: no 'history' group")
        for k in range(len(history)):
            item = history.get(str(k))
            if not isinstance(item, h5py.Dataset) or item.dtype.kind != "f":
                raise MinicnnError(f"{where}: history holds {len(history)} entries, but "
                                   f"'history/{k}' is not a float dataset")
            state.history.append(array_to_blob_proto(item[()]))
        if "minicnn" in h5:
            state.minicnn = parse_binary(h5["minicnn"][()].tobytes(), "MinicnnSolverState",
                                         path=f"{where}:minicnn")
    return state


def detection_eval_note(net, what, flag):
    """A note for a net with DetectionEvaluate outputs tested as "classification" (the fork's
    default eval_type): each of their rows' values is averaged and printed (thousands of
    lines, as in the fork), not the mAP; None for other nets."""
    layers = [name for name, layer in net.layer_dict.items() if layer.type == "DetectionEvaluate"]
    if not layers:
        return None
    return (f"note: {what} has DetectionEvaluate ('{layers[0]}') but is scored as "
            f"\"classification\" (the default): each value of its rows is averaged, not the "
            f"mAP; {flag} gives the mAP")


def test_coverage_notes(net, batches, what, field="test_iter"):
    """Notes for the data layers of a test net whose ``batches`` per test (the solver's
    ``test_iter``, or ``field`` as named there) do not read their source once: fewer leave
    samples out of each test (the next test goes on from there), more score some samples twice
    (the source wraps around). Caffe is silent in both cases; the outputs are then not the
    scores of the test set."""
    notes = []
    for name, layer in net.layer_dict.items():
        epoch = layer.batches_per_epoch() if hasattr(layer, "batches_per_epoch") else None
        if not epoch or batches == epoch:
            continue
        source = f" ({layer.source_path})" if getattr(layer, "source_path", None) else ""
        reads = (f"note: {what} runs {field} {batches} batches per test, but its layer "
                 f"'{name}' reads its {layer.num_samples} samples{source} in {epoch} batches "
                 f"of {layer.batch_size}: ")
        setting = f"{field}: {epoch}" if field == "test_iter" else f"{field} {epoch}"
        if batches < epoch:
            notes.append(reads + "each test leaves some of them out (the next test goes on "
                         f"from there, as in Caffe); {setting} scores them all")
        else:
            notes.append(reads + "each test scores some of them more than once (the source "
                         f"wraps around, as in Caffe); {setting} scores each once")
    return notes


def check_eval_type(param):
    """The SSD fork's eval_type and ap_version: a value it does not know is an error naming the
    field (the fork stops at the first test with "Unknown evaluation type")."""
    if param.eval_type not in EVAL_TYPES:
        raise MinicnnError(f"eval_type '{param.eval_type}' is unknown; the SSD fork's solver "
                           "takes 'classification' (the default) or 'detection'")
    if param.eval_type == "detection" and param.ap_version not in AP_VERSIONS:
        raise MinicnnError(f"ap_version '{param.ap_version}' is unknown; the SSD fork's are "
                           f"{', '.join(repr(v) for v in AP_VERSIONS)} (the default)")


def add_detection_rows(net, stats):
    """Add the DetectionEvaluate rows of each output of ``net`` (after a forward) to
    ``stats`` ({output index: DetectionStats}), as TestDetection gathers them."""
    for j, name in enumerate(net.outputs):
        rows = np.asarray(cuda.to_host(net.blobs[name].data), dtype=np.float64)
        shape = tuple(rows.shape) + (1,) * (4 - rows.ndim)
        if rows.ndim > 4 or shape[3] != 5:
            raise MinicnnError(f"eval_type \"detection\" reads every test net output as "
                               f"DetectionEvaluate's N x 5 rows, but output '{name}' has shape "
                               f"{tuple(rows.shape)}")
        stats.setdefault(j, DetectionStats()).add(rows)


def detection_results(net, stats, ap_version, show_per_class, log):
    """Log each output's mAP as the SSD fork's TestDetection does ("class<label>: <AP>" lines
    with show_per_class, then "    Test net output #i: <name> = <mAP>"); returns {name: mAP}.
    As in the fork, outputs are numbered among those with detection rows, and an output
    without any gets no line (minicnn says so in a note)."""
    counted = [j for j in sorted(stats) if stats[j].has_detections]
    results = {}
    for i in range(len(counted)):
        if i not in counted:
            raise MinicnnError(f"Missing output_blob true_pos: {i} (the SSD fork's error: test "
                               f"net output #{i} has no detection rows while a later one has)")
        if not stats[i].num_pos:
            raise MinicnnError(f"Missing output_blob num_pos: {i} (test net output "
                               f"'{net.outputs[i]}' has no [-1, label, positives] rows)")
        mean, aps = stats[i].average_precisions(ap_version)
        for label, ap in aps:
            if ap is None:
                log(f"Missing true_pos for label: {label} (no detections of this class: "
                    "its AP counts as 0 in the mean)")
            elif show_per_class:
                log(f"class{label}: {float(ap):.6g}")
        log(f"    Test net output #{i}: {net.outputs[i]} = {float(mean):.6g}")
        results[net.outputs[i]] = float(mean)
    if not counted:
        log("note: no detections in any test batch: the SSD fork logs no mAP then")
    return results


BATCH_SIZE_FIELDS = ("data_param", "image_data_param", "hdf5_data_param", "memory_data_param",
                     "window_data_param", "detection_data_param", "segmentation_data_param")


def set_batch_size(net_param, batch_size):
    """Set the batch size of every data layer that has one (for `minicnn train --batch-size`);
    returns how many of them net_param.state keeps. A V1 net is upgraded first (in place)."""
    upgrade_net(net_param)
    kept = 0
    for layer in net_param.layer:
        for field in BATCH_SIZE_FIELDS:
            if layer.HasField(field):
                getattr(layer, field).batch_size = batch_size
                kept += layer_included(layer, net_param.state)
    return kept
