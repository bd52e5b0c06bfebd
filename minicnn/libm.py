"""The C library's pow and exp, for the scalars Caffe's C++ computes with them.

In Caffe a float net's ``pow(float, float)`` and ``exp(float)`` are powf and expf: its
util/mkl_alternate.hpp includes <math.h>, which (libstdc++ of GCC 6 and later) brings std's
float overloads into the global namespace, where Caffe's unqualified calls find them
(SGDSolver::GetLearningRate's inv, poly and sigmoid, Power's constant output). NumPy computes
neither: its float32 exp and power ufuncs, on arrays and on scalars alike, are its own SIMD
code, up to a few ulps off glibc's expf and powf (only the ``**`` of two float32 scalars calls
powf). So these call the C library through ctypes; where none is found, NumPy's float32 scalar
``**`` and Python's math.exp (a double exp) rounded once stand in.
"""

import ctypes
import ctypes.util
import functools
import math

import numpy as np

__all__ = ["c_math"]


class _CMath:
    def __init__(self, dtype):
        self.type = np.dtype(dtype).type
        single = self.type is np.float32
        c_type = ctypes.c_float if single else ctypes.c_double
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
            self._pow = getattr(lib, "powf" if single else "pow")
            self._exp = getattr(lib, "expf" if single else "exp")
        except (OSError, AttributeError):
            self._pow = self._exp = None
            return
        for fn, arity in ((self._pow, 2), (self._exp, 1)):
            fn.restype, fn.argtypes = c_type, [c_type] * arity

    def pow(self, x, y):
        """x^y in this float type, C's pow (powf for float32)."""
        if self._pow is None:
            with np.errstate(all="ignore"):
                return self.type(self.type(x) ** self.type(y))
        return self.type(self._pow(x, y))

    def exp(self, x):
        """e^x in this float type, C's exp (expf for float32); inf where it overflows."""
        if self._exp is None:        # Python's math.exp is the C library's double exp
            try:
                value = math.exp(float(x))
            except OverflowError:
                value = math.inf
            with np.errstate(over="ignore"):
                return self.type(value)
        return self.type(self._exp(x))


@functools.lru_cache(maxsize=None)
def c_math(dtype):
    """pow and exp of the C library for float32 (powf, expf) or float64 (pow, exp) values."""
    return _CMath(np.dtype(dtype).type)
