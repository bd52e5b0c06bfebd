"""The Net's backward plumbing, checked whole on seeded random nets: small float64 DAGs of
Input, InnerProduct (any axis, weights shared by ``param { name }``, lr_mult 0, 1, 2 or -1),
in-place and out-of-place neurons (ReLU, Sigmoid, TanH, Power, Dropout and BatchNorm in the TEST
phase, Scale, AbsVal), Eltwise SUM with coeffs / PROD / MAX, Concat, Slice and explicit Split on
several axes, Flatten, Reshape, Silence, Euclidean and Softmax losses with loss_weight (0 and
negative too, and on tops that are no loss), Accuracy beside them, propagate_down and
force_backward drawn at random.

For each net:
- layer_need_backward, bottom_need_backward and param_propagate_down are Caffe's, as a port of
  Net::Init (net.cpp: AppendBottom, the lr_mult != 0 rule, the backward sweep, force_backward)
  computes them from the split net;
- every parameter diff (a shared blob: the sum over the layers that share it and compute it) and
  every blob diff the backward writes equals central differences of the net's total weighted
  loss, where each bottom Caffe computes no diff of is held at its value (the cut that
  propagate_down and pruning make), and every other blob diff stays 0 as in Caffe;
- a second backward from stale diffs gives the same (bottom diffs are assigned, not added).
Examples where a MAX has tied inputs (a kink) or where building warned of an in-place overwrite
(a gradient that is knowingly not the true one) keep only the flag checks."""
import warnings

import numpy as np
import pytest

import minicnn
from minicnn.errors import NetError
from minicnn.proto import parse_text
from minicnn.testing import numerical_grad

LRS = [0, 1, 2, -1]
NEURONS = ["ReLU", "Sigmoid", "TanH", "Power", "Dropout", "BatchNorm", "Scale", "AbsVal"]


class Gen:
    """A random net's prototxt text, built layer by layer over the blobs made so far (with
    their shapes): an in-place layer only on a blob nothing has read yet (else Caffe's Split
    would make its top a second producer of the name)."""
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.lines = []
        self.blobs = {}            # name -> shape, the blobs a layer may still read
        self.consumed = set()      # blobs read by some layer (no in place on them afterwards)
        self.n = 0
        self.shared = {}           # IP signature -> param names
        self.lr_mults = {}         # shared param name -> the lr_mult its layers give
        self.loss_blobs = []

    def pick(self, k=1, pred=lambda s: True):
        names = [b for b, s in self.blobs.items() if pred(s)]
        if not names:
            return None
        return [names[i] for i in self.rng.integers(0, len(names), k)]

    def name(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def coin(self, p):
        return self.rng.random() < p

    def extras(self, n_bottom, n_top, tops):
        text = ""
        if n_bottom and self.coin(0.15):
            text += "".join(f" propagate_down: {str(self.coin(0.5)).lower()}"
                            for _ in range(n_bottom))
        if n_top and self.coin(0.12):
            weights = [float(self.rng.choice([0.0, 0.5, 1.0, -0.7])) for _ in range(n_top)]
            text += "".join(f" loss_weight: {w}" for w in weights)
            self.consumed.update(t for t, w in zip(tops, weights) if w)
        return text

    def layer(self, name, ltype, bottoms, tops, body="", extra=True):
        self.consumed.update(bottoms)
        bots = "".join(f' bottom: "{b}"' for b in bottoms)
        tps = "".join(f' top: "{t}"' for t in tops)
        more = self.extras(len(bottoms), len(tops), tops) if extra else ""
        self.lines.append(f'layer {{ name: "{name}" type: "{ltype}"{bots}{tps}{more} {body} }}')

    def add(self):
        r = self.rng.random()
        if r < 0.22:
            self.inner_product()
        elif r < 0.45:
            self.neuron()
        elif r < 0.55:
            self.eltwise()
        elif r < 0.63:
            self.concat()
        elif r < 0.71:
            self.slice()
        elif r < 0.76:
            self.split()
        elif r < 0.83:
            self.reshape()
        elif r < 0.86:
            self.silence()
        else:
            self.inner_product()

    def inner_product(self):
        b = self.pick()[0]
        shape = self.blobs[b]
        axis = int(self.rng.integers(1, len(shape)))
        k = int(np.prod(shape[axis:]))
        out = int(self.rng.integers(1, 4))
        bias = self.coin(0.7)
        if self.shared and self.coin(0.6):
            # reuse a shared signature where some blob fits it: sharing by chance alone was
            # too rare to check that shared diffs accumulate
            sigs = list(self.shared)
            k, out, bias = sigs[int(self.rng.integers(0, len(sigs)))]
            fits = [(name, a) for name, s in self.blobs.items() for a in range(1, len(s))
                    if int(np.prod(s[a:])) == k]
            if fits:
                b, axis = fits[int(self.rng.integers(0, len(fits)))]
                shape = self.blobs[b]
            else:
                k = int(np.prod(shape[axis:]))
        sig = (k, out, bias)
        specs = ""
        n_params = 2 if bias else 1
        names = None
        if sig in self.shared and self.coin(0.6):
            names = self.shared[sig]
        elif self.coin(0.4):
            names = [self.name("w") for _ in range(n_params)]
            self.shared[sig] = names
        for p in range(n_params):
            fields = ""
            if names:
                fields += f' name: "{names[p]}"'
            if self.coin(0.25):
                lr = self.rng.choice(LRS)
                if names:          # sharers may not disagree (Caffe: "mismatched lr_mult")
                    lr = self.lr_mults.setdefault(names[p], lr)
                fields += f" lr_mult: {lr}"
            if fields or self.coin(0.2):
                specs += f" param {{{fields} }}"
        name = self.name("ip")
        top = name
        self.layer(name, "InnerProduct", [b], [top],
                   specs + f" inner_product_param {{ num_output: {out} axis: {axis} "
                   f"bias_term: {str(bias).lower()} weight_filler {{ type: 'gaussian' std: 0.7 }}"
                   f" bias_filler {{ type: 'gaussian' std: 0.5 }} }}")
        self.blobs[top] = shape[:axis] + (out,)

    def neuron(self):
        b = self.pick()[0]
        shape = self.blobs[b]
        ltype = str(self.rng.choice(NEURONS))
        in_place = b not in self.consumed and ltype != "AbsVal" and self.coin(0.6)
        name = self.name(ltype.lower())
        top = b if in_place else name
        body = ""
        if ltype == "Power":
            body = (f"power_param {{ power: {self.rng.choice([1, 2])} scale: "
                    f"{self.rng.choice([0.5, -1.5, 1])} shift: {self.rng.choice([0, 0.3])} }}")
        elif ltype == "Dropout":
            body = "dropout_param { dropout_ratio: 0.4 }"
        elif ltype == "BatchNorm":
            if shape[0] * int(np.prod(shape[2:])) < 2:
                return
            body = "batch_norm_param { use_global_stats: false }"
        elif ltype == "Scale":
            body = ("scale_param { bias_term: true filler { type: 'gaussian' std: 1 } "
                    "bias_filler { type: 'gaussian' std: 1 } }")
        elif ltype == "ReLU" and self.coin(0.5):
            body = "relu_param { negative_slope: 0.2 }"
        self.layer(name, ltype, [b], [top], body)
        if in_place:
            self.consumed.discard(b)      # the in-place layer is its writer, not a reader
        self.blobs[top] = shape

    def eltwise(self):
        b = self.pick()[0]
        shape = self.blobs[b]
        others = self.pick(int(self.rng.integers(1, 3)), lambda s: s == shape)
        bottoms = [b] + others
        op = str(self.rng.choice(["SUM", "PROD", "MAX"]))
        if op == "MAX":                   # no ties: a kink the differences cannot follow
            bottoms = list(dict.fromkeys(bottoms))
            if len(bottoms) < 2:
                return
        body = f"eltwise_param {{ operation: {op}"
        if op == "SUM" and self.coin(0.6):
            body += "".join(f" coeff: {self.rng.choice([1, -1, 0.5, 2])}" for _ in bottoms)
        body += " }"
        name = self.name("elt")
        self.layer(name, "Eltwise", bottoms, [name], body)
        self.blobs[name] = shape

    def concat(self):
        b = self.pick()[0]
        shape = self.blobs[b]
        axis = int(self.rng.integers(0, len(shape)))
        same = [n for n, s in self.blobs.items() if len(s) == len(shape)
                and all(s[i] == shape[i] for i in range(len(s)) if i != axis)]
        other = same[int(self.rng.integers(0, len(same)))]
        name = self.name("cat")
        self.layer(name, "Concat", [b, other], [name], f"concat_param {{ axis: {axis} }}")
        out = list(shape)
        out[axis] += self.blobs[other][axis]
        self.blobs[name] = tuple(out)

    def slice(self):
        b = self.pick(1, lambda s: max(s) >= 2)
        if b is None:
            return
        b = b[0]
        shape = self.blobs[b]
        axes = [i for i, d in enumerate(shape) if d >= 2]
        axis = int(self.rng.choice(axes))
        point = int(self.rng.integers(1, shape[axis]))
        name = self.name("slice")
        tops = [name + "a", name + "b"]
        self.layer(name, "Slice", [b], tops,
                   f"slice_param {{ axis: {axis} slice_point: {point} }}")
        for t, d in zip(tops, (point, shape[axis] - point)):
            out = list(shape)
            out[axis] = d
            self.blobs[t] = tuple(out)

    def split(self):
        b = self.pick()[0]
        name = self.name("split")
        tops = [name + "a", name + "b"]
        self.layer(name, "Split", [b], tops)
        for t in tops:
            self.blobs[t] = self.blobs[b]

    def reshape(self):
        b = self.pick()[0]
        shape = self.blobs[b]
        name = self.name("flat")
        if self.coin(0.5):
            self.layer(name, "Flatten", [b], [name])
            self.blobs[name] = (shape[0], int(np.prod(shape[1:])))
        else:
            self.layer(name, "Reshape", [b], [name],
                       "reshape_param { shape { dim: 0 dim: -1 dim: 1 } }")
            self.blobs[name] = (shape[0], int(np.prod(shape[1:])), 1)

    def silence(self):
        b = self.pick()[0]
        self.layer(self.name("silence"), "Silence", [b], [], extra=False)
        self.consumed.add(b)

    def losses(self):
        for _ in range(int(self.rng.integers(1, 4))):
            weight = ""
            if self.coin(0.4):
                weight = f" loss_weight: {self.rng.choice([0, 0.5, 2, -1])}"
            two_d = self.pick(1, lambda s: s[0] == 2 and len(s) == 2 and s[1] >= 2)
            if two_d and self.coin(0.4):
                name = self.name("sm")
                self.lines.append(f'layer {{ name: "{name}" type: "SoftmaxWithLoss" '
                                  f'bottom: "{two_d[0]}" bottom: "label" top: "{name}"{weight} }}')
                if self.coin(0.5):
                    acc = self.name("acc")
                    self.lines.append(f'layer {{ name: "{acc}" type: "Accuracy" bottom: '
                                      f'"{two_d[0]}" bottom: "label" top: "{acc}" }}')
            else:
                a = self.pick()[0]
                others = self.pick(1, lambda s: s == self.blobs[a])
                name = self.name("euc")
                self.lines.append(f'layer {{ name: "{name}" type: "EuclideanLoss" '
                                  f'bottom: "{a}" bottom: "{others[0]}" top: "{name}"{weight} }}')

    def text(self, n_layers, force_backward):
        head = ['name: "fuzz"']
        if force_backward:
            head.append("force_backward: true")
        shapes = {"x": (2, 3), "y": (2, 3, 2), "label": (2,)}
        for name, shape in shapes.items():
            dims = "".join(f" dim: {d}" for d in shape)
            head.append(f'layer {{ name: "in_{name}" type: "Input" top: "{name}" '
                        f'input_param {{ shape {{{dims} }} }} }}')
        self.blobs = {"x": (2, 3), "y": (2, 3, 2)}
        for _ in range(n_layers):
            self.add()
        self.losses()
        return "\n".join(head + self.lines) + "\n"


def make(seed, n_layers=None):
    g = Gen(seed)
    n = int(g.rng.integers(2, 9)) if n_layers is None else n_layers
    return g.text(n, g.coin(0.35)), g.rng


def caffe_need_backward(net):
    """Caffe's Net::Init (net.cpp), from the split net's lists: layer and bottom flags."""
    blob_need = {}
    layer_need, bottom_need = [], []
    for i, layer in enumerate(net.layers):
        p = layer.param
        need = False
        bneed = []
        for j, name in enumerate(net._bottom_lists[i]):
            # Caffe 1.0's AppendBottom: propagate_down, where given, decides alone ("if set to
            # true for some inputs, backpropagation to those inputs is forced": caffe.proto)
            bneed.append(p.propagate_down[j] if p.propagate_down else blob_need[name])
            need |= blob_need[name]
        for name in net._top_lists[i]:
            blob_need.setdefault(name, False)
        for k in range(len(layer.blobs)):
            lr = p.param[k].lr_mult if k < len(p.param) else 1.0
            need |= lr != 0
        layer_need.append(need)
        bottom_need.append(bneed)
        if need:
            for name in net._top_lists[i]:
                blob_need[name] = True
    under_loss, skip = set(), set()
    for i in reversed(range(len(net.layers))):
        layer = net.layers[i]
        contributes, skip_down = False, True
        for j, name in enumerate(net._top_lists[i]):
            if layer.loss_weight(j) or name in under_loss:
                contributes = True
            if name not in skip:
                skip_down = False
            if contributes and not skip_down:
                break
        if layer_need[i] and skip_down:
            layer_need[i] = False
            bottom_need[i] = [False] * len(bottom_need[i])
        if not contributes:
            layer_need[i] = False
        for j, name in enumerate(net._bottom_lists[i]):
            if contributes:
                under_loss.add(name)
            else:
                bottom_need[i][j] = False
            if not bottom_need[i][j]:
                skip.add(name)
    param_down = [[(k < len(layer.param.param) and layer.param.param[k].lr_mult != 0)
                   or k >= len(layer.param.param) for k in range(len(layer.blobs))]
                  for layer in net.layers]
    if net.force_backward:
        for i, layer in enumerate(net.layers):
            layer_need[i] = True
            bottom_need[i] = [b or layer.allow_force_backward(j)
                              for j, b in enumerate(bottom_need[i])]
            param_down[i] = [True] * len(layer.blobs)
    return layer_need, bottom_need, param_down


def build(text, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = minicnn.Net(parse_text(text), phase=minicnn.TEST, dtype=np.float64, **kw)
    overwrite = any("in place afterwards" in str(w.message) or "a top of Split" in str(w.message)
                    for w in caught)
    return net, overwrite


def unshared(text):
    import re
    return re.sub(r' name: "w\d+"', "", text)


def check(text, rng, eps=1e-6, rtol=1e-4, atol=1e-6):
    net, overwrite = build(text)
    layer_need, bottom_need, param_down = caffe_need_backward(net)
    problems = []
    if net.layer_need_backward != layer_need:
        problems.append(("layer_need_backward", net.layer_need_backward, layer_need))
    if net.bottom_need_backward != bottom_need:
        problems.append(("bottom_need_backward", net.bottom_need_backward, bottom_need))
    pd = [list(layer.param_propagate_down[:len(layer.blobs)]) for layer in net.layers]
    if pd != param_down:
        problems.append(("param_propagate_down", pd, param_down))
    if overwrite:
        return problems, "overwrite"
    inputs = {"x": rng.standard_normal((2, 3)), "y": rng.standard_normal((2, 3, 2)),
              "label": rng.integers(0, 2, 2).astype(np.float64)}
    ref, _ = build(unshared(text))
    for layer in ref.layers:          # Split's tops alias its bottom: copies, to move one alone
        if layer.type == "Split":
            def own(bottom, top):
                for t in top:
                    t._data = bottom[0].data.copy()
            layer.forward = layer.reshape = own
    for la, lb in zip(net.layers, ref.layers):
        for a, b in zip(la.blobs, lb.blobs):
            b.data[...] = a.data
    # which blobs the check can judge: not in place, not loss-seeded, not labels
    in_place = {b for i in range(len(net.layers))
                for b, t in zip(net._bottom_lists[i], net._top_lists[i]) if b == t}
    seeded = {n for n, w in net.blob_loss_weights.items() if w}
    writer = {}
    for i in range(len(net.layers)):
        for j, b in enumerate(net._bottom_lists[i]):
            if layer_need[i] and bottom_need[i][j]:
                writer[b] = i
    # the analytic side, twice (the second from stale diffs)
    for rep in range(2):
        for name, blob in net.blobs.items():
            if rep and name in writer and name not in in_place:
                blob.diff[...] = rng.standard_normal(blob.diff.shape)
        net.clear_param_diffs()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net.forward(**inputs)
            if rep == 0 and any(
                    np.min(np.abs(a.data - b.data)) < 1e-3
                    for layer, bots in zip(net.layers, net.bottom_vecs)
                    if layer.type == "Eltwise" and layer.operation == "MAX"
                    for a in bots for b in bots if a is not b):
                return problems, "tie"            # MAX of equal values: a kink
            net.backward()
        got = {n: b.diff.copy() for n, b in net.blobs.items()}
        got_params = [[b.diff.copy() for b in layer.blobs] for layer in net.layers]
        if rep == 0:
            first, first_params = got, got_params
    cuts = {(i, j) for i in range(len(net.layers)) for j in range(len(bottom_need[i]))
            if not bottom_need[i][j]}
    producer = {}
    for i in range(len(net.layers)):
        for t in net._top_lists[i]:
            producer.setdefault(t, i)
    saved = {}

    def run(hook=None):
        for n in ("x", "y", "label"):
            ref.blobs[n].data[...] = inputs[n]
        loss = 0.0
        for i in range(len(ref.layers)):
            for j in range(len(ref.bottom_vecs[i])):
                if (i, j) in cuts:
                    key = (i, j)
                    if key not in saved:
                        saved[key] = ref.bottom_vecs[i][j].data.copy()
                    ref.bottom_vecs[i][j].data[...] = saved[key]
            loss += ref.forward_from_to(i, i)
            if hook is not None and hook[0] == i:
                hook[1]()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atol = atol * max(1.0, abs(run()))   # the differences' rounding grows with the loss

        def fd_blob(name):
            i = producer[name]
            blob = ref.blobs[name]
            grad = np.zeros(blob.shape)
            gflat = grad.reshape(-1)
            for e in range(blob.count):
                vals = []
                for s in (1, -1):
                    def bump(s=s):
                        blob.data.reshape(-1)[e] += s * eps
                    vals.append(run((i, bump)))
                gflat[e] = (vals[0] - vals[1]) / (2 * eps)
            return grad

        for name in net.blobs:
            if name in in_place or name in seeded or name == "label":
                continue
            want = fd_blob(name) if name in writer else np.zeros(net.blobs[name].shape)
            if not np.allclose(first[name], want, rtol=rtol, atol=atol):
                problems.append(("blob diff", name, first[name], want))
        # params: per learnable group, the sum over the users whose param_down is on
        groups = {}
        idx = 0
        for i, layer in enumerate(net.layers):
            for k in range(len(layer.blobs)):
                groups.setdefault(net._param_owner[idx], []).append((i, k))
                idx += 1
        for g, users in groups.items():
            i0, k0 = users[0]
            want = np.zeros(net.layers[i0].blobs[k0].shape)
            for i, k in users:
                if not param_down[i][k] or net.layers[i].type == "BatchNorm":
                    continue
                want += numerical_grad(run, ref.layers[i].blobs[k].data, eps)
            if not np.allclose(first_params[i0][k0], want, rtol=rtol, atol=atol):
                problems.append(("param diff", net.layer_names[i0], k0, first_params[i0][k0],
                                 want))
    # stale diffs: the second backward must give the same
    for name in first:
        if name in seeded or name == "label":
            continue
        if name in writer and not np.allclose(first[name], got[name]):
            problems.append(("stale blob diff", name, first[name], got[name]))
    for i, (a, b) in enumerate(zip(first_params, got_params)):
        for k, (u, v) in enumerate(zip(a, b)):
            if not np.allclose(u, v):
                problems.append(("stale param diff", net.layer_names[i], k, u, v))
    return problems, "checked"


@pytest.mark.parametrize("seed", range(40))
def test_random_net_backward_matches_caffe_rules_and_finite_differences(seed):
    text, rng = make(seed)
    try:
        problems, _ = check(text, rng)
    except NetError as e:
        # a loss-weighted top computed in place afterwards: a Split takes the loss, so the
        # in-place layer's top names a blob twice (Caffe: "Duplicate blobs")
        assert "already produced by another layer" in str(e)
        return
    assert not problems, f"{text}\n" + "\n".join(repr(p) for p in problems)


def test_the_seeds_share_params():
    """The seeds above must include nets whose InnerProducts share a param by name (else that
    shared diffs add up goes unchecked: a backward assigning dW passed every seed)."""
    import re
    from collections import Counter
    sharing = [seed for seed in range(40)
               if max(Counter(re.findall(r' name: "(w\d+)"', make(seed)[0])).values(),
                      default=0) > 1]
    assert len(sharing) >= 4, sharing
