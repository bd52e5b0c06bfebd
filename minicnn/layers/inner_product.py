"""The fully connected layers: InnerProduct, and Embed (InnerProduct on one-hot inputs)."""

import math

from minicnn import cuda, ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register


@register("InnerProduct")
class InnerProductLayer(Layer):
    """Caffe `InnerProduct`: y = x W^T + b, with x flattened from `axis` on into K features.
    Backward: dx = dy W, dW = dy^T x, db = dy summed over the items (derived in
    minicnn/ops/inner_product.py).

    blobs[0]: weights (num_output, K), or (K, num_output) with transpose: true;
    blobs[1]: bias (num_output,) when bias_term. The top has shape
    bottom.shape[:axis] + (num_output,). K is fixed at setup: a later input must keep it.
    In place (num_output == K), forward keeps a copy of x for the weight gradient.

    normalize: true (happynear's caffe-windows, AM-Softmax's and NormFace's cosine layer, field 7):
    every forward first rescales each weight row to unit length in place, w_n /= sqrt(|w_n|^2 +
    1e-12) (the fork's GPU code; its CPU code adds 1e-6), so the stored weights are the
    normalised ones; backward is the plain inner product's, as the fork's (the weights' diff is
    dy^T x, not the gradient through the normalisation). With transpose: true the fork rescales
    the wrong values (it reads the K x N blob as N rows of K); minicnn refuses the pair."""
    param_field = "inner_product_param"
    exact_num_bottom = exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        if p.num_output < 1:
            raise LayerError(f"inner_product_param.num_output must be at least 1, "
                             f"got {p.num_output}")
        self.num_output, self.bias_term, self.transpose = p.num_output, p.bias_term, p.transpose
        self.normalize = p.normalize
        if self.normalize and self.transpose:
            raise LayerError("inner_product_param.normalize rescales weight rows (num_output x "
                             "K); it cannot be combined with transpose: true (K x num_output)")
        axis = self._axis(bottom[0])
        self.K = math.prod(bottom[0].shape[axis:])
        n_blobs = 2 if self.bias_term else 1
        if len(self.blobs) > n_blobs:
            raise LayerError(f"{len(self.blobs)} parameter blobs given, but an InnerProduct with "
                             f"bias_term {str(self.bias_term).lower()} has {n_blobs}")
        shape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        self.init_param(0, shape, p.weight_filler, "weights")
        if self.bias_term:
            self.init_param(1, (self.num_output,), p.bias_filler, "bias")
        self._x = None            # in place: x, which forward overwrites with y

    def _axis(self, blob):
        return self.canonical_axis(blob, self.param.inner_product_param.axis,
                                   "inner_product_param.axis")

    def reshape(self, bottom, top):
        axis = self._axis(bottom[0])
        k = math.prod(bottom[0].shape[axis:])
        if k != self.K:
            raise LayerError(f"input of shape {bottom[0].shape} has K = {k} values per item from "
                             f"axis {axis} on, but the weights were set up for K = {self.K}")
        self.axis = axis
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    def forward(self, bottom, top):
        if self.normalize:           # in place, as happynear's fork (works on host or device)
            w = self.blobs[0].data
            w *= ((w * w).sum(axis=1, keepdims=True) + 1e-12) ** -0.5
        b = self.blobs[1].data if self.bias_term else None
        self._x = None
        if bottom[0] is top[0]:       # in place: the product must not read what it writes
            if self.backward_needed:  # and the weight gradient needs x, not y
                self._x = bottom[0].data.copy()
            top[0].data[...] = ops.inner_product_forward(bottom[0].data, self.blobs[0].data, b,
                                                         axis=self.axis, transpose=self.transpose)
        else:
            ops.inner_product_forward(bottom[0].data, self.blobs[0].data, b, axis=self.axis,
                                      transpose=self.transpose, out=top[0].data)

    # the solver may hand this layer the step of its weights (Solver._layer_steps)
    steppable_params = (0,)

    def backward(self, top, propagate_down, bottom):
        need_dx = propagate_down[0]
        need_dw = self.param_propagate_down[0]
        need_db = self.bias_term and self.param_propagate_down[1]
        if not (need_dx or need_dw or need_db):
            return
        in_place = bottom[0] is top[0]
        # A speed path first: when the solver lends its step (Solver._layer_steps), dW is
        # computed and applied to the weights in one pass. The math is the same as the plain
        # path below: dx = dy W, dW += dy^T x, db += sum of dy (minicnn/ops/inner_product.py).
        step = self.param_steps.get(0) if need_dw else None
        if step is not None:
            # dx (from the old weights), then the weights' gradient and step in one pass. The
            # step goes to the diff, as after Caffe's update; SGD's step is the new history
            # itself, so the diff becomes a copy of it made only if someone reads it.
            defer = not step.nesterov
            if not in_place and ops.inner_product_backward_step(
                    top[0].diff, bottom[0].data, self.blobs[0].data,
                    None if defer else self.blobs[0].diff, step,
                    axis=self.axis, transpose=self.transpose,
                    dx_out=bottom[0].diff if need_dx else None):
                if defer:
                    self.blobs[0].defer_diff(step.history)
                step.taken = True
                need_dx = need_dw = False
                if not need_db:
                    return
            elif not step.cleared:     # the solver left this diff for the step to write
                self.blobs[0].diff[...] = 0
                step.cleared = True
        x = self._x if self._x is not None else bottom[0].data
        dx, _, _ = ops.inner_product_backward(
            top[0].diff, x, self.blobs[0].data, axis=self.axis,
            transpose=self.transpose, need_dx=need_dx, need_dw=need_dw, need_db=need_db,
            dx_out=None if in_place else bottom[0].diff,   # I1: bottom diffs are assigned,
            dw_acc=self.blobs[0].diff if need_dw else None,       # parameter diffs accumulate
            db_acc=self.blobs[1].diff if need_db else None)
        if need_dx and in_place:
            bottom[0].diff[...] = dx


@register("Embed")
class EmbedLayer(Layer):
    """Caffe `Embed`: a lookup table, y = W[x] + b. It is InnerProduct on one-hot inputs
    (onehot(x) @ W + b), computed by indexing.

    The bottom holds integer indices in [0, input_dim), stored as floats (any shape); the top
    has shape bottom.shape + (num_output,). blobs[0]: weights (input_dim, num_output), the
    transpose of InnerProduct's layout, one row per index; blobs[1]: bias (num_output,) when
    bias_term (default true). Backward adds each top diff row to the weight row of its index
    (a repeated index gets the sum) and gives the indices no gradient: asking for one is an
    error, as Caffe's CHECK; force_backward skips the bottom. An index that is not an integer
    or is out of range is a LayerError naming the value (Caffe only DCHECKs it); on the GPU a
    kernel checks the indices and the Net raises that error with the loss (deferred_flag), the
    kernels leaving the bad ones out meanwhile."""
    param_field = "embed_param"
    exact_num_bottom = exact_num_top = 1
    index_bottom = 0

    def layer_setup(self, bottom, top):
        p = self.param.embed_param
        for field in ("num_output", "input_dim"):
            if getattr(p, field) < 1:
                raise LayerError(f"Embed layer '{self.name}': embed_param.{field} must be "
                                 f"positive, got {getattr(p, field)}")
        if bottom[0] is top[0]:
            raise LayerError("Embed does not allow in-place computation (the top has one more "
                             "axis)")
        self.num_output, self.input_dim, self.bias_term = p.num_output, p.input_dim, p.bias_term
        n_blobs = 2 if self.bias_term else 1
        if len(self.blobs) > n_blobs:
            raise LayerError(f"{len(self.blobs)} parameter blobs given, but an Embed with "
                             f"bias_term {str(self.bias_term).lower()} has {n_blobs}")
        self.init_param(0, (self.input_dim, self.num_output), p.weight_filler, "weights")
        if self.bias_term:
            self.init_param(1, (self.num_output,), p.bias_filler, "bias")
        self._idx = None

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, x):
        if cuda.is_device_array(x):
            # checked by a kernel whose flag the Net reads with the loss (deferred_flag), not
            # here: reading x back would make the step wait for the GPU mid-forward
            idx, self.deferred_flag = ops.flag_embed_indices(x, self.input_dim)
            return idx
        idx, bad = ops.embed_indices(x, self.input_dim)
        if bad is not None:
            pos, value = bad
            raise LayerError(f"Embed layer '{self.name}': bottom value {value:g} at {pos} is not "
                             f"an index: indices must be integers in [0, input_dim = "
                             f"{self.input_dim})")
        return idx

    def forward(self, bottom, top):
        self._idx = self._indices(bottom[0].data)
        b = self.blobs[1].data if self.bias_term else None
        top[0].data[...] = ops.embed_forward(self._idx, self.blobs[0].data, b)

    def raise_deferred(self, bottom):
        self._indices(cuda.to_host(bottom[0].data))          # the host's check and message
        super().raise_deferred(bottom)

    def allow_force_backward(self, bottom_index):
        return False                  # no gradient exists for the indices

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise LayerError(f"Embed layer '{self.name}' cannot backpropagate to its input (the "
                             "indices have no gradient); set propagate_down: false")
        need_dw = self.param_propagate_down[0]
        need_db = self.bias_term and self.param_propagate_down[1]
        if need_dw or need_db:
            idx = self._idx if self._idx is not None else self._indices(bottom[0].data)
            ops.embed_backward(top[0].diff, idx, self.blobs[0].shape, need_dw=need_dw,
                               need_db=need_db, dw_acc=self.blobs[0].diff if need_dw else None,
                               db_acc=self.blobs[1].diff if need_db else None)
