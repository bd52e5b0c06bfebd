"""Euclidean (sum-of-squares) loss, Caffe's "EuclideanLoss": the regression loss.

    loss = sum((a - b)^2) / (2 N)          N = a.shape[0], the batch size (not the count)
    da = loss_weight * (a - b) / N         db = -da

Both inputs get a gradient (either may be the prediction). No kinks.
Impls: ref.
"""

from minicnn.ops._dispatch import Op

euclidean_loss_forward = Op("euclidean_loss_forward")
euclidean_loss_backward = Op("euclidean_loss_backward")


@euclidean_loss_forward.impl("ref")
def _euclidean_loss_forward_ref(a, b):
    """(loss as a 0-d array of a's dtype, a - b) for a, b of the same size."""
    diff = a - b.reshape(a.shape)
    return (diff.reshape(-1) @ diff.reshape(-1)) / a.dtype.type(2 * a.shape[0]), diff


@euclidean_loss_backward.impl("ref")
def _euclidean_loss_backward_ref(diff, loss_weight=1.0):
    """d(loss)/da for the diff = a - b that forward returned (d/db is its negative)."""
    return diff * diff.dtype.type(float(loss_weight) / diff.shape[0])


# --- CUDA (CuPy array expressions: one subtraction and a cuBLAS dot) -----------------------------

from minicnn import cuda  # noqa: E402


@euclidean_loss_forward.impl("cuda", available=cuda.importable)
def _euclidean_loss_forward_cuda(a, b):
    cp = cuda.cupy()
    diff = cp.subtract(a, b.reshape(a.shape))
    flat = cp.ascontiguousarray(diff).reshape(-1)
    loss = cp.dot(flat, flat) / a.dtype.type(2 * a.shape[0])
    return loss.astype(a.dtype, copy=False), diff


@euclidean_loss_backward.impl("cuda", available=cuda.importable)
def _euclidean_loss_backward_cuda(diff, loss_weight=1.0):
    return diff * cuda.loss_scale(loss_weight, float(diff.shape[0]), diff.dtype)
