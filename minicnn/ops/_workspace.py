"""Scratch arrays the fast CPU paths reuse from call to call (im2col columns, transposed
gradients), so a training step does not allocate and page in the same large buffers every
iteration. One set per thread; the contents are undefined on return.

    cols = workspace("cols", (rows, columns), np.float32)

A buffer grows to the largest size asked for and stays: ``release()`` gives the memory back.
"""

import threading

import numpy as np

_local = threading.local()


def workspace(name, shape, dtype):
    """A C-contiguous array of ``shape`` and ``dtype`` backed by the buffer called ``name``."""
    dtype = np.dtype(dtype)
    size = 1
    for d in shape:
        size *= int(d)
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.size < size:
        buffer = buffers[(name, dtype)] = np.empty(size, dtype)
    return buffer[:size].reshape(shape)


def release():
    """Free this thread's scratch buffers."""
    _local.__dict__.pop("buffers", None)
