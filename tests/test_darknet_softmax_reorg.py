"""Darknet's [softmax] groups=N (and groups=1 over a C x H x W output) and [reorg] flatten=1
(with reverse=1 and a stride) converted by minicnn.darknet, against libdarknet's network_predict
on small cfgs with random weights, and against NumPy renderings of softmax_cpu and blas.c's
flatten where libdarknet is not installed."""

import numpy as np
import pytest

from minicnn.darknet import DarknetError, build, read_cfg
from tests.test_darknet import _Recorder, converted, darknet_forward, needs_darknet

HEAD = """[net]
batch=1
height={h}
width={w}
channels=3

[convolutional]
filters={c}
size=3
stride=1
pad=1
activation=leaky
"""


def _softmax_runs(x, groups, temperature=1.0):
    """softmax_cpu as Darknet's loops: the flattened input cut into groups runs, a softmax of
    x / t over each (largest subtracted)."""
    flat = x.reshape(-1).astype(np.float64)
    n = flat.size // groups
    out = np.empty_like(flat)
    for g in range(groups):
        run = flat[g * n:(g + 1) * n] / temperature
        e = np.exp(run - run.max())
        out[g * n:(g + 1) * n] = e / e.sum()
    return out


def _flatten(x, c, size, forward):
    """blas.c's flatten on one item: i1 = c*size + i, i2 = i*layers + c."""
    x = x.reshape(-1)
    out = np.empty_like(x)
    for ch in range(c):
        for i in range(size):
            if forward:
                out[i * c + ch] = x[ch * size + i]
            else:
                out[ch * size + i] = x[i * c + ch]
    return out


def _run(tmp_path, text, shape, seed=3):
    cfg, weights, net, _ = converted(tmp_path, text, dead=False)
    x = np.random.default_rng(seed).random(shape, np.float32)
    last = net.layers[-1]
    got = net.forward(data=x[None])[net.top_names[last.name][0]][0].copy()
    return cfg, weights, net, x, got, net.blobs["conv0"].data[0].copy()


@pytest.mark.parametrize("groups,temperature,c,hw", [(2, 1.0, 6, 3), (3, 1.0, 6, 1),
                                                     (1, 1.0, 4, 2), (4, 2.0, 4, 2)])
def test_softmax_groups_against_darknets_loops(tmp_path, groups, temperature, c, hw):
    text = HEAD.format(h=hw, w=hw, c=c) + f"\n[softmax]\ngroups={groups}\n" + (
        f"temperature={temperature}\n" if temperature != 1 else "")
    _, _, net, _x, got, conv = _run(tmp_path, text, (3, hw, hw))
    assert got.shape == (c, hw, hw)
    want = _softmax_runs(conv, groups, temperature)
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-7)
    assert "Reshape" in [layer.type for layer in net.layers]


def test_softmax_groups_after_connected(tmp_path):
    text = HEAD.format(h=2, w=2, c=3) + "\n[connected]\noutput=12\nactivation=linear\n" \
        "\n[softmax]\ngroups=4\n"
    _, _, net, _x, got, _ = _run(tmp_path, text, (3, 2, 2))
    fc = net.blobs[net.layers[-4].name].data[0]          # the InnerProduct's output
    assert got.shape == (12,) and net.layers[-4].type == "InnerProduct"
    np.testing.assert_allclose(got, _softmax_runs(fc, 4), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.reshape(4, 3).sum(1), 1, rtol=1e-6)


@pytest.mark.parametrize("reverse,stride,c,h,w", [(0, 1, 4, 3, 2), (1, 1, 4, 3, 2),
                                                  (0, 2, 2, 4, 6), (1, 2, 8, 2, 3)])
def test_reorg_flatten_against_darknets_loops(tmp_path, reverse, stride, c, h, w):
    text = HEAD.format(h=h, w=w, c=c) + f"\n[reorg]\nflatten=1\nstride={stride}\n" + (
        "reverse=1\n" if reverse else "")
    _, _, _net, _x, got, conv = _run(tmp_path, text, (3, h, w))
    s2 = stride * stride
    shape = (c // s2, h * stride, w * stride) if reverse else (c * s2, h // stride, w // stride)
    assert got.shape == shape
    np.testing.assert_array_equal(got.reshape(-1), _flatten(conv, c, h * w, not reverse))


def test_errors(tmp_path):
    def fails(body, match):
        cfg = tmp_path / "bad.cfg"
        cfg.write_text(HEAD.format(h=2, w=2, c=3) + body)
        with pytest.raises(DarknetError, match=match):
            build(read_cfg(str(cfg)), _Recorder())
    fails("\n[softmax]\ngroups=5\n", r"groups=5 must divide the 12 inputs \(3x2x2\)")
    fails("\n[softmax]\ngroups=0\n", "groups=0 must divide")
    fails("\n[softmax]\ntemperature=0\n", "temperature=0.0 must be positive")
    fails("\n[reorg]\nflatten=1\nextra=3\n", "flatten=1 with extra=3")
    fails("\n[reorg]\nflatten=1\nstride=3\n", "stride 3 does not divide")


# --- against libdarknet ------------------------------------------------------------------------

@needs_darknet
@pytest.mark.parametrize("body,chw,shape", [
    ("[softmax]\ngroups=2\n", (6, 3, 3), (6, 3, 3)),
    ("[softmax]\ngroups=3\ntemperature=.5\n", (6, 2, 2), (6, 2, 2)),
    ("[softmax]\n", (4, 2, 3), (4, 2, 3)),
    ("[connected]\noutput=12\nactivation=linear\n\n[softmax]\ngroups=4\n", (3, 2, 2), (12,)),
    ("[reorg]\nflatten=1\n", (4, 3, 2), (4, 3, 2)),
    ("[reorg]\nflatten=1\nreverse=1\n", (4, 3, 2), (4, 3, 2)),
    ("[reorg]\nflatten=1\nstride=2\n", (4, 4, 2), (16, 2, 1)),
    ("[reorg]\nflatten=1\nreverse=1\nstride=2\n", (4, 6, 2), (1, 12, 4)),
    ("[reorg]\nflatten=1\n\n[softmax]\ngroups=6\n", (4, 3, 2), (4, 3, 2)),
], ids=["groups2", "groups3-temp", "whole-chw", "connected-groups4", "flatten", "flatten-reverse",
        "flatten-stride2", "flatten-reverse-stride2", "flatten-then-groups"])
def test_matches_darknet(tmp_path, body, chw, shape):
    c, h, w = chw
    text = HEAD.format(h=h, w=w, c=c) + "\n" + body
    cfg, weights, _net, x, got, _ = _run(tmp_path, text, (3, h, w), seed=11)
    want = darknet_forward(cfg, weights, x)
    assert got.shape == shape and want.size == got.size
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-6)
