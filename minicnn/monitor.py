"""Watching training: a progress bar, Caffe-style log lines in a log file, and the training
curve (every iteration's loss and learning rate, every test's outputs) as CSV and PNG; and
reading such logs back (read_train_log, read_test_log) for result tables.

    monitor = TrainingMonitor(solver, prefix="snapshots/lenet")
    solver.solve()
    monitor.close()          # writes snapshots/lenet_curve.csv and _curve.png

The log file's lines carry glog's prefix (``I1122 13:05:01.123456 4242 solver.py] ...``), so
Caffe's log parsers (tools/extra/parse_log.py) read them. tqdm draws the bar when the output is
a terminal and is installed; matplotlib draws the PNG when installed.
"""

import csv
import datetime
import math
import os
import re
import sys
import time

from minicnn.errors import os_reason
from minicnn.proto.wire import atomic_write


class TrainingMonitor:
    def __init__(self, solver, prefix, progress=None, stream=None):
        self.solver, self.prefix = solver, prefix
        self.stream = stream or sys.stdout
        folder = os.path.dirname(prefix)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.log_path = f"{prefix}_train.log"
        self.csv_path, self.png_path = f"{prefix}_curve.csv", f"{prefix}_curve.png"
        self.log_file = open(self.log_path, "a", encoding="utf-8")
        self.rows = {}                          # iteration -> {column: value}
        self.columns = ["iteration", "loss", "smoothed_loss", "lr"]
        self.last_test, self.last_test_iter = {}, None
        self._earlier_kept = False
        self._unwritable = set()                # curve files that could not be written
        self.bar = self._make_bar(progress)
        self._t0, self._it0 = time.perf_counter(), solver.iter
        solver._log = self.log
        solver.on_iteration.append(self._on_iteration)
        solver.on_test.append(self._on_test)

    def _make_bar(self, progress):
        if progress is False or (progress is None and not self.stream.isatty()):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.solver.param.max_iter, initial=self.solver.iter, unit="it",
                    dynamic_ncols=True, file=self.stream, leave=True)

    # --- events ------------------------------------------------------------------------------
    def log(self, message, console=True):
        """A log line for the log file (with glog's prefix) and, with ``console``, the terminal."""
        now = time.time()
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
        if self.log_file is not None:
            try:
                self.log_file.write(f"I{stamp} {os.getpid()} solver.py] {message}\n")
                self.log_file.flush()
            except OSError as e:           # the disk is full: glog, too, trains on without it
                self._drop_log_file(e)
        if not console:
            return
        if self.bar is not None:
            if message.startswith("    ") or message.startswith("Iteration"):
                return                          # the bar shows these; the log file keeps them
            self._console(self.bar.write, message, file=self.stream)
        elif self.stream is not None:
            self._console(print, message, file=self.stream, flush=True)

    def _drop_log_file(self, error):
        log_file, self.log_file = self.log_file, None
        try:
            log_file.close()
        except OSError:
            pass
        self._warn(f"cannot write the log file {self.log_path} ({os_reason(error)}): training goes "
                   "on, logged here only")

    def _warn(self, message):
        """A warning for the terminal and, while it can be written, the log file."""
        message = "warning: " + message
        if self.log_file is not None:
            self.log(message)
        elif self.bar is not None:
            self._console(self.bar.write, message, file=self.stream)
        elif self.stream is not None:
            self._console(print, message, file=self.stream, flush=True)

    def say(self, message):
        """A line for the terminal only (the CLI's summary), while there is one."""
        if self.stream is not None:
            self._console(print, message, file=self.stream, flush=True)

    def _console(self, write, *args, **kwargs):
        """write(*args) to the terminal; once the terminal is gone (an ssh drop: EIO, or a
        closed pipe), the log file alone goes on, and training with it, as Caffe's glog does
        (its SIGHUP snapshot was lost to the error otherwise)."""
        try:
            write(*args, **kwargs)
        except OSError:
            self.stream = self.bar = None

    def _on_iteration(self, solver, loss, rate):
        it = solver.iter - 1                    # the loss and lr of the update just made
        row = self.rows.setdefault(it, {"iteration": it})
        row.update(loss=loss, smoothed_loss=solver.smoothed_loss, lr=rate)
        if self.bar is not None:
            elapsed = time.perf_counter() - self._t0
            speed = (solver.iter - self._it0) / elapsed if elapsed else 0.0
            postfix = {"loss": f"{solver.smoothed_loss:.4g}", "lr": f"{rate:.3g}",
                       "it/s": f"{speed:.3g}"}
            postfix.update({k: f"{v:.4g}" for k, v in self.last_test.items()})
            self.bar.set_postfix(postfix, refresh=False)
            self._console(self.bar.update, 1)

    def _on_test(self, solver, index, outputs):
        row = self.rows.setdefault(solver.iter, {"iteration": solver.iter})
        self.last_test_iter = solver.iter
        for name, value in outputs.items():
            if isinstance(value, float):
                column = f"test{index}/{name}"
                if column not in self.columns:
                    self.columns.append(column)
                row[column] = value
                self.last_test[column] = value
        self._write_curve(self.write_csv)

    def _write_curve(self, write):
        """write() (the curve's CSV or PNG); if it fails (disk full, no permission), warn once
        per file and train on: the curve is a view of the log, which keeps its numbers."""
        try:
            write()
        except OSError as e:
            path = self.png_path if write == self.write_png else self.csv_path
            if path not in self._unwritable:
                self._unwritable.add(path)
                self._warn(f"cannot write the training curve {path} ({os_reason(e)}); the log "
                           f"file {self.log_path} keeps its numbers")

    # --- outputs -----------------------------------------------------------------------------
    def _keep_earlier_rows(self):
        """A resumed run's curve starts where the snapshot was taken: the rows before it come
        from the curve file the earlier run wrote (the log file is appended to likewise)."""
        first = min(self.rows)
        if first <= 0:
            return
        try:
            with open(self.csv_path, newline="") as f:
                earlier = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError):
            return
        for row in earlier:
            try:
                it = int(row["iteration"])
                values = {k: float(v) for k, v in row.items()
                          if k and k != "iteration" and v not in ("", None)}
            except (KeyError, TypeError, ValueError):
                continue
            if it < first:
                self.rows[it] = {"iteration": it, **values}
                self.columns += [k for k in values if k not in self.columns]

    def write_csv(self):
        if not self._earlier_kept:                 # before this run first replaces the file
            self._keep_earlier_rows()
            self._earlier_kept = True
        with atomic_write(self.csv_path, "w") as f:      # a crash keeps the earlier rows
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            for it in sorted(self.rows):
                writer.writerow(self.rows[it])

    def write_png(self):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        its = sorted(it for it in self.rows if "loss" in self.rows[it])
        tests = [c for c in self.columns if c.startswith("test")]
        fig, axes = plt.subplots(2 if tests else 1, 1, figsize=(8, 6 if tests else 3.5),
                                 sharex=True, squeeze=False)
        ax = axes[0][0]
        losses = [self.rows[i]["loss"] for i in its]
        window = max(1, self.solver.param.average_loss, len(losses) // 50)
        ax.plot(its, losses, lw=0.5, alpha=0.4, label="loss")
        if window > 1 and len(losses) >= window:      # a moving average shows the trend
            trend = [sum(losses[k - window + 1:k + 1]) / window
                     for k in range(window - 1, len(losses))]
            ax.plot(its[window - 1:], trend, lw=1.5, label=f"mean of {window} iterations")
        ax.set_ylabel("training loss")
        ax.legend(loc="upper right")
        if tests:
            ax = axes[1][0]
            for column in tests:
                points = sorted((i, r[column]) for i, r in self.rows.items() if column in r)
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=column)
            ax.set_ylabel("test outputs")
            ax.legend(loc="best")
        axes[-1][0].set_xlabel("iteration")
        fig.tight_layout()
        try:
            with atomic_write(self.png_path, "wb") as f:
                fig.savefig(f, dpi=100, format="png")
        finally:
            plt.close(fig)
        return self.png_path

    def close(self):
        """Write the curve and close the log file. A curve that cannot be written is a warning,
        not an error: close() is called after training, also after one that failed, whose
        error it must not replace."""
        if self.bar is not None:
            self._console(self.bar.close)
        if self.rows:
            self._write_curve(self.write_csv)
            self._write_curve(self.write_png)
        if self.log_file is not None:
            try:
                self.log_file.close()
            except OSError as e:
                self.log_file = None
                self._warn(f"cannot write the log file {self.log_path} ({os_reason(e)})")
            self.log_file = None


def read_train_log(path):
    """{"iterations", "train_minutes", "tests": [{"iteration", output: value, ...}, ...]} of a
    training log (minicnn's or Caffe's lines). The time is the sum of the solver's display
    intervals ("Iteration N (r iter/s, Ts/50 iters)"), tests included; a line the log holds twice
    (a resumed run) counts once."""
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
            "tests": [tests[k] for k in sorted(tests)]}


def read_test_log(path):
    """{output: value} of the averages `minicnn test` prints last ("name = value" lines)."""
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^(\w+) = ([0-9.eE+-]+)", line.strip())
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


_GLOG_TIME = re.compile(r"^[IWEF](\d\d)(\d\d) (\d+):(\d+):(\d+)\.(\d+) ")
_NET_OUTPUT = {kind: re.compile(rf"{kind} net output #(\d+): (\S+) = ([\.\deE+-]+)")
               for kind in ("Train", "Test")}
_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def _glog_time(line, year):
    """The time of a glog line (``I1122 13:05:01.123456 ...``), or None."""
    m = _GLOG_TIME.match(line.strip())
    if m is None:
        return None
    month, day, hour, minute, second, micro = (int(g) for g in m.groups())
    try:
        return datetime.datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        return None


def parse_log(path):
    """The training log of Caffe (or of minicnn, which writes the same lines) as two lists of
    rows, as Caffe's tools/extra/parse_log.py reads it: ``train`` from the "Train net output"
    lines, ``test`` from the "Test net output" lines, each row {"NumIters", "Seconds",
    "LearningRate", output name: value, ...} for one iteration. Seconds count from the log's
    first time stamp (its year from the file's date; a month going back means a new year);
    the first row takes the second row's learning rate (parse_log.py's fix for the NaN before
    the first "lr =" line), and, as there, a last row with fewer outputs than the first is
    dropped."""
    year = datetime.datetime.fromtimestamp(os.path.getmtime(path)).year
    rows = {"Train": [], "Test": []}
    current = {"Train": None, "Test": None}
    iteration, learning_rate = -1, math.nan
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = iter(f)
        start = None
        for line in lines:                  # parse_log.py reads up to the first time stamp
            start = _glog_time(line, year)
            if start is not None:
                break
        if start is None:
            return {"train": [], "test": []}
        last = start
        for line in lines:
            m = re.search(r"Iteration (\d+)", line)
            if m:
                iteration = float(m.group(1))
            if iteration == -1:
                continue                    # nothing counts before the first iteration
            stamp = _glog_time(line, year)
            if stamp is None:
                continue                    # not a log line (a resumed solver's output)
            if stamp.month < last.month:
                year += 1
                stamp = _glog_time(line, year)
            last = stamp
            seconds = (stamp - start).total_seconds()
            m = _LEARNING_RATE.search(line)
            if m:
                learning_rate = float(m.group(1))
            for kind, pattern in _NET_OUTPUT.items():
                row, done = current[kind], rows[kind]
                m = pattern.search(line)
                if m:
                    if row is None or row["NumIters"] != iteration:
                        if row is not None:
                            done.append(row)
                        row = {"NumIters": iteration, "Seconds": seconds,
                               "LearningRate": learning_rate}
                    row[m.group(2)] = float(m.group(3))
                if row is not None and done and len(row) == len(done[0]):
                    done.append(row)        # as many columns as the first row: complete
                    row = None
                current[kind] = row
    for done in rows.values():
        if len(done) > 1:
            done[0]["LearningRate"] = done[1]["LearningRate"]
    return {"train": rows["Train"], "test": rows["Test"]}


def write_parsed_log(rows, path, delimiter=","):
    """parse_log's rows as a CSV file (the first row's columns; Excel's dialect, as
    parse_log.py), atomically; nothing is written for no rows. Returns whether it wrote."""
    from minicnn.proto.wire import atomic_write
    if not rows:
        return False
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter,
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return True
