"""Several workers on one PostgreSQL study: exact budget (single and Pareto), dead workers,
signals.

The workers are real ``searchprune study run`` processes whose engine is the FakeEngine
(``tests/_fake_worker.py``), so each trial costs a sleep instead of a forward pass.
"""

from __future__ import annotations

import json
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
          mark: Path | None = None) -> subprocess.Popen[str]:
    return start_worker(config, URL, name, n_trials, *extra, delay=delay, mark=mark)


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
