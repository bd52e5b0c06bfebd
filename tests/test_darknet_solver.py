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
    assert "test_iter" not in solver and "val.txt" not in solver      # a classifier's lines
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


# a classifier: conv, maxpool, connected, [softmax] (+ HEADS[k]); batch 4 in 2 subdivisions
CLASSIFIER = """[net]
batch=4
subdivisions=2
height=6
width=6
channels=3
learning_rate=0.1
momentum=0.9
decay=0.01
max_batches=10

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=3
activation=linear

[softmax]
groups=1
"""

# the heads Darknet trains (its softmax's delta truth - output, + a [cost]'s scale x the same,
# the temperature left out) and the loss_weight that gives SoftmaxWithLoss that gradient
HEADS = {"softmax": ("", 1.0), "cost": ("\n[cost]\ntype=sse\n", 2.0),
         "tempered": ("temperature=2\n\n[cost]\nscale=.5\n", 3.0),
         "noloss": ("noloss=1\n\n[cost]\n", 1.0)}


def test_classifier_gets_a_train_net(tmp_path, capsys):
    """A classifier's train net: ImageData (R, G, B by a Slice and a Concat, [0, 1], the [net]'s
    size, mirrored) and SoftmaxWithLoss in place of the last Softmax, its loss_weight Darknet's
    (HEADS); the augmentations ImageData lacks are warned about and noted in the file."""
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER.replace("channels=3\n", "channels=3\nangle=7\nhue=.1\n")
                   + HEADS["cost"][0])
    with pytest.warns(UserWarning) as said:
        assert main(["convert", "darknet", str(cfg), str(tmp_path / "out")]) == 0
    said = [str(w.message) for w in said]
    assert [m.split(": ", 1)[1] for m in said] == [
        "[net] angle=7, hue=0.1: Darknet's classifier loader rotates each image by a random "
        "angle within +-angle degrees; shifts its hue by a random amount within +-hue. Caffe's "
        "ImageData has no such augmentation: the train net leaves them out"], said
    assert "point the train net's data layer at your image list" in capsys.readouterr().out
    with open(tmp_path / "out" / "cls_train.prototxt") as f:
        text = f.read()
    assert f"# Note: {said[0].split(': ', 1)[1]}\n" in text
    assert "random size in [6, 12] (min_crop, max_crop)" in text
    layers = parse_text(text, "NetParameter").layer
    data = layers[0]
    assert (data.type, list(data.top), data.include[0].phase) == \
        ("ImageData", ["bgr", "label"], "TRAIN")
    p = data.image_data_param
    assert (p.source, p.batch_size, p.shuffle, p.new_height, p.new_width, p.is_color) == \
        ("train.txt", 2, True, 6, 6, True)
    assert (data.transform_param.scale, data.transform_param.mirror) == \
        (np.float32(1 / 255), True)
    assert [(layer.type, list(layer.bottom), list(layer.top)) for layer in layers[2:4]] == \
        [("Slice", ["bgr"], ["b", "g", "r"]), ("Concat", ["r", "g", "b"], ["data"])]
    loss = layers[-1]
    assert (loss.type, list(loss.bottom), list(loss.loss_weight)) == \
        ("SoftmaxWithLoss", ["fc2", "label"], [2])
    assert "Softmax" not in [layer.type for layer in layers] and "Input" not in text
    # a gray net reads gray images; the solver names the train net
    cfg.write_text(CLASSIFIER.replace("channels=3", "channels=1"))
    convert_darknet(str(cfg), None, str(tmp_path / "gray"))
    with open(tmp_path / "gray" / "cls_train.prototxt") as f:
        layers = parse_text(f.read(), "NetParameter").layer
    assert (list(layers[0].top), layers[0].image_data_param.is_color) == (["data", "label"], False)
    assert list(layers[-1].loss_weight) == [1]
    with open(tmp_path / "gray" / "cls_solver.prototxt") as f:
        assert 'net: "cls_train.prototxt"' in f.read()


@pytest.mark.parametrize("keys, side, crop", [
    ("min_crop=8\nmax_crop=8\n", 8, 6),           # Darknet: shorter side 8, a random 6x6 crop
    ("min_crop=8\nmax_crop=12\n", 8, 6),          # the smallest of its sizes
    ("min_crop=8\nmax_crop=8\ncenter=1\n", 6, 0),  # the centre square resized: no crop
    ("min_crop=4\n", 6, 0),                        # smaller than the net: resized to it
    ("min_crop=4\nmin_ratio=1.5\n", 9, 6),         # min_ratio wins: args.min = 1.5 * 6
    ("min_crop=8\nmin_ratio=0.5\n", 6, 0),
    ("min_crop=6\n", 6, 0),                        # the net's size: resized to it, no crop
    ("min_crop=4\nmin_ratio=1.45\n", 8, 6),        # args.min an int: 8.7 truncated
])
def test_classifier_train_net_crops_as_darknets_loader(tmp_path, monkeypatch, keys, side, crop):
    """min_crop above the net's size: ImageData resizes to min_crop x min_crop and the
    transform crops the net's size at random, as Darknet's random_augment_image does for square
    images; center=1 or a smaller min_crop: the whole image resized. The net trains a step."""
    import minicnn
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER.replace("channels=3\n", "channels=3\n" + keys))
    convert_darknet(str(cfg), None, str(tmp_path / "out"))
    text = (tmp_path / "out" / "cls_train.prototxt").read_text()
    data = parse_text(text, "NetParameter").layer[0]
    p = data.image_data_param
    assert (p.new_height, p.new_width, data.transform_param.crop_size) == (side, side, crop)
    flat = text.replace("\n# ", " ")
    assert (f"this one resizes the whole image to {side}x{side} and crops a random 6x6" in
            flat) == bool(crop)
    assert ("at the smallest size" in flat) == (bool(crop) and "max_crop=8" not in keys)
    rng = np.random.default_rng(0)
    for k in range(2):
        cv2.imwrite(str(tmp_path / "out" / f"{k}.png"), rng.integers(0, 256, (10, 10, 3),
                                                                      dtype=np.uint8))
    (tmp_path / "out" / "train.txt").write_text("0.png 1\n1.png 2\n")
    monkeypatch.chdir(tmp_path / "out")
    solver = minicnn.get_solver("cls_solver.prototxt", log=lambda message: None)
    solver.step(1)
    assert solver.net.blobs["data"].shape == (2, 3, 6, 6)


@pytest.mark.parametrize("classes, accuracies", [(3, ["accuracy"]),
                                                  (7, ["accuracy", "accuracy_top5"])])
def test_classifier_train_net_tests(tmp_path, monkeypatch, capsys, classes, accuracies):
    """The classifier's train net tests as Caffe's examples: a TEST ImageData on val.txt (not
    mirrored, not shuffled, the whole image resized to the [net]'s size as Darknet's validation
    gives a square image, even where TRAIN crops), the same R, G, B planes, and TEST-only
    Accuracy layers (top-5 over more than 5 classes) beside the loss. The solver as written
    builds no test net, so train.txt alone trains; with its commented test_iter and
    test_interval set, `minicnn train` prints the test accuracy."""
    import minicnn
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER.replace("channels=3\n", "channels=3\nmin_crop=8\n")
                   .replace("output=3", f"output={classes}"))
    convert_darknet(str(cfg), None, str(tmp_path / "out"))
    out = tmp_path / "out"
    layers = parse_text((out / "cls_train.prototxt").read_text(), "NetParameter").layer
    train, test = layers[0], layers[1]
    assert (train.include[0].phase, train.transform_param.crop_size) == ("TRAIN", 6)
    p = test.image_data_param
    assert (test.type, list(test.top), test.include[0].phase) == \
        ("ImageData", ["bgr", "label"], "TEST")
    assert (p.source, p.batch_size, p.shuffle, p.new_height, p.new_width, p.is_color) == \
        ("val.txt", 2, False, 6, 6, True)
    t = test.transform_param
    assert (t.scale, t.mirror, t.crop_size) == (np.float32(1 / 255), False, 0)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (9, 13, 3), dtype=np.uint8) for _ in range(3)]
    for k, image in enumerate(images):
        cv2.imwrite(str(out / f"{k}.png"), image)
    (out / "train.txt").write_text("0.png 0\n1.png 1\n")
    monkeypatch.chdir(out)
    solver = minicnn.get_solver("cls_solver.prototxt", log=lambda message: None)
    assert solver.test_nets == []                  # as written: no val.txt needed
    solver.step(1)
    assert list(solver.net.outputs) == ["loss"]
    (out / "val.txt").write_text("2.png 2\n0.png 0\n")
    net = minicnn.Net("cls_train.prototxt", phase=minicnn.TEST)
    assert list(net.outputs) == accuracies + ["loss"]
    net.forward()
    for k, index in enumerate((2, 0)):              # in order, unmirrored, uncropped, R, G, B
        bgr = cv2.resize(images[index], (6, 6)).astype(np.float32) * np.float32(1 / 255)
        np.testing.assert_allclose(net.blobs["data"].data[k], bgr[:, :, ::-1].transpose(2, 0, 1),
                                   rtol=1e-6, atol=1e-6)
    solver_text = (out / "cls_solver.prototxt").read_text()
    assert "# test_iter: 100\n# test_interval: 1000\n" in solver_text
    assert "ceil(validation images / 2)" in solver_text
    assert "(100 here: 200 images;" in solver_text
    (out / "test_solver.prototxt").write_text(
        solver_text.replace("# test_iter: 100", "test_iter: 1")
        .replace("# test_interval: 1000", "test_interval: 2")
        .replace("max_iter: 10", "max_iter: 2"))
    capsys.readouterr()
    assert main(["train", "--solver", "test_solver.prototxt"]) == 0
    log = capsys.readouterr().out
    for k, name in enumerate(accuracies):
        tested = re.findall(rf"Test net output #{k}: {name} = (\S+)", log)
        assert len(tested) == 2 and all(float(a) in (0, 0.5, 1) for a in tested), log


def test_classifier_test_without_val_txt_names_it(tmp_path, monkeypatch, capsys):
    """With the solver's test lines uncommented and no val.txt, training stops at once, naming
    the file and the train net's TEST data layer."""
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER)
    convert_darknet(str(cfg), None, str(tmp_path / "out"))
    out = tmp_path / "out"
    cv2.imwrite(str(out / "0.png"), np.zeros((6, 6, 3), np.uint8))
    (out / "train.txt").write_text("0.png 0\n")
    solver = (out / "cls_solver.prototxt").read_text()
    (out / "cls_solver.prototxt").write_text(solver.replace("# test_iter", "test_iter")
                                             .replace("# test_interval", "test_interval"))
    monkeypatch.chdir(out)
    assert main(["train", "--solver", "cls_solver.prototxt"]) != 0
    err = capsys.readouterr().err
    assert re.search(r"cls_train\.prototxt:\d+: layer 'data' \(ImageData\): val\.txt", err), err


def test_classifier_train_net_of_a_wide_net_and_of_one_image_a_pass(tmp_path):
    """A 6 x 8 classifier: ImageData resizes to height x width in both phases and never crops
    (Caffe's crop is square), whatever min_crop says. batch=1 with subdivisions=2 is a pass of
    one image, not 0 (a batch_size Caffe refuses). A single augmentation below Darknet's
    default is noted alone."""
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER.replace("width=6", "width=8").replace("batch=4", "batch=1")
                   .replace("channels=3\n", "channels=3\nmin_crop=10\nsaturation=.75\n"))
    with pytest.warns(UserWarning) as said:
        convert_darknet(str(cfg), None, str(tmp_path / "out"))
    notes = [str(w.message).split(": ", 1)[1] for w in said]
    assert notes[0] == ("[net] saturation=0.75: Darknet's classifier loader scales its "
                        "saturation by a random factor between saturation and 1/saturation. "
                        "Caffe's ImageData has no such augmentation: the train net leaves it out")
    assert len(notes) == 2 and "one image per pass" in notes[1], notes
    layers = parse_text((tmp_path / "out" / "cls_train.prototxt").read_text(),
                        "NetParameter").layer
    for data in layers[:2]:
        p = data.image_data_param
        assert (p.batch_size, p.new_height, p.new_width, data.transform_param.crop_size) == \
            (1, 6, 8, 0), data.include[0].phase


def test_a_classifier_of_four_channels_gets_no_train_net(tmp_path):
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER.replace("channels=3", "channels=4"))
    with pytest.warns(UserWarning, match="no train net written: .*channels=4: Caffe's ImageData "
                                         r"gives 3 \(colour\) or 1 \(gray\) channels"):
        paths = convert_darknet(str(cfg), None, str(tmp_path / "out"))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["cls.prototxt", "cls_solver.prototxt"]


@pytest.mark.parametrize("head, problem", [
    ("[softmax]\ngroups=3\n", "groups=3: minicnn writes a classifier's loss"),
    ("[softmax]\n\n[cost]\n\n[cost]\n", "a second [cost]"),
    ("[softmax]\nnoloss=1\n", "noloss=1 without a [cost]"),
    ("[dropout]\n", "minicnn writes one for detectors")])
def test_what_gets_no_train_net_says_why(tmp_path, head, problem):
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER.replace("[connected]\noutput=3", "[connected]\noutput=6")
                   .split("[softmax]")[0] + head)
    with pytest.warns(UserWarning, match="no train net written") as said:
        paths = convert_darknet(str(cfg), None, str(tmp_path / "out"))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["cls.prototxt", "cls_solver.prototxt"]
    assert any(problem in str(w.message) for w in said), [str(w.message) for w in said]


def _libdarknet_trained(cfg, weights, images, labels, updates):
    """libdarknet's train_network_datum on ``images`` (N x H x W x 3 uint8 RGB), its passes
    of net.batch images in order, ``updates`` times over; the weights it saves after."""
    lib = darknet()
    lib.train_network_datum.restype = ctypes.c_float
    lib.save_weights.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    net = lib.load_network(str(cfg).encode(), str(weights).encode(), 0)
    n = net.contents
    planes = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    truth = np.eye(n.truths, dtype=np.float32)[labels]
    try:
        for _ in range(updates):
            for k in range(0, len(images), n.batch):
                x = np.ascontiguousarray(planes[k:k + n.batch])
                t = np.ascontiguousarray(truth[k:k + n.batch])
                ctypes.memmove(n.input, x.ctypes.data, x.nbytes)
                ctypes.memmove(n.truth, t.ctypes.data, t.nbytes)
                lib.train_network_datum(net)
        saved = str(cfg).replace(".cfg", "_trained.weights")
        lib.save_weights(ctypes.cast(net, ctypes.c_void_p), saved.encode())
    finally:
        lib.free_network(net)
    return saved


@needs_darknet
@pytest.mark.parametrize("head", sorted(HEADS))
def test_converted_classifier_trains_as_libdarknet(tmp_path, monkeypatch, head):
    """libdarknet and `minicnn train`'s solver on the converted train net and solver, from the
    same weights on the same four images (two updates of two 2-image passes: momentum and
    decay at work): the same weights after. Darknet's loss sums over the batch and its update
    divides by it; SoftmaxWithLoss divides by the pass and iter_size by the passes, so base_lr
    learning_rate with the head's loss_weight is Darknet's step."""
    import minicnn
    from tests.test_darknet import random_weights
    extra, weight = HEADS[head]
    cfg = tmp_path / "cls.cfg"
    cfg.write_text(CLASSIFIER + extra)
    random_weights(str(cfg), str(tmp_path / "cls.weights"))
    _, start = convert_darknet(str(cfg), str(tmp_path / "cls.weights"), str(tmp_path / "start"))
    convert_darknet(str(cfg), None, str(tmp_path / "out"))
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8), [0, 2, 1, 2]
    lines = []
    for k, (image, label) in enumerate(zip(images, labels)):
        cv2.imwrite(str(tmp_path / f"{k}.png"), image[:, :, ::-1])      # RGB, written as BGR
        lines.append(f"{tmp_path / f'{k}.png'} {label}\n")
    (tmp_path / "out" / "train.txt").write_text("".join(lines))
    train = tmp_path / "out" / "cls_train.prototxt"
    text = train.read_text()
    assert f"loss_weight: {weight!r}" in text
    train.write_text(text.replace("mirror: true", "mirror: false"))   # Darknet's flips: random
    monkeypatch.chdir(tmp_path / "out")
    solver = minicnn.get_solver("cls_solver.prototxt", log=lambda message: None)
    solver.net.copy_from(start)
    solver.step(2)
    theirs = _libdarknet_trained(cfg, tmp_path / "cls.weights", images, labels, 2)
    deploy, after = convert_darknet(str(cfg), theirs, str(tmp_path / "after"))
    darknets = minicnn.Net(deploy, weights=after, phase=minicnn.TEST)
    before = minicnn.Net(deploy, weights=start, phase=minicnn.TEST)
    for name in ("conv0", "fc2"):
        for mine, their, first in zip(solver.net.params[name], darknets.params[name],
                                      before.params[name]):
            moved = their.data - first.data
            assert np.abs(moved).max() > 1e-3, name          # trained, not only decayed
            np.testing.assert_allclose(mine.data - first.data, moved, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{head}: {name}")


def test_policy_step_of_zero_is_refused(tmp_path):
    """step=0 would divide by zero in libdarknet's get_current_rate (and wrote Caffe's stepsize
    0, which Caffe refuses): an error naming the cfg's [net] line."""
    cfg = _net_cfg(tmp_path, "learning_rate=0.1\npolicy=step\nstep=0\nscale=0.5")
    with pytest.raises(DarknetError, match=r"s\.cfg:1: \[net\]: policy=step needs step > 0"):
        darknet_solver(read_cfg(cfg), "t.prototxt")


def test_a_bad_training_key_writes_no_file(tmp_path):
    """The solver's keys are checked before anything is written: a step=0 used to leave the
    deploy prototxt behind in a new output folder."""
    cfg = _net_cfg(tmp_path, "learning_rate=0.1\npolicy=step\nstep=0\nscale=0.5")
    out = tmp_path / "out"
    with pytest.raises(DarknetError, match="policy=step needs step > 0"):
        convert_darknet(cfg, None, str(out))
    assert not out.exists()


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
