// minicnn._native: the module itself; the op files (csrc/<op>.cpp) register their functions.
#include "common.h"

#include <pthread.h>

PYBIND11_MODULE(_native, m) {
    m.doc() = "minicnn's fast CPU kernels (csrc/), each tested against its NumPy reference";
#ifdef _OPENMP
    m.attr("openmp") = true;
#else
    m.attr("openmp") = false;
#endif
    m.def("num_threads", [] {
        const int n = minicnn::requested_threads.load();
        return n > 0 ? n : minicnn::max_threads();
    }, "threads the kernels use (OpenMP)");
    m.def("set_num_threads", [](int n) {
#ifdef _OPENMP
        if (n < 1) throw std::invalid_argument("the thread count must be at least 1");
        if (n > 1 && minicnn::forked_after_parallel.load())
            throw std::runtime_error(
                "this process was forked from one whose kernels had started OpenMP threads: "
                "GNU OpenMP would hang here on more than one thread, so minicnn runs its "
                "kernels on one (start the process with multiprocessing's 'spawn' or "
                "'forkserver' method for more)");
        minicnn::requested_threads.store(n);
        minicnn::apply_threads();
#else
        (void)n;
#endif
    }, "set the threads the kernels use, on every Python thread");
    m.def("forked_single_threaded", [] { return minicnn::forked_after_parallel.load(); },
          "whether this is a forked child held to one thread (see set_num_threads)");
#ifdef _OPENMP
    pthread_atfork(nullptr, nullptr, minicnn::fork_child);
#endif
    for (auto& define : minicnn::registrations()) define(m);
}
