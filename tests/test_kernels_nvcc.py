"""Every kernels/*.cu file compiles, on any machine with the compilers (no GPU needed), so a
syntax error never waits for a GPU session:

- with nvcc, where it is installed: the source CuPy is handed (minicnn.cuda.kernel_source: local
  includes inlined), each template kernel instantiated for float and double, built to Hopper
  machine code;
- with NVRTC through CuPy's own compiler, where CuPy and NVRTC load (CI installs
  cupy-cuda13x and nvidia-cuda-nvrtc; no driver needed): the same call a GPU run makes
  (RawModule: minicnn.cuda.NVRTC_OPTIONS, CuPy's -ftz=true, the name expressions), for sm_90.
  NVRTC is not nvcc: no host headers, other defaults; this is the compiler the GPU uses."""

import io
import re
import shutil
import subprocess

import pytest

from minicnn import cuda

NVCC = shutil.which("nvcc")
FILES = sorted(p.name for p in cuda.kernels_dir().glob("*.cu"))


def cupy_nvrtc():
    """CuPy's compiler module if CuPy imports and NVRTC loads, else None (a reason)."""
    try:
        from cupy.cuda import compiler
        compiler._get_nvrtc_version()               # loads libnvrtc
    except Exception as e:                          # no CuPy, or no NVRTC library
        return None, f"{type(e).__name__}: {e}"
    return compiler, None


NVRTC, NO_NVRTC = cupy_nvrtc()


def test_the_kernel_sources_are_found():
    assert (cuda.kernels_dir() / "common.cuh").is_file()
    assert "relu.cu" in FILES and "im2col.cu" in FILES


@pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not installed")
@pytest.mark.parametrize("name", FILES)
def test_kernel_file_compiles_with_nvcc(name, tmp_path):
    source = cuda.kernel_source(name)
    kernels = cuda.template_kernels(source)
    assert kernels, f"{name} defines no `template <typename T> __global__ void` kernel"
    uses = " ".join(f"(void)&{name};" for name in cuda.instantiations(source))
    path = tmp_path / name
    path.write_text(source + f"\nvoid minicnn_instantiate() {{ {uses} }}\n")
    done = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", "--resource-usage", "-c",
                           str(path), "-o", str(tmp_path / "kernels.o")],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc failed on {name}:\n{done.stderr[-4000:]}"
    assert "warning" not in done.stderr.lower(), f"nvcc warns on {name}:\n{done.stderr}"
    check_launch_resources(name, done.stdout + done.stderr)


def check_launch_resources(name, report):
    """A launch of more threads than the registers allow fails on the GPU only ("too many
    resources requested for launch"; the host emulator has no registers): every kernel's
    registers times minicnn's block size (cuda.BLOCK threads, the only size it launches) must
    fit a block's 64K registers, its static shared memory the 48 KiB a block gets unasked."""
    usage = re.findall(r"Used (\d+) registers(.*)", report)
    assert usage, f"nvcc printed no resource usage for {name}:\n{report[-2000:]}"
    for registers, rest in usage:
        assert int(registers) * cuda.BLOCK <= 65536, \
            f"{name}: a kernel uses {registers} registers, too many for {cuda.BLOCK} threads"
        smem = re.search(r"(\d+) bytes smem", rest)
        assert smem is None or int(smem.group(1)) <= 48 * 1024, f"{name}: {rest}"


@pytest.mark.parametrize("name", FILES)
def test_shared_arrays_hold_a_slot_per_thread_of_a_block(name):
    """The kernels' `__shared__ T shared[N]` reductions index a slot per thread: N must be the
    block size minicnn launches with, or a larger BLOCK would write past them."""
    sizes = re.findall(r"__shared__\s+\w+\s+\w+\[(\w+)\]", cuda.kernel_source(name))
    assert all(size == str(cuda.BLOCK) for size in sizes), (name, sizes, cuda.BLOCK)


@pytest.mark.skipif(NVRTC is None, reason=f"CuPy's NVRTC compiler is not usable here ({NO_NVRTC})")
@pytest.mark.parametrize("name", FILES)
def test_kernel_file_compiles_with_nvrtc_as_cupy_does(name, monkeypatch):
    source = cuda.kernel_source(name)
    names = cuda.instantiations(source)
    # CuPy asks the device for its architecture; there is none here: H100/H200's, as machine code
    monkeypatch.setattr(NVRTC, "_get_arch_for_options_for_nvrtc", lambda arch: ("-arch=sm_90",
                                                                                 "cubin"))
    log = io.StringIO()
    try:
        cubin, mapping = NVRTC.compile_using_nvrtc(
            source, options=cuda.NVRTC_OPTIONS + ("-ftz=true",), arch="90", filename=name,
            name_expressions=names, log_stream=log)
    except NVRTC.CompileException as e:
        pytest.fail(f"NVRTC failed on {name}:\n{str(e)[-4000:]}")
    assert sorted(mapping) == sorted(names) and all(mapping.values())
    assert cubin[:4] == b"\x7fELF", "NVRTC did not return machine code (a cubin)"
    assert "warning" not in log.getvalue().lower(), f"NVRTC warns on {name}:\n{log.getvalue()}"
