"""Caffe's `Python` layer: a layer whose four methods are written by the user, in Python.

    layer {
      name: "loss"  type: "Python"
      bottom: "pred"  bottom: "label"  top: "loss"
      python_param { module: "my_layers"  layer: "EuclideanLoss"  param_str: "{'scale': 2}" }
      loss_weight: 1           # as in Caffe, a Python layer is a loss only if the net says so
    }

``module`` is imported from ``sys.path`` (as pycaffe does), else from the folder of the prototxt
that names it (``my_layers.py`` or a ``my_layers/`` package there); ``layer`` is a class in it.
The class follows pycaffe's protocol:

    class EuclideanLoss(minicnn.Layer):                  # pycaffe: caffe.Layer
        def setup(self, bottom, top): ...                  # once; self.param_str is the string
        def reshape(self, bottom, top): top[0].reshape(1)
        def forward(self, bottom, top): top[0].data[...] = ...
        def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = ...

The blobs are minicnn Blobs, which have pycaffe's interface: ``data`` and ``diff`` (NumPy arrays,
written in place), ``reshape(*shape)``, ``shape``, ``count``, ``num``, ``channels``, ``height``,
``width``. The instance also gets ``param_str``, ``phase`` (``minicnn.TRAIN`` or ``minicnn.TEST``,
pycaffe's ``caffe.TRAIN``/``caffe.TEST``) and ``blobs``, its learnable parameters: a list with
``add_blob(*shape)`` (learned by the solver and saved in the .caffemodel like any layer's).
A class that subclasses ``PythonLayerBase`` (which ``minicnn.Layer`` is, as ``caffe.Layer`` is
pycaffe's) is built as pycaffe builds it, with the LayerParameter (``cls(layer_param)``); any
other class with the four methods is built with ``cls()``. Porting a pycaffe layer: ``import
caffe`` -> ``import minicnn as caffe``, nothing else.

Security: building a net that has a Python layer imports and runs the named module: a
prototxt with Python layers is a program; run only those you trust. Reading a .caffemodel
never does this: weights are copied into the layers of the net you built (``Net.copy_from``
reads only names, types and blobs), whatever layer definitions the file carries.

As in Caffe, backward follows the diff rules of every layer (bottom diffs assigned, parameter
diffs accumulated), and the loss, when the layer is one, is seeded in ``top[0].diff`` with
its loss_weight. Errors raised by the user's code are reported as the layer's error, naming
the module, class and method and the file and line that raised.
"""

import importlib
import os
import sys
import traceback

import numpy as np

from minicnn.blob import Blob
from minicnn.errors import LayerError, MinicnnError
from minicnn.layer import Layer, register

__all__ = ["PythonLayer", "PythonLayerBase", "load_python_layer_class"]


class BlobVec(list):
    """A Python layer's parameter blobs: a list of Blobs with pycaffe's ``add_blob``."""

    def __init__(self, blobs=(), dtype=np.float32):
        super().__init__(blobs)
        self.dtype = np.dtype(dtype)

    def add_blob(self, *shape):
        blob = Blob(tuple(int(d) for d in (shape[0] if len(shape) == 1
                                            and not np.isscalar(shape[0]) else shape)),
                    self.dtype)
        self.append(blob)
        return blob


class PythonLayerBase:
    """The base class of user layers (pycaffe's ``caffe.Layer``). Subclasses override
    ``setup``, ``reshape``, ``forward`` and ``backward``; the defaults do nothing (``backward``
    leaves the diffs alone), so a data layer need only write ``setup``, ``reshape`` and
    ``forward``. Attributes set before ``setup``: ``param_str``, ``phase``, ``blobs``, and
    ``layer_param`` (the layer's LayerParameter)."""

    def __init__(self, layer_param=None):
        self.layer_param = layer_param
        self.param_str = layer_param.python_param.param_str if layer_param is not None else ""
        self.phase = None
        self.blobs = BlobVec()

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


def _import_from(module, folder):
    """Import ``module`` with ``folder`` first on sys.path (then restore sys.path)."""
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(module)
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass


def _user_frame(error, module):
    """'file:line' of the innermost traceback frame, preferring one in the user's module."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    mod = sys.modules.get(module)
    path = os.path.abspath(getattr(mod, "__file__", "") or "")
    mine = [f for f in frames if os.path.abspath(f.filename) == path]
    frame = (mine or frames)[-1]
    return f" at {frame.filename}:{frame.lineno}"


def load_python_layer_class(module, layer, folder=None):
    """The class ``layer`` of module ``module``, imported from sys.path or else from ``folder``
    (the prototxt's folder). Errors name what was looked for and where."""
    if not module or not layer:
        raise LayerError("python_param needs both module and layer (the Python module and the "
                         f"class in it); got module '{module}', layer '{layer}'")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or (module != e.name and not module.startswith(e.name + ".")):
            raise LayerError(f"python_param module '{module}': importing it failed: {e}") \
                from None
        candidates = [os.path.join(folder, *module.split(".")) + ".py",
                      os.path.join(folder, *module.split("."), "__init__.py")] if folder else []
        if not any(os.path.isfile(c) for c in candidates):
            where = f" nor in the prototxt's folder {folder}" if folder else ""
            parts = module.split(".")
            holder = "its folder" if len(parts) == 1 else f"the folder holding {parts[0]}/"
            raise LayerError(f"python_param module '{module}' is not on sys.path{where}; put "
                             f"{os.path.join(*parts)}.py next to the prototxt, or add {holder} "
                             "to PYTHONPATH") from None
        try:
            mod = _import_from(module, folder)
        except Exception as e:            # the user's module itself failed to import
            raise LayerError(f"python_param module '{module}' ({candidates[0]}) failed to "
                             f"import: {type(e).__name__}: {e}{_user_frame(e, module)}") \
                from e
    except Exception as e:
        raise LayerError(f"python_param module '{module}' failed to import: "
                         f"{type(e).__name__}: {e}{_user_frame(e, module)}") from e
    cls = getattr(mod, layer, None)
    if cls is None or not isinstance(cls, type):
        classes = sorted(n for n, v in vars(mod).items()
                         if isinstance(v, type) and v.__module__ == mod.__name__)
        raise LayerError(f"python_param: module '{module}' ({getattr(mod, '__file__', '?')}) has "
                         f"no class '{layer}'" + (f"; its classes: {', '.join(classes)}"
                                                  if classes else ""))
    if issubclass(cls, Layer) and not issubclass(cls, PythonLayerBase):
        raise LayerError(f"python_param: class '{layer}' of module '{module}' subclasses "
                         "minicnn.layer.Layer, the base of minicnn's built-in layers; a Python "
                         "layer subclasses minicnn.Layer (minicnn.PythonLayerBase, pycaffe's "
                         f"caffe.Layer): write class {layer}(minicnn.Layer)")
    missing = [m for m in ("setup", "reshape", "forward", "backward")
               if not callable(getattr(cls, m, None))]
    if missing:
        raise LayerError(f"python_param: class '{layer}' of module '{module}' lacks "
                         f"{', '.join(missing)} (a Python layer implements setup, reshape, "
                         "forward and backward; subclass minicnn.PythonLayerBase for defaults)")
    return cls


# Names minicnn asks its own layers with hasattr/getattr (data state for resumed runs, sharding
# for distributed runs): never answered from the user's object.
_MINICNN_PROBES = frozenset({"data_state", "restore_data_state", "set_shard", "counters",
                             "run_backward", "ignore_label", "num_classes"})


@register("Python")
class PythonLayer(Layer):
    """Caffe `Python`: the user's class (python_param module, layer) does the work with
    pycaffe's protocol: setup(bottom, top) once, then reshape, forward and
    backward(top, propagate_down, bottom) on minicnn Blobs; param_str reaches it as
    ``self.param_str``. Importing the module runs its code: see the module docstring."""
    param_field = "python_param"
    host_only = True             # the user's code computes with NumPy: a GPU net hands it copies

    def layer_setup(self, bottom, top):
        p = self.param.python_param
        self.where = f"python layer {p.module}.{p.layer}"
        cls = load_python_layer_class(p.module, p.layer, self.source_dir)
        try:
            impl = cls(self.param) if issubclass(cls, PythonLayerBase) else cls()
        except Exception as e:
            raise self._user_error("construction", e) from e
        impl.param_str = p.param_str
        self.set_up_impl(impl, bottom, top)

    def set_up_impl(self, impl, bottom, top):
        """Give the user's object its phase and parameter blobs (the message's weights, if
        any) and call its setup."""
        params = BlobVec(self.blobs, self.dtype)
        self.blobs = params
        impl.phase = self.phase
        impl.blobs = params
        self.impl = impl
        self._call("setup", bottom, top)
        if impl.blobs is not params:                # the user replaced the list: adopt it
            self.blobs = BlobVec(impl.blobs, self.dtype)
            impl.blobs = self.blobs

    def __getattr__(self, name):
        """pycaffe's net.layers[i] (and layer_dict[name]) of a Python layer is the user's own
        object, so code such as py-faster-rcnn's ``solver.net.layers[0].set_roidb(roidb)``
        reaches its methods and attributes: a name this layer lacks is looked up there."""
        impl = self.__dict__.get("impl")
        if impl is None or name.startswith("__") or name in _MINICNN_PROBES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(impl, name)

    def __setattr__(self, name, value):
        """Setting, through net.layers[i], an attribute the user's object has and this layer
        does not (``net.layers[0].batch_size = 8``) sets it on the user's object, as in
        pycaffe; any other name is this layer's own."""
        impl = self.__dict__.get("impl")
        if (impl is not None and name not in self.__dict__ and not name.startswith("_")
                and name not in _MINICNN_PROBES and not hasattr(type(self), name)
                and hasattr(impl, name)):
            setattr(impl, name, value)
        else:
            object.__setattr__(self, name, value)

    def reshape(self, bottom, top):
        self._call("reshape", bottom, top)

    def forward(self, bottom, top):
        self._call("forward", bottom, top)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", top, list(propagate_down), bottom)

    def _call(self, method, *args):
        try:
            getattr(self.impl, method)(*args)
        except MinicnnError:
            raise
        except Exception as e:
            raise self._user_error(method, e) from e

    def _user_error(self, method, error):
        module = self.param.python_param.module
        return LayerError(f"{self.where}: {method} raised {type(error).__name__}: {error}"
                          f"{_user_frame(error, module)}")
