// minicnn._native: the module itself; the op files (csrc/<op>.cpp) register their functions.
#include "common.h"

PYBIND11_MODULE(_native, m) {
    m.doc() = "minicnn's fast CPU kernels (csrc/), each tested against its NumPy reference";
#ifdef _OPENMP
    m.attr("openmp") = true;
#else
    m.attr("openmp") = false;
#endif
    m.def("num_threads", &minicnn::max_threads, "threads the kernels use (OpenMP)");
    m.def("set_num_threads", [](int n) {
#ifdef _OPENMP
        if (n < 1) throw std::invalid_argument("the thread count must be at least 1");
        omp_set_num_threads(n);
#else
        (void)n;
#endif
    }, "set the threads the kernels use");
    for (auto& define : minicnn::registrations()) define(m);
}
