// YOLOv1's detection loss (minicnn/ops/detection.py, Darknet's detection_layer.c), one thread
// per (image, cell): the thread writes every delta of its cell (its class probabilities, its
// predictors' confidences and boxes) and its share of the loss and of Darknet's statistics,
// part[cell] = (loss2, iou, Pos Cat, All Cat, Pos Obj, Any Obj) in double and counted[cell];
// the host sums those (no atomics). Box arithmetic is in the array's type, as the reference.
#include "common.cuh"

namespace det {

template <typename T> __device__ __forceinline__ T overlap(T x1, T w1, T x2, T w2) {
  return mc::min_(x1 + w1 / T(2), x2 + w2 / T(2)) - mc::max_(x1 - w1 / T(2), x2 - w2 / T(2));
}

template <typename T> __device__ __forceinline__ T iou(const T* a, const T* b) {
  T w = overlap(a[0], a[2], b[0], b[2]), h = overlap(a[1], a[3], b[1], b[3]);
  T inter = (w < T(0) || h < T(0)) ? T(0) : w * h;
  return inter / (a[2] * a[3] + b[2] * b[3] - inter);
}

template <typename T> __device__ __forceinline__ T rmse(const T* a, const T* b) {
  T s = T(0);
  for (int q = 0; q < 4; ++q) s += (a[q] - b[q]) * (a[q] - b[q]);
  return mc::sqrt_(s);
}

}  // namespace det

template <typename T>
__global__ void detection_loss_forward(const T* x, const T* truth, T* delta, double* part,
                                       int* counted, int D, int side, int num, int classes,
                                       int sqrt_wh, int rescore, T object_scale,
                                       T noobject_scale, T class_scale, T coord_scale,
                                       long long n) {
  int cells = side * side;
  MINICNN_KERNEL_LOOP(idx, n) {               // n = N * cells
    long long b = mc::div_(idx, cells);
    int i = (int)mc::mod_(idx, cells);
    const T* xb = x + b * D;
    T* db = delta + b * D;
    const T* tr = truth + idx * (1 + classes + 4);
    int conf0 = cells * classes, box0 = cells * (classes + num);
    double loss2 = 0, iou_sum = 0, cat = 0, allcat = 0, obj = 0, anyobj = 0;
    int count = 0;
    for (int j = 0; j < num; ++j) {           // every confidence: no object
      int c = conf0 + i * num + j;
      T v = xb[c];
      db[c] = noobject_scale * (T(0) - v);
      loss2 += (double)noobject_scale * (double)v * (double)v;
      anyobj += (double)v;
    }
    for (int c = 0; c < classes; ++c) db[i * classes + c] = T(0);
    for (int k = 0; k < num * 4; ++k) db[box0 + i * num * 4 + k] = T(0);
    if (tr[0] != T(0)) {
      for (int c = 0; c < classes; ++c) {
        T p = xb[i * classes + c], diff = tr[1 + c] - p;
        db[i * classes + c] = class_scale * diff;
        loss2 += (double)class_scale * (double)diff * (double)diff;
        if (tr[1 + c] != T(0)) cat += (double)p;
        allcat += (double)p;
      }
      T tx = tr[1 + classes], ty = tr[2 + classes], tw = tr[3 + classes], th = tr[4 + classes];
      T true_box[4] = {tx / T(side), ty / T(side), tw, th};
      int best = -1;
      T best_iou = T(0), best_rmse = T(20);
      for (int j = 0; j < num; ++j) {
        const T* o = xb + box0 + (i * num + j) * 4;
        T box[4] = {o[0] / T(side), o[1] / T(side), sqrt_wh ? o[2] * o[2] : o[2],
                    sqrt_wh ? o[3] * o[3] : o[3]};
        T u = det::iou(box, true_box), r = det::rmse(box, true_box);
        if (best_iou > T(0) || u > T(0)) {    // once an IoU is positive, IoU decides
          if (u > best_iou) {
            best = j;
            best_iou = u;
          }
        } else if (r < best_rmse) {
          best = j;
          best_rmse = r;
        }
      }
      if (best < 0) best = 0;
      const T* o = xb + box0 + (i * num + best) * 4;
      T box[4] = {o[0] / T(side), o[1] / T(side), sqrt_wh ? o[2] * o[2] : o[2],
                  sqrt_wh ? o[3] * o[3] : o[3]};
      T u = det::iou(box, true_box);
      int c = conf0 + i * num + best;         // its confidence: object, not noobject
      T v = xb[c], target = rescore ? u : T(1);
      loss2 -= (double)noobject_scale * (double)v * (double)v;
      loss2 += (double)object_scale * (double)(target - v) * (double)(target - v);
      db[c] = object_scale * (target - v);
      obj += (double)v;
      T goal[4] = {tx, ty, sqrt_wh ? mc::sqrt_(tw) : tw, sqrt_wh ? mc::sqrt_(th) : th};
      for (int q = 0; q < 4; ++q) {
        T diff = goal[q] - o[q];
        db[box0 + (i * num + best) * 4 + q] = coord_scale * diff;
        loss2 += (double)coord_scale * (double)diff * (double)diff;
      }
      iou_sum += (double)u;
      count = 1;
    }
    double* out = part + idx * 6;
    out[0] = loss2;
    out[1] = iou_sum;
    out[2] = cat;
    out[3] = allcat;
    out[4] = obj;
    out[5] = anyobj;
    counted[idx] = count;
  }
}
