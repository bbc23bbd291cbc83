"""One worker against two on one PostgreSQL study, and a worker killed mid-trial (prints figures).

ResNet-20 (../shared checkpoint) on ../shared CIFAR-10-JPEG, the paper's random search at 50%
FLOPs, on smaller splits (``--val``, ``--calib``) to keep it affordable. Each run is the real
command, ``searchprune study run SMALL.yaml --storage URL --study-name ... --threads 1
[--workers 2]``, timed from start to exit; then the study is checked: exactly ``--trials``
COMPLETE trials, no configuration evaluated twice, no RUNNING trial left.

    python benchmarks/workers.py speed [--trials 24] [--val 1000] [--calib 512]
    python benchmarks/workers.py kill  [--trials 6] [--grace 6]

``kill`` starts two independent workers (1 thread each, heartbeat 1 s, grace ``--grace`` s),
SIGKILLs one while it evaluates, and reports when its trial turned FAIL and that the other
worker still brought the study to ``--trials``. The machine may be shared: the load average
(``os.getloadavg``) is printed with every timing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "resnet20-cifar10jpg.yaml"
URL = "postgresql://postgres@127.0.0.1:5432/test"


def small_config(folder: Path, args: argparse.Namespace, *, heartbeat: str = "") -> Path:
    path = folder / "resnet20-small.yaml"
    path.write_text(f"include: [{STUDY}]\n"
                    f"data: {{val_size: {args.val}, calib_size: {args.calib}}}\n"
                    f"search: {{n_trials: {args.trials}{heartbeat}}}\n")
    return path


def command(config: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "searchprune.cli.main", "study", "run", str(config),
            "--storage", URL, "--study-name", name, "--threads", "1", "--json", *extra]


def check(name: str, trials: int) -> str:
    storage = optuna.storages.RDBStorage(URL)
    ts = optuna.load_study(study_name=name, storage=storage).get_trials()
    states: dict[str, int] = {}
    for t in ts:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [tuple(t.params.values()) for t in ts if t.state == TrialState.COMPLETE]
    dupes = len(complete) - len(set(complete))
    ok = len(complete) == trials and dupes == 0 and "RUNNING" not in states
    return f"{states} duplicates={dupes} {'OK' if ok else 'NOT OK'}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def speed(args: argparse.Namespace, folder: Path) -> None:
    config = small_config(folder, args)
    times = {}
    for workers in (1, 2):
        name = f"bench-{workers}w-{uuid.uuid4().hex[:6]}"
        extra = ["--workers", str(workers)] if workers > 1 else []
        before = load()
        t = time.perf_counter()
        proc = subprocess.run(command(config, name, *extra), cwd=ROOT, capture_output=True,
                              text=True)
        times[workers] = time.perf_counter() - t
        print(f"{workers} worker(s): {times[workers]:.1f} s, exit {proc.returncode}; "
              f"{check(name, args.trials)}; {before} -> {load()}  [{name}]", flush=True)
        if proc.returncode:
            print(proc.stderr[-2000:])
    print(f"speed-up 1 -> 2 workers: {times[1] / times[2]:.2f}x")


def kill(args: argparse.Namespace, folder: Path) -> None:
    config = small_config(folder, args, heartbeat=f", heartbeat_interval: 1, grace_period: "
                                                  f"{args.grace}")
    name = f"bench-kill-{uuid.uuid4().hex[:6]}"
    storage = optuna.storages.RDBStorage(URL)
    victim = subprocess.Popen(command(config, name), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    other = subprocess.Popen(command(config, name), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    while True:  # wait until both evaluate; the victim's trial is the one it claimed
        try:
            running = [t for t in optuna.load_study(study_name=name, storage=storage)
                       .get_trials(states=(TrialState.RUNNING,)) if "budget_claim" in t.user_attrs]
        except KeyError:
            running = []
        if len(running) >= 2:
            break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.perf_counter()
    print(f"SIGKILL at {killed_at - t0:.1f} s with trials {[t.number for t in running]} "
          f"running; {load()}", flush=True)
    failed_at = None
    while other.poll() is None:
        fails = optuna.load_study(study_name=name, storage=storage).get_trials(
            states=(TrialState.FAIL,))
        if fails and failed_at is None:
            failed_at = time.perf_counter()
            print(f"trial {fails[0].number} FAIL {failed_at - killed_at:.1f} s after the kill "
                  f"(heartbeat 1 s, grace {args.grace} s)", flush=True)
        time.sleep(0.2)
    err = other.stderr.read() if other.stderr else ""
    print(f"surviving worker exit {other.returncode} at {time.perf_counter() - t0:.1f} s; "
          f"{check(name, args.trials)}")
    retried = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials()
               if t.state == TrialState.COMPLETE and any(
                   f.params == t.params for f in optuna.load_study(
                       study_name=name, storage=storage).get_trials(states=(TrialState.FAIL,)))]
    print(f"the dead trial's configuration was evaluated again as trial(s) "
          f"{[t.number for t in retried]}")
    if other.returncode:
        print(err[-2000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["speed", "kill"])
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--calib", type=int, default=512)
    parser.add_argument("--grace", type=int, default=6)
    args = parser.parse_args()
    args.trials = args.trials or (24 if args.mode == "speed" else 6)
    with tempfile.TemporaryDirectory() as folder:
        (speed if args.mode == "speed" else kill)(args, Path(folder))


if __name__ == "__main__":
    main()
