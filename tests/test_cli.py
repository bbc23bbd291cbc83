"""The command line as a user runs it: a subprocess, its exit code, its stdout JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from _helpers import ROOT, FakeEngine, cli, make_cfg, one_line_error, start_worker
from optuna.trial import TrialState

from searchprune.search import run_study


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    run_study(make_cfg(tmp, "tpe", n_trials=4), engine=FakeEngine(), progress=False)
    return tmp / "studies.db"


def test_study_show_json(study_db):
    proc = cli("study", "show", "--storage", str(study_db), "--study-name", "s", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["study_name"] == "s"
    assert data["counts"]["COMPLETE"] == 4
    assert set(data["trials"][0]) == {"number", "state", "value", "values", "params", "user_attrs"}
    assert data["objective"] == "single" and data["evaluated"] == 4 and "front" not in data
    values = [t["value"] for t in data["trials"] if t["state"] == "COMPLETE"]
    assert values == sorted(values, reverse=True)
    assert data["best_trial"]["value"] == values[0]
    assert data["user_attrs"]["config"]["search"]["sampler"] == "tpe"
    assert "rejected_proposals" in data["user_attrs"]
    spread = {r["label"]: r for r in data["spread"]}
    assert list(spread) == ["unpruned", "best", "median", "worst"]
    assert spread["unpruned"]["val_top1"] == data["user_attrs"]["baseline_val_top1"]
    assert spread["best"]["val_top1"] == values[0] and spread["worst"]["val_top1"] == values[-1]
    assert spread["median"]["val_top1"] == values[len(values) // 2]
    assert spread["best"]["trial"] == data["best_trial"]["number"]
    best_attrs = data["best_trial"]["user_attrs"]
    assert spread["best"]["flops_ratio"] == best_attrs["flops_ratio"]
    assert spread["best"]["params_ratio"] == best_attrs["params_ratio"]


def test_study_show_top_and_table(study_db):
    proc = cli("study", "show", "--storage", str(study_db), "--study-name", "s", "--top", "2",
               "--json")
    assert len(json.loads(proc.stdout)["trials"]) == 2
    proc = cli("study", "show", "--storage", str(study_db), "--study-name", "s", "--top", "2")
    assert proc.returncode == 0 and proc.stdout == ""
    assert "val top-1" in proc.stderr
    for label in ("unpruned", "best", "median", "worst", "best - worst:"):
        assert label in proc.stderr


def test_study_list_json(study_db):
    proc = cli("study", "list", "--storage", str(study_db), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["studies"]
    assert row["study_name"] == "s" and row["sampler"] == "tpe"


def test_storage_from_environment(study_db):
    proc = cli("study", "list", "--json", env={"SEARCHPRUNE_STORAGE": str(study_db)})
    assert json.loads(proc.stdout)["studies"][0]["study_name"] == "s"


def test_unknown_study_is_one_line(study_db):
    proc = cli("study", "show", "--storage", str(study_db), "--study-name", "nope")
    assert proc.returncode == 1
    assert "no study named 'nope'" in one_line_error(proc)


def test_bad_storage_url_is_one_line():
    proc = cli("study", "list", "--storage", "postgresql://postgres@127.0.0.1:1/test")
    assert proc.returncode == 1
    assert "cannot open storage URL" in one_line_error(proc)


def test_debug_shows_the_traceback():
    proc = cli("study", "list", "--storage", "foo://bar", "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_missing_config_file():
    proc = cli("study", "run", "missing.yaml")
    assert proc.returncode == 2
    assert "not found" in one_line_error(proc)


def test_no_command_is_usage():
    assert cli().returncode == 2
    assert cli("study").returncode == 2


def test_model_info_by_name():
    proc = cli("model", "info", "--model", "cifar_resnet20", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"flops", "macs", "params", "groups", "ratio_range"} <= set(info)
    assert info["params"] > 0 and 0.0 < info["ratio_range"][0] < 1.0
    assert all({"name", "channels", "prunable"} == set(g) for g in info["groups"])
    assert any(g["prunable"] for g in info["groups"])


def test_model_info_needs_config_or_model():
    proc = cli("model", "info")
    assert proc.returncode == 2
    one_line_error(proc)


def test_model_list():
    proc = cli("model", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "cifar_resnet20" in json.loads(proc.stdout)["models"]


@pytest.mark.slow
def test_study_run_end_to_end_on_digits(tmp_path):
    config = tmp_path / "digits.yaml"
    config.write_text("search:\n  n_trials: 2\npruning:\n  tolerance: 0.05\n")
    db = tmp_path / "s.db"
    proc = cli("study", "run", str(config), "--storage", str(db), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["study_name"] == "digits" and summary["counts"]["COMPLETE"] == 2
    best = summary["best_trial"]
    assert best["value"] == best["user_attrs"]["top1"] > 50.0  # a trained digits net at 50% FLOPs
    assert abs(best["user_attrs"]["flops_ratio"] - 0.5) <= 0.05
    again = cli("study", "run", str(config), "--storage", str(db), "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["counts"] == summary["counts"]  # budget reached: no work
    shown = cli("study", "run", str(config), "--storage", str(db), cwd=tmp_path)
    assert shown.returncode == 0 and "unpruned" in shown.stderr and "worst" in shown.stderr
    for command in (f"study show --study-name digits --storage {db} --plot digits.png",
                    f"dashboard --storage {db}", "compare digits.yaml --seeds 2"):
        assert f"searchprune {command}" in shown.stderr
    changed = cli("study", "run", str(config), "--storage", str(db), "--gamma", "0.7",
                  cwd=tmp_path)
    assert changed.returncode == 2 and "pruning.gamma" in one_line_error(changed)


def test_two_workers_on_one_sqlite_file_stop_at_exactly_n_trials(tmp_path):
    config = tmp_path / "fake.yaml"
    config.write_text("pruning: {gamma: 0.4, tolerance: 0.05, eta: 0.3}\n")
    db = tmp_path / "s.db"
    proc = start_worker(config, str(db), "sq", 6, "--workers", "2", delay=0.05)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Optuna advises PostgreSQL" in err  # allowed, with a warning
    study = optuna.load_study(study_name="sq", storage=f"sqlite:///{db}")
    ts = study.get_trials()
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and study.user_attrs["workers_joined"] == 2
    assert all(t.state == TrialState.PRUNED and "refused" in t.user_attrs
               for t in ts if t.state != TrialState.COMPLETE)
    params = [tuple(t.params.values()) for t in complete]
    assert len(set(params)) == 6, "a configuration was evaluated twice"
    assert json.loads(out)["evaluated"] == 6


def test_python_dash_m_searchprune_is_the_command():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "searchprune", "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "searchprune 0.1.0", proc.stderr


def test_a_non_editable_wheel_holds_the_package_and_an_spdx_license(tmp_path):
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("searchprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("__main__.py", "provenance.py", "cli/main.py", "search/storage.py"):
        assert f"searchprune/{module}" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in text and "Requires-Dist: psycopg[binary]" in text


def test_study_show_plot_writes_a_png(study_db, tmp_path):
    from matplotlib.image import imread

    png = tmp_path / "fig" / "study.png"
    proc = cli("study", "show", "--storage", str(study_db), "--study-name", "s", "--plot",
               str(png), "--plot-top", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < png.stat().st_size < 2_000_000
    height, width = imread(png).shape[:2]
    assert width > 2 * height > 600  # two panels side by side
    bad = cli("study", "show", "--storage", str(study_db), "--study-name", "s", "--plot",
              str(tmp_path / "study.jpg"))
    assert bad.returncode == 2 and "--plot wants a .png" in one_line_error(bad)


def test_plot_draws_the_best_trials_widths_against_the_original(study_db):
    from searchprune.cli.study import load_study
    from searchprune.report.study_plot import study_points

    study = load_study(str(study_db), "s")
    points = study_points(study.trials)
    values = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    assert len(points) == len(values) == 4 and points[0].top1 == max(values)
    groups = study.user_attrs["groups"]
    assert set(points[0].widths) == set(groups)
    assert all(0 < points[0].widths[g] <= groups[g] for g in groups)
