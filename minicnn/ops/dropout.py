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

