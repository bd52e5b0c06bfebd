"""Gathers the measured SOS results into models/sos/results/results.json and prints the README's
tables from it (see README.md there for the commands that write the inputs).

    python3 models/sos/collect_results.py [--logs snapshots] [--results models/sos/results]

For each net (googlenet, finetune) whose files exist it reads
  <logs>/sos_<net>_train.log   the log `minicnn train` writes: validation accuracy, time
  <logs>/sos_<net>_test.log    `minicnn test ... --stage test` output: the test-split accuracy
  <results>/<net>/eval.json    `minicnn eval-saliency --out <results>/<net>`'s summary
Nothing is typed in by hand: a net without these files is left out.
"""

import argparse
import json
import os

from minicnn import monitor

NETS = {"googlenet": "small GoogLeNet, from scratch",
        "finetune": "open_nsfw ResNet-50-1by2, fine-tuned"}


def read_train_log(path):
    """{"iterations", "train_minutes", "val_accuracy": [[iteration, accuracy], ...]}."""
    log = monitor.read_train_log(path)
    return {"iterations": log["iterations"], "train_minutes": log["train_minutes"],
            "val_accuracy": [[t["iteration"], t["accuracy"]] for t in log["tests"]
                             if "accuracy" in t]}


def collect(logs, results):
    summary = {}
    for net in NETS:
        train = os.path.join(logs, f"sos_{net}_train.log")
        test = os.path.join(logs, f"sos_{net}_test.log")
        ev = os.path.join(results, net, "eval.json")
        if not all(os.path.exists(p) for p in (train, test, ev)):
            continue
        scores = monitor.read_test_log(test)
        summary[net] = {"net": NETS[net], "test_accuracy": scores["accuracy"],
                        "test_loss": scores.get("loss"), "train": read_train_log(train),
                        "eval": json.load(open(ev))}
    return summary


def tables(summary):
    lines = ["| Net | Iterations | Training (min, 1 core) | Val accuracy (500 images, last test) "
             "| Test accuracy (1,000 images) |", "|---|---|---|---|---|"]
    for net, r in summary.items():
        t = r["train"]
        val = (f"{100 * t['val_accuracy'][-1][1]:.1f}% (iteration {t['val_accuracy'][-1][0]})"
               if t["val_accuracy"] else "-")
        lines.append(f"| {r['net']} | {t['iterations']} | {t['train_minutes']:.0f} | {val} "
                     f"| {100 * r['test_accuracy']:.1f}% |")
    for net, r in summary.items():
        e = r["eval"]
        ratios = e["ratios"]
        lines += ["", f"{r['net']} (blob `{e['blob']}`; {e['with_objects']} of {e['images']} test "
                      f"images have objects; count accuracy of the deploy net "
                      f"{100 * e['accuracy']:.1f}%):", "",
                  "| Map | AUC | " + " | ".join(f"kept {q} (centred; area)" for q in ratios) + " |",
                  "|---|---|" + "---|" * len(ratios)]
        for m, entry in e["methods"].items():
            auc = "-" if entry["auc"] is None else f"{entry['auc']:.3f}"
            cells = [f"{100 * entry['crops'][q]['object_kept']:.1f}% "
                     f"({100 * entry['crops'][q]['centred_same_size']:.1f}%; "
                     f"{100 * entry['crops'][q]['area']:.0f}%)" for q in ratios]
            lines.append(f"| {m} | {auc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", default="snapshots")
    ap.add_argument("--results", default=os.path.join("models", "sos", "results"))
    args = ap.parse_args(argv)
    summary = collect(args.logs, args.results)
    path = os.path.join(args.results, "results.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {path} ({', '.join(summary) or 'no net'})\n")
    print(tables(summary))


if __name__ == "__main__":
    main()
