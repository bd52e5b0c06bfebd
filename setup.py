"""Build script. Package metadata lives in pyproject.toml; this file builds the native extension
``minicnn._native`` from csrc/*.cpp through pybind11 and maps the kernels/ folder to
minicnn.kernels.

The extension is optional: if pybind11 or a C++17 compiler is missing, or the build fails, the
package installs without it and runs on the NumPy reference path (``MINICNN_REQUIRE_NATIVE=1``
makes such a build fail loudly instead, as CI does). OpenMP is used when the compiler has it.
Vector instructions: the wheel stays portable (baseline x86-64); the hot loops carry
``target_clones`` so the CPU picks its AVX2/AVX-512 versions at run time.
"""

import glob
import os
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _compiles(compiler, flags):
    """Whether ``compiler`` builds a tiny OpenMP program with ``flags``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            return True
        except Exception:
            return False


class OptionalBuildExt(build_ext):
    """build_ext that adds OpenMP where it works and survives a failed build."""

    def build_extension(self, ext):
        if self.compiler.compiler_type == "unix" and _compiles(self.compiler, ["-fopenmp"]):
            ext.extra_compile_args.append("-fopenmp")
            ext.extra_link_args.append("-fopenmp")
        try:
            super().build_extension(ext)
        except Exception as e:
            if os.environ.get("MINICNN_REQUIRE_NATIVE") == "1":
                raise
            print(f"warning: minicnn's native extension was not built ({e}); minicnn will run "
                  "on its NumPy path", file=sys.stderr)


def native_extensions():
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        if os.environ.get("MINICNN_REQUIRE_NATIVE") == "1":
            raise
        print("warning: pybind11 is missing; building minicnn without its native extension",
              file=sys.stderr)
        return []
    sources = sorted(glob.glob("csrc/*.cpp"))
    return [Pybind11Extension("minicnn._native", sources, include_dirs=["csrc"], cxx_std=17,
                              depends=sorted(glob.glob("csrc/*.h")),
                              extra_compile_args=["-O3", "-fno-math-errno"])]


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
