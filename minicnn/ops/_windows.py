"""Which kernel taps of a sliding window read which input pixels, along one axis.

Convolution and pooling both visit, for every output position p, the input positions
    r = p * stride + tap * dilation - pad,      tap = 0 .. kernel - 1
A tap whose r falls outside [0, size) reads padding (zero for convolution and AVE pooling,
-inf for MAX pooling), so instead of materializing a padded copy of the input, the references
slice only the part of each tap that lands on the image. That keeps memory and time bounded by
the input and output sizes, whatever the pad, dilation or (for pooling) kernel size.
"""


def _ceil_div(a, b):
    return -((-a) // b)


def tap_ranges(size, kernel, stride, pad, dilation, n_out):
    """[(tap, first output, end output, first input)] for every tap that reads the image:
    outputs first..end-1 of this tap read inputs first_input, first_input + stride, ..."""
    taps = []
    for tap in _useful_taps(size, kernel, stride, pad, dilation, n_out):
        shift = tap * dilation - pad
        lo = max(0, _ceil_div(-shift, stride))                   # first p with r >= 0
        hi = min(n_out, (size - 1 - shift) // stride + 1)       # past the last p with r < size
        if lo < hi:
            taps.append((tap, lo, hi, lo * stride + shift))
    return taps


def _useful_taps(size, kernel, stride, pad, dilation, n_out):
    """The taps that land on the image for some output: an output p sees image rows only for
    taps in [(pad - p*stride) / dilation, (pad - p*stride + size - 1) / dilation]."""
    if kernel <= 4 * size + 16:                             # the usual case: try every tap
        return range(kernel)
    spans = []
    for p in range(n_out):
        first = max(0, _ceil_div(pad - p * stride, dilation))
        last = min(kernel - 1, (pad - p * stride + size - 1) // dilation)
        if first <= last:
            spans.append((first, last))
    taps, end = [], -1
    for first, last in sorted(spans):                       # merge the spans, in order
        taps.extend(range(max(first, end + 1), last + 1))
        end = max(end, last)
    return taps
