// Shared by every csrc/*.cpp: array helpers, OpenMP wrappers and the registration hook.
//
// Each op file registers its functions itself (see REGISTER_NATIVE below), so adding an op is
// adding a file: setup.py compiles every csrc/*.cpp into minicnn._native.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "simd_level.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace minicnn {

// Arrays the Python side hands over: C-contiguous, of exactly this dtype (the callers in
// minicnn/ops make sure; nothing is converted silently here).
template <typename T>
using Array = py::array_t<T, py::array::c_style>;

template <typename T>
inline T* data_of(Array<T>& a) { return a.mutable_data(); }
template <typename T>
inline const T* cdata_of(const Array<T>& a) { return a.data(); }

// Kernels that write their results into arrays the caller owns take plain py::array and check
// it here: a silently converted copy would take the writes and lose them.
template <typename T>
inline const T* in_ptr(const py::array& a, const char* name) {
    if (!a.dtype().is(py::dtype::of<T>()) || !(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(name) + ": expected a C-contiguous " +
                                    std::string(py::str(py::dtype::of<T>())) + " array, got " +
                                    std::string(py::str(a.dtype())));
    return static_cast<const T*>(a.data());
}
template <typename T>
inline T* out_ptr(py::array& a, const char* name) {
    in_ptr<T>(a, name);
    if (!a.writeable()) throw std::invalid_argument(std::string(name) + ": array is read-only");
    return static_cast<T*>(a.mutable_data());
}
template <typename T>
inline T* opt_out_ptr(py::object a, const char* name) {      // None -> nullptr
    if (a.is_none()) return nullptr;
    py::array arr = a.cast<py::array>();
    return out_ptr<T>(arr, name);
}
template <typename T>
inline const T* opt_in_ptr(py::object a, const char* name) {
    if (a.is_none()) return nullptr;
    return in_ptr<T>(a.cast<py::array>(), name);
}

// ceil(a / b) for a >= 0, b > 0 (C++ division truncates toward zero, unlike Python's //).
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Sliding windows (convolution, pooling): the outputs z = lo .. hi-1 of one tap read input
// column z*stride + off inside the image [0, size); the others read padding.
inline void valid_range(std::int64_t size, std::int64_t stride, std::int64_t off,
                        std::int64_t n_out, std::int64_t& lo, std::int64_t& hi) {
    lo = off >= 0 ? 0 : ceil_div(-off, stride);
    hi = size - 1 - off < 0 ? 0 : (size - 1 - off) / stride + 1;
    if (lo > n_out) lo = n_out;
    if (hi > n_out) hi = n_out;
    if (hi < lo) hi = lo;
}

// Below this much work (elements, or multiply-adds), waking a second thread costs more than it
// saves, and on a busy machine it can wait out a whole scheduler slice: such loops run serially
// (OpenMP's `if` clause).
constexpr std::int64_t PARALLEL_WORK = std::int64_t(1) << 16;

// Calls body(T{}) with T the element type of ``a`` (float32 or float64).
template <typename Body>
inline auto by_dtype(const py::array& a, Body&& body) {
    if (a.dtype().is(py::dtype::of<float>())) return body(float{});
    if (a.dtype().is(py::dtype::of<double>())) return body(double{});
    throw std::invalid_argument("expected float32 or float64 arrays, got " +
                                std::string(py::str(a.dtype())));
}

// Hot loops carry several compiled versions; the CPU picks the best at load time (GCC's
// function multiversioning), so one portable wheel still uses AVX2 / AVX-512 where present.
// Where GCC knows it, x86-64-v3 (AVX2 with FMA) comes before plain AVX2: an "avx2" clone has
// no FMA, so its a*b + c are a multiply and an add (slower, and other bits than the AVX-512
// clone's fused ones); it stays for CPUs (or VMs) that show AVX2 without all of x86-64-v3.
// GCC 12's "avx512f" clone fuses 512-bit and scalar multiply-adds but not 128/256-bit ones
// (they need AVX512VL or FMA); "arch=x86-64-v4" would, but measured no faster and changes the
// last bits on AVX-512 machines (bench/RESULTS.md, 2026-12-08).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#if __GNUC__ >= 12
#define MINICNN_VECTOR_CLONES \
    __attribute__((target_clones("avx512f", "arch=x86-64-v3", "avx2", "default")))
#else
#define MINICNN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define MINICNN_VECTOR_CLONES
#endif

// The kernels' thread count. omp_set_num_threads sets it for the calling thread only: a count
// set from one Python thread would not reach the kernels another thread runs, which would use
// OpenMP's default (every core) and differ from the same work on the first thread in the last
// bits (a split's partial sums). So the count is kept here, for the process (0: OpenMP's
// default), and each entry point applies it to its own thread (Release, below).
//
// GNU OpenMP hangs a forked child that starts a parallel region after the parent had started
// its threads (the child has none of them, and waits for them). A forked child of a process
// whose kernels ran on more than one thread therefore runs them on one (fork_child, below,
// registered with pthread_atfork), as PyTorch's DataLoader workers do.
inline std::atomic<int> requested_threads{0};
inline std::atomic<bool> ran_in_parallel{false};    // a kernel ran with more than one thread
inline std::atomic<bool> forked_after_parallel{false};

inline void apply_threads() {
#ifdef _OPENMP
    thread_local int applied = 0;
    const int n = requested_threads.load(std::memory_order_relaxed);
    if (n > 0 && n != applied) {
        omp_set_num_threads(n);
        applied = n;
    }
#endif
}

inline void fork_child() {                         // only atomics: no allocation in a child
    if (ran_in_parallel.load(std::memory_order_relaxed)) {
        forked_after_parallel.store(true, std::memory_order_relaxed);
        requested_threads.store(1, std::memory_order_relaxed);
    }
}

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// What every kernel's binding holds while it computes: the GIL released, and this thread's
// OpenMP count set to the process's (above).
struct Release {
    py::gil_scoped_release release;
    Release() {
        apply_threads();
        if (!ran_in_parallel.load(std::memory_order_relaxed) && max_threads() > 1)
            ran_in_parallel.store(true, std::memory_order_relaxed);
    }
};

// Inside a parallel region: this thread's share [first, last) of n items, the shares in
// thread order and within one of each other in size.
struct Share {
    std::int64_t first, last;
};
inline Share my_share(std::int64_t n) {
#ifdef _OPENMP
    const std::int64_t id = omp_get_thread_num(), count = omp_get_num_threads();
#else
    const std::int64_t id = 0, count = 1;
#endif
    return {n * id / count, n * (id + 1) / count};
}

// Registration: each op file adds a function that defines its bindings on the module.
using Registration = std::function<void(py::module_&)>;
inline std::vector<Registration>& registrations() {
    static std::vector<Registration> all;      // built before main by the static Registrars
    return all;
}
struct Registrar {
    explicit Registrar(Registration r) { registrations().push_back(std::move(r)); }
};

inline void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);     // becomes a Python ValueError
}

}  // namespace minicnn

#define MINICNN_CONCAT_(a, b) a##b
#define MINICNN_CONCAT(a, b) MINICNN_CONCAT_(a, b)
// REGISTER_NATIVE(m) { m.def(...); }  at file scope in an op file.
#define REGISTER_NATIVE(module)                                                             \
    static void MINICNN_CONCAT(register_, __LINE__)(py::module_ & module);                  \
    static ::minicnn::Registrar MINICNN_CONCAT(registrar_, __LINE__)(                       \
        MINICNN_CONCAT(register_, __LINE__));                                               \
    static void MINICNN_CONCAT(register_, __LINE__)(py::module_ & module)
