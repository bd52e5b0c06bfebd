"""The host emulator's CuPy stand-in (tests/cuda_emu/fake_cupy.py) offers only what CuPy 14
offers, with CuPy's parameter names: the `[emu]` half of every GPU test runs minicnn's CUDA path
against the stand-in, so a name or keyword only the stand-in (or NumPy behind it) takes would
pass here and fail on the first GPU. Checked against the real CuPy, which imports without a GPU
(CI installs cupy-cuda13x, the GPU machines' version)."""

import inspect
import re

import numpy as np
import pytest

from tests.cuda_emu import fake_cupy

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (CI installs cupy-cuda13x)")

# the stand-in's own machinery, not part of CuPy's API
EMULATOR_ONLY = {"compiler", "check_launch", "gemm_strided_batched"}
# where the stand-in keeps at its top level what CuPy keeps in cupy.cuda / cupy.cuda.runtime
REAL_HOME = {"Device": "cuda", "Stream": "cuda", "Event": "cuda",
             "CUDARuntimeError": "cuda.runtime"}


def real(path):
    """cupy's attribute at a dotted path ("cuda.runtime.getDeviceCount")."""
    value = cupy
    for part in path.split("."):
        value = getattr(value, part)
    return value


def parameters(fn):
    """Parameter names of a Python function or of a Cython one, from its docstring's first line
    (CuPy's Cython functions and methods carry their signature there)."""
    try:
        return [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        first = (fn.__doc__ or "").strip().splitlines()[0]
        match = re.match(r"[\w.]+\((.*)\)", first)
        assert match, f"no signature in the docstring of {fn!r}: {first!r}"
        names = [part.split("=")[0].strip().split()[-1] for part in match.group(1).split(",")
                 if part.strip() and part.strip() not in ("*", "/")]
        return [n for n in names if not n.startswith("*")]


def standin_functions():
    return sorted(name for name, value in vars(fake_cupy).items()
                  if not name.startswith("_") and callable(value)
                  and getattr(value, "__module__", None) == fake_cupy.__name__
                  and name not in EMULATOR_ONLY)


def test_the_standin_has_functions_to_check():
    names = standin_functions()
    assert {"empty", "zeros", "asarray", "RawModule", "RawKernel"} <= set(names)


@pytest.mark.parametrize("name", standin_functions())
def test_each_standin_function_exists_in_cupy_with_its_parameter_names(name):
    home = REAL_HOME.get(name)
    target = real(f"{home}.{name}" if home else name)
    if inspect.isclass(target):
        if name == "CUDARuntimeError":
            assert issubclass(target, RuntimeError)
        return
    ours = [p for p in parameters(getattr(fake_cupy, name))]
    theirs = parameters(target)
    assert set(ours) <= set(theirs), \
        f"fake_cupy.{name}{ours}: CuPy's {name} takes {theirs}"


def test_every_numpy_name_the_standin_forwards_exists_in_cupy():
    missing = sorted(n for n in fake_cupy._NUMPY_NAMES | set(fake_cupy._TYPES)
                     if not hasattr(cupy, n))
    assert not missing, f"the stand-in forwards names CuPy does not have: {missing}"


def test_ndarray_attributes_and_method_parameters_are_cupys():
    ours = [n for n in dir(fake_cupy.ndarray) if not n.startswith("_")]
    assert {"get", "set", "astype", "reshape", "sum", "data", "flags"} <= set(ours)
    missing = [n for n in ours if not hasattr(cupy.ndarray, n)]
    assert not missing, f"cupy.ndarray has no {missing}"
    for name in ("get", "set", "astype", "copy", "item", "tolist"):
        mine = parameters(getattr(fake_cupy.ndarray, name))
        theirs = parameters(getattr(cupy.ndarray, name))
        assert set(mine) <= set(theirs), f"ndarray.{name}{mine}: CuPy's takes {theirs}"


def test_the_cuda_namespace_is_cupys():
    for name, value in vars(fake_cupy.cuda).items():
        assert hasattr(cupy.cuda, name), f"cupy.cuda has no {name}"
    for name in vars(fake_cupy.cuda.runtime):
        assert hasattr(cupy.cuda.runtime, name), f"cupy.cuda.runtime has no {name}"
    # what minicnn reads of devices, streams and events (Stream.ptr is an instance attribute)
    for cls, attributes in ((fake_cupy.Device, ("use", "synchronize", "compute_capability")),
                            (fake_cupy.Event, ("record", "synchronize", "done"))):
        real_cls = getattr(cupy.cuda, cls.__name__)
        for attribute in attributes:
            assert hasattr(cls, attribute) and hasattr(real_cls, attribute), \
                f"{cls.__name__}.{attribute}"
    assert hasattr(cupy.cuda.Stream.null, "ptr") and hasattr(cupy.cuda.Stream, "synchronize")


def test_kernels_launch_with_cupys_arguments():
    ours = parameters(fake_cupy.RawKernel.__call__)
    theirs = parameters(cupy.RawKernel.__call__)
    assert ours == ["self", "grid", "block", "args", "shared_mem"]
    assert set(ours) <= set(theirs) | {"shared_mem"}, theirs    # shared_mem: CuPy's keyword
    assert "shared_mem" in cupy.RawKernel.__call__.__doc__
    module = parameters(cupy.RawModule)
    assert {"code", "options", "name_expressions"} <= set(module), module


def test_a_keyword_only_numpy_takes_fails_in_the_standin_as_on_a_gpu():
    x = fake_cupy.array([1.0, 2.0, 3.0], np.float32)
    assert float(x.sum(dtype=np.float64)) == 6.0
    with pytest.raises(TypeError, match=r"cupy.ndarray.sum\(\).*'where'"):
        x.sum(where=True)
    with pytest.raises(TypeError, match=r"cupy.ndarray.max\(\).*'initial'"):
        x.max(initial=0.0)
    with pytest.raises(TypeError, match=r"cupy.concatenate\(\).*'foo'"):
        fake_cupy.concatenate([x, x], foo=1)


def test_new_arrays_like_a_transposed_one_keep_its_layout_as_cupys_do():
    """empty_like, zeros_like, astype, copy(order="K") and asarray of a CuPy array keep a
    transposed or Fortran-ordered layout (order "K"), so what they make is then not
    C-contiguous, and a kernel launch refuses it: the stand-in's layouts are CuPy's own
    (cupy._creation.basic._new_like_order_and_strides, NumPy's rule), not always C order."""
    from cupy._creation.basic import _new_like_order_and_strides

    def contiguous_strides(shape, itemsize, order):
        dims = shape if order == "C" else shape[::-1]
        strides, step = [], itemsize
        for d in reversed(dims):
            strides.append(step)
            step *= d
        strides = strides[::-1]
        return tuple(strides if order == "C" else strides[::-1])
    x = fake_cupy.asarray(np.arange(24.0).reshape(2, 3, 4))
    for view in (x, x.T, x.transpose(1, 0, 2), x[:, ::2], x.transpose(0, 2, 1)):
        order, strides, _ = _new_like_order_and_strides(view, view.dtype, "K", get_memptr=False)
        want = tuple(strides) if strides is not None else \
            contiguous_strides(view.shape, view.itemsize, order)
        for made in (fake_cupy.empty_like(view), fake_cupy.zeros_like(view),
                     view.astype(np.float64), view.copy(order="K"), fake_cupy.array(view)):
            assert made.shape == view.shape and made.strides == want, (view.strides, made.strides)
        half = view.astype(np.float32)                     # the same order, 4-byte items
        assert half.strides == tuple(s // 2 for s in want)
        assert np.array_equal(fake_cupy.array(view).get(), view.get())
    assert fake_cupy.empty_like(x.T).flags.f_contiguous
    assert not fake_cupy.empty_like(x.T).flags.c_contiguous
    assert fake_cupy.empty_like(x.T, order="C").flags.c_contiguous
    assert x.T.copy().flags.c_contiguous                   # copy's default order is "C"
