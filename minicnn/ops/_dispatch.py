"""Op: one mathematical operation with up to three implementations, picked per call.

    conv2d_forward = Op("conv2d_forward")

    @conv2d_forward.impl("ref")          # readable NumPy: the specification
    def _conv2d_forward_ref(x, w, b, *, geom, group=1): ...

    @conv2d_forward.impl("cpu")          # fast CPU body (C++ or numba), tested against "ref"
    @conv2d_forward.impl("cuda")         # CuPy + kernels/*.cu, tested against "ref"

Ops return new arrays. Those the layers call on large blobs also take ``out=``, NumPy's
convention: the result is written into that array (which may be an input, when the net runs the
layer in place) and returned, so the fast paths skip a temporary and a copy.

Calling the op dispatches on the first array argument: a CuPy array goes to "cuda"; otherwise
"cpu" when one is registered (unless MINICNN_CPU=ref), else "ref". ``op.impls["ref"]`` calls one
implementation directly, which is what tests and students do.
"""

import os


class Op:
    KINDS = ("ref", "cpu", "cuda")

    def __init__(self, name):
        self.name = name
        self.impls = {}              # kind -> function, for the kinds this machine can run
        self.declared = set()        # every kind written for the op, runnable here or not
        self.unavailable = {}        # kind -> impl whose library is missing (for emulators)

    def impl(self, kind, available=True):
        """Decorator registering an implementation; ``available=False`` skips it (its library
        is missing), so op files import everywhere."""
        if kind not in self.KINDS:
            raise ValueError(f"impl kind must be one of {self.KINDS}, not {kind!r}")

        def decorate(fn):
            self.declared.add(kind)
            if available:
                if kind in self.impls:
                    raise ValueError(f"{self.name}: '{kind}' is registered twice")
                self.impls[kind] = fn
            else:
                self.unavailable[kind] = fn
            return fn
        return decorate

    def pick(self, array):
        if type(array).__module__.startswith("cupy"):
            if "cuda" not in self.impls:
                raise NotImplementedError(f"{self.name} has no CUDA implementation")
            return self.impls["cuda"]
        if "cpu" in self.impls and os.environ.get("MINICNN_CPU", "") != "ref":
            return self.impls["cpu"]
        return self.impls["ref"]

    def __call__(self, *args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        if isinstance(first, (list, tuple)) and first:       # a list of arrays (Eltwise)
            first = first[0]
        return self.pick(first)(*args, **kwargs)

    def __repr__(self):
        return f"<op {self.name}: {', '.join(self.impls)}>"


def write_out(out, value):
    """``value`` written into ``out`` and ``out`` returned, or ``value`` when out is None: how a
    reference impl honours an ``out=`` argument."""
    if out is None:
        return value
    if value is not out and not _same_memory(value, out):
        out[...] = value
    return out


def _same_memory(a, b):
    """a and b are the same elements in the same layout (a view of out, reshaped back)."""
    return a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype and \
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
