"""Confirmation (``search.confirm``, ``study confirm``): the top-k trials re-scored on images
disjoint from validation, calibration, test and training, and the pick made by that."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import optuna
import pytest
from _helpers import FakeEngine, make_cfg, one_line_error, run, start_worker
from optuna.trial import TrialState

from searchprune.cli.study import _summary
from searchprune.config import DataConfig, apply_overrides
from searchprune.data import draw_splits, load_data
from searchprune.errors import ConfigError
from searchprune.search import get_storage, resolve_problem, run_study
from searchprune.search.confirm import confirm_study, confirmations, pending, ranked_trials
from searchprune.search.finishing import top_trials
from searchprune.search.trials import best_trials


class ConfirmEngine(FakeEngine):
    """The fake engine whose confirmation accuracy is ``flip``: a function of the validation
    accuracy (the default reverses the order: the best on validation is the worst confirmed);
    it counts confirmation evaluations per configuration."""

    def __init__(self, flip=lambda top1: 200.0 - top1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.flip = flip
        self.confirmed: list[tuple[int, ...]] = []
        self.lock = threading.Lock()

    def evaluate(self, widths, *, split="val", on_chunk=None):
        result = super().evaluate(widths, split=split, on_chunk=on_chunk)
        if split == "confirm":
            with self.lock:
                self.confirmed.append(tuple(sorted(widths.values())))
            result.top1, result.images = self.flip(result.top1), 321
        return result


def _cfg(tmp_path: Path, n_trials: int = 10, top_k: int = 3, **overrides):
    return make_cfg(tmp_path, "random", n_trials=n_trials,
                    **{"search.confirm": {"top_k": top_k}, **overrides})


# -- the images --------------------------------------------------------------------------------
@pytest.mark.parametrize("caps", [{}, {"test_size": 40, "train_size": 500}])
def test_confirmation_indices_with_val_from_test_are_the_unused_part_of_the_validation_half(
        caps):
    idx = draw_splits(1497, 300, calib_size=64, val_size=100, val_from="test", seed=3, **caps)
    confirm, val, test = (set(s.tolist()) for s in (idx.confirm, idx.val, idx.test))
    assert len(confirm) == idx.confirm.numel() == 150 - 100  # half of 300, less val's 100
    assert not confirm & val and not confirm & test  # the same (test) index space
    full = draw_splits(1497, 300, calib_size=64, val_size=100, val_from="test", seed=3)
    assert confirm | val | set(full.test.tolist()) == set(range(300))  # the half's rest exactly
    # calib and train index the official training set: never the test images confirm uses
    assert idx.calib.max() < 1497 and idx.val_from == "test"
    some = draw_splits(1497, 300, calib_size=64, val_size=100, val_from="test", seed=3,
                       confirm_size=20)
    assert some.confirm.tolist() == idx.confirm[:20].tolist()
    with pytest.raises(Exception, match="search.confirm.images 51 exceeds the 50 images"):
        draw_splits(1497, 300, calib_size=64, val_size=100, val_from="test", confirm_size=51)


@pytest.mark.parametrize("train_size", [None, 300])
def test_confirmation_indices_with_val_from_train_are_held_out_before_training(train_size):
    idx = draw_splits(1497, 300, calib_size=64, val_size=400, seed=3, confirm_size=200,
                      train_size=train_size)
    confirm, val, train, calib = (set(s.tolist()) for s in (idx.confirm, idx.val, idx.train,
                                                            idx.calib))
    assert len(confirm) == 200
    assert not confirm & val and not confirm & train and not confirm & calib
    if train_size is None:  # every training image is validation, confirmation or training
        assert confirm | val | train == set(range(1497)) and len(train) == 1497 - 600
    without = draw_splits(1497, 300, calib_size=64, val_size=400, seed=3, train_size=train_size)
    assert without.confirm.numel() == 0 and without.val.tolist() == idx.val.tolist()
    if train_size is None:
        assert set(without.train.tolist()) == train | confirm  # only the hold-out moved


def test_the_loaded_confirmation_images_are_the_drawn_ones_and_not_trained_on():
    held = load_data(DataConfig(val_size=400), confirm_images=200)
    plain = load_data(DataConfig(val_size=400))
    assert held.train_size == plain.train_size - 200 == 1497 - 600
    train, confirm = set(held._train_indices.tolist()), set(held._confirm_indices.tolist())
    assert len(confirm) == held.confirm_size == len(held.confirm) == 200 and not train & confirm
    assert held.confirm_from == "train"
    raw = held._train_raw
    assert held.confirm.y.tolist() == raw.labels[held._confirm_indices].tolist()
    half = load_data(DataConfig(val_from="test", val_size=100))
    assert half.confirm_from == "test" and len(half.confirm) == 150 - 100
    # the built-in baseline's cache key covers its training images: trained without them
    from searchprune.config import ModelConfig
    from searchprune.models.baseline import _cache_file

    assert _cache_file(ModelConfig(), held, Path("c")) != _cache_file(ModelConfig(), plain,
                                                                      Path("c"))


@pytest.mark.parametrize("overrides, match", [
    ({"search.confirm": {"top_k": 0}}, "search.confirm.top_k must be an integer >= 1"),
    ({"search.confirm": {"topk": 3}}, "unknown key 'topk' in search.confirm"),
    ({"search.confirm": 5}, "search.confirm must be"),
    ({"search.confirm": {"images": 1.5}}, "search.confirm.images must be an integer"),
    ({"search.confirm": {}, "model.checkpoint": "net.pt"}, "never trained on"),
    ({"search.confirm": {}, "setting": "scratch"}, "never trained on"),
    ({"search.confirm": {}, "search.objective": "pareto", "search.gamma_range": [0.3, 0.6]},
     "search.objective: single"),
])
def test_bad_confirm_settings_are_one_line_config_errors(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_cfg(tmp_path, **overrides)
    # with val_from: test a checkpoint from elsewhere is fine (the half was never trained on)
    make_cfg(tmp_path, **{"search.confirm": {}, "model.checkpoint": "net.pt",
                          "data.val_from": "test"})


def test_a_validation_half_taken_whole_is_refused_before_any_trial(tmp_path):
    cfg = _cfg(tmp_path, **{"data.val_from": "test", "data.val_size": 150})
    engine = FakeEngine()
    engine.data = load_data(cfg.data)  # 300 test images: the half is all validation
    with pytest.raises(ConfigError, match="search.confirm has no images"):
        resolve_problem(cfg, engine)


# -- the pick ----------------------------------------------------------------------------------
def test_study_run_confirms_the_top_k_and_the_pick_follows_confirmation(tmp_path):
    engine = ConfirmEngine()
    study = run(_cfg(tmp_path), engine)
    by_val = best_trials(study)
    top = [t.number for t in by_val[:3]]
    confirmed = confirmations(study)
    assert sorted(confirmed) == sorted(top) and len(engine.confirmed) == 3
    for n, c in confirmed.items():  # both accuracies stored per trial, on the split's images
        trial = study.trials[n]
        assert c.val_top1 == trial.value and c.top1 == 200.0 - trial.value and c.images == 321
    ranked = ranked_trials(study)
    # confirmation reverses the order: the third best on validation is the pick
    assert [t.number for t in ranked[:3]] == top[::-1]
    assert ranked[0].number != by_val[0].number
    assert [t.number for t in ranked[3:]] == [t.number for t in by_val[3:]]
    assert top_trials(study, 1)[0].number == top[2]  # what finetune and export start from
    summary = _summary(study)  # study show / study run
    assert summary["best_trial"]["number"] == top[2]
    assert summary["confirm"]["pick"] == top[2]
    assert summary["confirm"]["best_on_validation"] == top[0]
    rows = summary["confirm"]["trials"]
    assert [r["number"] for r in rows] == top[::-1]
    assert all(r["val_top1"] is not None and r["confirm_top1"] is not None
               and r["flops_ratio"] is not None for r in rows)


def test_confirmation_that_agrees_with_validation_keeps_the_pick(tmp_path):
    study = run(_cfg(tmp_path), ConfirmEngine(flip=lambda top1: top1 - 3.0))
    assert ranked_trials(study)[0].number == best_trials(study)[0].number
    assert [t.number for t in ranked_trials(study)] == [t.number for t in best_trials(study)]


def test_resume_does_not_redo_confirmed_trials(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    engine = ConfirmEngine()
    cfg = _cfg(tmp_path, n_trials=8)
    study = run(cfg, engine, storage)
    assert len(engine.confirmed) == 3
    run(cfg, engine, storage)  # complete and confirmed: nothing to do
    assert len(engine.confirmed) == 3
    before = set(confirmations(study))
    more = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, n_trials=20))
    study = run(more, engine, storage)
    top = {t.number for t in best_trials(study)[:3]}
    assert len(engine.confirmed) == 3 + len(top - before)  # only the newcomers to the top 3
    assert top <= set(confirmations(study)) and not pending(study, _spec(more))
    assert len(set(engine.confirmed)) == len(engine.confirmed)  # no configuration twice


def _spec(cfg):
    from searchprune.confirmation import confirm_spec

    return confirm_spec(cfg)


def test_new_confirmation_images_start_afresh(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    engine = ConfirmEngine()
    cfg = _cfg(tmp_path, n_trials=6, top_k=2)
    study = run(cfg, engine, storage)
    other = apply_overrides(cfg, {"search.confirm": {"top_k": 2, "images": 50}})
    assert len(pending(study, _spec(other))) == 2  # other images: not comparable, redone
    confirm_study(study, resolve_problem(other, engine))
    assert len(engine.confirmed) == 4 and study.user_attrs["confirm"]["images_requested"] == 50


def test_parallel_confirmations_split_the_work_under_the_study_lock(tmp_path):
    cfg = _cfg(tmp_path, n_trials=10, top_k=4)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    run_study(dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, confirm=None)),
              engine=FakeEngine(), progress=False, storage=get_storage(url))
    engine = ConfirmEngine()
    problem = resolve_problem(cfg, engine)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            study = optuna.load_study(study_name="s", storage=get_storage(url))
            confirm_study(study, problem)
        except BaseException as exc:  # noqa: BLE001 -- reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    study = optuna.load_study(study_name="s", storage=get_storage(url))
    assert len(engine.confirmed) == 4 == len(set(engine.confirmed))  # each trial once
    assert set(confirmations(study)) == {t.number for t in best_trials(study)[:4]}


# -- the command line ----------------------------------------------------------------------------
def test_study_confirm_command_confirms_once_and_study_show_shows_both_columns(tmp_path):
    config = tmp_path / "fake.yaml"
    config.write_text("pruning: {gamma: 0.4, tolerance: 0.05, eta: 0.3}\n"
                      "data: {val_from: test, val_size: 100}\n")
    db = tmp_path / "s.db"
    proc = start_worker(config, str(db), "c", 6, delay=0.0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    def confirm(*extra: str):
        return _fake_cli(tmp_path, "study", "confirm", "--study-name", "c", "--storage",
                         str(db), *extra)

    first = confirm("--top-k", "2", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert len(data["confirmed_now"]) == 2 and data["confirm"]["top_k"] == 2
    again = json.loads(confirm("--top-k", "2", "--json").stdout)
    assert again["confirmed_now"] == []
    shown = _fake_cli(tmp_path, "study", "show", "--study-name", "c", "--storage", str(db))
    assert shown.returncode == 0 and "confirm top-1" in shown.stderr and "pick" in shown.stderr
    assert "images ranking did not use" in shown.stderr


def _fake_cli(cwd: Path, *args: str):
    import os
    import subprocess
    import sys

    from _helpers import ROOT, WORKER

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "FAKE_DELAY": "0"}
    env.pop("SEARCHPRUNE_STORAGE", None)
    return subprocess.run([sys.executable, str(WORKER), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_study_confirm_refuses_a_train_split_study_created_without_a_hold_out(tmp_path):
    config = tmp_path / "fake.yaml"
    config.write_text("pruning: {gamma: 0.4, tolerance: 0.05, eta: 0.3}\n")
    db = tmp_path / "s.db"
    proc = start_worker(config, str(db), "t", 4, delay=0.0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    refused = _fake_cli(tmp_path, "study", "confirm", "--study-name", "t", "--storage", str(db))
    assert refused.returncode != 0
    assert "none is left to confirm on" in one_line_error(refused)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    assert "confirm" not in study.user_attrs
    assert all(t.state != TrialState.RUNNING for t in study.trials)
