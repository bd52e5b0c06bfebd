"""The example figure of models/deeplab/README.md: for the first few test images, one row each of
image | true labels | predicted labels | overlay of the prediction (VOC colours; the ignore band
of the truth in cream).

    python models/deeplab/figure.py --weights snapshots/deeplab_iter_60000.caffemodel \
        --scales 0.75,1,1.25 --out models/deeplab/example.png
"""

import argparse
import os

import numpy as np

import minicnn
from minicnn.data.segmentation import read_label
from minicnn.segmentation import colorize, overlay, save_png, segment

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(HERE, "deeplab_deploy.prototxt"))
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", default="data/segmentation_digits")
    ap.add_argument("--split", default="test")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--zoom", type=int, default=2)
    ap.add_argument("--scales", default="1",
                    help="multi-scale inference: comma-separated scales (default 1)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    net = minicnn.Net(args.model, args.weights)
    rows = []
    for i in range(args.first, args.first + args.count):
        name = f"{i:06d}.png"
        image_path = os.path.join(args.data, "images", args.split, name)
        truth = read_label(os.path.join(args.data, "labels", args.split, name))
        labels, _, bgr = segment(net, image_path,
                                 scales=tuple(float(v) for v in args.scales.split(",")))
        rgb = np.ascontiguousarray(bgr[::-1].transpose(1, 2, 0))
        gap = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([rgb, gap, colorize(truth), gap, colorize(labels), gap,
                                    overlay(rgb, labels)], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    grid = grid.repeat(args.zoom, axis=0).repeat(args.zoom, axis=1)
    save_png(grid, args.out)
    print(f"wrote {args.out}: {grid.shape[1]} x {grid.shape[0]}")


if __name__ == "__main__":
    main()
