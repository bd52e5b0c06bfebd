"""The math of every layer as pure functions on arrays: ``<op>_forward`` / ``<op>_backward``.

Each op is an ``Op`` with a NumPy reference implementation ("ref", the specification) and, where
it pays, faster ones ("cpu", "cuda"), all tested against the reference. Import and call them on
NumPy arrays to study a layer without a Net:

    from minicnn.ops import relu_forward, relu_backward
    y = relu_forward(x, negative_slope=0.1)

Every module here is imported with the package; its Ops (and the names in its ``__all__``)
become attributes of ``minicnn.ops``.
"""

import importlib
import pkgutil

from minicnn.ops._dispatch import Op

__all__ = ["Op"]
for _module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module_info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_module_info.name}")
    _public = getattr(_module, "__all__", None) or [
        n for n, v in vars(_module).items() if isinstance(v, Op)]
    for _name in _public:
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
