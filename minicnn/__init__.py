"""minicnn: a small CNN engine that reads and runs Caffe nets, written to be read.

    import minicnn
    net = minicnn.Net("deploy.prototxt", "weights.caffemodel", minicnn.TEST)
    probs = net.forward(data=batch)["prob"]

    solver = minicnn.get_solver("solver.prototxt")      # or minicnn.SGDSolver(...)
    solver.solve()
"""

import os as _os
import sys as _sys

if _os.environ.get("MINICNN_NUM_THREADS") and "numpy" not in _sys.modules:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(_var, _os.environ["MINICNN_NUM_THREADS"])   # BLAS reads them once

from minicnn import deploy, io, layers, native, ops, visualize  # noqa: F401,E402  (registers layers)
from minicnn.blob import Blob
from minicnn.classifier import Classifier
from minicnn.cuda import set_device, set_mode_cpu, set_mode_gpu
from minicnn.detection import detect
from minicnn.errors import LayerError, MinicnnError, NetError, PrototxtError, WireFormatError
from minicnn.layer import LAYERS, create_layer, layer_type_list, register
from minicnn.layers.python_layer import PythonLayerBase
from minicnn.net import TEST, TRAIN, Net
from minicnn.net_spec import NetSpec, params, to_proto
from minicnn.rcnn import Detector
from minicnn.rng import set_random_seed
from minicnn.sgd_solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                                 RMSPropSolver, SGDSolver)
from minicnn.solver import Solver, TrainingDiverged, get_solver

# pycaffe's caffe.Layer is the base of Python layers, so `import minicnn as caffe` keeps user
# layers unchanged; minicnn's own layers derive from minicnn.layer.Layer.
Layer = PythonLayerBase

__version__ = "0.1.0"

__all__ = ["Blob", "Layer", "LAYERS", "Net", "TRAIN", "TEST", "create_layer", "register",
           "ops", "set_random_seed", "MinicnnError", "PrototxtError", "WireFormatError",
           "NetError", "LayerError", "Solver", "get_solver", "TrainingDiverged", "SGDSolver",
           "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "io", "deploy", "visualize", "detect", "PythonLayerBase", "set_mode_gpu",
           "set_mode_cpu", "set_device", "NetSpec", "to_proto", "params", "Detector", "Classifier",
           "layer_type_list"]
