"""minicnn: a small CNN engine that reads and runs Caffe nets, written to be read.

    import minicnn
    net = minicnn.Net("deploy.prototxt", "weights.caffemodel", minicnn.TEST)
    probs = net.forward(data=batch)["prob"]

    solver = minicnn.get_solver("solver.prototxt")      # or minicnn.SGDSolver(...)
    solver.solve()
"""

from minicnn import deploy, io, layers, ops, visualize  # noqa: F401  (layers registers them)
from minicnn.blob import Blob
from minicnn.errors import LayerError, MinicnnError, NetError, PrototxtError, WireFormatError
from minicnn.layer import LAYERS, Layer, create_layer, register
from minicnn.net import TEST, TRAIN, Net
from minicnn.rng import set_random_seed
from minicnn.sgd_solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                                 RMSPropSolver, SGDSolver)
from minicnn.solver import Solver, TrainingDiverged, get_solver

__version__ = "0.1.0"

__all__ = ["Blob", "Layer", "LAYERS", "Net", "TRAIN", "TEST", "create_layer", "register",
           "ops", "set_random_seed", "MinicnnError", "PrototxtError", "WireFormatError",
           "NetError", "LayerError", "Solver", "get_solver", "TrainingDiverged", "SGDSolver",
           "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "io", "deploy", "visualize"]
