"""The minicnn command: `time`, Caffe's single-dash spellings, and one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minicnn.cli import _caffe_style, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(REPO, "models", "lenet", "lenet.prototxt")


def test_caffe_single_dash_options_are_accepted():
    assert _caffe_style(["time", "-model", "m", "-iterations=3", "--sigint_effect", "stop",
                         "-p", "x"]) == ["time", "--model", "m", "--iterations=3",
                                         "--sigint-effect", "stop", "-p", "x"]


def test_gflags_boolean_spellings_of_convert_imageset():
    assert _caffe_style(["convert-imageset", "--shuffle=true", "-gray=false", "--nocheck_size",
                         "--encoded", "--check_size=1", "--resize_height=3"]) == [
        "convert-imageset", "--shuffle", "--encoded", "--check-size", "--resize-height=3"]


@pytest.mark.parametrize("argv", [
    ["time", LENET, "--iterations", "1", "--phase", "TEST"],
    ["time", "-model", LENET, "-iterations", "1"],
])
def test_time_prints_caffe_style_report(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Average time per layer:" in out
    assert "conv1\tforward:" in out and "conv1\tbackward:" in out
    assert "Average Forward-Backward:" in out and "Total Time:" in out
    split = out.split("By layer type (share of forward + backward):")[1]
    shares = [float(line.rsplit(None, 1)[1].rstrip("%")) for line in
              split.split("Slowest")[0].strip().splitlines()]
    assert {"Convolution", "InnerProduct", "Pooling"} <= {line.split()[0] for line in
                                                         split.split("Slowest")[0].splitlines()
                                                         if line.strip()}
    assert abs(sum(shares) - 100) < 1 and shares == sorted(shares, reverse=True)
    assert "conv1" in split.split("Slowest")[1]


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "c" type: "Convolution" convolution_param { kernel_sise: 3 } }')
    assert main(["time", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{bad}:1:" in err and "did you mean 'kernel_size'" in err


def test_unknown_layer_type_lists_the_supported_ones(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('input: "x" input_shape { dim: 1 } layer { name: "w" type: "Wobble" '
                   'bottom: "x" top: "y" }')
    assert main(["time", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "unknown layer type 'Wobble'" in err and "Convolution" in err and "ReLU" in err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "minicnn", "time", LENET, "-iterations", "1",
                          "-phase", "TEST"], capture_output=True, text=True, check=True).stdout
    assert "Average Forward pass" in out


def write_images(folder, count=3, size=(4, 5)):
    """`count` random RGB PNGs in ``folder`` and their list file (`name label` lines)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    (folder / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(count)))
    return folder / "list.txt"


def test_data_tools_take_caffes_backend_flag(tmp_path, capsys):
    list_file = write_images(tmp_path)
    assert main(["convert-imageset", str(tmp_path), str(list_file), str(tmp_path / "db"),
                 "-backend=lmdb"]) == 0
    assert main(["compute-image-mean", "-backend", "lmdb", str(tmp_path / "db"),
                 str(tmp_path / "mean.binaryproto")]) == 0
    assert main(["convert-imageset", str(tmp_path), str(list_file), str(tmp_path / "db2"),
                 "--backend", "leveldb"]) == 1
    assert "LMDB databases only" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "db2")


def test_stage_flag_is_comma_separated_as_caffes(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }'
                   'layer { name: "ab" type: "Power" bottom: "x" top: "y" '
                   'include { stage: "a" stage: "b" } }')
    assert main(["test", "-model", str(net), "-stage", "a,b", "-iterations", "1"]) == 0
    assert "Batch 0, y = " in capsys.readouterr().out


@pytest.mark.parametrize("command", ["test", "time"])
def test_iterations_must_be_positive(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "-model", LENET, "-iterations", "0"])
    assert e.value.code == 2
    assert "--iterations: expected a positive integer, got '0'" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys):
    list_file = write_images(tmp_path)
    assert main(["convert-imageset", str(tmp_path), str(list_file), str(tmp_path / "db")]) == 0
    capsys.readouterr()
    assert main(["compute-image-mean", str(tmp_path / "db"), str(tmp_path)]) == 1
    assert main(["draw", LENET, str(tmp_path / "no" / "net.dot")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"minicnn compute-image-mean: error: {tmp_path}: Is a directory",
                   f"minicnn draw: error: {tmp_path / 'no' / 'net.dot'}: no such folder to "
                   "write into"]


def test_one_resize_flag_alone_is_a_one_line_error(tmp_path, capsys):
    list_file = write_images(tmp_path)
    assert main(["convert-imageset", str(tmp_path), str(list_file), str(tmp_path / "db"),
                 "--resize_height=8"]) == 1
    assert "give both --resize-height and --resize-width" in capsys.readouterr().err
