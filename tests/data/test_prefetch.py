"""The background prefetcher: order, determinism, seek, errors surfacing, thread hygiene."""

import gc
import multiprocessing
import threading
import time
import warnings

import numpy as np
import pytest

from minicnn.data.prefetch import Prefetcher


def random_batch(b):
    return np.random.default_rng([42, b]).standard_normal(3)


def test_batches_come_in_order():
    p = Prefetcher(lambda b: b * 10, depth=2)
    assert [p.next() for _ in range(5)] == [0, 10, 20, 30, 40]
    assert p.position == 5
    p.stop()


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_batch_b_does_not_depend_on_how_far_ahead_it_was_computed(depth):
    p = Prefetcher(random_batch, depth=depth)
    p.next()
    time.sleep(0.05)                              # let the queue fill
    got = [p.next() for _ in range(6)]
    for b, batch in enumerate(got, 1):
        np.testing.assert_array_equal(batch, random_batch(b))
    p.stop()


def test_seek_restarts_at_any_index():
    p = Prefetcher(lambda b: b, depth=3)
    assert [p.next(), p.next()] == [0, 1]
    p.seek(7)
    assert p.position == 7 and not p.running
    assert [p.next(), p.next()] == [7, 8]
    p.seek(1)
    assert p.next() == 1
    p.stop()
    assert p.next() == 2                          # a stopped prefetcher starts again


def test_a_start_position_is_honoured():
    p = Prefetcher(lambda b: b, depth=2, start=5)
    assert p.next() == 5
    p.stop()


def test_depth_0_computes_in_the_caller_and_starts_no_thread():
    callers = []
    p = Prefetcher(lambda b: callers.append(threading.current_thread()) or b, depth=0)
    assert [p.next(), p.next()] == [0, 1]
    assert callers == [threading.current_thread()] * 2 and not p.running
    p.stop()


def test_the_thread_computes_at_most_depth_batches_ahead():
    calls = []
    p = Prefetcher(lambda b: calls.append(b) or b, depth=2)
    assert p.next() == 0
    deadline = time.monotonic() + 30              # batches 1, 2 queued, 3 waits to be put
    while len(calls) < 4 and time.monotonic() < deadline:    # (a loaded machine is slow)
        time.sleep(0.01)
    time.sleep(0.1)                               # a thread that did not stop would go on
    assert calls == [0, 1, 2, 3]
    p.stop()


def test_exceptions_in_the_thread_surface_in_next_with_their_message():
    broken = {3}

    def make(b):
        if b in broken:
            raise ValueError(f"record {b} is corrupt")
        return b

    p = Prefetcher(make, depth=4)
    assert [p.next() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="record 3 is corrupt"):
        p.next()
    assert p.position == 3
    with pytest.raises(ValueError, match="record 3 is corrupt"):
        p.next()                                  # retried, still broken
    broken.clear()
    assert p.next() == 3                          # fixed: carries on
    p.stop()


def test_the_thread_is_a_daemon_and_ends_when_the_prefetcher_is_dropped():
    p = Prefetcher(lambda b: b, depth=2, name="test-prefetch-drop")
    p.next()
    thread = p._thread
    assert thread.daemon and thread.name == "test-prefetch-drop" and thread.is_alive()
    del p
    gc.collect()
    thread.join(timeout=2)
    assert not thread.is_alive()


def test_no_global_random_state_is_used():
    state = np.random.get_state()[1].copy()
    p = Prefetcher(random_batch, depth=2)
    for _ in range(4):
        p.next()
    p.stop()
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_stop_joins_the_thread():
    started = threading.Event()

    def slow(b):
        started.set()
        time.sleep(0.01)
        return b

    p = Prefetcher(slow, depth=1)
    p.next()
    started.wait()
    thread = p._thread
    p.stop()
    assert not thread.is_alive()


def test_threads_still_running_at_exit_are_stopped_first():
    # the atexit hook: no thread left inside native code while the interpreter tears down
    from minicnn.data import prefetch
    p = Prefetcher(lambda b: b, depth=2)
    assert p.next() == 0 and p.running
    prefetch._stop_all()
    assert not p.running and p._thread is None
    assert p.next() == 1                          # and it can start again
    p.stop()


def _batches_in_child(prefetcher, n, connection):
    connection.send([prefetcher.next() for _ in range(n)])


def _run_forked(target, args, seconds=20):
    """target(*args, connection) in a forked child: what it sent, "hung" or "died"."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    with warnings.catch_warnings():                 # Python 3.12+: fork with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        child = ctx.Process(target=target, args=(*args, send))
        child.start()
    send.close()
    try:
        got = receive.recv() if receive.poll(seconds) else "hung"
    except EOFError:
        got = "died"
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
    return got


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_starts_its_own_thread_where_the_parent_was():
    # The parent's thread is not in the child: the child's next() once found the queue the
    # parent had filled, then nothing ("ended without a batch"), or hung on the queue's lock.
    p = Prefetcher(lambda b: b, depth=2)
    assert [p.next(), p.next()] == [0, 1]
    deadline = time.monotonic() + 5
    while p._queue.qsize() < 2 and time.monotonic() < deadline:   # full: the thread waits
        time.sleep(0.01)
    assert _run_forked(_batches_in_child, (p, 6)) == [2, 3, 4, 5, 6, 7]
    assert [p.next(), p.next(), p.next()] == [2, 3, 4]      # the parent goes on unchanged
    p.stop()
