"""The host emulator of minicnn's CUDA backend (tests only): kernels/*.cu compiled for the CPU,
run over CUDA's grid by emu.h, behind a CuPy stand-in (fake_cupy). It lets the "cuda" impls,
the device Net and the GPU solver path run, and be checked against the NumPy reference, on
machines without a GPU. It proves the kernels' index arithmetic and the Python plumbing; it
proves nothing about speed, warps or the device's memory model: the same tests run on a real
GPU under the `cuda` marker.

    with cuda_emu.installed():
        ...                         # minicnn.cuda.cupy() is the stand-in; ops have "cuda"
"""

import contextlib
import shutil

import minicnn.cuda
import minicnn.ops
from minicnn.ops._dispatch import Op

from . import fake_cupy


def available():
    """Whether the host C++ compiler the emulator needs is here."""
    return shutil.which(fake_cupy.compiler()) is not None


def _all_ops():
    import importlib
    import pkgutil
    seen = {}
    for info in pkgutil.iter_modules(minicnn.ops.__path__):
        module = importlib.import_module(f"minicnn.ops.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Op):
                seen[id(value)] = value
    return list(seen.values())


@contextlib.contextmanager
def installed():
    """Run the block with the emulator as minicnn's CuPy, and every op's "cuda" impl
    registered (they are not where CuPy is not installed)."""
    added = []
    for op in _all_ops():
        if "cuda" not in op.impls and "cuda" in op.unavailable:
            op.impls["cuda"] = op.unavailable["cuda"]
            added.append(op)
    previous = minicnn.cuda.use_backend(fake_cupy, fake_cupy.gemm_strided_batched)
    mode = dict(minicnn.cuda._mode)
    try:
        yield fake_cupy
    finally:
        minicnn.cuda.use_backend(*previous)
        minicnn.cuda._mode.update(mode)
        for op in added:
            del op.impls["cuda"]
