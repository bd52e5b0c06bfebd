"""The face-recognition forks' losses: CenterLoss (ydwen/caffe-face), SphereFace's
MarginInnerProduct (A-Softmax, wy1iu/sphereface) and AM-Softmax's LabelSpecificAdd (happynear),
and happynear's Normalize (AM-Softmax's and NormFace's feature normalisation).

Impls: ref only (NumPy; the layers are host layers in a GPU net). Each op follows its fork's
arithmetic, including where the fork's backward is not the gradient of its forward (see the
functions' docstrings); minicnn.layers.face says why.

Shapes: x (M, K) features, one row per item; labels (M,) whole-number classes; centers and
weights (N, K), one row per class.
"""

import numpy as np

from minicnn.ops._dispatch import Op

center_loss_forward, center_loss_backward = Op("center_loss_forward"), Op("center_loss_backward")
margin_inner_product_forward = Op("margin_inner_product_forward")
margin_inner_product_backward = Op("margin_inner_product_backward")
label_specific_add_forward = Op("label_specific_add_forward")
face_normalize_forward = Op("face_normalize_forward")
face_normalize_backward = Op("face_normalize_backward")
channel_scale_forward = Op("channel_scale_forward")
channel_scale_backward = Op("channel_scale_backward")
global_lse_margin_forward = Op("global_lse_margin_forward")
global_lse_margin_backward = Op("global_lse_margin_backward")

MARGIN_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE")


def _check_margin_type(margin_type):
    if margin_type not in MARGIN_TYPES:
        raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, not {margin_type!r}")


# --- CenterLoss ----------------------------------------------------------------------------------

@center_loss_forward.impl("ref")
def _center_loss_forward_ref(x, labels, centers):
    """loss = sum_i ||x_i - c_{y_i}||^2 / (2 M). Returns (loss, distance), distance = x - c_y."""
    distance = x - centers[labels]                                   # (M, K)
    return float(np.sum(distance * distance)) / x.shape[0] / 2, distance


@center_loss_backward.impl("ref")
def _center_loss_backward_ref(distance, labels, num_classes, loss_weight):
    """(dx, dcenters) as the fork writes them.

    dx = loss_weight * (x - c_y) / M: the gradient. dcenters is the fork's own update rule, not
    the gradient: row j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), n_j the items of class j
    in the batch, 0 for a class the batch lacks; loss_weight does not scale it (the centers'
    lr_mult is the paper's alpha)."""
    m, k = distance.shape
    dx = distance * (loss_weight / m)
    variation = np.zeros((num_classes, k), distance.dtype)
    np.add.at(variation, labels, -distance)
    count = np.bincount(labels, minlength=num_classes).astype(distance.dtype)
    return dx, variation / (count + 1)[:, None]


# --- MarginInnerProduct (A-Softmax) --------------------------------------------------------------

def _signs(cos, margin_type):
    """The fork's sign terms, which pick k in psi(theta) = (-1)^k cos(m theta) - 2k."""
    s0 = np.sign(cos)
    if margin_type == "TRIPLE":
        s1 = np.sign(np.abs(cos) - 0.5)
        return s1, s0 * (1 + s1) - 2
    if margin_type == "QUADRUPLE":
        s3 = s0 * np.sign(2 * cos * cos - 1)
        return s3, 2 * s0 + s3 - 3
    return s0, None


def margin_psi(cos, margin_type):
    """psi(cos theta) = (-1)^k cos(m theta) - 2k for m = 1..4, by the fork's polynomials."""
    c = cos
    if margin_type == "SINGLE":
        return c
    a, b = _signs(c, margin_type)
    if margin_type == "DOUBLE":
        return 2 * a * c * c - 1
    if margin_type == "TRIPLE":
        return a * (4 * c ** 3 - 3 * c) + b
    return a * (8 * c ** 4 - 8 * c * c + 1) + b


def _margin_coefficients(cos, x_norm, margin_type):
    """The fork's (coeff_w, coeff_x) of the target logit |x| psi(cos): d/dx = coeff_w * w +
    coeff_x * x, i.e. psi'(cos) and (psi - cos psi'(cos)) / |x|, before the fork rescales them."""
    c = cos
    a, b = _signs(c, margin_type)
    if margin_type == "DOUBLE":
        return 4 * a * c, -(2 * a * c * c + 1) / x_norm
    if margin_type == "TRIPLE":
        return a * (12 * c * c - 3), -(8 * a * c ** 3 - b) / x_norm
    return (a * (32 * c ** 3 - 16 * c),
            -(a * (24 * c ** 4 - 8 * c * c - 1) - b) / x_norm)


def margin_lambda(iteration, *, base, gamma, power, lambda_min):
    """lambda = max(base * (1 + gamma * iteration)^-power, lambda_min), the fork's annealing."""
    return max(base * (1.0 + gamma * iteration) ** (-power), lambda_min)


@margin_inner_product_forward.impl("ref")
def _margin_inner_product_forward_ref(x, w, labels, *, lam, margin_type):
    """y = x w^T, then for each item's target class t (w's rows of unit length):
    y_t = (lam * x.w_t + |x| psi(cos theta_t)) / (1 + lam), cos theta_t = x.w_t / |x|.
    SINGLE leaves y = x w^T (lam plays no part). Returns (y, x_norm)."""
    _check_margin_type(margin_type)
    y = x @ w.T                                                       # (M, N)
    x_norm = np.sqrt(np.sum(x * x, axis=1))
    if margin_type != "SINGLE":
        rows = np.arange(x.shape[0])
        xw = y[rows, labels]
        psi = margin_psi(xw / x_norm, margin_type)
        y[rows, labels] = (lam * xw + x_norm * psi) / (1 + lam)
    return y, x_norm


@margin_inner_product_backward.impl("ref")
def _margin_inner_product_backward_ref(dy, x, w, labels, x_norm, *, lam, margin_type):
    """(dx, dw) as the fork computes them; neither is the gradient of the forward for the
    margin types. dw = dy^T x, the plain inner product's, whatever the type (the margin and the
    rows' normalisation play no part). dx: the plain dy w for every class but the target; for
    the target, lam/(1+lam) dy_t w_t plus 1/(1+lam) dy_t (a w_t + b x), where (a, b) is the
    gradient's pair (coeff_w, coeff_x) scaled to unit length, sqrt(a^2 + b^2) = 1."""
    _check_margin_type(margin_type)
    dw = dy.T @ x
    dx = dy @ w
    if margin_type == "SINGLE":
        return dx, dw
    rows = np.arange(x.shape[0])
    wt = w[labels]                                                    # (M, K)
    dyt = dy[rows, labels][:, None]
    a, b = _margin_coefficients(np.sum(x * wt, axis=1) / x_norm, x_norm, margin_type)
    norm = np.sqrt(a * a + b * b)
    a, b = (a / norm)[:, None], (b / norm)[:, None]
    dx += dyt * (lam / (1 + lam) - 1) * wt + dyt / (1 + lam) * (a * wt + b * x)
    return dx, dw


# --- LabelSpecificAdd (AM-Softmax) ---------------------------------------------------------------

def label_specific_add_bias(iteration, *, base, gamma, power, bias_min, bias_max):
    """happynear's annealed margin: min(max(base + (1 + gamma * iter)^power - 1, bias_min),
    bias_max)."""
    bias = base + (1.0 + gamma * iteration) ** power - 1.0
    return min(max(bias, bias_min), bias_max)


@label_specific_add_forward.impl("ref")
def _label_specific_add_forward_ref(x, labels, *, bias):
    """y = x, with bias added to each item's target score where that score is above -bias
    (the fork's condition: with bias = -m, cos theta_t > m becomes cos theta_t - m)."""
    y = x.copy()
    rows = np.arange(x.shape[0])
    target = y[rows, labels]
    y[rows, labels] = np.where(target > -bias, target + bias, target)
    return y


# --- happynear's Normalize -----------------------------------------------------------------------
# x, y, dy: (N, C, S), S = H*W; norm, a: (N, 1, S). The norm is over the channels at each place.

FACE_NORM_EPS = {"L2": 1e-12, "L1": 1e-6}   # the fork's GPU values (its CPU code's L2 eps: 1e-6)


@face_normalize_forward.impl("ref")
def _face_normalize_forward_ref(x, *, normalize_type):
    """y = x / norm, norm = sqrt(sum_c x^2 + 1e-12) (L2) or sum_c |x| + 1e-6 (L1).
    Returns (y, norm)."""
    if normalize_type == "L2":
        norm = np.sqrt(np.sum(x * x, axis=1, keepdims=True) + FACE_NORM_EPS["L2"])
    else:
        norm = np.sum(np.abs(x), axis=1, keepdims=True) + FACE_NORM_EPS["L1"]
    return x / norm, norm


@face_normalize_backward.impl("ref")
def _face_normalize_backward_ref(dy, y, norm, *, normalize_type, fix_gradient, dnorm=None):
    """dx = (dy - g <y, dy>) / norm, g = y (L2) or sign(y) = sign(x) (L1): the gradient. With
    fix_gradient the division by norm is left out (the fork's GPU code; its CPU code ignores
    the flag). dnorm (bp_norm with the norm as top[1]) adds dnorm * g, the norm's gradient."""
    g = y if normalize_type == "L2" else np.sign(y)
    dx = dy - g * np.sum(y * dy, axis=1, keepdims=True)
    if not fix_gradient:
        dx = dx / norm
    if dnorm is not None:
        dx = dx + dnorm * g
    return dx


# --- happynear's ChannelScale --------------------------------------------------------------------
# x, dy: (N, C, S); scale: (N, 1, S), one value per place (Normalize's norm top).

@channel_scale_forward.impl("ref")
def _channel_scale_forward_ref(x, scale):
    """y = x * scale, the place's scale for every channel."""
    return x * scale


@channel_scale_backward.impl("ref")
def _channel_scale_backward_ref(dy, x, scale, *, backward_feature=True, backward_scale=True):
    """(dx, dscale): dx = dy * scale (dy with backward_feature false), dscale = sum_c dy * x
    (0 with backward_scale false): the gradient when both are on."""
    dx = dy * scale if backward_feature else dy.copy()
    dscale = np.sum(dy * x, axis=1, keepdims=True) if backward_scale else np.zeros_like(scale)
    return dx, dscale


# --- happynear's GlobalLSEMargin -----------------------------------------------------------------
# x: (N, C) cosines, one row per item; labels: (N,) ints; s: the scale, a float or one value per
# item (N,) (the feature norm, with a third bottom). The margin is a running statistic the
# layer keeps (minicnn.layers.face.GlobalLSEMarginLayer); the ops take it as a number.

def global_lse_margin_stats(x, labels, s):
    """Per item: (target cosine, LSE of the other cosines at temperature s, the largest other
    cosine floored at -1), as the fork's select_target_logits, CalcLSE and max_negative_logit:
    m_n = max(-1, max_{c != t} x_nc), lse_n = log(sum_{c != t} exp(s (x_nc - m_n))) / s + m_n."""
    n = x.shape[0]
    rows = np.arange(n)
    target = x[rows, labels]
    others = x.copy()
    others[rows, labels] = -np.inf
    max_negative = np.maximum(others.max(axis=1), -1.0)   # the fork starts its max at -1
    s = np.broadcast_to(np.asarray(s, dtype=x.dtype), (n,))
    total = np.exp(s[:, None] * (others - max_negative[:, None])).sum(axis=1)  # target: exp(-inf)
    lse = np.log(total) / s + max_negative
    return target, lse, max_negative


def margin_mean_shift(margins, mu, loop=1):
    """The fork's MeanShift: up to ``loop`` times, mu = the mean of the margins within 0.1 of
    mu, stopping once mu moves less than 0.001; when none is that close, mu restarts at the
    mean of all (not counted as a pass). The fork loops forever when none is within 0.1 of
    that mean either (or a margin is NaN); minicnn returns the mean then."""
    margins = np.asarray(margins, dtype=np.float64)
    last_mu = mu
    restarted = False
    while loop > 0:
        loop -= 1
        close = np.abs(margins - mu) < 0.1
        if not close.any():
            if restarted:                       # the fork's endless loop
                return float(mu)
            mu = last_mu = float(margins.mean())
            restarted = True
            loop += 1
            continue
        restarted = False
        mu = float(margins[close].mean())
        if abs(last_mu - mu) < 0.001:
            break
        last_mu = mu
    return float(mu)


@global_lse_margin_forward.impl("ref")
def _global_lse_margin_forward_ref(x, labels, *, margin, s):
    """y = s (x - margin onehot(label)): the target cosine less the margin where the margin is
    positive (the fork's condition), everything times s (a float, or one value per item)."""
    y = x.copy()
    if margin > 0:
        rows = np.arange(x.shape[0])
        y[rows, labels] -= margin
    s = np.asarray(s, dtype=x.dtype)
    return y * (s[:, None] if s.ndim else s)


@global_lse_margin_backward.impl("ref")
def _global_lse_margin_backward_ref(dy, y, *, s):
    """(dx, ds): dx = s dy, the margin held constant (the fork's: it is a statistic); ds =
    sum dy * y / s, summed over all for a scalar s, per item for per-item s (the norm bottom):
    the gradients of y = s (x - margin onehot) in x and s."""
    s = np.asarray(s, dtype=dy.dtype)
    if s.ndim:
        return dy * s[:, None], np.sum(dy * y, axis=1) / s
    return dy * s, float(np.sum(dy * y)) / float(s)
