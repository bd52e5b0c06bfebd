"""Data-parallel training across processes and machines: MPI, and NCCL when the blobs are on GPUs.

    mpirun -np 4 minicnn train solver.prototxt              # 4 ranks (add --hostfile for machines)
    srun --mpi=pmix -n 64 minicnn train solver.prototxt     # Slurm
    minicnn train solver.prototxt --gpu 0,1                 # one rank per GPU, through mpirun

    # from Python (what `minicnn train` does under mpirun):
    comm = MPICommunicator()
    solver = get_solver(rank_param(param, comm.rank))
    DataParallel(solver, comm).solve()

A run of K ranks follows Caffe's multi-GPU training (``caffe train -gpu 0,1,...``):

- The batch size in the net is per rank: K ranks train with batch K x b.
- Sharding: each data layer of the train net serves block r (contiguous, b samples) of the K x b
  samples that one process with batch K x b would read as that batch (``set_shard`` in
  minicnn.layers.data), so the K-rank run sees the single-process data order; Data and
  ImageData also draw crop and mirror as that process would.
- At the start, and after a resume, rank 0's weights, solver history, iteration and data
  positions are broadcast: only rank 0 reads the .solverstate and the --weights.
- Each step: forward/backward (iter_size times) on the rank's block, then ONE allreduce of a
  flat buffer holding every parameter diff, the loss and the stop/snapshot requests, and the sum
  divided by K. Each rank then clips, normalizes, regularizes and updates with that same averaged
  gradient, so the weights stay identical without a second broadcast (Caffe's NCCL solver
  works so too). The result equals one process with batch K x b to float32 rounding.
- Rank 0 alone logs, tests and writes snapshots.
- BatchNorm normalizes with the statistics of the rank's own b samples (Caffe's multi-GPU
  behaviour); its moving averages are each rank's own, and snapshots hold rank 0's.
- random_seed + rank seeds each rank (Caffe's Solver::Init), so Dropout masks differ by rank.
- Failure: an error on a rank prints ``error on rank r of K`` and aborts every rank (MPI_Abort);
  a rank killed outright is noticed by mpirun / srun, which end the job; a rank that waits on
  the others longer than MINICNN_DIST_TIMEOUT seconds (default 900; 0: no limit) aborts the job.
  Waits during rank 0's tests, snapshots and the start are not timed. Snapshots are written
  atomically by rank 0, so the last one stays usable.
- Requests: SIGINT/SIGHUP to a rank (and SIGUSR1: snapshot, SIGUSR2: stop, which mpirun
  forwards to every rank) are agreed in the next allreduce, so all ranks act on the same step.

The transport is a ``Communicator``: ``MPICommunicator`` (mpi4py, NumPy buffers) and
``NCCLCommunicator`` (cupy.cuda.nccl, CuPy buffers; the NCCL unique id is broadcast over MPI).
Importing this module imports neither mpi4py nor CuPy: the single-process path never loads them.
"""

import os
import shutil
import signal
import sys
import threading
import time
import traceback
import zlib

import numpy as np

from minicnn.errors import MinicnnError

DEFAULT_TIMEOUT = 900.0          # seconds a rank may wait on the others in a step allreduce

# Variables a launcher sets in every rank: the world size (no MPI import needed to read them).
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                   "SLURM_STEP_NUM_TASKS")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")


# --- where this process stands ------------------------------------------------------------------

def _env_int(env, names):
    for name in names:
        if name.startswith("SLURM_") and "SLURM_STEP_ID" not in env and \
                "SLURM_STEPID" not in env:
            continue                                   # an sbatch script itself is no rank
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise MinicnnError(f"the launcher's {name}={value!r} is not a number") from None
    return None


def launched_size(environ=None):
    """How many ranks mpirun / srun started (1 outside a launcher), read from the environment."""
    size = _env_int(os.environ if environ is None else environ, _SIZE_VARIABLES)
    return max(1, size or 1)


def rank_and_size(environ=None):
    """(rank, number of ranks) of this process, from the launcher's environment: for Python data
    layers that shard their own source (take block ``rank`` of ``size`` of each batch)."""
    env = os.environ if environ is None else environ
    size = launched_size(env)
    rank = _env_int(env, _RANK_VARIABLES) if size > 1 else 0
    return rank or 0, size


def requested(environ=None):
    """True when `minicnn train` should run data-parallel: several ranks were launched, or
    MINICNN_DISTRIBUTED=1 asks for the MPI path even with one (to measure it)."""
    env = os.environ if environ is None else environ
    return launched_size(env) > 1 or env.get("MINICNN_DISTRIBUTED") == "1"


def parse_gpus(spec, device_count=None):
    """``--gpu``: "all" -> every GPU, "0,1" -> [0, 1], None or "" -> []. ``device_count`` is
    asked of CUDA (through CuPy) only for "all"."""
    if spec is None or str(spec).strip() == "":
        return []
    text = str(spec).strip()
    if text.lower() == "all":
        if device_count is None:
            try:
                import cupy
                device_count = cupy.cuda.runtime.getDeviceCount()
            except Exception as e:             # noqa: BLE001 (no CuPy, no driver, no device)
                raise MinicnnError(f"--gpu all: cannot count the GPUs ({e})") from None
        if device_count < 1:
            raise MinicnnError("--gpu all: CUDA sees no GPU")
        return list(range(device_count))
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise MinicnnError(f"--gpu {text!r}: give GPU numbers separated by commas (0,1) or "
                           "'all'") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise MinicnnError(f"--gpu {text!r}: GPU numbers must be distinct and >= 0")
    return gpus


def mpirun_command(ranks, argv, executable=None, as_root=None):
    """The command that starts ``minicnn <argv>`` as ``ranks`` processes on this machine."""
    as_root = (os.geteuid() == 0) if as_root is None else as_root
    command = ["mpirun", "-np", str(ranks)]
    if as_root:
        command.append("--allow-run-as-root")       # Open MPI refuses root without it
    return command + [executable or sys.executable, "-m", "minicnn", *argv]


# --- communicators ------------------------------------------------------------------------------

class Communicator:
    """The transport data-parallel training needs. ``allreduce(buffer, op)`` combines a flat
    array in place over the ranks ("sum" or "max"), every rank getting the same bits;
    ``broadcast(buffer, root)`` copies root's array to all; ``abort(code)`` ends every rank."""
    name = "none"
    rank, size, local_rank, local_size = 0, 1, 0, 1

    def allreduce(self, buffer, op="sum"):
        raise NotImplementedError

    def broadcast(self, buffer, root=0):
        raise NotImplementedError

    def barrier(self):
        self.allreduce(np.zeros(1, np.int64))

    def abort(self, code=1):
        os._exit(code)


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise MinicnnError(f"data-parallel training needs mpi4py ({e}): pip install "
                           "'minicnn[mpi]' (and Open MPI: apt-get install openmpi-bin "
                           "libopenmpi-dev)") from None
    return MPI


class MPICommunicator(Communicator):
    """MPI through mpi4py's buffer interface (NumPy arrays; no pickling). A buffer larger than
    ``chunk`` values goes in several calls, as MPI counts are C ints."""
    name = "MPI"
    chunk = 1 << 28

    def __init__(self, comm=None):
        MPI = _import_mpi()
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.host = MPI.Get_processor_name()

    def _pieces(self, buffer):
        flat = buffer.reshape(-1)
        return [flat[i:i + self.chunk] for i in range(0, flat.size, self.chunk)]

    def allreduce(self, buffer, op="sum"):
        mpi_op = {"sum": self._mpi.SUM, "max": self._mpi.MAX}[op]
        for piece in self._pieces(buffer):
            self.comm.Allreduce(self._mpi.IN_PLACE, piece, op=mpi_op)

    def broadcast(self, buffer, root=0):
        for piece in self._pieces(buffer):
            self.comm.Bcast(piece, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


NCCL_UNIQUE_ID_BYTES = 128


def encode_unique_id(uid):
    """An NCCL unique id (CuPy gives a tuple of 128 signed chars, or 128 bytes in newer
    versions) as 129 uint8: its kind, then its bytes, for an MPI broadcast."""
    if isinstance(uid, (bytes, bytearray)):
        kind, raw = 1, np.frombuffer(bytes(uid), np.uint8)
    else:
        kind, raw = 0, np.asarray(uid, np.int64).astype(np.int8).view(np.uint8)
    if raw.size != NCCL_UNIQUE_ID_BYTES:
        raise MinicnnError(f"an NCCL unique id has {NCCL_UNIQUE_ID_BYTES} bytes, got {raw.size}")
    return np.concatenate([[kind], raw]).astype(np.uint8)


def decode_unique_id(array):
    array = np.asarray(array, np.uint8)
    raw = array[1:]
    return raw.tobytes() if array[0] == 1 else tuple(int(v) for v in raw.view(np.int8))


class NCCLCommunicator(Communicator):
    """NCCL (cupy.cuda.nccl) for CuPy arrays, one rank per GPU. ``control`` (an
    MPICommunicator) carries the unique id from rank 0, the host-side (NumPy) messages and the
    abort. ``nccl`` and ``cupy`` may be given (tests pass stand-ins)."""
    name = "NCCL"

    def __init__(self, control, device=None, nccl=None, cupy=None):
        if cupy is None or nccl is None:
            try:
                import cupy as cupy_module
                from cupy.cuda import nccl as nccl_module
            except ImportError as e:
                raise MinicnnError(f"GPU data-parallel training needs CuPy with NCCL ({e})") \
                    from None
            cupy, nccl = cupy or cupy_module, nccl or nccl_module
        self.control, self._cupy = control, cupy
        self.rank, self.size = control.rank, control.size
        self.local_rank, self.local_size = control.local_rank, control.local_size
        self.host = getattr(control, "host", "localhost")
        if device is not None:
            cupy.cuda.Device(device).use()
        self.device = device
        message = encode_unique_id(nccl.get_unique_id()) if self.rank == 0 \
            else np.zeros(NCCL_UNIQUE_ID_BYTES + 1, np.uint8)
        control.broadcast(message, root=0)
        self.comm = nccl.NcclCommunicator(self.size, decode_unique_id(message), self.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.int64): nccl.NCCL_INT64}
        self._ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX}

    def _nccl_type(self, buffer):
        try:
            return self._types[np.dtype(buffer.dtype)]
        except KeyError:
            raise MinicnnError(f"NCCL path: no NCCL type for {buffer.dtype}") from None

    def allreduce(self, buffer, op="sum"):
        if isinstance(buffer, np.ndarray):              # host values: over MPI
            return self.control.allreduce(buffer, op)
        stream = self._cupy.cuda.get_current_stream()
        self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size,
                            self._nccl_type(buffer), self._ops[op], stream.ptr)
        stream.synchronize()

    def broadcast(self, buffer, root=0):
        if isinstance(buffer, np.ndarray):
            return self.control.broadcast(buffer, root)
        stream = self._cupy.cuda.get_current_stream()
        self.comm.bcast(buffer.data.ptr, buffer.size, self._nccl_type(buffer), root, stream.ptr)
        stream.synchronize()

    def barrier(self):
        self.control.barrier()

    def abort(self, code=1):
        try:
            self.comm.abort()
        except Exception:                               # noqa: BLE001,S110 (ends anyway)
            pass
        self.control.abort(code)


def _array_module(array):
    if type(array).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def _to_host(array):
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) \
        else np.asarray(array)


# --- the solver side ----------------------------------------------------------------------------

def rank_param(param, rank):
    """The SolverParameter rank ``rank`` runs: random_seed + rank (Caffe); ranks other than 0
    have no test nets, snapshots or display (rank 0 does those for the run)."""
    param = param.copy()
    if param.random_seed >= 0:
        param.random_seed = param.random_seed + rank
    if rank:
        for field in ("test_iter", "test_net", "test_net_param", "test_state"):
            param.ClearField(field)
        param.test_interval = 0
        param.snapshot = 0
        param.snapshot_after_train = False
        param.display = 0
    return param


class _Requests:
    """What the CLI's signal handlers see in a data-parallel run: a stop or snapshot request is
    held until the next allreduce, where the ranks agree on it."""

    def __init__(self, parallel):
        self._parallel = parallel

    @property
    def requested_action(self):
        return self._parallel.pending_action

    @requested_action.setter
    def requested_action(self, value):
        self._parallel.pending_action = value

    @property
    def requested_early_exit(self):
        return self._parallel.solver.requested_early_exit

    def log_from_signal(self, message):
        self._parallel.solver.log_from_signal(message)


class DataParallel:
    """Runs ``solver`` as rank ``comm.rank`` of ``comm.size``: shards its train net's data
    layers, averages the gradients with one allreduce per step (``reduce``, the solver's
    gradient_reducer hook), keeps the ranks in step. ``solver`` must be built from
    ``rank_param(param, comm.rank)``.

    ``root_param``: the SolverParameter before rank_param (when and how often rank 0 tests and
    snapshots; the others do not wait in a timed collective then). ``timeout``: seconds a rank
    may wait in a step's allreduce before it aborts the job (None: MINICNN_DIST_TIMEOUT or 900;
    0: no limit). ``measure_wait``: a barrier before each allreduce, so ``stats`` separates
    waiting for the slowest rank from moving the data (for benchmarks; a message more per
    step)."""

    def __init__(self, solver, comm, *, root_param=None, timeout=None, measure_wait=False):
        self.solver, self.comm = solver, comm
        self.root_param = root_param or solver.param
        self.rank, self.size = comm.rank, comm.size
        net = solver.net
        self.unsharded = self._shard(net)
        self.params = list(net.learnable_params)
        first = self.params[0].data if self.params else np.zeros(0, solver.dtype)
        self.xp = _array_module(first)
        self.spans, offset = [], 0
        for blob in self.params:
            self.spans.append((offset, offset + blob.count))
            offset += blob.count
        self.count = offset
        # diffs, then the loss and the stop / snapshot requests: one buffer, one allreduce
        self.buffer = self.xp.zeros(self.count + 3, solver.dtype)
        self.pending_action = None
        self.requests = _Requests(self)
        self.measure_wait = measure_wait
        self.stats = {"steps": 0, "pack": 0.0, "wait": 0.0, "allreduce": 0.0, "unpack": 0.0}
        solver.gradient_reducer = self.reduce
        self._busy = None                       # (what, since) while in a timed collective
        self._root_busy = False                 # rank 0 tests or snapshots before the next step
        if timeout is None:
            text = os.environ.get("MINICNN_DIST_TIMEOUT", "")
            try:
                timeout = float(text) if text else DEFAULT_TIMEOUT
            except ValueError:
                raise MinicnnError(f"MINICNN_DIST_TIMEOUT={text!r} is not a number of "
                                   "seconds") from None
        self.timeout = max(0.0, float(timeout))
        self._stop = threading.Event()
        self._watchdog = None
        if self.timeout and self.size > 1:
            self._watchdog = threading.Thread(target=self._watch, name="minicnn-dist-watchdog",
                                              daemon=True)
            self._watchdog.start()

    @property
    def allreduce_bytes(self):
        """Bytes each rank contributes to the step's allreduce."""
        return int(self.buffer.nbytes)

    # --- data -----------------------------------------------------------------------------------
    def _shard(self, net):
        """Give every data layer of the train net this rank's block; return the source-less
        layers that cannot be sharded (Input, Python...): they serve what each rank gives them."""
        left = []
        for layer in net.layers:
            if hasattr(layer, "set_shard"):
                layer.set_shard(self.rank, self.size)
            elif not layer.param.bottom and layer.type not in ("DummyData", "Parameter"):
                left.append(f"'{layer.name}' ({layer.type})")
        return left

    # --- one step -------------------------------------------------------------------------------
    def reduce(self, solver, loss):
        """Replace every parameter diff by its mean over the ranks; return the mean loss. The
        requests (stop, snapshot) made on any rank become solver.requested_action on all."""
        buf, n, xp = self.buffer, self.count, self.xp
        t0 = time.perf_counter()
        for blob, (a, b) in zip(self.params, self.spans):
            buf[a:b] = blob.diff.reshape(-1)
        action, self.pending_action = self.pending_action, None
        buf[n:n + 3] = xp.asarray([loss, action == "stop", action == "snapshot"], buf.dtype)
        t1 = time.perf_counter()
        patient, self._root_busy = self._root_busy or self._root_tests(solver.iter), False
        if self.measure_wait:
            self._collective("waiting for the other ranks", self.comm.barrier, patient=patient)
        t2 = time.perf_counter()
        self._collective("the gradient allreduce", self.comm.allreduce, buf, patient=patient)
        t3 = time.perf_counter()
        scale = buf.dtype.type(1.0 / self.size)
        for blob, (a, b) in zip(self.params, self.spans):
            xp.multiply(buf[a:b].reshape(blob.diff.shape), scale, out=blob.diff)
        tail = _to_host(buf[n:n + 3]).astype(np.float64)
        t4 = time.perf_counter()
        s = self.stats
        s["steps"] += 1
        s["pack"] += t1 - t0
        s["wait"] += t2 - t1
        s["allreduce"] += t3 - t2
        s["unpack"] += t4 - t3
        stop, snapshot = tail[1] > 0, tail[2] > 0
        p = self.root_param
        self._root_busy = bool(snapshot or (p.snapshot and (solver.iter + 1) % p.snapshot == 0))
        solver.requested_action = "stop" if stop else \
            "snapshot" if snapshot and self.rank == 0 else None
        return float(tail[0]) / self.size

    def _root_tests(self, iteration):
        """Whether rank 0 ran its test nets before this iteration's step (others wait for it)."""
        p = self.root_param
        return bool(p.test_interval and iteration % p.test_interval == 0 and
                    (iteration > 0 or p.test_initialization) and len(p.test_iter))

    # --- start, resume ----------------------------------------------------------------------------
    def _state_arrays(self):
        net = self.solver.net
        return [blob.data for layer in net.layers for blob in layer.blobs] + \
            list(self.solver.history)

    def sync_from_root(self):
        """Make every rank rank 0's copy: weights (every parameter blob, BatchNorm statistics
        too), solver history, iteration, lr step and data positions."""
        s = self.solver
        arrays = self._state_arrays()
        layers = [layer for layer in s.net.layers if hasattr(layer, "data_state")]
        shapes = repr([tuple(a.shape) for a in arrays] + [layer.name for layer in layers])
        mine = np.array([len(arrays), sum(int(a.size) for a in arrays), len(layers),
                         zlib.crc32(shapes.encode())], np.int64)
        root = mine.copy()
        self._collective("the start", self.comm.broadcast, root, patient=True)
        differs = np.array([0 if np.array_equal(mine, root) else 1], np.int64)
        self._collective("the start", self.comm.allreduce, differs, "max", patient=True)
        if differs[0]:
            raise MinicnnError("the ranks built different nets (their parameter shapes or data "
                               "layers differ from rank 0's): every rank must read the same "
                               "solver and net files")
        total = int(mine[1])
        flat = self.xp.concatenate([a.reshape(-1) for a in arrays]) if self.rank == 0 and \
            arrays else self.xp.zeros(total, s.dtype)
        self._collective("the broadcast of the weights", self.comm.broadcast, flat,
                         patient=True)
        if self.rank:
            offset = 0
            for a in arrays:
                a[...] = flat[offset:offset + a.size].reshape(a.shape)
                offset += a.size
        states = [layer.data_state() for layer in layers]
        ints = np.array([s.iter, s.current_step] + [v for st in states
                                                    for v in (st["seed"],
                                                              st["batches_served"])],
                        np.int64)
        self._collective("the broadcast of the solver state", self.comm.broadcast, ints,
                         patient=True)
        if self.rank:
            s.iter, s.current_step = int(ints[0]), int(ints[1])
            for k, layer in enumerate(layers):
                layer.restore_data_state({"seed": int(ints[2 + 2 * k]),
                                          "batches_served": int(ints[3 + 2 * k])})

    def solve(self, resume_file=None):
        """Solver.solve for this rank: rank 0 restores ``resume_file``, every rank takes rank
        0's state, then all train to max_iter together."""
        s = self.solver
        try:
            with self._signals():                  # from here on a request waits for a step
                if resume_file and self.rank == 0:
                    s.restore(resume_file)
                self.sync_from_root()
                machines = np.array([1 if self.comm.local_rank == 0 else 0], np.int64)
                self._collective("the start", self.comm.allreduce, machines, patient=True)
                if self.rank == 0:
                    self._describe(int(machines[0]))
                s.solve()
        finally:
            self.close()

    def _describe(self, machines):
        per_rank = [getattr(layer, "batch_size", None) for layer in self.solver.net.layers
                    if hasattr(layer, "set_shard")]
        batch = f", batch {self.size} x {per_rank[0]} = {self.size * per_rank[0]}" \
            if per_rank and per_rank[0] else ""
        self.solver.log(f"Data-parallel training: {self.size} ranks on {machines} "
                        f"machine(s) over {self.comm.name}{batch}; one allreduce of "
                        f"{self.buffer.size} values ({self.allreduce_bytes / 2**20:.3g} MiB) "
                        "per step")
        for name in self.unsharded:
            self.solver.log(f"note: layer {name} is not sharded: each rank uses the data it "
                            "is given")

    def close(self):
        self._stop.set()

    # --- waiting on the others ------------------------------------------------------------------
    def _collective(self, what, fn, *args, patient=False):
        self._busy = None if patient else (what, time.monotonic())
        try:
            fn(*args)
        finally:
            self._busy = None

    def _watch(self):
        step = min(1.0, self.timeout / 4)
        while not self._stop.wait(step):
            busy = self._busy
            if busy is not None and time.monotonic() - busy[1] > self.timeout:
                last = self.solver.last_snapshot
                kept = f"; the last snapshot is {last}" if last else ""
                print(f"minicnn train: rank {self.rank} of {self.size} waited more than "
                      f"{self.timeout:g} s in {busy[0]} at iteration {self.solver.iter}: another "
                      f"rank has died or hangs. Stopping every rank{kept} (MINICNN_DIST_TIMEOUT "
                      "sets this limit)", file=sys.stderr, flush=True)
                self.comm.abort(1)
                return

    def _signals(self):
        """SIGUSR1 (snapshot) and SIGUSR2 (stop), which mpirun forwards to every rank."""
        parallel = self

        class Handlers:
            def __enter__(self):
                self.previous = {}
                if threading.current_thread() is not threading.main_thread():
                    return self
                for name, action in (("SIGUSR1", "snapshot"), ("SIGUSR2", "stop")):
                    sig = getattr(signal, name, None)
                    if sig is not None:
                        self.previous[sig] = signal.signal(
                            sig, lambda *_, a=action, n=name: parallel._request(a, n))
                return self

            def __exit__(self, *exc):
                for sig, handler in self.previous.items():
                    signal.signal(sig, handler)
        return Handlers()

    def _request(self, action, name):
        if self.pending_action != "stop":
            self.pending_action = action
        if self.rank == 0:
            self.solver.log_from_signal(f"{name} received: will {action} after this iteration")


# --- `minicnn train` under mpirun / srun ---------------------------------------------------------

class World:
    """This process's place in a data-parallel `minicnn train`: the communicator, the GPU it
    drives (if any), and what it does on errors."""

    def __init__(self, comm, gpus=()):
        self.comm, self.gpus = comm, list(gpus)
        self.rank, self.size = comm.rank, comm.size
        self.device = None
        if self.gpus:
            if comm.local_size > len(self.gpus):
                raise MinicnnError(f"{comm.local_size} ranks on this machine but --gpu lists "
                                   f"{len(self.gpus)} GPU(s): start one rank per GPU")
            self.device = self.gpus[comm.local_rank]

    def rank_param(self, param):
        return rank_param(param, self.rank)

    @staticmethod
    def quiet(message):
        """The log of ranks other than 0."""

    def attach(self, solver, root_param=None):
        """The DataParallel that runs ``solver`` (NCCL when its blobs live on a GPU)."""
        comm = self.comm
        params = solver.net.learnable_params
        if params and _array_module(params[0].data) is not np:
            comm = NCCLCommunicator(self.comm, self.device)
        return DataParallel(solver, comm, root_param=root_param)

    def run(self, fn):
        """fn() on this rank. A divergence (every rank sees the same mean loss) returns 1 on all
        ranks; any other error prints which rank failed and aborts the job, so no rank is left
        waiting in a collective."""
        from minicnn.solver import TrainingDiverged
        try:
            return fn()
        except TrainingDiverged as e:
            if self.rank == 0:
                print(f"minicnn train: error: {e}", file=sys.stderr, flush=True)
            return 1
        except BaseException as e:                     # noqa: B036 (any failure ends the job)
            if isinstance(e, SystemExit) and not e.code:
                raise
            if isinstance(e, KeyboardInterrupt):
                reason = "interrupted"
            elif isinstance(e, MinicnnError):
                reason = str(e)
            else:                                      # a bug: keep its traceback
                traceback.print_exc()
                reason = f"{type(e).__name__}: {e}"
            print(f"minicnn train: error on rank {self.rank} of {self.size} "
                  f"({getattr(self.comm, 'host', '?')}): {reason}. Stopping every rank.",
                  file=sys.stderr, flush=True)
            self.comm.abort(1)
            raise


def _set_threads(local_size):
    """Share the machine's cores among its ranks unless MINICNN_NUM_THREADS / OMP_NUM_THREADS
    say otherwise (OpenMP would give every rank every core)."""
    if os.environ.get("MINICNN_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return None
    from minicnn import native
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    threads = max(1, cores // max(1, local_size)) if cores > local_size else 1
    native.set_num_threads(threads)
    return threads


def from_environment(gpu=None, argv=None):
    """The World of this process when mpirun / srun started several ranks (or
    MINICNN_DISTRIBUTED=1), else None. ``gpu`` is --gpu: several GPUs without a launcher start
    mpirun with one rank per GPU (this process becomes it: exec)."""
    gpus = parse_gpus(gpu)
    if not requested():
        if len(gpus) > 1:
            command = mpirun_command(len(gpus), sys.argv[1:] if argv is None else argv)
            if shutil.which(command[0]) is None:
                raise MinicnnError(f"--gpu {gpu} runs one process per GPU through mpirun, which "
                                   "is not installed (apt-get install openmpi-bin)")
            sys.stdout.flush()
            os.execvp(command[0], command)
        return None
    comm = MPICommunicator()
    expected = launched_size()
    if expected > 1 and comm.size != expected:
        raise MinicnnError(f"the launcher started {expected} ranks but MPI sees {comm.size}: "
                           "with Slurm, use srun --mpi=pmix (or mpirun inside the allocation)")
    _set_threads(comm.local_size)
    return World(comm, gpus)


def efficiency(compute_s, volume_bytes, ranks, bandwidth, latency=0.0):
    """Scaling efficiency of one step under the ring-allreduce model: the step takes
    compute_s + 2 (K-1)/K x volume / bandwidth + 2 (K-1) x latency (no overlap of communication
    with backward, as minicnn does it), against compute_s alone."""
    if ranks <= 1:
        return 1.0
    comm = 2 * (ranks - 1) / ranks * volume_bytes / bandwidth + 2 * (ranks - 1) * latency
    return compute_s / (compute_s + comm)


__all__ = [
    "Communicator",
    "DataParallel",
    "MPICommunicator",
    "NCCLCommunicator",
    "World",
    "decode_unique_id",
    "efficiency",
    "encode_unique_id",
    "from_environment",
    "launched_size",
    "mpirun_command",
    "parse_gpus",
    "rank_and_size",
    "rank_param",
    "requested",
]
