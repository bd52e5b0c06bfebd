"""Inverted dropout, Caffe's "Dropout" with dropout_param.dropout_ratio = p.

    mask ~ Bernoulli(1 - p), one draw per element        (dropout_mask, in the TRAIN phase)
    y    = x  * mask / (1 - p)
    dx   = dy * mask / (1 - p)                           (the same mask as the forward)

The division at train time keeps E[y] = x, so the TEST phase is the identity and needs no op.
Neither pass reads x in backward, so the layer is safe in place.
Impls: ref.
"""

from minicnn.ops._dispatch import Op

__all__ = ["dropout_backward", "dropout_forward", "dropout_mask"]

dropout_forward, dropout_backward = Op("dropout_forward"), Op("dropout_backward")


def dropout_mask(rng, shape, ratio):
    """A boolean keep-mask of ``shape``: True with probability 1 - ratio, drawn from ``rng``."""
    return rng.random(shape) >= ratio


def _scale(dtype, ratio):
    return dtype.type(1.0 / (1.0 - ratio))                 # held in the array's dtype, as Caffe


# --- reference ---------------------------------------------------------------------------------

@dropout_forward.impl("ref")
def _dropout_forward_ref(x, mask, ratio):
    return x * mask * _scale(x.dtype, ratio)


@dropout_backward.impl("ref")
def _dropout_backward_ref(dy, mask, ratio):
    return dy * mask * _scale(dy.dtype, ratio)



# --- CUDA (kernels/dropout.cu) ------------------------------------------------------------------
# The mask may be a host array (the layer draws it from its generator): it is copied over.

import numpy as np  # noqa: E402

from minicnn import cuda  # noqa: E402


def _cuda_dropout(x, mask, ratio):
    cp = cuda.cupy()
    x = cuda.contiguous(x)
    mask = cp.ascontiguousarray(cuda.to_device(mask) if not cuda.is_device_array(mask) else mask,
                                dtype=np.bool_).reshape(x.shape)
    y = cp.empty_like(x)
    cuda.launch_1d(cuda.kernel("dropout.cu", "dropout_forward", x.dtype), x.size, x, mask, y,
                   _scale(x.dtype, ratio))
    return y


@dropout_forward.impl("cuda", available=cuda.importable)
def _dropout_forward_cuda(x, mask, ratio):
    return _cuda_dropout(x, mask, ratio)


@dropout_backward.impl("cuda", available=cuda.importable)
def _dropout_backward_cuda(dy, mask, ratio):
    return _cuda_dropout(dy, mask, ratio)
