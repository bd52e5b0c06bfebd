"""DeepLab's SegAccuracy: a confusion matrix of per-pixel predictions, and its three scores.

    confusion[g, p] += 1 for every pixel labelled g (not ignored) whose best score is class p
    pixel accuracy  = trace / total                          (0 when nothing was counted)
    class accuracy  = mean over classes with pixels of confusion[g, g] / row_sum[g]   (0 if none)
    mean IU         = mean over all C classes of diag / (row_sum + col_sum - diag), a class
                      with union == intersection (absent from labels and predictions) giving 1

The fork (deeplab-public's util/confusion_matrix.cpp, seg_accuracy_layer.cpp) picks the best
class by std::partial_sort on (score, class) pairs with std::greater: a tie goes to the higher
class index. Labels are cast to int (truncated). Impls: ref only (a GPU net runs the layer on
host copies).
"""

import numpy as np

from minicnn.ops._dispatch import Op

__all__ = ["seg_accuracy_scores", "seg_confusion_forward"]

seg_confusion_forward = Op("seg_confusion_forward")


@seg_confusion_forward.impl("ref")
def _seg_confusion_forward_ref(scores, labels, *, ignore_labels=()):
    """(C, C) int64 counts, rows the labels, columns the predictions. ``scores`` (N, C, H, W),
    ``labels`` (N, 1, H, W) holding classes in [0, C) or one of ``ignore_labels``."""
    c = scores.shape[1]
    best = c - 1 - np.argmax(scores[:, ::-1], axis=1)        # ties: the higher index
    truth = np.trunc(labels[:, 0]).astype(np.int64)
    keep = ~np.isin(truth, np.asarray(list(ignore_labels), np.int64))
    return np.bincount(truth[keep] * c + best[keep], minlength=c * c).reshape(c, c)


def seg_accuracy_scores(confusion):
    """(pixel accuracy, mean class accuracy, mean IU) of a confusion matrix, as floats."""
    confusion = np.asarray(confusion, np.float64)
    diag, rows, cols = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    total = confusion.sum()
    pixel = diag.sum() / total if total else 0.0
    seen = rows > 0
    per_class = float(np.mean(diag[seen] / rows[seen])) if seen.any() else 0.0
    union = rows + cols - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union == diag, 1.0, diag / union)
    return float(pixel), per_class, float(np.mean(iou))
