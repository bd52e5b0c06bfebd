"""CUDA kernel sources (*.cu), installed as minicnn.kernels and compiled at run time by CuPy."""
