// Included by the files whose results must equal the NumPy reference (or each other) bit for
// bit: no fused multiply-adds from here on in the including file, so x * a + b rounds the
// product as NumPy does. (GCC contracts by default, and not always the same way in a loop's
// vector body and its tail.)
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
