"""The command line as a user runs it: a subprocess, its exit code, its stdout JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_search import FakeEngine, make_cfg  # the fake engine lives with the search tests

from searchprune.search import run_study

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("SEARCHPRUNE_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "searchprune.cli.main", *args], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


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
    assert set(data["trials"][0]) == {"number", "state", "value", "params", "user_attrs"}
    values = [t["value"] for t in data["trials"] if t["state"] == "COMPLETE"]
    assert values == sorted(values, reverse=True)
    assert data["best_trial"]["value"] == values[0]
    assert data["user_attrs"]["config"]["search"]["sampler"] == "tpe"
    assert "rejected_proposals" in data["user_attrs"]


def test_study_show_top_and_table(study_db):
    proc = cli("study", "show", "--storage", str(study_db), "--study-name", "s", "--top", "2",
               "--json")
    assert len(json.loads(proc.stdout)["trials"]) == 2
    proc = cli("study", "show", "--storage", str(study_db), "--study-name", "s", "--top", "2")
    assert proc.returncode == 0 and proc.stdout == ""
    assert "val top-1" in proc.stderr


def test_study_list_json(study_db):
    proc = cli("study", "list", "--storage", str(study_db), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["studies"]
    assert row["study_name"] == "s" and row["sampler"] == "tpe"


def test_storage_from_environment(study_db):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEARCHPRUNE_STORAGE": str(study_db)}
    proc = subprocess.run([sys.executable, "-m", "searchprune.cli.main", "study", "list",
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
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
    assert 0.0 <= summary["best_trial"]["value"] <= 100.0
    again = cli("study", "run", str(config), "--storage", str(db), "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["counts"] == summary["counts"]  # budget reached: no work
    changed = cli("study", "run", str(config), "--storage", str(db), "--gamma", "0.7",
                  cwd=tmp_path)
    assert changed.returncode == 2 and "pruning.gamma" in one_line_error(changed)
