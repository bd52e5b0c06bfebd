"""FocalLoss: the softmax form of zimenglan-sysu-512/Focal-Loss (the most copied of the Caffe
forks' "FocalLoss" layers, which otherwise differ: sigmoid forms, per-class alphas, happynear's
1 + p_t), and the sigmoid form of sciencefans/Focal-Loss, told apart by the labels' count; and
Longqi-S/Focal-Loss's SoftmaxWithFocalLoss. The math is minicnn.ops.focal_loss."""

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import register
from minicnn.layers.loss import SoftmaxWithLossLayer, _check_label_values


@register("FocalLoss")
class FocalLossLayer(SoftmaxWithLossLayer):
    """zimenglan-sysu-512/Focal-Loss's `FocalLoss` (Lin et al. 2017), on a softmax:
    loss = -sum alpha (1 - p_t)^gamma log(p_t) / D over the positions not labelled
    ignore_label, p = softmax(bottom[0]) along softmax_param.axis (default 1), p_t the
    labelled class's probability, log's argument clamped at FLT_MIN as Caffe's softmax loss.

    bottom[0]: scores; bottom[1]: one label per position, as SoftmaxWithLoss's. top[0]: the
    loss, shape (); an optional top[1]: the probabilities. focal_loss_param: alpha (default
    0.25, one weight for every class, > 0), gamma (default 2, >= 0). loss_param: ignore_label,
    normalization (VALID by default, FULL, BATCH_SIZE, NONE) or the deprecated normalize
    (true: VALID, false: BATCH_SIZE), as the fork. Backward as the fork: the gradient, but for
    its clamps (1 - p_t at 1e-10 in a division; 1 / p_t unclamped).

    As the fork, focal_loss_param.type (ORIGIN, LINEAR) and beta are read but not used: LINEAR
    computes ORIGIN's loss. ONEADDP (happynear's caffe-windows copy, (1 + p_t)^gamma with
    alpha in place of 1) is not this fork's and is refused. The fork's number for
    focal_loss_param is 124, BVLC's sigmoid_param: minicnn writes 9124 (text prototxts name
    the field, so only minicnn-written binary files see it).

    sciencefans/Focal-Loss (mirrored as liuyuisanai/Focal-Loss; in CaffeMex_v2) registers a
    sigmoid form under the same type name, with the same focal_loss_param { alpha gamma } (its
    numbers differ: alpha 1, gamma 2, at LayerParameter 10632; text names them). Its labels are
    one target per score (bottom[1].count == bottom[0].count), where the softmax form has one
    per position (count / C): a FocalLoss layer whose label count equals its score count is that
    form (with one class, C == 1, the softmax form's loss would be 0 everywhere). See
    minicnn.ops.focal_loss: per element, alpha_t (1 - p_t)^gamma times sigmoid cross-entropy,
    alpha on targets 1 and 1 - alpha on the others (the fork's last version), over loss_param's
    normalizer, which is BATCH_SIZE when neither normalization nor normalize is given (as the
    fork; FULL and VALID without an ignore_label count every element). minicnn follows the
    fork's GPU code: its CPU code computes plain sigmoid cross-entropy (its README: "I didn't
    implement CPU version"). Backward is the gradient. One top only (the GPU code writes no
    second); focal_loss_param.type and beta are zimenglan's and refused with this form."""
    param_field = "focal_loss_param"          # bottoms, tops, shapes: SoftmaxWithLoss's
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.focal_loss_param
        self.sigmoid = bottom[1].count == bottom[0].count
        if self.sigmoid:
            self._sigmoid_setup(bottom, top)
            return
        if p.type == "ONEADDP":
            raise LayerError(f"FocalLoss layer '{self.name}': focal_loss_param.type ONEADDP is "
                             "happynear's variant ((1 + p_t)^gamma), which minicnn does not "
                             "implement; minicnn's FocalLoss is zimenglan-sysu-512's (ORIGIN)")
        if not p.gamma >= 0:
            raise LayerError(f"FocalLoss layer '{self.name}': focal_loss_param.gamma must be "
                             f">= 0, got {p.gamma}")
        if not p.alpha > 0:
            raise LayerError(f"FocalLoss layer '{self.name}': focal_loss_param.alpha must be "
                             f"> 0, got {p.alpha}")
        self.alpha, self.gamma = float(p.alpha), float(p.gamma)
        super().layer_setup(bottom, top)             # ignore_label, normalization

    def _sigmoid_setup(self, bottom, top):
        p = self.param.focal_loss_param
        for field in ("type", "beta"):
            if p.HasField(field):
                raise LayerError(
                    f"FocalLoss layer '{self.name}': its labels (shape {bottom[1].shape}) are one "
                    f"per score (shape {bottom[0].shape}), sciencefans's sigmoid form, which has "
                    f"no focal_loss_param.{field} (zimenglan-sysu-512's softmax form has, with "
                    "one label per position)")
        if len(top) > 1:
            raise LayerError(f"FocalLoss layer '{self.name}': the sigmoid form (labels one per "
                             f"score, shape {bottom[1].shape}) has one top, got {len(top)}")
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = "VALID" if lp.normalize else "BATCH_SIZE"
        else:
            self.normalization = "BATCH_SIZE"                # the fork's default, not VALID
        self.alpha, self.gamma = float(p.alpha), float(p.gamma)

    def reshape(self, bottom, top):
        if not self.sigmoid:
            if bottom[1].count == bottom[0].count:
                raise LayerError(f"FocalLoss layer '{self.name}' was set up as the softmax form "
                                 f"(one label per position) but now has as many labels (shape "
                                 f"{bottom[1].shape}) as scores (shape {bottom[0].shape})")
            return super().reshape(bottom, top)
        if bottom[1].count != bottom[0].count:
            raise LayerError(f"FocalLoss layer '{self.name}' (sigmoid form): the targets (shape "
                             f"{bottom[1].shape}) must have as many values as the scores "
                             f"(shape {bottom[0].shape})")
        top[0].reshape(())

    def _sigmoid_kw(self):
        return {"alpha": self.alpha, "gamma": self.gamma, "ignore_label": self.ignore_label,
                "normalization": self.normalization}

    def _kw(self):
        return {"axis": self.axis, "alpha": self.alpha, "gamma": self.gamma,
                "ignore_label": self.ignore_label, "normalization": self.normalization}

    def forward(self, bottom, top):
        scores, labels = bottom
        if self.sigmoid:
            top[0].data[...] = ops.sigmoid_focal_loss_forward(scores.data, labels.data,
                                                              **self._sigmoid_kw())
            return
        _check_label_values(self, labels.data, self.num_classes, self.ignore_label)
        loss, self.prob = ops.focal_loss_forward(scores.data, labels.data, **self._kw())
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("FocalLoss cannot backpropagate to labels (bottom 1); set "
                             "propagate_down: false for them")
        if propagate_down[0] and self.sigmoid:
            bottom[0].diff[...] = ops.sigmoid_focal_loss_backward(
                bottom[0].data, bottom[1].data, loss_weight=top[0].diff,
                **self._sigmoid_kw()).reshape(bottom[0].shape)
        elif propagate_down[0]:
            bottom[0].diff[...] = ops.focal_loss_backward(
                self.prob, bottom[1].data, loss_weight=top[0].diff, **self._kw())


@register("SoftmaxWithFocalLoss")
class SoftmaxWithFocalLossLayer(SoftmaxWithLossLayer):
    """Longqi-S/Focal-Loss's `SoftmaxWithFocalLoss` (its README's layer; the code as copied in
    chenbinghui1/Hybrid-Attention-based-Decoupled-Metric-Learning, which reads the README's
    softmax_focal_loss_param): loss = sum alpha (1 - p_t)^gamma (-log p_t) / D over the
    positions not labelled ignore_label, p = softmax(bottom[0]) along softmax_param.axis, p_t
    the labelled class's probability clamped at FLT_MIN. softmax_focal_loss_param: alpha
    (default 0.25), gamma (default 2). Bottoms, tops (top[1]: the probabilities) and loss_param
    (ignore_label, normalization VALID by default, the deprecated normalize) as SoftmaxWithLoss.

    Backward as the fork (minicnn.ops.focal_loss), which is not the gradient: its non-target
    term has (1 - p_c)^(gamma - 1) where the gradient has (1 - p_t)^(gamma - 1), and it finds
    the target class by label == c * inner + j, right only for N x C scores (inner 1). Both
    kept: the fork trained with them. The gradient for gamma 0 or 1 on N x C scores.

    Not followed: for a position labelled ignore_label the fork still subtracts 1 at
    [label] before zeroing the position, a write outside the position (outside the blob for a
    label such as -1 or 255) that changes a neighbour's diff or memory; minicnn leaves ignored
    positions out. The fork's LayerParameter number, 157, is free in BVLC's and is used."""
    param_field = "softmax_focal_loss_param"
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.softmax_focal_loss_param
        self.alpha, self.gamma = float(p.alpha), float(p.gamma)
        super().layer_setup(bottom, top)

    def _kw(self):
        return {"axis": self.axis, "alpha": self.alpha, "gamma": self.gamma,
                "ignore_label": self.ignore_label, "normalization": self.normalization}

    def forward(self, bottom, top):
        scores, labels = bottom
        _check_label_values(self, labels.data, self.num_classes, self.ignore_label)
        loss, self.prob = ops.softmax_focal_loss_forward(scores.data, labels.data, **self._kw())
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise LayerError("SoftmaxWithFocalLoss cannot backpropagate to labels (bottom 1); "
                             "set propagate_down: false for them")
        if propagate_down[0]:
            bottom[0].diff[...] = ops.softmax_focal_loss_backward(
                self.prob, bottom[1].data, loss_weight=top[0].diff, **self._kw())
