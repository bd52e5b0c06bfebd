"""The scalars Caffe's solvers and a few layers compute, bit for bit against C++ compiled here.

tests/caffe_scalars.cpp (built with g++ -O2, as Caffe's Makefile builds) spells each expression
with the types Caffe gives it: caffe.proto's float fields, int iterations, the net's Dtype, and
<cmath> then <math.h> included as Caffe's common.hpp and util/mkl_alternate.hpp include them, so
that its unqualified pow and exp resolve as Caffe's do (powf and expf for a float net's floats;
double pow where an int is an argument). It reads one case a line and writes the bit patterns.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from minicnn.errors import MinicnnError
from minicnn.ops import batch_norm, neurons
from minicnn.proto import caffe_pb2
from minicnn.sgd_solvers import adam_correction
from minicnn.solver import clip_scale, learning_rate

SOURCE = Path(__file__).with_name("caffe_scalars.cpp")
F32, F64 = np.float32, np.float64


@pytest.fixture(scope="module")
def caffe(tmp_path_factory):
    """run(lines) -> the C++ program's output lines, one per input line."""
    compiler = shutil.which("g++")
    assert compiler, "g++ is needed to build the C++ reference of these tests"
    binary = tmp_path_factory.mktemp("scalars") / "caffe_scalars"
    subprocess.run([compiler, "-O2", "-std=c++11", "-o", str(binary), str(SOURCE)], check=True)

    def run(lines):
        out = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True,
                             text=True, check=True).stdout.splitlines()
        assert len(out) == len(lines)
        return out
    return run


def h(value):
    """A float's exact text for the C++ side (hex)."""
    return float(value).hex()


def bits(value, dtype):
    """The bit pattern of value as a dtype, in the C++ side's format."""
    value = np.dtype(dtype).type(value)
    return f"{int(value.view(np.uint32 if value.dtype == F32 else np.uint64)):x}"


DT = {F32: "f", F64: "d"}

POLICIES = [
    ("fixed", {}),
    ("step", {"gamma": 0.1, "stepsize": 1000}), ("step", {"gamma": 0.5, "stepsize": 7}),
    ("multistep", {"gamma": 0.1}),
    ("exp", {"gamma": 0.999}), ("exp", {"gamma": 0.9995}), ("exp", {"gamma": 1.5}),
    ("inv", {"gamma": 1e-4, "power": 0.75}), ("inv", {"gamma": 0.001, "power": 0.5}),
    ("poly", {"power": 0.9, "max_iter": 10000}), ("poly", {"power": 2.0, "max_iter": 450000}),
    ("poly", {"power": 1.0, "max_iter": 777}), ("poly", {"power": 0.5, "max_iter": 1000}),
    ("sigmoid", {"gamma": 0.001, "stepsize": 5000}), ("sigmoid", {"gamma": 0.05, "stepsize": 300}),
    ("sigmoid", {"gamma": -0.5, "stepsize": 100}),     # a decay, to 0 once exp overflows
]


@pytest.mark.parametrize("dtype", [F32, F64])
def test_learning_rate_policies_match_caffes_arithmetic(caffe, dtype):
    """SGDSolver<Dtype>::GetLearningRate for every policy over thousands of iterations: a
    float net's poly and sigmoid are float expressions with powf and expf (minicnn computed
    them in double: 1 ulp off for 1 in 3 poly rates and up to 2 ulps for sigmoid), a double
    net's sigmoid is base_lr * (1 / (1 + e)), not base_lr / (1 + e). Where Caffe's rate is
    inf or NaN, or poly's past max_iter, minicnn's is an error."""
    lines, ours = [], []
    iterations = list(range(0, 3000, 7)) + [9999, 10000, 1 << 24, (1 << 24) + 1, 2 ** 31 - 1]
    for base in (0.01, 0.1, 0.001, 1.0, 0.05, 3e-4):
        for policy, fields in POLICIES:
            param = caffe_pb2.SolverParameter(base_lr=base, lr_policy=policy, **fields)
            for it in iterations:
                # multistep's step is the solver's state (no stepvalue: it stays)
                step = it // param.stepsize if policy == "step" else it % 5
                lines.append(f"lr {DT[dtype]} {policy} {h(param.base_lr)} {h(param.gamma)} "
                             f"{h(param.power)} {param.stepsize} {param.max_iter} {it} {step}")
                try:
                    ours.append(bits(learning_rate(param, it, step, dtype=dtype)[0], dtype))
                except MinicnnError:      # where Caffe's rate is inf, NaN or poly's past max_iter
                    ours.append(None)
    theirs = caffe(lines)
    wrong = [(line, o, c) for line, o, c in zip(lines, ours, theirs)
             if o != c and not (o is None and _no_decay(line, c, dtype))]
    assert not wrong, f"{len(wrong)} of {len(lines)} rates differ, e.g. {wrong[:3]}"
    assert ours.count(None) > 0


def _no_decay(line, caffes_bits, dtype):
    """A rate minicnn refuses: Caffe's is not finite, or poly's past max_iter."""
    value = np.array(int(caffes_bits, 16), np.uint32 if dtype == F32 else np.uint64).view(dtype)
    _, _, policy, _, _, _, _, max_iter, it, _ = line.split()
    return not np.isfinite(value) or (policy == "poly" and int(it) > int(max_iter))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_adam_correction_matches_caffes(caffe, dtype):
    """AdamSolver: sqrt(Dtype(1) - pow(beta2, t)) / (Dtype(1) - pow(beta1, t)) with an int t."""
    lines, ours = [], []
    for b1, b2 in ((0.9, 0.999), (0.5, 0.99), (0.95, 0.9999), (0.0, 0.999), (0.8, 0.0)):
        for t in list(range(1, 2000, 3)) + [10 ** 5, 10 ** 6]:
            lines.append(f"adam {DT[dtype]} {h(F32(b1))} {h(F32(b2))} {t}")
            ours.append(bits(adam_correction(float(F32(b1)), float(F32(b2)), t, dtype), dtype))
    assert ours == caffe(lines)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_clip_gradients_scale_matches_caffes(caffe, dtype):
    """ClipGradients: the blobs' sums of squares added up, the root and the division in
    Dtype (a float net's norm was taken in double: an ulp off, and compared there)."""
    rng = np.random.default_rng(3)
    lines, ours = [], []
    for _ in range(3000):
        n = int(rng.integers(1, 9))
        sums = (rng.random(n) * 10.0 ** rng.integers(-6, 6)).astype(dtype)
        threshold = F32(rng.choice([0.0, 0.01, 1.0, 5.0, 35.0, 1e3]))
        lines.append(f"clip {DT[dtype]} {h(threshold)} {n} " + " ".join(h(s) for s in sums))
        norm, factor = clip_scale(float(threshold), [float(s) for s in sums], dtype)
        ours.append(bits(norm, dtype) + " " + ("none" if factor is None else bits(factor, dtype)))
    theirs = caffe(lines)
    wrong = [(line, o, c) for line, o, c in zip(lines, ours, theirs) if o != c]
    assert not wrong, f"{len(wrong)} of {len(lines)} differ, e.g. {wrong[:3]}"


@pytest.mark.parametrize("dtype", [F32, F64])
def test_batch_norm_scalars_match_caffes(caffe, dtype):
    """BatchNorm: bias_correction_factor = Dtype(m) / (m - 1) with the int m rounded to Dtype
    (above 2^24 values a channel a float net's factor is not m / (m - 1) rounded), the moving
    average's scale factor s * fraction + 1, and the global statistics' 1 / s."""
    t = np.dtype(dtype).type
    ms = [1, 2, 3, 7, 100, 50176, (1 << 24) - 1, 1 << 24, (1 << 24) + 1, (1 << 24) + 2,
          (1 << 24) + 3, 20971521, 3 * (1 << 23) + 6, 123456789]
    lines, ours = [], []
    for m in ms:
        for fraction, factor in ((0.999, 0.0), (0.999, 17.25), (0.9, 3.1), (0.5, 1.999)):
            lines.append(f"bn {DT[dtype]} {m} {h(F32(fraction))} {h(t(factor))}")
            s, one, zero = np.full(1, factor, dtype), np.ones(1, dtype), np.zeros(1, dtype)
            _, var_new, s_new = batch_norm.batch_norm_update_stats(
                zero, zero, s, zero, one, m, float(F32(fraction)))     # var_new: the factor
            inverse, _ = batch_norm.batch_norm_global_stats(one, one, s)
            ours.append(" ".join(bits(v[0], dtype) for v in (var_new, s_new, inverse)))
    theirs = caffe(lines)
    wrong = [(line, o, c) for line, o, c in zip(lines, ours, theirs) if o != c]
    assert not wrong, f"{len(wrong)} of {len(lines)} differ, e.g. {wrong[:3]}"


@pytest.mark.parametrize("dtype", [F32, F64])
def test_power_constant_output_matches_caffes(caffe, dtype):
    """Power with scale 0 fills its top with pow(shift, power) (1 for power 0): powf for a
    float net, which NumPy's float32 power is up to ulps off (for 1 in 5 values here)."""
    rng = np.random.default_rng(5)
    lines, ours = [], []
    for _ in range(3000):
        power = F32(rng.choice([0.0, 2.0, 0.5, -1.0]) if rng.random() < 0.1
                    else rng.random() * 4 - 2)
        shift = F32(rng.random() * 3)
        lines.append(f"power {DT[dtype]} {h(power)} {h(shift)}")
        y = neurons.power_forward(np.full(3, 0.5, dtype), float(power), 0.0, float(shift))
        assert y.dtype == dtype and np.all(y == y[0])
        ours.append(bits(y[0], dtype))
    theirs = caffe(lines)
    wrong = [(line, o, c) for line, o, c in zip(lines, ours, theirs) if o != c]
    assert not wrong, f"{len(wrong)} of {len(lines)} differ, e.g. {wrong[:3]}"


def test_without_a_c_library_the_stand_ins_are_close_and_never_raise(monkeypatch):
    """Where ctypes finds no C maths library, minicnn.libm falls back on NumPy's float32 scalar
    ** and Python's math.exp (the C library's double exp, rounded once): a float64 net's pow
    and exp are then still the C ones, a float32 net's within an ulp, overflow inf, no
    exception and no warning."""
    import ctypes
    import warnings
    from minicnn import libm

    def no_library(*args, **kwargs):
        raise OSError("no libm here")

    c_library = {dtype: libm.c_math(dtype) for dtype in (F32, F64)}   # made before the patch
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    rng = np.random.default_rng(6)
    xs, ys = rng.random(2000) * 40 - 20, rng.random(2000) * 4 - 2
    for dtype in (F32, F64):
        fallback, real = libm._CMath(dtype), c_library[dtype]
        assert fallback._exp is None and real._exp is not None
        t = np.dtype(dtype).type
        exp_ulps = [abs(int(bits(fallback.exp(t(x)), dtype), 16) -
                        int(bits(real.exp(t(x)), dtype), 16)) for x in xs]
        pow_ulps = [abs(int(bits(fallback.pow(t(abs(x)), t(y)), dtype), 16) -
                        int(bits(real.pow(t(abs(x)), t(y)), dtype), 16)) for x, y in zip(xs, ys)]
        assert max(exp_ulps) <= (1 if dtype is F32 else 0), dtype
        assert max(pow_ulps) <= (1 if dtype is F32 else 0), dtype
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert fallback.exp(t(1000)) == np.inf and fallback.pow(t(10), t(400)) == np.inf
