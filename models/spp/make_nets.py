"""Writes the SPP-net nets of models/spp (run from the repository root):

    python models/spp/make_nets.py           # rewrites the committed prototxts

The committed prototxts are this script's output; nothing needs it at run time.

One net, trained two ways on data/canvas_digits (`minicnn data canvas-digits`: MNIST digits on
gray canvases of 24..48 x 24..48 pixels):

  conv1 5x5x32 - ReLU - pool 2/2 - conv2 3x3x64 - ReLU - pool 2/2 - conv3 3x3x64 - ReLU
  - SPP (SPP-net's pyramid, bins 1, 2, 3, 6: 50 bins x 64 channels = 3200 values for any input
  of at least 24 x 24) - fc 256 - ReLU - dropout 0.5 - fc 10

  spp_variable_*   each image at its own size: ImageData without resizing, bucket_by_size
                   batches of 16 (one size per batch) in TRAIN, batch 1 in TEST
  spp_fixed_*      every image warped to 32 x 32 (ImageData new_height/new_width), the usual
                   fixed-size pipeline, batches of 16 (TEST: 100)
  spp_deploy       the net on an Input blob (1 x 1 x 32 x 32 declared; any size >= 24 works)

The layer names are the same in every file, so either net's weights load into any of them.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from generate import Writer  # noqa: E402  (models/generate.py)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "data/canvas_digits"
BINS = (1, 2, 3, 6)
SCALE = 0.00390625


class Net(Writer):
    """models/generate.py's prototxt writer (layer(..., include=phase)) and this folder's
    building blocks."""

    def save(self, path):
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(self.lines) + "\n")
        os.replace(path + ".tmp", path)


def conv(net, name, bottom, num_output, kernel):
    net.layer(name, "Convolution", [bottom], [name], f"""
param {{ lr_mult: 1 decay_mult: 1 }}
param {{ lr_mult: 2 decay_mult: 0 }}
convolution_param {{
  num_output: {num_output}
  kernel_size: {kernel}
  pad: {kernel // 2}
  weight_filler {{ type: "msra" }}
  bias_filler {{ type: "constant" value: 0 }}
}}""")
    return net.layer(f"{name}_relu", "ReLU", [name], [name])


def fc(net, name, bottom, num_output):
    return net.layer(name, "InnerProduct", [bottom], [name], f"""
param {{ lr_mult: 1 decay_mult: 1 }}
param {{ lr_mult: 2 decay_mult: 0 }}
inner_product_param {{
  num_output: {num_output}
  weight_filler {{ type: "msra" }}
  bias_filler {{ type: "constant" value: 0 }}
}}""")


def body(net, x="data"):
    x = conv(net, "conv1", x, 32, 5)
    x = net.layer("pool1", "Pooling", [x], ["pool1"],
                  "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
    x = conv(net, "conv2", x, 64, 3)
    x = net.layer("pool2", "Pooling", [x], ["pool2"],
                  "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
    x = conv(net, "conv3", x, 64, 3)
    bins = " ".join(f"bins: {b}" for b in BINS)
    x = net.layer("spp", "SPP", [x], ["spp"], f"spp_param {{ pool: MAX {bins} }}")
    x = fc(net, "fc1", x, 256)
    net.layer("fc1_relu", "ReLU", [x], [x])
    net.layer("fc1_drop", "Dropout", [x], [x], "dropout_param { dropout_ratio: 0.5 }")
    return fc(net, "fc2", x, 10)


def data_layer(net, phase, source, batch, size=None, bucket=False, shuffle=False):
    resize = f"\n  new_height: {size}\n  new_width: {size}" if size else ""
    extra = ("\n  bucket_by_size: true" if bucket else "") + ("\n  shuffle: true" if shuffle
                                                               else "")
    net.layer(f"data_{phase.lower()}", "ImageData", [], ["data", "label"], f"""
transform_param {{ scale: {SCALE} }}
image_data_param {{
  source: "{DATA}/{source}.txt"
  batch_size: {batch}
  is_color: false{resize}{extra}
}}""", include=phase)


def train_test(name, fixed_size=None):
    net = Net(name)
    if fixed_size:
        data_layer(net, "TRAIN", "train", 16, fixed_size, shuffle=True)
        data_layer(net, "TEST", "test", 100, fixed_size)
    else:
        data_layer(net, "TRAIN", "train", 16, bucket=True, shuffle=True)
        data_layer(net, "TEST", "test", 1)
    x = body(net)
    net.layer("loss", "SoftmaxWithLoss", [x, "label"], ["loss"])
    net.layer("accuracy", "Accuracy", [x, "label"], ["accuracy"], include="TEST")
    return net


def solver(name, test_iter):
    return f"""# {name}: 3,000 iterations of 16 images = 12 epochs of the 4,000 training digits
net: "models/spp/{name}_train_test.prototxt"
test_iter: {test_iter}
test_interval: 1000
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.1
stepsize: 2000
display: 100
max_iter: 3000
snapshot: 3000
snapshot_prefix: "snapshots/{name}"
random_seed: 1
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train_test("spp_variable").save(os.path.join(args.out, "spp_variable_train_test.prototxt"))
    train_test("spp_fixed", 32).save(os.path.join(args.out, "spp_fixed_train_test.prototxt"))
    for name, test_iter in (("spp_variable", 1000), ("spp_fixed", 10)):
        path = os.path.join(args.out, f"{name}_solver.prototxt")
        with open(path + ".tmp", "w") as f:
            f.write(solver(name, test_iter))
        os.replace(path + ".tmp", path)
    deploy = Net("spp_deploy")
    deploy.layer("data", "Input", [], ["data"],
                 "input_param { shape { dim: 1 dim: 1 dim: 32 dim: 32 } }")
    x = body(deploy)
    deploy.layer("prob", "Softmax", [x], ["prob"])
    deploy.save(os.path.join(args.out, "spp_deploy.prototxt"))


if __name__ == "__main__":
    main()
