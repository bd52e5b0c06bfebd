"""Data-parallel training (minicnn.distributed): K ranks with batch b against one process with
batch K x b.

Three layers of evidence:
- the data layers' sharding: the K blocks of a batch, concatenated, are the single-process
  batch of K x b, bit for bit (sample order, shuffles, crops and mirrors);
- DataParallel with an in-process communicator (ranks as threads): training equals the
  single-process run (clipping, iter_size, L1/L2 decay, fused and plain update rules), one
  allreduce per step, requests agreed by all ranks, the watchdog, NCCL calls on stand-ins;
- `mpirun -np 2 minicnn train` against `minicnn train --batch-size 2b` (equivalence and exact
  resume), and a rank that fails or is killed: the job stops with a message, the last snapshot
  loads (skipped only where mpirun or mpi4py is not installed; CI installs both).
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import minicnn
from minicnn import distributed
from minicnn.cli import main
from minicnn.data.imageset import convert_imageset
from minicnn.distributed import Communicator, DataParallel, NCCLCommunicator, rank_param
from minicnn.errors import MinicnnError
from minicnn.proto import caffe_pb2, parse_text

from tests.test_train import write_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- ranks as threads -----------------------------------------------------------------------------

class _Group:
    def __init__(self, size):
        self.size, self.barrier = size, threading.Barrier(size, timeout=60)
        self.slots = [None] * size
        self.allreduces = 0


class ThreadComm(Communicator):
    """Rank ``rank`` of a group of threads: the collectives through a barrier, sums in rank
    order (as MPI's for two ranks: float addition commutes)."""
    name = "threads"

    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group.size

    def allreduce(self, buffer, op="sum"):
        g = self.group
        g.slots[self.rank] = buffer.copy()
        g.barrier.wait()
        total = g.slots[0].copy()
        for other in g.slots[1:]:
            total = total + other if op == "sum" else np.maximum(total, other)
        g.barrier.wait()
        buffer[...] = total
        if self.rank == 0:
            g.allreduces += 1

    def broadcast(self, buffer, root=0):
        g = self.group
        if self.rank == root:
            g.slots[root] = buffer.copy()
        g.barrier.wait()
        buffer[...] = g.slots[root]
        g.barrier.wait()

    def abort(self, code=1):
        raise AssertionError("abort")


def run_ranks(fn, size):
    """fn(rank) in ``size`` threads; the results by rank (an exception is raised again)."""
    results, errors = [None] * size, []

    def body(rank):
        try:
            results[rank] = fn(rank)
        except BaseException as e:            # noqa: BLE001 (re-raised below)
            errors.append(e)
    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


# --- small nets and data --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    list_file = write_images(folder, n=22, size=10)
    db = folder / "db"
    convert_imageset(str(folder), str(list_file), str(db))
    return folder, list_file, db


NET = """
name: "tiny"
layer {{ name: "data" type: "{kind}" top: "data" top: "label"
  transform_param {{ crop_size: 8 mirror: true scale: 0.004 }}
  {source} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }}
                       bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


def image_source(images, batch, shuffle=True):
    folder, list_file, _ = images
    return (f'image_data_param {{ source: "{list_file}" root_folder: "{folder}/" '
            f'batch_size: {batch} shuffle: {"true" if shuffle else "false"} rand_skip: 5 }}')


def solver_param(net_text, **fields):
    fields = {"base_lr": 0.1, "momentum": 0.9, "lr_policy": "fixed", "max_iter": 100,
              "random_seed": 3, "snapshot_after_train": False, **fields}
    return caffe_pb2.SolverParameter(net_param=parse_text(net_text), **fields)


def single_run(param, steps):
    solver = minicnn.get_solver(param, log=lambda m: None)
    losses = []
    solver.on_iteration.append(lambda s, loss, rate: losses.append(loss))
    solver.step(steps)
    return solver, losses


def parallel_run(make_param, size, steps, **dp_kwargs):
    """``size`` ranks as threads; make_param(rank) is the param before rank_param."""
    group = _Group(size)
    solvers, parallels = [], []
    for rank in range(size):                  # built one after another: one global generator
        root = make_param(rank)
        solver = minicnn.get_solver(rank_param(root, rank), log=lambda m: None)
        solvers.append(solver)
        parallels.append(DataParallel(solver, ThreadComm(group, rank), root_param=root,
                                      timeout=0, **dp_kwargs))
    losses = [[] for _ in range(size)]
    for rank, solver in enumerate(solvers):
        solver.on_iteration.append(lambda s, loss, rate, r=rank: losses[r].append(loss))

    run_ranks(lambda rank: parallels[rank].sync_from_root(), size)
    start = group.allreduces
    run_ranks(lambda rank: solvers[rank].step(steps), size)
    return solvers, parallels, losses, group.allreduces - start


def max_difference(a, b):
    return max(float(np.max(np.abs(x.data - y.data)))
               for x, y in zip(a.net.learnable_params, b.net.learnable_params))


# --- sharding in the data layers ------------------------------------------------------------------

def data_net(layer_text, seed=11):
    minicnn.set_random_seed(seed)             # the layer's seed is drawn at setup
    param = parse_text(f'name: "d" {layer_text}')
    return minicnn.Net(param, phase="TRAIN")


def served(net, batches):
    out = []
    for _ in range(batches):
        net.forward()
        out.append([net.blobs[t].data.copy() for t in net.outputs])
    return out


def assert_blocks_make_the_batch(layer_text, b, size=2, batches=7):
    """The ``size`` shards of batch b, concatenated, equal the batch of size x b."""
    whole = served(data_net(layer_text(b * size)), batches)
    shards = []
    for rank in range(size):
        net = data_net(layer_text(b))
        for layer in net.layers:
            layer.set_shard(rank, size)
        shards.append(served(net, batches))
    for k in range(batches):
        for t in range(len(whole[k])):
            joined = np.concatenate([shards[r][k][t] for r in range(size)])
            np.testing.assert_array_equal(joined, whole[k][t], err_msg=f"batch {k} top {t}")


def test_image_data_shards_are_blocks_of_the_single_process_batch(images):
    """Shuffled epochs (22 images: batches run across epochs), rand_skip, random crops and
    mirrors: the two blocks are the single process's batch, pixel for pixel."""
    def text(batch):
        return ('layer { name: "data" type: "ImageData" top: "data" top: "label" '
                'transform_param { crop_size: 8 mirror: true scale: 0.004 } '
                + image_source(images, batch) + " }")
    assert_blocks_make_the_batch(text, b=3, size=2, batches=9)
    assert_blocks_make_the_batch(text, b=2, size=3, batches=5)


def test_lmdb_data_shards_with_crops_and_mirrors(images):
    _, _, db = images

    def text(batch):
        return ('layer { name: "data" type: "Data" top: "data" top: "label" '
                'transform_param { crop_size: 7 mirror: true } '
                f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB '
                'rand_skip: 4 } }')
    assert_blocks_make_the_batch(text, b=4, size=2, batches=8)


def test_hdf5_data_shards_across_files_and_shuffles(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    names = []
    for k, rows in enumerate([5, 7, 4]):
        path = tmp_path / f"part{k}.h5"
        with h5py.File(path, "w") as f:
            f["data"] = rng.standard_normal((rows, 2, 3)).astype(np.float32)
            f["label"] = np.arange(rows, dtype=np.float32) + 100 * k
        names.append(str(path))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")

    def text(batch):
        return ('layer { name: "data" type: "HDF5Data" top: "data" top: "label" '
                f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: {batch} '
                'shuffle: true } }')
    assert_blocks_make_the_batch(text, b=3, size=2, batches=10)


def test_image_data_buckets_shard_whole_batches(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(5)
    lines = []
    for i in range(13):
        h, w = [(6, 6), (6, 9), (8, 5)][i % 3]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")

    def text(batch):
        return ('layer { name: "data" type: "ImageData" top: "data" top: "label" '
                'transform_param { mirror: true } '
                f'image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: '
                f'"{tmp_path}/" batch_size: {batch} shuffle: true bucket_by_size: true }} }}')
    assert_blocks_make_the_batch(text, b=2, size=2, batches=6)


def test_memory_data_shards():
    def net(batch, rank=0, size=1):
        n = minicnn.Net(parse_text(
            'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
            f'memory_data_param {{ batch_size: {batch} channels: 1 height: 2 width: 2 }} }}'),
            phase="TRAIN")
        data = np.arange(12 * 4, dtype=np.float32).reshape(12, 1, 2, 2)
        n.set_input_arrays(data, np.arange(12))
        n.layers[0].set_shard(rank, size)
        return n
    whole = served(net(4), 5)
    shards = [served(net(2, r, 2), 5) for r in range(2)]
    for k in range(5):
        np.testing.assert_array_equal(np.concatenate([shards[0][k][1], shards[1][k][1]]),
                                      whole[k][1])


def test_set_shard_checks_its_arguments(images):
    net = data_net('layer { name: "data" type: "ImageData" top: "data" top: "label" '
                   + image_source(images, 2) + " }")
    with pytest.raises(MinicnnError, match="0 <= rank < count"):
        net.layers[0].set_shard(2, 2)
    memory = minicnn.Net(parse_text(
        'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
        'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }'), phase="TRAIN")
    for rank, count in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(MinicnnError, match="0 <= rank < count"):
            memory.layers[0].set_shard(rank, count)


def test_a_sharded_epoch_counts_the_batches_of_all_ranks(images):
    # 22 images, 2 a rank, 3 ranks: a step reads 6 of them, so an epoch is ceil(22 / 6) = 4
    # steps (test_iter's coverage note counts these), not the 11 of one rank alone
    net = data_net('layer { name: "data" type: "ImageData" top: "data" top: "label" '
                   + image_source(images, 2) + " }")
    layer = net.layers[0]
    assert layer.num_samples == 22 and layer.batches_per_epoch() == 11
    layer.set_shard(1, 3)
    assert layer.batches_per_epoch() == 4


# --- DataParallel with ranks as threads -----------------------------------------------------------

CASES = {
    "SGD: clipping, iter_size 2, L2 decay": dict(type="SGD", clip_gradients=0.4, iter_size=2,
                                                 weight_decay=0.01),
    "Nesterov: L1 decay": dict(type="Nesterov", weight_decay=0.02, regularization_type="L1"),
    "Adam: clipping, iter_size 3": dict(type="Adam", base_lr=0.01, momentum=0.9,
                                        momentum2=0.999, clip_gradients=0.3, iter_size=3,
                                        weight_decay=0.001),
    "AdaGrad: L2": dict(type="AdaGrad", momentum=0.0, weight_decay=0.01),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_train_like_one_process_with_twice_the_batch(images, case):
    fields = CASES[case]
    b, steps = 3, 5
    net = lambda batch: NET.format(kind="ImageData", source=image_source(images, batch))  # noqa: E731
    clipped = []
    single = minicnn.get_solver(solver_param(net(2 * b), **fields),
                                log=lambda m: clipped.append(m) if "clipping" in m else None)
    losses = []
    single.on_iteration.append(lambda s, loss, rate: losses.append(loss))
    single.step(steps)
    if "clip_gradients" in fields:
        assert len(clipped) == steps                  # the threshold does bite
    solvers, _, rank_losses, allreduces = parallel_run(
        lambda rank: solver_param(net(b), **fields), 2, steps)
    assert allreduces == steps                         # one allreduce per step
    for solver in solvers:
        assert solver.iter == steps
        assert max_difference(solver, single) < 2e-6
    np.testing.assert_array_equal(solvers[0].net.params["fc"][0].data,
                                  solvers[1].net.params["fc"][0].data)   # ranks stay identical
    np.testing.assert_allclose(rank_losses[0], losses, rtol=2e-6)
    assert rank_losses[0] == rank_losses[1]            # every rank logs the averaged loss
    assert max(abs(w.data).max() for w in single.net.learnable_params) > 0.05


BN_NET = NET.replace('layer {{ name: "relu"',
                     'layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }}\n'
                     'layer {{ name: "relu"')


def test_batchnorm_uses_each_ranks_own_batch_statistics(images):
    """Caffe's multi-GPU BatchNorm: the averaged gradient is the mean of the gradients each
    block gives alone (its own mean and variance), not the gradient of the joined batch."""
    b = 3
    net = lambda batch: BN_NET.format(kind="ImageData", source=image_source(images, batch))  # noqa: E731
    fields = {"momentum": 0.0, "base_lr": 0.1}
    solvers, _, _, _ = parallel_run(lambda rank: solver_param(net(b), **fields), 2, 1)
    alone, statistics = [], []
    for rank in range(2):                      # each block through a net of its own
        s = minicnn.get_solver(solver_param(net(b), **fields), log=lambda m: None)
        s.net.layers[0].set_shard(rank, 2)
        w0 = [p.data.copy() for p in s.net.learnable_params]
        s.net.clear_param_diffs()
        s.net.forward_backward()
        alone.append([p.diff.copy() for p in s.net.learnable_params])
        statistics.append([blob.data.copy() for blob in s.net.params["bn"]])
    learned = [i for i, lr in enumerate(s.net.params_lr) if lr]
    assert len(learned) == 4                   # conv and fc weights and biases; bn: lr_mult 0
    for i in learned:
        want = w0[i] - 0.1 * s.net.params_lr[i] * (alone[0][i] + alone[1][i]) / 2
        for solver in solvers:
            np.testing.assert_allclose(solver.net.learnable_params[i].data, want, rtol=1e-5,
                                       atol=1e-7)
    for rank, solver in enumerate(solvers):    # moving averages: each rank its own block's
        for blob, want in zip(solver.net.params["bn"], statistics[rank]):
            np.testing.assert_allclose(blob.data, want, rtol=1e-6)
    assert not np.allclose(statistics[0][0], statistics[1][0])
    joined, _ = single_run(solver_param(net(2 * b), **fields), 1)
    assert max_difference(joined, solvers[0]) > 1e-4     # the joined batch's statistics differ


def test_ranks_start_from_rank_zero_and_differ_before(images):
    net_text = NET.format(kind="ImageData", source=image_source(images, 2))
    group = _Group(2)
    solvers = [minicnn.get_solver(rank_param(solver_param(net_text), r), log=lambda m: None)
               for r in range(2)]                      # random_seed + rank: other fillers
    assert not np.array_equal(solvers[0].net.params["conv"][0].data,
                              solvers[1].net.params["conv"][0].data)
    solvers[0].iter, solvers[0].current_step = 17, 2
    solvers[0].history[0][...] = 0.5
    solvers[0].net.layers[0].restore_data_state({"seed": 99, "batches_served": 4})
    parallels = [DataParallel(s, ThreadComm(group, r), timeout=0) for r, s in enumerate(solvers)]
    run_ranks(lambda r: parallels[r].sync_from_root(), 2)
    for a, b in zip(solvers[0].net.learnable_params, solvers[1].net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert solvers[1].iter == 17 and solvers[1].current_step == 2
    np.testing.assert_array_equal(solvers[1].history[0], solvers[0].history[0])
    assert solvers[1].net.data_state() == {"data": {"seed": 99, "batches_served": 4}}


def test_many_small_blobs_still_one_allreduce_a_step():
    layers = "".join(
        f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "{"x" if i == 0 else f"h{i - 1}"}" '
        f'top: "h{i}" inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" '
        f'std: 0.3 }} }} }}' for i in range(25))
    net_text = ('input: "x" input_shape { dim: 2 dim: 2 } '
                'input: "t" input_shape { dim: 2 dim: 2 } ' + layers +
                'layer { name: "loss" type: "EuclideanLoss" bottom: "h24" bottom: "t" '
                'top: "loss" }')
    group = _Group(2)
    solvers, parallels = [], []
    for r in range(2):
        s = minicnn.get_solver(rank_param(solver_param(net_text, base_lr=0.01), r),
                               log=lambda m: None)
        s.net.blobs["x"].data[...] = [[1.0 + r, 2.0], [0.5, -1.0 - r]]
        s.net.blobs["t"].data[...] = 0.25
        solvers.append(s)
        parallels.append(DataParallel(s, ThreadComm(group, r), timeout=0))
    assert len(solvers[0].net.learnable_params) == 50
    run_ranks(lambda r: parallels[r].sync_from_root(), 2)
    before = group.allreduces
    run_ranks(lambda r: solvers[r].step(4), 2)
    assert group.allreduces - before == 4
    assert parallels[0].count == 25 * (2 * 2 + 2)         # 25 weights 2x2 and biases of 2
    assert parallels[0].allreduce_bytes == 4 * (parallels[0].count + 3)   # + loss, requests


def test_a_stop_asked_on_one_rank_stops_all_on_the_same_step(images, tmp_path):
    net_text = NET.format(kind="ImageData", source=image_source(images, 2))
    make = lambda r: solver_param(net_text, snapshot_prefix=str(tmp_path / "s" / f"r{r}"))  # noqa: E731
    group = _Group(2)
    solvers = [minicnn.get_solver(rank_param(make(r), r), log=lambda m: None) for r in range(2)]
    parallels = [DataParallel(s, ThreadComm(group, r), timeout=0) for r, s in enumerate(solvers)]

    def body(rank):
        parallels[rank].sync_from_root()
        solvers[rank].step(2)
        if rank == 1:
            parallels[1].requests.requested_action = "snapshot"   # as a SIGHUP on rank 1 does
        solvers[rank].step(2)
        if rank == 1:
            parallels[1].requests.requested_action = "stop"
        solvers[rank].step(10)
    run_ranks(body, 2)
    assert [s.iter for s in solvers] == [5, 5]
    assert all(s.requested_early_exit for s in solvers)
    written = sorted(os.listdir(tmp_path / "s"))
    assert written == ["r0_iter_3.caffemodel", "r0_iter_3.solverstate"]   # rank 0 alone


def test_ranks_that_built_different_nets_are_an_error(images):
    group = _Group(2)
    solvers = [minicnn.get_solver(solver_param(NET.format(
        kind="ImageData", source=image_source(images, 2)).replace("num_output: 4",
                                                                   f"num_output: {4 + r}")),
        log=lambda m: None) for r in range(2)]
    parallels = [DataParallel(s, ThreadComm(group, r), timeout=0) for r, s in enumerate(solvers)]
    errors = []

    def body(rank):
        try:
            parallels[rank].sync_from_root()
        except MinicnnError as e:
            errors.append(str(e))
    run_ranks(body, 2)
    assert len(errors) == 2 and "every rank must read the same" in errors[0]


class StalledComm(Communicator):
    """Rank 0 of 2 whose peer never answers: allreduce blocks until released."""
    name, rank, size = "stalled", 0, 2

    def __init__(self):
        self.aborted, self.release = threading.Event(), threading.Event()

    def allreduce(self, buffer, op="sum"):
        self.release.wait(60)

    def abort(self, code=1):
        self.aborted.set()
        self.release.set()


def test_a_rank_left_waiting_aborts_the_job_after_the_timeout(images, capsys):
    solver = minicnn.get_solver(solver_param(NET.format(kind="ImageData",
                                                        source=image_source(images, 2))),
                                log=lambda m: None)
    solver.last_snapshot = "snap/tiny_iter_4.caffemodel"
    comm = StalledComm()
    parallel = DataParallel(solver, comm, timeout=0.3)
    worker = threading.Thread(target=lambda: solver.step(1))
    worker.start()
    assert comm.aborted.wait(60)
    worker.join(60)
    err = capsys.readouterr().err
    assert "rank 0 of 2 waited more than 0.3 s in the gradient allreduce" in err
    assert "the last snapshot is snap/tiny_iter_4.caffemodel" in err
    parallel.close()


def test_waits_for_rank_zero_tests_and_snapshots_are_not_timed(images):
    root = solver_param(NET.format(kind="ImageData", source=image_source(images, 2)),
                        test_interval=4, test_iter=[1], snapshot=3, test_initialization=False)
    solver = minicnn.get_solver(rank_param(root, 1), log=lambda m: None)
    parallel = DataParallel(solver, ThreadComm(_Group(1), 0), root_param=root, timeout=0)
    assert [parallel._root_tests(i) for i in range(9)] == [False, False, False, False, True,
                                                          False, False, False, True]
    assert solver.param.test_interval == 0 and not solver.test_nets   # rank 1 does not test


# --- NCCL, on stand-ins for CuPy and its NCCL module ----------------------------------------------

class FakeArray:
    def __init__(self, size, dtype=np.float32, ptr=4096):
        self.size, self.dtype, self.data = size, np.dtype(dtype), types.SimpleNamespace(ptr=ptr)


def fake_cuda(calls, uid):
    class Comm:
        def __init__(self, ndev, comm_id, rank):
            calls.append(("init", ndev, comm_id, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):   # noqa: N802 (CuPy's name)
            calls.append(("allReduce", send, recv, count, dtype, op, stream))

        def bcast(self, buff, count, dtype, root, stream):
            calls.append(("bcast", buff, count, dtype, root, stream))

        def abort(self):
            calls.append(("abort",))
    nccl = types.SimpleNamespace(NcclCommunicator=Comm, get_unique_id=lambda: uid,
                                 NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_INT64=4, NCCL_SUM=0,
                                 NCCL_MAX=2)
    stream = types.SimpleNamespace(ptr=77, synchronize=lambda: calls.append(("sync",)))
    device = lambda d: types.SimpleNamespace(use=lambda: calls.append(("device", d)))  # noqa: E731
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=device,
                                                            get_current_stream=lambda: stream))
    return nccl, cupy


@pytest.mark.parametrize("uid", [tuple(range(-64, 64)), bytes(range(128))])
def test_nccl_id_goes_from_rank_zero_and_the_calls_are_nccls(uid):
    group = _Group(2)
    calls = [[], []]

    def body(rank):
        nccl, cupy = fake_cuda(calls[rank], uid if rank == 0 else None)
        comm = NCCLCommunicator(ThreadComm(group, rank), device=rank, nccl=nccl, cupy=cupy)
        comm.allreduce(FakeArray(10))
        comm.broadcast(FakeArray(5, np.float64, ptr=8192), root=0)
        host = np.array([rank + 1.0, 3.0])
        comm.allreduce(host)                       # host arrays go over MPI (the control)
        return host
    hosts = run_ranks(body, 2)
    for rank in range(2):
        c = calls[rank]
        assert c[0] == ("device", rank)
        assert c[1] == ("init", 2, uid, rank) and type(c[1][2]) is type(uid)
        assert c[2] == ("allReduce", 4096, 4096, 10, 7, 0, 77) and c[3] == ("sync",)
        assert c[4] == ("bcast", 8192, 5, 8, 0, 77)
        np.testing.assert_array_equal(hosts[rank], [3.0, 6.0])


def test_unique_id_encoding_round_trips_and_checks_its_length():
    for uid in (tuple(range(-64, 64)), bytes(range(100, 228))):
        assert distributed.decode_unique_id(distributed.encode_unique_id(uid)) == uid
    with pytest.raises(MinicnnError, match="128 bytes"):
        distributed.encode_unique_id(b"short")


# --- the environment, --gpu ----------------------------------------------------------------------

def test_launcher_environment_and_gpu_lists():
    assert distributed.launched_size({}) == 1 and not distributed.requested({})
    env = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}
    assert distributed.rank_and_size(env) == (3, 4) and distributed.requested(env)
    assert distributed.rank_and_size({"PMI_SIZE": "2", "PMI_RANK": "1"}) == (1, 2)
    slurm = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5"}
    assert distributed.rank_and_size(slurm) == (0, 1)              # an sbatch script
    assert distributed.rank_and_size({**slurm, "SLURM_STEP_ID": "0"}) == (5, 8)
    assert distributed.requested({"MINICNN_DISTRIBUTED": "1"})
    assert distributed.parse_gpus("0,2") == [0, 2] and distributed.parse_gpus(None) == []
    assert distributed.parse_gpus("all", device_count=3) == [0, 1, 2]
    for bad in ("0,0", "a,b", "-1"):
        with pytest.raises(MinicnnError, match="--gpu"):
            distributed.parse_gpus(bad)
    assert distributed.mpirun_command(2, ["train", "s.prototxt", "--gpu", "0,1"],
                                      executable="py", as_root=True) == [
        "mpirun", "-np", "2", "--allow-run-as-root", "py", "-m", "minicnn", "train",
        "s.prototxt", "--gpu", "0,1"]


def test_efficiency_model():
    assert distributed.efficiency(1.0, 1e9, 1, 1e9) == 1.0
    # 2 ranks: 2 * 1/2 * 1 GB at 1 GB/s = 1 s of communication against 1 s of compute
    assert distributed.efficiency(1.0, 1e9, 2, 1e9) == pytest.approx(0.5)


def test_single_process_train_does_not_load_mpi(images, tmp_path):
    code = ("import sys; from minicnn.cli import main; "
            f"rc = main(['train', {str(tmp_path / 's.prototxt')!r}, '--no-progress']); "
            "assert 'mpi4py' not in sys.modules and 'cupy' not in sys.modules; sys.exit(rc)")
    write_cli_files(images, tmp_path, batch=2, max_iter=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr


# --- mpirun -----------------------------------------------------------------------------------

def _mpi_available():
    """mpirun and mpi4py installed (checked without importing mpi4py.MPI, which would start
    MPI in the test process)."""
    return shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None


needs_mpi = pytest.mark.skipif(not _mpi_available(), reason="mpirun or mpi4py not installed")


def write_cli_files(images, folder, batch, max_iter=6, extra_layer="", **solver):
    net_text = NET.format(kind="ImageData", source=image_source(images, batch)) + extra_layer
    (folder / "net.prototxt").write_text(net_text)
    fields = {"net": f'"{folder / "net.prototxt"}"', "base_lr": 0.1, "momentum": 0.9,
              "weight_decay": 0.01, "lr_policy": '"fixed"', "max_iter": max_iter, "display": 1,
              "snapshot": 3, "snapshot_prefix": f'"{folder / "snap" / "run"}"',
              "random_seed": 7, "clip_gradients": 0.5, "iter_size": 2, **solver}
    (folder / "s.prototxt").write_text("\n".join(f"{k}: {v}" for k, v in fields.items()))
    return folder / "s.prototxt"


def mpirun(args, ranks=2, timeout=180, env=None):
    command = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", str(ranks),
               sys.executable, "-m", "minicnn", *args]
    environment = {**os.environ, "MINICNN_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=environment)


def weights(prototxt, model):
    net = minicnn.Net(str(prototxt), str(model), "TRAIN")
    return [b.data.copy() for b in net.learnable_params]


@needs_mpi
def test_mpirun_two_ranks_equal_one_process_and_resume_exactly(images, tmp_path, capsys):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    solver2 = write_cli_files(images, two, batch=3, clip_gradients=2.0)
    done = mpirun(["train", str(solver2), "--no-progress"])
    assert done.returncode == 0, done.stderr + done.stdout
    log = done.stdout + done.stderr
    assert "Data-parallel training: 2 ranks on 1 machine(s) over MPI, batch 2 x 3 = 6" in log
    assert log.count("Optimization Done.") == 1                   # rank 0 alone logs
    assert 0 < log.count("Gradient clipping") < 6                 # some steps clipped, not all

    solver1 = write_cli_files(images, one, batch=6, clip_gradients=2.0)
    assert main(["train", str(solver1), "--no-progress"]) == 0
    capsys.readouterr()
    a = weights(two / "net.prototxt", two / "snap" / "run_iter_6.caffemodel")
    b = weights(one / "net.prototxt", one / "snap" / "run_iter_6.caffemodel")
    error = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    assert error < 1e-6, error
    assert max(float(np.max(np.abs(y))) for y in b) > 0.05

    # resume the 2-rank run from its iteration-3 snapshot: the same weights, bit for bit
    done = mpirun(["train", str(solver2), "--no-progress", "--snapshot",
                   str(two / "snap" / "run_iter_3.solverstate"), "--snapshot-prefix",
                   str(two / "snap" / "resumed")])
    assert done.returncode == 0, done.stderr
    assert "Restored from" in done.stdout + done.stderr
    c = weights(two / "net.prototxt", two / "snap" / "resumed_iter_6.caffemodel")
    for x, y in zip(a, c):
        np.testing.assert_array_equal(x, y)


FAIL_LAYER = """
layer {{ name: "bomb" type: "Python" bottom: "label" python_param {{ module: "bomb_layer"
  layer: "Bomb" param_str: "{how}" }} }}
"""

BOMB = '''
import os, signal
import minicnn


class Bomb(minicnn.PythonLayerBase):
    """Fails on rank 1 at its ninth forward pass (iteration 4 with iter_size 2)."""

    def setup(self, bottom, top):
        self.calls = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        self.calls += 1
        if os.environ.get("OMPI_COMM_WORLD_RANK") == "1" and self.calls == 9:
            if self.param_str == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise minicnn.MinicnnError("the bomb layer went off")

    def backward(self, top, propagate_down, bottom):
        pass
'''


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_stops_the_job_and_the_snapshot_survives(images, tmp_path, how):
    (tmp_path / "bomb_layer.py").write_text(BOMB)
    solver = write_cli_files(images, tmp_path, batch=3, max_iter=8,
                             extra_layer=FAIL_LAYER.format(how=how))
    done = mpirun(["train", str(solver), "--no-progress"], timeout=120,
                  env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert done.returncode != 0
    log = done.stdout + done.stderr
    if how == "raise":
        assert "minicnn train: error on rank 1 of 2" in log
        assert "the bomb layer went off" in log and "Stopping every rank" in log
    else:
        assert "exited on signal 9" in log                   # mpirun names the dead rank
    assert not (tmp_path / "snap" / "run_iter_6.caffemodel").exists()
    model = tmp_path / "snap" / "run_iter_3.caffemodel"
    assert len(weights(tmp_path / "net.prototxt", model)) == 4   # the last snapshot loads
    state = minicnn.proto.read_binary(str(tmp_path / "snap" / "run_iter_3.solverstate"),
                                      "SolverState")
    assert state.iter == 3


@needs_mpi
def test_sigusr2_to_mpirun_stops_every_rank_after_a_snapshot(images, tmp_path):
    solver = write_cli_files(images, tmp_path, batch=2, max_iter=100000, snapshot=0,
                             display=0, clip_gradients=-1)
    command = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "2",
               sys.executable, "-m", "minicnn", "train", str(solver), "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "MINICNN_NUM_THREADS": "1"})
    lines = []
    for line in process.stdout:        # logged once every rank has its handlers installed
        lines.append(line)
        if line.startswith("Data-parallel training"):
            break
    process.send_signal(signal.SIGUSR2)
    out, _ = process.communicate(timeout=120)
    log = "".join(lines) + out
    assert process.returncode == 0, log
    assert "SIGUSR2 received: will stop after this iteration" in log
    assert "Optimization stopped early." in log
    written = [f for f in os.listdir(tmp_path / "snap") if f.endswith(".caffemodel")]
    assert len(written) == 1 and not written[0].endswith("_iter_100000.caffemodel")
