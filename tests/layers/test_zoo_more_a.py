"""Clip, Swish, Reduction, Tile and Embed through the Layer protocol and in Nets: forward and
backward against PyTorch float64 (torch.clamp, x * sigmoid(beta x), sum/abs/mean, Tensor.repeat,
F.embedding), gradients against float64 finite differences (kinks avoided), prototxt
parameters, errors, float32, and a small Embed -> Reduction -> EuclideanLoss net trained by SGD.

Where Caffe's code differs from the PyTorch op, minicnn follows Caffe and the tests say so: Clip
with min > max gives min (torch.clamp gives max) and Caffe's CPU Clip maps NaN to min (torch
keeps NaN). OpenCV's Caffe importer has Swish but ignores swish_param.beta, and has no Clip,
Reduction, Tile (it wants ONNX's repeats) or Embed layer.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import minicnn
from minicnn.blob import Blob
from minicnn.errors import LayerError
from minicnn.layers import ClipLayer, EmbedLayer, ReductionLayer, SwishLayer, TileLayer
from minicnn.net import runs_on_host
from minicnn.proto import caffe_pb2, parse_text
from minicnn.testing import check_in_place, check_layer_gradient
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

torch = pytest.importorskip("torch")

seeds = st.integers(0, 2**32 - 1)
shapes = array_shapes(min_dims=1, max_dims=4, max_side=3)
FEW = settings(max_examples=20, deadline=None)


def normal(seed, shape, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def torch_grad(fn, dy, *inputs):
    """(fn(*inputs) as NumPy, then d<fn(*inputs), dy>/d input for each input), in float64."""
    leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in inputs]
    y = fn(*leaves)
    y.backward(torch.from_numpy(np.asarray(dy, np.float64)))
    return (y.detach().numpy(),) + tuple(t.grad.numpy() for t in leaves)


def forward_backward(layer, x, dy):
    """Run a standalone layer in float64: (y, dx) (dx None where the layer gives none)."""
    y = np.array(layer(np.asarray(x, np.float64)))
    return y, layer.backprop(dy)


# --- Clip ----------------------------------------------------------------------------------------

CLIP_RANGES = [(-0.5, 0.5), (0.0, 1.0), (-1.0, 2.0), (0.25, 0.25), (-3.0, -1.5)]


def away_from(x, *kinks, gap=0.02):
    """x moved off the kinks: elements within ``gap`` of one are pushed 3 gaps away."""
    for k in kinks:
        x = np.where(np.abs(x - k) < gap, k + 3 * gap, x)
    return x


@FEW
@given(shapes, seeds, st.sampled_from(CLIP_RANGES))
def test_clip_matches_torch_clamp_and_finite_differences(shape, seed, bounds):
    lo, hi = bounds
    x, dy = away_from(normal(seed, shape, 2), lo, hi), normal(seed + 1, shape)
    y, dx = forward_backward(ClipLayer(min=lo, max=hi), x, dy)
    want_y, want_dx = torch_grad(lambda t: torch.clamp(t, lo, hi), dy, x)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    check_layer_gradient(lambda: ClipLayer(min=lo, max=hi), [x])


def test_clip_gradient_passes_at_both_ends():
    """Caffe's mask is min <= x <= max: at x == min and x == max dy passes (torch agrees)."""
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    dy = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y, dx = forward_backward(ClipLayer(min=-0.5, max=0.5), x, dy)
    np.testing.assert_array_equal(y, [-0.5, -0.5, 0.0, 0.5, 0.5])
    np.testing.assert_array_equal(dx, [0.0, 2.0, 3.0, 4.0, 0.0])
    np.testing.assert_array_equal(dx, torch_grad(lambda t: torch.clamp(t, -0.5, 0.5), dy, x)[1])


def test_clip_follows_caffe_where_torch_differs():
    # min > max: Caffe's max(min, min(x, max)) is min everywhere and the mask is never true;
    # torch.clamp gives max instead
    x = np.array([-3.0, 0.0, 0.7, 3.0])
    y, dx = forward_backward(ClipLayer(min=1.0, max=-1.0), x, np.ones(4))
    np.testing.assert_array_equal(y, [1.0] * 4)
    np.testing.assert_array_equal(dx, 0)
    assert (torch.clamp(torch.from_numpy(x), 1.0, -1.0).numpy() == -1.0).all()
    # NaN: std::min(NaN, max) keeps NaN, std::max(min, NaN) is min; no gradient there
    y, dx = forward_backward(ClipLayer(min=-1.0, max=1.0), np.array([np.nan, 0.5]), np.ones(2))
    np.testing.assert_array_equal(y, [-1.0, 0.5])
    np.testing.assert_array_equal(dx, [0.0, 1.0])


def test_clip_needs_min_and_max():
    for kwargs, missing in (({"min": 0.0}, "clip_param.max is"),
                            ({"max": 1.0}, "clip_param.min is"),
                            ({}, "clip_param.min and clip_param.max are")):
        with pytest.raises(LayerError, match=f"Clip layer 'Clip': {missing} required"):
            ClipLayer(**kwargs)(np.ones(3))
    text = 'input: "x" input_shape { dim: 3 } ' \
           'layer { name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -1 } }'
    with pytest.raises(minicnn.NetError, match=r"layer 'c' \(Clip.*clip_param.max is required"):
        minicnn.Net(parse_text(text))


# --- Swish ---------------------------------------------------------------------------------------

@FEW
@given(shapes, seeds, st.sampled_from([1.0, 2.0, 0.5, -1.0, 0.0]))
def test_swish_matches_torch_and_finite_differences(shape, seed, beta):
    x, dy = normal(seed, shape, 3), normal(seed + 1, shape)
    y, dx = forward_backward(SwishLayer(beta=beta), x, dy)
    want_y, want_dx = torch_grad(lambda t: t * torch.sigmoid(beta * t), dy, x)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-15)
    check_layer_gradient(lambda: SwishLayer(beta=beta), [x])


@pytest.mark.parametrize("make", [lambda: ClipLayer(min=-0.5, max=0.25),
                                  lambda: SwishLayer(beta=1.5)], ids=["clip", "swish"])
def test_clip_and_swish_in_place_match_out_of_place(make):
    rng = np.random.default_rng(3)
    check_in_place(make, rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)))


def test_swish_agrees_with_opencv_and_opencv_ignores_beta(tmp_path):
    cv2 = pytest.importorskip("cv2")
    x = normal(0, (2, 3, 4, 5), 2).astype(np.float32)
    for beta, agrees in ((1.0, True), (2.0, False)):
        model = tmp_path / "swish.prototxt"
        model.write_text('input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                         f'layer {{ name: "s" type: "Swish" bottom: "data" top: "s" '
                         f'swish_param {{ beta: {beta} }} }}\n')
        ours = minicnn.Net(str(model)).forward(data=x)["s"]
        cv_net = cv2.dnn.readNetFromCaffe(str(model))
        cv_net.setInput(x, "data")
        theirs = cv_net.forward("s")
        assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-6) == agrees
        np.testing.assert_allclose(theirs, x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)


# --- Reduction -----------------------------------------------------------------------------------

TORCH_REDUCTIONS = {
    "SUM": lambda t: t.sum(-1), "ASUM": lambda t: t.abs().sum(-1),
    "SUMSQ": lambda t: (t * t).sum(-1), "MEAN": lambda t: t.mean(-1),
}


@st.composite
def reduction_cases(draw):
    shape = draw(shapes)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return (shape, axis, draw(st.sampled_from(sorted(TORCH_REDUCTIONS))),
            draw(st.sampled_from([1.0, 0.5, -2.0])), draw(seeds))


@FEW
@given(reduction_cases())
def test_reduction_matches_torch_and_finite_differences(case):
    shape, axis, operation, coeff, seed = case
    x = normal(seed, shape, 2)
    x.reshape(-1)[::3] = 0.0                 # ASUM's kink: sign(0) = 0 in Caffe and torch
    first = axis % len(shape)
    dy = normal(seed + 1, shape[:first])

    def make():
        return ReductionLayer(operation=operation, axis=axis, coeff=coeff)
    y, dx = forward_backward(make(), x, dy)
    assert y.shape == shape[:first]
    want_y, want_dx = torch_grad(
        lambda t: TORCH_REDUCTIONS[operation](t.flatten(start_dim=first)) * coeff, dy, x)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-14)
    check_layer_gradient(make, [away_from(x, 0.0) if operation == "ASUM" else x])


def test_reduction_default_is_the_sum_of_everything_as_a_scalar():
    x = np.arange(24.0).reshape(2, 3, 4)
    layer = ReductionLayer()
    y = layer(x)
    assert y.shape == () and y == 276.0
    np.testing.assert_array_equal(layer.backprop(np.array(2.0)), np.full((2, 3, 4), 2.0))


def test_reduction_mean_multiplies_by_coeff_over_count_as_caffe():
    """Caffe's MEAN divides coeff by the count in the dtype, then multiplies each sum by it: in
    float32, sum * float32(1/3), which is not always sum / 3."""
    x = np.array([[1.0, 1.0, 5.0], [0.1, 0.2, 0.7]], np.float32)
    y = ReductionLayer(operation="MEAN", axis=1)(x)
    third = np.float32(1) / np.float32(3)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.sum(axis=1) * third)
    assert y[0] != np.float32(7) / np.float32(3)            # 7 * (1/3) rounds the other way


def test_reduction_errors():
    with pytest.raises(LayerError, match=r"reduction_param.axis 3 is out of range.*\(2, 3, 4\)"):
        ReductionLayer(axis=3)(np.ones((2, 3, 4)))
    text = 'input: "x" input_shape { dim: 2 dim: 3 } ' \
           'layer { name: "r" type: "Reduction" bottom: "x" top: "x" }'
    with pytest.raises(minicnn.NetError, match="Reduction does not allow in-place"):
        minicnn.Net(parse_text(text))


# --- Tile ----------------------------------------------------------------------------------------

@st.composite
def tile_cases(draw):
    shape = draw(shapes)
    return shape, draw(st.integers(-len(shape), len(shape) - 1)), draw(st.integers(1, 3)), \
        draw(seeds)


@FEW
@given(tile_cases())
def test_tile_matches_torch_repeat_and_finite_differences(case):
    shape, axis, tiles, seed = case
    first = axis % len(shape)
    reps = [tiles if a == first else 1 for a in range(len(shape))]
    x = normal(seed, shape)
    dy = normal(seed + 1, tuple(d * r for d, r in zip(shape, reps)))

    def make():
        return TileLayer(axis=axis, tiles=tiles)
    y, dx = forward_backward(make(), x, dy)
    want_y, want_dx = torch_grad(lambda t: t.repeat(*reps), dy, x)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-14)
    check_layer_gradient(make, [x])


def test_tile_repeats_the_block_not_each_element():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(TileLayer(tiles=2)(x),
                                  [[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6]])
    np.testing.assert_array_equal(TileLayer(axis=0, tiles=2)(x), [x[0], x[1], x[0], x[1]])


def test_tile_errors():
    with pytest.raises(LayerError, match="tile_param.tiles is required"):
        TileLayer()(np.ones((2, 3)))
    with pytest.raises(LayerError, match="tile_param.tiles must be positive, got 0"):
        TileLayer(tiles=0)(np.ones((2, 3)))
    with pytest.raises(LayerError, match=r"tile_param.axis -3 is out of range.*\(2, 3\)"):
        TileLayer(tiles=2, axis=-3)(np.ones((2, 3)))


# --- Embed ---------------------------------------------------------------------------------------

@st.composite
def embed_cases(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=4))
    input_dim, num_output = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(seeds))
    idx = rng.integers(0, input_dim, shape).astype(np.float64)       # repeats are likely
    return idx, input_dim, num_output, draw(st.booleans()), rng


def make_embed(input_dim, num_output, bias_term=True, seed=0):
    layer = EmbedLayer(num_output=num_output, input_dim=input_dim, bias_term=bias_term,
                       weight_filler={"type": "gaussian"},
                       bias_filler={"type": "uniform", "min": -1, "max": 1})
    layer.rng = np.random.default_rng(seed)
    return layer


@FEW
@given(embed_cases())
def test_embed_matches_torch_embedding_and_finite_differences(case):
    idx, input_dim, num_output, bias_term, rng = case
    layer = make_embed(input_dim, num_output, bias_term)
    y = layer(idx)
    dy = rng.standard_normal(y.shape)
    assert layer.backprop(dy) is None                    # no gradient for the indices
    w = layer.blobs[0].data
    assert w.shape == (input_dim, num_output)
    params = [w] + ([layer.blobs[1].data] if bias_term else [])

    def embedding(w, *b):
        out = torch.nn.functional.embedding(torch.from_numpy(idx.astype(np.int64)), w)
        return out + b[0] if b else out
    want_y, *want_grads = torch_grad(embedding, dy, *params)
    np.testing.assert_allclose(y, want_y, rtol=1e-14)
    for blob, want in zip(layer.blobs, want_grads):      # duplicates add up, as in torch
        np.testing.assert_allclose(blob.diff, want, rtol=1e-12, atol=1e-14)
    check_layer_gradient(lambda: make_embed(input_dim, num_output, bias_term), [idx])


def test_embed_diffs_accumulate_and_repeated_indices_add_up():
    layer = make_embed(4, 2)
    layer(np.array([[1.0, 1.0], [3.0, 1.0]]))
    dy = np.arange(8.0).reshape(2, 2, 2)
    for _ in range(2):                                    # I1: parameter diffs accumulate
        layer.backprop(dy)
    np.testing.assert_array_equal(layer.blobs[0].diff,
                                  2 * np.array([[0, 0], [0 + 2 + 6, 1 + 3 + 7], [0, 0], [4, 5]]))
    np.testing.assert_array_equal(layer.blobs[1].diff, 2 * np.array([12.0, 16.0]))


@pytest.mark.parametrize("value", [1.5, -1.0, 4.0, np.nan, np.inf, -0.5])
def test_embed_refuses_values_that_are_not_indices(value):
    x = np.array([[0.0, 3.0], [value, 2.0]])
    with pytest.raises(LayerError, match=rf"Embed layer 'Embed': bottom value {value:g} at "
                                         r"\(1, 0\) is not an index.*\[0, input_dim = 4\)"):
        make_embed(4, 2)(x)


def test_embed_parameter_errors():
    for kwargs, field in (({"input_dim": 3}, "num_output"), ({"num_output": 3}, "input_dim")):
        with pytest.raises(LayerError, match=f"embed_param.{field} must be positive, got 0"):
            EmbedLayer(**kwargs)(np.zeros(2))
    layer = EmbedLayer(num_output=2, input_dim=3)
    layer.blobs = [Blob.from_array(np.ones((2, 3)))]     # InnerProduct's layout, not Embed's
    with pytest.raises(LayerError, match=r"weights \(blob 0\) should have shape \(3, 2\)"):
        layer(np.zeros(2))
    layer = EmbedLayer(num_output=2, input_dim=3, bias_term=False)
    layer.blobs = [Blob.from_array(np.ones((3, 2))), Blob.from_array(np.ones(2))]
    with pytest.raises(LayerError, match="2 parameter blobs given.*bias_term false has 1"):
        layer(np.zeros(2))


EMBED_NET = """input: "idx" input_shape { dim: 2 dim: 3 }
layer { name: "embed" type: "Embed" bottom: "idx" top: "e"
        embed_param { num_output: 2 input_dim: 4 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "Reduction" bottom: "e" top: "loss" loss_weight: 1
        reduction_param { operation: SUMSQ } }
"""


def test_embed_in_a_net_force_backward_skips_indices_and_propagate_down_is_an_error():
    idx = np.array([[0, 1, 3], [3, 3, 2]], np.float32)
    net = minicnn.Net(parse_text(EMBED_NET + "force_backward: true"))
    net.forward(idx=idx)
    net.backward()
    w = net.params["embed"][0].data
    want = np.zeros_like(w)
    np.add.at(want, idx.astype(int).ravel(), 2 * w[idx.astype(int).ravel()])
    np.testing.assert_allclose(net.params["embed"][0].diff, want, rtol=1e-6)
    text = EMBED_NET.replace('top: "e"', 'top: "e" propagate_down: true')
    net = minicnn.Net(parse_text(text))
    net.forward(idx=idx)
    with pytest.raises(minicnn.NetError, match="Embed layer 'embed' cannot backpropagate to its "
                                               "input"):
        net.backward()
    net = minicnn.Net(parse_text(EMBED_NET))
    with pytest.raises(minicnn.NetError, match=r"layer 'embed'.*bottom value 7 at \(0, 0\)"):
        net.forward(idx=np.full((2, 3), 7, np.float32))


# --- in Nets -------------------------------------------------------------------------------------

ALL_NET = """input: "idx" input_shape { dim: 2 dim: 3 }
layer { name: "embed" type: "Embed" bottom: "idx" top: "e"
        embed_param { num_output: 2 input_dim: 5 weight_filler { type: "uniform" min: -2 max: 2 }
                      bias_filler { type: "constant" value: 0.25 } } }
layer { name: "swish" type: "Swish" bottom: "e" top: "e" swish_param { beta: 1.5 } }
layer { name: "clip" type: "Clip" bottom: "e" top: "c" clip_param { min: -0.25 max: 1 } }
layer { name: "tile" type: "Tile" bottom: "c" top: "t" tile_param { axis: -1 tiles: 3 } }
layer { name: "red" type: "Reduction" bottom: "t" top: "r" loss_weight: 1
        reduction_param { operation: ASUM axis: 1 coeff: 0.5 } }
"""


def all_net_in_torch(idx, w, b):
    e = torch.nn.functional.embedding(torch.from_numpy(idx.astype(np.int64)), w) + b
    e = e * torch.sigmoid(1.5 * e)
    t = torch.clamp(e, -0.25, 1.0).repeat(1, 1, 3)
    return 0.5 * t.abs().flatten(start_dim=1).sum(-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_five_from_a_prototxt_forward_and_backward(dtype):
    net = minicnn.Net(parse_text(ALL_NET), dtype=dtype)
    idx = np.array([[0, 4, 4], [2, 1, 0]], dtype)
    r = net.forward(idx=idx)["r"]
    assert r.dtype == dtype and r.shape == (2,) and net.blobs["t"].shape == (2, 3, 6)
    net.backward()
    w, b = (p.data for p in net.params["embed"])
    want_r, want_dw, want_db = torch_grad(lambda w, b: all_net_in_torch(idx, w, b),
                                          np.ones(2), w, b)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12}
    np.testing.assert_allclose(r, want_r, **tol)
    for blob, want in zip(net.params["embed"], (want_dw, want_db)):
        assert blob.diff.dtype == dtype and np.abs(want).max() > 0.1
        np.testing.assert_allclose(blob.diff, want, **tol)
    # all five have CUDA versions: a GPU net keeps them on the device
    assert not any(runs_on_host(net.layer_dict[n]) for n in ("embed", "swish", "clip", "tile",
                                                            "red"))


def test_float32_in_float32_out():
    """The ops keep float32 (a float64 scalar would upcast them under NumPy 2), and so do the
    layers' tops and diffs."""
    from minicnn import ops
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(2, 3, 2)
    idx = np.array([0, 2, 2], np.int64)
    w = np.ones((3, 2), np.float32)
    y, s = ops.swish_forward(x, 0.5)
    outputs = [ops.clip_forward(x, -1.0, 1.0), ops.clip_backward(x, x, -1.0, 1.0), y, s,
               ops.swish_backward(x, y, s, 0.5), ops.tile_forward(x, 1, 2),
               ops.tile_backward(ops.tile_forward(x, 1, 2), 1, 2),
               ops.embed_forward(idx, w, w[0]),
               *ops.embed_backward(np.ones((3, 2), np.float32), idx, w.shape)]
    for operation in ("SUM", "ASUM", "SUMSQ", "MEAN"):
        r = ops.reduction_forward(x, operation, 1, 0.5)
        outputs += [r, ops.reduction_backward(r, x, operation, 1, 0.5)]
    assert [o.dtype for o in outputs] == [np.float32] * len(outputs)
    for layer in (ClipLayer(min=-1, max=1), SwishLayer(beta=0.5), TileLayer(tiles=2),
                  ReductionLayer(operation="SUMSQ", axis=1)):
        y = layer(x)
        assert y.dtype == np.float32, layer
        assert layer.backprop(np.ones_like(y)).dtype == np.float32, layer
    layer = make_embed(3, 2)
    y = layer(np.array([0, 2], np.float32))
    layer.backprop(np.ones_like(y))
    assert y.dtype == layer.blobs[0].diff.dtype == np.float32


TRAIN_NET = """name: "embed_sum"
input: "idx" input_shape { dim: 4 dim: 3 }
input: "t" input_shape { dim: 4 }
layer { name: "embed" type: "Embed" bottom: "idx" top: "e"
        embed_param { num_output: 2 input_dim: 5 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "sum" type: "Reduction" bottom: "e" top: "s" reduction_param { axis: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "t" top: "loss" }
"""


def train_embed_sum(steps, device=None):
    """Losses of ``steps`` SGD steps of TRAIN_NET, and the final embedding weights."""
    from minicnn import cuda
    minicnn.set_random_seed(7)
    param = caffe_pb2.SolverParameter(net_param=parse_text(TRAIN_NET), base_lr=0.04,
                                      lr_policy="fixed", max_iter=steps)
    solver = minicnn.get_solver(param, log=lambda message: None, device=device)
    idx = np.array([[0, 1, 2], [3, 3, 4], [1, 4, 0], [2, 2, 2]], np.float32)
    target = np.array([1.0, -2.0, 0.5, 3.0], np.float32)      # reachable: 12 unknowns, 4 sums
    put = cuda.to_device if device else np.asarray
    solver.net.blobs["idx"].data[...] = put(idx)
    solver.net.blobs["t"].data[...] = put(target)
    losses = []
    for _ in range(steps):
        solver.step(1)
        losses.append(float(cuda.to_host(solver.net.blobs["loss"].data)))
    return losses, cuda.to_host(solver.net.params["embed"][0].data)


def test_embed_reduction_euclidean_net_trains_with_sgd():
    losses, _ = train_embed_sum(30)
    assert losses[-1] < 0.05 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_on_the_gpu_the_net_gives_the_cpu_results(gpu):
    """All five run on the device (the emulator here, a GPU where there is one), with the CPU's
    values to float32 rounding (the kernels' tanh is not NumPy's, nor CuPy's sums, and the
    embedding's gradient adds by atomics); tests/gpu/test_new_ops_cuda.py checks the ops."""
    from minicnn import cuda
    idx = np.array([[0, 4, 4], [2, 1, 0]], np.float32)
    nets = []
    for device in (None, "cuda:0"):
        minicnn.set_random_seed(3)
        net = minicnn.Net(parse_text(ALL_NET), device=device)
        net.forward(idx=idx)
        net.backward()
        nets.append(net)
    cpu, dev = nets
    assert dev._mirrors == {}
    assert cuda.is_device_array(dev.blobs["r"].data)
    for name, blob in cpu.blobs.items():
        np.testing.assert_allclose(cuda.to_host(dev.blobs[name].data), blob.data,
                                   rtol=1e-6, atol=1e-7, err_msg=name)
    for a, b in zip(cpu.params["embed"], dev.params["embed"]):
        np.testing.assert_allclose(cuda.to_host(b.diff), a.diff, rtol=1e-6, atol=1e-7)
    (cpu_losses, cpu_w), (dev_losses, dev_w) = train_embed_sum(5), \
        train_embed_sum(5, "cuda:0")
    np.testing.assert_allclose(dev_losses, cpu_losses, rtol=1e-6)
    np.testing.assert_allclose(dev_w, cpu_w, rtol=1e-6, atol=1e-7)
