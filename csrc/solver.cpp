// The SGD and Nesterov update values (minicnn/sgd_solvers.py) in one pass over a parameter:
// Caffe's Normalize (iter_size), Regularize (L2 or L1 weight decay) and ComputeUpdateValue,
// which NumPy does in about a dozen passes and temporaries (a training step of CaffeNet moves
// its 61M weights, their diffs and the momentum history through memory).
//
//     g = diff * scale  (+ decay * data | + decay * sign(data))
//     v = momentum * v + lr * g                     history
//     diff = v                   (SGD)
//     diff = (1 + momentum) * v - momentum * v_old  (Nesterov)
//     data -= diff                                  (Net::Update, in the same pass)
//
// Every product and sum is rounded in the same order as the NumPy code, and this file is not
// built with the vector clones (whose AVX2 code may fuse a*b+c into one FMA rounding), so the
// result is bit for bit the NumPy rule's.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "common.h"

namespace minicnn {

enum Regularization { NONE = 0, L2 = 1, L1 = 2 };

template <typename T>
inline T sign(T x) { return x > T(0) ? T(1) : x < T(0) ? T(-1) : x; }   // NaN stays NaN

template <typename T>
static void momentum_update(T* diff, T* data, T* history, std::int64_t n, T lr, T momentum,
                            T decay, int regularization, T scale, bool apply_scale,
                            bool nesterov) {
    const T one_plus = T(1) + momentum;
#pragma omp parallel for schedule(static) if (n > PARALLEL_WORK)
    for (std::int64_t i = 0; i < n; ++i) {
        T g = diff[i];
        if (apply_scale) g *= scale;
        if (regularization == L2) g += decay * data[i];
        else if (regularization == L1) g += decay * sign(data[i]);
        const T old = history[i];
        T v = momentum * old;
        v += lr * g;
        history[i] = v;
        const T step = nesterov ? one_plus * v - momentum * old : v;
        diff[i] = step;
        data[i] -= step;
    }
}

// Caffe's ClearParamDiffs, every iteration: CaffeNet's 61M diffs are 244 MB of zeros, which
// one thread writes at a fraction of what both cores can. A small net's diffs (under a chunk in
// all) are zeroed by this thread: waking the others costs more than the memset, and far more
// (milliseconds a step) when the cores are busy with other processes.
static void zero_fill(const std::vector<std::pair<char*, std::int64_t>>& buffers) {
    constexpr std::int64_t chunk = std::int64_t(1) << 20;                 // bytes per task
    std::vector<std::pair<char*, std::int64_t>> pieces;
    std::int64_t total = 0;
    for (const auto& [p, bytes] : buffers) {
        total += bytes;
        for (std::int64_t at = 0; at < bytes; at += chunk)
            pieces.emplace_back(p + at, std::min(chunk, bytes - at));
    }
    const std::int64_t n = static_cast<std::int64_t>(pieces.size());
#pragma omp parallel for schedule(static) if (total > chunk)
    for (std::int64_t i = 0; i < n; ++i) std::memset(pieces[i].first, 0, pieces[i].second);
}

REGISTER_NATIVE(m) {
    m.def("zero_fill", [](const py::list& arrays) {
        std::vector<std::pair<char*, std::int64_t>> buffers;
        for (const py::handle& h : arrays) {
            py::array a = h.cast<py::array>();
            require((a.flags() & py::array::c_style) && a.writeable(),
                    "zero_fill: arrays must be C-contiguous and writeable");
            buffers.emplace_back(static_cast<char*>(a.mutable_data()), a.nbytes());
        }
        Release release;
        zero_fill(buffers);
    }, "every array of the list <- 0 (all bytes), both cores at once");
    m.def("momentum_update", [](py::array& diff, py::array& data, py::array& history,
                                double lr, double momentum, double decay, int regularization,
                                double scale, bool nesterov) {
        require(diff.size() == data.size() && history.size() == data.size(),
                "momentum_update: diff, data and history must have one size");
        require(regularization >= NONE && regularization <= L1,
                "momentum_update: regularization is 0 (none), 1 (L2) or 2 (L1)");
        by_dtype(data, [&](auto tag) {
            using T = decltype(tag);
            T* d = out_ptr<T>(diff, "diff");
            T* h = out_ptr<T>(history, "history");
            T* w = out_ptr<T>(data, "data");
            Release release;
            momentum_update<T>(d, w, h, data.size(), T(lr), T(momentum), T(decay),
                               regularization, T(scale), scale != 1.0, nesterov);
        });
    }, "diff <- the SGD (or Nesterov) step, history <- the new momentum, data -= the step, in "
       "one pass; diff is first scaled by `scale` (1/iter_size) and regularized (0 none, 1 L2, "
       "2 L1)");
}

}  // namespace minicnn
