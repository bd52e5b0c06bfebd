"""minicnn.io: load_image, Transformer (caffe.io's order of operations), oversample, preprocess."""

import re

import numpy as np
import pytest
from PIL import Image

from minicnn.errors import MinicnnError
from minicnn.io import (Transformer, center_crop, load_image, oversample, preprocess,
                        resize_image)


@pytest.fixture
def rgb_file(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = 255                                 # pure red
    pixels[1, 2] = (10, 20, 30)
    path = tmp_path / "red.png"
    Image.fromarray(pixels).save(path)
    return path


def test_load_image_is_float_rgb_in_unit_range(rgb_file):
    image = load_image(rgb_file)
    assert image.shape == (4, 6, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, 0], [1, 0, 0])
    np.testing.assert_allclose(image[1, 2], np.array([10, 20, 30]) / 255)
    gray = load_image(rgb_file, color=False)
    assert gray.shape == (4, 6, 1) and 0 < gray[0, 0, 0] < 1
    with pytest.raises(MinicnnError, match="cannot read the image"):
        load_image(rgb_file.parent / "missing.png")


def test_load_image_scales_16_bit_gray_to_the_unit_range(tmp_path):
    pixels = np.array([[0, 257, 65535]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")          # caffe.io: value / 65535
    np.testing.assert_allclose(load_image(tmp_path / "deep.png", color=False)[..., 0],
                               [[0, 257 / 65535, 1]])
    image = load_image(tmp_path / "deep.png")
    assert image.shape == (1, 3, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, 1], 257 / 65535)


def test_transformer_applies_caffe_io_order():
    rng = np.random.default_rng(0)
    image = rng.random((5, 7, 3)).astype(np.float32)
    t = Transformer({"data": (1, 3, 5, 7)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.5)
    x = t.preprocess("data", image)
    expected = (image.transpose(2, 0, 1)[::-1] * 255 - np.array([104, 117, 123])[:, None, None]) \
        * 0.5
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", x), image, rtol=1e-5, atol=1e-6)
    # a batch of one, as pycaffe users pass net.blobs["data"].data (caffe.io squeezes it)
    np.testing.assert_allclose(t.deprocess("data", x[None]), image, rtol=1e-5, atol=1e-6)


def test_transformer_resizes_to_the_input_and_checks_settings():
    t = Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    assert t.preprocess("data", np.ones((9, 9, 3))).shape == (3, 4, 4)
    with pytest.raises(MinicnnError, match="not one of the net inputs"):
        t.set_raw_scale("image", 255)
    with pytest.raises(MinicnnError, match="fits neither"):
        t.set_mean("data", np.zeros((2, 4, 4)))
    with pytest.raises(MinicnnError, match="fits neither"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(MinicnnError, match="channel swap needs 3"):
        t.set_channel_swap("data", (1, 0))


def test_a_mean_image_of_another_size_is_resized_as_the_common_pycaffe_patch_does():
    """set_mean resizes a mean image to the input (ImageNet's 256 x 256 mean for a 227 x 227
    crop), as the widely used patch to pycaffe's io.py does (pycaffe itself raises): the
    per-channel levels stay, a 2-D mean serves one channel."""
    t = Transformer({"data": (1, 3, 4, 6), "gray": (1, 1, 4, 4)})
    levels = np.array([104.0, 117.0, 123.0], np.float32)
    t.set_mean("data", np.broadcast_to(levels[:, None, None], (3, 9, 8)))
    assert t.mean["data"].shape == (3, 4, 6)
    np.testing.assert_allclose(t.mean["data"], np.broadcast_to(levels[:, None, None], (3, 4, 6)),
                               rtol=1e-6)
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))         # 2-D: the one channel
    t.set_mean("gray", ramp)
    assert t.mean["gray"].shape == (1, 4, 4)
    np.testing.assert_allclose(t.mean["gray"][0], resize_image(ramp[:, :, None], (4, 4))[:, :, 0])
    assert (np.diff(t.mean["gray"][0, 0]) > 0).all()


def test_resize_crop_and_oversample():
    image = np.arange(8 * 10 * 2, dtype=np.float32).reshape(8, 10, 2)
    assert resize_image(image, (4, 5)).shape == (4, 5, 2)
    np.testing.assert_array_equal(resize_image(np.full((3, 3, 1), 7.0), (6, 6)), 7.0)
    np.testing.assert_array_equal(center_crop(image, (4, 4)), image[2:6, 3:7])
    crops = oversample([image], (4, 6))
    assert crops.shape == (10, 4, 6, 2)
    # pycaffe's order: corners row by row (top-left, top-right, bottom-left, bottom-right),
    # the centre, then the same five mirrored
    corners = [image[:4, :6], image[:4, 4:], image[4:, :6], image[4:, 4:], image[2:6, 2:8]]
    for i, crop in enumerate(corners):
        np.testing.assert_array_equal(crops[i], crop, err_msg=f"crop {i}")
        np.testing.assert_array_equal(crops[5 + i], crop[:, ::-1], err_msg=f"crop {5 + i}")


def test_preprocess_is_the_usual_caffe_recipe(rgb_file):
    x = preprocess(rgb_file, crop=2, resize=4)
    assert x.shape == (3, 2, 2)
    image = resize_image(load_image(rgb_file), (4, 4))[1:3, 1:3]
    expected = image.transpose(2, 0, 1)[::-1] * 255 - np.array([104, 117, 123])[:, None, None]
    np.testing.assert_allclose(x, expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["rgb.png", "rgb.jpg", "rgba.png", "palette.png"])
def test_load_image_in_gray_is_pycaffes(tmp_path, kind):
    # pycaffe: skimage.img_as_float(skimage.io.imread(path, as_gray=True)).astype(float32):
    # rgb2gray's weights in float, alpha laid on white (Pillow's "L" was up to 28/255 off, and
    # 226/255 where the image had alpha)
    skimage_io = pytest.importorskip("skimage.io")
    from skimage import data, img_as_float
    rgb = data.coffee()[::2, ::2]
    name = kind.split(".")[0]
    ramp = (np.arange(rgb.shape[1]) % 256).astype(np.uint8)[None].repeat(rgb.shape[0], 0)
    image = {"rgb": Image.fromarray(rgb), "palette": Image.fromarray(rgb).convert("P"),
             "rgba": Image.fromarray(np.dstack([rgb, ramp]))}[name]
    path = str(tmp_path / kind)
    image.save(path)
    want = img_as_float(skimage_io.imread(path, as_gray=True)).astype(np.float32)
    got = load_image(path, color=False)
    assert got.shape == (*rgb.shape[:2], 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, :, 0], want, rtol=0, atol=1e-7)


def test_pycaffe_signatures_and_errors(tmp_path):
    # caffe.io.resize_image(im, new_dims, interp_order=1); load_image's failures are IOErrors
    image = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    nearest = resize_image(image, (4, 4), 0)
    np.testing.assert_array_equal(nearest[::2, ::2], image)
    assert resize_image(image, (4, 4), interp_order=1).shape == (4, 4, 3)
    with pytest.raises(MinicnnError, match="interp_order 3"):
        resize_image(image, (4, 4), 3)
    with pytest.raises(IOError):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(MinicnnError, match="cannot read the image"):
        load_image(str(tmp_path / "bad.png"))


def test_pycaffes_keyword_names(rgb_file):
    """Scripts may name caffe.io's arguments: load_image(filename), resize_image(im, new_dims),
    oversample(images, crop_dims), and the Transformer's (in_, order / scale / mean / data)."""
    image = load_image(filename=str(rgb_file), color=True)
    assert resize_image(im=image, new_dims=(2, 3)).shape == (2, 3, 3)
    assert oversample(images=[image], crop_dims=(2, 2)).shape == (10, 2, 2, 3)
    t = Transformer({"data": (1, 3, 4, 6)})
    t.set_transpose(in_="data", order=(2, 0, 1))
    t.set_channel_swap(in_="data", order=(2, 1, 0))
    t.set_raw_scale(in_="data", scale=255)
    t.set_mean(in_="data", mean=np.array([1.0, 2.0, 3.0]))
    t.set_input_scale(in_="data", scale=0.5)
    x = t.preprocess(in_="data", data=image)
    np.testing.assert_allclose(x[:, 0, 0], [(0 - 1) / 2, (0 - 2) / 2, (255 - 3) / 2])
    np.testing.assert_allclose(t.deprocess(in_="data", data=x), image, atol=1e-6)


def test_transformer_scales_per_channel_and_set_mean_raises_valueerror():
    """pycaffe multiplies by whatever scale it was given (an array broadcast per channel), and
    its set_mean raises ValueError (scripts catch that)."""
    t = Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_input_scale("data", np.array([1.0, 2.0, 4.0])[:, None, None])
    x = t.preprocess("data", np.ones((2, 2, 3), np.float32))
    np.testing.assert_array_equal(x[:, 1, 1], [1, 2, 4])
    np.testing.assert_array_equal(t.deprocess("data", x), np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match=r"mean of shape \(4,\)"):
        t.set_mean("data", np.zeros(4))


@pytest.mark.parametrize("scale, message", [
    (np.array([1.0, 2.0]), r"raw scale of 'data': an array of shape \(2,\) does not multiply "
                           r"the input's C x H x W \(3, 2, 2\) \(per channel: shape \(3, 1, 1\)\)"),
    (np.ones((2, 3, 2, 2)), r"shape \(2, 3, 2, 2\) does not multiply"),    # would add an axis
    ("abc", r"raw scale of 'data': a number or an array of numbers, got 'abc'")])
def test_a_scale_that_cannot_multiply_the_input_is_refused_when_set(scale, message):
    """Not NumPy's broadcast error from preprocess later: the setter names the input."""
    t = Transformer({"data": (1, 3, 2, 2)})
    with pytest.raises(ValueError, match=message):
        t.set_raw_scale("data", scale)
    assert "data" not in t.raw_scale
    t.set_transpose("data", (2, 0, 1))
    for per_channel in ([1.0, 2.0, 3.0], np.array([1.0, 2.0, 3.0])[:, None, None]):
        t.set_raw_scale("data", per_channel)                         # (C,) as set_mean takes
        x = t.preprocess("data", np.ones((2, 2, 3), np.float32))
        np.testing.assert_array_equal(x[:, 0, 1], [1, 2, 3])


def test_deprocess_inverts_a_channel_swap_that_is_not_its_own_inverse():
    """deprocess undoes the swap with its inverse permutation (pycaffe's np.argsort(order)):
    (1, 2, 0) applied twice is not the identity, unlike RGB <-> BGR's (2, 1, 0)."""
    t = Transformer({"data": (1, 3, 2, 3)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (1, 2, 0))
    image = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    x = t.preprocess("data", image)
    np.testing.assert_array_equal(x, image.transpose(2, 0, 1)[[1, 2, 0]])
    np.testing.assert_array_equal(t.deprocess("data", x), image)


def test_preprocess_of_gray_images_skips_the_swap_and_takes_a_single_mean():
    """preprocess: the colour swap is for 3-channel images only (a gray one keeps its channel),
    and one mean value serves every channel."""
    gray = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    x = preprocess(gray, crop=None, resize=None, mean=(100.0,))
    np.testing.assert_allclose(x, gray[None] * 255 - 100, rtol=1e-6)
    rgb = np.random.default_rng(3).random((4, 4, 3)).astype(np.float32)
    x = preprocess(rgb, crop=None, resize=None, mean=(100.0,))
    np.testing.assert_allclose(x, rgb.transpose(2, 0, 1)[::-1] * 255 - 100, rtol=1e-6)
    with pytest.raises(MinicnnError, match="mean has 2 values for 3 channels"):
        preprocess(rgb, crop=None, resize=None, mean=(1.0, 2.0))


def test_deprocess_of_more_than_one_image_is_a_clear_error():
    """deprocess takes one image (or a batch of one, as caffe.io squeezes it): a batch of two
    was a bare NumPy IndexError from the channel swap."""
    t = Transformer({"data": (2, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    assert t.deprocess("data", np.ones((1, 3, 2, 2))).shape == (2, 2, 3)
    with pytest.raises(MinicnnError, match=r"one image .* shape \(2, 3, 2, 2\)"):
        t.deprocess("data", np.ones((2, 3, 2, 2)))


def test_transformer_refuses_orders_that_are_not_permutations():
    """A repeated or out-of-range index in set_transpose / set_channel_swap is refused when set
    (a ValueError, naming the input): a swap (0, 0, 1) dropped a channel silently, and an
    out-of-range transpose failed later in NumPy."""
    t = Transformer({"data": (1, 3, 4, 4)})
    for setter, order in ((t.set_transpose, (0, 0, 1)), (t.set_transpose, (3, 0, 1)),
                          (t.set_channel_swap, (0, 0, 1)), (t.set_channel_swap, (0, 1, 5))):
        with pytest.raises(ValueError, match=r"'data' .*not a reordering"):
            setter("data", order)
    assert not t.transpose and not t.channel_swap
    with pytest.raises(ValueError, match="'data': a sequence of integers, got None"):
        t.set_channel_swap("data", None)


def test_preprocess_and_deprocess_refuse_images_of_the_wrong_channels():
    """An image whose channels are not the input's is an error naming both shapes (a gray
    image's (1, H, W) broadcast silently into a 3-channel blob; deprocess dropped a channel)."""
    t = Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_mean("data", np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"\(4, 4, 1\) has 1 channels; the input \(1, 3, 4, 4\)"):
        t.preprocess("data", np.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match=r"3 axes \(H x W x C\), not an array of shape \(4, 4\)"):
        t.preprocess("data", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(4, 4, 4\) has 4 channels"):
        t.deprocess("data", np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match=r"\(3, 5, 5\), but the mean image .* \(3, 4, 4\)"):
        t.deprocess("data", np.zeros((3, 5, 5)))
    assert t.deprocess("data", t.preprocess("data", np.ones((4, 4, 3)))).shape == (4, 4, 3)
    swap_only = Transformer({"data": (1, 3, 4, 4)})
    swap_only.set_channel_swap("data", (2, 1, 0))        # no transpose: it reorders the rows
    with pytest.raises(ValueError, match="reorders the first axis, of 4"):
        swap_only.preprocess("data", np.zeros((4, 4, 3)))


def test_resize_and_oversample_refuse_bad_sizes_and_images():
    """0 or negative sizes, a size that is not (height, width), an image that is not H x W x C
    or has no pixels, and an empty list are ValueErrors naming the argument and the shapes (not
    Pillow's or NumPy's errors, nor a 10 x 0 x W stack of empty crops)."""
    image = np.zeros((10, 12, 3), np.float32)
    for dims in ((0, 5), (-3, 5), (5,), (5.5, 5)):
        with pytest.raises(ValueError, match=r"resize_image: new_dims: \(height, width\)"):
            resize_image(image, dims)
        with pytest.raises(ValueError, match=r"oversample: crop_dims: \(height, width\)"):
            oversample([image], dims)
    for bad in (image[:, :, 0], image[None], np.zeros((0, 5, 3))):
        with pytest.raises(ValueError, match=rf"not an array of shape {re.escape(str(bad.shape))}"):
            resize_image(bad, (4, 4))
    with pytest.raises(ValueError, match=r"image 0 of shape \(12, 3\) is not H x W x C"):
        oversample(image, (5, 5))                       # one image, not a list of them
    with pytest.raises(ValueError, match=r"cannot crop 20x20 from image 1 of 10x12"):
        oversample([np.zeros((30, 30, 3)), image], (20, 20))
    with pytest.raises(ValueError, match="no images given"):
        oversample([], (5, 5))
    assert resize_image(image, (np.int64(4), 6.0)).shape == (4, 6, 3)


def test_load_image_refuses_what_is_not_a_path():
    with pytest.raises(TypeError, match="filename is a path .*not NoneType"):
        load_image(None)
