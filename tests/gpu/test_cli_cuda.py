"""The command line on a GPU (--gpu 0): train LeNet from an LMDB (data layer on the host, the
rest on the device) and compare with a CPU run, then test, time and extract on the device."""

import os

import numpy as np
import pytest

import minicnn
from minicnn.cli import main
from minicnn.data.datasets import write_lmdb

from .conftest import rel_error

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def lenet_files(tmp_path, monkeypatch):
    """Caffe's LeNet and solver (models/lenet) reading 28x28 synthetic digits from LMDBs."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("test", 100)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):                    # a bright bar per class
            images[i, 2 + 2 * label:4 + 2 * label, 4:24] = 250
        os.makedirs("data/mnist", exist_ok=True)
        write_lmdb(f"data/mnist/mnist_{split}_lmdb", images, labels)
    os.makedirs("models", exist_ok=True)
    os.symlink(os.path.join(REPO, "models", "lenet"), "models/lenet")
    return tmp_path


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out + err


def test_train_test_time_extract_on_the_gpu(gpu, lenet_files, capsys):
    flags = ["--max-iter", "20", "--test-interval", "20", "--test-iter", "2", "--display", "10",
             "--batch-size", "16", "--no-progress", "--snapshot-prefix"]
    cpu_log = _run(["train", "models/lenet/lenet_solver.prototxt", *flags, "cpu"], capsys)
    gpu_log = _run(["train", "models/lenet/lenet_solver.prototxt", *flags, "gpu", "--gpu", "0"],
                   capsys)
    cpu = minicnn.Net("models/lenet/lenet.prototxt", "cpu_iter_20.caffemodel")
    dev = minicnn.Net("models/lenet/lenet.prototxt", "gpu_iter_20.caffemodel")
    for (name, a), b in zip(cpu.params.items(), dev.params.values()):
        for x, y in zip(a, b):            # 20 SGD steps amplify float32 rounding differences
            assert rel_error(y.data, x.data) < 1e-2, name

    def final(log, key):
        return float(log.split(f"{key} = ")[-1].split()[0].rstrip(","))
    assert abs(final(cpu_log, "accuracy") - final(gpu_log, "accuracy")) <= 0.02
    assert abs(final(cpu_log, "loss") - final(gpu_log, "loss")) <= 0.01 * final(cpu_log, "loss")

    out = _run(["test", "models/lenet/lenet_train_test.prototxt", "--weights",
                "gpu_iter_20.caffemodel", "--iterations", "2", "--gpu", "0"], capsys)
    assert "accuracy = " in out and "Loss: " in out
    out = _run(["time", "models/lenet/lenet.prototxt", "--iterations", "2", "--gpu", "0"],
               capsys)
    assert "Average Forward-Backward" in out and "conv1" in out
    _run(["extract", "--model", "models/lenet/lenet_train_test.prototxt", "--weights",
          "gpu_iter_20.caffemodel", "--blob", "ip2", "--iterations", "2", "--out", "f.npy",
          "--gpu", "0"], capsys)
    assert np.load("f.npy").shape == (200, 10)


@pytest.mark.cuda
def test_device_query_on_the_gpu(capsys):
    assert main(["device-query", "--gpu", "0"]) == 0
    out = capsys.readouterr().out
    assert "Device id:                     0" in out and "Name:" in out
    memory = [line for line in out.splitlines() if line.startswith("Total global memory:")]
    assert len(memory) == 1 and int(memory[0].split()[-1]) > 2**30
