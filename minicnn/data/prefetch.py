"""A background thread that computes batches ahead of the net (Caffe's BasePrefetchingDataLayer).

    p = Prefetcher(make_batch, depth=4)     # make_batch(b) -> batch number b; pure in b
    p.next()                                # batch 0 (the thread starts on first use)
    p.next()                                # batch 1, computed while the net ran on batch 0
    p.seek(10); p.next()                    # batch 10: the queue is dropped, the thread restarts

Determinism comes from the caller: ``make_batch(b)`` must depend only on ``b`` and fixed state
(seeded generators made from b, never a shared or global one), so batch b is the same whether it
was computed ahead or not, and after a ``seek``. The thread is a daemon; an exception in it is
raised again, the same object with its message, from the ``next()`` that would have returned that
batch, and the following ``next()`` retries that batch. ``depth=0`` computes in the caller.
A forked child (multiprocessing's 'fork') drops the parent's queue and starts its own thread
at the same position. The thread holds only a weak reference to the Prefetcher between batches,
and the Prefetcher only a weak one to a bound method's object (a data layer's
``self._make_batch``: a strong one would make the cycle layer -> prefetcher -> layer), so a
dropped Net's data layers are freed as soon as it goes, and their threads end.
"""

import atexit
import inspect
import os
import queue
import threading
import weakref

_POLL = 0.05                 # seconds between checks for a stop request while the queue is full
_running = weakref.WeakSet()  # Prefetchers whose thread was started


@atexit.register
def _stop_all():
    """Stop every thread before the interpreter tears down: a daemon thread still inside native
    code then (OpenCV resizing a batch) can abort the process at exit ("terminate called
    without an active exception"), after all the work succeeded."""
    for prefetcher in list(_running):
        prefetcher.stop()


def _forget_threads():
    """In a forked child: the parent's threads are not there, and their queues (whose locks a
    thread may have held at the fork) are dropped unread. Each Prefetcher starts afresh at its
    position on its next ``next()``, which computes the same batches (they depend on b only)."""
    for prefetcher in list(_running):
        prefetcher._thread = prefetcher._queue = prefetcher._stop = None
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)


def _work(ref, q, stop, index):
    while not stop.is_set():
        owner = ref()
        if owner is None:
            return
        make_batch = owner.make_batch
        del owner
        if make_batch is None:                  # its object (a data layer) is gone
            return
        try:
            item = (index, make_batch(index), None)
        except Exception as e:              # handed to the consumer, raised there
            item = (index, None, e)
        del make_batch
        while True:
            if stop.is_set() or ref() is None:
                return
            try:
                q.put(item, timeout=_POLL)
                break
            except queue.Full:
                pass
        failed, item = item[2] is not None, None  # the error's traceback holds this frame
        if failed:
            return
        index += 1


class Prefetcher:
    """Batches ``make_batch(b)`` for b = position, position + 1, ..., computed up to ``depth``
    ahead in a daemon thread. ``position`` is the index of the batch ``next()`` returns."""

    def __init__(self, make_batch, depth=4, start=0, name="minicnn-prefetch"):
        self.make_batch = make_batch
        self.depth = int(depth)
        self.name = name
        self._position = int(start)
        self._thread = self._queue = self._stop = None

    @property
    def make_batch(self):
        """The batch function (None once the object of a bound method is gone)."""
        return self._make_batch() if self._weak else self._make_batch

    @make_batch.setter
    def make_batch(self, function):
        self._weak = inspect.ismethod(function)
        self._make_batch = weakref.WeakMethod(function) if self._weak else function

    @property
    def position(self):
        return self._position

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def _start(self):
        self._queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_work, args=(weakref.ref(self), self._queue, self._stop, self._position),
            name=self.name, daemon=True)
        self._thread.start()
        _running.add(self)

    def next(self):
        """The batch at ``position``; advances the position."""
        if self.depth <= 0:
            batch = self.make_batch(self._position)
            self._position += 1
            return batch
        if self._thread is None:
            self._start()
        while True:
            try:
                index, batch, error = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._thread = None
                    raise RuntimeError(f"the prefetch thread '{self.name}' ended without a "
                                       f"batch for index {self._position}") from None
        if index != self._position:                      # cannot happen: one producer, FIFO
            raise AssertionError(f"prefetch queue out of order: {index} != {self._position}")
        if error is not None:
            self._thread.join()
            self._thread = None                          # the next call retries this batch
            try:
                raise error
            finally:
                error = None         # a local of a frame in its own traceback: a cycle that
                                     # would keep the net alive until the cycle collector ran
        self._position += 1
        return batch

    def stop(self):
        """Stop the thread (after the batch it is computing) and drop the queued batches."""
        if self._thread is not None:
            self._stop.set()
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join()
            self._thread = self._queue = self._stop = None

    def seek(self, index):
        """Make ``index`` the next batch; the thread restarts there on the next ``next()``."""
        self.stop()
        self._position = int(index)

    close = stop
