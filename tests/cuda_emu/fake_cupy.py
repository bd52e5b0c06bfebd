"""A host stand-in for CuPy, so that minicnn's CUDA path runs on machines without a GPU (tests).

What is real: the kernels. ``RawModule`` compiles the CUDA C++ of kernels/*.cu with the host
compiler against emu.h (CUDA's grid of blocks and threads, __syncthreads through fibers), and
a launch runs them over the same grid the GPU would. ``gemm_strided_batched`` computes exactly
what cuBLAS's column-major strided-batched GEMM computes from its arguments (leading
dimensions, strides, offsets, transposes; C is not read when beta == 0), with bounds checks.

What is emulated: CuPy's array type, as a wrapper around a NumPy array that keeps CuPy's rules
where they differ from NumPy's, so host/device mix-ups fail here as on a GPU:
  - no implicit conversion to NumPy (np.asarray(d) raises TypeError; use .get());
  - NumPy arrays are not accepted by the array's ufuncs, nor as values of d[...] = (CuPy
    raises for a non-scalar NumPy value there);
  - reductions and indexing return 0-d arrays, not scalars;
  - empty_like, astype, asarray & co keep a transposed or Fortran-ordered layout (order "K"),
    so what they make from such an array is not C-contiguous, as on a GPU;
  - numpy.* functions called on these arrays dispatch (NEP 18) to functions of this module,
    which exist only for the names CuPy has (see _NUMPY_NAMES).
New arrays from ``empty`` hold NaN (garbage on a GPU), and every array made here is guarded by
canary bytes before and after its memory, checked after each kernel launch: a kernel writing out
of bounds fails the test; the canary reads as NaN in float32 and float64, so a kernel reading
just out of bounds (garbage or a fault on a GPU) puts NaN into what it computes from it. Kernel
arguments are checked against the kernel's C++ signature (types, pointer dtypes, contiguity),
which CuPy itself does not do.
"""

import ctypes
import hashlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

HERE = os.path.dirname(os.path.abspath(__file__))
_GUARD = 64
# The guard bytes repeat the word 0x7FFDA5A5 in step with the buffer's start (raw[i] is byte i % 4
# of it): a float32 or float64 element read next to an array is a quiet NaN, and no kernel writes
# that pattern (NaN from arithmetic is 0x7FC00000 / 0x7FF8000000000000)
_CANARY_WORD = np.frombuffer(np.array(0x7FFDA5A5, "<u4").tobytes(), np.uint8)


def _canary(start, n):
    """The guard bytes at raw offsets start .. start + n - 1."""
    return np.resize(_CANARY_WORD, start % 4 + n)[start % 4:]


class CUDARuntimeError(RuntimeError):
    pass


# --- arrays ---------------------------------------------------------------------------------------

class _Buffer:
    """Host memory with canary bytes on both sides."""

    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.raw = np.empty(nbytes + 2 * _GUARD, np.uint8)
        self.raw[:_GUARD] = _canary(0, _GUARD)
        self.raw[_GUARD + nbytes:] = _canary(_GUARD + nbytes, _GUARD)

    def array(self, shape, dtype):
        return self.raw[_GUARD:_GUARD + self.nbytes].view(dtype).reshape(shape)

    def intact(self):
        return bool(np.array_equal(self.raw[:_GUARD], _canary(0, _GUARD)) and np.array_equal(
            self.raw[_GUARD + self.nbytes:], _canary(_GUARD + self.nbytes, _GUARD)))


def _new(shape, dtype, fill=None):
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    buf = _Buffer(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    a = buf.array(shape, dtype)
    if fill is not None:
        a[...] = fill
    elif dtype.kind in "fc":
        a[...] = np.nan                      # what a fresh cudaMalloc holds: not zeros
    else:
        a.view(np.uint8)[...] = 0x5A
    return ndarray._wrap(a, buf)


class _Data:
    def __init__(self, array):
        self.ptr = array.ctypes.data


class _Flags:
    def __init__(self, a):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = True


def _reject_numpy(x):
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}")


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x, buf=None):
    if isinstance(x, np.ndarray):
        return ndarray._wrap(x, buf if (buf is not None and _shares(x, buf)) else None)
    if isinstance(x, np.generic):
        return ndarray._wrap(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v, buf) for v in x)
    if isinstance(x, list):
        return [_wrap(v, buf) for v in x]
    return x


def _shares(a, buf):
    return bool(a.size) and np.may_share_memory(a, buf.raw)


class ndarray(NDArrayOperatorsMixin):
    """CuPy's ndarray, held on the host."""
    __module__ = "cupy_emu"
    __array_priority__ = 100

    def __init__(self, shape, dtype=float):
        made = _new(shape, dtype)
        self._a, self._buf = made._a, made._buf

    @classmethod
    def _wrap(cls, a, buf=None):
        obj = cls.__new__(cls)
        obj._a, obj._buf = a, buf
        return obj

    # attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: _Data(self._a))
    device = property(lambda self: Device(0))
    T = property(lambda self: _wrap(self._a.T, self._buf))

    # conversions: only explicit ones, as CuPy
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        self._a[...] = arr

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return repr(self._a).replace("array", "emu_array", 1)

    def __format__(self, spec):
        return format(self._a, spec) if self._a.ndim == 0 else repr(self)

    # indexing
    def __getitem__(self, key):
        _check_key(key)
        return _wrap(self._a[_unwrap(key)], self._buf)

    def __setitem__(self, key, value):
        _check_key(key)
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a[_unwrap(key)] = _unwrap(value)

    # NumPy protocols, CuPy's way
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for x in inputs:
            _reject_numpy(x)
        if "out" in kwargs:
            outs = kwargs["out"]
            if not all(isinstance(o, ndarray) for o in outs):
                raise TypeError("out must be a cupy array")
            kwargs["out"] = tuple(o._a for o in outs)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if "out" in kwargs and method != "at":
            return outs[0] if len(outs) == 1 else outs
        return None if method == "at" else _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        name = func.__name__
        submodule = func.__module__.split(".")[1:]
        target = _THIS
        for part in submodule:
            target = getattr(target, part, None)
            if target is None:
                return NotImplemented
        impl = getattr(target, name, None)
        if impl is None or impl is func:
            return NotImplemented
        return impl(*args, **kwargs)

    # methods CuPy has
    def _method(name):
        def call(self, *args, **kwargs):
            _check_keywords(name, kwargs, method=True)
            for a in args:
                _reject_numpy(a)
            return _wrap(getattr(self._a, name)(*_unwrap(args), **_unwrap(kwargs)), self._buf)
        call.__name__ = name
        return call

    for _name in ("reshape", "ravel", "transpose", "swapaxes", "squeeze", "view", "sum",
                  "mean", "var", "std", "max", "min", "prod", "any", "all", "argmax", "argmin",
                  "cumsum", "clip", "dot", "take", "repeat", "nonzero", "round", "conj",
                  "flatten", "fill"):
        locals()[_name] = _method(_name)
    del _name

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        out = _new_like(self._a, dtype, order)
        out._a[...] = self._a
        return out

    def copy(self, order="C"):
        out = _new_like(self._a, order=order)
        out._a[...] = self._a
        return out

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()


def _check_key(key):
    for k in (key if isinstance(key, tuple) else (key,)):
        if isinstance(k, np.ndarray):
            raise TypeError("a NumPy array cannot index a cupy array")


# --- module functions ---------------------------------------------------------------------------

def empty(shape, dtype=float, order="C"):
    return _new(shape, dtype)


def zeros(shape, dtype=float, order="C"):
    return _new(shape, dtype, 0)


def ones(shape, dtype=float, order="C"):
    return _new(shape, dtype, 1)


def full(shape, fill_value, dtype=None, order="C"):
    if dtype is None:
        dtype = np.asarray(_unwrap(fill_value)).dtype
    return _new(shape, dtype, _unwrap(fill_value))


def _new_like(a, dtype=None, order="K", shape=None, fill=None):
    """A new array shaped like NumPy array ``a`` in the memory layout CuPy gives it: order "K"
    (the default of empty_like, astype, ...) keeps a transposed or Fortran-ordered layout, as
    NumPy does, so the result is then not C-contiguous (which a kernel launch refuses)."""
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if shape is not None:
        return _new(shape, dtype, fill)
    layout = np.empty_like(a, dtype=dtype, order=order)
    if layout.flags.c_contiguous:
        return _new(a.shape, dtype, fill)
    made = _new(layout.size, dtype, fill)               # the same elements, permuted strides
    return ndarray._wrap(np.lib.stride_tricks.as_strided(made._a, layout.shape, layout.strides),
                         made._buf)


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):      # CuPy's name
    return _new_like(prototype._a, dtype, order, shape)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    return _new_like(a._a, dtype, order, shape, 0)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    return _new_like(a._a, dtype, order, shape, 1)


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    return _new_like(a._a, dtype, order, shape, _unwrap(fill_value))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0):
    src = np.asarray(_unwrap(obj), dtype=dtype)
    out = _new_like(src, order=order) if isinstance(obj, ndarray) else _new(src.shape, src.dtype)
    out._a[...] = src
    return out


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return array(a, dtype)


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a._a.flags.c_contiguous and \
            (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    if not isinstance(a, ndarray):
        _reject_numpy(a)
    return array(a, dtype)


def asnumpy(a, stream=None, order="C", out=None):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*args):
    return _THIS if any(isinstance(a, ndarray) for a in args) else np


# --- CuPy's keywords ---------------------------------------------------------------------------
# The methods and functions above hand their keywords to NumPy, which takes more than CuPy does
# (x.sum(where=...), x.max(initial=...)): where CuPy itself is installed (CI installs it, no GPU
# needed), a keyword CuPy's function or method does not take fails here as it would on a GPU.

def _real_parameters(name, method):
    """The parameter names of CuPy's function or ndarray method ``name``, or None where CuPy is
    absent or the callable does not say (ufuncs, *args/**kwargs)."""
    key = (name, method)
    if key not in _REAL_PARAMETERS:
        _REAL_PARAMETERS[key] = _read_parameters(name, method)
    return _REAL_PARAMETERS[key]


_REAL_PARAMETERS = {}


def _read_parameters(name, method):
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        import cupy
    except Exception:                             # a broken CUDA installation: nothing to compare
        return None
    fn = getattr(cupy.ndarray if method else cupy, name, None)
    if fn is None:
        return None
    try:
        params = inspect.signature(fn).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind != p.VAR_POSITIONAL}
    except (TypeError, ValueError):               # Cython methods: the docstring's first line
        first = (fn.__doc__ or "").strip().splitlines()[:1]
        match = re.match(r"[\w.]+\((.*)\)", first[0]) if first else None
        if match is None or "**" in match.group(1):
            return None
        names = set()
        for part in match.group(1).split(","):
            part = part.split("=")[0].strip().lstrip("*").split()
            if part:
                names.add(part[-1])
        return names


def _check_keywords(name, kwargs, method=False):
    if not kwargs:
        return
    accepted = _real_parameters(name, method)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        what = f"cupy.ndarray.{name}" if method else f"cupy.{name}"
        raise TypeError(f"{what}() got unexpected keyword argument(s) {unknown}: CuPy's takes "
                        f"{sorted(accepted)} (NumPy's takes more)")


# NumPy names CuPy has too; calls on our arrays go to NumPy and come back wrapped
_NUMPY_NAMES = {
    "exp", "log", "sqrt", "tanh", "abs", "absolute", "sign", "maximum", "minimum", "add",
    "subtract", "multiply", "divide", "true_divide", "power", "negative", "isfinite", "isnan",
    "isinf", "floor", "ceil", "trunc", "log1p", "expm1", "where", "equal", "greater", "less",
    "greater_equal", "less_equal", "not_equal", "logical_and", "logical_or", "logical_not",
    "square", "reciprocal", "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin",
    "prod", "all", "any", "concatenate", "stack", "split", "array_split", "reshape", "ravel",
    "transpose", "moveaxis", "swapaxes", "broadcast_to", "expand_dims", "squeeze", "copyto",
    "matmul", "dot", "tensordot", "einsum", "take", "take_along_axis", "cumsum", "sort",
    "argsort", "bincount", "count_nonzero", "flatnonzero", "nonzero", "pad", "clip", "outer",
    "tile", "repeat", "isclose", "allclose", "ndim", "shape", "size", "arange", "linspace",
    "var", "std", "round", "around",
}
_TYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
          "uint32", "uint64", "bool_", "intp", "dtype", "newaxis", "pi", "e", "inf", "nan",
          "finfo", "iinfo", "result_type", "promote_types")


def _passthrough(name):
    fn = getattr(np, name)

    def call(*args, **kwargs):
        _check_keywords(name, kwargs)
        if args:
            first = args[0]
            if isinstance(first, (list, tuple)):
                for x in first:
                    _reject_numpy(x)
            elif name not in ("arange", "linspace"):
                _reject_numpy(first)
        if "out" in kwargs and kwargs["out"] is not None:
            out = kwargs["out"]
            kwargs["out"] = out._a
            fn(*_unwrap(args), **_unwrap(kwargs))
            return out
        return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))
    call.__name__ = name
    return call


_PASSTHROUGHS = {}


def __getattr__(name):
    if name in _NUMPY_NAMES:
        # kept apart from the module's globals: `all`, `any`, `sum`, `max`, ... there would
        # shadow the builtins this module's own code calls (a cupy.all(...) made
        # `all(isinstance(...) for ...)` in __array_ufunc__ a read of a device array)
        if name not in _PASSTHROUGHS:
            _PASSTHROUGHS[name] = _passthrough(name)
        return _PASSTHROUGHS[name]
    if name in _TYPES:
        return getattr(np, name)
    raise AttributeError(f"the CuPy stand-in has no '{name}' (does CuPy have it? add it to "
                         "_NUMPY_NAMES if so)")


# --- kernels: CUDA C++ compiled for the host ------------------------------------------------------

_CODES = {"f": np.float32, "d": np.float64, "i": np.int32, "q": np.int64, "?": np.bool_,
          "B": np.uint8}
_CTYPES = {"f": ctypes.c_float, "d": ctypes.c_double, "i": ctypes.c_int32,
           "q": ctypes.c_int64, "?": ctypes.c_bool, "B": ctypes.c_uint8}


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "minicnn-cuda-emu")
    try:
        os.makedirs(path, exist_ok=True)
        return path
    except OSError:
        return tempfile.mkdtemp(prefix="minicnn-cuda-emu-")


def compiler():
    return os.environ.get("CXX", "g++")


def _build(source, names):
    launchers = []
    for i, name in enumerate(names):
        launchers.append(
            f'extern "C" const char* emu_launch_{i}(unsigned gx, unsigned gy, unsigned gz, '
            f'unsigned bx, unsigned by, unsigned bz, int fibered, void** args) '
            f'{{ return emu::launch(&{name}, gx, gy, gz, bx, by, bz, fibered, args); }}\n'
            f'extern "C" const char* emu_signature_{i}() {{ return emu::signature(&{name}); }}\n')
    text = '#include "emu.h"\n' + source + "\n" + "".join(launchers)
    flags = ["-std=c++17", "-O1", "-fPIC", "-shared", "-I", HERE]
    with open(os.path.join(HERE, "emu.h"), "rb") as f:
        header = f.read()
    key = hashlib.sha256(header + text.encode() + " ".join(flags).encode()).hexdigest()[:24]
    lib = os.path.join(_cache_dir(), f"k{key}.so")
    if not os.path.exists(lib):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "module.cpp")
            with open(src, "w") as f:
                f.write(text)
            out = os.path.join(tmp, "module.so")
            done = subprocess.run([compiler(), *flags, src, "-o", out], capture_output=True,
                                  text=True)
            if done.returncode:
                raise RuntimeError(f"host compile of the kernels failed:\n{done.stderr[-6000:]}")
            os.replace(out, lib + f".{os.getpid()}")
            os.replace(lib + f".{os.getpid()}", lib)
    return ctypes.CDLL(lib)


class RawModule:
    def __init__(self, code=None, path=None, options=(), name_expressions=(), **kwargs):
        if code is None:
            with open(path) as f:
                code = f.read()
        self.names = list(name_expressions)
        self.fibered = {name: _synchronizes(code, name.split("<")[0]) for name in self.names}
        self.lib = _build(code, self.names)

    def get_function(self, name):
        if name not in self.names:
            raise CUDARuntimeError(f"{name} is not among the module's name_expressions")
        return RawKernel._from_module(self, self.names.index(name), name)


def _synchronizes(code, kernel):
    """Whether the body of ``kernel`` reaches __syncthreads (directly or via mc::block_sum): it
    then runs as fibers; other kernels run their threads one after another (much faster)."""
    m = re.search(rf"__global__\s+void\s+{re.escape(kernel)}\s*\(", code)
    if m is None:
        return True
    start = code.index("{", m.end())
    depth, i = 0, start
    for i in range(start, len(code)):
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        if depth == 0:
            break
    body = code[start:i + 1]
    return "__syncthreads" in body or "block_sum" in body


class RawKernel:
    @classmethod
    def _from_module(cls, module, index, name):
        k = cls.__new__(cls)
        k.module, k.name = module, name
        k.launcher = getattr(module.lib, f"emu_launch_{index}")
        k.launcher.restype = ctypes.c_char_p
        signature = getattr(module.lib, f"emu_signature_{index}")
        signature.restype = ctypes.c_char_p
        k.signature = signature().decode().rstrip(",").split(",")
        return k

    def __call__(self, grid, block, args, *, shared_mem=0):        # CuPy's: no stream
        grid, block = check_launch(self.name, grid, block)
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments "
                            f"({','.join(self.signature)}), got {len(args)}")
        keep, pointers, buffers = [], [], []
        for i, (arg, code) in enumerate(zip(args, self.signature)):
            if code.endswith("*"):
                want = np.dtype(_CODES[code[0]])
                if not isinstance(arg, ndarray):
                    raise TypeError(f"{self.name} argument {i}: expected a device array of "
                                    f"{want}, got {type(arg).__name__}")
                if arg.dtype != want:
                    raise TypeError(f"{self.name} argument {i}: expected {want} data, got "
                                    f"{arg.dtype}")
                if not arg._a.flags.c_contiguous:
                    raise TypeError(f"{self.name} argument {i}: not C-contiguous")
                value = ctypes.c_void_p(arg._a.ctypes.data)
                if arg._buf is not None:
                    buffers.append(arg._buf)
            else:
                want = _CODES[code]
                if type(arg) is not want:
                    raise TypeError(f"{self.name} argument {i}: the kernel takes a "
                                    f"{np.dtype(want)} scalar here, got {type(arg).__name__} "
                                    "(CuPy would pass it as a different C type)")
                value = _CTYPES[code](arg.item())
            keep.append(value)
            pointers.append(ctypes.cast(ctypes.pointer(value), ctypes.c_void_p))
        argv = (ctypes.c_void_p * max(1, len(pointers)))(*pointers)
        error = self.launcher(*(ctypes.c_uint(v) for v in grid + block),
                              ctypes.c_int(int(self.module.fibered[self.name])), argv)
        if error:
            raise CUDARuntimeError(f"{self.name}: {error.decode()}")
        for buf in buffers:
            if not buf.intact():
                raise CUDARuntimeError(f"{self.name} wrote outside an array it was given "
                                       "(guard bytes overwritten)")


def _dims(d):
    d = tuple(int(v) for v in (d if isinstance(d, (tuple, list)) else (d,)))
    if any(v <= 0 for v in d):
        raise CUDARuntimeError(f"invalid launch dimensions {d}")
    return d + (1,) * (3 - len(d))


GRID_LIMITS = (2**31 - 1, 65535, 65535)        # CUDA's largest gridDim.x, .y, .z
BLOCK_LIMITS = (1024, 1024, 64)                 # blockDim.x, .y, .z; 1024 threads in all


def check_launch(name, grid, block):
    """(grid, block) as 3-tuples, or the error a GPU gives a launch outside CUDA's limits
    (cudaErrorInvalidConfiguration): the emulator itself would run any grid."""
    grid, block = _dims(grid), _dims(block)
    if any(v > most for v, most in zip(grid + block, GRID_LIMITS + BLOCK_LIMITS)) or \
            int(np.prod(block)) > 1024:
        raise CUDARuntimeError(f"{name}: invalid configuration argument: grid {grid}, block "
                               f"{block} (CUDA's limits: grid {GRID_LIMITS}, block "
                               f"{BLOCK_LIMITS}, 1024 threads)")
    return grid, block


# --- cuBLAS: strided-batched GEMM, column-major ---------------------------------------------------

def gemm_strided_batched(opa, opb, m, n, k, alpha, a, offset_a, lda, stride_a, b, offset_b, ldb,
                         stride_b, beta, c, offset_c, ldc, stride_c, batch):
    """What cublas<t>gemmStridedBatched computes: C_i = alpha op(A_i) op(B_i) + beta C_i, column
    major, op(A) m x k, op(B) k x n, C m x n; C is not read when beta == 0."""
    for arr in (a, b, c):
        if not isinstance(arr, ndarray) or not arr._a.flags.c_contiguous:
            raise TypeError("gemm operands must be contiguous device arrays")
    rows_a = m if opa == "N" else k
    rows_b = k if opb == "N" else n
    if lda < max(1, rows_a) or ldb < max(1, rows_b) or ldc < max(1, m):
        raise CUDARuntimeError(f"cuBLAS would refuse lda {lda}, ldb {ldb}, ldc {ldc} for "
                               f"{opa}{opb} m {m} n {n} k {k}")
    def view(arr, name, offset, rows, cols, ld, trans, stride):
        # column major: element (r, c) of the op'd matrix sits at offset + r + c * ld, or at
        # offset + r * ld + c when transposed; matrix i of the batch stride elements later.
        # Returns the (batch, rows, cols) view and the byte addresses [first, end) it spans.
        flat = arr._a.reshape(-1)
        step = (ld, 1) if trans == "T" else (1, ld)
        last = offset + (batch - 1) * stride + (rows - 1) * step[0] + (cols - 1) * step[1]
        if rows and cols and (offset < 0 or last >= flat.size):
            raise CUDARuntimeError(f"gemm: {name} reaches element {last} of {flat.size}")
        item = flat.itemsize
        span = (flat.ctypes.data + offset * item, flat.ctypes.data + (last + 1) * item) \
            if rows and cols else (0, 0)
        return np.lib.stride_tricks.as_strided(
            flat[offset:], shape=(batch, rows, cols),
            strides=(stride * item, step[0] * item, step[1] * item)), span
    a3, a_span = view(a, "A", offset_a, m, k, lda, opa, stride_a)
    b3, b_span = view(b, "B", offset_b, k, n, ldb, opb, stride_b)
    c3, c_span = view(c, "C", offset_c, m, n, ldc, "N", stride_c)
    # cuBLAS writes C while it reads A and B, the batch's C matrices at once: C overlapping A, B
    # or another C_i is a race there (computing first and writing after, this one gets it right);
    # overlap of A or B with C is judged by the address ranges they span
    if batch > 1 and m and n and stride_c < (n - 1) * ldc + m:
        raise CUDARuntimeError(f"gemm: the {batch} C matrices overlap (stride_c {stride_c}, "
                               f"ldc {ldc}, m {m}, n {n})")
    for name, span in (("A", a_span), ("B", b_span)):
        if span[0] < c_span[1] and c_span[0] < span[1]:
            raise CUDARuntimeError(f"gemm: C's memory overlaps {name}'s")
    t = c.dtype.type
    value = t(alpha) * np.matmul(a3, b3) if k else np.zeros((batch, m, n), c.dtype)
    if beta != 0:
        value = value + t(beta) * c3
    c3[...] = value


# --- devices, streams, events, pinned memory ------------------------------------------------------

class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: device {self.id} (the emulator "
                                   "has one)")

    compute_capability = "90"

    def use(self):
        return self

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


class Stream:
    ptr = 0

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Event:
    done = True                    # the host emulator's work is done when its call returns

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


def _device_count():
    return 1


def _properties(device):
    return {"name": b"minicnn host emulator", "multiProcessorCount": 1, "clockRate": 1000000,
            "totalGlobalMem": 16 << 30, "major": 9, "minor": 0}


cuda = types.SimpleNamespace(
    Device=Device, Stream=Stream, Event=Event,
    runtime=types.SimpleNamespace(getDeviceCount=_device_count,
                                  getDeviceProperties=_properties,
                                  CUDARuntimeError=CUDARuntimeError),
    get_current_stream=lambda: Stream(),
    alloc_pinned_memory=lambda nbytes: bytearray(max(1, int(nbytes))),
    get_elapsed_time=lambda start, end: 0.0,
)

_THIS = sys.modules[__name__]
