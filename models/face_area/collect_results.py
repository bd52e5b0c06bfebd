"""Gathers the measured face-area results into models/face_area/results.json and prints the
README's table from it (README.md there has the commands that write the inputs).

    python3 models/face_area/collect_results.py [--logs snapshots]

Reads
  <logs>/face_area_train.log   the log `minicnn train` writes: validation scores, time
  <logs>/face_area_test.log    `minicnn test ... --stage test` output: loss, mae and
                               baseline_mae averaged over the test split
Nothing is typed in by hand.
"""

import argparse
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))


def read_train_log(path):
    """{"iterations", "train_minutes", "val": [{"iteration", scores...}, ...]}; the time is the
    sum of the solver's display intervals, tests included."""
    tests, seconds, testing, last_iter = {}, {}, None, 0
    with open(path) as f:
        for line in f:
            m = re.search(r"Iteration (\d+) \([0-9.]+ iter/s, ([0-9.]+)s/", line)
            if m:
                seconds[int(m.group(1))] = float(m.group(2))
            m = re.search(r"Iteration (\d+)", line)
            if m:
                last_iter = max(last_iter, int(m.group(1)))
            m = re.search(r"Iteration (\d+), Testing net", line)
            if m:
                testing = tests.setdefault(int(m.group(1)), {"iteration": int(m.group(1))})
            m = re.search(r"Test net output #\d+: (\w+) = ([0-9.eE+-]+)", line)
            if m and testing is not None:
                testing[m.group(1)] = float(m.group(2))
    return {"iterations": last_iter, "train_minutes": round(sum(seconds.values()) / 60, 1),
            "val": [tests[k] for k in sorted(tests)]}


def read_test_log(path):
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^(\w+) = ([0-9.eE+-]+)", line.strip())
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", default="snapshots")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    args = ap.parse_args(argv)
    scores = read_test_log(os.path.join(args.logs, "face_area_test.log"))
    results = {"split": "test", "mae": scores["mae"], "baseline_mae": scores["baseline_mae"],
               "loss": scores.get("loss"),
               "train": read_train_log(os.path.join(args.logs, "face_area_train.log"))}
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {args.out}\n")
    t = results["train"]
    print("| Estimate | Mean absolute error (percentage points), test split |\n|---|---|")
    print(f"| constant: the training set's mean ratio | {results['baseline_mae']:.2f} |")
    print(f"| fine-tuned ResNet-50-1by2 + IP(1) + Sigmoid ({t['iterations']} iterations, "
          f"{t['train_minutes']:.0f} min) | {results['mae']:.2f} |")
    for v in t["val"]:
        print(f"val at iteration {v['iteration']}: " + ", ".join(
            f"{k} {val:.4g}" for k, val in v.items() if k != "iteration"))


if __name__ == "__main__":
    main()
