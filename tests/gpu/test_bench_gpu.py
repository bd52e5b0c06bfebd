"""bench/gpu_vs_torch.py's code paths, run on the CUDA host emulator with PyTorch on the CPU at
toy sizes: a broken benchmark script is found here, not on a GPU's clock. (The timings mean
nothing; the GPU run is bench/gpu_check.sh.)"""

import argparse
import importlib.util
import os

import pytest

from tests import cuda_emu

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "bench", "gpu_vs_torch.py")


def test_the_gpu_benchmark_runs_on_the_emulator(monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    if not cuda_emu.available():
        pytest.skip("no C++ compiler for the CUDA host emulator")
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))
    spec = importlib.util.spec_from_file_location("gpu_vs_torch", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "TORCH_DEVICE", "cpu")
    monkeypatch.setattr(bench, "CONVS", [("conv 3x3 g2", (2, 4, 9, 9), (6, 3, 2, 1, 1, 2)),
                                         ("depthwise 3x3", (2, 4, 8, 8), (4, 3, 1, 2, 2, 4))])
    monkeypatch.setattr(bench, "LRN_SHAPE", (2, 6, 5, 5))
    monkeypatch.setattr(bench, "POOL_SHAPE", (2, 3, 9, 9))
    monkeypatch.setattr(bench, "NET_ROWS", [("LeNet training step", "lenet", 4)])
    args = argparse.Namespace(repeat=1, block=0.001, quick=False)
    with cuda_emu.installed():
        name, peak, tf32, sms, clock = bench.gpu_facts()
        assert name and peak > 0 and sms >= 1
        header, table = bench.layer_rows(args, torch, sgemm=peak, peak=peak)
        # conv 3x3 g2 at 5x5 positions: also its forward with a GEMM per image
        assert len(table) == 2 * 2 + 1 + 4 and all(row[4].endswith("x") for row in table)
        net_header, nets = bench.net_rows(args, torch, False)
        bench.set_tf32(torch, True)
        nets += bench.net_rows(args, torch, True)[1]
        bench.set_tf32(torch, False)
        assert [row[2] for row in nets] == ["off", "on"]
        assert all(float(row[6]) > 0 for row in nets), nets
        assert all(row[8] > 10 for row in nets), nets       # launches and GEMMs of a step
    bench.show("Layers", header, table, True)
    out = capsys.readouterr().out
    assert "| layer | pass |" in out and "depthwise 3x3" in out


def test_the_host_call_count_runs(tmp_path):
    """bench/gpu_host_calls.py (it patches the emulator for good: its own process)."""
    import subprocess
    import sys
    if not cuda_emu.available():
        pytest.skip("no C++ compiler for the CUDA host emulator")
    done = subprocess.run([sys.executable, os.path.join(os.path.dirname(BENCH),
                                                        "gpu_host_calls.py"),
                           "--net", "lenet", "--batch", "2", "--sites", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line}
    assert lines["update"][:3] == ["1", "0", "0"]          # one launch, no CuPy arithmetic
    assert lines["clear"][:4] == ["diffs", "1", "0", "0"]
    assert int(lines["step"][0]) > 10 and int(lines["step"][1]) >= 8   # launches, GEMMs
    assert lines["forward"][4] == lines["backward"][4] == "0"      # no reads back mid-step
    assert lines["step"][4] == "2"                                 # the loss, the label flag
