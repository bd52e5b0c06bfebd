// Shared by every csrc/*.cpp: array helpers, OpenMP wrappers and the registration hook.
//
// Each op file registers its functions itself (see REGISTER_NATIVE below), so adding an op is
// adding a file: setup.py compiles every csrc/*.cpp into minicnn._native.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

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

// Hot loops carry several compiled versions; the CPU picks the best at load time (GCC's
// function multiversioning), so one portable wheel still uses AVX2 / AVX-512 where present.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MINICNN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MINICNN_VECTOR_CLONES
#endif

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
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
