// A trivial kernel that checks the build, the registration hook and OpenMP end to end.
#include "common.h"

namespace minicnn {

template <typename T>
static double sum_all(const Array<T>& a) {
    apply_threads();
    const T* p = cdata_of(a);
    const std::int64_t n = a.size();
    double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (std::int64_t i = 0; i < n; ++i) total += p[i];
    return total;
}

REGISTER_NATIVE(m) {
    m.def("sum_all", &sum_all<float>, "sum of a float32 array (a build check)");
    m.def("sum_all", &sum_all<double>, "sum of a float64 array (a build check)");
}

}  // namespace minicnn
