"""Several workers on one PostgreSQL study: exact budget (single and Pareto), dead workers,
signals.

The workers are real ``searchprune study run`` processes whose engine is the FakeEngine
(``tests/_fake_worker.py``), so each trial costs a sleep instead of a forward pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
from _helpers import start_worker
from optuna.trial import TrialState

pytestmark = pytest.mark.postgres

URL = "postgresql://postgres@127.0.0.1:5432/test"
INTERRUPTED = "interrupted: trial {} marked FAIL; re-run the same command to resume"


@pytest.fixture(scope="module")
def storage():
    try:
        import psycopg

        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test",
                        connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001  # any failure means: no server to test against
        pytest.skip(f"no PostgreSQL server answers at 127.0.0.1:5432 ({exc})")
    from searchprune.search import get_storage

    return get_storage(URL, heartbeat_interval=None)


@pytest.fixture
def study_name(storage):
    name = f"test-dist-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text("pruning: {gamma: 0.4, tolerance: 0.05, eta: 0.3}\n"
                    "search: {heartbeat_interval: 1, grace_period: 3, max_retry: 2}\n")
    return path


def start(config: Path, name: str, n_trials: int, *extra: str, delay: float = 0.1,
          mark: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return start_worker(config, URL, name, n_trials, *extra, delay=delay, mark=mark, env=env)


def wait_for_evaluation(mark: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(mark.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the worker never started an evaluation"
        time.sleep(0.05)


def trials(storage, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def states(ts) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in ts:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def run_two_workers(storage, name: str, config: Path, n: int) -> tuple[optuna.Study, str]:
    """Two workers to ``n`` trials: exactly ``n`` COMPLETE, none evaluated twice, the others
    never evaluated (outside the band, or refused: at most one, by the second worker)."""
    proc = start(config, name, n, "--workers", "2", delay=0.1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    ts = trials(storage, name)
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == n, states(ts)
    params = [tuple(t.params.values()) for t in complete]
    assert len(set(params)) == len(params), "a configuration was evaluated twice"
    others = [t for t in ts if t.state != TrialState.COMPLETE]
    refused = [t for t in others if "refused" in t.user_attrs]
    assert all(t.state == TrialState.PRUNED and "top1" not in t.user_attrs for t in others)
    assert all(t.user_attrs["feasible"] is False for t in others if t not in refused)
    assert len(refused) <= 1
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.user_attrs["workers_joined"] == 2
    return study, out


def test_two_workers_stop_at_exactly_n_trials(storage, study_name, config):
    study, _ = run_two_workers(storage, study_name, config, 8)
    # the band-aware random sampler never proposes out of band: the only other trial is refused
    assert len(study.trials) <= 9


def test_two_pareto_workers_stop_at_exactly_n_trials(storage, study_name, tmp_path):
    config = tmp_path / "pareto.yaml"
    config.write_text("pruning: {eta: 0.3}\n"
                      "search: {objective: pareto, gamma_range: [0.3, 0.8], sampler: nsga2}\n")
    study, out = run_two_workers(storage, study_name, config, 8)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.directions) == 2
    assert all(t.values == [t.user_attrs["top1"], t.user_attrs["flops_ratio"]]
               and 0.3 <= t.values[1] <= 0.8 for t in complete)
    summary = json.loads(out)  # the final summary of the parent process
    assert summary["objective"] == "pareto" and summary["evaluated"] == 8
    assert {t["number"] for t in summary["front"]} == {t.number for t in study.best_trials}


def test_killed_worker_trial_fails_and_the_study_still_finishes(storage, study_name, config,
                                                                tmp_path):
    slow = start(config, study_name, 5, delay=60, mark=tmp_path / "mark")
    wait_for_evaluation(tmp_path / "mark", slow)
    fast = start(config, study_name, 5, delay=0.1)
    time.sleep(0.5)
    slow.send_signal(signal.SIGKILL)
    slow.communicate(timeout=10)
    out, err = fast.communicate(timeout=60)
    assert fast.returncode == 0, err
    ts = trials(storage, study_name)
    assert states(ts).get("COMPLETE") == 5, states(ts)
    assert "RUNNING" not in states(ts) and "WAITING" not in states(ts), states(ts)
    # exactly one failure: the killed worker's trial (found dead by its pid, or by the heartbeat)
    (dead,) = [t for t in ts if t.state == TrialState.FAIL]
    assert dead.number == 0 and "top1" not in dead.user_attrs
    # its configuration was queued again once (by the liveness check: requeued_from; by the
    # heartbeat: failed_trial). Whether the retry ran depends on which came first, the retry or
    # the fast worker's last slot: evaluated (COMPLETE) if a slot was still free, else dropped
    # unrun as a candidate the budget no longer needs (PRUNED, refused): a trial that never ran
    # is not a failure, whatever the speed of either worker.
    (retry,) = [t for t in ts if dead.number in (t.user_attrs.get("requeued_from"),
                                                 t.system_attrs.get("failed_trial"))]
    assert (retry.params or retry.system_attrs["fixed_params"]) == dead.params
    if retry.state == TrialState.COMPLETE:
        assert "top1" in retry.user_attrs
    else:
        assert retry.state == TrialState.PRUNED and "top1" not in retry.user_attrs
        assert retry.user_attrs["refused"].startswith("not run: the study already holds 5 ")


def test_a_retry_the_budget_no_longer_needs_is_dropped_unrun_not_failed(storage, study_name,
                                                                       tmp_path):
    """A configuration still queued (WAITING) when the budget is met ends PRUNED with
    ``refused``: it never ran, so the study holds no failure for it."""
    from _helpers import FakeEngine, make_cfg

    from searchprune.search import run_study

    cfg = make_cfg(tmp_path, n_trials=3, storage=URL, **{"search.study_name": study_name})
    run_study(cfg, engine=FakeEngine(), progress=False)
    study = optuna.load_study(study_name=study_name, storage=storage)
    first = study.get_trials()[0]
    study.enqueue_trial(first.params, user_attrs={"requeued_from": first.number})
    run_study(cfg, engine=FakeEngine(), progress=False)  # the budget is met: it only tidies up
    ts = trials(storage, study_name)
    assert states(ts) == {"COMPLETE": 3, "PRUNED": 1}, states(ts)
    dropped = ts[-1]
    assert dropped.state == TrialState.PRUNED and "top1" not in dropped.user_attrs
    assert dropped.user_attrs["refused"] == "not run: the study already holds 3 evaluated trials"


def worker_pid(mark: Path, proc: subprocess.Popen[str], index: int, timeout: float = 60) -> int:
    """The pid of worker ``index`` of ``--workers K`` once it has started an evaluation."""
    deadline = time.monotonic() + timeout
    while True:
        for f in mark.iterdir():
            if f.read_text() == str(index):
                return int(f.name)
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"worker {index} never started an evaluation"
        time.sleep(0.05)


def test_kill_9_of_the_second_worker_fails_its_trial_and_the_first_finishes(
        storage, study_name, tmp_path):
    """``kill -9`` of worker 2 of 2 mid-trial: the parent reaps it and fails its trial at once
    (found dead by its pid, not after the 120 s grace period of the heartbeat) while worker 1 is
    still busy, worker 1 then reaches the budget, and the parent exits non-zero with one line
    naming the dead worker."""
    config = tmp_path / "grace.yaml"  # the default grace period: 120 s
    config.write_text("pruning: {gamma: 0.4, tolerance: 0.05, eta: 0.3}\n"
                      "search: {heartbeat_interval: 1, grace_period: 120}\n")
    mark = tmp_path / "mark"
    # Both workers start a trial; worker 2's never ends, worker 1's waits for a third mark,
    # which this test writes once it has seen what the parent does about worker 2.
    proc = start(config, study_name, 4, "--workers", "2", delay=0.1, mark=mark,
                 env={"FAKE_BARRIER": "3", "FAKE_HANG": "2"})
    try:
        pid = worker_pid(mark, proc, 2)
        worker_pid(mark, proc, 1)
        (held,) = [t.number for t in trials(storage, study_name)
                   if t.user_attrs.get("worker", {}).get("pid") == pid]
        os.kill(pid, signal.SIGKILL)
        # worker 1 still runs: the parent must reap worker 2 anyway (no zombie left) and fail
        # its trial itself
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), proc, "worker 2 was never reaped")
        wait_until(lambda: trials(storage, study_name)[held].state == TrialState.FAIL, proc,
                   "the dead worker's trial was not failed")
        (mark / "go").touch()  # release worker 1
        out, err = proc.communicate(timeout=100)  # a guard against a hang, below the 120 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert err.splitlines() == [
        f"error: worker 2 (pid {pid}) was killed by SIGKILL; the other worker finished the "
        "study: 4 of 4 evaluated trials"], err
    ts = trials(storage, study_name)
    assert states(ts).get("COMPLETE") == 4, states(ts)
    assert "RUNNING" not in states(ts) and "WAITING" not in states(ts), states(ts)
    (dead,) = [t for t in ts if t.state == TrialState.FAIL]
    assert dead.number == held
    # failed by the liveness check (the heartbeat would have waited 120 s and left no reason)
    assert dead.user_attrs["fail_reason"] == (
        f"interrupted: worker pid {pid} on {dead.user_attrs['worker']['host']} is gone")
    (retry,) = [t for t in ts if t.user_attrs.get("requeued_from") == held]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params


def wait_until(condition, proc: subprocess.Popen[str], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_zombie_worker_counts_as_gone():
    """A worker that has exited but is not yet reaped by its parent still has a /proc entry
    with its start time: it must not keep its trial RUNNING."""
    from searchprune.search._liveness import _start_time, identity, is_gone

    proc = subprocess.Popen(["sleep", "60"])
    try:
        worker = {**identity(), "pid": proc.pid, "start": _start_time(proc.pid)}
        assert worker["start"] is not None and is_gone(worker) is False
        os.kill(proc.pid, signal.SIGKILL)  # not waited for: a zombie until proc.wait()
        deadline = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert Path(f"/proc/{proc.pid}").exists()  # still listed, as the issue found it
        assert is_gone(worker) is True
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_abandons_the_trial_and_exits(storage, study_name, config, tmp_path, sig):
    proc = start(config, study_name, 3, delay=60, mark=tmp_path / "mark")
    wait_for_evaluation(tmp_path / "mark", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert err.strip().splitlines() == [INTERRUPTED.format(0)]
    (t,) = trials(storage, study_name)
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"] == f"interrupted by {signal.Signals(sig).name}"
    if sig == signal.SIGINT:
        return
    # re-running the same command resumes, and the abandoned configuration is evaluated
    again = start(config, study_name, 3, delay=0.05)
    assert again.communicate(timeout=60)[1] == "" and again.returncode == 0
    ts = trials(storage, study_name)
    assert states(ts) == {"FAIL": 1, "COMPLETE": 3}
    (requeued,) = [t for t in ts if t.user_attrs.get("requeued_from") == 0]
    assert requeued.params == ts[0].params and requeued.state == TrialState.COMPLETE


def test_sigterm_to_the_parent_of_workers(storage, study_name, config, tmp_path):
    proc = start(config, study_name, 4, "--workers", "2", delay=60, mark=tmp_path / "mark")
    deadline = time.monotonic() + 40
    while len(list((tmp_path / "mark").iterdir())) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "interrupted: trials 0, 1 marked FAIL; re-run the same command to resume")
    assert states(trials(storage, study_name)) == {"FAIL": 2}
