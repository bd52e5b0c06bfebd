"""Does training wait for its data? The data layer alone, the net's step alone and the two
together (a solver step on the net with its data layer), for three real data paths:

- ``mnist``: LeNet (models/lenet) on the MNIST LMDB of ``minicnn data mnist`` (raw Datum
  records, crop 24, scale 1/256), batch 64;
- ``imagedata``: an ImageData layer on 512 JPEG files (photos of skimage.data cut and scaled to
  96..160 x 96..160), new_height/new_width 36, crop 32, mirror, mean values, batch 64, feeding
  Caffe's CIFAR-10 "quick" net;
- ``jpeg_lmdb``: an LMDB of encoded JPEG Datum (``minicnn convert-imageset --encoded``, 256 x
  256) with a mean file (``minicnn compute-image-mean``), crop 227, mirror, feeding CaffeNet
  (models/caffenet) at batch 16.

Columns per setup (images/s, median of the blocks; the blocks of one setup are interleaved):

- data layer: ``net.forward()`` of a net holding only the data layer, its Prefetcher running
  (the rate its thread makes batches at when nothing else runs);
- data CPU: the layer's ``_make_batch(b)`` called in the main thread, images per second of
  that thread's CPU time (``time.thread_time``: what a batch costs, whatever else the machine
  runs);
- step: the solver's step on the same net with an Input layer of the same shapes;
- train: the solver's step on the net with its data layer (what ``minicnn train`` runs).

"train / step" is the fraction of the step's rate training keeps: 1.00 means the data path
costs nothing. Each block starts with an empty prefetch queue and runs a few steps before the
timed ones. The data are made once under --work (default /tmp/minicnn-data-throughput;
the photos come from scikit-image, a test dependency).

    python bench/data_throughput.py                       # all three setups
    python bench/data_throughput.py --only mnist --blocks 7
    MINICNN_NUM_THREADS=1 python bench/data_throughput.py  # the net on one core, data on the other
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import minicnn  # noqa: E402
from minicnn.net import filter_net  # noqa: E402
from minicnn.proto import caffe_pb2, parse_text, read_prototxt  # noqa: E402

CIFAR10_QUICK = """
name: "CIFAR10_quick"
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.0001 } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 64 pad: 2 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 64
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


# --- the data --------------------------------------------------------------------------------

def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-m", "minicnn", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _photos():
    import skimage.data
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                 "hubble_deep_field", "retina", "colorwheel"):
        yield getattr(skimage.data, name)()


def _write_jpegs(folder, count, size_range, seed):
    """``count`` JPEGs cut from the photos at random places and scaled to random sizes in
    ``size_range`` (both sides), with a list file; returns the list file's path."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in _photos()]
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(rng.integers(w // 3, w + 1)), int(rng.integers(h // 3, h + 1))
        x, y = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
        out = (int(rng.integers(*size_range)), int(rng.integers(*size_range)))
        img = photo.crop((x, y, x + cw, y + ch)).resize(out, Image.BILINEAR)
        name = f"img{i:04d}.jpg"
        img.save(os.path.join(folder, name), quality=90)
        lines.append(f"{name} {i % 10}\n")
    list_file = os.path.join(folder, "list.txt")
    with open(list_file, "w") as f:
        f.writelines(lines)
    return list_file


def make_data(work):
    mnist = os.path.join(work, "mnist")
    if not os.path.exists(os.path.join(mnist, "mnist_train_lmdb")):
        _cli("data", "mnist", "--out", mnist)
    images = os.path.join(work, "images")
    if not os.path.exists(os.path.join(images, "list.txt")):
        _write_jpegs(images, 512, (96, 161), seed=1)
    big = os.path.join(work, "images256")
    lmdb = os.path.join(work, "jpeg256_lmdb")
    if not os.path.exists(lmdb):
        list_file = _write_jpegs(big, 256, (200, 400), seed=2)
        _cli("convert-imageset", "--resize-height", "256", "--resize-width", "256",
             "--encoded", "--encode-type", "jpg", "--shuffle", big + "/", list_file, lmdb)
        _cli("compute-image-mean", lmdb, os.path.join(work, "jpeg256_mean.binaryproto"))
        shutil.rmtree(big)


# --- the nets --------------------------------------------------------------------------------

def _train_layers(path):
    param = filter_net(read_prototxt(path), caffe_pb2.NetState(phase=caffe_pb2.TRAIN))
    return [layer for layer in param.layer if layer.type not in ("Data", "ImageData")]


def setups(work):
    """name -> (data LayerParameter, the other layers, batch)."""
    out = {}
    lenet = _train_layers(os.path.join(REPO, "models/lenet/lenet_train_test.prototxt"))
    data = parse_text("""
        name: "mnist" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 crop_size: 24 }
        data_param { batch_size: 64 backend: LMDB }""", "LayerParameter")
    data.data_param.source = os.path.join(work, "mnist", "mnist_train_lmdb")
    out["mnist"] = (data, lenet, 64)

    quick = list(parse_text(CIFAR10_QUICK, "NetParameter").layer)
    data = parse_text("""
        name: "images" type: "ImageData" top: "data" top: "label"
        transform_param { crop_size: 32 mirror: true
                          mean_value: 104 mean_value: 117 mean_value: 123 }
        image_data_param { batch_size: 64 new_height: 36 new_width: 36 shuffle: true }""",
                          "LayerParameter")
    data.image_data_param.source = os.path.join(work, "images", "list.txt")
    out["imagedata"] = (data, quick, 64)

    caffenet = _train_layers(os.path.join(REPO, "models/caffenet/train_val.prototxt"))
    data = parse_text("""
        name: "data" type: "Data" top: "data" top: "label"
        transform_param { mirror: true crop_size: 227 }
        data_param { batch_size: 16 backend: LMDB }""", "LayerParameter")
    data.data_param.source = os.path.join(work, "jpeg256_lmdb")
    data.transform_param.mean_file = os.path.join(work, "jpeg256_mean.binaryproto")
    out["jpeg_lmdb"] = (data, caffenet, 16)
    return out


def _net_param(layers):
    param = caffe_pb2.NetParameter(name="bench")
    for layer in layers:
        param.layer.add().CopyFrom(layer)
    return param


def _solver(net_param):
    param = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.0005,
                                      lr_policy="fixed", display=0, max_iter=1 << 30,
                                      random_seed=0, snapshot_after_train=False)
    param.net_param.CopyFrom(net_param)
    return minicnn.SGDSolver(param, log=lambda message: None)


class Setup:
    """The three nets of one setup: the data layer alone, the step on Input, both."""

    def __init__(self, data, layers, batch):
        self.batch = batch
        self.data_net = minicnn.Net(_net_param([data]), phase="TRAIN")
        self.layer = self.data_net.layers[0]
        shapes = [self.data_net.blobs[t].shape for t in data.top]
        inputs = caffe_pb2.LayerParameter(name="input", type="Input", top=list(data.top))
        for shape in shapes:
            inputs.input_param.shape.add().dim.extend(shape)
        self.step_solver = _solver(_net_param([inputs] + layers))
        rng = np.random.default_rng(0)
        self.step_solver.net.blobs["data"].data = rng.uniform(-1, 1, shapes[0])
        self.step_solver.net.blobs["label"].data = rng.integers(0, 10, shapes[1])
        self.train_solver = _solver(_net_param([data] + layers))
        self.train_layer = self.train_solver.net.layers[0]

    @staticmethod
    def _fresh(layer):
        """Drop the batches computed ahead: the block starts with an empty queue."""
        layer._prefetcher.seek(layer._prefetcher.position)

    def time(self, kind, iters, warmup=3):
        """Images per second of ``iters`` iterations of ``kind`` (per second of the thread's CPU
        time for "data CPU", of wall-clock time for the others)."""
        clock = time.perf_counter
        if kind == "data layer":
            self._fresh(self.layer)
            run = self.data_net.forward
        elif kind == "data CPU":
            clock = time.thread_time
            position = [self.layer._prefetcher.position]

            def run():
                self.layer._make_batch(position[0])
                position[0] += 1
        elif kind == "step":
            def run():
                self.step_solver.step(1)
        else:
            self._fresh(self.train_layer)

            def run():
                self.train_solver.step(1)
        for _ in range(warmup):
            run()
        start = clock()
        for _ in range(iters):
            run()
        return iters * self.batch / (clock() - start)

    def close(self):
        self.layer._prefetcher.stop()
        self.train_layer._prefetcher.stop()


KINDS = ("data layer", "data CPU", "step", "train")
ITERS = {"mnist": 60, "imagedata": 30, "jpeg_lmdb": 8}
TITLES = {"mnist": "LeNet, MNIST LMDB (raw Datum, crop 24), batch 64",
          "imagedata": "CIFAR-10 quick, ImageData of JPEGs (resize 36, crop 32, mirror, "
                       "mean values), batch 64",
          "jpeg_lmdb": "CaffeNet, LMDB of encoded 256x256 JPEGs (crop 227, mirror, mean "
                       "file), batch 16"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/minicnn-data-throughput",
                    help="folder for the generated data (made once)")
    ap.add_argument("--only", action="append", choices=sorted(ITERS),
                    help="run only this setup (repeatable)")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks per row (median)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the iterations per block")
    args = ap.parse_args()
    make_data(args.work)
    print(f"minicnn kernels on {minicnn.native.num_threads()} thread(s), {os.cpu_count()} "
          f"cores; {args.blocks} blocks\n")
    all_setups = setups(args.work)
    print("| setup | data layer | data CPU | step (Input) | train (data + step) "
          "| train / step |")
    print("|---|---|---|---|---|---|")
    for name in args.only or list(all_setups):
        setup = Setup(*all_setups[name])
        iters = max(1, int(ITERS[name] * args.scale))
        rates = {kind: [] for kind in KINDS}
        for _ in range(args.blocks):
            for kind in KINDS:
                rates[kind].append(setup.time(kind, iters))
        setup.close()
        med = {kind: statistics.median(r) for kind, r in rates.items()}
        spread = {kind: f"{min(r):.0f}-{max(r):.0f}" for kind, r in rates.items()}
        print(f"| {TITLES[name]} | " + " | ".join(
            f"{med[k]:.0f} ({spread[k]})" for k in KINDS)
            + f" | {med['train'] / med['step']:.2f} |", flush=True)
    print("\nimages/s, median of the blocks (min-max in brackets)")


if __name__ == "__main__":
    main()
