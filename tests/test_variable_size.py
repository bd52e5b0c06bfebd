"""Nets whose input size changes: Net.reshape and forward on new shapes (an SPP net keeps its
output length, a fully convolutional net follows the input), ImageData keeping each image's size
(batch 1, and size-bucketed batches), and the canvas-digits set made for it."""

import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn.data.buckets import SizeBuckets, image_size
from minicnn.data.canvas_digits import CANVAS_SIZES, make_canvas
from minicnn.data.errors import DataError
from minicnn.errors import LayerError
from minicnn.layers import ImageDataLayer
from minicnn.proto import parse_text

SPP_NET = """
name: "any_size"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 1 dim: 24 dim: 24 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "spp" type: "SPP" bottom: "pool" top: "spp"
        spp_param { bins: 1 bins: 2 bins: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "spp" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
"""


def spp_net(**kwargs):
    minicnn.set_random_seed(3)
    return minicnn.Net(parse_text(SPP_NET, "NetParameter"), dtype=np.float64, **kwargs)


def test_spp_net_takes_any_size_and_keeps_its_output_length():
    net = spp_net(force_backward=True)
    rng = np.random.default_rng(0)
    for hw in ((24, 24), (13, 31), (6, 6), (40, 9)):
        x = rng.standard_normal((2, 1, *hw))
        out = net.forward(data=x)["fc"]
        assert out.shape == (2, 3)
        assert net.blobs["pool"].shape == (2, 4, -(-hw[0] // 2), -(-hw[1] // 2))   # CEIL
        assert net.blobs["spp"].shape == (2, 4 * (1 + 4 + 9))
        assert net.backward(fc=np.ones((2, 3)))["data"].shape == x.shape


def test_reshape_then_forward_equals_a_net_built_for_that_size():
    """Net.reshape on a new input shape gives what a net declared with that shape gives, with the
    same weights (the SPP output length, hence fc's weights, does not depend on the size)."""
    net = spp_net()
    x = np.random.default_rng(1).standard_normal((1, 1, 17, 11))
    net.blobs["data"].reshape(x.shape)
    net.reshape()
    assert net.blobs["spp"].shape == (1, 56)
    net.blobs["data"].data[...] = x
    net.forward_from_to()
    fresh = minicnn.Net(parse_text(SPP_NET.replace("dim: 2 dim: 1 dim: 24 dim: 24",
                                                   "dim: 1 dim: 1 dim: 17 dim: 11"),
                                   "NetParameter"), dtype=np.float64)
    for name, blobs in net.params.items():
        for mine, theirs in zip(blobs, fresh.params[name]):
            theirs.data[...] = mine.data
    np.testing.assert_allclose(net.blobs["fc"].data, fresh.forward(data=x)["fc"], rtol=1e-12)


def test_the_same_image_at_two_sizes_of_canvas_gives_finite_gradients_for_both():
    net = spp_net(force_backward=True)
    for hw in ((12, 30), (30, 12)):
        net.forward(data=np.ones((2, 1, *hw)))
        diffs = net.backward(fc=np.ones((2, 3)))
        assert np.all(np.isfinite(diffs["data"])) and diffs["data"].shape == (2, 1, *hw)
        assert np.abs(diffs["data"]).max() > 0


def test_a_too_small_input_names_the_layer_and_shapes():
    net = spp_net()
    with pytest.raises(minicnn.NetError, match=r"layer 'spp' \(SPP; bottoms pool \(2, 4, 2, 2\)"
                                               r"\): .*into 3 bins needs at least 3"):
        net.forward(data=np.zeros((2, 1, 3, 4)))


# --- size buckets --------------------------------------------------------------------------------

SIZES = [(2, 3), (4, 4), (2, 3), (2, 3), (4, 4), (5, 1), (2, 3), (2, 3)]


def test_buckets_serve_every_sample_in_batches_of_one_size():
    plan = SizeBuckets(SIZES, 2)
    assert plan.sizes == [(2, 3), (4, 4), (5, 1)]
    assert plan.batches_per_epoch == 3 + 1 + 1
    for rng in (None, np.random.default_rng(5)):
        batches = plan.epoch(rng)
        assert len(batches) == plan.batches_per_epoch
        assert all(len(b) == 2 and len({SIZES[i] for i in b}) == 1 for b in batches)
        assert set(np.concatenate(batches).tolist()) == set(range(len(SIZES)))
    assert [b.tolist() for b in plan.epoch()] == [[0, 2], [3, 6], [7, 0], [1, 4], [5, 5]]


def test_bucket_epochs_are_pure_in_the_generator():
    plan = SizeBuckets(SIZES, 3)
    a = plan.epoch(np.random.default_rng([7, 0]))
    b = plan.epoch(np.random.default_rng([7, 0]))
    c = plan.epoch(np.random.default_rng([7, 1]))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    with pytest.raises(ValueError, match="batch_size must be positive"):
        SizeBuckets(SIZES, 0)


def write_sized_images(tmp_path, sizes):
    lines = []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w), i * 20, np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png {i}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return str(tmp_path / "list.txt")


def test_image_size_reads_the_header(tmp_path):
    write_sized_images(tmp_path, [(7, 3)])
    assert image_size(str(tmp_path / "0.png")) == (7, 3)
    (tmp_path / "bad.png").write_bytes(b"nothing")
    with pytest.raises(DataError, match="cannot read the image"):
        image_size(str(tmp_path / "bad.png"))


def test_image_data_keeps_each_size_with_batch_1(tmp_path):
    source = write_sized_images(tmp_path, [(3, 5), (6, 2), (4, 4)])
    layer = ImageDataLayer(source=source, is_color=False)
    shapes = [layer()[0].shape for _ in range(4)]
    assert shapes == [(1, 1, 3, 5), (1, 1, 6, 2), (1, 1, 4, 4), (1, 1, 3, 5)]


def test_image_data_bucket_by_size_batches_and_resume(tmp_path):
    sizes = [(3, 5), (6, 2), (3, 5), (6, 2), (3, 5), (4, 4)]
    source = write_sized_images(tmp_path, sizes)
    minicnn.set_random_seed(11)
    layer = ImageDataLayer(source=source, is_color=False, batch_size=2, bucket_by_size=True,
                           shuffle=True)
    batches = [tuple(a.copy() for a in layer()) for _ in range(12)]
    per_epoch = layer.buckets.batches_per_epoch
    assert per_epoch == 2 + 1 + 1
    for data, label in batches:
        assert {sizes[int(k)] for k in label} == {data.shape[2:]}
        for image, k in zip(data, label):                  # the image of that list line
            assert np.all(image == int(k) * 20)
    epochs = [np.concatenate([label for _, label in batches[e * per_epoch:(e + 1) * per_epoch]])
              .astype(int).tolist() for e in range(3)]
    for labels in epochs:                                  # each epoch serves every image
        assert set(labels) == set(range(6))
    assert len({tuple(labels) for labels in epochs}) > 1     # shuffled anew every epoch
    state = layer.data_state()
    more = [layer()[1].copy() for _ in range(5)]
    minicnn.set_random_seed(99)
    again = ImageDataLayer(source=source, is_color=False, batch_size=2, bucket_by_size=True,
                           shuffle=True)
    again.restore_data_state(state)
    for label in more:
        np.testing.assert_array_equal(again()[1], label)


def test_bucket_by_size_refuses_rand_skip(tmp_path):
    source = write_sized_images(tmp_path, [(3, 5), (6, 2)])
    with pytest.raises(LayerError, match="rand_skip is not supported with bucket_by_size"):
        ImageDataLayer(source=source, bucket_by_size=True, rand_skip=3)()


def test_a_net_trains_on_bucketed_variable_size_batches(tmp_path):
    sizes = [(8, 12), (12, 8), (8, 12), (12, 8), (10, 10), (10, 10)] * 2
    source = write_sized_images(tmp_path, sizes)
    text = SPP_NET.replace('layer { name: "data" type: "Input" top: "data"\n'
                           '        input_param { shape { dim: 2 dim: 1 dim: 24 dim: 24 } } }',
                           f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" '
                           f'image_data_param {{ source: "{source}" batch_size: 2 '
                           f'is_color: false bucket_by_size: true shuffle: true }} }}')
    text += ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
             'top: "loss" }')
    text = text.replace("num_output: 3", "num_output: 12")
    net = minicnn.Net(parse_text(text, "NetParameter"), phase="TRAIN")
    seen = set()
    for _ in range(6):
        loss = net.forward_backward()
        seen.add(net.blobs["data"].shape[2:])
        assert np.isfinite(loss) and net.blobs["spp"].shape == (2, 56)
    assert seen == {(8, 12), (12, 8), (10, 10)}


# --- canvas-digits ------------------------------------------------------------------------------

def test_canvas_digits_keep_the_digit_scale_and_vary_the_canvas():
    rng = np.random.default_rng(0)
    glyph = np.zeros((28, 28), np.uint8)
    glyph[4:24, 12:16] = 255                              # a "1"
    shapes = set()
    for _ in range(40):
        canvas = make_canvas(rng, glyph)
        assert canvas.dtype == np.uint8
        assert canvas.shape[0] in CANVAS_SIZES and canvas.shape[1] in CANVAS_SIZES
        shapes.add(canvas.shape)
        bright = np.argwhere(canvas > (np.median(canvas) + canvas.max()) / 2)
        height = bright[:, 0].max() - bright[:, 0].min() + 1
        assert 15 <= height <= 24                          # 20/28 of a 22..30-pixel frame
    assert len(shapes) > 8
    np.testing.assert_array_equal(make_canvas(np.random.default_rng(4), glyph),
                                  make_canvas(np.random.default_rng(4), glyph))
