"""Gradient checking: compare a layer's backward with finite differences of its forward
(check_layer_gradient), and a layer run in place with the same layer out of place
(check_in_place).

    from minicnn.testing import check_layer_gradient
    check_layer_gradient(lambda: ConvolutionLayer(num_output=2, kernel_size=3,
                                                  weight_filler={"type": "gaussian"}),
                         [np.random.randn(2, 3, 5, 5)])

The objective is L = sum_i <top_i, R_i> for fixed random R_i, so dL/dtop_i = R_i: backward is
run once with those diffs (from stale random diffs: backward must assign the bottom diffs and add
to the parameter diffs), and each checked input element x is moved by +-eps to get
(L(x+eps) - L(x-eps)) / 2eps. Everything runs in float64. As in Caffe's GradientChecker,
elements within ``kink_range`` of a kink (ReLU's 0) are skipped, since the derivative jumps there.
"""

import numpy as np

from minicnn.blob import Blob


def central_difference(f, flat, i, eps=1e-6):
    """(f(x + eps e_i) - f(x - eps e_i)) / 2eps, moving element i of the 1-D view ``flat``."""
    old = flat[i]
    flat[i] = old + eps
    plus = f()
    flat[i] = old - eps
    minus = f()
    flat[i] = old
    return (plus - minus) / (2 * eps)


def numerical_grad(f, array, eps=1e-6):
    """d f() / d array by central differences; ``f`` takes no arguments and reads ``array``."""
    flat = array.reshape(-1)
    grad = [central_difference(f, flat, i, eps) for i in range(flat.size)]
    return np.array(grad, dtype=np.float64).reshape(array.shape)


class GradientMismatch(AssertionError):
    pass


def check_layer_gradient(make_layer, bottoms, *, check_bottoms=None, check_params=True,
                         tops=None, eps=1e-6, rtol=1e-5, atol=1e-8, kink=None, kink_range=1e-3,
                         max_checks=None, seed=1701):
    """Check a layer's bottom and parameter diffs against finite differences (float64).

    make_layer     a Layer, or a function or class returning a fresh one (a Python layer's
                   object, with pycaffe's setup/reshape/forward/backward, is checked as the
                   Net runs it)
    bottoms        input arrays (converted to float64)
    check_bottoms  indices of bottoms whose diff to check (default: all the layer allows)
    check_params   also check the parameter blobs' diffs (True), or those of the indices given
    tops           indices of tops in the objective (default: all)
    kink           skip elements x with |x - kink| < kink_range (e.g. kink=0 for ReLU)
    max_checks     check at most this many elements per blob (chosen at random)
    Returns the largest relative error seen; raises GradientMismatch with the worst element.
    """
    from minicnn.layer import Layer
    is_layer = not isinstance(make_layer, type) and hasattr(make_layer, "forward")
    layer = make_layer if is_layer else make_layer()
    what = type(layer).__name__               # a Python layer's own class, not its wrapper
    if not isinstance(layer, Layer):          # pycaffe's protocol, subclassing caffe.Layer or not
        layer = _python_layer_for(layer)
    rng = np.random.default_rng(seed)
    bottom = [Blob.from_array(np.asarray(a, dtype=np.float64), np.float64) for a in bottoms]
    top = [Blob((), np.float64) for _ in range(layer.default_num_tops())]
    layer.setup(bottom, top)
    tops = list(range(len(top))) if tops is None else list(tops)

    def run_forward():
        layer.rng = np.random.default_rng(seed)          # random layers draw the same each time
        layer.forward(bottom, top)

    run_forward()
    weights = {i: rng.standard_normal(top[i].shape) for i in tops}

    def objective():
        run_forward()
        return sum(float(np.sum(top[i].data * weights[i])) for i in tops)

    if check_bottoms is None:
        check_bottoms = [i for i in range(len(bottom)) if layer.allow_force_backward(i)]
    propagate_down = [i in check_bottoms for i in range(len(bottom))]
    # backward assigns bottom diffs and adds to parameter diffs (CONTRIBUTING.md, I1): start
    # both from stale values, which a bottom diff must overwrite and a parameter diff keep
    for i in check_bottoms:
        bottom[i].diff[...] = rng.standard_normal(bottom[i].shape)
    stale = [rng.standard_normal(blob.shape) for blob in layer.blobs]
    for blob, old in zip(layer.blobs, stale):
        blob.diff[...] = old
    run_forward()
    for i, t in enumerate(top):
        t.diff[...] = weights[i] if i in weights else 0
    layer.backward(top, propagate_down, bottom)
    analytic = [(f"bottom[{i}]", bottom[i], bottom[i].diff.copy()) for i in check_bottoms]
    if check_params:
        wanted = range(len(layer.blobs)) if check_params is True else check_params
        analytic += [(f"blobs[{k}]", layer.blobs[k], layer.blobs[k].diff - stale[k])
                     for k in wanted]

    worst = 0.0
    for label, blob, grad in analytic:
        values, grad = blob.data.reshape(-1), grad.reshape(-1)
        indices = np.arange(values.size)
        if max_checks is not None and values.size > max_checks:
            indices = rng.choice(values.size, max_checks, replace=False)
        for idx in indices:
            if kink is not None and label.startswith("bottom") and \
                    abs(values[idx] - kink) < kink_range:
                continue
            numeric = central_difference(objective, values, idx, eps)
            scale = max(abs(numeric), abs(grad[idx]), 1.0)
            error = abs(numeric - grad[idx]) / scale
            worst = max(worst, error)
            if abs(numeric - grad[idx]) > atol + rtol * scale:
                where = tuple(int(i) for i in np.unravel_index(idx, blob.shape))
                raise GradientMismatch(
                    f"{what} {label} element {where}:"
                    f" analytic {grad[idx]:.10g}, numeric {numeric:.10g}")
    objective()                                           # leave the tops as forward made them
    return worst


def _python_layer_for(impl):
    """A Python layer's object (pycaffe's protocol: setup, reshape, forward, backward) inside
    the Layer that a Net's type: "Python" gives it, without a module to import it from."""
    from minicnn.layers.python_layer import PythonLayer

    class GivenPythonLayer(PythonLayer):
        def layer_setup(self, bottom, top):
            self.where = f"python layer {type(impl).__name__}"
            self.set_up_impl(impl, bottom, top)

    return GivenPythonLayer()


def check_in_place(make_layer, x, top_diff, tol=1e-12):
    """Run a one-bottom layer with top == bottom and with a top of its own, from the same
    weights (``make_layer()`` must build the same layer each call, e.g. with a seeded rng), and
    assert that the top, the bottom diff and the parameter diffs agree within ``tol``."""
    runs = []
    for in_place in (True, False):
        layer = make_layer()
        bottom = [Blob.from_array(np.array(x))]
        top = bottom if in_place else [Blob((), bottom[0].dtype)]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = top_diff
        layer.backward(top, [True], bottom)
        runs.append([y, bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
    for got, want in zip(*runs):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
