"""docs/pycaffe.md's names exist: every `minicnn.x` it gives, the Net, solver and blob
attributes it lists, and the commands of its tools table."""

import importlib
import os
import re

import pytest

import minicnn
from minicnn.cli import COMMANDS
from minicnn.proto import parse_text

DOC = open(os.path.join(os.path.dirname(__file__), "..", "docs", "pycaffe.md")).read()


def resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("dotted", sorted(set(re.findall(r"`(minicnn(?:\.\w+)+)", DOC))))
def test_every_minicnn_name_exists(dotted):
    resolve(dotted)


def listed(after, before):
    """The backticked names in the sentence from ``after`` up to ``before``."""
    sentence = DOC.split(after)[1].split(before)[0]
    return re.findall(r"`(\w+)`", sentence)


def test_the_net_solver_and_blob_attributes_exist(tmp_path):
    net_text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 2 dim: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc"
        inner_product_param { num_output: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "y" top: "loss" }"""
    net = minicnn.Net(parse_text(net_text), minicnn.TRAIN)
    solver = minicnn.SGDSolver(minicnn.proto.caffe_pb2.SolverParameter(
        net_param=parse_text(net_text), base_lr=0.1), log=lambda m: None)
    for obj, after, before in [(net, "A `Net` has pycaffe's attributes and methods:", "A solver"),
                               (solver, "A solver has", "A blob has"),
                               (net.blobs["x"], "A blob has", "\n\n")]:
        names = listed(after, before)
        assert len(names) >= 8
        missing = [n for n in names if not hasattr(obj, n)]
        assert not missing, f"{type(obj).__name__} lacks {missing}"


def test_the_tools_table_names_minicnn_commands():
    table = DOC.split("## Caffe's tools")[1]
    commands = re.findall(r"`minicnn ([\w-]+)", table)
    assert len(commands) >= 11
    assert [c for c in commands if c not in COMMANDS] == []
