"""SSD's MultiBoxLoss (Wei Liu's caffe, branch ssd: multibox_loss_layer.cpp and bbox_util.cpp).

Matching, encoding and mining are checked on small cases worked out by hand (2-4 priors, 1-2
ground-truth boxes); the whole loss and its diffs against a plain transliteration of the fork's
per-item loops written here (GetGroundTruth, MatchBBox, FindMatches, MineHardExamples,
EncodeLocPrediction, EncodeConfPrediction, then SmoothL1Loss/EuclideanLoss and
SoftmaxWithLoss/SigmoidCrossEntropyLoss with the fork's normalizer) on hypothesis-drawn cases;
the gradients by float64 finite differences (the matching and mining are fixed by the forward,
and random draws keep them away from ties under a 1e-6 step); bad parameters and shapes give
LayerErrors; and an SSD-style net built from prototxt text (conv -> loc/conf heads -> Permute,
Flatten, Concat, PriorBox, MultiBoxLoss on an Input label blob) trains with a falling loss,
and on the GPU (the emulator here) gives the CPU's loss and diffs, the loss on host copies.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn.errors import LayerError, NetError
from minicnn.layers import MultiBoxLossLayer
from minicnn.ops.ssd import decode_boxes, encode_boxes, match_boxes
from minicnn.proto import caffe_pb2, parse_text
from minicnn.testing import check_layer_gradient
from tests.gpu.conftest import gpu  # noqa: F401  (the emulator, and a GPU where there is one)

F = np.float32
FLT_MIN = float(np.finfo(np.float32).tiny)
seeds = st.integers(0, 2**32 - 1)


def prior_blob(priors, variance=0.1):
    priors = np.asarray(priors, np.float32)
    var = np.broadcast_to(np.asarray(variance, np.float32), priors.shape)
    return np.stack([priors.reshape(-1), var.reshape(-1)])[None]


def gt_blob(rows):
    return np.asarray(rows, np.float32).reshape(1, 1, -1, 8)


# --- the fork's loops, transliterated (float where the fork keeps NormalizedBBox floats) -------

def ref_size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return F(0)
    return F(F(b[2] - b[0]) * F(b[3] - b[1]))


def ref_iou(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        inter = (F(0), F(0), F(0), F(0))
    else:
        inter = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    w, h = F(inter[2] - inter[0]), F(inter[3] - inter[1])
    if w > 0 and h > 0:
        s = F(w * h)
        return F(s / F(F(ref_size(a) + ref_size(b)) - s))
    return F(0)


def ref_decode(prior, var, loc, code, in_target):
    v = [F(1)] * 4 if in_target else var
    if code == "CORNER":
        return [F(prior[k] + F(v[k] * loc[k])) for k in range(4)]
    pw, ph = F(prior[2] - prior[0]), F(prior[3] - prior[1])
    if code == "CORNER_SIZE":
        s = (pw, ph, pw, ph)
        return [F(prior[k] + F(F(v[k] * loc[k]) * s[k])) for k in range(4)]
    pcx, pcy = F((prior[0] + prior[2]) / F(2)), F((prior[1] + prior[3]) / F(2))
    cx, cy = F(F(F(v[0] * loc[0]) * pw) + pcx), F(F(F(v[1] * loc[1]) * ph) + pcy)
    w, h = F(np.exp(F(v[2] * loc[2])) * pw), F(np.exp(F(v[3] * loc[3])) * ph)
    return [F(cx - w / F(2)), F(cy - h / F(2)), F(cx + w / F(2)), F(cy + h / F(2))]


def ref_encode(prior, var, box, code, in_target):
    v = [F(1)] * 4 if in_target else var
    if code == "CORNER":
        return [F(F(box[k] - prior[k]) / v[k]) for k in range(4)]
    pw, ph = F(prior[2] - prior[0]), F(prior[3] - prior[1])
    if code == "CORNER_SIZE":
        s = (pw, ph, pw, ph)
        return [F(F(F(box[k] - prior[k]) / s[k]) / v[k]) for k in range(4)]
    pcx, pcy = F((prior[0] + prior[2]) / F(2)), F((prior[1] + prior[3]) / F(2))
    bw, bh = F(box[2] - box[0]), F(box[3] - box[1])
    bcx, bcy = F((box[0] + box[2]) / F(2)), F((box[1] + box[3]) / F(2))
    return [F(F(F(bcx - pcx) / pw) / v[0]), F(F(F(bcy - pcy) / ph) / v[1]),
            F(F(np.log(F(bw / pw))) / v[2]), F(F(np.log(F(bh / ph))) / v[3])]


def ref_match_bbox(gts, preds, label, match_type, threshold, ignore_cross):
    """MatchBBox: gts is a list of (label, box)."""
    match, overlaps_out = [-1] * len(preds), [F(0)] * len(preds)
    gt_indices = [g for g, (lab, _) in enumerate(gts) if label == -1 or lab == label]
    if not gt_indices:
        return match, overlaps_out
    overlaps = {}
    for i, p in enumerate(preds):
        if ignore_cross and any(c < 0 or c > 1 for c in p):
            match[i] = -2
            continue
        for j, g in enumerate(gt_indices):
            o = ref_iou(p, gts[g][1])
            if float(o) > 1e-6:
                overlaps_out[i] = max(overlaps_out[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gt_indices)))
    while pool:
        best, best_i, best_j = F(-1), -1, -1
        for i in sorted(overlaps):
            if match[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > best:
                    best, best_i, best_j = overlaps[i][j], i, j
        if best_i == -1:
            break
        match[best_i], overlaps_out[best_i] = gt_indices[best_j], best
        pool.remove(best_j)
    if match_type == "PER_PREDICTION":
        for i in sorted(overlaps):
            if match[i] != -1:
                continue
            best, best_j = F(-1), -1
            for j in range(len(gt_indices)):
                if j in overlaps[i] and overlaps[i][j] >= F(threshold) and overlaps[i][j] > best:
                    best, best_j = overlaps[i][j], j
            if best_j != -1:
                match[i], overlaps_out[i] = gt_indices[best_j], best
    return match, overlaps_out


def ref_multibox(loc, conf, prior, label, *, num_classes, share_location=True,
                 match_type="PER_PREDICTION", overlap_threshold=0.5, use_prior_for_matching=True,
                 background_label_id=0, use_difficult_gt=True, mining_type="MAX_NEGATIVE",
                 neg_pos_ratio=3.0, neg_overlap=0.5, code_type="CORNER",
                 encode_variance_in_target=False, ignore_cross_boundary_bbox=False,
                 bp_inside=False, sample_size=64, loc_loss_type="SMOOTH_L1", conf_loss_type="SOFTMAX",
                 loc_weight=1.0, normalization="VALID"):
    """The fork's Forward_cpu and Backward_cpu (top diff 1), one box at a time. Returns (loss,
    dloc, dconf) where dloc is the fork's (no 1 / variance with encode_variance_in_target)."""
    num, bg = loc.shape[0], background_label_id
    num_priors = prior.shape[2] // 4
    loc_classes = 1 if share_location else num_classes
    flat = prior.reshape(-1)
    priors = [[F(flat[p * 4 + k]) for k in range(4)] for p in range(num_priors)]
    variances = [[F(flat[(num_priors + p) * 4 + k]) for k in range(4)]
                 for p in range(num_priors)]
    gt = {}                                                          # GetGroundTruth
    rows = label.reshape(-1, 8)
    for r in rows:
        if int(r[0]) == -1:
            continue
        if not use_difficult_gt and bool(r[7]):
            continue
        gt.setdefault(int(r[0]), []).append((int(r[1]), [F(v) for v in r[3:7]]))
    loc_preds = [{(-1 if share_location else c): [loc[i, p * loc_classes * 4 + c * 4:
                                                         p * loc_classes * 4 + c * 4 + 4]
                                                  for p in range(num_priors)]
                  for c in range(loc_classes)} for i in range(num)]
    all_match, all_overlap = [], []                                  # FindMatches
    for i in range(num):
        match_idx, match_ov = {}, {}
        if i in gt:
            if not use_prior_for_matching:
                for c in range(loc_classes):
                    lab = -1 if share_location else c
                    if not share_location and lab == bg:
                        continue
                    boxes = [ref_decode(priors[p], variances[p], [F(v) for v in
                                        loc_preds[i][lab][p]], code_type,
                                        encode_variance_in_target) for p in range(num_priors)]
                    match_idx[lab], match_ov[lab] = ref_match_bbox(
                        gt[i], boxes, lab, match_type, overlap_threshold,
                        ignore_cross_boundary_bbox)
            else:
                m, o = ref_match_bbox(gt[i], priors, -1, match_type, overlap_threshold,
                                      ignore_cross_boundary_bbox)
                if share_location:
                    match_idx[-1], match_ov[-1] = m, o
                else:
                    for c in range(loc_classes):
                        if c == bg:
                            continue
                        match_idx[c] = [g if g > -1 and gt[i][g][0] == c else -1 for g in m]
                        match_ov[c] = o
        all_match.append(match_idx)
        all_overlap.append(match_ov)
    num_matches = sum(1 for mi in all_match for m in mi.values() for g in m if g > -1)
    num_negs, all_neg = 0, []

    def loc_pairs():                                                 # EncodeLocPrediction
        out = []
        for i in range(num):
            for lab in sorted(all_match[i]):
                for j, g in enumerate(all_match[i][lab]):
                    if g <= -1:
                        continue
                    enc = ref_encode(priors[j], variances[j], gt[i][g][1], code_type,
                                     encode_variance_in_target)
                    pred = [float(v) for v in loc_preds[i][lab][j]]
                    tgt = [float(v) for v in enc]
                    if bp_inside:                    # a corner outside the image: no gradient
                        box = priors[j] if use_prior_for_matching else ref_decode(
                            priors[j], variances[j], [F(v) for v in loc_preds[i][lab][j]],
                            code_type, encode_variance_in_target)
                        pred = [tgt[k] if box[k] < 0 or box[k] > 1 else pred[k]
                                for k in range(4)]
                    if encode_variance_in_target:
                        pred = [pred[k] / float(variances[j][k]) for k in range(4)]
                        tgt = [tgt[k] / float(variances[j][k]) for k in range(4)]
                    out.append((i, j, 0 if share_location else lab, pred, tgt))
        return out

    def elem_loss(d):
        if loc_loss_type == "L2":
            return 0.5 * d * d, d
        return (0.5 * d * d, d) if abs(d) < 1 else (abs(d) - 0.5, math.copysign(1.0, d))

    if mining_type != "NONE":                                        # MineHardExamples
        loc_loss_prior = [[0.0] * num_priors for _ in range(num)]
        if mining_type == "HARD_EXAMPLE":
            for i, j, _, pred, tgt in loc_pairs():
                loc_loss_prior[i][j] = float(F(sum(elem_loss(a - b)[0]
                                                   for a, b in zip(pred, tgt))))
        for i in range(num):
            losses = []
            for p in range(num_priors):
                lab = bg
                for key in sorted(all_match[i]):
                    if all_match[i][key][p] > -1:
                        lab = gt[i][all_match[i][key][p]][0]
                        break
                x = conf[i, p * num_classes:(p + 1) * num_classes]
                if conf_loss_type == "SOFTMAX":
                    mx = max(x)
                    s = sum(math.exp(v - mx) for v in x)
                    loss = -math.log(max(math.exp(x[lab] - mx) / s, FLT_MIN))
                else:
                    loss = 0.0
                    for c, v in enumerate(x):
                        t = 1 if c == lab else 0
                        loss -= v * (t - (v >= 0)) - math.log(1 + math.exp(v - 2 * v * (v >= 0)))
                losses.append(F(F(loss) + F(loc_loss_prior[i][p])))
            negs = []
            for key in sorted(all_match[i]):
                m, o = all_match[i][key], all_overlap[i][key]
                if mining_type == "MAX_NEGATIVE":
                    cands = [(losses[p], p) for p in range(num_priors)
                             if m[p] == -1 and o[p] < F(neg_overlap)]
                    num_pos = sum(1 for g in m if g > -1)
                    num_sel = min(int(F(num_pos) * F(neg_pos_ratio)), len(cands))
                else:
                    cands = [(losses[p], p) for p in range(num_priors)]
                    num_sel = min(sample_size, len(cands))
                cands.sort(key=lambda t: (-t[0], t[1]))
                sel = {p for _, p in cands[:num_sel]}
                for p in range(num_priors):
                    if m[p] > -1:
                        if mining_type == "HARD_EXAMPLE" and p not in sel:
                            m[p] = -1
                            num_matches -= 1
                    elif m[p] == -1 and p in sel:
                        negs.append(p)
                        num_negs += 1
            all_neg.append(negs)
    normalizer = max(1.0, {"FULL": num * num_priors, "VALID": num_matches, "BATCH_SIZE": num,
                           "NONE": 1}[normalization])
    dloc = np.zeros_like(loc)
    loc_loss = 0.0
    if num_matches >= 1:
        for i, j, col, pred, tgt in loc_pairs():
            for k in range(4):
                val, grad = elem_loss(pred[k] - tgt[k])
                loc_loss += val
                dloc[i, loc_classes * 4 * j + col * 4 + k] = grad * loc_weight / normalizer
    conf_rows = []          # EncodeConfPrediction: (image, prior, softmax label, targets)
    for i in range(num):
        if mining_type != "NONE":
            for key in sorted(all_match[i]):
                for j, g in enumerate(all_match[i][key]):
                    if g > -1:
                        t = [float(bg)] * num_classes          # the fork fills with the bg id
                        t[gt[i][g][0]] = 1.0
                        conf_rows.append((i, j, gt[i][g][0], t))
            for j in all_neg[i]:
                t = [float(bg)] * num_classes
                if 0 <= bg < num_classes:
                    t[bg] = 1.0
                conf_rows.append((i, j, bg, t))
        else:
            # (the fork's LOGISTIC here steps its target pointer by P per image; minicnn puts
            # each image's targets at its own priors)
            for j in range(num_priors):
                labs = [gt[i][all_match[i][key][j]][0] for key in sorted(all_match[i])
                        if all_match[i][key][j] > -1]
                t = [float(bg)] * num_classes
                for lab in labs:
                    t[lab] = 1.0
                conf_rows.append((i, j, labs[-1] if labs else bg, t))
    dconf = np.zeros_like(conf)
    conf_loss = 0.0
    for i, j, lab, t in conf_rows:
        x = conf[i, j * num_classes:(j + 1) * num_classes]
        if conf_loss_type == "SOFTMAX":
            mx = max(x)
            e = [math.exp(v - mx) for v in x]
            p = [v / sum(e) for v in e]
            conf_loss -= math.log(max(p[lab], FLT_MIN))
            for c in range(num_classes):
                dconf[i, j * num_classes + c] = (p[c] - (c == lab)) / normalizer
        else:
            for c, v in enumerate(x):
                conf_loss -= v * (t[c] - (v >= 0)) - math.log(1 + math.exp(v - 2 * v * (v >= 0)))
                dconf[i, j * num_classes + c] = (1 / (1 + math.exp(-v)) - t[c]) / normalizer
    loss = loc_weight * loc_loss / normalizer + conf_loss / normalizer
    return loss, dloc, dconf


# --- matching, encoding and mining, by hand ----------------------------------------------------

A, B, C = (0, 0, .5, .5), (.25, .25, .75, .75), (.5, .5, 1, 1)
GT1, GT2 = (0, 0, .5, .5), (.3, .3, .8, .8)
# IoU by hand: GT1 with A 1, with B .0625/.4375 = 1/7, with C 0 (they touch at a corner);
# GT2 with A .04/.46, with B .2025/.2975, with C .09/.41


def test_match_bipartite_then_per_prediction_by_hand():
    priors = np.array([A, B, C], np.float32)
    gt = np.array([GT1, GT2], np.float32)
    m, o = match_boxes(gt, priors, "BIPARTITE")
    assert m.tolist() == [0, 1, -1]
    np.testing.assert_allclose(o, [1, .2025 / .2975, .09 / .41], rtol=1e-6)
    m, _ = match_boxes(gt, priors, "PER_PREDICTION", overlap_threshold=0.2)
    assert m.tolist() == [0, 1, 1]                  # C takes GT2 (.2195 >= .2)
    m, _ = match_boxes(gt, priors, "PER_PREDICTION", overlap_threshold=0.5)
    assert m.tolist() == [0, 1, -1]
    # greedy: B's best gt is GT1' = B itself (IoU 1), so GT2 falls to C although B overlaps it more
    m, o = match_boxes(np.array([GT2, B], np.float32), np.array([B, C], np.float32), "BIPARTITE")
    assert m.tolist() == [1, 0]
    np.testing.assert_allclose(o, [1, .09 / .41], rtol=1e-6)
    # a prior crossing the border is left out (-2) when asked
    m, o = match_boxes(np.array([GT1], np.float32), np.array([(-.1, 0, .4, .5), A], np.float32),
                       "PER_PREDICTION", 0.1, ignore_cross_boundary=True)
    assert m.tolist() == [-2, 0] and o[0] == 0
    # no ground truth: nothing matched
    m, o = match_boxes(np.zeros((0, 4), np.float32), np.array([A], np.float32))
    assert m.tolist() == [-1] and o.tolist() == [0]


def test_encode_by_hand_and_decode_inverts_it():
    v = np.array([[.1, .1, .2, .2]], np.float32)
    np.testing.assert_allclose(encode_boxes(np.array([A], np.float32), v,
                                            np.array([(.1, .1, .5, .5)]), "CORNER"),
                               [[1, 1, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(encode_boxes(np.array([B], np.float32), v,
                                            np.array([(.25, .25, 1.25, 1.25)]), "CENTER_SIZE"),
                               [[5, 5, math.log(2) / .2, math.log(2) / .2]], rtol=1e-6)
    np.testing.assert_allclose(encode_boxes(np.array([A], np.float32), v,
                                            np.array([(.1, .1, .6, .6)]), "CORNER_SIZE",
                                            encode_variance_in_target=True),
                               [[.2, .2, .2, .2]], rtol=1e-6)
    rng = np.random.default_rng(3)
    lo = rng.uniform(0, .5, (20, 2))
    priors = np.hstack([lo, lo + rng.uniform(.1, .5, (20, 2))]).astype(np.float32)
    lo = rng.uniform(0, .5, (20, 2))
    boxes = np.hstack([lo, lo + rng.uniform(.1, .5, (20, 2))]).astype(np.float32)
    var = rng.uniform(.1, .3, (20, 4)).astype(np.float32)
    for code in ("CORNER", "CENTER_SIZE", "CORNER_SIZE"):
        for in_target in (False, True):
            enc = encode_boxes(priors, var, boxes, code, in_target)
            want = np.array([ref_encode(p, v, b, code, in_target)
                             for p, v, b in zip(priors, var, boxes)])
            np.testing.assert_allclose(enc, want, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(decode_boxes(priors, var, enc, code, in_target), boxes,
                                       atol=1e-5)


def test_max_negative_mining_by_hand():
    # four priors; the gt is A itself, so A is the one positive; D overlaps it (IoU 1/2: below
    # overlap_threshold .6, not below neg_overlap .5) and is neither positive nor a candidate;
    # B and C are candidates: neg_pos_ratio 1 takes the one with the larger background loss
    D = (0, 0, .5, 1)
    prior = prior_blob([A, B, C, D])
    label = gt_blob([0, 1, 0, *A, 0])
    conf = np.zeros((1, 4 * 2))
    conf[0, 1::2] = [0., 2., 1., 5.]                # class-1 scores: B's bg loss > C's
    loc = np.zeros((1, 16))
    layer = MultiBoxLossLayer(num_classes=2, neg_pos_ratio=1, overlap_threshold=.6)
    loss = layer(loc, conf, prior, label)
    assert layer.info["negatives"][0].tolist() == [1]
    assert layer.info["matches"][0][-1][0].tolist() == [0, -1, -1, -1]
    # loc: the target of A is 0, the prediction 0 -> no loc loss; conf: A has label 1,
    # B background; normalized by 1 match
    want = -math.log(1 / (1 + math.exp(-0.))) - math.log(1 / (1 + math.exp(2.)))
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    dloc, dconf = layer.backprop()[:2]
    assert not dloc.any()
    np.testing.assert_allclose(dconf[0, 4:8], 0)    # C and D: not in the loss
    p = 1 / (1 + math.exp(-2.))
    np.testing.assert_allclose(dconf[0, 2:4], [1 - p - 1, p])
    # neg_pos_ratio 2: C joins; NONE: every prior but A counts as background, D included
    layer = MultiBoxLossLayer(num_classes=2, neg_pos_ratio=2, overlap_threshold=.6)
    layer(loc, conf, prior, label)
    assert layer.info["negatives"][0].tolist() == [1, 2]
    layer = MultiBoxLossLayer(num_classes=2, mining_type="NONE", overlap_threshold=.6)
    loss = layer(loc, conf, prior, label)
    want += -math.log(1 / (1 + math.exp(1.))) - math.log(1 / (1 + math.exp(5.)))
    np.testing.assert_allclose(loss, want, rtol=1e-12)


def test_loc_loss_by_hand_smooth_l1_and_l2():
    prior = prior_blob([A, C])
    label = gt_blob([0, 1, 0, .1, .1, .5, .5, 0])   # matches A; CORNER target (1, 1, 0, 0)
    loc = np.array([[3., 1.5, 0.5, 0., 0, 0, 0, 0]])
    conf = np.zeros((1, 4))
    smooth = MultiBoxLossLayer(num_classes=2, mining_type="NONE", loc_weight=2,
                               propagate_down=[True, False, False, False])
    # diff (2, .5, .5, 0): smooth L1 1.5 + .125 + .125 + 0 = 1.75, times loc_weight 2
    np.testing.assert_allclose(smooth(loc, conf, prior, label), 3.5, rtol=1e-6)
    np.testing.assert_allclose(smooth.backprop()[0][0, :4], [2, 1, 1, 0], rtol=1e-6)
    l2 = MultiBoxLossLayer(num_classes=2, mining_type="NONE", loc_loss_type="L2",
                           propagate_down=[True, False, False, False])
    np.testing.assert_allclose(l2(loc, conf, prior, label), (4 + .25 + .25) / 2, rtol=1e-6)



@pytest.mark.parametrize("bp_inside, want", [(False, [-0.5, 0.5, 0.5, 1.0]),
                                             (True, [0.0, 0.5, 0.5, 0.0])])
def test_bp_inside_zeroes_each_coordinate_outside_the_image_by_hand(bp_inside, want):
    """The fork's EncodeLocPrediction with bp_inside: a matched prior's coordinate below 0 or
    above 1 (here xmin -0.1 and ymax 1.2) takes the target in place of the prediction, so it
    adds no loss and gets no gradient; the others are as without bp_inside."""
    prior = prior_blob([[-.1, .2, .6, 1.2]])
    label = gt_blob([0, 1, 0, 0., .2, .6, 1., 0])     # IoU .686: CORNER target (1, 0, 0, -2)
    loc = np.full((1, 4), .5)
    layer = MultiBoxLossLayer(num_classes=2, mining_type="NONE", bp_inside=bp_inside,
                              propagate_down=[True, False, False, False])
    layer(loc, np.zeros((1, 2)), prior, label)
    np.testing.assert_allclose(layer.backprop()[0][0], want, rtol=1e-6, atol=1e-12)

def test_gt_rows_item_minus_one_difficult_and_normalization():
    prior = prior_blob([A, C])
    rows = [[-1, -1, -1, -1, -1, -1, -1, -1],       # no box, as AnnotatedData pads
            [-1, 0, 0, 0, 0, 0, 0, 0],              # skipped before its (background) label
            [0, 1, 0, *A, 1],                       # difficult
            [1, 2, 0, *C, 0]]
    loc = np.zeros((2, 8))
    conf = np.random.default_rng(1).standard_normal((2, 6))
    on = MultiBoxLossLayer(num_classes=3, mining_type="NONE")
    on(loc, conf, prior, gt_blob(rows))
    assert on.info["num_matches"] == 2 and set(on.info["matches"]) == {0, 1}
    off = MultiBoxLossLayer(num_classes=3, mining_type="NONE", use_difficult_gt=False)
    loss = off(loc, conf, prior, gt_blob(rows))
    assert off.info["num_matches"] == 1 and set(off.info["matches"]) == {1}
    for mode, n in (("FULL", 4), ("BATCH_SIZE", 2), ("NONE", 1), ("VALID", 1)):
        layer = MultiBoxLossLayer(num_classes=3, mining_type="NONE", use_difficult_gt=False,
                                  loss_param={"normalization": mode})
        np.testing.assert_allclose(layer(loc, conf, prior, gt_blob(rows)) * n, loss, rtol=1e-12)
    legacy = MultiBoxLossLayer(num_classes=3, mining_type="NONE", use_difficult_gt=False,
                               loss_param={"normalize": False})     # BATCH_SIZE
    np.testing.assert_allclose(legacy(loc, conf, prior, gt_blob(rows)) * 2, loss, rtol=1e-12)


# --- against the transliteration, on drawn cases -----------------------------------------------

@st.composite
def multibox_cases(draw):
    rng = np.random.default_rng(draw(seeds))
    num, num_priors = draw(st.integers(1, 3)), draw(st.integers(2, 7))
    num_classes = draw(st.integers(2, 4))
    share = draw(st.sampled_from([True, True, False]))     # mining needs it: more often
    settings_ = {
        "num_classes": num_classes, "share_location": share,
        "match_type": draw(st.sampled_from(["BIPARTITE", "PER_PREDICTION"])),
        "overlap_threshold": draw(st.sampled_from([0.1, 0.3, 0.5])),
        "use_prior_for_matching": draw(st.booleans()),
        "background_label_id": draw(st.integers(0, num_classes - 1)),
        "use_difficult_gt": draw(st.booleans()),
        "mining_type": draw(st.sampled_from(["NONE", "MAX_NEGATIVE", "HARD_EXAMPLE"]))
        if share else "NONE",
        "neg_pos_ratio": draw(st.sampled_from([0.5, 1.0, 3.0])),
        "neg_overlap": draw(st.sampled_from([0.2, 0.5])),
        "code_type": draw(st.sampled_from(["CORNER", "CENTER_SIZE", "CORNER_SIZE"])),
        "encode_variance_in_target": draw(st.booleans()),
        "ignore_cross_boundary_bbox": draw(st.booleans()),
        "bp_inside": draw(st.booleans()),
        "sample_size": draw(st.integers(1, 5)),
        "loc_loss_type": draw(st.sampled_from(["SMOOTH_L1", "L2"])),
        "conf_loss_type": draw(st.sampled_from(["SOFTMAX", "LOGISTIC"])),
        "loc_weight": draw(st.sampled_from([1.0, 0.5])),
        "normalization": draw(st.sampled_from(["FULL", "VALID", "BATCH_SIZE", "NONE"]))}
    lo = rng.uniform(-.1, .7, (num_priors, 2))
    priors = np.hstack([lo, lo + rng.uniform(.1, .5, (num_priors, 2))])
    prior = prior_blob(priors, rng.uniform(.1, .3, (num_priors, 4)))
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        lo = rng.uniform(0, .6, 2)
        box = [*lo, *(lo + rng.uniform(.1, .4, 2))]
        lab = int(rng.choice([c for c in range(num_classes)
                              if c != settings_["background_label_id"]]))
        rows.append([int(rng.integers(-1, num)), lab, 0, *box, int(rng.random() < .3)])
    loc_classes = 1 if share else num_classes
    loc = rng.standard_normal((num, num_priors * loc_classes * 4)) * 0.3
    conf = rng.standard_normal((num, num_priors * num_classes))
    return loc, conf, prior, gt_blob(rows), settings_


def layer_for(s, **extra):
    fields = {k: v for k, v in s.items() if k != "normalization"}
    return MultiBoxLossLayer(loss_param={"normalization": s["normalization"]}, **fields, **extra)


@settings(max_examples=60, deadline=None)
@given(multibox_cases())
def test_matches_the_forks_loops(case):
    loc, conf, prior, label, s = case
    layer = layer_for(s)
    loss = layer(loc, conf, prior, label)
    dloc, dconf = layer.backprop()[:2]
    want, want_dloc, want_dconf = ref_multibox(loc, conf, prior, label, **s)
    np.testing.assert_allclose(loss, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dconf, want_dconf, rtol=1e-9, atol=1e-12)
    if s["encode_variance_in_target"]:           # minicnn's includes d(pred / v)/d(pred)
        num_priors = prior.shape[2] // 4
        var = prior[0, 1].reshape(num_priors, 1, 4)
        loc_classes = loc.shape[1] // (num_priors * 4)
        want_dloc = (want_dloc.reshape(-1, num_priors, loc_classes, 4) / var).reshape(loc.shape)
    np.testing.assert_allclose(dloc, want_dloc, rtol=1e-6, atol=1e-12)


def test_float32_matches_float64():
    rng = np.random.default_rng(4)
    lo = rng.uniform(0, .6, (12, 2))
    boxes = np.vstack([np.hstack([lo, lo + rng.uniform(.1, .4, (12, 2))]),
                       [(.12, .1, .5, .52), (.4, .35, .9, .8)]])
    prior = prior_blob(boxes)
    label = gt_blob([[0, 1, 0, .1, .1, .5, .5, 0], [1, 2, 0, .4, .3, .9, .8, 0]])
    loc, conf = rng.standard_normal((2, 56)) * .3, rng.standard_normal((2, 42))
    loc, conf = loc.astype(np.float32), conf.astype(np.float32)
    want = ref_multibox(loc.astype(np.float64), conf.astype(np.float64), prior, label,
                        num_classes=3)
    layer = MultiBoxLossLayer(num_classes=3)
    got = layer(loc, conf, prior, label)
    assert layer.info["num_matches"] >= 2 and want[0] > 1 and got.dtype == np.float32
    np.testing.assert_allclose(got, want[0], rtol=1e-5)
    for g, w in zip(layer.backprop()[:2], want[1:]):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# --- gradients by finite differences -----------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(multibox_cases())
def test_gradient_matches_finite_differences(case):
    loc, conf, prior, label, s = case
    check_layer_gradient(lambda: layer_for(s), [loc, conf, prior, label], check_bottoms=[0, 1],
                         rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bp_inside", [False, True])
def test_gradient_pinned_ssd_settings(bp_inside):
    # SSD's own: CENTER_SIZE, MAX_NEGATIVE, neg_pos_ratio 3, VALID, variances .1/.2
    rng = np.random.default_rng(9)
    lo = rng.uniform(-.05, .6, (16, 2))
    prior = prior_blob(np.hstack([lo, lo + rng.uniform(.15, .45, (16, 2))]), [.1, .1, .2, .2])
    label = gt_blob([[0, 1, 0, .1, .1, .5, .6, 0], [0, 2, 0, .5, .4, .9, .9, 0],
                     [1, 1, 0, .2, .3, .7, .7, 0], [-1] * 8])
    loc, conf = rng.standard_normal((2, 64)) * .5, rng.standard_normal((2, 48))
    fields = {"num_classes": 3, "code_type": "CENTER_SIZE", "bp_inside": bp_inside,
              "ignore_cross_boundary_bbox": True}
    layer = MultiBoxLossLayer(**fields)
    layer(loc, conf, prior, label)
    assert layer.info["num_matches"] >= 2 and len(layer.info["negatives"][0]) >= 2
    check_layer_gradient(lambda: MultiBoxLossLayer(**fields), [loc, conf, prior, label],
                         check_bottoms=[0, 1], rtol=1e-5)


def test_hard_example_with_nms_keeps_the_best_of_overlapping_candidates():
    # three priors, two of them nearly the same box: nms (threshold .5) keeps the one with
    # the larger loss, then the sample of 2 takes the third
    P1, P2, P3 = (0, 0, .5, .5), (0, 0, .5, .52), (.5, .5, 1, 1)
    prior = prior_blob([P1, P2, P3])
    label = gt_blob([0, 1, 0, .6, .6, 1, 1, 0])     # matches P3
    conf = np.array([[0., 3., 0., 4., 0., -1.]])     # bg losses: P2 > P1; P3 positive
    loc = np.zeros((1, 12))
    fields = {"num_classes": 2, "mining_type": "HARD_EXAMPLE", "sample_size": 2,
              "nms_param": {"nms_threshold": .5, "top_k": 3}}
    layer = MultiBoxLossLayer(**fields)
    layer(loc, conf, prior, label)
    # losses: P2 (bg, 4) > P1 (bg, 3) > P3; nms drops P1 under P2; 2 taken: P2 and P3
    assert layer.info["negatives"][0].tolist() == [1]
    assert layer.info["matches"][0][-1][0].tolist() == [-1, -1, 0]
    # without nms the two highest losses are P2 and P1: P3, the positive, is dropped
    layer = MultiBoxLossLayer(num_classes=2, mining_type="HARD_EXAMPLE", sample_size=2)
    layer(loc, conf, prior, label)
    assert layer.info["negatives"][0].tolist() == [0, 1] and layer.info["num_matches"] == 0


# --- bad input ---------------------------------------------------------------------------------

def valid_inputs():
    return np.zeros((1, 8)), np.zeros((1, 6)), prior_blob([A, C]), gt_blob([0, 1, 0, *A, 0])


@pytest.mark.parametrize("fields, inputs, match", [
    ({}, None, "num_classes must be given"),
    ({"num_classes": 3, "share_location": False}, None, "needs share_location: true"),
    ({"num_classes": 3, "do_neg_mining": False}, None, "contradicts mining_type MAX_NEGATIVE"),
    ({"num_classes": 3, "background_label_id": 3}, None, "background_label_id 3"),
    ({"num_classes": 3, "mining_type": "HARD_EXAMPLE", "sample_size": 0}, None, "sample_size"),
    ({"num_classes": 3, "map_object_to_agnostic": True}, None, "num_classes 2"),
    ({"num_classes": 2}, None, r"conf has shape \(1, 6\).*num_classes 2"),
    ({"num_classes": 3}, (np.zeros((1, 12)),), r"loc has shape \(1, 12\).*2 priors"),
    ({"num_classes": 3}, (None, np.zeros((2, 6))), "loc has 1 items but conf has 2"),
    ({"num_classes": 3}, (None, None, None, np.zeros((1, 1, 1, 7))), "rows of 8"),
    ({"num_classes": 3}, (None, None, None, gt_blob([0, 0, 0, *A, 0])), "background label 0"),
    ({"num_classes": 3}, (None, None, None, gt_blob([0, 5, 0, *A, 0])), "label 5"),
])
def test_bad_parameters_and_shapes(fields, inputs, match):
    arrays = list(valid_inputs())
    for k, a in enumerate(inputs or ()):
        if a is not None:
            arrays[k] = a
    with pytest.raises(LayerError, match=match):
        MultiBoxLossLayer(**fields)(*arrays)


def test_no_diff_to_priors_or_labels():
    layer = MultiBoxLossLayer(num_classes=3)
    layer(*valid_inputs())
    bottom, top = layer._standalone
    for k, what in ((2, "prior"), (3, "label")):
        down = [True, True, False, False]
        down[k] = True
        with pytest.raises(LayerError, match=f"cannot backpropagate to its {what}"):
            layer.backward(top, down, bottom)
    assert [layer.allow_force_backward(k) for k in range(4)] == [True, True, False, False]


# --- an SSD-style net, as the fork's users write it --------------------------------------------

SSD_NET = """
name: "tiny_ssd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv1_mbox_loc" type: "Convolution" bottom: "conv1" top: "conv1_mbox_loc"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "conv1_mbox_loc_perm" type: "Permute" bottom: "conv1_mbox_loc"
  top: "conv1_mbox_loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv1_mbox_loc_flat" type: "Flatten" bottom: "conv1_mbox_loc_perm"
  top: "conv1_mbox_loc_flat" flatten_param { axis: 1 } }
layer { name: "conv1_mbox_conf" type: "Convolution" bottom: "conv1" top: "conv1_mbox_conf"
  convolution_param { num_output: 9 kernel_size: 3 pad: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "conv1_mbox_conf_perm" type: "Permute" bottom: "conv1_mbox_conf"
  top: "conv1_mbox_conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv1_mbox_conf_flat" type: "Flatten" bottom: "conv1_mbox_conf_perm"
  top: "conv1_mbox_conf_flat" flatten_param { axis: 1 } }
layer { name: "conv1_mbox_priorbox" type: "PriorBox" bottom: "conv1" bottom: "data"
  top: "conv1_mbox_priorbox"
  prior_box_param { min_size: 6 max_size: 12 aspect_ratio: 2 flip: false clip: false
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 2 offset: 0.5 } }
layer { name: "mbox_loc" type: "Concat" bottom: "conv1_mbox_loc_flat" top: "mbox_loc"
  concat_param { axis: 1 } }
layer { name: "mbox_conf" type: "Concat" bottom: "conv1_mbox_conf_flat" top: "mbox_conf"
  concat_param { axis: 1 } }
layer { name: "mbox_priorbox" type: "Concat" bottom: "conv1_mbox_priorbox" top: "mbox_priorbox"
  concat_param { axis: 2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss"
  bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox" bottom: "label"
  top: "mbox_loss"
  include { phase: TRAIN }
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param {
    loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0 num_classes: 3
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE
  }
}
"""

SSD_LABEL = np.array([[0, 1, 0, .1, .1, .45, .5, 0], [1, 2, 0, .5, .4, .95, .9, 0],
                      [1, 1, 0, .05, .55, .4, .95, 1]], np.float32).reshape(1, 1, 3, 8)


def test_ssd_style_net_trains_with_a_falling_loss():
    minicnn.set_random_seed(3)
    param = caffe_pb2.SolverParameter(net_param=parse_text(SSD_NET), base_lr=0.01,
                                      lr_policy="fixed", momentum=0.9, max_iter=40)
    solver = minicnn.get_solver(param, log=lambda message: None)
    assert solver.net.blobs["mbox_priorbox"].shape == (1, 2, 8 * 8 * 3 * 4)
    solver.net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    solver.net.blobs["label"].data[...] = SSD_LABEL
    losses = []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["mbox_loss"].data))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_net_without_propagate_down_stops_at_backward_as_the_fork_does():
    text = SSD_NET.replace(
        "propagate_down: true propagate_down: true propagate_down: false propagate_down: false",
        "")
    net = minicnn.Net(parse_text(text), phase=minicnn.TRAIN)
    net.blobs["label"].data[...] = SSD_LABEL
    net.forward(data=np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(NetError, match="cannot backpropagate to its prior input"):
        net.backward()


def test_ssd_net_on_the_gpu_runs_the_loss_on_the_host(gpu, tmp_path):
    from minicnn import cuda
    minicnn.set_random_seed(4)
    net = minicnn.Net(parse_text(SSD_NET), phase=minicnn.TRAIN)
    weights = str(tmp_path / "net.caffemodel")
    net.save(weights)
    data = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)
    inputs = {"data": data, "label": SSD_LABEL}
    want = float(net.forward(**inputs)["mbox_loss"])
    net.backward()
    gpu_net = minicnn.Net(parse_text(SSD_NET), weights, phase=minicnn.TRAIN, device=0)
    got = float(cuda.to_host(gpu_net.forward(**inputs)["mbox_loss"]))
    gpu_net.backward()
    assert "MultiBoxLoss" in [gpu_net.layers[i].type for i in gpu_net._mirrors]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name in ("conv1", "conv1_mbox_loc", "conv1_mbox_conf"):
        np.testing.assert_allclose(cuda.to_host(gpu_net.params[name][0].diff),
                                   net.params[name][0].diff, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field, misspelt, allowed", [
    ("mining_type", "MAX_NEGATIV", "MAX_NEGATIVE"), ("loc_loss_type", "SMOOTH_L2", "SMOOTH_L1"),
    ("conf_loss_type", "SIGMOID", "LOGISTIC"), ("normalization", "valid", "VALID")])
def test_op_refuses_an_unknown_type_name(field, misspelt, allowed):
    # the layer passes the enums' names; a caller of the op with a misspelt one was given
    # HARD_EXAMPLE's candidates without HARD_EXAMPLE's loc term (mining_type), smooth L1 for
    # another loc loss, the logistic loss for another conf loss: a different loss, no error
    prior, label = prior_blob([A, B, C]), gt_blob([0, 1, 0, *A, 0])
    with pytest.raises(ValueError, match=f"{field} must be one of .*{allowed}"):
        minicnn.ops.multibox_loss_forward(np.zeros((1, 12)), np.zeros((1, 6)), prior, label,
                                          num_classes=2, **{field: misspelt})
