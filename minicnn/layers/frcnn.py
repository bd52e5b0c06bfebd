"""The layers of Ross Girshick's Fast/Faster R-CNN fork (caffe-fast-rcnn, which py-faster-rcnn
builds): ROIPooling and SmoothL1Loss; and R-FCN's PSROIPooling. The math is minicnn.ops.frcnn."""

import numpy as np

from minicnn import cuda, ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.frcnn import roi_batch_indices


def _legacy_4d(blob, what):
    """(num, channels, height, width): Caffe's legacy accessors (missing axes are 1)."""
    if len(blob.shape) > 4:
        raise LayerError(f"{what} is read as N x C x H x W, but it has shape {blob.shape} "
                         f"({len(blob.shape)} axes; at most 4)")
    return tuple(blob.shape) + (1,) * (4 - len(blob.shape))


@register("ROIPooling")
class ROIPoolingLayer(Layer):
    """Fast R-CNN's `ROIPooling`: max pooling of each region of interest to pooled_h x pooled_w.

    bottom[0]: the features, N x C x H x W. bottom[1]: the rois, R x 5 (or R x 5 x 1 x 1), each
    (batch index, x1, y1, x2, y2) in image coordinates, which spatial_scale (default 1; 0.0625
    for a stride-16 map) maps onto the features. Top: R x C x pooled_h x pooled_w.

    The fork's arithmetic: corners round(coord * spatial_scale), halves away from zero; a roi
    (end - start + 1) wide, at least 1; bin p covers [floor(p * bin), ceil((p + 1) * bin)) of
    it, bin = roi size / pooled size, clipped to the map; an empty bin gives 0. Backward sends
    each top diff to the position of its max; rois whose rounded end is before their start get
    no gradient (as in the fork); the rois get none (the fork leaves their diff alone; minicnn
    writes zeros if asked for it)."""
    param_field = "roi_pooling_param"
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.roi_pooling_param
        for name in ("pooled_h", "pooled_w"):
            if not getattr(p, name) > 0:
                raise LayerError(f"roi_pooling_param.{name} must be > 0, got "
                                 f"{getattr(p, name)}")
        self.pooled = (p.pooled_h, p.pooled_w)
        self.spatial_scale = p.spatial_scale
        self._argmax = None

    def reshape(self, bottom, top):
        _legacy_4d(bottom[0], "ROIPooling's bottom[0] (the features)")
        num, c, h, w = _legacy_4d(bottom[1], "ROIPooling's bottom[1] (the rois)")
        if c * h * w != 5:
            raise LayerError(f"ROIPooling's rois must be R x 5 (batch index, x1, y1, x2, y2), "
                             f"got shape {bottom[1].shape}")
        top[0].reshape((num, _legacy_4d(bottom[0], "")[1], *self.pooled))

    def _rois(self, bottom):
        """The rois as an (R, 5) host array, batch indices checked against the features."""
        rois = cuda.to_host(bottom[1].data).reshape(-1, 5)
        batch, num = roi_batch_indices(rois), _legacy_4d(bottom[0], "")[0]
        bad = np.flatnonzero((batch < 0) | (batch >= num))
        if bad.size:
            r = int(bad[0])
            raise LayerError(f"roi {r} has batch index {rois[r, 0]:g}, but the features hold "
                             f"{num} item(s) (shape {bottom[0].shape}): indices must be in "
                             f"[0, {num})")
        return rois

    def _features(self, blob):
        return blob.data.reshape(_legacy_4d(blob, ""))

    def forward(self, bottom, top):
        y, argmax = ops.roi_pool_forward(self._features(bottom[0]), self._rois(bottom),
                                         pooled_h=self.pooled[0], pooled_w=self.pooled[1],
                                         spatial_scale=self.spatial_scale)
        self._argmax = argmax if self.backward_needed else None
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            bottom[1].diff[...] = 0                  # the fork gives the rois no gradient
        if not propagate_down[0]:
            return
        if self._argmax is None:
            raise LayerError("backward after a forward that kept nothing for it: the net said "
                             "this layer needs no backward")
        dx = ops.roi_pool_backward(top[0].diff, self._argmax, self._rois(bottom),
                                   _legacy_4d(bottom[0], ""), spatial_scale=self.spatial_scale)
        bottom[0].diff[...] = dx.reshape(bottom[0].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("PSROIPooling")
class PSROIPoolingLayer(ROIPoolingLayer):
    """R-FCN's `PSROIPooling` (position-sensitive ROI pooling; psroi_pooling_param:
    spatial_scale, output_dim, group_size, all required): bottom[0] holds output_dim groups of
    group_size^2 score maps (C = output_dim * group_size^2), bottom[1] the rois as ROIPooling's.
    Top: R x output_dim x group_size x group_size; bin (i, j) of output channel o is the mean
    over its window of channel (o * group_size + i) * group_size + j (0 for an empty bin).

    The fork's geometry: the roi is rounded, then scaled (round(x1) * spatial_scale to
    (round(x2) + 1) * spatial_scale), at least 0.1 wide and high; bins as ROIPooling's but from
    those float corners (minicnn.ops.frcnn). Backward spreads each top diff evenly over its
    window; the rois get no gradient. On a GPU the layer runs on host copies."""
    param_field = "psroi_pooling_param"

    def layer_setup(self, bottom, top):
        p = self.param.psroi_pooling_param
        missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not p.HasField(f)]
        if missing:
            raise LayerError(f"PSROIPooling layer '{self.name}': psroi_pooling_param."
                             f"{', '.join(missing)} required (the fork's fields are required)")
        for name in ("output_dim", "group_size"):
            if getattr(p, name) < 1:
                raise LayerError(f"psroi_pooling_param.{name} must be > 0, got "
                                 f"{getattr(p, name)}")
        self.output_dim, self.group_size = p.output_dim, p.group_size
        self.pooled = (p.group_size, p.group_size)
        self.spatial_scale = p.spatial_scale

    def reshape(self, bottom, top):
        features = _legacy_4d(bottom[0], "PSROIPooling's bottom[0] (the score maps)")
        if features[1] != self.output_dim * self.group_size ** 2:
            raise LayerError(f"PSROIPooling's bottom[0] has {features[1]} channels (shape "
                             f"{bottom[0].shape}); output_dim {self.output_dim} x group_size "
                             f"{self.group_size}^2 = {self.output_dim * self.group_size ** 2} "
                             "are needed")
        num, c, h, w = _legacy_4d(bottom[1], "PSROIPooling's bottom[1] (the rois)")
        if c * h * w != 5:
            raise LayerError(f"PSROIPooling's rois must be R x 5 (batch index, x1, y1, x2, y2), "
                             f"got shape {bottom[1].shape}")
        top[0].reshape((num, self.output_dim, *self.pooled))

    def forward(self, bottom, top):
        top[0].data[...] = ops.psroi_pool_forward(
            self._features(bottom[0]), self._rois(bottom), output_dim=self.output_dim,
            group_size=self.group_size, spatial_scale=self.spatial_scale)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            bottom[1].diff[...] = 0
        if propagate_down[0]:
            dx = ops.psroi_pool_backward(top[0].diff, self._rois(bottom),
                                         _legacy_4d(bottom[0], ""),
                                         spatial_scale=self.spatial_scale)
            bottom[0].diff[...] = dx.reshape(bottom[0].shape)


@register("SmoothL1Loss")
class SmoothL1LossLayer(Layer):
    """Fast R-CNN's `SmoothL1Loss`, the box-regression loss: with x = inside * (pred - target),
    loss = sum(outside * f(x)) / N, f(x) = 0.5 * (sigma * x)^2 if |x| < 1 / sigma^2, else
    |x| - 0.5 / sigma^2 (smooth_l1_loss_param.sigma, default 1; Faster R-CNN's RPN uses 3).
    N is bottom[0]'s first dimension, the batch size, as the fork normalises.

    Bottoms: predictions, targets, and optionally inside_weights and outside_weights (both or
    neither), all with the same N x C x H x W (legacy 4-D) shape. Backward gives the
    predictions the gradient and the targets its negative, scaled by the loss weight in
    top[0].diff; the weights get none (the fork leaves their diffs alone; minicnn writes zeros
    if asked for them)."""
    param_field = "smooth_l1_loss_param"
    min_num_bottom, max_num_bottom = 2, 4
    exact_num_top = 1
    is_loss = True

    def layer_setup(self, bottom, top):
        if len(bottom) == 3:
            raise LayerError("SmoothL1Loss takes 2 bottoms, or 4 with weights: give both "
                             "inside_weights and outside_weights")
        self.sigma = self.param.smooth_l1_loss_param.sigma

    def reshape(self, bottom, top):
        names = ("predictions", "targets", "inside_weights", "outside_weights")
        shapes = [_legacy_4d(b, f"SmoothL1Loss's {name}") for b, name in zip(bottom, names)]
        if shapes[1][0] != shapes[0][0]:
            raise LayerError(f"the predictions (shape {bottom[0].shape}) and the targets (shape "
                             f"{bottom[1].shape}) must have the same first dimension")
        for b, shape, name in zip(bottom[1:], shapes[1:], names[1:]):
            if shape != shapes[0]:
                raise LayerError(f"SmoothL1Loss's {name} (shape {b.shape}) must have the shape of "
                                 f"the predictions ({bottom[0].shape})")
        top[0].reshape(())

    def _weights(self, bottom):
        return (bottom[2].data, bottom[3].data) if len(bottom) == 4 else (None, None)

    def forward(self, bottom, top):
        loss, self._x = ops.smooth_l1_loss_forward(bottom[0].data, bottom[1].data,
                                                   *self._weights(bottom), sigma=self.sigma)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        for i in range(2, len(bottom)):
            if propagate_down[i]:
                bottom[i].diff[...] = 0                 # the fork gives the weights nothing
        if not (propagate_down[0] or propagate_down[1]):
            return
        grad = ops.smooth_l1_loss_backward(self._x, *self._weights(bottom), sigma=self.sigma,
                                           loss_weight=top[0].diff)
        for sign, down, blob in ((1, propagate_down[0], bottom[0]),
                                 (-1, propagate_down[1], bottom[1])):
            if down:
                blob.diff[...] = (grad if sign > 0 else -grad).reshape(blob.shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2
