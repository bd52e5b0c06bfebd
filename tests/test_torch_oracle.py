"""PyTorch's float64 CPU ops as an independent oracle for forward AND backward (OpenCV only
checks forward). Each case runs a minicnn layer on its own and the matching torch function
with autograd on the same inputs and top diff, and compares outputs and every gradient.

Where the two define things differently, the cases stay inside the common ground: torch's
ceil_mode drops a last window that starts in the padding even when pad is 0 (Caffe only with
pad > 0), so pooled sizes are chosen where the rules agree.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import layers as L

torch = pytest.importorskip("torch")
F = torch.nn.functional


def run_layer(layer, inputs, seed=0):
    """(outputs, bottom diffs, param diffs, top diffs) of a standalone layer for a random top
    diff (for a loss layer: its loss weight, 1)."""
    outs = layer(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    rng = np.random.default_rng(seed)
    diffs = [] if layer.is_loss else [rng.standard_normal(o.shape) for o in outs]
    for blob in layer.blobs:
        blob.diff[...] = 0
    grads = layer.backprop(*diffs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    return [o.copy() for o in outs], list(grads), [b.diff.copy() for b in layer.blobs], diffs


def run_torch(fn, arrays, diffs):
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    outs = fn(*tensors)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [torch.tensor(d) for d in diffs])
    return [o.detach().numpy() for o in outs], [t.grad.numpy() for t in tensors]


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@st.composite
def conv_cases(draw):
    group = draw(st.sampled_from([1, 2, 3]))
    c, f = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 3))
    k, s, p, d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2)),
                  draw(st.integers(1, 2)))
    h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    assume(h + 2 * p >= d * (k - 1) + 1 and w + 2 * p >= d * (k - 1) + 1)
    return c, f, k, s, p, d, group, h, w, draw(st.integers(0, 2**31))


@given(conv_cases())
@settings(max_examples=30)
def test_convolution(case):
    c, f, k, s, p, d, group, h, w, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w))
    layer = L.ConvolutionLayer(num_output=f, kernel_size=k, stride=s, pad=p, dilation=d,
                               group=group, weight_filler={"type": "gaussian"},
                               bias_filler={"type": "gaussian"})
    outs, (dx,), (dw, db), diffs = run_layer(layer, [x], seed)
    w_, b_ = layer.blobs[0].data, layer.blobs[1].data
    t_outs, (tdx, tdw, tdb) = run_torch(
        lambda x, w, b: F.conv2d(x, w, b, s, p, d, group), [x, w_, b_], diffs)
    for a, b in zip(outs + [dx, dw, db], t_outs + [tdx, tdw, tdb]):
        close(a, b)


@given(conv_cases())
@settings(max_examples=30)
def test_deconvolution(case):
    c, f, k, s, p, d, group, h, w, seed = case
    assume(min(s * (h - 1), s * (w - 1)) + d * (k - 1) + 1 - 2 * p >= 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w))
    layer = L.DeconvolutionLayer(num_output=f, kernel_size=k, stride=s, pad=p, dilation=d,
                                 group=group, weight_filler={"type": "gaussian"},
                                 bias_filler={"type": "gaussian"})
    outs, (dx,), (dw, db), diffs = run_layer(layer, [x], seed)
    w_, b_ = layer.blobs[0].data, layer.blobs[1].data
    t_outs, (tdx, tdw, tdb) = run_torch(
        lambda x, w, b: F.conv_transpose2d(x, w, b, s, p, 0, group, d), [x, w_, b_], diffs)
    for a, b in zip(outs + [dx, dw, db], t_outs + [tdx, tdw, tdb]):
        close(a, b)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("k, s, p, h", [(3, 2, 1, 8), (3, 2, 0, 7), (2, 2, 1, 5), (3, 1, 1, 6),
                                        (5, 3, 2, 11), (2, 2, 0, 8)])
def test_pooling_with_ceil_rounding(pool, k, s, p, h):
    x = np.random.default_rng(h).permutation(2 * 3 * h * h).reshape(2, 3, h, h) / 7.0
    layer = L.PoolingLayer(pool=pool, kernel_size=k, stride=s, pad=p)
    outs, (dx,), _, diffs = run_layer(layer, [x])

    def torch_pool(x):
        if pool == "MAX":
            return F.max_pool2d(x, k, s, p, ceil_mode=True)
        return F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True)
    t_outs, (tdx,) = run_torch(torch_pool, [x], diffs)
    close(outs[0], t_outs[0])
    close(dx, tdx)


@given(st.sampled_from([1, 3, 5]), st.floats(1e-4, 2), st.floats(0.3, 1), st.floats(0.5, 3),
       st.integers(0, 2**31))
@settings(max_examples=25)
def test_lrn_across_channels(n, alpha, beta, k, seed):
    x = np.random.default_rng(seed).standard_normal((2, 6, 3, 4))
    layer = L.LRNLayer(local_size=n, alpha=alpha, beta=beta, k=k)
    outs, (dx,), _, diffs = run_layer(layer, [x], seed)
    a, b, kk = (float(np.float32(v)) for v in (alpha, beta, k))       # the layer's float32 params
    t_outs, (tdx,) = run_torch(lambda x: F.local_response_norm(x, n, a, b, kk), [x], diffs)
    close(outs[0], t_outs[0])
    close(dx, tdx)


@pytest.mark.parametrize("normalization", ["VALID", "FULL", "BATCH_SIZE"])
def test_softmax_with_loss_and_ignore_label(normalization):
    rng = np.random.default_rng(1)
    scores, labels = rng.standard_normal((4, 5, 3, 2)), rng.integers(0, 5, (4, 3, 2))
    labels[0, 0, 0] = labels[2, 1, 1] = 255
    layer = L.SoftmaxWithLossLayer(ignore_label=255, normalization=normalization)
    (loss,), (dscores, _), _, _ = run_layer(layer, [scores, labels.astype(float)])
    t = torch.tensor(scores, requires_grad=True)
    total = F.cross_entropy(t, torch.tensor(labels), ignore_index=255, reduction="sum")
    divisor = {"VALID": (labels != 255).sum(), "FULL": labels.size, "BATCH_SIZE": 4}
    (total / divisor[normalization]).backward()
    close(loss, (total / divisor[normalization]).item())
    close(dscores, t.grad.numpy())


def test_batch_norm_in_training_mode():
    x = np.random.default_rng(2).standard_normal((4, 3, 5, 2)) * 3 + 1
    layer = L.BatchNormLayer(phase="TRAIN", eps=1e-3)
    outs, (dx,), _, diffs = run_layer(layer, [x])
    eps = float(np.float32(1e-3))
    t_outs, (tdx,) = run_torch(lambda x: F.batch_norm(x, None, None, training=True, eps=eps),
                               [x], diffs)
    close(outs[0], t_outs[0])
    close(dx, tdx)


@pytest.mark.parametrize("make, torch_fn", [
    (lambda: L.ELULayer(alpha=0.7), lambda x: F.elu(x, float(np.float32(0.7)))),
    (lambda: L.SigmoidLayer(), torch.sigmoid),
    (lambda: L.TanHLayer(), torch.tanh),
    (lambda: L.BNLLLayer(), F.softplus),
    (lambda: L.AbsValLayer(), torch.abs),
    (lambda: L.ReLULayer(negative_slope=0.25), lambda x: F.leaky_relu(x, 0.25)),
], ids=["ELU", "Sigmoid", "TanH", "BNLL", "AbsVal", "leaky ReLU"])
def test_neurons(make, torch_fn):
    x = np.random.default_rng(3).standard_normal((2, 3, 4)) * 2
    outs, (dx,), _, diffs = run_layer(make(), [x])
    t_outs, (tdx,) = run_torch(torch_fn, [x], diffs)
    close(outs[0], t_outs[0])
    close(dx, tdx)


def test_prelu_and_inner_product():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 2, 2))
    layer = L.PReLULayer(filler={"type": "uniform", "min": 0.05, "max": 0.5})
    outs, (dx,), (da,), diffs = run_layer(layer, [x])
    t_outs, (tdx, tda) = run_torch(F.prelu, [x, layer.blobs[0].data], diffs)
    for a, b in zip([outs[0], dx, da], [t_outs[0], tdx, tda]):
        close(a, b)
    layer = L.InnerProductLayer(num_output=5, weight_filler={"type": "gaussian"},
                                bias_filler={"type": "gaussian"})
    outs, (dx,), (dw, db), diffs = run_layer(layer, [x])
    t_outs, (tdx, tdw, tdb) = run_torch(lambda x, w, b: F.linear(x.reshape(3, -1), w, b),
                                        [x, layer.blobs[0].data, layer.blobs[1].data], diffs)
    for a, b in zip([outs[0], dx, dw, db], [t_outs[0], tdx, tdw, tdb]):
        close(a, b)


def test_sigmoid_cross_entropy_and_euclidean_losses():
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((4, 6)) * 3, rng.random((4, 6))
    (loss,), (dx, _), _, _ = run_layer(L.SigmoidCrossEntropyLossLayer(), [x, t])
    tx = torch.tensor(x, requires_grad=True)
    expected = F.binary_cross_entropy_with_logits(tx, torch.tensor(t), reduction="sum") / 4
    expected.backward()
    close(loss, expected.item())
    close(dx, tx.grad.numpy())
    (loss,), (da, db), _, _ = run_layer(L.EuclideanLossLayer(), [x, t])
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (x, t))
    expected = ((ta - tb) ** 2).sum() / (2 * 4)
    expected.backward()
    close(loss, expected.item())
    close(da, ta.grad.numpy())
    close(db, tb.grad.numpy())
