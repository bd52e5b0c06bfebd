"""YOLO's detection layers: YOLOv1's Detection loss (Darknet's [detection] layer), YOLOv2's Region
and YOLOv3's Yolo heads (with box lists, their training losses), and DetectionData, which reads
images with Darknet label files and augments them with their boxes."""

import os

import numpy as np

from minicnn import cuda, ops
from minicnn.data.datum import read_image
from minicnn.data.db import root_joined
from minicnn.data.detection import (
    DarknetV2Draws,
    augment,
    darknet_letterbox,
    darknet_v2_augment,
    label_path,
    pad_boxes,
    read_labels,
)
from minicnn.data.errors import DataError, need
from minicnn.data.transform import (
    DEEPLAB_SEG_ONLY,
    SSD_ANNOTATED_ONLY,
    SSD_TRANSFORMER,
    refuse_transform,
    transform_sample,
)
from minicnn.errors import LayerError
from minicnn.layer import Layer, register
from minicnn.layers.data import _SourceDataLayer
from minicnn.ops.detection import detection_layout, detection_truth
from minicnn.ops.yolo_losses import REGION_MAX_BOXES, darknet_truth


def detection_settings(p):
    """The checked detection_param as keyword arguments of the detection ops."""
    for name in ("side", "num", "classes"):
        if getattr(p, name) < 1:
            raise LayerError(f"detection_param.{name} must be at least 1, got "
                             f"{getattr(p, name)}")
    if p.coords != 4:
        raise LayerError(f"detection_param.coords must be 4 (x, y, w, h), got {p.coords}")
    if p.softmax:
        raise LayerError("detection_param.softmax: true is not supported (YOLOv1 predicts class "
                         "probabilities without a softmax; Darknet's v1 cfgs say softmax=0)")
    return dict(side=p.side, num=p.num, classes=p.classes, coords=p.coords, sqrt=p.sqrt,
                rescore=p.rescore, object_scale=p.object_scale,
                noobject_scale=p.noobject_scale, class_scale=p.class_scale,
                coord_scale=p.coord_scale)


@register("Detection")
class DetectionLayer(Layer):
    """Darknet's YOLOv1 [detection] layer.

    bottom[0]: predictions, N x D with D = side^2 * (classes + num * 5) values per item in
    Darknet's layout (all class probabilities, then all confidences, then all boxes; see
    minicnn.ops.detection), e.g. an InnerProduct's output. With a second bottom, the box lists
    (N, K, 5) of rows (class, x, y, w, h), relative to the image, padding rows with class -1
    (what DetectionData writes), the layer is a loss: top[0] is
    sum(scale * (target - x)^2) / (2N) and an optional top[1] holds Darknet's training figures
    [avg IoU, Pos Cat, All Cat, Pos Obj, Any Obj, count]. With one bottom (a deploy net) top[0]
    is the predictions as N x D, and the layer tells ``minicnn.detect`` how to decode them.
    detection_param: side, num, classes, coords (4), sqrt, rescore, object_scale,
    noobject_scale, class_scale, coord_scale (defaults: YOLOv1's 7, 2, 20, 4, true, true, 1, 0.5,
    1, 5); softmax must stay false."""
    param_field = "detection_param"
    min_num_bottom, max_num_bottom = 1, 2
    index_bottom = 1
    min_num_top, max_num_top = 1, 2

    def layer_setup(self, bottom, top):
        self.settings = detection_settings(self.param.detection_param)
        self.is_loss = len(bottom) == 2
        if not self.is_loss and len(top) > 1:
            raise LayerError("Detection without labels (a deploy net) has one top, the "
                             "predictions; the statistics top needs the labels as bottom 1")
        self.delta = None

    @property
    def size(self):
        s = self.settings
        return detection_layout(s["side"], s["num"], s["classes"], s["coords"])[0]

    def reshape(self, bottom, top):
        x = bottom[0]
        d = self.size
        if len(x.shape) < 2 or x.count != x.shape[0] * d:
            s = self.settings
            raise LayerError(f"the predictions (shape {x.shape}) must hold side^2 * (classes + "
                             f"num * 5) = {s['side']}^2 * ({s['classes']} + {s['num']} * 5) = "
                             f"{d} values per item")
        if self.is_loss:
            labels = bottom[1]
            if not labels.shape or labels.shape[0] != x.shape[0] or \
                    (labels.count // max(labels.shape[0], 1)) % 5:
                raise LayerError(f"the box lists (shape {labels.shape}) must be (N, K, 5) rows "
                                 f"(class, x, y, w, h) for the N = {x.shape[0]} predictions")
            top[0].reshape(())
            if len(top) > 1:
                top[1].reshape((6,))
        else:
            top[0].reshape((x.shape[0], d))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(bottom[0].shape[0], -1)
        if not self.is_loss:
            top[0].data[...] = x
            return
        s = self.settings
        labels = cuda.to_host(bottom[1].data).reshape(x.shape[0], -1, 5)   # truth on the host
        truth = detection_truth(labels, s["side"], s["classes"], s["coords"], dtype=x.dtype)
        loss, self.delta, stats = ops.detection_loss_forward(x, truth, **s)
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = stats

    def backward(self, top, propagate_down, bottom):
        if not self.is_loss:
            if propagate_down[0]:
                bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)
            return
        if propagate_down[1]:
            raise LayerError("Detection cannot backpropagate to the box lists (bottom 1); set "
                             "propagate_down: false for them")
        if propagate_down[0]:
            grad = ops.detection_loss_backward(self.delta, top[0].diff)
            bottom[0].diff[...] = grad.reshape(bottom[0].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


class _YoloHead(Layer):
    """What Region and Yolo share: bottom 0 a convolution's N x A*E x H x W output. With one
    bottom the top has its shape and holds it activated (minicnn.ops.yolo_heads); with a second
    bottom, the box lists (N, K, 5) of rows (class, x, y, w, h) relative to the image, padding
    rows with class -1 (what DetectionData writes), the layer is Darknet's training loss
    (minicnn.ops.yolo_losses): top[0] the loss, an optional top[1] Darknet's printed figures."""
    min_num_bottom, max_num_bottom = 1, 2
    index_bottom = 1
    min_num_top, max_num_top = 1, 2
    host_only = True                    # a few elementwise maps on the net's last blob
    figures = 6
    backward_reads_data = ("top",)

    def head(self):
        """(anchors in this head, keyword arguments of the yolo_head ops)."""
        raise NotImplementedError

    def loss_settings(self):
        """(the loss op, its keyword arguments, the truths kept per image)."""
        raise NotImplementedError

    def layer_setup(self, bottom, top):
        self.anchors, self.settings = self.head()
        if self.settings["classes"] < 1:
            raise LayerError(f"{self.type} layer '{self.name}': classes must be at least 1")
        self.is_loss = len(bottom) == 2
        if not self.is_loss and len(top) > 1:
            raise LayerError(f"{self.type} layer '{self.name}' without labels (a deploy net) has "
                             "one top; the figures top needs the box lists as bottom 1")
        if self.is_loss:
            self.loss_op, self.loss_kwargs, self.max_boxes = self.loss_settings()
        self.grad = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        e = ops.yolo_heads.head_entries(self.settings["coords"], self.settings["classes"])
        if len(shape) != 4 or shape[1] != self.anchors * e:
            raise LayerError(f"{self.type} layer '{self.name}' takes N x {self.anchors * e} x H x "
                             f"W ({self.anchors} anchors x ({self.settings['coords']} coords + 1 "
                             f"+ {self.settings['classes']} classes)), got shape {shape}")
        if not self.is_loss:
            top[0].reshape(shape)
            return
        labels = bottom[1].shape
        if len(labels) != 3 or labels[0] != shape[0] or labels[2] != 5:
            raise LayerError(f"{self.type} layer '{self.name}': the box lists (shape {labels}) "
                             f"must be (N, K, 5) rows (class, x, y, w, h) for the N = {shape[0]} "
                             "predictions")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.figures,))

    def forward(self, bottom, top):
        if not self.is_loss:
            top[0].data[...] = ops.yolo_head_forward(bottom[0].data, anchors=self.anchors,
                                                     **self.settings)
            return
        x = cuda.to_host(bottom[0].data)
        labels = cuda.to_host(bottom[1].data)
        truths = darknet_truth(labels, self.max_boxes, self.settings["classes"],
                               class_only=self.settings.get("tree") is not None)
        loss, self.grad, _, figures = self.loss_op(x, truths, **self.loss_kwargs)
        top[0].data[...] = loss
        if len(top) > 1:
            top[1].data[...] = figures

    def backward(self, top, propagate_down, bottom):
        if not self.is_loss:
            if propagate_down[0]:
                bottom[0].diff[...] = ops.yolo_head_backward(top[0].diff, top[0].data,
                                                             anchors=self.anchors,
                                                             **self.settings)
            return
        if propagate_down[1]:
            raise LayerError(f"{self.type} layer '{self.name}' cannot backpropagate to the box "
                             "lists (bottom 1); set propagate_down: false for them")
        if propagate_down[0]:
            bottom[0].diff[...] = self.grad * self.grad.dtype.type(float(top[0].diff))

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register("Region")
class RegionLayer(_YoloHead):
    """YOLOv2's output layer, Darknet's [region]. At test time (one bottom): per anchor,
    logistic on x, y and the objectness, and a softmax over the classes (softmax: true) or a
    logistic on each; w, h pass unchanged. Top: the bottom's shape, N x num*(coords + 1 +
    classes) x H x W, in Darknet's layout (minicnn.ops.yolo_heads); ``minicnn.detect`` decodes
    it with the anchors (pairs of width, height in cells; Darknet's 0.5 each when none are
    given). Backward: the chain rule through the activations.

    With a second bottom, the box lists, the layer is Darknet's training loss
    (forward_region_layer; minicnn.ops.yolo_losses has the rules and the gradient): top[0] the
    loss, an optional top[1] [Avg IOU, Class, Obj, No Obj, Avg Recall, count]. Of each image
    the first 30 boxes count (Darknet's truth holds 30), clipped to the image, those under 0.001
    wide or high dropped (Darknet's loader). The prior-matching warm-up runs while the layer
    has seen fewer than 12800 images: it counts the images of each loss forward (Darknet adds
    the batch before the forward), starting from region_param.seen (the .weights header's count,
    which ``minicnn convert darknet`` copies); a solver's snapshot keeps the count (Layer.counters)
    and a resumed run continues it.

    region_param: classes (20), coords (4), num (1, anchors per place), softmax (false),
    background (false: with it, no objectness and a softmax over classes + 1 starting at entry
    coords), anchors; for the loss: object_scale, noobject_scale, class_scale, coord_scale (1
    each), thresh (.5), rescore, bias_match (false), absolute (read by Darknet and never used;
    kept for the round trip), seen (0). The loss needs coords 4 and no background (Darknet's
    background delta is no gradient of any loss).

    YOLO9000 (Darknet's tree= and map=): tree_parent, each class's parent in the softmax tree
    (-1 at the top; minicnn.ops.softmax_tree): the classes then get one softmax per group of
    siblings (Darknet's GPU path; Debian's CPU build computes NaN there, see
    minicnn.ops.yolo_heads), and ``minicnn.detect`` decodes them down the tree (hier_thresh);
    class_map, the truth class -> output class map of the loss (Darknet's map=)."""
    param_field = "region_param"
    counters = ("images_seen",)         # the 12800-image warm-up

    def head(self):
        p = self.param.region_param
        if p.num < 1 or p.coords < 4:
            raise LayerError(f"Region layer '{self.name}': region_param needs num >= 1 and "
                             f"coords >= 4, got num {p.num}, coords {p.coords}")
        if len(p.anchors) not in (0, 2 * p.num):
            raise LayerError(f"Region layer '{self.name}': {len(p.anchors)} anchors values for "
                             f"num {p.num}: give a width and a height per anchor "
                             f"({2 * p.num} values), or none")
        tree = None
        if len(p.tree_parent):
            from minicnn.ops.softmax_tree import SoftmaxTree
            try:
                tree = SoftmaxTree(p.tree_parent)
            except ValueError as e:
                raise LayerError(f"Region layer '{self.name}': region_param.tree_parent: {e}") \
                    from None
            if tree.n != p.classes or p.background:
                raise LayerError(f"Region layer '{self.name}': a softmax tree needs one node per "
                                 f"class and no background, got {tree.n} nodes for classes "
                                 f"{p.classes}, background {str(p.background).lower()}")
        if len(p.class_map) and not all(0 <= c < p.classes for c in p.class_map):
            raise LayerError(f"Region layer '{self.name}': region_param.class_map names classes "
                             f"outside 0..{p.classes - 1}")
        return p.num, dict(coords=p.coords, classes=p.classes, softmax=p.softmax,
                           background=p.background, tree=tree)

    def loss_settings(self):
        p = self.param.region_param
        if p.coords != 4 or p.background:
            raise LayerError(f"Region layer '{self.name}': the loss (a second bottom) needs "
                             f"region_param coords 4 and background false, got coords "
                             f"{p.coords}, background {str(p.background).lower()}")
        anchors = np.asarray(list(p.anchors) or [0.5] * (2 * p.num), np.float64).reshape(-1, 2)
        if np.any(anchors <= 0):
            raise LayerError(f"Region layer '{self.name}': the loss needs positive anchors, got "
                             f"{list(p.anchors)}")
        self.images_seen = int(p.seen)
        kwargs = dict(anchors=anchors, classes=p.classes, softmax=p.softmax,
                      object_scale=p.object_scale, noobject_scale=p.noobject_scale,
                      class_scale=p.class_scale, coord_scale=p.coord_scale, thresh=p.thresh,
                      rescore=p.rescore, bias_match=p.bias_match, tree=self.settings["tree"],
                      class_map=np.asarray(p.class_map, np.int64) if len(p.class_map) else None)
        return ops.region_loss_forward, kwargs, REGION_MAX_BOXES

    def forward(self, bottom, top):
        if self.is_loss:
            self.images_seen += bottom[0].shape[0]
            self.loss_kwargs["seen"] = self.images_seen
        super().forward(bottom, top)


@register("Yolo")
class YoloLayer(_YoloHead):
    """YOLOv3's output layer, Darknet's [yolo]. At test time (one bottom): per anchor of this
    scale, logistic on x, y, the objectness and every class score; w, h pass unchanged. Top:
    the bottom's shape, N x len(mask)*(5 + classes) x H x W; ``minicnn.detect`` decodes it.
    Backward: the chain rule through the logistics.

    With a second bottom, the box lists, the layer is Darknet's training loss
    (forward_yolo_layer; minicnn.ops.yolo_losses has the rules and the gradient): top[0] the
    loss, an optional top[1] [Avg IOU, Class, Obj, No Obj, .5R, .75R, count]. Of each image
    the first max_boxes boxes count, clipped to the image, those under 0.001 wide or high
    dropped (Darknet's loader).

    yolo_param: classes (20), anchors (width, height pairs in input pixels, all scales'), mask
    (which anchors this scale predicts; all of them when empty, as Darknet); for the loss:
    ignore_thresh (.5), truth_thresh (1), max_boxes (Darknet's max, 90), and net_width,
    net_height: the net's input size in pixels (Darknet's [net] width, height), which the
    anchors are relative to (``minicnn convert darknet`` writes them). When the input is
    resized after setup (DetectionData random_size, multi-scale training), the loss takes them
    times the grid's change (W / W at setup), as Darknet's resize_network sets net.w, net.h."""
    param_field = "yolo_param"
    figures = 7

    def head(self):
        p = self.param.yolo_param
        total = len(p.anchors) // 2
        if len(p.anchors) % 2:
            raise LayerError(f"Yolo layer '{self.name}': yolo_param.anchors holds width, height "
                             f"pairs, got {len(p.anchors)} values")
        mask = list(p.mask) or list(range(max(total, 1)))
        if any(m >= max(total, 1) for m in mask) and total:
            raise LayerError(f"Yolo layer '{self.name}': mask {mask} names anchors past the "
                             f"{total} given")
        return len(mask), dict(coords=4, classes=p.classes, softmax=False, background=False)

    def loss_settings(self):
        p = self.param.yolo_param
        if not p.net_width or not p.net_height:
            raise LayerError(f"Yolo layer '{self.name}': the loss (a second bottom) needs "
                             "yolo_param net_width and net_height, the net's input size in "
                             "pixels that the anchors are relative to")
        mask = list(p.mask) or list(range(max(len(p.anchors) // 2, 1)))
        anchors = np.asarray(list(p.anchors) or [0.5] * (2 * (max(mask) + 1)),
                             np.float64).reshape(-1, 2)
        if np.any(anchors <= 0):
            raise LayerError(f"Yolo layer '{self.name}': the loss needs positive anchors, got "
                             f"{list(p.anchors)}")
        kwargs = dict(anchors=anchors, mask=mask, classes=p.classes, net_width=p.net_width,
                      net_height=p.net_height, ignore_thresh=p.ignore_thresh,
                      truth_thresh=p.truth_thresh)
        return ops.yolo_loss_forward, kwargs, p.max_boxes

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        self.setup_grid = tuple(bottom[0].shape[2:]) if len(bottom[0].shape) == 4 else None

    def forward(self, bottom, top):
        if self.is_loss and self.setup_grid and tuple(bottom[0].shape[2:]) != self.setup_grid:
            # the input was resized (multi-scale training): Darknet's resize_network sets net.w,
            # net.h to the new size, the grid times this head's stride
            p, (h0, w0), (h, w) = self.param.yolo_param, self.setup_grid, bottom[0].shape[2:]
            self.loss_kwargs.update(net_width=round(p.net_width * w / w0),
                                    net_height=round(p.net_height * h / h0))
        elif self.is_loss:
            p = self.param.yolo_param
            self.loss_kwargs.update(net_width=p.net_width, net_height=p.net_height)
        super().forward(bottom, top)


@register("DetectionData")
class DetectionDataLayer(_SourceDataLayer):
    """Images and their boxes for a Detection loss: ``source`` lists image paths (one per line;
    relative ones are found from the current folder, then beside the list), each with a Darknet
    label file (images/ -> labels/, extension -> .txt, lines ``class x y w h`` relative to the
    image). Images are decoded as BGR (gray with is_color: false; RGB with ``rgb: true``, the
    order Darknet trains in, so a net from `minicnn convert darknet` is fine-tuned on the
    channels its weights expect) and resized to new_height x new_width (required unless all
    images share a size); in TRAIN, ``jitter`` and ``flip`` apply
    Darknet's YOLOv1 augmentation (each side moves by up to jitter of the size, then resize,
    then a random left-right flip; the boxes follow and are shuffled). transform_param gives
    scale and mean_value (crop_size and mirror would not move the boxes: use jitter and flip).
    Tops: data (N, C, H, W) and boxes (N, max_boxes, 5), padding rows (-1, 0, 0, 0, 0); an image
    with more boxes keeps the first max_boxes. ``shuffle`` draws a new order every epoch.

    ``augment: DARKNET_V2`` (what ``minicnn convert darknet`` writes for [region] and [yolo]
    nets) is instead the TRAIN augmentation Darknet's YOLOv2/v3 trainer uses, data.c's
    load_data_detection in Debian's 2018 Darknet (minicnn.data.detection.darknet_v2_augment):
    the aspect ratio jittered by up to ``jitter`` of each side (the [region]/[yolo] key, which
    may reach 1 here), the image scaled so its longer side fills new_height x new_width (that
    snapshot's scale is 1: its .25..2 draw is commented out), placed at a random offset on a
    gray (0.5) canvas, distorted in HSV (hue shifted by up to ``hue``, saturation and value
    scaled by up to ``saturation`` and ``exposure`` or their inverses: Darknet's [net] keys; 0
    reads as 1, as Darknet's loader), flipped at random (``flip``), the boxes shuffled
    (randomize_boxes), moved and clipped (correct_boxes), the first max_boxes kept and of those
    the ones under 0.001 wide or high dropped. The pixels are computed in float32 like
    Darknet's and come out as Darknet's [0, 1] values times 255 (so transform_param scale:
    0.00392157 gives Darknet's input, within float rounding); is_color must stay true. The
    draws come from the layer's seeded per-batch generator, so a resumed run repeats them;
    Darknet's own C rand() stream is not reproduced. In TEST the images are Darknet's
    validate_detector's (LETTERBOX_DATA, for YOLOv2 and v3 alike): letterboxed by
    letterbox_image into new_height x new_width (aspect kept, Darknet's resize_image, a 0.5
    canvas), 0..255 as in TRAIN, and the boxes moved with them (minicnn.data.detection.
    darknet_letterbox), so DetectionEvaluate's IoUs are those Darknet's get after mapping its
    detections back onto the image.

    ``random_size: true`` (a [region]/[yolo] random=1) adds detector.c's multi-scale training:
    every 10 TRAIN batches, from the first, the images take a new square size, (r % 10 + 10) *
    32 = 320 to 608 pixels whatever new_height and new_width are (Darknet 2018 does not scale
    them to the cfg), and 608 from the batch where ``max_batches`` (the [net]'s, when given) is
    within 200; the net reshapes to each size (Darknet's resize_network), Yolo heads' net_width
    and net_height follow (see Yolo). Darknet counts solver iterations, this layer its batches:
    the same with iter_size 1."""
    param_field = "detection_data_param"
    max_num_top = 2

    def _open(self, top):
        p = self.param.detection_data_param
        if not p.source:
            raise LayerError("detection_data_param.source is required (the list of images)")
        if p.batch_size <= 0:
            raise LayerError("detection_data_param.batch_size must be positive")
        if (p.new_height > 0) != (p.new_width > 0):
            raise LayerError("detection_data_param: give both new_height and new_width, or "
                             "neither")
        if p.max_boxes <= 0:
            raise LayerError("detection_data_param.max_boxes must be positive")
        self.darknet_v2 = p.augment == "DARKNET_V2"
        if self.darknet_v2:
            self._check_darknet_v2(p)
        elif not 0 <= p.jitter < 0.5:
            raise LayerError(f"detection_data_param.jitter must be in [0, 0.5), got {p.jitter:g}")
        if p.random_size and not self.darknet_v2:
            raise LayerError("detection_data_param.random_size (Darknet's multi-scale training) "
                             "needs augment: DARKNET_V2")
        tp = self.param.transform_param
        refuse_transform(self, SSD_TRANSFORMER + SSD_ANNOTATED_ONLY + DEEPLAB_SEG_ONLY
                         + ("force_color", "force_gray"),
                         "DetectionData takes transform_param scale and mean_value only")
        if tp.crop_size or tp.mirror or tp.HasField("mean_file"):
            raise LayerError("DetectionData takes transform_param scale and mean_value only: "
                             "crop_size and mirror would not move the boxes (use "
                             "detection_data_param jitter and flip), mean_file is not supported")
        self.batch_size, self.shuffle, self.rand_skip = p.batch_size, p.shuffle, p.rand_skip
        self.prefetch = p.prefetch
        need("PIL.Image", "Pillow")                  # decode_image uses Pillow's Image module
        self.source_path = self.resolve(p.source, what="image list file")
        self.entries = self._read_list()
        self.num_samples = len(self.entries)
        self.boxes = [self._read_boxes(i) for i in range(self.num_samples)]
        self.augmenting = self.phase == "TRAIN" and (p.jitter > 0 or p.flip or self.darknet_v2)
        self.mean = np.asarray(tp.mean_value, self.dtype) if len(tp.mean_value) else None
        first = self._read(0)
        if self.mean is not None and len(self.mean) not in (1, first.shape[0]):
            raise LayerError(f"{len(self.mean)} mean_value values for images with "
                             f"{first.shape[0]} channels: give one, or one per channel")
        return [(self.batch_size, *first.shape), (self.batch_size, p.max_boxes, 5)][:len(top)]

    def _check_darknet_v2(self, p):
        if not p.new_height:
            raise LayerError("detection_data_param augment: DARKNET_V2 needs new_height and "
                             "new_width (the net's input size, Darknet's [net] height and width)")
        if not p.is_color:
            raise LayerError("detection_data_param augment: DARKNET_V2 needs is_color: true "
                             "(Darknet loads 3 channels and distorts them in HSV)")
        if not 0 <= p.jitter < 1:
            raise LayerError(f"detection_data_param.jitter must be in [0, 1) with DARKNET_V2, "
                             f"got {p.jitter:g}")
        if not 0 <= p.hue <= 1:
            raise LayerError(f"detection_data_param.hue must be in [0, 1], got {p.hue:g}")
        for name in ("saturation", "exposure"):
            if getattr(p, name) < 0:
                raise LayerError(f"detection_data_param.{name} must be >= 0 (0 means 1, as "
                                 f"Darknet's loader), got {getattr(p, name):g}")

    def input_size(self, b):
        """The (height, width) of TRAIN batch b. With random_size, detector.c's multi-scale
        training: every 10 batches (from the first) a new square size (r % 10 + 10) * 32, 320 to
        608 whatever the cfg's size, r drawn from the layer's seed and b // 10; 608 once
        max_batches (when given) is within 200 batches."""
        p = self.param.detection_data_param
        if not (p.random_size and self.augmenting):
            return p.new_height, p.new_width
        period = b // 10
        if p.max_batches and 10 * period + 200 > p.max_batches:
            return 608, 608
        dim = (int(np.random.default_rng([self.seed, period, 3]).integers(10)) + 10) * 32
        return dim, dim

    def _darknet_v2(self, i, boxes, rng, net_hw):
        """One TRAIN sample through Darknet's load_data_detection: (image, boxes), the image
        float32 in 0..255 (Darknet's [0, 1] times 255), in the layer's channel order."""
        p = self.param.detection_data_param
        raw = read_image(self._path(i), 0, 0, True)
        rgb = (raw[::-1].astype(np.float64) / 255).astype(np.float32)   # Darknet: pixel / 255.
        draws = DarknetV2Draws.draw(rng, len(boxes), p.flip)
        image, boxes = darknet_v2_augment(rgb, boxes, draws, net_hw,
                                          p.jitter, p.hue, p.saturation or 1.0,
                                          p.exposure or 1.0, p.max_boxes)
        image *= np.float32(255)
        return (image if p.rgb else image[::-1]), boxes

    def _darknet_letterbox(self, i, boxes):
        """One TEST sample as Darknet's validate_detector loads it (LETTERBOX_DATA): the image
        letterboxed, float32 in 0..255, in the layer's channel order; the boxes moved with it."""
        p = self.param.detection_data_param
        raw = read_image(self._path(i), 0, 0, True)
        rgb = (raw[::-1].astype(np.float64) / 255).astype(np.float32)
        image, boxes = darknet_letterbox(rgb, boxes, (p.new_height, p.new_width))
        image *= np.float32(255)
        return (image if p.rgb else image[::-1]), boxes

    def _read_list(self):
        try:
            with open(self.source_path, encoding="utf-8") as f:
                lines = f.readlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the image list: {e}", self.source_path) from None
        entries = [(line.strip(), n) for n, line in enumerate(lines, 1) if line.strip()]
        if not entries:
            raise DataError("the list names no images", self.source_path)
        return entries

    def _path(self, i):
        p = self.param.detection_data_param
        name, lineno = self.entries[i]
        path = root_joined(p.root_folder, name)
        try:
            return self.resolve(path, os.path.dirname(self.source_path))
        except DataError as e:
            raise DataError(f"image '{path}': {e.reason}", self.source_path, lineno) from None

    def _read_boxes(self, i):
        path = self._path(i)
        try:
            return read_labels(label_path(path))
        except DataError as e:
            raise DataError(f"{e} (for {self.entries[i][0]})", self.source_path,
                            self.entries[i][1]) from None

    def _read(self, i):
        p = self.param.detection_data_param
        try:
            return read_image(self._path(i), p.new_height, p.new_width, p.is_color)
        except DataError as e:
            raise DataError(f"image '{self.entries[i][0]}': {e.reason}", self.source_path,
                            self.entries[i][1]) from None

    def _load(self, ids, b):
        p = self.param.detection_data_param
        rng = np.random.default_rng([self.seed, b, 1])
        darknet_v2 = self.augmenting and self.darknet_v2
        net_hw = self.input_size(b) if darknet_v2 else None      # one size for the batch
        images, lists = [], []
        for i in ids:
            boxes = self.boxes[i]
            if darknet_v2:
                image, boxes = self._darknet_v2(i, boxes, rng, net_hw)
            elif self.darknet_v2:                        # TEST: Darknet's validate_detector
                image, boxes = self._darknet_letterbox(i, boxes)
            elif self.augmenting:
                raw = read_image(self._path(i), 0, 0, p.is_color)
                out_hw = (p.new_height, p.new_width) if p.new_height else None
                image, boxes = augment(raw, boxes, rng, p.jitter, p.flip, out_hw)
            else:
                image = self._read(i)
            images.append(image)
            lists.append(pad_boxes(boxes, p.max_boxes, self.dtype))
        if p.rgb and not self.darknet_v2:            # the Darknet paths make R, G, B
            images = [im[::-1] if im.shape[0] == 3 else im for im in images]   # BGR -> RGB
        shape = images[0].shape
        for i, image in zip(ids, images):
            if image.shape != shape:
                raise DataError(f"image '{self.entries[i][0]}' has shape {image.shape} but the "
                                f"first of its batch has {shape}: set new_height and new_width",
                                self.source_path, self.entries[i][1])
        scale = float(self.param.transform_param.scale)
        data = np.stack([transform_sample(im, mean=self.mean, scale=scale, dtype=self.dtype)
                         for im in images])
        return data, np.stack(lists)
