"""Resources over long runs: a dropped Net or Solver gives back its arrays, its prefetch
threads and its open databases as soon as the last reference goes (by reference counting,
not at some later run of the cycle collector, which may not come for a long time in a
training process: a big net's blobs, the batches its threads queued and the threads
themselves would stay), also after an error."""

import gc
import os
import threading
import weakref

import numpy as np
import pytest

import minicnn
from minicnn.data.datum import serialize_datum
from minicnn.data.db import LMDBWriter
from minicnn.proto import caffe_pb2, parse_text


@pytest.fixture
def no_cycle_collector():
    """Only reference counting frees objects during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def make_lmdb(path, n=12, bad=None):
    with LMDBWriter(str(path)) as w:
        for i in range(n):
            record = b"\xff\xff\xff not a Datum" if i == bad else serialize_datum(
                np.full((1, 3, 3), i, np.uint8), i % 3)
            w.put(f"{i:08d}", record)
    return str(path)


def lmdb_net_text(source):
    return f"""
name: "tiny"
layer {{ name: "d" type: "Data" top: "data" top: "label"
  data_param {{ source: "{source}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


LINEAR = """
name: "linear"
input: "x" input_shape { dim: 2 dim: 3 }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 } }
"""


def prefetch_threads(besides=(), name="minicnn-data-d"):
    """The prefetch threads of data layers named "d", but for those in ``besides``: an earlier
    test's dropped net may still be finishing a batch in its own (it ends after that batch)."""
    return [t for t in threading.enumerate() if t.name == name and t not in besides]


def open_files(path):
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:                   # the listing's own descriptor, closed by now
            pass
    return [f for f in fds if f.startswith(path)]


def test_a_dropped_solver_and_its_nets_are_freed_by_reference_counting(no_cycle_collector):
    # the nets' debug_log was the solver's bound log method: solver -> net -> solver
    param = caffe_pb2.SolverParameter(
        net_param=parse_text(LINEAR + """
            input: "t" input_shape { dim: 2 dim: 2 }
            layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
            """),
        test_net_param=[parse_text(LINEAR)], test_iter=[1], test_interval=1, base_lr=0.1,
        lr_policy="fixed", max_iter=2, snapshot_after_train=False)
    solver = minicnn.get_solver(param, log=lambda message: None)
    solver.step(2)
    refs = [weakref.ref(x) for x in (solver, solver.net, solver.test_nets[0],
                                     solver.net.params["fc"][0].data)]
    del solver
    assert [r() is None for r in refs] == [True] * 4


def test_a_solvers_net_kept_after_the_solver_still_logs(capsys):
    solver = minicnn.get_solver(caffe_pb2.SolverParameter(
        net_param=parse_text(LINEAR), base_lr=0.1, lr_policy="fixed", max_iter=1),
        log=lambda message: None)
    net = solver.net
    del solver
    net.debug_info = True
    net.forward()                         # the debug lines go to stderr, as a lone net's do
    assert "[Forward] Layer fc" in capsys.readouterr().err


def test_a_dropped_net_ends_its_prefetch_thread_and_closes_its_database(tmp_path,
                                                                         no_cycle_collector):
    # the Data layer's Prefetcher held the layer's bound _make_batch: layer -> prefetcher ->
    # layer, so the layer, its LMDB environment, its thread and the batches queued stayed
    source = make_lmdb(tmp_path / "db")
    others = prefetch_threads()
    net = minicnn.Net(parse_text(lmdb_net_text(source)), "train")
    net.forward()
    net.forward()
    layer = weakref.ref(net.layers[0])
    [thread] = prefetch_threads(besides=others)
    assert open_files(source)
    del net
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert layer() is None
    assert open_files(source) == []


def test_a_net_whose_data_layer_failed_is_freed_after_the_error_is_handled(tmp_path,
                                                                           no_cycle_collector):
    # the error raised again from Prefetcher.next was a local of the frames in its own
    # traceback, and those frames hold the layer and the net
    source = make_lmdb(tmp_path / "db", bad=5)
    others = prefetch_threads()
    net = minicnn.Net(parse_text(lmdb_net_text(source)), "train")
    refs = [weakref.ref(net), weakref.ref(net.layers[0])]
    net.forward()                             # records 0-3
    message = None
    try:
        net.forward()                         # records 4-7: record 5 is damaged
    except minicnn.NetError as e:
        message = str(e)
    assert "record '00000005'" in message
    del net
    assert [r() is None for r in refs] == [True, True]
    assert prefetch_threads(besides=others) == [] and open_files(source) == []
