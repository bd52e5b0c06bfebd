"""Test code run in a fresh Python process with MINICNN_GEMM_KERNEL set: the extension reads
the variable once, as it loads, so each choice of vector loop (avx512, avx2, generic; None for
the widest this CPU runs) needs a process of its own."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_kernel(code, kernel, *args):
    """Run ``code`` (python -c, from the repository's root, with ``args``) under ``kernel``;
    its stdout, after asserting that it exited cleanly (its stderr's end in the message)."""
    env = {k: v for k, v in os.environ.items() if k != "MINICNN_GEMM_KERNEL"}
    if kernel:
        env["MINICNN_GEMM_KERNEL"] = kernel
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
