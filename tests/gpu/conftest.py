"""The `gpu` fixture: each test of this folder runs twice, on the host emulator of the CUDA
backend ("emu": kernels/*.cu built for the CPU, tests/cuda_emu) wherever a C++ compiler is, and on
a real GPU ("cuda", marked `cuda`: skipped where there is no CUDA device or no CuPy)."""

import numpy as np
import pytest

import minicnn.cuda
from tests import cuda_emu


@pytest.fixture(params=["emu", pytest.param("cuda", marks=pytest.mark.cuda)])
def gpu(request):
    """The CuPy module the test runs on (the real one or the emulator's stand-in)."""
    if request.param == "emu":
        if not cuda_emu.available():
            pytest.skip("no C++ compiler for the CUDA host emulator")
        with cuda_emu.installed() as cp:
            yield cp
        return
    previous = minicnn.cuda.use_backend(None, None)
    mode = dict(minicnn.cuda._mode)
    try:
        yield minicnn.cuda.cupy()
    finally:
        minicnn.cuda.use_backend(*previous)
        minicnn.cuda._mode.update(mode)


def poisoned(cp, shape, dtype):
    """A device array full of NaN: an output every element of which a kernel must write."""
    return cp.full(shape, np.nan, dtype)


def rel_error(got, want, floor=0.0):
    """|got - want| / max(|want|, floor) over the whole array (norms; 0 when both are 0).
    ``floor`` is for values that are rounding noise around 0 on both sides."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(np.linalg.norm(want.ravel()), floor)
    return np.linalg.norm((got - want).ravel()) / (scale if scale > 0 else 1.0)


def assert_close(got, want, tol=1e-5, what=""):
    """got (a device array) equals want (NumPy) as a whole to relative error ``tol``, with the
    same shape and dtype and no NaN."""
    got_host = minicnn.cuda.to_host(got)
    want = np.asarray(want)
    assert got_host.shape == want.shape, f"{what}: shape {got_host.shape} != {want.shape}"
    assert got_host.dtype == want.dtype, f"{what}: dtype {got_host.dtype} != {want.dtype}"
    assert not np.isnan(got_host).any() or np.isnan(want).any(), f"{what}: NaN in the output"
    err = rel_error(got_host, want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"
