"""Nothing crashes a study: a trial that raises FAILs with its reason and the study goes on;
``search.max_consecutive_failures`` FAILs in a row stop the run in one line (issue 23 part 4)."""

from __future__ import annotations

import logging

import optuna
import pytest
from _helpers import FakeEngine, make_cfg, run, start_worker
from optuna.trial import TrialState

from searchprune.config import load_config
from searchprune.errors import ConfigError
from searchprune.search.callbacks import FAILURE_STOP_ATTR, TrialsFailing, failure_streak


class Raising(FakeEngine):
    """Raises on the evaluations whose call number (1-based) is in ``bad`` (all when None)."""

    def __init__(self, bad: set[int] | None = None, every: int = 0) -> None:
        super().__init__()
        self.bad, self.every = bad, every

    def evaluate(self, widths, *, split="val", on_chunk=None):
        call = self.calls + 1
        if self.bad is None or call in self.bad or (self.every and call % self.every):
            self.calls += 1
            raise ValueError(f"shapes do not match at call {call}\n  second line of detail")
        return super().evaluate(widths, split=split, on_chunk=on_chunk)


def _load(storage: optuna.storages.BaseStorage) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=storage)


def test_a_trial_that_raises_fails_with_its_reason_and_the_study_goes_on(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    study = run(make_cfg(tmp_path, n_trials=4), engine=Raising(bad={1, 3, 4}))
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4  # a FAIL is not an evaluated trial: the budget still gets 4
    assert [t.user_attrs["fail_reason"] for t in failed] == [
        f"ValueError: shapes do not match at call {c}" for c in (1, 3, 4)]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in lines if "failed" in m] == [
        f"trial {t.number} failed: ValueError: shapes do not match at call {c}"
        for t, c in zip(failed, (1, 3, 4), strict=True)]  # one line each, not Optuna's two
    assert FAILURE_STOP_ATTR not in study.user_attrs


def test_failures_in_a_row_below_the_limit_do_not_stop_the_study(tmp_path):
    # calls 1-4, 6-9, ... raise: 4 FAILs between evaluated trials, the limit is 5
    study = run(make_cfg(tmp_path, n_trials=3), engine=Raising(bad=set(), every=5))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 12


def test_k_failures_in_a_row_stop_the_run_naming_the_last_trial(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    cfg = make_cfg(tmp_path, n_trials=3, **{"search.max_consecutive_failures": 4})
    with pytest.raises(TrialsFailing) as info:
        run(cfg, engine=Raising(bad=set(), every=5), storage=storage)
    assert str(info.value) == (
        "stopped after 4 failed trials in a row (search.max_consecutive_failures: 4); the last, "
        "trial 3, failed with ValueError: shapes do not match at call 4; fix the cause (rerun "
        "with --debug for the tracebacks) and re-run the same command to resume")
    assert [t.state for t in _load(storage).get_trials()] == [TrialState.FAIL] * 4


def test_a_new_run_after_the_stop_counts_afresh_and_finishes(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    cfg = make_cfg(tmp_path, n_trials=2, **{"search.max_consecutive_failures": 2})
    with pytest.raises(TrialsFailing):
        run(cfg, engine=Raising(), storage=storage)
    study = run(cfg, engine=FakeEngine(), storage=storage)  # the cause fixed
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2
    # and a still broken engine gets its 2 tries in the next run, not 0
    with pytest.raises(TrialsFailing, match="trial 5, failed"):
        run(make_cfg(tmp_path, n_trials=3, **{"search.max_consecutive_failures": 2}),
            engine=Raising(), storage=storage)


def test_interrupted_and_rejected_trials_neither_count_nor_break_a_streak():
    def trial(state, **attrs):
        return optuna.trial.create_trial(state=state, user_attrs=attrs,
                                         value=1.0 if state == TrialState.COMPLETE else None)

    study = optuna.create_study()
    for t in [trial(TrialState.COMPLETE), trial(TrialState.FAIL, fail_reason="ValueError: a"),
              trial(TrialState.PRUNED, feasible=False),
              trial(TrialState.FAIL, fail_reason="interrupted by SIGINT"),
              trial(TrialState.FAIL),  # failed by the heartbeat: no reason of its own
              trial(TrialState.FAIL, fail_reason="ValueError: b")]:
        study.add_trial(t)
    streak = failure_streak(study.get_trials())
    assert [t.user_attrs["fail_reason"] for t in streak] == ["ValueError: a", "ValueError: b"]
    assert failure_streak(study.get_trials(), first=2) == streak[1:]
    study.add_trial(trial(TrialState.PRUNED, stopped_early=True))  # evaluated: the streak ends
    assert failure_streak(study.get_trials()) == []


def test_the_limit_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("search: {max_consecutive_failures: 0}\n")
    with pytest.raises(ConfigError, match=r"'search.max_consecutive_failures' must be >= 1"):
        load_config(path)


def _config(tmp_path, limit: int):
    path = tmp_path / "fake.yaml"
    path.write_text("pruning: {gamma: 0.4, tolerance: 0.05, eta: 0.3}\n"
                    f"search: {{max_consecutive_failures: {limit}}}\n")
    return path


def test_cli_stops_after_k_failures_in_one_line(tmp_path):
    db = tmp_path / "s.db"
    proc = start_worker(_config(tmp_path, 3), str(db), "s", 4, delay=0.0,
                        env={"FAKE_RAISE": "the model's forward broke\nmore detail"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert lines[-1] == (
        "error: stopped after 3 failed trials in a row (search.max_consecutive_failures: 3); "
        "the last, trial 2, failed with RuntimeError: the model's forward broke; fix the cause "
        "(rerun with --debug for the tracebacks) and re-run the same command to resume")
    assert lines[:-1] == [f"WARNING searchprune.search.objective: trial {n} failed: "
                          "RuntimeError: the model's forward broke" for n in range(3)]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert [t.user_attrs["fail_reason"] for t in study.get_trials()] == [
        "RuntimeError: the model's forward broke"] * 3


def test_cli_with_workers_stops_all_of_them_in_one_line(tmp_path):
    db = tmp_path / "s.db"
    proc = start_worker(_config(tmp_path, 3), str(db), "s", 4, "--workers", "2", delay=0.0,
                        env={"FAKE_RAISE": "boom"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == errors[0]  # after the workers' trial lines
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    mark = study.user_attrs[FAILURE_STOP_ATTR]
    assert errors[0].startswith(f"error: stopped after {mark['count']} failed trials in a row")
    assert f"the last, trial {mark['trial']}, failed with RuntimeError: boom;" in errors[0]
    trials = study.get_trials()
    assert mark["count"] >= 3 and len(trials) >= 3
    assert all(t.state == TrialState.FAIL for t in trials)
    assert study.trials[mark["trial"]].user_attrs["fail_reason"] == "RuntimeError: boom"
