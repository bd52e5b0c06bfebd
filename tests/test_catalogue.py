"""The layer catalogue: generated from the registry, and docs/layers.md kept current."""

import os

from minicnn import catalogue
from minicnn.cli import main
from minicnn.layer import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_layers_md_is_current():
    with open(os.path.join(REPO, "docs", "layers.md")) as f:
        assert f.read() == catalogue.markdown(), \
            "regenerate it: minicnn layers --markdown > docs/layers.md"


def test_every_registered_type_is_listed_with_parameters_and_backends():
    entries = {e["type"]: e for e in catalogue.layer_entries()}
    listed = set(entries) | {a for e in entries.values() for a in e["aliases"]}
    assert listed == {name for name, cls in LAYERS.items()
                      if cls.__module__.startswith("minicnn.")}
    conv = entries["Convolution"]
    assert ("kernel_size", "uint32", "(repeated)") in conv["params"]
    assert ("bias_term", "bool", "true") in conv["params"]
    assert "conv2d_forward" in conv["ops"] and conv["backends"] == ["ref", "cpu", "cuda"]
    assert entries["Accuracy"]["backward"] == "no" and entries["Data"]["backward"] == "-"
    assert entries["Pooling"]["tops"] == "1-2"
    assert "DepthwiseConvolution" in entries["ConvolutionDepthwise"]["aliases"]


def test_layers_command(capsys):
    assert main(["layers"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["type", "bottoms", "tops", "backward", "parameters",
                                           "backends"]
    assert any(line.startswith("Deconvolution ") for line in out.splitlines())


def test_layer_type_list_is_pycaffes():
    import minicnn
    types = minicnn.layer_type_list()
    assert types == sorted(minicnn.LAYERS) and {"Convolution", "Python", "LSTM"} <= set(types)
