"""`minicnn convert darknet CFG OUTDIR` (no .weights) also writes the train net and a solver
holding the [net]'s schedule (minicnn.darknet.darknet_solver): the rates Caffe's lr_policy gives
equal Darknet's get_current_rate where the policy maps, and the solver trains."""

import ctypes
import math
import re

import cv2
import numpy as np
import pytest

from minicnn.cli import main
from minicnn.darknet import DarknetError, convert_darknet, darknet_solver, read_cfg
from minicnn.proto.text import parse_text
from minicnn.solver import learning_rate
from tests.test_darknet import darknet, needs_darknet

# a 2-class, 3-anchor YOLOv3 head on 32 x 32 input; batch 4 in 2 subdivisions
TINY_YOLO = """[net]
batch=4
subdivisions=2
width=32
height=32
channels=3
momentum=0.8
decay=0.001
learning_rate=0.01
burn_in=5
max_batches=3
policy=steps
steps=2,3
scales=.5,.5

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=4,5, 8,9, 12,10
classes=2
num=3
jitter=.1
"""

# [net] schedules, each with the solver's fields Caffe needs; steps: Darknet's warm-up by steps
SCHEDULES = {
    "constant": "learning_rate=0.02",
    "step": "learning_rate=0.1\npolicy=step\nstep=3\nscale=0.5",
    "exp": "learning_rate=0.1\npolicy=exp\ngamma=0.9",
    "poly": "learning_rate=0.1\npolicy=poly\npower=2\nmax_batches=12",
    "sigmoid": "learning_rate=0.1\npolicy=sigmoid\ngamma=0.7\nstep=5",
    "steps": "learning_rate=0.1\npolicy=steps\nsteps=3,7\nscales=.1,.1",
}


def _net_cfg(tmp_path, keys, name="s"):
    cfg = tmp_path / f"{name}.cfg"
    more = "" if "max_batches" in keys else "max_batches=12\n"
    cfg.write_text(f"[net]\nbatch=8\nsubdivisions=2\nheight=8\nwidth=8\nchannels=3\n{keys}\n"
                   f"{more}\n[convolutional]\nfilters=2\nsize=1\nstride=1\n")
    return str(cfg)


def _darknet_rate(keys, n):
    """get_current_rate (network.c) at batch n, from the [net]'s keys, in plain Python."""
    k = dict(line.split("=") for line in keys.splitlines())
    lr, policy = float(k["learning_rate"]), k.get("policy", "constant")
    if policy == "constant":
        return lr
    if policy == "step":
        return lr * float(k["scale"]) ** (n // int(k["step"]))
    if policy == "exp":
        return lr * float(k["gamma"]) ** n
    if policy == "poly":
        return lr * (1 - n / int(k.get("max_batches", 12))) ** float(k["power"])
    if policy == "sigmoid":
        return lr / (1 + math.exp(float(k["gamma"]) * (n - int(k["step"]))))
    rate = lr
    for step, scale in zip(k["steps"].split(","), k["scales"].split(",")):
        if int(step) > n:
            return rate
        rate *= float(scale)
    return rate


# policies whose Caffe formula cannot start one batch later: each rate comes one iteration late
LAGGED = ("step", "poly")


def _solver_rates(text, count):
    param = parse_text(text, "SolverParameter")
    rates, current = [], 0
    for n in range(count):
        rate, current = learning_rate(param, n, current)
        rates.append(rate)
    return param, rates


@pytest.mark.parametrize("policy", sorted(SCHEDULES))
def test_schedules_map_exactly(tmp_path, policy):
    text, notes = darknet_solver(read_cfg(_net_cfg(tmp_path, SCHEDULES[policy])), "t.prototxt")
    assert [n.split(":")[0] for n in notes] == (["policy=sigmoid"] if policy == "sigmoid" else [])
    assert (f"# policy={policy}: " in text) == (policy in LAGGED), text
    param, rates = _solver_rates(text, 12)
    # Caffe's iteration n is Darknet's update n + 1, which runs at get_current_rate's batch n + 1
    late = policy in LAGGED
    want = [_darknet_rate(SCHEDULES[policy], n + (0 if late else 1)) for n in range(12)]
    assert rates == pytest.approx(want, rel=1e-6), text
    assert (param.iter_size, param.max_iter, param.net) == (2, 12, "t.prototxt")
    assert (param.momentum, param.weight_decay) == (np.float32(0.9), np.float32(0.0001))


def _libdarknet_rates(cfg, count, lag=False):
    """libdarknet's own get_current_rate at its updates 1..count (its seen then n + 1 batches
    of batch x subdivisions for Caffe's iteration n; n batches with ``lag``)."""
    lib = darknet()
    lib.get_current_rate.restype = ctypes.c_float
    net = lib.parse_network_cfg(str(cfg).encode())
    try:
        rates = []
        for n in range(count):
            batches = n if lag else n + 1
            net.contents.seen[0] = batches * net.contents.batch * net.contents.subdivisions
            rates.append(lib.get_current_rate(net))
        return rates
    finally:
        lib.free_network(net)


@needs_darknet
def test_schedules_equal_libdarknets(tmp_path):
    """libdarknet's own get_current_rate at its update n + 1 (its seen then n + 1 batches of
    batch x subdivisions) against Caffe's iteration n."""
    for policy, keys in SCHEDULES.items():
        cfg = _net_cfg(tmp_path, keys, policy)
        _, rates = _solver_rates(darknet_solver(read_cfg(cfg), "t.prototxt")[0], 12)
        theirs = _libdarknet_rates(cfg, 12, lag=policy in LAGGED)
        if policy == "sigmoid":      # its size_t batch - step: exp(huge) before step 5
            assert theirs[:4] == [0] * 4
            rates, theirs = rates[4:], theirs[4:]
        assert rates == pytest.approx(theirs, rel=1e-5), policy


@needs_darknet
def test_darknets_updates_run_at_the_solvers_rates(tmp_path):
    """libdarknet trained (train_network_datum): an SSE cost on a [connected] layer's bias, with
    input 0 and the target 1 above the output, moves the bias by the update's rate; Darknet
    counts the batch before it updates, so its first update runs at batch 1's rate."""
    cfg = tmp_path / "rate.cfg"
    cfg.write_text("[net]\nbatch=1\nsubdivisions=1\ninputs=1\nlearning_rate=1\nmomentum=0\n"
                   "decay=0\nmax_batches=10\npolicy=steps\nsteps=2,4\nscales=.5,.5\n\n"
                   "[connected]\noutput=1\nactivation=linear\n\n[cost]\ntype=sse\n")
    lib = darknet()
    lib.train_network_datum.restype = ctypes.c_float
    lib.network_predict.restype = ctypes.POINTER(ctypes.c_float)
    net = lib.parse_network_cfg(str(cfg).encode())
    zero = (ctypes.c_float * 1)(0.0)
    theirs = []
    try:
        for _ in range(6):
            bias = lib.network_predict(net, zero)[0]
            net.contents.input[0], net.contents.truth[0] = 0.0, bias + 1.0
            lib.train_network_datum(net)
            theirs.append(lib.network_predict(net, zero)[0] - bias)
    finally:
        lib.free_network(net)
    _, rates = _solver_rates(darknet_solver(read_cfg(str(cfg)), "t.prototxt")[0], 6)
    assert theirs == pytest.approx([1, 0.5, 0.5, 0.25, 0.25, 0.25], rel=1e-5)
    assert rates == pytest.approx(theirs, rel=1e-5)


def test_what_does_not_map_is_said(tmp_path):
    # yolov1.cfg's warm-up by steps: the solver starts at the peak, exact after it
    keys = "learning_rate=0.0005\npolicy=steps\nsteps=2,4,8\nscales=2.5,.1,.1\nburn_in=3"
    text, notes = darknet_solver(read_cfg(_net_cfg(tmp_path, keys)), "t.prototxt")
    _, rates = _solver_rates(text, 12)
    assert rates[:1] == pytest.approx([0.00125])            # Darknet's update 1: 0.0005
    assert rates[1:] == pytest.approx([_darknet_rate(keys.rsplit("\n", 1)[0], n + 1)
                                       for n in range(1, 12)])
    assert any("rises to 0.00125 by steps" in n and "first 1 iterations" in n for n in notes)
    assert any(n.startswith("burn_in=3: Darknet warms up") for n in notes)
    assert all(f"# Note: {n}" in text for n in notes)
    # scales that differ after the peak: a fixed rate, the schedule listed
    keys = "learning_rate=0.01\npolicy=steps\nsteps=5,9\nscales=.5,.2"
    text, notes = darknet_solver(read_cfg(_net_cfg(tmp_path, keys)), "t.prototxt")
    assert _solver_rates(text, 12)[1] == pytest.approx([0.01] * 12)
    assert "0.005 from 5, 0.001 from 9" in notes[0] and "train in stages" in notes[0]


# yolov2-tiny-voc.cfg's steps=-1,100,...: libdarknet's int step against its size_t batch number
NEGATIVE_STEPS = ["learning_rate=0.01\npolicy=steps\nsteps=-1,3,6\nscales=.1,10,.1",
                  "learning_rate=0.01\npolicy=steps\nsteps=2,-1,6\nscales=.5,.1,.1",
                  "learning_rate=0.01\npolicy=steps\nsteps=2,5,-1\nscales=.5,.5,.1"]


def _unsigned_rate(keys, n):
    """_darknet_rate with get_current_rate's comparison as C makes it: a negative int step
    becomes a huge size_t, greater than every batch number."""
    k = dict(line.split("=") for line in keys.splitlines())
    rate = float(k["learning_rate"])
    for step, scale in zip(k["steps"].split(","), k["scales"].split(",")):
        if int(step) % 2 ** 64 > n:
            return rate
        rate *= float(scale)
    return rate


@pytest.mark.parametrize("keys", NEGATIVE_STEPS)
def test_a_negative_step_ends_the_schedule_as_in_libdarknet(tmp_path, keys):
    text, notes = darknet_solver(read_cfg(_net_cfg(tmp_path, keys)), "t.prototxt")
    _, rates = _solver_rates(text, 12)
    assert rates == pytest.approx([_unsigned_rate(keys, n + 1) for n in range(12)]), text
    assert any("never reached" in n for n in notes), notes


@needs_darknet
def test_negative_steps_equal_libdarknets(tmp_path):
    for keys in NEGATIVE_STEPS:
        theirs = _libdarknet_rates(_net_cfg(tmp_path, keys), 12)
        assert theirs == pytest.approx([_unsigned_rate(keys, n + 1) for n in range(12)])


def _detection_set(folder, count, rng):
    """Darknet's layout: images/<k>.png, labels/<k>.txt (class x y w h), train.txt."""
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    paths = []
    for k in range(count):
        path = folder / "images" / f"{k}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        (folder / "labels" / f"{k}.txt").write_text(f"{k % 2} 0.5 0.5 0.3 0.4\n1 0.3 0.6 0.2 "
                                                    "0.2\n")
        paths.append(str(path))
    (folder / "train.txt").write_text("\n".join(paths) + "\n")


def test_converted_detector_trains(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_YOLO)
    with pytest.warns(UserWarning, match="burn_in=5: Darknet warms up") as said:
        paths = convert_darknet(str(cfg), None, str(tmp_path / "out"))
    assert [p.rsplit("/", 1)[1] for p in paths] == \
        ["tiny.prototxt", "tiny_train.prototxt", "tiny_solver.prototxt"]
    assert len(said) == 1, [str(w.message) for w in said]
    with open(paths[1]) as f:
        train = parse_text(f.read(), "NetParameter")
    data = train.layer[0]
    assert (data.type, list(data.top), data.include[0].phase) == \
        ("DetectionData", ["data", "boxes"], "TRAIN")
    p = data.detection_data_param
    assert (p.source, p.batch_size, p.new_height, p.augment) == ("train.txt", 2, 32,
                                                                 "DARKNET_V2")
    assert [list(layer.bottom) for layer in train.layer if layer.type == "Yolo"] == \
        [["conv2", "boxes"]]
    assert "Input" not in [layer.type for layer in train.layer]
    with open(paths[2]) as f:
        solver = f.read()
    for line in ('net: "tiny_train.prototxt"', "base_lr: 0.01", 'lr_policy: "multistep"',
                 "gamma: 0.5", "stepvalue: 1\nstepvalue: 2", "momentum: 0.8",
                 "weight_decay: 0.001", "iter_size: 2", "max_iter: 3"):
        assert line in solver
    # train it: three iterations of two 2-image passes, the rate stepping at Darknet's updates
    # 2 and 3, Caffe's iterations 1 and 2
    _detection_set(tmp_path, 4, np.random.default_rng(0))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", paths[2]]) == 0
    log = capsys.readouterr()
    log = log.out + log.err
    assert re.search(r"Iteration 0, lr = 0\.01\b", log), log
    assert "MultiStep Status: Iteration 1, step = 1" in log, log
    assert "MultiStep Status: Iteration 2, step = 2" in log, log
    loss = float(re.search(r"Iteration 0 .*, loss = (\S+)", log).group(1))
    assert np.isfinite(loss) and loss > 0, log
    assert (tmp_path / "snapshots" / "tiny_iter_3.caffemodel").exists()


def test_classifier_gets_a_solver_and_a_note(tmp_path, capsys):
    cfg = tmp_path / "cls.cfg"
    with open(_net_cfg(tmp_path, SCHEDULES["poly"])) as f:
        cfg.write_text(f.read() + "\n[avgpool]\n\n[softmax]\ngroups=1\n")
    with pytest.warns(UserWarning, match="no train net written"):
        assert main(["convert", "darknet", str(cfg), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["cls.prototxt", "cls_solver.prototxt"]
    assert "write the train net, then minicnn train" in capsys.readouterr().out


def test_policy_step_of_zero_is_refused(tmp_path):
    """step=0 would divide by zero in libdarknet's get_current_rate (and wrote Caffe's stepsize
    0, which Caffe refuses): an error naming the cfg's [net] line."""
    cfg = _net_cfg(tmp_path, "learning_rate=0.1\npolicy=step\nstep=0\nscale=0.5")
    with pytest.raises(DarknetError, match=r"s\.cfg:1: \[net\]: policy=step needs step > 0"):
        darknet_solver(read_cfg(cfg), "t.prototxt")


@needs_darknet
def test_policy_step_negative_is_libdarknets_fixed_rate(tmp_path):
    """A negative step: libdarknet divides its size_t batch number by the step made unsigned,
    so the rate stays learning_rate; the solver was written with stepsize -1, which Caffe
    refuses."""
    keys = "learning_rate=0.1\npolicy=step\nstep=-2\nscale=0.5"
    cfg = _net_cfg(tmp_path, keys)
    text, notes = darknet_solver(read_cfg(cfg), "t.prototxt")
    assert [n.split(":")[0] for n in notes] == ["policy=step with step=-2"]
    _, rates = _solver_rates(text, 12)
    theirs = _libdarknet_rates(cfg, 12)
    assert rates == pytest.approx(theirs, rel=1e-6) == [0.1] * 12


def test_a_negative_max_batches_is_named_in_the_note(tmp_path):
    """The note said 'max_batches is 0' of max_batches=-5."""
    _, notes = darknet_solver(read_cfg(_net_cfg(tmp_path, "max_batches=-5")), "t.prototxt")
    assert [n for n in notes if n.startswith("max_batches is -5 (0 is Darknet's default")]
