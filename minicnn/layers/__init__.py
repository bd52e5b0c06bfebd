"""Caffe's layers, one module per family (conv.py, pooling.py, neuron.py, ...).

Every module here is imported when the package is, which registers its layer classes by their
Caffe type names (see ``minicnn.layer.LAYERS``). Adding a layer means adding a class with
``@register("TypeName")`` to a module in this folder; nothing else needs to change.
"""

import importlib
import pkgutil

from minicnn.layer import Layer

__all__ = []
for _module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module_info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_module_info.name}")
    for _name, _obj in vars(_module).items():
        if isinstance(_obj, type) and issubclass(_obj, Layer) \
                and _obj.__module__ == _module.__name__:
            globals()[_name] = _obj
            __all__.append(_name)
