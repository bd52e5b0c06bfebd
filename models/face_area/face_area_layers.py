"""The Python layers of models/face_area: the loss the talk's authors wrote for Caffe, and two
test-time scores. They are named in the prototxts as

    python_param { module: "face_area_layers" layer: "EuclideanLoss" }

and minicnn finds this file next to the prototxt (building the net runs it: it is a program).
They follow pycaffe's protocol, so the same file works with Caffe's Python layers after
``import minicnn`` -> ``import caffe`` and ``minicnn.PythonLayerBase`` -> ``caffe.Layer``.
"""

import json

import numpy as np

import minicnn


class EuclideanLoss(minicnn.PythonLayerBase):
    """L = sum((prediction - target)^2) / 2N over a batch of N (Caffe's EuclideanLoss, written
    as the talk did: "implemented loss layer"); bottoms: the estimated ratio (N, 1) after the
    Sigmoid, the true ratio (N, 1). Give it loss_weight: 1 in the prototxt."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError("EuclideanLoss takes the prediction and the target")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise ValueError(f"prediction {bottom[0].shape} and target {bottom[1].shape} "
                             "differ in size")
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff = bottom[0].data.reshape(-1) - bottom[1].data.reshape(-1)
        top[0].data[...] = np.dot(self.diff, self.diff) / bottom[0].num / 2

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:                     # top[0].diff holds the loss weight
                bottom[i].diff[...] = (sign * top[0].diff[0] * self.diff
                                       / bottom[i].num).reshape(bottom[i].shape)


class AbsoluteError(minicnn.PythonLayerBase):
    """The mean absolute error of the batch in percentage points: 100 * mean |prediction -
    target| (a test score; no gradient)."""

    def reshape(self, bottom, top):
        top[0].reshape(1)

    def forward(self, bottom, top):
        error = np.abs(bottom[0].data.reshape(-1) - bottom[1].data.reshape(-1))
        top[0].data[...] = 100 * error.mean()


class ConstantBaseline(AbsoluteError):
    """The same score for the constant guess "every image has the training set's mean face
    area": param_str is JSON {"source": HDF5 list file of the training set}; the mean of its
    ``label`` datasets is read once at setup. Bottom: the target only."""

    def setup(self, bottom, top):
        import os

        import h5py
        source = json.loads(self.param_str)["source"]
        folder = os.path.dirname(os.path.abspath(source))
        labels = []
        with open(source) as f:
            for line in f:
                if line.strip():
                    path = line.strip()
                    path = path if os.path.exists(path) else os.path.join(folder, path)
                    with h5py.File(path, "r") as h5:
                        labels.append(np.asarray(h5["label"], np.float64).reshape(-1))
        self.mean = float(np.concatenate(labels).mean())

    def forward(self, bottom, top):
        top[0].data[...] = 100 * np.abs(self.mean - bottom[0].data.reshape(-1)).mean()
