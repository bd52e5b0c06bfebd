"""R-CNN's window detector, as pycaffe's ``caffe.Detector`` (python/caffe/detector.py) runs it.

    detector = minicnn.Detector("deploy.prototxt", "rcnn.caffemodel", mean=mean,
                                raw_scale=255, channel_swap=(2, 1, 0), context_pad=16)
    detections = detector.detect_windows([("cat.jpg", [(ymin, xmin, ymax, xmax), ...])])
    detections[0]["prediction"]            # the net's first output for the first window

Each window (pixel rows and columns, ``ymin:ymax, xmin:xmax`` as a slice) is cut out of its
image, warped to the net's input size and run through the net in batches. With ``context_pad``
(R-CNN used 16) the window first grows about its centre so that, warped, it keeps
``context_pad`` pixels of context on each side; the part of the grown box outside the image is
filled with the mean colour. The arithmetic is pycaffe's, step for step (its rounding is
Python 3's: halves to even), except that box corners are cast to whole pixels before they
index the image, which pycaffe's code leaves to old NumPy versions (new ones refuse floats).

Region proposals are not made here: pycaffe's detect_selective_search calls a MATLAB package;
give the windows from any proposal method to detect_windows.
"""

import numpy as np

from minicnn.classifier import image_input
from minicnn.errors import MinicnnError
from minicnn.io import image_transformer, load_image, resize_image
from minicnn.net import TEST, Net


class Detector(Net):
    """A TEST-phase Net that scores image windows (pycaffe's caffe.Detector).

    ``mean`` (per channel, or a C x H x W image), ``input_scale``, ``raw_scale`` and
    ``channel_swap`` configure the Transformer of the first input as pycaffe does, images being
    H x W x C RGB in [0, 1] (``minicnn.io.load_image``). Other keywords go to Net
    (``device="cuda"``, ``dtype``).
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None, **net_options):
        super().__init__(model_file, pretrained_file, TEST, **net_options)
        name, shape = image_input(self, "Detector")
        self.transformer = image_transformer(name, shape, mean, input_scale, raw_scale,
                                             channel_swap)
        self.configure_crop(context_pad)

    def configure_crop(self, context_pad):
        """Set the crop size (the input's H x W x C) and, for context padding, the mean colour
        in the raw image's space (what the padding is filled with before preprocessing)."""
        name = self.inputs[0]
        channels, height, width = self.blobs[name].shape[1:]
        self.crop_dims = np.array([height, width, channels])
        self.context_pad = context_pad
        if not context_pad:
            return
        if context_pad * 2 >= width:
            raise MinicnnError(f"context_pad {context_pad} leaves no room for the window in a "
                               f"{height}x{width} input")
        mean = self.transformer.mean.get(name)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.transpose(1, 2, 0).copy()          # C x H x W (or C x 1 x 1) -> H x W x C
        swap = self.transformer.channel_swap.get(name)
        if swap is not None:
            crop_mean = crop_mean[:, :, np.argsort(swap)]
        raw_scale = self.transformer.raw_scale.get(name)
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of an H x W x C image, with context if set."""
        ymin, xmin, ymax, xmax = (int(v) for v in window)
        if not self.context_pad:
            return im[ymin:ymax, xmin:xmax]
        crop_size = int(self.crop_dims[1])                    # the input's width: square inputs
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h, half_w = (ymax - ymin + 1) / 2.0, (xmax - xmin + 1) / 2.0
        center = np.array([ymin + half_h, xmin + half_w])
        box = np.round(np.tile(center, 2) + scale * np.array([-half_h, -half_w, half_h, half_w]))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0, -box[0]) * scale_h))        # the part above/left of the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        top, left, bottom, right = (int(v) for v in box)
        if top >= bottom or left >= right:
            raise MinicnnError(f"window {tuple(window)} lies outside the {im_h}x{im_w} image")
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        context = resize_image(im[top:bottom, left:right], (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def detect_windows(self, images_windows):
        """Score windows: ``images_windows`` is [(image path, [window, ...]), ...]; returns one
        {"window", "prediction", "filename"} per window, in order (the first output's row)."""
        name = self.inputs[0]
        crops, where = [], []
        for filename, windows in images_windows:
            image = load_image(filename)
            for window in windows:
                crop = self.crop(image, window)
                if crop.shape[0] == 0 or crop.shape[1] == 0:
                    raise MinicnnError(f"{filename}: window {tuple(window)} is empty in the "
                                       f"{image.shape[0]}x{image.shape[1]} image")
                crops.append(crop)
                where.append((filename, window))
        if not crops:
            return []
        batch = np.stack([self.transformer.preprocess(name, crop) for crop in crops])
        predictions = self.forward_all(**{name: batch})[self.outputs[0]]
        return [{"window": window, "prediction": prediction, "filename": filename}
                for (filename, window), prediction in zip(where, predictions)]

    def detect_selective_search(self, image_fnames):
        raise MinicnnError("selective search proposals need R-CNN's MATLAB package, which "
                           "minicnn does not call; make the windows with any proposal method "
                           "and pass them to detect_windows")
