"""OpenMP's waiting threads on a busy machine: minicnn's kernels on 1 and 2 threads, for several
GOMP_SPINCOUNT values, with the machine otherwise quiet and with one busy loop beside them.

    python3 bench/omp_wait.py                        # 300 s; table of median ms per call
    python3 bench/omp_wait.py --seconds 600 --spincounts default,30000,3000 --markdown

Each (spin count, thread count) is a process of its own (libgomp reads GOMP_SPINCOUNT once, as
it loads), kept alive; the driver asks them for short blocks (a convolution forward, a MAX
pooling forward, a LeNet training step) in shuffled order, in rounds that alternate "quiet" and
"busy" (a `while True: pass` process pinned to the last CPU, in a session of its own as another
user's job would be: Linux's autogroups share the CPU between sessions first). On a shared
machine other people's work comes and goes: each block measures the CPU time the rest of the
machine used meanwhile (/proc/stat less this block's process), and blocks where that was more
than --tolerance cores above what the round intended (none, or the busy loop's one) are left
out of the table. Before each quiet block the driver waits for a quiet moment. Results go on in
--log (JSON lines).

"default" sets nothing (libgomp's own: 300000 spins, unless OMP_WAIT_POLICY says otherwise;
both variables are removed from the workers' environment). Linux only (/proc/stat,
sched_setaffinity). Results: bench/RESULTS.md, "OpenMP threads on a busy machine".
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = {"conv": 8, "pool": 16, "lenet": 4}          # calls per block


def machine_busy():
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def worker():
    """Answers 'kernel calls' lines with the block's ms per call and the others' CPU use."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import numpy as np
    import minicnn
    from minicnn.proto import parse_text
    from nets import minicnn_solver

    def layer_net(layer, shape):
        dims = " ".join(f"dim: {d}" for d in shape)
        net = minicnn.Net(parse_text(f'layer {{ name: "in" type: "Input" top: "data" '
                                     f'input_param {{ shape {{ {dims} }} }} }} {layer}'), "TEST")
        net.blobs["data"].data = np.random.default_rng(0).standard_normal(shape)
        return net

    conv = layer_net('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                     'convolution_param { num_output: 32 kernel_size: 5 pad: 2 '
                     'weight_filler { type: "gaussian" std: 0.01 } } }', (64, 3, 32, 32))
    pool = layer_net('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                     'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }', (64, 32, 32, 32))
    solver = minicnn_solver("lenet", 64)
    fns = {"conv": conv.forward, "pool": pool.forward, "lenet": lambda: solver.step(1)}
    for fn in fns.values():
        fn()
    print(json.dumps({"threads": minicnn.native.num_threads()}), flush=True)
    for line in sys.stdin:
        kernel, calls = line.split()
        fn = fns[kernel]
        fn()                                     # wakes the threads
        busy0, cpu0, wall0 = machine_busy(), time.process_time(), time.perf_counter()
        for _ in range(int(calls)):
            fn()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        print(json.dumps({"ms": wall / int(calls) * 1e3,
                          "others": (machine_busy() - busy0 - cpu) / wall}), flush=True)


def others_now(seconds=0.2):
    before = machine_busy()
    time.sleep(seconds)
    return (machine_busy() - before) / seconds


def busy_loop():
    cpu = max(os.sched_getaffinity(0))
    return subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})"
                             "\nwhile True: pass"], start_new_session=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--spincounts", default="default,30000,10000,3000,0")
    ap.add_argument("--tolerance", type=float, default=0.1)
    ap.add_argument("--log", default="omp_wait.jsonl")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker()
    procs = {}
    for spin in args.spincounts.split(","):
        for threads in (1, 2):
            env = {k: v for k, v in os.environ.items()
                   if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
            env.update(MINICNN_NUM_THREADS=str(threads),
                       PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
            if spin != "default":
                env["GOMP_SPINCOUNT"] = spin
            procs[spin, threads] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker"], env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for p in procs.values():
        p.stdout.readline()
    rows, end, round_ = [], time.time() + args.seconds, 0
    try:
        while time.time() < end:
            load = ("quiet", "busy")[round_ % 2]
            loop = busy_loop() if load == "busy" else None
            jobs = [(key, k) for key in procs for k in KERNELS]
            random.shuffle(jobs)
            for (spin, threads), kernel in jobs:
                while load == "quiet" and time.time() < end and others_now() > args.tolerance / 2:
                    time.sleep(0.5)
                p = procs[spin, threads]
                p.stdin.write(f"{kernel} {KERNELS[kernel]}\n")
                p.stdin.flush()
                row = dict(json.loads(p.stdout.readline()), spin=spin, threads=threads,
                           kernel=kernel, load=load, time=time.strftime("%H:%M:%S"))
                rows.append(row)
                with open(args.log, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if loop:
                loop.kill()
                loop.wait()
            round_ += 1
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    kept = [r for r in rows                  # (the busy loop may get less than its core)
            if r["others"] - (r["load"] == "busy") <= args.tolerance]
    print(f"{len(kept)} of {len(rows)} blocks kept (the others' CPU use as intended)")
    sep = " | " if args.markdown else "  "
    print(sep.join(["load", "GOMP_SPINCOUNT", "threads"] + [f"{k} ms (blocks)" for k in KERNELS]))
    if args.markdown:
        print("|".join(["---"] * (3 + len(KERNELS))))
    for load in ("quiet", "busy"):
        for spin, threads in procs:
            cells = []
            for kernel in KERNELS:
                ms = [r["ms"] for r in kept if (r["load"], r["spin"], r["threads"], r["kernel"])
                      == (load, spin, threads, kernel)]
                cells.append(f"{statistics.median(ms):.2f} ({len(ms)})" if ms else "-")
            print(sep.join([load, spin, str(threads)] + cells))


if __name__ == "__main__":
    main()
