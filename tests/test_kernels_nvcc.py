"""Every kernels/*.cu file compiles with nvcc, on any machine that has it (no GPU needed), so a
syntax error never waits for a GPU session. The source compiled is what CuPy hands NVRTC
(minicnn.cuda.kernel_source: local includes inlined), and each template kernel is
instantiated for float and double, as minicnn.cuda does, then built to Hopper machine code."""

import shutil
import subprocess

import pytest

from minicnn import cuda

NVCC = shutil.which("nvcc")
FILES = sorted(p.name for p in cuda.kernels_dir().glob("*.cu"))


def test_the_kernel_sources_are_found():
    assert (cuda.kernels_dir() / "common.cuh").is_file()
    assert "relu.cu" in FILES and "im2col.cu" in FILES


@pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not installed")
@pytest.mark.parametrize("name", FILES)
def test_kernel_file_compiles_with_nvcc(name, tmp_path):
    source = cuda.kernel_source(name)
    kernels = cuda.template_kernels(source)
    assert kernels, f"{name} defines no `template <typename T> __global__ void` kernel"
    uses = " ".join(f"(void)&{k}<{t}>;" for k in kernels for t in ("float", "double"))
    path = tmp_path / name
    path.write_text(source + f"\nvoid minicnn_instantiate() {{ {uses} }}\n")
    done = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", "-c", str(path), "-o",
                           str(tmp_path / "kernels.o")], capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc failed on {name}:\n{done.stderr[-4000:]}"
    assert "warning" not in done.stderr.lower(), f"nvcc warns on {name}:\n{done.stderr}"
