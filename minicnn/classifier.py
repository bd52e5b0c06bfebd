"""Classifier: pycaffe's caffe.Classifier, a Net that predicts classes of images.

    clf = minicnn.Classifier("deploy.prototxt", "weights.caffemodel", image_dims=(256, 256),
                             mean=np.array([104, 117, 123]), raw_scale=255,
                             channel_swap=(2, 1, 0))
    probs = clf.predict([minicnn.io.load_image("cat.jpg")])     # (1, classes), 10 crops averaged

predict, as pycaffe's: each H x W x K image (in [0, 1], as load_image gives) is resized to
``image_dims`` (default: the input's H x W), cut into Caffe's 10 crops of the input's size
(corners and centre, and their mirrors; ``oversample=False``: the centre crop alone), each crop
goes through the Transformer (HWC -> CHW, channel swap, raw scale, mean, input scale), the net
runs in batches of its input's batch size (forward_all), and the first output's predictions of
an image's 10 crops are averaged. ``minicnn.deploy.classify`` is the same recipe for paths and
labels.
"""

import numpy as np

from minicnn import io
from minicnn.errors import MinicnnError
from minicnn.net import TEST, Net


def image_input(net, who):
    """(name, shape) of the net input that images feed: the first, an N x C x H x W one."""
    if not net.inputs:
        raise MinicnnError(f"a {who} needs a net with an Input layer to feed images to")
    name = net.inputs[0]
    shape = net.blobs[name].shape
    if len(shape) != 4:
        raise MinicnnError(f"input '{name}' has shape {shape}: images need an (N, C, H, W) "
                           "input")
    return name, shape


class Classifier(Net):
    """caffe.Classifier: ``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None)``, a TEST-phase Net with a
    ``transformer`` (minicnn.io.Transformer) for its first input, ``crop_dims`` (the input's
    H x W) and ``image_dims``. Other keywords go to Net (``device="cuda"``, ``dtype``)."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None, **net_options):
        super().__init__(model_file, pretrained_file, TEST, **net_options)
        name, shape = image_input(self, "Classifier")
        self.transformer = io.image_transformer(name, shape, mean, input_scale, raw_scale,
                                                channel_swap)
        self.crop_dims = np.array(shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = np.array([int(d) for d in image_dims])
        if self.image_dims.shape != (2,) or np.any(self.image_dims < self.crop_dims):
            raise MinicnnError(f"image_dims {tuple(self.image_dims.tolist())} must be a (height, "
                               f"width) of at least the input's {shape[2:]}, which is cropped "
                               "from it")

    def predict(self, inputs, oversample=True):
        """Class predictions (N x classes) of N images (H x W x K arrays): the 10 crops of each
        averaged (``oversample``), or its centre crop alone."""
        images = [np.asarray(image, np.float32) for image in inputs]
        if not images:
            raise MinicnnError("predict needs at least one image")
        images = [image[:, :, None] if image.ndim == 2 else image for image in images]
        if any(image.ndim != 3 for image in images):
            raise MinicnnError("predict takes H x W x K images, not arrays of shapes "
                               + ", ".join(str(image.shape) for image in images))
        resized = np.stack([io.resize_image(image, self.image_dims) for image in images])
        crop = tuple(int(d) for d in self.crop_dims)
        if oversample:
            crops = io.oversample(resized, crop)
        else:
            crops = np.stack([io.center_crop(image, crop) for image in resized])
        name = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(name, c) for c in crops])
        predictions = self.forward_all(**{name: batch})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape(len(images), 10, -1).mean(axis=1)
        return predictions
