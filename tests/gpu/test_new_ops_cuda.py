"""Clip, Swish, Reduction, Tile and Embed on the GPU against the NumPy reference, float32 and
float64 (outputs poisoned where the op takes out=): Clip's NaN and min > max, Embed's repeated
indices and its bad ones (a device flag, read with the loss); and a net of all five on the
device against the CPU net."""

import numpy as np
import pytest

from minicnn.ops import neurons as nr
from minicnn.ops.contrastive_loss import contrastive_loss_backward, contrastive_loss_forward
from minicnn.ops.embed import embed_backward, embed_forward, embed_indices, flag_embed_indices
from minicnn.ops.hinge_loss import hinge_loss_backward, hinge_loss_forward
from minicnn.ops.infogain_loss import infogain_loss_backward, infogain_loss_forward
from minicnn.ops.multinomial_logistic_loss import (multinomial_logistic_loss_backward,
                                                   multinomial_logistic_loss_forward)
from minicnn.ops.reduction import reduction_backward, reduction_forward
from minicnn.ops.tile import tile_backward, tile_forward

from .conftest import assert_close

DTYPES = [np.float32, np.float64]


def _tol(dtype, f32=1e-6):
    return f32 if dtype == np.float32 else 1e-12


# --- Clip, Swish ------------------------------------------------------------------------------

CLIPS = [(-0.5, 0.75), (0.25, 0.25), (1.0, -1.0)]      # an interval, a point, min > max


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo, hi", CLIPS, ids=["interval", "point", "min>max"])
def test_clip(gpu, lo, hi, dtype):
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (3, 4, 7)).astype(dtype)
    x.flat[:6] = [lo, hi, np.nan, np.inf, -np.inf, -0.0]    # the ends, NaN -> min, the infinities
    dy = rng.standard_normal(x.shape).astype(dtype)
    want = nr.clip_forward.impls["ref"](x, lo, hi)
    y = nr.clip_forward(gpu.asarray(x), lo, hi)
    assert_close(y, want, 0, "y")
    assert y.dtype == dtype and float(y.get().flat[2]) == lo                 # NaN -> min
    want_dx = nr.clip_backward.impls["ref"](dy, x, lo, hi)
    dx = nr.clip_backward(gpu.asarray(dy), gpu.asarray(x), lo, hi)
    assert_close(dx, want_dx, 0, "dx")
    if lo <= hi:
        assert dx.get().flat[0] == dy.flat[0] and dx.get().flat[1] == dy.flat[1]   # ends pass


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [1.0, 0.5, -2.0])
def test_swish(gpu, beta, dtype):
    rng = np.random.default_rng(3)
    x = rng.uniform(-12, 12, (2, 5, 9)).astype(dtype)
    x.flat[:3] = [0.0, 60.0, -60.0]
    dy = rng.standard_normal(x.shape).astype(dtype)
    want_y, want_s = nr.swish_forward.impls["ref"](x, beta)
    y, s = nr.swish_forward(gpu.asarray(x), beta)
    assert_close(y, want_y, _tol(dtype), "y")
    assert_close(s, want_s, _tol(dtype), "s")
    assert_close(nr.swish_backward(gpu.asarray(dy), y, s, beta),
                 nr.swish_backward.impls["ref"](dy, want_y, want_s, beta), _tol(dtype), "dx")


# --- Reduction, Tile ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("operation", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, -0.7), (3, 2.5)])
def test_reduction(gpu, operation, axis, coeff, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    x.flat[::7] = 0                                             # ASUM's sign(0) = 0
    want = reduction_forward.impls["ref"](x, operation, axis, coeff)
    y = reduction_forward(gpu.asarray(x), operation, axis, coeff)
    assert y.shape == want.shape == x.shape[:axis]
    assert_close(y, want, _tol(dtype, 1e-5), "y")               # CuPy's order of the sums
    dy = rng.standard_normal(want.shape).astype(dtype)
    dx = reduction_backward(gpu.asarray(dy), gpu.asarray(x), operation, axis, coeff)
    assert_close(dx, reduction_backward.impls["ref"](dy, x, operation, axis, coeff), 0, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis, tiles", [((2, 3, 4), 1, 3), ((5,), 0, 4),
                                                ((2, 3, 4), 2, 1), ((3, 2, 2, 5), 0, 7)])
def test_tile(gpu, shape, axis, tiles, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    want = tile_forward.impls["ref"](x, axis, tiles)
    y = tile_forward(gpu.asarray(x), axis, tiles)
    assert_close(y, want, 0, "y")
    dy = rng.standard_normal(want.shape).astype(dtype)
    dx = tile_backward(gpu.asarray(dy), axis, tiles)
    assert_close(dx, tile_backward.impls["ref"](dy, axis, tiles), 0, "dx")  # Caffe's order


# --- Embed ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_embed(gpu, bias, dtype):
    rng = np.random.default_rng(6)
    k, n = 7, 5
    idx = rng.integers(0, k, (4, 6))
    idx[0, :4] = 3                                              # a repeated index
    idx[1, 0] = k - 1
    w = rng.standard_normal((k, n)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype) if bias else None
    want = embed_forward.impls["ref"](idx, w, b)
    y = embed_forward(gpu.asarray(idx), gpu.asarray(w), None if b is None else gpu.asarray(b))
    assert_close(y, want, 0, "y")
    dy = rng.standard_normal(want.shape).astype(dtype)
    want_dw, want_db = embed_backward.impls["ref"](dy, idx, w.shape)
    dw, db = embed_backward(gpu.asarray(dy), gpu.asarray(idx), w.shape)
    assert_close(dw, want_dw, _tol(dtype), "dw")               # atomics: any order
    assert_close(db, want_db, _tol(dtype), "db")
    acc_w, acc_b = rng.standard_normal((k, n)).astype(dtype), rng.standard_normal(n).astype(dtype)
    dw_acc, db_acc = gpu.asarray(acc_w), gpu.asarray(acc_b)     # the diffs accumulate
    got = embed_backward(gpu.asarray(dy), gpu.asarray(idx.astype(np.int32)), w.shape,
                         dw_acc=dw_acc, db_acc=db_acc)
    assert got[0] is dw_acc and got[1] is db_acc
    assert_close(dw_acc, acc_w + want_dw, _tol(dtype), "dw_acc")
    assert_close(db_acc, acc_b + want_db, _tol(dtype), "db_acc")
    dw_acc = gpu.asarray(np.ascontiguousarray(acc_w.T)).T      # not contiguous: added after
    assert embed_backward(gpu.asarray(dy), gpu.asarray(idx), w.shape, dw_acc=dw_acc)[0] is dw_acc
    assert_close(dw_acc, acc_w + want_dw, _tol(dtype), "strided dw_acc")
    assert embed_backward(gpu.asarray(dy), gpu.asarray(idx), w.shape, need_dw=False)[0] is None
    assert embed_backward(gpu.asarray(dy), gpu.asarray(idx), w.shape, need_db=False)[1] is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_embed_indices_flag_the_bad_ones_and_the_kernels_skip_them(gpu, dtype):
    k = 4
    good = np.array([[0, 3, 3], [1, 2, -0.0]], dtype)
    idx, bad = flag_embed_indices(gpu.asarray(good), k)
    assert idx.dtype == np.int64 and np.array_equal(idx.get(), embed_indices(good, k)[0])
    assert int(bad.get()[0]) == 0
    for value in (-1, k, 2.5, np.nan, np.inf, -np.inf):
        x = good.copy()
        x[1, 1] = value
        assert embed_indices(x, k)[1] is not None                # the host refuses it too
        idx, bad = flag_embed_indices(gpu.asarray(x), k)
        assert int(bad.get()[0]) == 1, value
        assert idx.get()[1, 1] == -1 and np.array_equal(np.delete(idx.get(), 4),
                                                        np.delete(good.astype(int), 4))
    rng = np.random.default_rng(7)                               # out-of-range rows: skipped
    w, b = rng.standard_normal((k, 3)).astype(dtype), rng.standard_normal(3).astype(dtype)
    idx = np.array([0, -1, k, 2, 1000])
    y = embed_forward(gpu.asarray(idx), gpu.asarray(w), gpu.asarray(b)).get()
    assert np.array_equal(y[[0, 3]], w[[0, 2]] + b) and np.array_equal(y[[1, 2, 4]], [b] * 3)
    y = embed_forward(gpu.asarray(idx), gpu.asarray(w)).get()   # w[k] would be guard bytes
    assert np.array_equal(y[[0, 3]], w[[0, 2]]) and not y[[1, 2, 4]].any()
    dy = rng.standard_normal((5, 3)).astype(dtype)
    dw, _ = embed_backward(gpu.asarray(dy), gpu.asarray(idx), w.shape)
    want = np.zeros_like(w)
    want[[0, 2]] = dy[[0, 3]]
    assert np.array_equal(dw.get(), want)                        # guard bytes: nothing beyond


# --- in a Net -------------------------------------------------------------------------------------

NET = """name: "five" force_backward: true
input: "idx" input_shape { dim: 3 dim: 4 }
input: "x" input_shape { dim: 3 dim: 4 dim: 2 }
layer { name: "embed" type: "Embed" bottom: "idx" top: "e"
        embed_param { num_output: 2 input_dim: 6 weight_filler { type: "gaussian" std: 1.5 }
                      bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "sum" type: "Eltwise" bottom: "e" bottom: "x" top: "s" }
layer { name: "swish" type: "Swish" bottom: "s" top: "s" swish_param { beta: 1.5 } }
layer { name: "clip" type: "Clip" bottom: "s" top: "s" clip_param { min: -0.25 max: 1 } }
layer { name: "tile" type: "Tile" bottom: "s" top: "t" tile_param { axis: 1 tiles: 3 } }
layer { name: "sq" type: "Reduction" bottom: "t" top: "sq" loss_weight: 1
        reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 } }
layer { name: "abs" type: "Reduction" bottom: "t" top: "abs" loss_weight: 0.25
        reduction_param { operation: ASUM } }
"""


def _net_inputs(rng):
    idx = rng.integers(0, 6, (3, 4)).astype(np.float32)
    idx[0, :3] = 5                                              # a repeated index
    return idx, rng.uniform(-1.5, 1.5, (3, 4, 2)).astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_net_of_the_five_on_the_gpu_equals_the_cpu(gpu, dtype):
    import minicnn
    from minicnn import cuda
    from minicnn.proto.text import parse_text
    idx, x = _net_inputs(np.random.default_rng(8))
    nets = []
    for device in (None, "cuda:0"):
        minicnn.set_random_seed(9)
        net = minicnn.Net(parse_text(NET), dtype=dtype, device=device)
        net.forward(idx=idx.astype(dtype), x=x.astype(dtype))
        net.backward()
        nets.append(net)
    cpu, dev = nets
    assert dev._mirrors == {} and cuda.is_device_array(dev.blobs["t"].data)   # all on device
    tol = _tol(dtype, 1e-5)
    for name, blob in cpu.blobs.items():
        assert_close(dev.blobs[name].data, blob.data, tol, name)
        if name != "idx":                                       # Embed gives idx no diff
            assert_close(dev.blobs[name].diff, blob.diff, tol, f"{name} diff")
    for a, b in zip(cpu.params["embed"], dev.params["embed"]):
        assert np.abs(a.diff).max() > 0.1
        assert_close(b.diff, a.diff, tol, "embed diff")
    assert abs(cpu.loss - dev.loss) <= tol * abs(cpu.loss)


@pytest.mark.parametrize("value", [6.0, -1.0, 0.5, np.nan])
def test_a_bad_embed_index_raises_the_hosts_error_from_the_gpu_net(gpu, value):
    import minicnn
    from minicnn.proto.text import parse_text
    idx, x = _net_inputs(np.random.default_rng(10))
    idx[2, 1] = value
    errors = []
    for device in (None, "cuda:0"):
        net = minicnn.Net(parse_text(NET), device=device)
        with pytest.raises(minicnn.NetError) as caught:
            net.forward(idx=idx, x=x)
        errors.append(str(caught.value))
        assert net.layer_dict["embed"].deferred_flag is None
        with pytest.raises(minicnn.NetError, match=r"bottom value .* at \(2, 1\)"):
            net.forward_backward()                              # the step raises before the update
    assert errors[0] == errors[1] and "is not an index" in errors[1]
    idx[2, 1] = 1                                               # a good batch runs again
    net.forward(idx=idx, x=x)


# --- the four losses ------------------------------------------------------------------------------

def _weight(gpu, dtype, value=0.75):
    return gpu.full((), value, dtype)                           # the loss top's diff, on device


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 4), (3, 6, 1, 1)])
def test_multinomial_logistic_loss(gpu, shape, dtype):
    rng = np.random.default_rng(11)
    prob = rng.uniform(0, 1, shape).astype(dtype)
    label = rng.integers(0, shape[1], shape[0]).astype(dtype)
    prob.reshape(shape[0], -1)[0, int(label[0])] = 0            # the clamp at 1e-20
    loss = multinomial_logistic_loss_forward(gpu.asarray(prob), gpu.asarray(label))
    assert loss.shape == ()
    assert_close(loss, multinomial_logistic_loss_forward.impls["ref"](prob, label),
                 _tol(dtype), "loss")
    dx = multinomial_logistic_loss_backward(gpu.asarray(prob), gpu.asarray(label),
                                            loss_weight=_weight(gpu, dtype))
    assert_close(dx, multinomial_logistic_loss_backward.impls["ref"](prob, label, 0.75),
                 _tol(dtype), "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(gpu, norm, dtype):
    rng = np.random.default_rng(12)
    x = rng.uniform(-2, 2, (6, 5)).astype(dtype)
    label = rng.integers(0, 5, 6).astype(dtype)
    x[1, 0], x[2, int(label[2])] = -1.0, 1.0                    # hinges at their kink, h = 0
    want_loss, want_h = hinge_loss_forward.impls["ref"](x, label, norm=norm)
    loss, h = hinge_loss_forward(gpu.asarray(x), gpu.asarray(label), norm=norm)
    assert_close(loss, want_loss, _tol(dtype), "loss")
    assert_close(h, want_h, 0, "h")
    dx = hinge_loss_backward(h, gpu.asarray(label), norm=norm, loss_weight=_weight(gpu, dtype))
    assert_close(dx, hinge_loss_backward.impls["ref"](want_h, label, norm=norm,
                                                      loss_weight=0.75), 0, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(gpu, legacy, dtype):
    rng = np.random.default_rng(13)
    a = rng.standard_normal((8, 3)).astype(dtype) * 0.6
    b = rng.standard_normal((8, 3)).astype(dtype) * 0.6
    b[0] = a[0]                                                 # d = 0
    y = np.array([1, 0, 0.5, 2, -1, 0, 1, 0], dtype)            # 0.5 dissimilar, 2 similar
    kw = {"margin": 1.5, "legacy_version": legacy}
    want_loss, want_diff, want_dsq = contrastive_loss_forward.impls["ref"](a, b, y, **kw)
    assert 0 < (np.sqrt(want_dsq) < 1.5).sum() < 8               # both sides of the margin
    loss, diff, dsq = contrastive_loss_forward(gpu.asarray(a), gpu.asarray(b), gpu.asarray(y),
                                               **kw)
    assert_close(loss, want_loss, _tol(dtype), "loss")
    assert_close(diff, want_diff, 0, "diff")
    assert_close(dsq, want_dsq, _tol(dtype), "dist_sq")
    da = contrastive_loss_backward(diff, dsq, gpu.asarray(y), loss_weight=_weight(gpu, dtype),
                                   **kw)
    assert_close(da, contrastive_loss_backward.impls["ref"](want_diff, want_dsq, y,
                                                            loss_weight=0.75, **kw),
                 _tol(dtype, 1e-5), "da")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalization, ignore", [("VALID", 2), ("FULL", None),
                                                   ("BATCH_SIZE", 9), ("NONE", None)])
def test_infogain_loss(gpu, normalization, ignore, dtype):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 4, 2, 5)).astype(dtype) * 3
    label = rng.integers(0, 4, (3, 1, 2, 5)).astype(dtype)
    if ignore is not None:
        label.flat[::3] = ignore
    h = rng.uniform(0, 2, (4, 4)).astype(dtype)
    kw = {"axis": 1, "ignore_label": ignore, "normalization": normalization}
    want_loss, want_prob = infogain_loss_forward.impls["ref"](x, label, h, **kw)
    loss, prob = infogain_loss_forward(gpu.asarray(x), gpu.asarray(label), gpu.asarray(h), **kw)
    assert_close(loss, want_loss, _tol(dtype, 1e-5), "loss")
    assert_close(prob, want_prob, _tol(dtype, 1e-5), "prob")
    dx = infogain_loss_backward(prob, gpu.asarray(label), h, loss_weight=_weight(gpu, dtype),
                                **kw)                           # h on the host: a layer's file
    assert_close(dx, infogain_loss_backward.impls["ref"](want_prob, label, h, loss_weight=0.75,
                                                         **kw), _tol(dtype, 1e-5), "dx")


LOSS_INPUTS = """name: "losses" force_backward: true
input: "x" input_shape { dim: 4 dim: 3 }
input: "label" input_shape { dim: 4 }
input: "y" input_shape { dim: 4 }
input: "H" input_shape { dim: 3 dim: 3 }
layer { name: "prob" type: "Softmax" bottom: "x" top: "prob" }
"""
LOSSES = {
    "mll": """layer { name: "mll" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label"
                      top: "mll" }""",
    "hinge": """layer { name: "hinge" type: "HingeLoss" bottom: "x" bottom: "label" top: "hinge"
                        loss_weight: 0.5 hinge_loss_param { norm: L2 } }""",
    "info": """layer { name: "info" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H"
                       top: "info" loss_weight: 2 }""",
    "pair": """layer { name: "pair" type: "ContrastiveLoss" bottom: "x" bottom: "prob"
                       bottom: "y" top: "pair" loss_weight: 0.25
                       contrastive_loss_param { margin: 2 } }""",
}
LOSS_NET = LOSS_INPUTS + "\n".join(LOSSES.values())


def _loss_inputs(rng):
    return {"x": rng.standard_normal((4, 3)).astype(np.float32),
            "label": np.array([0, 2, 1, 2], np.float32),
            "y": np.array([1, 0, 0, 1], np.float32),
            "H": rng.uniform(0, 1, (3, 3)).astype(np.float32)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_net_of_the_four_losses_on_the_gpu_equals_the_cpu(gpu, dtype):
    import minicnn
    from minicnn import cuda
    from minicnn.proto.text import parse_text
    inputs = {k: v.astype(dtype) for k, v in _loss_inputs(np.random.default_rng(15)).items()}
    nets = []
    for device in (None, "cuda:0"):
        net = minicnn.Net(parse_text(LOSS_NET), dtype=dtype, device=device)
        net.forward(**inputs)
        net.backward()
        nets.append(net)
    cpu, dev = nets
    assert dev._mirrors == {} and cuda.is_device_array(dev.blobs["info"].data)
    for name in ("mll", "hinge", "info", "pair", "prob"):
        assert_close(dev.blobs[name].data, cpu.blobs[name].data, _tol(dtype, 1e-5), name)
    for name in ("x", "prob"):
        assert np.abs(cpu.blobs[name].diff).max() > 0.01
        assert_close(dev.blobs[name].diff, cpu.blobs[name].diff, _tol(dtype, 1e-5), name)
    assert abs(cpu.loss - dev.loss) <= _tol(dtype, 1e-5) * abs(cpu.loss)


@pytest.mark.parametrize("layer", ["mll", "hinge", "info"])
def test_a_bad_label_of_a_loss_raises_the_hosts_error_from_the_gpu_net(gpu, layer):
    import minicnn
    from minicnn.proto.text import parse_text
    inputs = _loss_inputs(np.random.default_rng(16))
    inputs["label"][1] = 3                                      # one past the classes
    errors = []
    for device in (None, "cuda:0"):
        net = minicnn.Net(parse_text(LOSS_INPUTS + LOSSES[layer]), device=device)
        with pytest.raises(minicnn.NetError) as caught:
            net.forward(**inputs)
        errors.append(str(caught.value))
        with pytest.raises(minicnn.NetError, match="label 3 at index"):
            net.forward_backward()                              # raises before any update
    assert errors[0] == errors[1] and "label 3 at index (1,)" in errors[1], errors
