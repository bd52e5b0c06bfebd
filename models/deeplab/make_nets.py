"""Writes the DeepLabv3+-style nets of models/deeplab (run from the repository root):

    python models/deeplab/make_nets.py          # rewrites the committed prototxts

The committed prototxts are this script's output; nothing needs it at run time.

A DeepLabv3+ (Chen et al. 2018) sized for CPU training on data/segmentation_digits
(`minicnn data segmentation-digits`: 97 x 97 images, 13 classes), output stride 8:

  encoder  conv 3x3/2 (32) - conv 3x3 (32) - sep 64 /2 - sep 64 [low-level features, stride 4]
           - conv 3x3/2 (128) - conv 3x3 rate 2 (128) - conv 3x3 rate 2 (128)
           - conv 3x3 rate 4 (128)                                              [stride 8]
  ASPP     1x1 conv; three 3x3 atrous branches at rates 2, 4, 6 (DeepLab's 6, 12, 18 at stride
           16 on 513 x 513 inputs scaled to our 9..13-pixel maps); image pooling (global
           average pooling, 1x1 conv, upsampled by Interp to the map's size); concatenated and
           fused by a 1x1 conv (64)
  decoder  ASPP output upsampled by Interp to the low-level map's size, concatenated with the
           low-level features reduced by a 1x1 conv (24), two sep 64, a 1x1 classifier, and
           Interp to the input's size

"conv" is a full 3x3 convolution (dilation = rate), "sep N" an atrous depthwise-separable
convolution: a 3x3 depthwise convolution (ConvolutionDepthwise, dilation = rate, pad = rate, so
the size is kept at stride 1) and a 1x1 pointwise convolution to N channels; every convolution is
followed by BatchNorm + Scale + ReLU (so none has a bias). The stride-8 part of the encoder uses
full 3x3 convolutions (as DeepLabv3+'s ResNet backbone does; its Xception backbone is separable
throughout): telling ten digits apart takes more than the separable stack could learn here (see
README.md). Interp (the fork's corner-aligned bilinear resize) upsamples exactly for inputs of
8k + 1 pixels, where the stride-2 grids keep the corners (97 -> 49 -> 25 -> 13).

Loss: SoftmaxWithLoss over every labelled pixel, plus (TRAIN only, loss_weight DIGIT_WEIGHT) a
second SoftmaxWithLoss over the digit pixels only, built from Caffe's own layers (Threshold,
Eltwise, Power turn the label into "the label where it is 1..10, else 255 = ignored"): digits
are 3.5% of the pixels, and with both losses normalised by their own pixel counts a digit pixel
weighs about 1 + 0.25 / 0.035 = 8 times a background pixel (README.md: 0.5, 15 times,
over-predicted the strokes).

Variants (the ablation of README.md; same encoder and layer names where the layers agree):
  deeplab          separable ASPP + decoder (the DeepLabv3+ design)
  deeplab_nodec    separable ASPP, no decoder: 1x1 classifier on the ASPP output, Interp x8
  deeplab_plain    plain atrous ASPP (full 3x3 convolutions at rates 2, 4, 6) + decoder

Files per variant: <v>_train_test.prototxt (SegmentationData: TRAIN random 65 x 65 crops of
images rescaled by 0.75..1.25, batches of 8, no mirroring (a mirrored digit is not that digit);
TEST whole 97 x 97 images, batch 10),
<v>_solver.prototxt, <v>_deploy.prototxt (Input 1 x 3 x 97 x 97; any size works, 8k + 1 aligns
best; ends in Softmax "prob").
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from generate import Writer  # noqa: E402  (models/generate.py)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "data/segmentation_digits"
CLASSES = 13
RATES = (2, 4, 6)
MEAN, SCALE = 127.5, 0.0078125          # pixels to about [-1, 1]
VARIANTS = {"deeplab": dict(separable=True, decoder=True),
            "deeplab_nodec": dict(separable=True, decoder=False),
            "deeplab_plain": dict(separable=False, decoder=True)}


class Net(Writer):
    """models/generate.py's prototxt writer (layer(..., include=phase)) and this folder's
    building blocks."""

    def text(self):
        return "\n".join(self.lines) + "\n"


def save(text, path):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def bn_relu(net, x):
    net.layer(f"{x}_bn", "BatchNorm", [x], [x],
              "param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }\n"
              "param { lr_mult: 0 decay_mult: 0 }\n"
              "batch_norm_param { moving_average_fraction: 0.99 }")
    net.layer(f"{x}_scale", "Scale", [x], [x],
              "param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 1 decay_mult: 0 }\n"
              "scale_param { bias_term: true }")
    return net.layer(f"{x}_relu", "ReLU", [x], [x])


def conv(net, name, x, num_output, kernel=1, stride=1, rate=1, bn=True, depthwise=False):
    """A convolution (no bias when BN follows), with BN + Scale + ReLU unless bn is False."""
    fields = [f"num_output: {num_output}"] if not depthwise else []
    fields += [f"kernel_size: {kernel}"]
    fields += [f"pad: {rate * (kernel // 2)}"] if kernel > 1 else []
    fields += [f"stride: {stride}"] if stride != 1 else []
    fields += [f"dilation: {rate}"] if rate != 1 else []
    fields += ["bias_term: false"] if bn else []
    fields += ['weight_filler { type: "msra" }']
    params = "param { lr_mult: 1 decay_mult: 1 }" + \
        ("" if bn else "\nparam { lr_mult: 2 decay_mult: 0 }")
    net.layer(name, "ConvolutionDepthwise" if depthwise else "Convolution", [x], [name],
              params + "\nconvolution_param {\n  " + "\n  ".join(fields) + "\n}")
    return bn_relu(net, name) if bn else name


def sep(net, name, x, num_output, stride=1, rate=1):
    """Atrous depthwise-separable convolution: 3x3 depthwise (dilation rate), 1x1 pointwise."""
    x = conv(net, f"{name}_dw", x, None, 3, stride, rate, depthwise=True)
    return conv(net, f"{name}_pw", x, num_output)


# (name, output channels, stride, rate); "low" marks the low-level features of the decoder
ENCODER = (("conv1", 32, 2, 1), ("conv2", 32, 1, 1, "conv"), ("block2", 64, 2, 1),
           ("block3", 64, 1, 1, "low"), ("conv4", 128, 2, 1, "conv"),
           ("conv5", 128, 1, 2, "conv"), ("conv6", 128, 1, 2, "conv"),
           ("conv7", 128, 1, 4, "conv"))
DIGIT_WEIGHT = 0.25


def encoder(net, x, spec=ENCODER):
    low = None
    for name, width, stride, rate, *flags in spec:
        if name == "conv1" or "conv" in flags:
            x = conv(net, name, x, width, 3, stride=stride, rate=rate)
        else:
            x = sep(net, name, x, width, stride=stride, rate=rate)
        if "low" in flags:
            low = x
    return x, low


def aspp(net, x, separable, width=64):
    branches = [conv(net, "aspp_1x1", x, width)]
    for rate in RATES:
        name = f"aspp_rate{rate}"
        branches.append(sep(net, name, x, width, rate=rate) if separable
                        else conv(net, name, x, width, 3, rate=rate))
    pooled = net.layer("aspp_pool", "Pooling", [x], ["aspp_pool"],
                       "pooling_param { pool: AVE global_pooling: true }")
    pooled = conv(net, "aspp_pool_conv", pooled, width, bn=False)
    net.layer("aspp_pool_relu", "ReLU", [pooled], [pooled])
    branches.append(net.layer("aspp_pool_up", "Interp", [pooled, x], ["aspp_pool_up"]))
    cat = net.layer("aspp_concat", "Concat", branches, ["aspp_concat"])
    return conv(net, "aspp_fuse", cat, width)


def head(net, data, separable, decoder, spec=ENCODER, aspp_width=64):
    x, low = encoder(net, data, spec)
    x = aspp(net, x, separable, aspp_width)
    if decoder:
        up = net.layer("decoder_up", "Interp", [x, low], ["decoder_up"])
        low = conv(net, "decoder_low", low, 24)
        x = net.layer("decoder_concat", "Concat", [up, low], ["decoder_concat"])
        x = sep(net, "decoder1", x, 64)
        x = sep(net, "decoder2", x, 64)
    score = conv(net, "score", x, CLASSES, bn=False)
    return net.layer("score_up", "Interp", [score, data], ["score_up"])


def data_layers(net, batch=8, test_batch=10, crop=65):
    transform = f"transform_param {{ scale: {SCALE} mean_value: {MEAN} }}"
    net.layer("data_train", "SegmentationData", [], ["data", "label"], f"""
{transform}
segmentation_data_param {{
  source: "{DATA}/train.txt"
  batch_size: {batch}
  shuffle: true
  crop_size: {crop}
  scale_min: 0.75
  scale_max: 1.25
}}""", include="TRAIN")
    net.layer("data_test", "SegmentationData", [], ["data", "label"], f"""
{transform}
segmentation_data_param {{
  source: "{DATA}/val.txt"
  batch_size: {test_batch}
}}""", include="TEST")


def digit_loss(net, out, weight):
    """A second SoftmaxWithLoss over the digit pixels only (class balancing with Caffe's own
    layers): label_digits = the label where it is a digit (1..10), 255 (ignored) elsewhere."""
    net.layer("label_gt0", "Threshold", ["label"], ["label_gt0"],
              "threshold_param { threshold: 0.5 }", include="TRAIN")
    net.layer("label_gt10", "Threshold", ["label"], ["label_gt10"],
              "threshold_param { threshold: 10.5 }", include="TRAIN")
    net.layer("label_is_digit", "Eltwise", ["label_gt0", "label_gt10"], ["label_is_digit"],
              "eltwise_param { operation: SUM coeff: 1 coeff: -1 }", include="TRAIN")
    net.layer("label_minus255", "Power", ["label"], ["label_minus255"],
              "power_param { shift: -255 }", include="TRAIN")
    net.layer("label_digits0", "Eltwise", ["label_is_digit", "label_minus255"],
              ["label_digits0"], "eltwise_param { operation: PROD }", include="TRAIN")
    net.layer("label_digits", "Power", ["label_digits0"], ["label_digits"],
              "power_param { shift: 255 }", include="TRAIN")
    net.layer("loss_digits", "SoftmaxWithLoss", [out, "label_digits"], ["loss_digits"],
              f"loss_weight: {weight:g}\nloss_param {{ ignore_label: 255 }}", include="TRAIN")


def train_test(name, separable, decoder, spec=ENCODER, aspp_width=64, batch=8, crop=65,
               digit_weight=DIGIT_WEIGHT):
    net = Net(name)
    data_layers(net, batch=batch, crop=crop)
    out = head(net, "data", separable, decoder, spec, aspp_width)
    net.layer("loss", "SoftmaxWithLoss", [out, "label"], ["loss"],
              "loss_param { ignore_label: 255 }")
    if digit_weight:
        digit_loss(net, out, digit_weight)
    net.layer("accuracy", "Accuracy", [out, "label"], ["accuracy"],
              "accuracy_param { ignore_label: 255 }", include="TEST")
    return net.text()


def deploy(name, separable, decoder, spec=ENCODER, aspp_width=64, size=97):
    net = Net(name)
    net.layer("data", "Input", [], ["data"],
              f"input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }}")
    out = head(net, "data", separable, decoder, spec, aspp_width)
    net.layer("prob", "Softmax", [out], ["prob"])
    return net.text()


def solver(name, max_iter=60000):
    return f"""# {name}: {max_iter} iterations of 8 random 65 x 65 crops ({max_iter * 8 // 2000} epochs of the
# 2,000 training images); "poly" learning rate as DeepLab; validation on the 200 val images
net: "models/deeplab/{name}_train_test.prototxt"
test_iter: 20
test_interval: 4000
test_initialization: false
base_lr: 0.05
lr_policy: "poly"
power: 0.9
momentum: 0.9
weight_decay: 0.0001
display: 100
max_iter: {max_iter}
snapshot: {min(max_iter, 12000)}
snapshot_prefix: "snapshots/{name}"
random_seed: 1
"""


def parse_spec(text):
    """"conv1:24:2:1,block1:32:1:1,...,block3:48:1:1:low,..." -> an ENCODER-like tuple."""
    out = []
    for item in text.split(","):
        name, width, stride, rate, *mark = item.split(":")
        out.append((name, int(width), int(stride), int(rate), *mark))
    return tuple(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--encoder", type=parse_spec, default=ENCODER,
                    help="name:width:stride:rate[:low],... (default: the committed nets')")
    ap.add_argument("--aspp-width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=65)
    ap.add_argument("--max-iter", type=int, default=60000)
    ap.add_argument("--digit-weight", type=float, default=DIGIT_WEIGHT)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name, v in VARIANTS.items():
        save(train_test(name, **v, spec=args.encoder, aspp_width=args.aspp_width,
                        batch=args.batch, crop=args.crop, digit_weight=args.digit_weight),
             os.path.join(args.out, f"{name}_train_test.prototxt"))
        save(deploy(name, **v, spec=args.encoder, aspp_width=args.aspp_width),
             os.path.join(args.out, f"{name}_deploy.prototxt"))
        save(solver(name, args.max_iter), os.path.join(args.out, f"{name}_solver.prototxt"))


if __name__ == "__main__":
    main()
