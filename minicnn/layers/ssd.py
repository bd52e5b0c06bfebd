"""The SSD fork's layers (Wei Liu's caffe, branch ssd): Normalize (conv4_3's L2 norm), PriorBox
(the default boxes of a feature map) and DetectionOutput (decoding, NMS, the detections). The
math is minicnn.ops.ssd."""

import warnings

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.ops.ssd import FLT_MAX, prior_box_aspect_ratios, prior_box_sizes
from minicnn.proto.caffe_pb2 import FillerParameter


def _legacy_4d(layer, blob, what):
    """(num, channels, height, width) of a blob, Caffe's legacy accessors (missing axes are 1);
    more than 4 axes is an error, as in Caffe."""
    shape = blob.shape
    if len(shape) > 4:
        raise LayerError(f"{layer.type} reads {what} as N x C x H x W, but it has shape {shape} "
                         f"({len(shape)} axes; at most 4)")
    return tuple(shape) + (1,) * (4 - len(shape))


def _check_heads(layer, bottom, p):
    """DetectionOutput's and MultiBoxLoss's first three bottoms: loc (N x P*L*4, L = 1 with
    share_location, else num_classes), conf (N x P*num_classes) and PriorBox's 1 x 2 x P*4."""
    num, loc_c, _, _ = _legacy_4d(layer, bottom[0], "bottom[0] (loc)")
    conf_num, conf_c, _, _ = _legacy_4d(layer, bottom[1], "bottom[1] (conf)")
    _, _, prior_h, _ = _legacy_4d(layer, bottom[2], "bottom[2] (priors)")
    if num != conf_num:
        raise LayerError(f"loc has {num} items but conf has {conf_num} (shapes "
                         f"{bottom[0].shape}, {bottom[1].shape})")
    num_priors = prior_h // 4
    loc_classes = 1 if p.share_location else p.num_classes
    if bottom[2].count < 2 * num_priors * 4 or num_priors < 1:
        raise LayerError(f"the priors (shape {bottom[2].shape}) must hold P boxes and their "
                         "variances (PriorBox's 1 x 2 x P*4)")
    if num_priors * loc_classes * 4 != loc_c or bottom[0].count != num * loc_c:
        raise LayerError(f"loc has shape {bottom[0].shape}, but {num_priors} priors x "
                         f"{loc_classes} location class(es) x 4 = "
                         f"{num_priors * loc_classes * 4} values per item")
    if num_priors * p.num_classes != conf_c or bottom[1].count != num * conf_c:
        raise LayerError(f"conf has shape {bottom[1].shape}, but {num_priors} priors x "
                         f"num_classes {p.num_classes} = {num_priors * p.num_classes} "
                         f"values per item")


@register("Normalize")
class NormalizeLayer(Layer):
    """SSD's `Normalize`: y = x / sqrt(sum x^2 + eps) * scale, the sum over C*H*W per item
    (across_spatial, the default) or over C per pixel (across_spatial: false, SSD's conv4_3);
    eps (1e-10) inside the square root. The scale is blobs[0]: one value (channel_shared, the
    default) or one per channel, filled by scale_filler (default constant 1; SSD uses 20).

    Bottom: 2 to 4 axes (N x C x H x W, missing axes 1). Backward gives dx and adds dscale.
    dx is the gradient; Caffe's applies per-channel scales after its sum, which is the gradient
    only while all channels have the same scale (see minicnn.ops.ssd): the same numbers until
    training moves SSD's per-channel scales apart. Safe in place: forward keeps x / norm and
    the norm.

    happynear's face forks also call a layer "Normalize" (normalize_param, no blobs): a Net
    makes that one (minicnn.layers.face.FaceNormalizeLayer) for a Normalize layer with
    normalize_param or with no parameter block, and this one for a layer with norm_param, as
    SSD's prototxts always write it."""
    param_field = "norm_param"
    exact_num_bottom = exact_num_top = 1

    @classmethod
    def variant_for(cls, param):
        if param.HasField("norm_param"):
            return cls
        from minicnn.layers.face import FaceNormalizeLayer
        return FaceNormalizeLayer

    def layer_setup(self, bottom, top):
        p = self.param.norm_param
        self.across_spatial, self.eps = p.across_spatial, p.eps
        channels = self._check_shape(bottom[0])
        filler = p.scale_filler if p.HasField("scale_filler") else \
            FillerParameter(type="constant", value=1.0)
        self.init_param(0, () if p.channel_shared else (channels,), filler, what="scale")
        self._xh = self._norm = None

    def _check_shape(self, blob):
        if len(blob.shape) < 2:
            raise LayerError(f"Normalize needs a bottom with at least 2 axes (N x C ...), got "
                             f"shape {blob.shape}")
        return _legacy_4d(self, blob, "its bottom")[1]

    def reshape(self, bottom, top):
        channels = self._check_shape(bottom[0])
        scale = self.blobs[0]
        if scale.count != (1 if self.param.norm_param.channel_shared else channels):
            raise LayerError(f"norm_param.channel_shared is "
                             f"{str(self.param.norm_param.channel_shared).lower()} but the scale "
                             f"has shape {scale.shape} for a bottom of shape {bottom[0].shape} "
                             f"({channels} channels)")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        y, xh, norm = ops.normalize_forward(bottom[0].data, self.blobs[0].data,
                                            across_spatial=self.across_spatial, eps=self.eps)
        # kept for backward (top may be bottom); a net that runs no backward keeps nothing
        self._xh, self._norm = (xh, norm) if self.backward_needed else (None, None)
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not (propagate_down[0] or self.param_propagate_down[0]):
            return
        if self._xh is None and not (propagate_down[0] or self.backward_needed):
            return      # no loss above it (minicnn time runs every layer's backward anyway)
        if self._xh is None:
            raise LayerError("backward after a forward that kept nothing for it: the net said "
                             "this layer needs no backward")
        dx, dscale = ops.normalize_backward(top[0].diff, self._xh, self._norm,
                                            self.blobs[0].data,
                                            across_spatial=self.across_spatial)
        if self.param_propagate_down[0]:
            self.blobs[0].diff += dscale                                   # params accumulate
        if propagate_down[0]:
            bottom[0].diff[...] = dx                                       # bottoms assigned


@register("PriorBox")
class PriorBoxLayer(Layer):
    """SSD's `PriorBox`: the default boxes of the feature map bottom[0] (only its H x W is
    read) over the image bottom[1] (its H x W, unless img_size or img_h/img_w are given). Top:
    1 x 2 x (H*W*num_priors*4), the boxes' (xmin, ymin, xmax, ymax) relative to the image, then
    their variances (variance: one value, or four; default 0.1).

    Per location (centre (w + offset) * step_w, (h + offset) * step_h; step defaults to image /
    feature size), per min_size: a min_size square, a sqrt(min_size * max_size) square with
    max_size, then min_size * sqrt(r) x min_size / sqrt(r) per aspect ratio r != 1 (each new
    ratio, and 1/r with flip). As in the fork, min_size and max_size are truncated to integers
    (OpenCV keeps fractions). clip limits the coordinates to [0, 1]. Backward leaves zero diffs:
    the boxes do not depend on the bottoms' values."""
    param_field = "prior_box_param"
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.prior_box_param
        if not p.min_size:
            raise LayerError("prior_box_param.min_size must be given (at least one)")
        if any(s <= 0 for s in p.min_size):
            raise LayerError(f"prior_box_param.min_size must be positive, got {list(p.min_size)}")
        if p.max_size:
            if len(p.max_size) != len(p.min_size):
                raise LayerError(f"prior_box_param has {len(p.max_size)} max_size for "
                                 f"{len(p.min_size)} min_size; give one per min_size or none")
            for lo, hi in zip(p.min_size, p.max_size):
                if not hi > lo:
                    raise LayerError(f"prior_box_param.max_size {hi:g} must be greater than its "
                                     f"min_size {lo:g}")
        if len(p.variance) not in (0, 1, 4):
            raise LayerError(f"prior_box_param.variance takes 1 or 4 values, got "
                             f"{len(p.variance)}")
        if any(v <= 0 for v in p.variance):
            raise LayerError(f"prior_box_param.variance must be positive, got {list(p.variance)}")
        self.variance = list(p.variance) or [0.1]
        self.img_h, self.img_w = self._pair(p, "img_size", "img_h", "img_w")
        self.step_h, self.step_w = self._pair(p, "step", "step_h", "step_w")
        self.aspect_ratios = prior_box_aspect_ratios(p.aspect_ratio, p.flip)
        self.sizes = prior_box_sizes(p.min_size, p.max_size, self.aspect_ratios)
        if not self.sizes.min() > 0:
            raise LayerError(f"prior_box_param.min_size {list(p.min_size)} truncates to 0 (the "
                             "SSD fork keeps sizes in integers)")

    @staticmethod
    def _pair(p, both, h, w):
        """(h, w) from `both` or from h and w (not both kinds); (0, 0) when none is given."""
        if p.HasField(h) or p.HasField(w):
            if p.HasField(both):
                raise LayerError(f"give prior_box_param.{both} or {h}/{w}, not both")
            for name in (h, w):
                if not getattr(p, name) > 0:
                    raise LayerError(f"prior_box_param.{name} must be positive (give both {h} "
                                     f"and {w}), got {getattr(p, name):g}")
            return getattr(p, h), getattr(p, w)
        if p.HasField(both):
            if not getattr(p, both) > 0:
                raise LayerError(f"prior_box_param.{both} must be positive, got "
                                 f"{getattr(p, both):g}")
            return getattr(p, both), getattr(p, both)
        return 0, 0

    def reshape(self, bottom, top):
        _, _, self.layer_h, self.layer_w = _legacy_4d(self, bottom[0], "bottom[0] (the feature "
                                                      "map)")
        _, _, image_h, image_w = _legacy_4d(self, bottom[1], "bottom[1] (the image)")
        self.image_hw = (self.img_h, self.img_w) if self.img_h else (image_h, image_w)
        top[0].reshape((1, 2, self.layer_h * self.layer_w * len(self.sizes) * 4))

    def forward(self, bottom, top):
        p = self.param.prior_box_param
        top[0].data[...] = ops.prior_box_forward(
            self.layer_h, self.layer_w, *self.image_hw, sizes=self.sizes,
            variance=self.variance, step_h=self.step_h, step_w=self.step_w, offset=p.offset,
            clip=p.clip, dtype=top[0].dtype)

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0


@register("DetectionOutput")
class DetectionOutputLayer(Layer):
    """SSD's `DetectionOutput` (inference only): bottoms loc (N x P*4, or P*num_classes*4
    without share_location), conf (N x P*num_classes, probabilities: the net's Softmax) and the
    priors (PriorBox's 1 x 2 x P*4). Each prediction is decoded against its prior (code_type
    CORNER, CENTER_SIZE or CORNER_SIZE, scaled by the prior's variances unless
    variance_encoded_in_target); per image and class other than background_label_id, scores
    above confidence_threshold (unset: all) go through NMS (nms_param: nms_threshold 0.3, top_k
    candidates, eta < 1 lowers the threshold after each kept box while it is above 0.5); then
    the keep_top_k best of the image over all classes (-1: all).

    Top: 1 x 1 x K x 7, one row [image, label, score, xmin, ymin, xmax, ymax] per detection
    (boxes relative to the image, not clipped unless `clip: true`, OpenCV's own field, which
    clips each decoded box to [0, 1] before NMS, as OpenCV does), by image, then label, then
    score. With no
    detection in the whole batch, the fork writes one row [i, -1, -1, -1, -1, -1, -1] per
    image; an image without detections in a batch that has some gets no row. Computed in float,
    as the fork does, in float64 nets too; among equal scores keep_top_k keeps the earlier class
    and box (the fork's unstable sort leaves that open). save_output_param and visualize only
    write files or show windows in Caffe: minicnn ignores them. No backward."""
    param_field = "detection_output_param"
    exact_num_bottom = 3
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.detection_output_param
        for field, does, on in (
                ("save_output_param", "writes the detections to files",
                 p.save_output_param.output_directory != ""),   # the fork's need_save_
                ("visualize", "shows them in an OpenCV window", p.visualize)):
            if on:
                warnings.warn(f"layer '{self.name}' (DetectionOutput) ignores "
                              f"detection_output_param.{field}: SSD's fork {does}; minicnn only "
                              "computes them (its top; `minicnn detect` draws and saves)",
                              stacklevel=2)
        if not p.HasField("num_classes"):
            raise LayerError("detection_output_param.num_classes must be given")
        if p.num_classes < 1:
            raise LayerError(f"detection_output_param.num_classes must be at least 1, got "
                             f"{p.num_classes}")
        nms = p.nms_param
        if not nms.nms_threshold >= 0:
            raise LayerError(f"nms_param.nms_threshold must be non-negative, got "
                             f"{nms.nms_threshold:g}")
        if not 0 < nms.eta <= 1:
            raise LayerError(f"nms_param.eta must be in (0, 1], got {nms.eta:g}")
        self.settings = dict(
            num_classes=p.num_classes, share_location=p.share_location,
            background_label_id=p.background_label_id, code_type=p.code_type,
            variance_encoded_in_target=p.variance_encoded_in_target,
            confidence_threshold=p.confidence_threshold if p.HasField("confidence_threshold")
            else -FLT_MAX,
            nms_threshold=nms.nms_threshold, top_k=nms.top_k if nms.HasField("top_k") else -1,
            eta=nms.eta, keep_top_k=p.keep_top_k, clip=p.clip)

    def reshape(self, bottom, top):
        _check_heads(self, bottom, self.param.detection_output_param)
        top[0].reshape((1, 1, 1, 7))          # the real count is known after forward

    def forward(self, bottom, top):
        out = ops.detection_output_forward(bottom[0].data, bottom[1].data, bottom[2].data,
                                           **self.settings)
        top[0].reshape(out.shape)
        top[0].data[...] = out

    def allow_force_backward(self, bottom_index):
        return False


@register("MultiBoxLoss")
class MultiBoxLossLayer(Layer):
    """SSD's `MultiBoxLoss`, the loss SSD trains with. Bottoms: loc (N x P*4, or P*num_classes*4
    without share_location), conf (N x P*num_classes, raw scores), the priors (PriorBox's
    1 x 2 x P*4) and the ground truth (1 x 1 x G x 8 rows [item_id, label, instance, xmin,
    ymin, xmax, ymax, difficult] as AnnotatedData writes them; item_id -1 rows hold no box).
    Top: the loss, a scalar.

    Per image, the priors (use_prior_for_matching, the default) or the predictions decoded
    against them are matched to the ground truth (match_type BIPARTITE, or PER_PREDICTION:
    bipartite, then every box with IoU >= overlap_threshold to its best gt; ignore_cross_boundary
    _bbox leaves boxes crossing the border out; difficult boxes count unless use_difficult_gt is
    false). Negatives are mined (mining_type NONE: every prior enters the confidence loss;
    MAX_NEGATIVE, the default: the neg_pos_ratio * positives unmatched priors with IoU below
    neg_overlap and the highest confidence loss; HARD_EXAMPLE: the sample_size examples of
    highest loc + conf loss, positives included; nms_param suppresses overlapping candidates
    first, by nms_threshold, keeping at most its top_k, which the fork reads as 0, so none,
    when unset; do_neg_mining is the legacy switch and must agree with mining_type). Then

        loss = loc_weight * sum loc_loss(loc - encode(gt)) / n + sum conf_loss / n

    with loc_loss smooth L1 (SMOOTH_L1, threshold 1) or half the square (L2) over the matched
    priors, the targets coded as the fork's EncodeBBox (code_type CORNER, CENTER_SIZE,
    CORNER_SIZE; divided by the variances unless encode_variance_in_target, in which case the
    prediction and target are both divided by them after coding, as the fork does), conf_loss
    softmax cross-entropy (SOFTMAX, label: the gt's, or background_label_id for a negative;
    map_object_to_agnostic makes every object background_label_id + 1) or sigmoid cross-entropy
    over every class (LOGISTIC; targets start at the value background_label_id, as the fork
    fills them, with 1 at the gt's class, or at the background for a mined negative). n is
    loss_param's normalization (VALID, the default: the number of matches; FULL: N*P;
    BATCH_SIZE: N; NONE: 1; the legacy normalize true/false: VALID/BATCH_SIZE), at least 1.
    As in the fork, a part enters the loss only where the layer's propagate_down lets it
    (none given means true, true, false, false).

    Backward gives the gradient to loc and conf for this forward's matches and negatives (the
    matching and mining are not differentiated, as in the fork); a diff asked for the priors or
    the labels is an error, as in the fork, so SSD's prototxts say propagate_down: true, true,
    false, false. Ties among equal losses in the mining keep the lower prior index (the fork's
    std::sort leaves them open). Where minicnn deliberately differs: the loc predictions enter
    the loss in the net's dtype (the fork rounds them through float, the same numbers in a
    float net); with encode_variance_in_target the loc gradient includes the 1 / variance of the
    division (the fork leaves it out); for LOGISTIC without mining each image's targets sit at
    its own priors (the fork steps its target pointer by P, not P*num_classes, per image, which
    misplaces them after the first image); each forward matches afresh (the fork keeps
    appending matches when no backward clears them). The mining's confidence losses are the
    fork's ComputeConfLoss (its GPU version computes the same). A GPU net runs the layer on host
    copies of its blobs."""
    param_field = "multibox_loss_param"
    exact_num_bottom = 4
    exact_num_top = 1
    is_loss = True
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.multibox_loss_param
        if not p.HasField("num_classes"):
            raise LayerError("multibox_loss_param.num_classes must be given")
        if p.num_classes < 1:
            raise LayerError(f"multibox_loss_param.num_classes must be at least 1, got "
                             f"{p.num_classes}")
        bg = p.background_label_id
        mining = p.mining_type
        if p.HasField("do_neg_mining") and p.do_neg_mining != (mining != "NONE"):
            raise LayerError(f"multibox_loss_param.do_neg_mining "
                             f"{str(p.do_neg_mining).lower()} contradicts mining_type "
                             f"{mining} (do_neg_mining is deprecated: give mining_type only)")
        if mining != "NONE" and not p.share_location:
            raise LayerError(f"mining_type {mining} needs share_location: true (the SSD fork "
                             "mines negatives with shared locations only)")
        if mining != "NONE" and bg >= p.num_classes:
            raise LayerError(f"background_label_id {bg} must be below num_classes "
                             f"{p.num_classes} for mining_type {mining}")
        if p.conf_loss_type == "SOFTMAX" and bg >= p.num_classes:
            raise LayerError(f"background_label_id {bg} must be within [0, num_classes "
                             f"{p.num_classes}) for conf_loss_type SOFTMAX")
        if mining == "HARD_EXAMPLE" and p.sample_size <= 0:
            raise LayerError(f"multibox_loss_param.sample_size must be positive for "
                             f"HARD_EXAMPLE mining, got {p.sample_size}")
        if p.map_object_to_agnostic and p.num_classes != 2:
            raise LayerError(f"map_object_to_agnostic needs num_classes 2 (background and "
                             f"object), got {p.num_classes}")
        if not p.overlap_threshold >= 0 or not p.neg_overlap >= 0:
            raise LayerError("multibox_loss_param.overlap_threshold and neg_overlap must be "
                             "non-negative")
        if not p.neg_pos_ratio >= 0:
            raise LayerError(f"multibox_loss_param.neg_pos_ratio must be non-negative, got "
                             f"{p.neg_pos_ratio:g}")
        lp = self.param.loss_param
        normalization = lp.normalization if lp.HasField("normalization") else (
            ("VALID" if lp.normalize else "BATCH_SIZE") if lp.HasField("normalize") else "VALID")
        down = list(self.param.propagate_down) or [True, True, False, False]
        self.settings = {
            "num_classes": p.num_classes, "share_location": p.share_location,
            "match_type": p.match_type, "overlap_threshold": p.overlap_threshold,
            "use_prior_for_matching": p.use_prior_for_matching, "background_label_id": bg,
            "use_difficult_gt": p.use_difficult_gt, "mining_type": mining,
            "neg_pos_ratio": p.neg_pos_ratio, "neg_overlap": p.neg_overlap,
            "code_type": p.code_type, "encode_variance_in_target": p.encode_variance_in_target,
            "map_object_to_agnostic": p.map_object_to_agnostic,
            "ignore_cross_boundary_bbox": p.ignore_cross_boundary_bbox,
            "bp_inside": p.bp_inside,
            "nms": ((p.nms_param.nms_threshold, p.nms_param.top_k)
                    if p.HasField("nms_param") else None),
            "sample_size": p.sample_size, "use_prior_for_nms": p.use_prior_for_nms,
            "loc_loss_type": p.loc_loss_type, "conf_loss_type": p.conf_loss_type,
            "loc_weight": p.loc_weight, "normalization": normalization,
            "loc_term": bool(down[0]), "conf_term": bool(down[1]) if len(down) > 1 else True}
        self._grads = None

    def reshape(self, bottom, top):
        _check_heads(self, bottom, self.param.multibox_loss_param)
        if bottom[3].count % 8:
            raise LayerError(f"the ground truth (shape {bottom[3].shape}) must be rows of 8 "
                             "(item_id, label, instance, xmin, ymin, xmax, ymax, difficult)")
        top[0].reshape(())

    def forward(self, bottom, top):
        try:
            loss, dloc, dconf, self.info = ops.multibox_loss_forward(
                bottom[0].data, bottom[1].data, bottom[2].data, bottom[3].data,
                **self.settings)
        except ValueError as e:
            raise LayerError(f"MultiBoxLoss: {e}") from None
        self._grads = (dloc, dconf)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        for k, what in ((2, "prior"), (3, "label")):
            if propagate_down[k]:
                raise LayerError(f"MultiBoxLoss cannot backpropagate to its {what} input "
                                 f"(bottom {k}); give propagate_down: true, true, false, false "
                                 "as SSD's prototxts do")
        if not (propagate_down[0] or propagate_down[1]):
            return
        if self._grads is None:
            raise LayerError("MultiBoxLoss: backward before a forward")
        scale = top[0].diff.reshape(-1)[0]
        for k in (0, 1):
            if propagate_down[k]:
                bottom[k].diff[...] = self._grads[k] * scale

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2
