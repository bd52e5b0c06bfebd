// YOLOv1's detection loss (Darknet's forward_detection_layer): the fast CPU body of
// minicnn/ops/detection.py, whose docstring is the specification (layout, targets, scales,
// responsible predictor). Same arithmetic in T, in the reference's order, so the predictor
// chosen is the same; images run in parallel (OpenMP), sums are kept in double.
#include <algorithm>
#include <cmath>

#include "common.h"

namespace minicnn {

namespace {

template <typename T>
struct Box { T x, y, w, h; };

template <typename T>
T overlap(T x1, T w1, T x2, T w2) {
    const T right = std::min(x1 + w1 / T(2), x2 + w2 / T(2));
    const T left = std::max(x1 - w1 / T(2), x2 - w2 / T(2));
    return right - left;
}

template <typename T>
T box_iou(const Box<T>& a, const Box<T>& b) {
    const T w = overlap(a.x, a.w, b.x, b.w);
    const T h = overlap(a.y, a.h, b.y, b.h);
    const T inter = (w < T(0) || h < T(0)) ? T(0) : w * h;
    return inter / (a.w * a.h + b.w * b.h - inter);
}

template <typename T>
T box_rmse(const Box<T>& a, const Box<T>& b) {
    return std::sqrt((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y) +
                     (a.w - b.w) * (a.w - b.w) + (a.h - b.h) * (a.h - b.h));
}

}  // namespace

// x (N, D), truth (N, S*S, 1 + C + 4) -> (sum of scale * (target - x)^2, delta (N, D),
// [iou sum, true-class prob sum, class prob sum, responsible conf sum, conf sum, count]
// turned into Darknet's averages).
template <typename T>
static py::tuple detection_loss_forward(const Array<T>& x, const Array<T>& truth, int side,
                                        int num, int classes, bool use_sqrt, bool rescore,
                                        double object_scale, double noobject_scale,
                                        double class_scale, double coord_scale) {
    require(x.ndim() == 2 && truth.ndim() == 3, "detection_loss_forward: x must be 2-D and "
                                                "truth 3-D");
    const std::int64_t n = x.shape(0), d = x.shape(1);
    const std::int64_t cells = std::int64_t(side) * side;
    const std::int64_t conf0 = cells * classes, box0 = cells * (classes + num);
    const std::int64_t tstride = 1 + classes + 4;
    require(d == cells * (classes + num * 5) && truth.shape(0) == n && truth.shape(1) == cells &&
                truth.shape(2) == tstride,
            "detection_loss_forward: shapes do not match side, num and classes");
    Array<T> delta({n, d});
    const T* xp = cdata_of(x);
    const T* tp = cdata_of(truth);
    T* dp = data_of(delta);
    const T os = T(object_scale), ns = T(noobject_scale), cs = T(class_scale),
            ks = T(coord_scale), fside = T(side);
    double loss2 = 0, iou_sum = 0, cat_sum = 0, allcat_sum = 0, obj_sum = 0, anyobj_sum = 0;
    std::int64_t count = 0;
    {
        Release release;
#pragma omp parallel for reduction(+ : loss2, iou_sum, cat_sum, allcat_sum, obj_sum, \
                                       anyobj_sum, count) schedule(static) \
    if (n * d > PARALLEL_WORK)
        for (std::int64_t b = 0; b < n; ++b) {
            const T* xb = xp + b * d;
            T* db = dp + b * d;
            for (std::int64_t k = 0; k < d; ++k) db[k] = T(0);
            for (std::int64_t k = conf0; k < box0; ++k) {
                db[k] = ns * (T(0) - xb[k]);
                loss2 += noobject_scale * double(xb[k]) * double(xb[k]);
                anyobj_sum += xb[k];
            }
            for (std::int64_t i = 0; i < cells; ++i) {
                const T* t = tp + (b * cells + i) * tstride;
                if (t[0] == T(0)) continue;
                for (int c = 0; c < classes; ++c) {
                    const std::int64_t k = i * classes + c;
                    const T diff = t[1 + c] - xb[k];
                    db[k] = cs * diff;
                    loss2 += class_scale * double(diff) * double(diff);
                    if (t[1 + c] != T(0)) cat_sum += xb[k];
                    allcat_sum += xb[k];
                }
                const T* tb = t + 1 + classes;
                const Box<T> truth_box{tb[0] / fside, tb[1] / fside, tb[2], tb[3]};
                int best = -1;
                T best_iou = T(0), best_rmse = T(20);
                for (int j = 0; j < num; ++j) {
                    const T* o = xb + box0 + (i * num + j) * 4;
                    const Box<T> out{o[0] / fside, o[1] / fside, use_sqrt ? o[2] * o[2] : o[2],
                                     use_sqrt ? o[3] * o[3] : o[3]};
                    const T iou = box_iou(out, truth_box), rmse = box_rmse(out, truth_box);
                    if (best_iou > T(0) || iou > T(0)) {
                        if (iou > best_iou) { best = j; best_iou = iou; }
                    } else if (rmse < best_rmse) {
                        best = j;
                        best_rmse = rmse;
                    }
                }
                if (best < 0) best = 0;
                const T* o = xb + box0 + (i * num + best) * 4;
                const Box<T> out{o[0] / fside, o[1] / fside, use_sqrt ? o[2] * o[2] : o[2],
                                 use_sqrt ? o[3] * o[3] : o[3]};
                const T iou = box_iou(out, truth_box);
                const std::int64_t c = conf0 + i * num + best;
                const T target = rescore ? iou : T(1);
                loss2 -= noobject_scale * double(xb[c]) * double(xb[c]);
                loss2 += object_scale * double(target - xb[c]) * double(target - xb[c]);
                db[c] = os * (target - xb[c]);
                obj_sum += xb[c];
                const T goal[4] = {tb[0], tb[1], use_sqrt ? T(std::sqrt(tb[2])) : tb[2],
                                   use_sqrt ? T(std::sqrt(tb[3])) : tb[3]};
                const std::int64_t k = box0 + (i * num + best) * 4;
                for (int q = 0; q < 4; ++q) {
                    const T diff = goal[q] - xb[k + q];
                    db[k + q] = ks * diff;
                    loss2 += coord_scale * double(diff) * double(diff);
                }
                iou_sum += iou;
                ++count;
            }
        }
    }
    const double m = double(count);
    py::list stats;
    stats.append(count ? iou_sum / m : 0.0);
    stats.append(count ? cat_sum / m : 0.0);
    stats.append(count ? allcat_sum / (m * classes) : 0.0);
    stats.append(count ? obj_sum / m : 0.0);
    stats.append(anyobj_sum / double(n * cells * num));
    stats.append(double(count));
    return py::make_tuple(loss2, delta, stats);
}

REGISTER_NATIVE(m) {
    m.def("detection_loss_forward", &detection_loss_forward<float>,
          "YOLOv1 detection loss (float32): (sum scale*(t-x)^2, delta, stats)");
    m.def("detection_loss_forward", &detection_loss_forward<double>,
          "YOLOv1 detection loss (float64): (sum scale*(t-x)^2, delta, stats)");
}

}  // namespace minicnn
