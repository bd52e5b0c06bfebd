// Which of the hand-written vector loops run (the GEMM's micro-kernels, and every loop chosen
// beside a portable one: depthwise, pooling, the filter gradient's transposed adds, packing).
#pragma once

#include <cstdlib>
#include <string>

namespace minicnn {

// 2: AVX-512, 1: AVX2 with FMA, 0: the portable loops. The widest this CPU runs, unless
// MINICNN_GEMM_KERNEL=avx2|generic narrows it (any other value but avx512: generic), so the
// tests run every version on one machine. Target-cloned functions (MINICNN_VECTOR_CLONES) are
// chosen by the CPU alone.
inline int read_simd_level() {
    const char* wanted = std::getenv("MINICNN_GEMM_KERNEL");
    const std::string choice = wanted ? wanted : "";
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if ((choice.empty() || choice == "avx512") && __builtin_cpu_supports("avx512f")) return 2;
    if ((choice.empty() || choice == "avx512" || choice == "avx2") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

inline int simd_level() {
    static const int level = read_simd_level();
    return level;
}

}  // namespace minicnn
