"""The minicnn command: `time`, Caffe's single-dash spellings, and one-line errors."""

import argparse
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn.cli import _caffe_style, main
from minicnn.proto import parse_text, read_binary, read_prototxt, write_binary

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
    assert "Iteration: 1 forward-backward time: " in out          # each pass as it ends
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


def test_time_gives_label_and_index_inputs_zeros(tmp_path, capsys):
    """Inputs a layer reads as whole-number indices (a loss's or Accuracy's labels, Embed's
    ids, BatchReindex's items) get zeros, as Caffe's time runs on zero-filled blobs; the others
    random data. Before, a deploy-style training net (Input label -> SoftmaxWithLoss) stopped
    at its first forward: a random label is not a class."""
    net = tmp_path / "train.prototxt"
    net.write_text("""
        layer { name: "in" type: "Input" top: "data" top: "label" top: "ids" top: "items"
                top: "target" input_param { shape { dim: 4 dim: 5 } shape { dim: 4 }
                shape { dim: 4 } shape { dim: 2 } shape { dim: 2 dim: 2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
        layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
        layer { name: "embed" type: "Embed" bottom: "ids" top: "e"
                embed_param { num_output: 2 input_dim: 6 } }
        layer { name: "pick" type: "BatchReindex" bottom: "e" bottom: "items" top: "picked" }
        layer { name: "l2" type: "EuclideanLoss" bottom: "picked" bottom: "target" top: "l2" }
    """)
    assert main(["time", str(net), "--iterations", "1"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "loss\tforward:" in out and "embed\tbackward:" in out
    # the loss on zero labels and random data: log(3) plus what the random scores add
    initial = float(out.split("Initial loss: ")[1].split()[0])
    assert np.isfinite(initial) and initial > 0


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
    # LevelDB: the same records, the same mean, the same batches through a Data layer
    assert main(["convert-imageset", str(tmp_path), str(list_file), str(tmp_path / "db2"),
                 "--backend", "leveldb"]) == 0
    assert os.path.exists(tmp_path / "db2" / "CURRENT")
    assert main(["compute-image-mean", "-backend", "leveldb", str(tmp_path / "db2"),
                 str(tmp_path / "mean2.binaryproto")]) == 0
    assert (tmp_path / "mean2.binaryproto").read_bytes() == \
        (tmp_path / "mean.binaryproto").read_bytes()
    outputs = []
    for db, backend in (("db", "LMDB"), ("db2", "LEVELDB")):
        net = tmp_path / f"{db}.prototxt"
        net.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param '
                       f'{{ source: "{tmp_path / db}" batch_size: 5 backend: {backend} }} }}')
        data_net = minicnn.Net(str(net), minicnn.TEST)
        outputs.append([data_net.forward()["data"].copy() for _ in range(3)])
        del data_net
    np.testing.assert_array_equal(outputs[0], outputs[1])


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


def test_an_unknown_flag_is_refused_by_its_command_with_that_commands_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", LENET, "--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "minicnn train: error: unrecognized arguments: --bogus" in err
    assert "usage: minicnn train" in err


@pytest.mark.parametrize("argv, flag", [
    (["classify", "--model", LENET, "--top-k", "0", "x.png"], "--top-k"),
    (["classify", "--model", LENET, "--batch-size", "-2", "x.png"], "--batch-size"),
    (["train", LENET, "--test-iter", "0"], "--test-iter"),
    (["extract", "--model", LENET, "--blob", "ip1", "--out", "f.npy", "--iterations", "0"],
     "--iterations"),
])
def test_counts_given_as_flags_must_be_positive(argv, flag, capsys):
    # a count of 0 used to run as 1 (--top-k) or fail deep inside the run
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"{flag}: expected a positive integer" in capsys.readouterr().err


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


V1_NET = """name: "old"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 }
}
layers { name: "relu" type: RELU bottom: "conv1" top: "conv1" }
"""


def test_upgrade_rewrites_v1_nets_and_solvers_as_caffes_upgrade_tools(tmp_path, capsys):
    old, new = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    old.write_text(V1_NET)
    assert main(["upgrade", str(old), str(new)]) == 0
    net = read_prototxt(str(new))
    assert [(layer.name, layer.type) for layer in net.layer] == [("input", "Input"),
                                                     ("conv1", "Convolution"), ("relu", "ReLU")]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert not net.HasField("layers") and not net.HasField("input")
    assert "already" not in capsys.readouterr().out
    assert main(["upgrade", str(new), str(tmp_path / "again.prototxt")]) == 0
    assert "already in the latest format" in capsys.readouterr().out
    assert read_prototxt(str(tmp_path / "again.prototxt")) == net
    # a current file is copied as it is, comments and all, and never rewritten in place
    commented = "# my notes\n" + new.read_text()
    new.write_text(commented)
    assert main(["upgrade", str(new), str(tmp_path / "again.prototxt")]) == 0
    assert (tmp_path / "again.prototxt").read_text() == commented
    assert main(["upgrade", str(new), str(new)]) == 0
    assert new.read_text() == commented

    # a binary V1 .caffemodel keeps its weights, bit for bit, and stays binary
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    v1_model = parse_text(V1_NET, "NetParameter")
    v1_model.layers[0].blobs.add(data=weights, num=4, channels=3, height=3, width=3)
    v1_model.layers[0].blobs.add(data=np.arange(4, dtype=np.float32), num=1,
                                   channels=1, height=1, width=4)
    old_model, new_model = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    write_binary(v1_model, old_model)
    assert main(["upgrade", str(old_model), str(new_model)]) == 0
    upgraded = read_binary(new_model)
    assert [layer.type for layer in upgraded.layer] == ["Input", "Convolution", "ReLU"]
    assert np.array_equal(upgraded.layer[1].blobs[0].data, weights.ravel())
    loaded = minicnn.Net(str(new), minicnn.TEST, weights=str(new_model))
    assert np.array_equal(loaded.params["conv1"][0].data, weights)

    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "new.prototxt"\nsolver_type: NESTEROV\nbase_lr: 0.1\n')
    assert main(["upgrade", str(solver), str(tmp_path / "solver2.prototxt")]) == 0
    upgraded_solver = read_prototxt(str(tmp_path / "solver2.prototxt"), "SolverParameter")
    assert upgraded_solver.type == "Nesterov" and not upgraded_solver.HasField("solver_type")


def test_upgrade_names_the_field_it_cannot_read(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layers { nme: "x" }\n')
    assert main(["upgrade", str(bad), str(tmp_path / "out.prototxt")]) == 1
    err = capsys.readouterr().err
    assert "bad.prototxt:1:10" in err and "did you mean 'name'" in err
    assert not (tmp_path / "out.prototxt").exists()


def test_device_query_prints_caffes_lines(monkeypatch, capsys):
    from types import SimpleNamespace

    from minicnn import cuda
    props = {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0,
             "totalGlobalMem": 85045379072, "sharedMemPerBlock": 49152, "regsPerBlock": 65536,
             "warpSize": 32, "memPitch": 2147483647, "maxThreadsPerBlock": 1024,
             "maxThreadsDim": (1024, 1024, 64), "maxGridSize": (2147483647, 65535, 65535),
             "totalConstMem": 65536, "textureAlignment": 512, "deviceOverlap": 1,
             "multiProcessorCount": 132, "kernelExecTimeoutEnabled": 0}     # no clockRate
    runtime = SimpleNamespace(getDeviceCount=lambda: 2, getDeviceProperties=lambda d: props)
    monkeypatch.setattr(cuda, "cupy", lambda: SimpleNamespace(cuda=SimpleNamespace(
        runtime=runtime)))
    assert main(["device-query", "-gpu", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Querying GPU 1"
    assert lines[1:5] == ["Device id:                     1",
                          "Major revision number:         9",
                          "Minor revision number:         0",
                          "Name:                          NVIDIA H100 80GB HBM3"]
    assert "Maximum dimension of block:    1024, 1024, 64" in lines
    assert "Clock rate:                    n/a" in lines
    assert "Concurrent copy and execution: Yes" in lines
    assert "Kernel execution timeout:      No" in lines and len(lines) == 19
    assert main(["device-query", "--gpu", "all"]) == 0
    assert capsys.readouterr().out.count("Querying GPU") == 2
    assert main(["device-query", "--gpu", "2"]) == 1
    assert "there is no CUDA device 2" in capsys.readouterr().err
    assert main(["device-query"]) == 1
    assert "needs --gpu" in capsys.readouterr().err


def test_warnings_print_as_one_line_like_the_errors(tmp_path):
    # a skipped image is a UserWarning; Python's own form would print minicnn's file and line
    # and the source line that warned ("  n = convert(...)"), which means nothing to a user
    list_file = write_images(tmp_path, count=2)
    (tmp_path / "0.png").unlink()
    run = subprocess.run([sys.executable, "-m", "minicnn", "convert-imageset",
                          str(tmp_path) + "/", str(list_file), str(tmp_path / "db")],
                         capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr == (f"minicnn convert-imageset: warning: {list_file}:1: skipping "
                          f"{tmp_path}/0.png: file not found\n")
    from minicnn.cli import _warning_format
    default = warnings.formatwarning                     # other warnings keep Python's form
    fmt = _warning_format("detect", default)
    args = ("overflow encountered in exp", RuntimeWarning, "/x/detection.py", 155)
    assert fmt(*args) == default(*args)
    assert fmt("5 bytes not used", UserWarning, "/x/cli.py", 9) == \
        "minicnn detect: warning: 5 bytes not used\n"


@pytest.mark.filterwarnings("error")
def test_telling_a_solver_from_a_net_closes_the_file(tmp_path):
    """minicnn train -solver reads the file to tell a net prototxt from a solver one; the
    file is closed (an unclosed one was a ResourceWarning under -W error, e.g. in
    BVLC's brewing-logreg notebook run as a test)."""
    from minicnn.cli import _is_net_prototxt
    solver, net = tmp_path / "solver.prototxt", tmp_path / "net.prototxt"
    solver.write_text('net: "net.prototxt"\nbase_lr: 0.1\n')
    net.write_text('layer { name: "x" type: "Input" top: "x" }\n')
    assert not _is_net_prototxt(str(solver)) and _is_net_prototxt(str(net))


@pytest.mark.parametrize("argv,wrong,takes", [
    (["canvas-digits", "--size", "64", "--train-images", "10"], "--size, --train-images",
     "(it takes --out, --seed)"),
    (["mnist", "--size", "10"], "--size", "--format, --train-per-class"),
    (["detection-digits", "--format", "hdf5"], "--format", "--size"),
    (["sos", "--ignore-coverage", "0.5"], "--ignore-coverage", "--test-images"),
    (["fashion-mnist", "--test-images", "5"], "--test-images", "--test-per-class")])
def test_data_refuses_the_options_its_dataset_does_not_read(tmp_path, capsys, argv, wrong,
                                                            takes):
    # they were accepted and ignored: a dataset of another size than asked, in silence
    out = tmp_path / "out"
    assert main(["data", *argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"minicnn data {argv[0]} does not take {wrong} " in err and takes in err
    assert not out.exists()


def test_mean_flag_takes_a_mean_image_file_averaged_per_channel(tmp_path):
    # compute-image-mean's .binaryproto (or ilsvrc_2012_mean.npy) into --mean, as pycaffe's
    # classification example averages it: mean.mean(1).mean(1)
    from minicnn.cli import _mean_values
    from minicnn.io import array_to_blobproto
    from minicnn.proto import write_binary
    mean = np.stack([np.full((4, 5), v, np.float32) for v in (10.0, 20.0, 30.0)])
    mean[0, 0, 0] = 30.0
    write_binary(array_to_blobproto(mean[None]), tmp_path / "mean.binaryproto")
    np.save(tmp_path / "mean.npy", mean)
    want = tuple(mean.mean(axis=(1, 2)).astype(np.float64))
    for name in ("mean.binaryproto", "mean.npy"):
        assert _mean_values(str(tmp_path / name)) == pytest.approx(want)
    assert _mean_values("104,117,123") == (104.0, 117.0, 123.0)
    with pytest.raises(argparse.ArgumentTypeError, match="cannot read the mean file"):
        _mean_values(str(tmp_path / "missing.npy"))


def test_a_divergence_is_explained_once_and_exits_1(tmp_path, capsys):
    """The monitor shows the reason as the "Divergence:" line; the closing error points to it
    and to the log instead of repeating it."""
    (tmp_path / "net.prototxt").write_text("""
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 }
    data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "y" top: "loss" }""")
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 1e30 lr_policy: "fixed" max_iter: 5 '
        f'display: 1 snapshot_prefix: "{tmp_path / "snap" / "d"}"')
    assert main(["train", str(tmp_path / "solver.prototxt"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert shown.count("the loss is inf") == 1
    assert "Divergence: iteration 1: the loss is inf" in shown
    assert captured.err.strip().splitlines()[-1] == (
        "minicnn train: error: training diverged at iteration 1 (the reason is the Divergence "
        f"line above, also in {tmp_path / 'snap' / 'd_train.log'})")
    assert "the loss is inf" in (tmp_path / "snap" / "d_train.log").read_text()
