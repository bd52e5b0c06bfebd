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

from minicnn import monitor

HERE = os.path.dirname(os.path.abspath(__file__))


def read_train_log(path):
    """{"iterations", "train_minutes", "val": [{"iteration", scores...}, ...]}."""
    log = monitor.read_train_log(path)
    return {"iterations": log["iterations"], "train_minutes": log["train_minutes"],
            "val": log["tests"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", default="snapshots")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    args = ap.parse_args(argv)
    scores = monitor.read_test_log(os.path.join(args.logs, "face_area_test.log"))
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
