"""Writes the YOLOv1 nets of models/yolo (run from the repository root):

    python models/yolo/make_nets.py                  # rewrites the committed prototxts
    python models/yolo/make_nets.py --out /tmp/nets --head fc --widths 16,32,64,128,256,32:1

The committed prototxts are this script's output; nothing needs it at run time.

  tiny_yolov1_train_val.prototxt / tiny_yolov1_deploy.prototxt
      Darknet's original tiny YOLOv1 ("Fast YOLO", yolo-tiny.cfg, 9 convolutions): 448 x 448
      input; 3x3 convolutions of 16, 32, 64, 128, 256, 512 filters, each followed by a 2x2/2
      max pooling (7 x 7 left), then three 3x3 convolutions of 1024; leaky ReLU (0.1) after
      every convolution; fully connected 256 (linear), 4096 (leaky), dropout 0.5, and the
      detection output, S = 7, B = 2, here for the 10 digit classes (980 values).
  digits_train_val.prototxt / digits_deploy.prototxt
      the CPU-sized detector for data/detection_digits (see README.md): 112 x 112 input, 3x3
      convolutions of 16, 32, 64, 128 filters each followed by a 2x2/2 max pooling (7 x 7 left),
      two of 256, batch normalization after all but the first (as Darknet's yolov1-tiny.cfg),
      leaky ReLU; the output is a 1x1 convolution predicting each cell's 10 + 2 + 8 values,
      rearranged into Darknet's layout (Slice, Permute, Flatten, Concat) for the same Detection
      loss. --head fc gives YOLOv1's fully connected output instead (measured in README.md).

Train/val nets read the DetectionData lists written by `minicnn data detection-digits` (paths
relative to the repository root); deploy nets end in a one-bottom Detection layer, which tells
`minicnn detect` how to decode the output.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from generate import Writer  # noqa: E402  (models/generate.py)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "data/detection_digits"

DETECTION = ("object_scale: 1 noobject_scale: 0.5 class_scale: 1 coord_scale: 5 "
             "rescore: true sqrt: true")


class Net(Writer):
    """models/generate.py's prototxt writer (layer(..., include=phase)) and this folder's
    building blocks."""

    def conv(self, name, bottom, num_output, kernel=3, stride=1, bn=False):
        body = ["param { lr_mult: 1 decay_mult: 1 }"]
        if not bn:
            body.append("param { lr_mult: 2 decay_mult: 0 }")
        body += ["convolution_param {", f"  num_output: {num_output}",
                 f"  kernel_size: {kernel}"]
        body += [f"  pad: {kernel // 2}"] if kernel > 1 else []
        body += [f"  stride: {stride}"] if stride != 1 else []
        body += ["  bias_term: false"] if bn else []
        body += ['  weight_filler { type: "msra" }', "}"]
        top = self.layer(name, "Convolution", [bottom], [name], "\n".join(body))
        if bn:
            self.layer(f"{name}_bn", "BatchNorm", [top], [top],
                       "param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }\n"
                       "batch_norm_param { moving_average_fraction: 0.99 }")
            self.layer(f"{name}_scale", "Scale", [top], [top],
                       "param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 1 decay_mult: 0 }\n"
                       "scale_param { bias_term: true }")
        self.leaky(f"{name}_leaky", top)
        return top

    def leaky(self, name, blob):
        return self.layer(name, "ReLU", [blob], [blob], "relu_param { negative_slope: 0.1 }")

    def pool(self, name, bottom):
        return self.layer(name, "Pooling", [bottom], [name],
                          "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")

    def fc(self, name, bottom, num_output, filler='type: "msra"', lr_mult=1):
        return self.layer(name, "InnerProduct", [bottom], [name], f"""
param {{ lr_mult: {lr_mult:g} decay_mult: 1 }}
param {{ lr_mult: {2 * lr_mult:g} decay_mult: 0 }}
inner_product_param {{
  num_output: {num_output}
  weight_filler {{ {filler} }}
  bias_filler {{ type: "constant" value: 0 }}
}}""")

    def save(self, path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")


def data_layers(net, size, batch, test_batch, jitter, flip=False, data=DATA):
    for phase, source, b in (("TRAIN", "train", batch), ("TEST", "val", test_batch)):
        aug = f"jitter: {jitter} flip: {'true' if flip else 'false'} shuffle: true" \
            if phase == "TRAIN" else ""
        net.layer(f"data_{source}", "DetectionData", [], ["data", "boxes"], f"""
transform_param {{ scale: 0.00392156862745098 }}
detection_data_param {{
  source: "{data}/{source}.txt"
  batch_size: {b}
  new_height: {size}
  new_width: {size}
  max_boxes: 8
  {aug}
}}""", include=phase)


def body(net, widths, pools, bn, head, side, classes, num=2, fc_lr=1, conv_head=False,
         bn_first=True):
    x = "data"
    for i, (width, pool) in enumerate(zip(widths, pools), 1):
        width, _, kernel = str(width).partition(":")           # "32:1": 32 filters, 1x1
        x = net.conv(f"conv{i}", x, int(width), int(kernel or 3), bn=bn and (i > 1 or bn_first))
        if pool:
            x = net.pool(f"pool{i}", x)
    for k, (kind, n) in enumerate(head, 1):
        x = net.fc(f"fc{k}", x, n, lr_mult=fc_lr)
        if kind == "leaky":
            net.leaky(f"fc{k}_leaky", x)
        elif kind == "dropout":
            net.leaky(f"fc{k}_leaky", x)
            net.layer(f"fc{k}_drop", "Dropout", [x], [x], "dropout_param { dropout_ratio: 0.5 }")
    if conv_head:
        return conv_to_darknet(net, x, classes, num)
    out = side * side * (classes + num * 5)
    return net.fc("detection_out", x, out, 'type: "gaussian" std: 0.001', fc_lr)


def conv_to_darknet(net, x, classes, num):
    """A 1x1 convolution predicting every cell's C + B + 4B values, rearranged into Darknet's
    planar layout: Slice by kind, Permute N x K x S x S -> N x S x S x K (cell-major, so the
    index is cell*K + k), Flatten, Concat (classes, confidences, boxes)."""
    k = classes + num * 5
    x = net.layer("detection_conv", "Convolution", [x], ["detection_conv"], f"""
param {{ lr_mult: 1 decay_mult: 1 }}
param {{ lr_mult: 2 decay_mult: 0 }}
convolution_param {{
  num_output: {k}
  kernel_size: 1
  weight_filler {{ type: "gaussian" std: 0.01 }}
}}""")
    parts = ["det_class", "det_conf", "det_box"]
    net.layer("det_slice", "Slice", [x], parts,
              f"slice_param {{ axis: 1 slice_point: {classes} slice_point: {classes + num} }}")
    flat = []
    for part in parts:
        net.layer(f"{part}_perm", "Permute", [part], [f"{part}_perm"],
                  "permute_param { order: 0 order: 2 order: 3 order: 1 }")
        flat.append(net.layer(f"{part}_flat", "Flatten", [f"{part}_perm"], [f"{part}_flat"]))
    return net.layer("detection_out", "Concat", flat, ["detection_out"],
                     "concat_param { axis: 1 }")


def write(name, out_dir, size, widths, pools, bn, head, side, classes, batch, test_batch,
          jitter, fc_lr=1, conv_head=False, bn_first=True, flip=False):
    det = f"side: {side} num: 2 classes: {classes} coords: 4 {DETECTION}"
    train = Net(name)
    data_layers(train, size, batch, test_batch, jitter, flip)
    x = body(train, widths, pools, bn, head, side, classes, fc_lr=fc_lr, conv_head=conv_head,
             bn_first=bn_first)
    train.layer("loss", "Detection", [x, "boxes"], ["loss", "stats"],
                f"detection_param {{ {det} }}")
    train.save(os.path.join(out_dir, f"{name}_train_val.prototxt"))
    deploy = Net(name)
    deploy.layer("data", "Input", [], ["data"],
                 f"input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }}")
    x = body(deploy, widths, pools, bn, head, side, classes, fc_lr=fc_lr, conv_head=conv_head,
             bn_first=bn_first)
    deploy.layer("detection", "Detection", [x], ["detection"], f"detection_param {{ {det} }}")
    deploy.save(os.path.join(out_dir, f"{name}_deploy.prototxt"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--name", default="digits", help="file name prefix of the CPU-sized net")
    ap.add_argument("--input", type=int, default=112, help="input width and height (112)")
    ap.add_argument("--widths", default="16,32,64,128,256,256",
                    help='filters of the 3x3 convolutions; "32:1" is a 1x1 one of 32')
    ap.add_argument("--pools", default="1,1,1,1,0,0", help="1: a 2x2/2 max pooling follows")
    ap.add_argument("--head", choices=["conv", "fc"], default="conv",
                    help="conv: a 1x1 convolution predicts each cell, rearranged into Darknet's "
                         "layout (default); fc: YOLOv1's fully connected output")
    ap.add_argument("--hidden", default="", help="fc head: hidden fully connected layers, e.g. "
                                                 "linear:256,dropout:4096")
    ap.add_argument("--fc-lr", type=float, default=1, help="lr_mult of fully connected layers")
    ap.add_argument("--no-bn", action="store_true", help="no batch normalization")
    ap.add_argument("--bn-first", action="store_true",
                    help="batch norm after the first convolution too (off: it costs a fifth "
                         "of an iteration at 112 x 112)")
    ap.add_argument("--flip", action="store_true", help="random left-right flips (off: a "
                                                        "mirrored digit is not a digit)")
    ap.add_argument("--side", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--test-batch", type=int, default=50)
    ap.add_argument("--jitter", type=float, default=0.2)
    ap.add_argument("--no-tiny", action="store_true", help="do not write the tiny YOLOv1 nets")
    args = ap.parse_args(argv)
    hidden = [(h.split(":")[0], int(h.split(":")[1])) for h in args.hidden.split(",") if h]
    write(args.name, args.out, args.input, args.widths.split(","),
          [int(p) for p in args.pools.split(",")], not args.no_bn, hidden, args.side, 10,
          args.batch, args.test_batch, args.jitter, args.fc_lr, args.head == "conv",
          args.bn_first, args.flip)
    if not args.no_tiny:
        write("tiny_yolov1", args.out, 448, [16, 32, 64, 128, 256, 512, 1024, 1024, 1024],
              [1, 1, 1, 1, 1, 1, 0, 0, 0], False, [("linear", 256), ("dropout", 4096)], 7, 10,
              64, 10, 0.2, flip=args.flip)


if __name__ == "__main__":
    main()
