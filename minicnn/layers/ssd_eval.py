"""The SSD fork's DetectionEvaluate: the rows its solver turns into mAP (eval_type: "detection").
The math is minicnn.ops.ssd_eval."""

from minicnn import ops
from minicnn.data.db import resolve_path
from minicnn.errors import LayerError, MinicnnError
from minicnn.layer import Layer, register
from minicnn.ops.ssd_eval import read_name_size_file


@register("DetectionEvaluate")
class DetectionEvaluateLayer(Layer):
    """SSD's `DetectionEvaluate` (test nets): bottoms DetectionOutput's detections (1 x 1 x D x
    7: image, label, score, xmin, ymin, xmax, ymax) and the ground truth (1 x 1 x G x 8: image,
    label, instance, xmin, ymin, xmax, ymax, difficult, as AnnotatedData writes it). Top: 1 x 1
    x (num_classes - 1 + D) x 5, first [-1, label, positives, -1, -1] for each class but
    background_label_id, then [image, label, score, tp, fp] for each detection row: greedy
    matching by score at IoU >= overlap_threshold (default 0.5), each ground truth box matched
    once; without evaluate_difficult_gt (default true) difficult boxes are not counted and a
    detection on one gets tp = fp = 0. Rows past the detections (DetectionOutput's rows with
    image -1) stay zero, as in the fork. The solver's test (eval_type: "detection") sums these
    rows over test_iter batches into mAP (minicnn.ops.ssd_eval).

    name_size_file ("name height width" per test image, in the data's order) makes the
    comparison in pixels of each original image (+1 pixel sizes, the VOC devkit's), after
    undoing resize_param; the images are counted as the fork does (see minicnn.ops.ssd_eval).
    Computed in float32, as the fork's NormalizedBBox. No backward (the fork has none)."""
    param_field = "detection_evaluate_param"
    exact_num_bottom = 2
    exact_num_top = 1
    host_only = True

    def layer_setup(self, bottom, top):
        p = self.param.detection_evaluate_param
        if not p.HasField("num_classes"):
            raise LayerError("detection_evaluate_param.num_classes must be given")
        if p.background_label_id >= p.num_classes:
            raise LayerError(f"detection_evaluate_param.background_label_id "
                             f"{p.background_label_id} must be below num_classes "
                             f"{p.num_classes}")
        if not p.overlap_threshold > 0:
            raise LayerError(f"detection_evaluate_param.overlap_threshold must be positive, got "
                             f"{p.overlap_threshold:g}")
        self.sizes, self.count = [], 0
        if p.HasField("name_size_file"):
            try:
                path = resolve_path(p.name_size_file, self.source_dir, what="name_size_file")
                self.sizes = read_name_size_file(path)
            except (MinicnnError, OSError) as e:
                raise LayerError(f"detection_evaluate_param.name_size_file: {e}") from None
            if not self.sizes:
                raise LayerError(f"detection_evaluate_param.name_size_file {p.name_size_file} "
                                 "has no 'name height width' line")
        resize = None
        if p.HasField("resize_param"):
            r = p.resize_param
            resize = dict(resize_mode=r.resize_mode, height=r.height, width=r.width,
                          height_scale=r.height_scale, width_scale=r.width_scale)
            if r.resize_mode == "FIT_LARGE_SIZE_AND_PAD" and not (r.height > 0 and r.width > 0):
                raise LayerError("resize_param.height and width must be positive for "
                                 "FIT_LARGE_SIZE_AND_PAD")
        self.settings = dict(num_classes=p.num_classes, background_label_id=p.background_label_id,
                             overlap_threshold=p.overlap_threshold,
                             evaluate_difficult_gt=p.evaluate_difficult_gt, resize=resize)

    def reshape(self, bottom, top):
        for blob, width, what in ((bottom[0], 7, "detections"), (bottom[1], 8, "ground truth")):
            shape = tuple(blob.shape) + (1,) * (4 - len(blob.shape))
            if len(blob.shape) > 4 or shape[0] != 1 or shape[1] != 1 or shape[3] != width:
                raise LayerError(f"DetectionEvaluate reads the {what} as 1 x 1 x N x {width}, "
                                 f"got shape {tuple(blob.shape)}")
        det_rows = tuple(bottom[0].shape)[2] if len(bottom[0].shape) > 2 else 1
        classes = self.settings["num_classes"] - 1
        top[0].reshape((1, 1, classes + det_rows, 5))

    def forward(self, bottom, top):
        try:
            rows, self.count = ops.detection_evaluate_forward(
                bottom[0].data, bottom[1].data, sizes=self.sizes, count=self.count,
                **self.settings)
        except MinicnnError as e:
            raise LayerError(str(e)) from None
        top[0].data[...] = rows.reshape(top[0].shape)

    def allow_force_backward(self, bottom_index):
        return False
