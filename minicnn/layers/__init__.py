"""Caffe's layers, one module per family (conv.py, pooling.py, neuron.py, ...).

Every module here is imported when the package is, which registers its layer classes by their
Caffe type names (see ``minicnn.layer.LAYERS``). Adding a layer means adding a class with
``@register("TypeName")`` to a module in this folder; nothing else needs to change.

To learn backprop from them, read in this order (the base class first: ../layer.py):

    neuron.py         ReLU, Sigmoid, TanH: one input, one output, the chain rule at its simplest
    inner_product.py  InnerProduct: a matrix product, gradients for the input, weights and bias
    conv.py           Convolution, Deconvolution: the same through im2col (ops/conv.py)
    pooling.py        MAX (the gradient goes to the winner), AVE, SPP
    softmax.py        Softmax, then loss.py: SoftmaxWithLoss, where the gradient starts
    normalization.py  BatchNorm (statistics of the batch in the gradient), Scale, Bias
    structure.py      Split, Concat, Eltwise: how gradients add up and are routed
    lrn.py, recurrent.py, interp.py, argmax.py, python_layer.py; data.py and segmentation.py
                      read the inputs

docs/learn.md walks this order with a runnable snippet per stage. A layer here is the graph
side (shapes, fields, which blob is which); its forward and backward call an op in ../ops/,
whose file docstring gives the formula and why the backward is what it is. In an op file, the
``# --- reference`` section (plain NumPy) is the spec; the ``fast CPU`` and ``CUDA`` sections
below it compute the same numbers faster (tests/ops/ checks them against it) and can be skipped
when learning. The same goes for a layer's ``out=``/``dx_out=`` arguments (write into the
blob, no copy) and ``dw_acc=`` (add onto the parameter diff): plumbing, not math.

The other modules are the Caffe forks' layers, one file per fork family: ssd.py, ssd_eval.py
and annotated_data.py (SSD), frcnn.py (Fast/Faster R-CNN, R-FCN), detection.py (YOLO),
deeplab.py (DeepLab), face.py and focal_loss.py (face recognition, focal
losses). Each layer's math is a pure function in ../ops/, one file per op.
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


def __getattr__(name):
    """pycaffe's ``from caffe import layers as L`` is net_spec's layer maker, and Caffe's
    tutorials write ``L.Convolution(...)``; this package keeps minicnn's layer modules, so a
    capitalised name that is not one of them (every Caffe layer type) makes a NetSpec layer,
    as ``minicnn.net_spec.layers`` does. Module and class names here never equal a type."""
    if name[:1].isupper():
        from minicnn.net_spec import layers as spec_layers
        return getattr(spec_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
