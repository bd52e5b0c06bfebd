"""Build script. Package metadata lives in pyproject.toml; this file exists for the native
extension (csrc/, built here once the fast CPU path lands) and for editable installs of the
kernels/ folder as minicnn.kernels."""

from setuptools import setup

setup()
