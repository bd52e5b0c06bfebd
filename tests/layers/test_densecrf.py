"""DeepLab's DenseCRF and MatRead (deeplab-public-ver2).

DenseCRF is checked against: NumPy softmax (max_iter 0) and a one-pixel case worked by hand
(the message is then w * Q exactly); an exact N x N Gaussian filter (the lattice's
approximation, bounded); pydensecrf (Krähenbühl's own code, pydensecrf2's wheel, with the
fork's per-pixel normalisation, NORMALIZE_AFTER) on drawn images, to float32 rounding;
the crop by data_dim; and a DeepLab v2-style TEST net. MatRead reads back what MatWrite wrote.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError, MinicnnError
from minicnn.layers import DenseCRFLayer
from minicnn.ops.densecrf import Permutohedral, crf_features, fast_exp
from minicnn.proto import parse_text
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)
from tests.layers.test_deeplab import write_set

F32 = np.float32


def softmax(s, axis=0):
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def crf(scores, dims=None, image=None, **fields):
    """The layer on arrays: scores (N, M, H, W); dims default to the blob's size."""
    n, _, h, w = scores.shape
    dims = np.tile([h, w], (n, 1)).reshape(n, 1, 1, 2) if dims is None else dims
    layer = DenseCRFLayer(**fields)
    return layer(scores, dims) if image is None else layer(scores, dims, image)


# --- fast_exp -------------------------------------------------------------------------------

def test_fast_exp_is_exp_to_4e_6_and_0_below_minus_20():
    x = -np.linspace(0, 19.99, 4001).astype(F32)
    got, want = fast_exp(x), np.exp(x.astype(np.float64))
    assert got.dtype == F32 and got[0] == 1.0
    np.testing.assert_allclose(got, want, rtol=5e-6)
    assert np.abs(got / want - 1).max() > 1e-7                 # the polynomial, not np.exp
    assert (fast_exp(F32([-20.01, -25, -1e6])) == 0).all()     # the fork's cut-off
    np.testing.assert_allclose(fast_exp(F32([0.5, 3, 10])), np.exp([0.5, 3, 10]), rtol=5e-6)


# --- small cases by hand ----------------------------------------------------------------------

def test_max_iter_0_gives_softmax_of_the_scores_or_its_log():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 4, 5, 6)) * 3
    q = crf(scores, max_iter=0, pos_w=3, pos_xy_std=3)
    np.testing.assert_allclose(q, softmax(scores, axis=1), rtol=1e-5, atol=1e-7)
    logq = crf(scores, max_iter=0, pos_w=3, pos_xy_std=3, output_probability=False)
    np.testing.assert_allclose(logq, np.log(softmax(scores, axis=1)), rtol=1e-5, atol=1e-5)
    far = np.zeros((1, 2, 1, 1))
    far[0, 0] = 21                          # fast_exp(-21) is exactly 0: FLT_MIN's log
    assert crf(far, max_iter=0)[0, 1, 0, 0] == 0
    assert crf(far, max_iter=0, output_probability=False)[0, 1, 0, 0] == \
        pytest.approx(np.log(np.finfo(F32).tiny))


def test_one_pixel_adds_w_times_q_each_iteration():
    # one pixel: the lattice filter of v is c * v and its normalisation 1 / c, so each Potts
    # kernel adds w * Q to the score: Q_{t+1} = softmax(score + (w1 + w2) * Q_t)
    score = np.array([0.0, 1.0, -0.5])
    image = np.array([10.0, -20.0, 5.0]).reshape(1, 3, 1, 1)
    q = softmax(score)
    for t in range(1, 4):
        q = softmax(score + (2.0 + 0.5) * q)
        got = crf(score.reshape(1, 3, 1, 1), image=image, max_iter=t, pos_w=2, pos_xy_std=3,
                  bi_w=0.5, bi_xy_std=7, bi_rgb_std=4)
        np.testing.assert_allclose(got[0, :, 0, 0], q, rtol=2e-6)


def test_two_far_apart_pixels_do_not_talk_and_near_ones_agree():
    scores = np.zeros((1, 2, 1, 2))
    scores[0, :, 0, 0] = [2.0, 0.0]                   # pixel 0 sure of class 0, pixel 1 unsure
    alone = crf(scores, max_iter=5, pos_w=3, pos_xy_std=0.01)   # distance 100 std: no message
    np.testing.assert_allclose(alone[0, :, 0, 1], [0.5, 0.5], atol=1e-6)
    near = crf(scores, max_iter=5, pos_w=3, pos_xy_std=100)
    assert near[0, 0, 0, 1] > 0.6                     # pixel 1 follows its neighbour


def forks_mean_field(scores, image, max_iter, pos, bi):
    """densecrf_layer.cpp's loops, written out: features pixel by pixel, the unary -score,
    Q = softmax, then per iteration score + sum of w * norm * filter(Q) (the lattice and
    fast_exp being the ones checked above and below)."""
    m, h, w = scores.shape
    unary = np.empty((h * w, m), F32)
    for c in range(m):
        for y in range(h):
            for x in range(w):
                unary[y * w + x, c] = -scores[c, y, x]
    kernels = []
    for wk, s in pos:
        feat = np.array([[x / F32(s), y / F32(s)] for y in range(h) for x in range(w)], F32)
        kernels.append((wk, feat))
    for wk, s, c in bi:
        feat = np.array([[x / F32(s), y / F32(s), image[0, y, x] / F32(c),
                          image[1, y, x] / F32(c), image[2, y, x] / F32(c)]
                         for y in range(h) for x in range(w)], F32)
        kernels.append((wk, feat))
    lattices = [(F32(wk), Permutohedral(f)) for wk, f in kernels]
    norms = [F32(1) / (lat.compute(np.ones((h * w, 1), F32))[:, 0] + F32(1e-20))
             for _, lat in lattices]

    def normalise(v):
        e = fast_exp(v - v.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True, dtype=F32)

    q = normalise(-unary)
    for _ in range(max_iter):
        nxt = -unary
        for (wk, lat), norm in zip(lattices, norms):
            nxt = nxt + (wk * norm)[:, None] * lat.compute(q)
        q = normalise(nxt)
    return q.T.reshape(m, h, w)


@pytest.mark.parametrize("h, w, m, max_iter, pos, bi", [
    (5, 7, 3, 4, [(3, 3)], [(4, 50, 5)]), (6, 4, 2, 2, [], [(5, 3, 13), (4, 10, 30)]),
    (1, 9, 4, 3, [(3, 0.7), (1, 5)], [])])
def test_layer_is_the_forks_loop(h, w, m, max_iter, pos, bi):
    rng = np.random.default_rng(h * w)
    scores = (rng.standard_normal((m, h, w)) * 2).astype(F32)
    image = rng.uniform(-120, 120, (3, h, w)).astype(F32)
    got = crf(scores[None], image=image[None] if bi else None, max_iter=max_iter,
              pos_w=[p[0] for p in pos], pos_xy_std=[p[1] for p in pos],
              bi_w=[b[0] for b in bi], bi_xy_std=[b[1] for b in bi],
              bi_rgb_std=[b[2] for b in bi])[0]
    np.testing.assert_allclose(got, forks_mean_field(scores, image, max_iter, pos, bi),
                               rtol=0, atol=2e-7)


# --- the lattice against an exact dense filter -----------------------------------------------

@pytest.mark.parametrize("h, w, xy_std, rgb_std, max_err, mean_err", [
    (8, 9, 1.0, None, 0.05, 0.01), (8, 9, 3.0, None, 0.015, 0.004),
    (10, 12, 0.7, None, 0.065, 0.016), (12, 10, 4.0, 10.0, 0.08, 0.008),
    (16, 16, 8.0, 20.0, 0.015, 0.004), (16, 16, 30.0, 5.0, 0.28, 0.008)])
def test_lattice_message_is_a_weighted_average_near_the_exact_gaussians(
        h, w, xy_std, rgb_std, max_err, mean_err):
    # The normalised message norm_i * filter(Q)_i is what the CRF adds. Exactly, it would be
    # sum_j k_ij Q_j / sum_j k_ij with k_ij = exp(-|f_i - f_j|^2 / 2) (the dense N x N filter
    # below). The lattice's is a weighted average too (weights >= 0: it stays a distribution,
    # within the inputs' range), near the exact one: max_err and mean_err are this lattice's
    # errors on these cases, about 1.3x (it blurs with a kernel near, not equal to, the
    # Gaussian; Adams et al. 2010 and Krähenbühl and Koltun 2011 give no tighter bound), and
    # well below what ignoring the kernel would give (no filtering, or the plain mean).
    rng = np.random.default_rng(1)
    image = rng.normal(0, 5, (3, h, w)).astype(F32)
    image[:, :, w // 2:] += F32(60)                          # two regions of unlike colour
    f = crf_features(h, w, xy_std) if rgb_std is None else \
        crf_features(h, w, xy_std, image, rgb_std)
    q = softmax(rng.standard_normal((h * w, 4)) * 2, axis=1).astype(F32)
    lattice = Permutohedral(f)
    got = lattice.compute(q) / lattice.compute(np.ones((h * w, 1), F32))
    d2 = ((f[:, None, :].astype(np.float64) - f[None, :, :]) ** 2).sum(-1)
    k = np.exp(-d2 / 2)
    want = k @ q / k.sum(1, keepdims=True)
    err = np.abs(got - want)
    assert err.max() < max_err and err.mean() < mean_err
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
    assert (got >= q.min(0) - 1e-6).all() and (got <= q.max(0) + 1e-6).all()
    assert err.mean() < 0.6 * min(np.abs(q - want).mean(), np.abs(q.mean(0) - want).mean())


# --- Krähenbühl's own code --------------------------------------------------------------------

@st.composite
def crf_cases(draw):
    h, w, m = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scores = (rng.standard_normal((m, h, w)) * draw(st.sampled_from([0.5, 3]))).astype(F32)
    image = rng.integers(0, 256, (3, h, w)).astype(F32)
    pos = [(draw(st.sampled_from([1.0, 3.0])), draw(st.sampled_from([0.7, 3.0, 20.0])))
           for _ in range(draw(st.integers(0, 2)))]
    bi = [(draw(st.sampled_from([4.0, 5.0])), draw(st.sampled_from([3.0, 50.0])),
           draw(st.sampled_from([5.0, 13.0]))) for _ in range(draw(st.integers(0, 2)))]
    return scores, image, pos, bi, draw(st.integers(0, 6))


@settings(max_examples=25, deadline=None)
@given(crf_cases())
def test_equals_pydensecrf_with_the_forks_normalisation(case):
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    scores, image, pos, bi, iters = case
    m, h, w = scores.shape
    d = dcrf.DenseCRF2D(w, h, m)
    d.setUnaryEnergy(np.ascontiguousarray(-scores.reshape(m, -1)))
    for wk, s in pos:
        d.addPairwiseGaussian(sxy=s, compat=wk, normalization=dcrf.NORMALIZE_AFTER)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0).astype(np.uint8))   # channels in order
    for wk, s, c in bi:
        d.addPairwiseBilateral(sxy=s, srgb=c, rgbim=hwc, compat=wk,
                               normalization=dcrf.NORMALIZE_AFTER)
    want = np.array(d.inference(iters)).reshape(m, h, w)
    got = crf(scores[None], image=image[None] if bi else None, max_iter=iters,
              pos_w=[p[0] for p in pos], pos_xy_std=[p[1] for p in pos],
              bi_w=[b[0] for b in bi], bi_xy_std=[b[1] for b in bi],
              bi_rgb_std=[b[2] for b in bi])[0]
    # pydensecrf normalises with exp, the fork with fast_exp (5e-6 relative): float32 rounding
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-6)


# --- the crop, dtypes, speed -------------------------------------------------------------------

def test_crops_to_data_dim_and_leaves_the_padding_zero():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((3, 4, 6, 7))
    image = rng.uniform(-100, 100, (3, 3, 6, 7))
    dims = np.array([[4, 5], [6, 7], [9, 12]], float).reshape(3, 1, 1, 2)  # padded, exact, cropped
    fields = {"max_iter": 3, "pos_w": 3, "pos_xy_std": 2, "bi_w": 4, "bi_xy_std": 5,
              "bi_rgb_std": 10}
    got = crf(scores, dims, image, **fields)
    alone = crf(scores[:1, :, :4, :5], None, image[:1, :, :4, :5], **fields)
    np.testing.assert_array_equal(got[0, :, :4, :5], alone[0])
    assert (got[0, :, 4:] == 0).all() and (got[0, :, :, 5:] == 0).all()
    for k in (1, 2):
        np.testing.assert_array_equal(got[k], crf(scores[k:k + 1], None, image[k:k + 1],
                                                  **fields)[0])
    assert not np.array_equal(got[0, :, :4, :5], crf(scores[:1], None, image[:1],
                                                     **fields)[0, :, :4, :5])


def test_float64_nets_get_the_float32_inference():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((1, 3, 5, 4))
    got64 = crf(scores, max_iter=4, pos_w=3, pos_xy_std=1)
    got32 = crf(scores.astype(F32), max_iter=4, pos_w=3, pos_xy_std=1)
    assert got64.dtype == np.float64 and got32.dtype == F32
    np.testing.assert_array_equal(got64, got32.astype(np.float64))


def test_a_64x64_image_with_21_classes():
    """DeepLab's sizes of classes and kernels (about 0.6 s on a quiet core; speed is the
    benchmarks' to measure): the marginals stay distributions."""
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((1, 21, 64, 64)).astype(F32)
    image = rng.uniform(-120, 120, (1, 3, 64, 64)).astype(F32)
    q = crf(scores, None, image, max_iter=10, pos_w=3, pos_xy_std=3, bi_w=4, bi_xy_std=121,
            bi_rgb_std=5)
    np.testing.assert_allclose(q.sum(1), 1, atol=1e-5)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, bottoms, message", [
    ({"pos_w": [3, 1], "pos_xy_std": 3}, None, r"2 pos_w and 1 pos_xy_std"),
    ({"bi_w": 4, "bi_xy_std": 5}, None, r"1 bi_w, 1 bi_xy_std and 0 bi_rgb_std"),
    ({"max_iter": -1}, None, "max_iter cannot be negative"),
    ({"pos_w": 3, "pos_xy_std": 0}, None, "pos_xy_std must be positive, got 0"),
    ({"pos_w": 3, "pos_xy_std": 3}, "image", "image as a third bottom but no bilateral kernel"),
    ({"bi_w": 4, "bi_xy_std": 5, "bi_rgb_std": 3}, "gray",
     r"image of shape \(2, 1, 6, 7\) does not fit scores of shape \(2, 4, 6, 7\)"),
    ({"bi_w": 4, "bi_xy_std": 5, "bi_rgb_std": 3}, "small",
     r"image of shape \(2, 3, 5, 7\) does not fit scores .* \(2, 3, 6, 7\)"),
    ({"pos_w": 3, "pos_xy_std": 3}, "dims1", r"data_dim of shape \(2, 1\) does not fit scores"),
    ({"pos_w": 3, "pos_xy_std": 3}, "dims3", r"data_dim of shape \(3, 2\) does not fit scores"),
    ({"pos_w": 3, "pos_xy_std": 3}, "wide", r"image 1 the size 3 x 9, which does not fit .* 6 x 7"),
    ({"pos_w": 3, "pos_xy_std": 3}, "zero", r"image 0 the size 0 x 5")])
def test_bad_parameters_and_shapes_say_what(fields, bottoms, message):
    scores = np.zeros((2, 4, 6, 7))
    dims = np.array([[6, 7], [6, 7]], float)
    extra = []
    if bottoms in ("image", "gray", "small"):
        extra = [np.zeros({"image": (2, 3, 6, 7), "gray": (2, 1, 6, 7),
                           "small": (2, 3, 5, 7)}[bottoms])]
    elif bottoms == "dims1":
        dims = np.zeros((2, 1))
    elif bottoms == "dims3":
        dims = np.zeros((3, 2))
    elif bottoms == "wide":
        dims[1] = [3, 9]
    elif bottoms == "zero":
        dims[0] = [0, 5]
    with pytest.raises(LayerError, match=message):
        DenseCRFLayer(**fields)(scores, dims, *extra)


# --- a DeepLab v2 test net -----------------------------------------------------------------------

CRF_NET = """
name: "deeplab-v2-crf"
layer {
  name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
  include { phase: TEST }
  transform_param { crop_size: 13 mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 }
  image_data_param { root_folder: "ROOT" source: "ROOT/list.txt" batch_size: 2
                     label_type: PIXEL }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc8_voc12" type: "Convolution" bottom: "conv1" top: "fc8_voc12"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "fc8_interp" type: "Interp" bottom: "fc8_voc12" top: "fc8_interp"
        interp_param { zoom_factor: 2 } }
layer {
  name: "crf_inf" type: "DenseCRF"
  bottom: "fc8_interp" bottom: "data_dim" bottom: "data" top: "crf_inf"
  dense_crf_param { max_iter: 10 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 121 bi_rgb_std: 5 }
}
layer { name: "accuracy" type: "SegAccuracy" bottom: "crf_inf" bottom: "label" top: "accuracy"
        seg_accuracy_param { ignore_label: 255 } }
layer { name: "fc8_mat" type: "MatWrite" bottom: "crf_inf"
        mat_write_param { prefix: "ROOT/features/" source: "ROOT/ids.txt" strip: 0 } }
"""


def test_a_deeplab_v2_crf_test_net_runs_from_text(tmp_path):
    pytest.importorskip("scipy")
    from scipy.io import loadmat
    write_set(tmp_path, [(13, 10), (9, 13)])              # the second is padded to 13 x 13
    (tmp_path / "features").mkdir()
    (tmp_path / "ids.txt").write_text("a\nb\n")
    net = minicnn.Net(parse_text(CRF_NET.replace("ROOT", str(tmp_path))), minicnn.TEST)
    net.forward()
    crf_inf, fc8 = net.blobs["crf_inf"].data, net.blobs["fc8_interp"].data
    assert crf_inf.shape == fc8.shape == (2, 4, 13, 13)
    dims = net.blobs["data_dim"].data.reshape(2, 2)
    np.testing.assert_array_equal(dims, [[13, 10], [9, 13]])
    for k, (h, w) in enumerate(dims.astype(int)):
        want = crf(fc8[k:k + 1, :, :h, :w], None, net.blobs["data"].data[k:k + 1, :, :h, :w],
                   max_iter=10, pos_w=3, pos_xy_std=3, bi_w=4, bi_xy_std=121, bi_rgb_std=5)
        np.testing.assert_array_equal(crf_inf[k, :, :h, :w], want[0])
        assert (crf_inf[k, :, h:] == 0).all() and (crf_inf[k, :, :, w:] == 0).all()
        np.testing.assert_allclose(crf_inf[k, :, :h, :w].sum(0), 1, atol=1e-5)
    assert not np.allclose(crf_inf[0, :, :13, :10], softmax(fc8[0, :, :13, :10]), atol=1e-3)
    assert np.isfinite(net.blobs["accuracy"].data).all()
    written = loadmat(str(tmp_path / "features" / "a_blob_0.mat"))["data"]
    np.testing.assert_array_equal(written.transpose(3, 2, 1, 0), crf_inf)


def test_the_crf_net_on_the_gpu_runs_densecrf_on_the_host(tmp_path, gpu):  # noqa: F811
    from minicnn import cuda
    pytest.importorskip("scipy")
    write_set(tmp_path, [(13, 10), (9, 13)])
    (tmp_path / "features").mkdir()
    (tmp_path / "ids.txt").write_text("a\nb\n")
    text = CRF_NET.replace("ROOT", str(tmp_path))
    outputs = []
    for device in (None, "cuda:0"):
        minicnn.set_random_seed(5)
        net = minicnn.Net(parse_text(text), minicnn.TEST, device=device)
        net.forward()
        outputs.append(np.array(cuda.to_host(net.blobs["crf_inf"].data)))
    assert "DenseCRF" in [net.layers[i].type for i in net._mirrors]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-4)


# --- MatRead -------------------------------------------------------------------------------------

def write_mats(tmp_path, names, shapes, dtype=np.float32, seed=0):
    """MatWrite's files for each name: blob i of shape shapes[i] (C, H, W). Returns the blobs."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    blobs = {}
    for name in names:
        for i, shape in enumerate(shapes):
            b = rng.standard_normal((1, *shape)).astype(dtype)
            savemat(str(tmp_path / f"{name}_blob_{i}.mat"), {"data": b.transpose(3, 2, 1, 0)},
                    format="5", do_compression=False)
            blobs[name, i] = b[0]
    return blobs


def read_net(tmp_path, fields, tops=2):
    text = ('layer { name: "read" type: "MatRead" ' +
            " ".join(f'top: "t{i}"' for i in range(tops)) +
            f' mat_read_param {{ prefix: "{tmp_path}/" {fields} }} }}')
    return minicnn.Net(parse_text(text), minicnn.TEST)


def test_matread_reads_matwrites_files_in_list_order_and_starts_over(tmp_path):
    pytest.importorskip("scipy")
    blobs = write_mats(tmp_path, ["x1", "x2", "x3"], [(3, 4, 5), (1, 1, 2)])
    (tmp_path / "ids.txt").write_text("x1.jpg\n\nx2.jpg extra\nx3.jpg\n")
    net = read_net(tmp_path, f'source: "{tmp_path}/ids.txt" strip: 4 batch_size: 2')
    assert net.blobs["t0"].shape == (2, 3, 4, 5) and net.blobs["t1"].shape == (2, 1, 1, 2)
    for expect in (["x1", "x2"], ["x3", "x1"], ["x2", "x3"]):
        net.forward()
        for i in range(2):
            np.testing.assert_array_equal(net.blobs[f"t{i}"].data,
                                          np.stack([blobs[e, i] for e in expect]))


def test_matread_roundtrips_matwrite_and_counts_iter_without_a_source(tmp_path):
    pytest.importorskip("scipy")
    write = minicnn.Net(parse_text(
        'layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 1 dim: 2 dim: 3 '
        'dim: 4 } } } layer { name: "w" type: "MatWrite" bottom: "a" '
        f'mat_write_param {{ prefix: "{tmp_path}/" }} }}'), minicnn.TEST)
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((1, 2, 3, 4)) for _ in range(3)]
    for a in arrays:
        write.forward(a=a)
    net = read_net(tmp_path, "", tops=1)
    for a in arrays:
        net.forward()
        np.testing.assert_array_equal(net.blobs["t0"].data, a.astype(F32))
    with pytest.raises(MinicnnError, match="iter_3_blob_0.mat"):
        net.forward()


def test_matread_errors_name_the_file(tmp_path):
    pytest.importorskip("scipy")
    write_mats(tmp_path, ["a"], [(2, 3, 4)])
    write_mats(tmp_path, ["b"], [(2, 3, 5)])
    write_mats(tmp_path, ["c"], [(2, 3, 4)], dtype=np.float64)
    (tmp_path / "ab.txt").write_text("a\nb\n")
    (tmp_path / "c.txt").write_text("c\n")
    net = read_net(tmp_path, f'source: "{tmp_path}/ab.txt"', tops=1)
    net.forward()
    with pytest.raises(MinicnnError, match=r"b_blob_0.mat' holds a blob of channels x height x "
                                           r"width \(2, 3, 5\), but top 0 has \(2, 3, 4\)"):
        net.forward()
    with pytest.raises(MinicnnError, match="holds double data but the net is single"):
        read_net(tmp_path, f'source: "{tmp_path}/c.txt"', tops=1)
    with pytest.raises(MinicnnError, match=r"a_blob_1.mat"):
        read_net(tmp_path, f'source: "{tmp_path}/ab.txt"', tops=2)
    with pytest.raises(MinicnnError, match="batch_size must be positive"):
        read_net(tmp_path, f'source: "{tmp_path}/ab.txt" batch_size: 0', tops=1)
    with pytest.raises(MinicnnError, match="prefix is required"):
        minicnn.Net(parse_text('layer { name: "r" type: "MatRead" top: "t" }'), minicnn.TEST)
    from scipy.io import savemat
    savemat(str(tmp_path / "d_blob_0.mat"), {"data": np.zeros((4, 3, 2, 2), F32)})
    (tmp_path / "d.txt").write_text("d\n")
    with pytest.raises(MinicnnError, match="holds 2 images"):
        read_net(tmp_path, f'source: "{tmp_path}/d.txt"', tops=1)


def test_crf_tuning_reads_the_stored_fc8_back_with_matread(tmp_path):
    # DeepLab tunes the CRF on stored scores: a test net writes fc8_interp with MatWrite
    # (batch 1, one file per image), a second net reads it back with MatRead beside the
    # images' ImageSegData and runs DenseCRF on it, without the convolutions
    pytest.importorskip("scipy")
    write_set(tmp_path, [(13, 10), (9, 13)])
    (tmp_path / "features").mkdir()
    (tmp_path / "ids.txt").write_text("a\nb\n")
    text = CRF_NET.replace("ROOT", str(tmp_path)).replace("batch_size: 2", "batch_size: 1")
    first = minicnn.Net(parse_text(text.replace('bottom: "crf_inf"\n', 'bottom: "fc8_interp"\n')),
                        minicnn.TEST)
    crf_first = []
    for _ in range(2):
        first.forward()
        crf_first.append(first.blobs["crf_inf"].data.copy())
    data_layer = text[:text.index('layer { name: "conv1"')]
    tuning = data_layer + f"""
layer {{ name: "fc8" type: "MatRead" top: "fc8_interp"
        mat_read_param {{ prefix: "{tmp_path}/features/" source: "{tmp_path}/ids.txt" }} }}
""" + text[text.index("layer {\n  name: \"crf_inf\""):text.index('layer { name: "accuracy"')]
    second = minicnn.Net(parse_text(tuning), minicnn.TEST)
    assert [lay.type for lay in second.layers] == ["ImageSegData", "MatRead", "DenseCRF"]
    for k in range(2):
        second.forward()
        np.testing.assert_array_equal(second.blobs["crf_inf"].data, crf_first[k])


def test_deeplab_v1_nets_name_them_dense_crf_and_mat_read(tmp_path):
    # DeepLab v1's V1 format: DENSE_CRF with dense_crf_param (its field 48), MAT_READ with
    # mat_read_param (47); they upgrade to the same layers
    pytest.importorskip("scipy")
    blobs = write_mats(tmp_path, ["im1"], [(3, 4, 5)])
    (tmp_path / "ids.txt").write_text("im1\n")
    text = f"""
input: "dim" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 2
layers {{ name: "fc8" type: MAT_READ top: "fc8"
          mat_read_param {{ prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt" }} }}
layers {{ name: "crf" type: DENSE_CRF bottom: "fc8" bottom: "dim" top: "crf"
          dense_crf_param {{ max_iter: 3 pos_w: 3 pos_xy_std: 2 }} }}
"""
    net = minicnn.Net(parse_text(text), minicnn.TEST)
    assert [lay.type for lay in net.layers][-2:] == ["MatRead", "DenseCRF"]
    out = net.forward(dim=np.array([4.0, 5.0]).reshape(1, 1, 1, 2))["crf"]
    np.testing.assert_array_equal(out, crf(blobs["im1", 0][None], max_iter=3, pos_w=3,
                                           pos_xy_std=2))
