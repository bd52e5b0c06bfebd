"""Writes the generated deploy prototxts of models/: GoogLeNet, ResNet-50 and MobileNet v1.

    python models/generate.py

The nets are long and regular, so they are produced by the small builders below instead of
being written by hand; the output is what Caffe users know as bvlc_googlenet's, ResNet-50's and
shicai/MobileNet-Caffe's deploy.prototxt (layer names as in the published models, so their
weights load by name).
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


class Writer:
    def __init__(self, name):
        self.lines = [f'name: "{name}"']

    def layer(self, name, type_, bottoms, tops, body="", include=None):
        lines = ["layer {", f'  name: "{name}"', f'  type: "{type_}"']
        lines += [f'  bottom: "{b}"' for b in bottoms] + [f'  top: "{t}"' for t in tops]
        if include:
            lines.append(f"  include {{ phase: {include} }}")
        lines += ["  " + line for line in body.strip().splitlines() if line.strip()]
        self.lines += lines + ["}"]
        return tops[0] if tops else None

    def input(self, name, shape):
        dims = " ".join(f"dim: {d}" for d in shape)
        return self.layer(name, "Input", [], [name], f"input_param {{ shape {{ {dims} }} }}")

    def conv(self, name, bottom, num_output, kernel, stride=1, pad=0, bias=True,
             weight_filler='type: "xavier"', bias_value=0.2):
        body = ["param { lr_mult: 1 decay_mult: 1 }"]
        if bias:
            body.append("param { lr_mult: 2 decay_mult: 0 }")
        body += ["convolution_param {", f"  num_output: {num_output}"]
        body += [f"  pad: {pad}"] if pad else []
        body += [f"  kernel_size: {kernel}"]
        body += [f"  stride: {stride}"] if stride != 1 else []
        body += [] if bias else ["  bias_term: false"]
        body += [f"  weight_filler {{ {weight_filler} }}"]
        body += [f'  bias_filler {{ type: "constant" value: {bias_value} }}'] if bias else []
        return self.layer(name, "Convolution", [bottom], [name], "\n".join(body + ["}"]))

    def relu(self, name, blob):
        return self.layer(name, "ReLU", [blob], [blob])

    def pool(self, name, bottom, pool, kernel, stride, pad=0):
        pad_line = f" pad: {pad}" if pad else ""
        return self.layer(name, "Pooling", [bottom], [name],
                          f"pooling_param {{ pool: {pool} kernel_size: {kernel} "
                          f"stride: {stride}{pad_line} }}")

    def lrn(self, name, bottom):
        return self.layer(name, "LRN", [bottom], [name],
                          "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")

    def classifier(self, name, bottom, num_output=1000):
        return self.layer(name, "InnerProduct", [bottom], [name], f"""
param {{ lr_mult: 1 decay_mult: 1 }}
param {{ lr_mult: 2 decay_mult: 0 }}
inner_product_param {{
  num_output: {num_output}
  weight_filler {{ type: "xavier" }}
  bias_filler {{ type: "constant" value: 0 }}
}}""")

    def save(self, path):
        with open(os.path.join(HERE, path), "w") as f:
            f.write("\n".join(self.lines) + "\n")


# --- GoogLeNet (Szegedy et al. 2014), deploy net without the auxiliary classifiers ----------------

INCEPTIONS = [  # name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj
    ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128), ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
]


def googlenet():
    w = Writer("GoogleNet")
    x = w.input("data", (10, 3, 224, 224))
    x = w.conv("conv1/7x7_s2", x, 64, 7, stride=2, pad=3)
    w.relu("conv1/relu_7x7", x)
    x = w.pool("pool1/3x3_s2", x, "MAX", 3, 2)
    x = w.lrn("pool1/norm1", x)
    x = w.conv("conv2/3x3_reduce", x, 64, 1)
    w.relu("conv2/relu_3x3_reduce", x)
    x = w.conv("conv2/3x3", x, 192, 3, pad=1)
    w.relu("conv2/relu_3x3", x)
    x = w.lrn("conv2/norm2", x)
    x = w.pool("pool2/3x3_s2", x, "MAX", 3, 2)
    for name, n1, n3r, n3, n5r, n5, npool in INCEPTIONS:
        if name in ("4a", "5a"):
            x = w.pool(f"pool{name[0]}/3x3_s2", x, "MAX", 3, 2)
        p = f"inception_{name}"
        b1 = w.conv(f"{p}/1x1", x, n1, 1)
        w.relu(f"{p}/relu_1x1", b1)
        b3 = w.conv(f"{p}/3x3_reduce", x, n3r, 1)
        w.relu(f"{p}/relu_3x3_reduce", b3)
        b3 = w.conv(f"{p}/3x3", b3, n3, 3, pad=1)
        w.relu(f"{p}/relu_3x3", b3)
        b5 = w.conv(f"{p}/5x5_reduce", x, n5r, 1)
        w.relu(f"{p}/relu_5x5_reduce", b5)
        b5 = w.conv(f"{p}/5x5", b5, n5, 5, pad=2)
        w.relu(f"{p}/relu_5x5", b5)
        bp = w.pool(f"{p}/pool", x, "MAX", 3, 1, pad=1)
        bp = w.conv(f"{p}/pool_proj", bp, npool, 1)
        w.relu(f"{p}/relu_pool_proj", bp)
        x = w.layer(f"{p}/output", "Concat", [b1, b3, b5, bp], [f"{p}/output"])
    x = w.pool("pool5/7x7_s1", x, "AVE", 7, 1)
    w.layer("pool5/drop_7x7_s1", "Dropout", [x], [x], "dropout_param { dropout_ratio: 0.4 }")
    x = w.classifier("loss3/classifier", x)
    w.layer("prob", "Softmax", [x], ["prob"])
    w.save("googlenet/deploy.prototxt")


# --- ResNet-50 (He et al. 2015), deploy net as published with Caffe weights -----------------------

def resnet50():
    w = Writer("ResNet-50")
    w.input("data", (1, 3, 224, 224))

    def conv_bn(name, bottom, num_output, kernel, stride=1, pad=0, relu=True):
        top = w.conv(name, bottom, num_output, kernel, stride, pad, bias=False,
                     weight_filler='type: "msra"')
        suffix = name[3:]                                   # "res2a_branch1" -> "2a_branch1"
        w.layer(f"bn{suffix}", "BatchNorm", [top], [top],
                "batch_norm_param { use_global_stats: true }")
        w.layer(f"scale{suffix}", "Scale", [top], [top], "scale_param { bias_term: true }")
        if relu:
            w.relu(f"{name}_relu", top)
        return top

    x = w.conv("conv1", "data", 64, 7, stride=2, pad=3, weight_filler='type: "msra"', bias_value=0)
    w.layer("bn_conv1", "BatchNorm", [x], [x], "batch_norm_param { use_global_stats: true }")
    w.layer("scale_conv1", "Scale", [x], [x], "scale_param { bias_term: true }")
    w.relu("conv1_relu", x)
    x = w.pool("pool1", x, "MAX", 3, 2)
    for stage, blocks, width in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        for b in range(blocks):
            name = f"res{stage}{'abcdef'[b]}"
            stride = 2 if b == 0 and stage > 2 else 1
            if b == 0:
                shortcut = conv_bn(f"{name}_branch1", x, 4 * width, 1, stride, relu=False)
            else:
                shortcut = x
            y = conv_bn(f"{name}_branch2a", x, width, 1, stride)
            y = conv_bn(f"{name}_branch2b", y, width, 3, pad=1)
            y = conv_bn(f"{name}_branch2c", y, 4 * width, 1, relu=False)
            x = w.layer(name, "Eltwise", [shortcut, y], [name])
            w.relu(f"{name}_relu", x)
    x = w.pool("pool5", x, "AVE", 7, 1)
    x = w.classifier("fc1000", x)
    w.layer("prob", "Softmax", [x], ["prob"])
    w.save("resnet50/deploy.prototxt")


# --- MobileNet v1 (Howard et al. 2017), as shicai/MobileNet-Caffe lays it out -------------------
# Depthwise-separable blocks: a 3x3 convolution with group == channels (one filter per channel)
# and a 1x1 convolution mixing the channels, each followed by BatchNorm, Scale and ReLU.

MOBILENET_BLOCKS = [  # name, output channels of the 1x1, stride of the 3x3
    ("2_1", 64, 1), ("2_2", 128, 2), ("3_1", 128, 1), ("3_2", 256, 2), ("4_1", 256, 1),
    ("4_2", 512, 2), ("5_1", 512, 1), ("5_2", 512, 1), ("5_3", 512, 1), ("5_4", 512, 1),
    ("5_5", 512, 1), ("5_6", 1024, 2), ("6", 1024, 1),
]


def mobilenet():
    w = Writer("MobileNet")
    w.input("data", (1, 3, 224, 224))

    def conv_bn(name, bottom, num_output, kernel, stride=1, pad=0, group=1, relu=""):
        body = ["param { lr_mult: 1 decay_mult: 1 }", "convolution_param {",
                f"  num_output: {num_output}", "  bias_term: false"]
        body += [f"  pad: {pad}"] if pad else []
        body += [f"  kernel_size: {kernel}"]
        body += [f"  group: {group}"] if group > 1 else []
        body += [f"  stride: {stride}"] if stride != 1 else []
        body += ['  weight_filler { type: "msra" }', "}"]
        top = w.layer(name, "Convolution", [bottom], [name], "\n".join(body))
        w.layer(f"{name}/bn", "BatchNorm", [top], [top], "batch_norm_param { eps: 1e-05 }")
        w.layer(f"{name}/scale", "Scale", [top], [top], "scale_param { bias_term: true }")
        w.relu(relu, top)
        return top

    x = conv_bn("conv1", "data", 32, 3, stride=2, pad=1, relu="relu1")
    channels = 32
    for name, out, stride in MOBILENET_BLOCKS:
        x = conv_bn(f"conv{name}/dw", x, channels, 3, stride, pad=1, group=channels,
                    relu=f"relu{name}/dw")
        x = conv_bn(f"conv{name}/sep", x, out, 1, relu=f"relu{name}/sep")
        channels = out
    x = w.layer("pool6", "Pooling", [x], ["pool6"],
                "pooling_param { pool: AVE global_pooling: true }")
    x = w.layer("fc7", "Convolution", [x], ["fc7"], """
param { lr_mult: 1 decay_mult: 1 }
param { lr_mult: 2 decay_mult: 0 }
convolution_param {
  num_output: 1000
  kernel_size: 1
  weight_filler { type: "msra" }
  bias_filler { type: "constant" value: 0 }
}""")
    w.layer("prob", "Softmax", [x], ["prob"])
    w.save("mobilenet/deploy.prototxt")


if __name__ == "__main__":
    for folder in ("googlenet", "resnet50", "mobilenet"):
        os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    googlenet()
    resnet50()
    mobilenet()
