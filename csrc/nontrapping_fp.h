// Included, after every other header, by the files whose loops choose between float values on a
// comparison (the (leaky) ReLU's x > 0 ? x : x * slope): GCC may then compare and compute both
// sides in every lane, and vectorizes such loops for AVX2 too. Under its default
// -ftrapping-math it keeps them scalar with a branch (a comparison with a NaN raises the
// invalid flag; the product on the side not taken might overflow), and only AVX-512's masked
// instructions vectorized them: ReLU's passes ran 8x slower on an AVX2 Zen 3 than a copy. The
// results are the same bits; the option only tells GCC that nothing reads the floating-point
// exception flags. (Clang ignores those flags by default.)
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
