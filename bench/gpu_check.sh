#!/usr/bin/env bash
# The GPU session's checks of minicnn's CUDA backend (issue 7), in one command for the device
# tool, about 6 minutes on an H200 (each step has its own time limit, the whole under 9):
#
#   bash bench/gpu_prep.sh                                         # here first (no device time)
#   run(command="bash bench/gpu_check.sh", carry=[".whl", "data/mnist"], timeout_s=560)
#
# 1. environment and a first kernel: nvidia-smi, CuPy and PyTorch versions, every kernels/*.cu
#    compiled by NVRTC (a compile error shows here, in seconds)
# 2. the GPU tests: pytest -m cuda over tests/ (every op's cuda impl against the NumPy reference,
#    whole nets and the CLI on the device against the CPU; the [cuda] half of each `gpu` test)
# 3. `minicnn train models/lenet/lenet_solver.prototxt --gpu 0`, the final test accuracy against
#    the CPU's (LENET_CPU_ACCURACY, measured with the same command on the CPU)
# 4. bench/gpu_vs_torch.py --markdown: minicnn against PyTorch + cuDNN, tables for RESULTS.md
#
# Output under $OUT (the device tool brings it back; ./gpu_out elsewhere): summary.md (one line
# per step, PASS/FAIL), env.txt, tests.log, lenet.log, bench.md, bench.log. Steps run on after a
# failure, so one call gathers everything. BENCH_ARGS (e.g. --quick) goes to the benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LENET_CPU_ACCURACY=${LENET_CPU_ACCURACY:-0.983}    # docs/cuda.md: the CPU run of the same solver
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
note() { echo "- [$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }

if ls .whl/*.whl >/dev/null 2>&1; then       # carried wheels (bench/gpu_prep.sh)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# --- 1. environment, and every kernel file through NVRTC ------------------------------------------
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  timeout 60 python3 -m minicnn device-query --gpu 0 || echo "device-query failed"
  python3 - <<'EOF'
import platform, numpy, cupy
print("python", platform.python_version(), "numpy", numpy.__version__, "cupy", cupy.__version__,
      "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
try:
    import torch
    print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())
except Exception as e:
    print("torch: not importable:", e)
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if timeout 180 python3 - <<'EOF' >> "$OUT/env.txt" 2>&1
import time
import numpy as np
from minicnn import cuda
cuda.resolve_device(0)
for path in sorted(cuda.kernels_dir().glob("*.cu")):
    t = time.perf_counter()
    cuda._module(path.name).get_function(
        cuda.template_kernels(cuda.kernel_source(path.name))[0] + "<float>")
    print(f"NVRTC {path.name}: {time.perf_counter() - t:.2f} s")
from minicnn.ops import relu_forward
x = cuda.to_device(np.array([-2.0, 0.0, 3.0], np.float32))
assert relu_forward(x, 0.5).get().tolist() == [-1.0, 0.0, 3.0]
print("a first kernel ran")
EOF
then note "PASS kernels: every kernels/*.cu compiles with NVRTC and ReLU runs (env.txt)"
else note "FAIL kernels: NVRTC or the first launch failed (env.txt)"; tail -30 "$OUT/env.txt"
fi

# --- 2. the GPU tests ------------------------------------------------------------------------------
# -v names each test as it starts and faulthandler prints the stack of one still running after
# 60 s: a test that hangs (a kernel that never ends, a barrier some threads miss) is named in
# tests.log even when `timeout` kills pytest before its summary
# (300 s: on a fresh machine every CuPy elementwise and reduction kernel the tests use also goes
# through NVRTC once, which the emulator's 30-50 s rehearsal does not count)
timeout 300 python3 -m pytest -v -m cuda -p no:cacheprovider -rfE -o faulthandler_timeout=60 \
  tests > "$OUT/tests.log" 2>&1
status=$?
tail -15 "$OUT/tests.log"
last=$(tail -1 "$OUT/tests.log")
if [ $status -eq 0 ] && [[ "$last" == *" passed"* ]] && [[ "$last" != *"skipped"* ]]; then
  note "PASS tests: $last"
else note "FAIL tests (exit $status; on a GPU none may skip): $last (tests.log)"
fi

# --- 3. LeNet on the GPU, to the CPU's accuracy ---------------------------------------------------
timeout 150 python3 -m minicnn train models/lenet/lenet_solver.prototxt --gpu 0 --no-progress \
  > "$OUT/lenet.log" 2>&1
status=$?
tail -4 "$OUT/lenet.log"
accuracy=$(grep -o "accuracy = [0-9.]*" "$OUT/lenet.log" | tail -1 | cut -d" " -f3)
if [ $status -eq 0 ] && python3 -c "import sys; sys.exit(abs(float('${accuracy:-0}') - $LENET_CPU_ACCURACY) > 0.01)"; then
  note "PASS lenet: minicnn train ... --gpu 0 reached accuracy ${accuracy} (CPU: $LENET_CPU_ACCURACY)"
else note "FAIL lenet (exit $status): accuracy ${accuracy:-none} vs the CPU's $LENET_CPU_ACCURACY (lenet.log)"
fi

# --- 4. the benchmark ------------------------------------------------------------------------------
left=$(( 520 - ($(date +%s) - START) ))
if [ $left -gt 60 ]; then
  timeout $left python3 bench/gpu_vs_torch.py --markdown ${BENCH_ARGS:-} > "$OUT/bench.md" \
    2> "$OUT/bench.log"
  status=$?
  cat "$OUT/bench.md"
  if [ $status -eq 0 ]; then note "PASS bench: tables in bench.md"
  else note "FAIL bench (exit $status, ${left}s allowed): bench.log"; tail -20 "$OUT/bench.log"
  fi
else note "SKIP bench: only ${left}s left"
fi
note "done"
cat "$SUMMARY"
