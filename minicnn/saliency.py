"""Saliency maps from a trained classifier, and the crops they suggest (Yahoo JAPAN's case 2).

    net = saliency_net("models/sos/deploy.prototxt", "sos.caffemodel")   # force_backward on
    smap = saliency_map(net, "photo.jpg", "inception_4a/output", "entropy")   # H x W in [0, 1]
    crop = best_crop(smap, "2:1")              # Crop(x0, y0, x1, y1, score, mass)

Three maps, each computed at the net's input size, resized (bilinear) to the image, smoothed by
a Gaussian of ``smooth`` x the image's longer side, and stretched to [0, 1]:

``entropy``  the talk's method. Forward the image; the objective is the entropy of the predicted
             class distribution, H = -sum_c p_c log p_c (p = softmax of the class scores), a
             measure of the net's (lack of) confidence. Backpropagate dH to an intermediate
             blob A (C filter maps, e.g. inception_4a/output) and give each filter k the weight
             of its first-order response, w_k = |sum_ij A_k(i, j) dH/dA_k(i, j)| (how much the
             entropy would move if filter k's map were switched off); the map is
             sum_k w_k A_k. Filters the prediction does not depend on get weight ~0, which is
             what removes the noise of the naive sum.
``gradient`` Simonyan, Vedaldi and Zisserman (2014): |d score_c / d data| of the predicted (or
             given) class's score, the maximum over the colour channels.
``sum``      the naive sum of blob A's filter maps, sum_k A_k (the talk's "before" picture).

The objectives are defined on the class scores: when the net's output is a Softmax, its input
(the scores) is used, and p is computed here. ``entropy`` and ``class_score`` return an
objective's value and its gradient with respect to the scores, which ``backward_to`` sends
down the net (Caffe's net.backward(start=..., end=..., **diffs), which needs force_backward).

``best_crop`` searches every crop of an aspect ratio, at every position and every size from
``min_size`` x the largest crop of that ratio up to the largest, scoring a crop by the saliency
mass inside minus ``threshold`` (default: the map's mean) per pixel, i.e. how much more
saliency it holds than a crop of the same size on a uniform map. The sums come from an integral
image, so each size costs one vectorized pass. Ties go to the larger crop, then the more
central one, then the top-left one (a uniform map gives the largest centred crop).
"""

import json
import math
import os
from collections import namedtuple
from contextlib import contextmanager

import numpy as np

from minicnn import io
from minicnn.errors import MinicnnError

__all__ = ["METHODS", "saliency_net", "saliency_map", "saliency_maps", "entropy",
           "class_score", "scores_blob", "backward_to", "best_crop", "parse_ratio", "Crop",
           "smooth", "auc", "centre_prior", "overlay", "draw_box", "crop_fraction"]

METHODS = ("entropy", "gradient", "sum")
DEFAULT_SMOOTH = 0.03            # Gaussian sigma, as a fraction of the image's longer side


# --- objectives on the class scores ------------------------------------------------------------

def _softmax(scores):
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def entropy(scores):
    """(H, dH/dscores) for scores (N, C): the entropy in nats of each item's softmax(scores),
    and its gradient, dH/ds_j = -p_j (log p_j + H). Computed in float64."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    p = _softmax(s)
    logp = np.log(np.maximum(p, np.finfo(np.float64).tiny))
    h = -(p * logp).sum(axis=1)
    return h, -p * (logp + h[:, None])


def class_score(scores, classes=None):
    """(score, d score/d scores) of each item's class ``classes`` (default: its top class):
    the score itself and a one-hot gradient."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    classes = s.argmax(axis=1) if classes is None else np.broadcast_to(
        np.asarray(classes, dtype=np.int64), (len(s),))
    if np.any(classes < 0) or np.any(classes >= s.shape[1]):
        raise MinicnnError(f"class {classes.tolist()} out of range for {s.shape[1]} scores")
    grad = np.zeros_like(s)
    grad[np.arange(len(s)), classes] = 1.0
    return s[np.arange(len(s)), classes], grad


# --- the net ------------------------------------------------------------------------------------

def saliency_net(model, weights=None, **kwargs):
    """A TEST-phase Net of the prototxt ``model`` with force_backward on (so every blob gets a
    diff, the input included) and ``weights`` loaded."""
    from minicnn.net import TEST, Net
    from minicnn.proto.text import read_prototxt
    param = read_prototxt(os.fspath(model), "NetParameter")
    param.force_backward = True
    kwargs.setdefault("source_dir", os.path.dirname(os.path.abspath(os.fspath(model))))
    return Net(param, weights=weights, phase=kwargs.pop("phase", TEST), **kwargs)


def _writers(net, blob):
    return [i for i, tops in enumerate(net.top_names.values()) if blob in tops]


def scores_blob(net, output=None):
    """The class-scores blob behind ``output`` (default: the net's first output): the bottom
    of the Softmax that makes it, else the output itself."""
    output = output or (net.outputs[0] if net.outputs else None)
    if output is None or output not in net.blobs:
        raise MinicnnError(f"no output blob '{output}'; outputs: {', '.join(net.outputs)}")
    writers = _writers(net, output)
    if writers:
        layer = net.layers[writers[-1]]
        bottoms = net.bottom_names[net.layer_names[writers[-1]]]
        if layer.type == "Softmax" and bottoms and bottoms[0] != output:
            return bottoms[0]
    return output


def _first_consumer(net, blob):
    """Index of the first layer after ``blob``'s last writer that reads it without writing it
    (its diff is d(objective)/d(blob's final value))."""
    writers = _writers(net, blob)
    after = writers[-1] + 1 if writers else 0
    for i in range(after, len(net.layers)):
        name = net.layer_names[i]
        if blob in net.bottom_names[name] and blob not in net.top_names[name]:
            return i
    return None


@contextmanager
def _no_param_diffs(net):
    """Skip parameter gradients during a saliency backward (only blob diffs are wanted)."""
    saved = [list(layer.param_propagate_down) for layer in net.layers]
    for layer in net.layers:
        layer.param_propagate_down = [False] * len(layer.param_propagate_down)
    try:
        yield
    finally:
        for layer, flags in zip(net.layers, saved):
            layer.param_propagate_down = flags


def backward_to(net, blob, start_blob, diff):
    """d(objective)/d(``blob``) after a forward pass: ``diff`` (the objective's gradient with
    respect to ``start_blob``) is sent down from the layer that writes ``start_blob`` to the
    first layer that reads ``blob``. Returns a copy of blob's diff. Needs force_backward (or a
    loss under every layer on the way) so that those layers compute bottom diffs."""
    for name in (blob, start_blob):
        if name not in net.blobs:
            raise MinicnnError(f"no blob named '{name}'; blobs: {', '.join(net.blobs)}")
    writers = _writers(net, start_blob)
    consumer = _first_consumer(net, blob)
    if not writers or consumer is None or consumer > writers[-1]:
        raise MinicnnError(f"blob '{blob}' is not below '{start_blob}' in the net: no path to "
                           "send the gradient down")
    end_name = net.layer_names[consumer]
    j = net.bottom_names[end_name].index(blob)
    if not net.bottom_need_backward[consumer][j]:
        raise MinicnnError(f"layer '{end_name}' computes no diff for '{blob}': build the net "
                           "with force_backward: true (minicnn.saliency.saliency_net does)")
    with _no_param_diffs(net):
        net.backward(start=net.layer_names[writers[-1]], end=end_name,
                     **{start_blob: np.asarray(diff, dtype=net.blobs[start_blob].dtype)
                        .reshape(net.blobs[start_blob].shape)})
    return np.array(net.blobs[blob].diff)


# --- maps ---------------------------------------------------------------------------------------

def _gaussian_kernel(sigma):
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth(image, sigma):
    """A 2-D map blurred by a Gaussian of ``sigma`` pixels (separable, edges reflected)."""
    image = np.asarray(image, dtype=np.float64)
    if sigma <= 0:
        return image.copy()
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    out = image
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect" if n > r else "symmetric")
        acc = np.zeros_like(out)
        for i, weight in enumerate(k):
            acc += weight * (padded[i:i + n] if axis == 0 else padded[:, i:i + n])
        out = acc
    return out


def _normalise(m):
    m = np.asarray(m, dtype=np.float64)
    low, high = float(m.min()), float(m.max())
    if not np.isfinite(low) or not np.isfinite(high) or high - low <= 1e-12 * max(abs(high), 1):
        return np.zeros(m.shape, np.float32)
    return ((m - low) / (high - low)).astype(np.float32)


def _finish(raw, size, smooth_fraction):
    """A raw map (h, w) resized to ``size`` (H, W), smoothed and stretched to [0, 1]."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.shape != tuple(size):
        raw = io.resize_image(raw[:, :, None], size)[:, :, 0]
    sigma = smooth_fraction * max(size)
    return _normalise(smooth(raw, sigma) if sigma > 0 else raw)


def filter_weights(activations, gradients):
    """The entropy method's weights w_k = |sum_ij A_k dH/dA_k| for (N, C, h, w) blobs: (N, C)."""
    a = np.asarray(activations, dtype=np.float64)
    g = np.asarray(gradients, dtype=np.float64)
    return np.abs((a * g).reshape(*a.shape[:2], -1).sum(axis=2))


def _input_images(net, images, input_options):
    """(ImageInput, [H x W x C arrays]): every image whole, resized to the input's H x W."""
    from minicnn.deploy import ImageInput
    options = dict(input_options)
    name = options.pop("input", None) or (net.inputs[0] if net.inputs else None)
    if name is None:
        raise MinicnnError("the net has no Input layer to feed images to")
    size = net.blobs[name].shape[2:]
    inp = ImageInput(net, resize=tuple(size), crop=tuple(size), input=name, **options)
    return inp, [inp.load(image) for image in images]


def saliency_maps(net, images, blob=None, methods=("entropy",), output=None, target=None,
                  smooth=DEFAULT_SMOOTH, batch_size=16, raw=False, **input_options):
    """{method: [map per image]} and the predictions: each map H x W float32 in [0, 1] at its
    image's size (``raw``: the unsmoothed map at the blob's or input's size instead).

    ``images`` are paths or H x W x C arrays in [0, 1]; each is resized whole to the net
    input (no crop), then preprocessed by ``minicnn.deploy.ImageInput`` with
    ``input_options`` (mean, raw_scale, channel_swap; defaults: Caffe's ImageNet recipe).
    ``blob`` (for entropy and sum) is the intermediate conv blob; ``output`` the
    probabilities or scores (default: the first output); ``target`` the class whose score the
    gradient method explains (default: the predicted one). Returns (maps, predictions) with
    predictions a list of (class, probabilities) per image."""
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise MinicnnError(f"unknown saliency method '{bad[0]}'; methods: {', '.join(METHODS)}")
    if any(m in ("entropy", "sum") for m in methods):
        if blob is None:
            raise MinicnnError("the entropy and sum methods need --blob: an intermediate conv "
                               "blob such as inception_4a/output")
        if blob not in net.blobs:
            raise MinicnnError(f"no blob named '{blob}'; blobs: {', '.join(net.blobs)}")
        if len(net.blobs[blob].shape) != 4:
            raise MinicnnError(f"blob '{blob}' has shape {net.blobs[blob].shape}: the filter "
                               "maps of a conv blob (N, C, H, W) are needed")
    scores_name = scores_blob(net, output)
    inp, pixels = _input_images(net, list(images), input_options)
    if not pixels:
        raise MinicnnError("no images given")
    input_blob = net.blobs[inp.name]
    maps = {m: [] for m in methods}
    predictions = []
    for start in range(0, len(pixels), max(1, int(batch_size))):
        chunk = pixels[start:start + max(1, int(batch_size))]
        batch = inp(chunk)
        if input_blob.shape != batch.shape:
            input_blob.reshape(batch.shape)
            net.reshape()
        input_blob.data[...] = batch
        net.forward_from_to()
        scores = np.array(net.blobs[scores_name].data, dtype=np.float64).reshape(len(chunk), -1)
        probs = _softmax(scores)
        predictions += [(int(p.argmax()), p) for p in probs]
        found = {}
        if "entropy" in methods or "sum" in methods:
            acts = np.array(net.blobs[blob].data, dtype=np.float64)
            if "sum" in methods:
                found["sum"] = acts.sum(axis=1)
            if "entropy" in methods:
                _, dh = entropy(scores)
                # per-item scale (maps are stretched to [0, 1] anyway): keeps a confident
                # prediction's tiny gradient out of float32's underflow
                dh /= np.maximum(np.abs(dh).max(axis=1, keepdims=True), 1e-300)
                grads = backward_to(net, blob, scores_name, dh)
                w = filter_weights(acts, grads)
                flat = np.all(w <= 0, axis=1)          # a saturated softmax: no gradient at all
                w[flat] = 1.0                          # ... falls back to the naive sum
                found["entropy"] = np.einsum("nc,nchw->nhw", w, acts)
        if "gradient" in methods:
            _, ds = class_score(scores, target)
            g = backward_to(net, inp.name, scores_name, ds)
            found["gradient"] = np.abs(g).max(axis=1)
        for method in methods:
            for k, image in enumerate(chunk):
                m = found[method][k]
                maps[method].append(m.astype(np.float32) if raw
                                    else _finish(m, image.shape[:2], smooth))
    return maps, predictions


def saliency_map(net, image, blob=None, method="entropy", **options):
    """One image's saliency map: H x W float32 in [0, 1] at the image's size (see
    ``saliency_maps`` for the options)."""
    maps, _ = saliency_maps(net, [image], blob, (method,), **options)
    return maps[method][0]


# --- crops --------------------------------------------------------------------------------------

Crop = namedtuple("Crop", "x0 y0 x1 y1 score mass")
Crop.__doc__ = ("A crop [x0, x1) x [y0, y1) in pixels; score = saliency inside minus threshold "
                "x area; mass = the fraction of the map's total saliency inside.")


def parse_ratio(ratio):
    """An aspect ratio width / height from 2.0, (2, 1) or "2:1" (also "2/1", "2x1")."""
    try:
        if isinstance(ratio, str):
            for sep in (":", "/", "x"):
                if sep in ratio:
                    w, h = ratio.split(sep)
                    value = float(w) / float(h)
                    break
            else:
                value = float(ratio)
        elif isinstance(ratio, (tuple, list)):
            value = float(ratio[0]) / float(ratio[1])
        else:
            value = float(ratio)
    except (ValueError, ZeroDivisionError, IndexError, TypeError):
        raise MinicnnError(f"aspect ratio {ratio!r} is not W:H (e.g. 2:1, 4:3)") from None
    if not math.isfinite(value) or value <= 0:
        raise MinicnnError(f"aspect ratio {ratio!r} must be positive")
    return value


def _crop_sizes(height, width, ratio, min_size):
    """[(h, w)] of the crops with w = round(h * ratio) that fit, from the largest down to
    ``min_size`` x the largest's height."""
    sizes = []
    for h in range(height, 0, -1):
        w = max(1, int(round(h * ratio)))
        if w <= width:
            sizes.append((h, w))
    if not sizes:
        raise MinicnnError(f"no crop of aspect ratio {ratio:g} fits a {width}x{height} map")
    h_max = sizes[0][0]
    h_min = max(1, int(math.ceil(min_size * h_max - 1e-9)))
    return [(h, w) for h, w in sizes if h >= h_min]


def best_crop(saliency, ratio, min_size=0.5, threshold="mean"):
    """The crop of aspect ratio ``ratio`` (width / height: 2.0, "2:1", (4, 3)) that keeps the
    most saliency: exhaustive over every position and every size whose height is at least
    ``min_size`` (0 < min_size <= 1) times the largest fitting crop's height; the score is
    sum(saliency inside) - threshold * area, with ``threshold`` "mean" (the map's mean) or a
    number. Ties (within 1e-9 of the total mass) go to the larger crop, then the more central,
    then the top-left one.
    Returns a Crop (x0, y0, x1, y1, score, mass); the box is [x0, x1) x [y0, y1)."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or 0 in s.shape:
        raise MinicnnError(f"a saliency map is H x W, not shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise MinicnnError("the saliency map has NaN or infinite values")
    if not 0 < float(min_size) <= 1:
        raise MinicnnError(f"min_size must be in (0, 1], not {min_size}")
    r = parse_ratio(ratio)
    tau = float(s.mean()) if threshold == "mean" else float(threshold)
    height, width = s.shape
    integral = np.zeros((height + 1, width + 1))
    integral[1:, 1:] = s.cumsum(0).cumsum(1)
    total = float(integral[-1, -1])
    eps = 1e-9 * max(abs(total), float(np.abs(s).sum()), 1e-300)
    best = None                                  # (score, area, -distance, x0, y0, h, w)
    for h, w in _crop_sizes(height, width, r, float(min_size)):
        sums = (integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w])
        score = sums - tau * h * w
        top = float(score.max())
        ys, xs = np.nonzero(score >= top - eps)
        # centre distance of each candidate (doubled, to stay in integers)
        dist = (2 * ys + h - height) ** 2 + (2 * xs + w - width) ** 2
        k = int(np.argmin(dist))
        cand = (top, h * w, -int(dist[k]), int(xs[k]), int(ys[k]), h, w)
        if best is None or cand[0] > best[0] + eps or (
                abs(cand[0] - best[0]) <= eps and cand[1:3] > best[1:3]):
            best = cand
    score, _, _, x0, y0, h, w = best
    inside = float(integral[y0 + h, x0 + w] - integral[y0, x0 + w] - integral[y0 + h, x0]
                   + integral[y0, x0])
    return Crop(x0, y0, x0 + w, y0 + h, score, inside / total if total > 0 else 0.0)


def crop_fraction(mask, crop):
    """The fraction of the mask's pixels (nonzero) inside ``crop`` (nan for an empty mask)."""
    m = np.asarray(mask) > 0
    total = int(m.sum())
    if total == 0:
        return float("nan")
    return float(m[crop[1]:crop[3], crop[0]:crop[2]].sum()) / total


# --- evaluation ---------------------------------------------------------------------------------

def _average_ranks(values):
    """1-based ranks of ``values`` with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auc(saliency, mask):
    """The area under the ROC curve of the map as a detector of the mask's pixels: the chance
    that a random object pixel is more salient than a random background pixel (ties half).
    nan when the mask is empty or full."""
    s = np.asarray(saliency, dtype=np.float64).reshape(-1)
    m = np.asarray(mask).reshape(-1) > 0
    if s.shape != m.shape:
        raise MinicnnError(f"map of {np.size(saliency)} pixels, mask of {np.size(mask)}")
    n_pos = int(m.sum())
    n_neg = len(m) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[m].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def centre_prior(height, width, sigma=0.25):
    """The centre-bias baseline: a Gaussian bump at the image centre, sigma = ``sigma`` x each
    side, in [0, 1]."""
    y = (np.arange(height) + 0.5 - height / 2) / (sigma * height)
    x = (np.arange(width) + 0.5 - width / 2) / (sigma * width)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


# --- pictures -----------------------------------------------------------------------------------

def _jet(m):
    """The jet colour map of values in [0, 1]: (..., 3) float in [0, 1]."""
    m = np.clip(np.asarray(m, dtype=np.float64), 0, 1)[..., None]
    centres = np.array([0.75, 0.5, 0.25])              # R, G, B peaks
    return np.clip(1.5 - np.abs(4 * (m - centres)), 0, 1)


def overlay(image, saliency, alpha=0.5):
    """The image (H x W x 3 in [0, 1]) blended with the map in the jet colours: uint8."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    out = (1 - alpha) * img + alpha * _jet(saliency)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def draw_box(picture, box, colour, width=2):
    """Draw the rectangle [x0, x1) x [y0, y1) on a uint8 H x W x 3 picture, in place."""
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    height, width_px = picture.shape[:2]
    for t in range(width):
        ya, yb = min(max(y0 + t, 0), height - 1), min(max(y1 - 1 - t, 0), height - 1)
        xa, xb = min(max(x0 + t, 0), width_px - 1), min(max(x1 - 1 - t, 0), width_px - 1)
        picture[ya, xa:xb + 1] = colour
        picture[yb, xa:xb + 1] = colour
        picture[ya:yb + 1, xa] = colour
        picture[ya:yb + 1, xb] = colour
    return picture


# --- files ----------------------------------------------------------------------------------------

def _atomic(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_png(picture, path):
    """A uint8 picture as a PNG, written atomically."""
    from minicnn.data.errors import need
    Image = need("PIL.Image", "Pillow")
    return _atomic(path, lambda tmp: Image.fromarray(np.asarray(picture)).save(tmp, format="PNG"))


def write_npy(array, path):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
    return _atomic(path, write)


def write_json(obj, path):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    return _atomic(path, write)


# --- evaluation on a set with object masks (minicnn data sos) -------------------------------------

def read_objects(data_dir, split):
    """The records of ``<data_dir>/<split>_objects.json`` (written by ``minicnn data sos``):
    dicts with image and mask paths (made absolute), count and label."""
    from minicnn.data.errors import DataError
    path = os.path.join(data_dir, f"{split}_objects.json")
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)["images"]
    except FileNotFoundError:
        raise DataError(f"not found: make the set with `minicnn data sos --out {data_dir}`",
                        path) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read the objects file: {e}", path) from None
    for r in records:
        r["image"] = os.path.join(data_dir, r["image"])
        r["mask"] = os.path.join(data_dir, r["mask"])
    return records


def _load_mask(path):
    from minicnn.data.errors import need
    Image = need("PIL.Image", "Pillow")
    try:
        with Image.open(path) as m:
            return np.asarray(m.convert("L")) > 0
    except OSError as e:
        raise MinicnnError(f"{path}: cannot read the mask ({e})") from None


def evaluate(net, records, blob, methods=METHODS, ratios=("2:1", "1:1", "4:3"), min_size=0.5,
             smooth=DEFAULT_SMOOTH, batch_size=16, examples=0, progress=None, **input_options):
    """Score saliency maps against object masks, image by image, and return a summary dict.

    For each method (and the centre prior, and the mask itself as the ideal map for the crops):
    the mean AUC of the map against the mask, and for each aspect ratio the mean fraction of
    the objects' pixels inside the best crop, the crop's mean area (fraction of the image), and
    the fraction a crop of the same size placed at the centre keeps. Images without objects
    count for the class accuracy only. ``examples``: keep the first N images' maps and crops
    (for pictures). ``progress``: a callable given the number of images done."""
    ratios = tuple(ratios)
    names = tuple(methods) + ("centre prior", "mask (ideal)")
    aucs = {m: [] for m in names[:-1]}
    kept = {(m, r): [] for m in names for r in ratios}
    centred = {(m, r): [] for m in names for r in ratios}
    areas = {(m, r): [] for m in names for r in ratios}
    correct, shown = 0, []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        maps, predictions = saliency_maps(net, [r["image"] for r in chunk], blob, methods,
                                          smooth=smooth, batch_size=batch_size, **input_options)
        for k, rec in enumerate(chunk):
            correct += int(predictions[k][0] == rec["label"])
            mask = _load_mask(rec["mask"])
            h, w = mask.shape
            image_maps = {m: maps[m][k] for m in methods}
            image_maps["centre prior"] = centre_prior(h, w)
            image_maps["mask (ideal)"] = mask.astype(np.float32)
            crops = {}
            if mask.any():
                for m in names[:-1]:
                    aucs[m].append(auc(image_maps[m], mask))
            for m in names:
                for r in ratios:
                    c = best_crop(image_maps[m], r, min_size=min_size)
                    crops[m, r] = c
                    if not mask.any():
                        continue
                    cw, ch = c.x1 - c.x0, c.y1 - c.y0
                    x0, y0 = (w - cw) // 2, (h - ch) // 2
                    kept[m, r].append(crop_fraction(mask, c))
                    centred[m, r].append(crop_fraction(mask, (x0, y0, x0 + cw, y0 + ch)))
                    areas[m, r].append(cw * ch / (w * h))
            if len(shown) < examples:
                shown.append({"record": rec, "maps": image_maps, "crops": crops,
                              "prediction": predictions[k][0]})
        if progress is not None:
            progress(len(chunk))
    mean = lambda v: float(np.mean(v)) if v else float("nan")          # noqa: E731
    summary = {"images": len(records), "with_objects": len(aucs[names[0]]),
               "accuracy": correct / max(len(records), 1), "blob": blob,
               "min_size": min_size, "smooth": smooth, "ratios": list(ratios), "methods": {}}
    for m in names:
        entry = {"auc": mean(aucs[m]) if m in aucs else None, "crops": {}}
        for r in ratios:
            entry["crops"][r] = {"object_kept": mean(kept[m, r]),
                                 "centred_same_size": mean(centred[m, r]),
                                 "area": mean(areas[m, r])}
        summary["methods"][m] = entry
    return summary, shown
