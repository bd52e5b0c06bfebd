"""Whole training runs against PyTorch as an independent oracle: a small net (Convolution,
ReLU, BatchNorm, Scale, Pooling, InnerProduct, SoftmaxWithLoss; lr_mult 2 and decay_mult 0 on
the biases) trained for 20 iterations in float64 by minicnn's solver and by torch.optim on the
same weights and batches, the weights compared after every iteration. The two engines'
gradients differ by ~1e-12 relative (summation order in BatchNorm and the loss), the weights
after 20 iterations by at most ~6e-12; a changed update rule, lr policy or weight decay moves
them by 1e-8 (a float32 learning rate) to 1e-1.

Caffe's rules map onto torch.optim as follows (ParamSpec lr_mult and decay_mult become each
parameter group's lr and weight_decay; L2 weight decay is torch's coupled weight_decay; the
lr_policy is a LambdaLR with Caffe's formula, /work/shared/reference/caffe-semantics.md §1c):

  SGD, Nesterov  Caffe's history holds the learning rate (v = m v + lr g; torch's buffer is
                 v / lr): torch's momentum buffer is rescaled by lr_prev / lr when lr changes.
  AdaGrad        torch Adagrad with eps = delta, initial_accumulator_value 0, lr_decay 0.
  RMSProp        torch RMSprop with alpha = rms_decay, eps = delta.
  AdaDelta       torch Adadelta with rho = momentum, eps = delta, lr = base_lr (Caffe scales
                 the step by the learning rate too).
  Adam           torch Adam with betas (momentum, momentum2); Caffe adds delta to the
                 uncorrected sqrt(v), torch eps to sqrt(v / (1 - b2^t)), so torch's eps is set
                 to delta / sqrt(1 - b2^t) before each step.
  L1 decay       added by hand: g += decay * sign(w) (torch's weight_decay is L2 only).
  clip_gradients by hand: torch's clip_grad_norm_ divides by norm + 1e-6; Caffe by the norm.
  iter_size      torch accumulates the backward of iter_size batches too; the sum is clipped,
                 then divided by iter_size, then weight decay is added (Caffe's order).
"""

import math

import numpy as np
import pytest

import minicnn
from minicnn.proto import caffe_pb2, parse_text

torch = pytest.importorskip("torch")
F = torch.nn.functional

BATCH, ITERS = 4, 20
NET = f"""
name: "small"
layer {{ name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param {{ batch_size: {BATCH} channels: 2 height: 6 width: 6 }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: 3 kernel_size: 3 pad: 1
    weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "relu" }}
layer {{ name: "bn" type: "BatchNorm" bottom: "relu" top: "bn" }}
layer {{ name: "scale" type: "Scale" bottom: "bn" top: "bn"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  scale_param {{ bias_term: true filler {{ type: "gaussian" mean: 1 std: 0.1 }}
                 bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "bn" top: "pool"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: 5
    weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""
LEARNED = [("conv", 0), ("conv", 1), ("scale", 0), ("scale", 1), ("ip", 0), ("ip", 1)]
MULTS = [(1, 1), (2, 0), (1, 1), (2, 0), (1, 1), (2, 0)]      # (lr_mult, decay_mult)

RNG = np.random.default_rng(7)
DATA = RNG.standard_normal((3 * BATCH, 2, 6, 6))
LABELS = RNG.integers(0, 5, 3 * BATCH).astype(np.float64)

F32 = lambda v: float(np.float32(v))          # noqa: E731  (solver fields are float32)

# name: (solver fields, environment); every case runs ITERS iterations
CASES = {
    "SGD-fixed": (dict(type="SGD", base_lr=0.05, momentum=0.9, weight_decay=0.005), {}),
    "SGD-step": (dict(type="SGD", base_lr=0.05, momentum=0.9, weight_decay=0.005,
                      lr_policy="step", gamma=0.5, stepsize=6), {}),
    "SGD-numpy-exp": (dict(type="SGD", base_lr=0.05, momentum=0.9, weight_decay=0.005,
                           lr_policy="exp", gamma=0.95),
                      {"MINICNN_CPU": "ref", "MINICNN_FUSE": "0"}),
    "Nesterov-multistep": (dict(type="Nesterov", base_lr=0.05, momentum=0.8, weight_decay=0.01,
                                lr_policy="multistep", gamma=0.3, stepvalue=[5, 12]), {}),
    "Nesterov-numpy-multistep": (dict(type="Nesterov", base_lr=0.05, momentum=0.8,
                                      weight_decay=0.01, lr_policy="multistep", gamma=0.3,
                                      stepvalue=[5, 12]),
                                 {"MINICNN_CPU": "ref", "MINICNN_FUSE": "0"}),
    "AdaGrad-inv": (dict(type="AdaGrad", base_lr=0.05, weight_decay=0.005, delta=1e-6,
                         lr_policy="inv", gamma=0.1, power=0.75), {}),
    "RMSProp-exp": (dict(type="RMSProp", base_lr=0.01, weight_decay=0.005, rms_decay=0.9,
                         delta=1e-6, lr_policy="exp", gamma=0.97), {}),
    "AdaDelta-fixed": (dict(type="AdaDelta", base_lr=1.0, momentum=0.95, weight_decay=0.005,
                            delta=1e-6), {}),
    "Adam-poly": (dict(type="Adam", base_lr=0.01, momentum=0.9, momentum2=0.999,
                       weight_decay=0.005, delta=1e-4, lr_policy="poly", power=1.5,
                       max_iter=30), {}),
    "SGD-L1-clip-itersize2-sigmoid": (dict(type="SGD", base_lr=0.05, momentum=0.9,
                                           weight_decay=0.01, regularization_type="L1",
                                           clip_gradients=0.5, iter_size=2, lr_policy="sigmoid",
                                           gamma=0.2, stepsize=8), {}),
    "Adam-L1-clip-itersize2": (dict(type="Adam", base_lr=0.01, momentum=0.9, momentum2=0.99,
                                    weight_decay=0.01, regularization_type="L1",
                                    clip_gradients=0.5, iter_size=2, delta=1e-4), {}),
}


def caffe_rate(p, it):
    """The learning rate at iteration ``it`` as Caffe's SGDSolver<double>::GetLearningRate
    computes it (float32 solver fields; inv's gamma * iter is a float product)."""
    base, policy = F32(p.get("base_lr")), p.get("lr_policy", "fixed")
    gamma, power = F32(p.get("gamma", 0)), F32(p.get("power", 0))
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (it // p["stepsize"])
    if policy == "multistep":
        return base * gamma ** sum(it >= s for s in p["stepvalue"])
    if policy == "exp":
        return base * gamma ** it
    if policy == "inv":
        return base * (1.0 + float(np.float32(gamma) * np.float32(it))) ** -power
    if policy == "poly":
        return base * (1.0 - it / p["max_iter"]) ** power
    if policy == "sigmoid":
        return base / (1.0 + math.exp(-gamma * (it - p["stepsize"])))
    raise AssertionError(policy)


def torch_forward(w, x, labels):
    y = F.relu(F.conv2d(x, w[0], w[1], padding=1))
    y = F.batch_norm(y, None, None, training=True, eps=1e-5)
    y = y * w[2].view(1, -1, 1, 1) + w[3].view(1, -1, 1, 1)
    y = F.max_pool2d(y, 2, 2, ceil_mode=True)
    return F.cross_entropy(F.linear(y.flatten(1), w[4], w[5]), labels)


def torch_optimizer(p, weights):
    kind, wd = p["type"], F32(p.get("weight_decay", 0))
    l2 = p.get("regularization_type", "L2") == "L2"
    groups = [{"params": [w], "lr": F32(p["base_lr"]) * lr_mult,
               "weight_decay": wd * decay_mult if l2 else 0.0}
              for w, (lr_mult, decay_mult) in zip(weights, MULTS)]
    m, delta = F32(p.get("momentum", 0)), F32(p.get("delta", 1e-8))
    if kind in ("SGD", "Nesterov"):
        return torch.optim.SGD(groups, lr=1, momentum=m, nesterov=kind == "Nesterov")
    if kind == "AdaGrad":
        return torch.optim.Adagrad(groups, lr=1, eps=delta)
    if kind == "RMSProp":
        return torch.optim.RMSprop(groups, lr=1, alpha=F32(p["rms_decay"]), eps=delta)
    if kind == "AdaDelta":
        return torch.optim.Adadelta(groups, lr=1, rho=m, eps=delta)
    if kind == "Adam":
        return torch.optim.Adam(groups, lr=1, betas=(m, F32(p["momentum2"])), eps=delta)
    raise AssertionError(kind)


def torch_run(p, initial, iters):
    """The weights after each of ``iters`` iterations, trained by torch.optim."""
    weights = [torch.tensor(w, requires_grad=True) for w in initial]
    opt = torch_optimizer(p, weights)
    base = F32(p["base_lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: caffe_rate(p, it) / base)
    iter_size, clip = p.get("iter_size", 1), F32(p.get("clip_gradients", -1))
    l1 = F32(p.get("weight_decay", 0)) if p.get("regularization_type") == "L1" else 0.0
    batch, previous_lr, history = 0, [g["lr"] for g in opt.param_groups], []
    for it in range(iters):
        opt.zero_grad()
        for _ in range(iter_size):
            rows = slice(batch % 3 * BATCH, batch % 3 * BATCH + BATCH)
            torch_forward(weights, torch.tensor(DATA[rows]),
                          torch.tensor(LABELS[rows]).long()).backward()
            batch += 1
        with torch.no_grad():
            if clip >= 0:
                norm = torch.sqrt(sum((w.grad ** 2).sum() for w in weights))
                if norm > clip:
                    for w in weights:
                        w.grad.mul_(clip / norm)
            for w, (_, decay_mult) in zip(weights, MULTS):
                w.grad.div_(iter_size)
                if l1:
                    w.grad.add_(torch.sign(w), alpha=l1 * decay_mult)
            for group, lr in zip(opt.param_groups, previous_lr):
                buffer = opt.state[group["params"][0]].get("momentum_buffer")
                if buffer is not None:            # Caffe's history is lr * torch's buffer
                    buffer.mul_(lr / group["lr"])
                if p["type"] == "Adam":
                    b2 = F32(p["momentum2"])
                    group["eps"] = F32(p.get("delta", 1e-8)) / math.sqrt(1 - b2 ** (it + 1))
            previous_lr = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
        history.append([w.detach().numpy().copy() for w in weights])
    return history


def minicnn_run(p, iters):
    """(initial weights, the weights after each of ``iters`` iterations) trained by minicnn."""
    param = caffe_pb2.SolverParameter(net_param=parse_text(NET), **{
        "max_iter": 100, "lr_policy": "fixed", "snapshot_after_train": False, **p})
    minicnn.set_random_seed(3)
    solver = minicnn.get_solver(param, dtype=np.float64, log=lambda message: None)
    solver.net.set_input_arrays(DATA, LABELS)
    params = [solver.net.params[name][k] for name, k in LEARNED]
    initial = [b.data.copy() for b in params]
    history = []
    for _ in range(iters):
        solver.step(1)
        history.append([b.data.copy() for b in params])
    return initial, history


def deviation(case, iters=ITERS):
    """The largest relative difference of any weight blob, over all iterations, between
    minicnn's run of CASES[case] and torch's, and the largest relative change of the weights
    (so that a comparison of weights that did not move cannot pass)."""
    fields, _ = CASES[case]
    initial, ours = minicnn_run(fields, iters)
    theirs = torch_run(fields, initial, iters)
    worst = moved = 0.0
    for a_step, b_step in zip(ours, theirs):
        for a, b, w0 in zip(a_step, b_step, initial):
            worst = max(worst, np.abs(a - b).max() / np.abs(b).max())
            moved = max(moved, np.abs(a - w0).max() / np.abs(w0).max())
    return worst, moved


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_matches_torch_optim_iteration_by_iteration(case, monkeypatch):
    for name, value in CASES[case][1].items():
        monkeypatch.setenv(name, value)
    worst, moved = deviation(case)
    assert moved > 0.05, case
    assert worst < 1e-10, (case, worst)

