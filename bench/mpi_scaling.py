"""Data-parallel scaling on this machine, and the estimate for clusters (docs/distributed.md).

    python3 bench/mpi_scaling.py                      # all: measured table, then the estimate
    python3 bench/mpi_scaling.py --nets lenet --steps 20
    python3 bench/mpi_scaling.py --estimate-only      # volumes and the cluster table only

Measured: the training step of each net (bench/nets.py: the real prototxts, data layers replaced
by random Input blobs, SGD with momentum and weight decay) run as K = 1 and K = 2 ranks through
`mpirun`, each rank with batch b, the cores of this machine shared among the ranks
(MINICNN_NUM_THREADS = cores / K; a rank with one thread is bound to a core, one with several
is not bound). For each run: images/s of the whole job (K x b per step),
and the share of the step spent communicating: packing the diffs into the flat buffer, the one
allreduce, unpacking (divided by K). A barrier before the allreduce (DataParallel's
measure_wait) keeps the time spent waiting for the slower rank out of the communication share;
it is reported apart. "plain" is the single-process solver with no DataParallel at all.

Estimated: for CaffeNet and ResNet-50-1by2, the allreduce volume per step is what DataParallel
sends for the real net (its flat buffer); the compute time per step comes from the net's
multiply-adds and a stated GPU rate; the network is a ring allreduce at a stated bandwidth
(minicnn.distributed.efficiency). The assumptions are printed with the table.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

# Caffe's own CaffeNet figure on a K40 with cuDNN: 19.2 s for 20 iterations of 256 images
# (shared/reference/caffe-semantics.md, performance references). Our multiply-add count of a
# CaffeNet training step turns it into an effective rate; a modern GPU is taken as 10x that.
K40_CAFFENET_STEP_S, K40_BATCH = 19.2 / 20, 256
MODERN_SPEEDUP = 10.0
NETWORKS = {  # name: (bytes/s a ring allreduce sustains per link, latency per ring step)
    "InfiniBand EDR 100 Gb/s": (11e9, 5e-6),
    "10 GbE": (1.1e9, 30e-6),
}
CLUSTER_SIZES = (8, 64, 256)
ESTIMATE_BATCH = {"caffenet": 256, "resnet50_1by2": 64}     # images per GPU per step


def _threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# --- one rank of a measured run (under mpirun) -----------------------------------------------------

def worker(args):
    os.environ.setdefault("MINICNN_DISTRIBUTED", "1")
    import minicnn  # noqa: F401  (MINICNN_NUM_THREADS is read at import)
    from bench.nets import minicnn_solver
    from minicnn import distributed
    solver = minicnn_solver(args.net, args.batch)
    parallel = None
    if not args.plain:
        comm = distributed.MPICommunicator()
        rng = np.random.default_rng(comm.rank)          # each rank its own (random) images
        data = solver.net.blobs["data"]
        data.data[...] = rng.standard_normal(data.shape)
        parallel = distributed.DataParallel(solver, comm, timeout=0, measure_wait=True)
        parallel.sync_from_root()
    solver.step(args.warmup)
    if parallel is not None:
        parallel.stats.update(steps=0, pack=0.0, wait=0.0, allreduce=0.0, unpack=0.0)
        parallel.comm.barrier()
    start = time.perf_counter()
    solver.step(args.steps)
    elapsed = time.perf_counter() - start
    if parallel is not None:
        parallel.comm.barrier()
        elapsed = time.perf_counter() - start
    if parallel is None or parallel.rank == 0:
        size = parallel.size if parallel else 1
        s = parallel.stats if parallel else {}
        step = elapsed / args.steps
        out = {"net": args.net, "ranks": size, "batch": args.batch, "plain": args.plain,
               "threads": minicnn.native.num_threads(), "step_s": step,
               "images_per_s": size * args.batch / step}
        if parallel is not None:
            n = max(1, s["steps"])
            out.update(allreduce_bytes=parallel.allreduce_bytes,
                       pack_s=s["pack"] / n, allreduce_s=s["allreduce"] / n,
                       unpack_s=s["unpack"] / n, wait_s=s["wait"] / n)
            out["comm_share"] = (out["pack_s"] + out["allreduce_s"] + out["unpack_s"]) / step
            out["wait_share"] = out["wait_s"] / step
        print("RESULT " + json.dumps(out), flush=True)
        if parallel is not None:
            parallel.close()


def run_case(net, ranks, batch, steps, warmup, threads, plain=False):
    env = {**os.environ, "MINICNN_NUM_THREADS": str(threads), "MINICNN_DISTRIBUTED": "1",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--net", net,
               "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup)]
    if plain:
        command.append("--plain")
    else:
        # one thread a rank: each rank on its own core; several: the rank may use them all
        binding = ["--bind-to", "core" if threads == 1 else "none"]
        command = ["mpirun", "--oversubscribe", "-np", str(ranks), *binding] + \
            (["--allow-run-as-root"] if os.geteuid() == 0 else []) + command
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


# --- volumes and the cluster estimate -----------------------------------------------------------

class _Alone:
    """A one-rank communicator (no MPI): to read the buffer DataParallel would send."""
    name, rank, size, local_rank, local_size = "none", 0, 1, 0, 1

    def allreduce(self, buffer, op="sum"):
        pass

    def broadcast(self, buffer, root=0):
        pass


def multiply_adds_per_image(net):
    """Forward multiply-adds per image of the Convolution and InnerProduct layers."""
    total = 0
    for layer, tops in zip(net.layers, net.top_vecs):
        if layer.type in ("Convolution", "InnerProduct") and layer.blobs:
            weight = layer.blobs[0]
            top = tops[0]
            per_output = weight.count // weight.shape[0]
            total += (top.count // top.shape[0]) * per_output
    return total


def volume_and_work(name):
    from bench.nets import minicnn_solver
    from minicnn.distributed import DataParallel
    solver = minicnn_solver(name, 1)
    parallel = DataParallel(solver, _Alone(), timeout=0)
    return {"net": name, "params": parallel.count, "allreduce_bytes": parallel.allreduce_bytes,
            "macs_per_image": multiply_adds_per_image(solver.net)}


def estimate(volumes):
    from minicnn.distributed import efficiency
    caffenet = next(v for v in volumes if v["net"] == "caffenet")
    # a training step is ~3 forward passes of work (forward, backward to data, to weights)
    k40_rate = 3 * 2 * caffenet["macs_per_image"] * K40_BATCH / K40_CAFFENET_STEP_S
    rows = []
    for v in volumes:
        batch = ESTIMATE_BATCH[v["net"]]
        work = 3 * 2 * v["macs_per_image"] * batch
        for gpu, rate in (("K40 (Caffe's CaffeNet time)", k40_rate),
                          (f"{MODERN_SPEEDUP:g}x K40", MODERN_SPEEDUP * k40_rate)):
            compute = work / rate
            for network, (bandwidth, latency) in NETWORKS.items():
                rows.append({"net": v["net"], "batch": batch, "gpu": gpu, "network": network,
                             "compute_s": compute,
                             "efficiency": {k: efficiency(compute, v["allreduce_bytes"], k,
                                                          bandwidth, latency)
                                            for k in CLUSTER_SIZES}})
    return k40_rate, rows


def print_estimate(volumes):
    k40_rate, rows = estimate(volumes)
    print("\nAllreduce volume per step (DataParallel's flat buffer, float32):")
    for v in volumes:
        print(f"  {v['net']:<14} {v['params']:>11,d} values = {v['allreduce_bytes'] / 2**20:8.1f} "
              f"MiB; {v['macs_per_image'] / 1e9:.3g} G multiply-adds per image (forward)")
    print(f"\nAssumptions: GPU rate from Caffe's K40 CaffeNet step ({K40_CAFFENET_STEP_S:.2f} s per "
          f"{K40_BATCH} images) = {k40_rate / 1e12:.2f} TFLOP/s effective, and {MODERN_SPEEDUP:g}x "
          "that for a modern GPU; ring allreduce, 2 (K-1)/K x volume / bandwidth + 2 (K-1) x "
          "latency, not overlapped with backward; networks:")
    for network, (bandwidth, latency) in NETWORKS.items():
        print(f"  {network}: {bandwidth / 1e9:.3g} GB/s per link, {latency * 1e6:g} us per step")
    print("\n| net | batch/GPU | GPU | network | compute s/step | "
          + " | ".join(f"{k} GPUs" for k in CLUSTER_SIZES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(CLUSTER_SIZES))
    for r in rows:
        print(f"| {r['net']} | {r['batch']} | {r['gpu']} | {r['network']} | "
              f"{r['compute_s']:.3f} | "
              + " | ".join(f"{100 * r['efficiency'][k]:.0f}%" for k in CLUSTER_SIZES) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--net", default="lenet")
    p.add_argument("--nets", default="lenet,resnet50_1by2,caffenet",
                   help="nets to measure (bench/nets.py names)")
    p.add_argument("--batch", type=int, help="images per rank (default: per net)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--estimate-only", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    cores = _threads()
    batches = {"lenet": 64, "resnet50_1by2": 4, "caffenet": 8}
    if not args.estimate_only:
        print(f"This machine: {cores} cores; MINICNN_NUM_THREADS = cores / ranks\n")
        print("| net | batch/rank | ranks | threads/rank | images/s | step ms | "
              "communication | of which allreduce | waiting | allreduce MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for net in args.nets.split(","):
            b = args.batch or batches.get(net, 8)
            cases = [(1, cores, True), (1, cores, False), (2, max(1, cores // 2), False)]
            for ranks, threads, plain in cases:
                r = run_case(net, ranks, b, args.steps, args.warmup, threads, plain)
                if plain:
                    print(f"| {net} | {b} | 1 (plain) | {threads} | {r['images_per_s']:.1f} | "
                          f"{1000 * r['step_s']:.0f} | | | | |", flush=True)
                else:
                    print(f"| {net} | {b} | {ranks} | {threads} | {r['images_per_s']:.1f} | "
                          f"{1000 * r['step_s']:.0f} | {100 * r['comm_share']:.1f}% | "
                          f"{1000 * r['allreduce_s']:.1f} ms | {100 * r['wait_share']:.1f}% | "
                          f"{r['allreduce_bytes'] / 2**20:.2f} |", flush=True)
    print_estimate([volume_and_work(n) for n in ("caffenet", "resnet50_1by2")])


if __name__ == "__main__":
    main()
