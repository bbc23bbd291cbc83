"""Several workers on one PostgreSQL study: exact budget, dead workers, signals.

The workers are real ``searchprune study run`` processes whose engine is the FakeEngine
(``tests/_fake_worker.py``), so each trial costs a sleep instead of a forward pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_fake_worker.py"
URL = "postgresql://postgres@127.0.0.1:5432/test"
INTERRUPTED = "interrupted: trial {} marked FAIL; re-run the same command to resume"


@pytest.fixture(scope="module")
def storage():
    try:
        import psycopg2

        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test",
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
          mark: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "FAKE_DELAY": str(delay), "PYTHONPATH": str(ROOT)}
    env.pop("SEARCHPRUNE_STORAGE", None)
    if mark is not None:
        mark.mkdir(exist_ok=True)
        env["FAKE_MARK"] = str(mark)
    return subprocess.Popen(
        [sys.executable, str(WORKER), "study", "run", str(config), "--storage", URL,
         "--study-name", name, "--n-trials", str(n_trials), "--json", *extra],
        env=env, cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def test_two_workers_stop_at_exactly_n_trials(storage, study_name, config):
    proc = start(config, study_name, 8, "--workers", "2", delay=0.1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    ts = trials(storage, study_name)
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == 8, states(ts)
    params = [tuple(t.params.values()) for t in complete]
    assert len(set(params)) == len(params), "a configuration was evaluated twice"
    # the only other trials: at most one refused (never evaluated) trial per extra worker
    others = [t for t in ts if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.PRUNED and "refused" in t.user_attrs for t in others)
    assert len(others) <= 1
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert study.user_attrs["workers_joined"] == 2


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
    assert states(ts).get("COMPLETE") == 5 and "RUNNING" not in states(ts), states(ts)
    (dead,) = [t for t in ts if t.state == TrialState.FAIL]
    # the heartbeat failed it after the grace period and queued its configuration again: the
    # retry is evaluated if a slot is still free when it comes up, else it stays queued
    # (WAITING) for a later extension of the study
    retried = [t for t in ts if t.number > dead.number and t.params == dead.params
               and t.state in (TrialState.COMPLETE, TrialState.WAITING)]
    assert len(retried) == 1


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
