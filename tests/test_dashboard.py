"""``searchprune dashboard`` in a real browser: serve a tiny study, render it with headless
Chromium, and check that the study and its trials appear in the DOM."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _helpers import FakeEngine, make_cfg

from searchprune.search import get_storage, run_study

ROOT = Path(__file__).resolve().parents[1]
NAME = "dash-demo"


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited: {proc.communicate()[1]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the dashboard did not listen on port {port} within {timeout} s")


def render(browser: str, url: str, profile: Path) -> str:
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A study with two evaluated trials and the dashboard serving it: (port, study id)."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium binary (apt-get install -y chromium) for the browser test")
    tmp = tmp_path_factory.mktemp("dashboard")
    cfg = make_cfg(tmp, "tpe", n_trials=2, **{"search.study_name": NAME})
    run_study(cfg, engine=FakeEngine(), progress=False)
    db = tmp / "studies.db"
    study_id = get_storage(str(db), heartbeat_interval=None).get_study_id_from_name(NAME)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "searchprune.cli.main", "dashboard", "--storage", str(db),
         "--port", str(port), "--artifact-dir", str(tmp / "artifacts")],
        cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(port, server)
        yield browser, f"http://127.0.0.1:{port}/dashboard/studies/{study_id}", tmp
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_study_page_shows_the_study_and_its_trials(dashboard):
    browser, url, tmp = dashboard
    dom = render(browser, url, tmp / "profile1")
    assert NAME in dom
    assert "val_top1" in dom  # the metric name, not "Objective 0"
    for group in ("layer0.conv", "layer5.conv"):  # parameters are channel-group names
        assert group in dom


def test_trial_page_shows_the_user_attributes(dashboard):
    browser, url, tmp = dashboard
    dom = render(browser, url + "/trials", tmp / "profile2")
    assert NAME in dom and "Trial 0" in dom
    for attr in ("flops_ratio", "feasible", "band_violation", "widths"):
        assert attr in dom


def test_note_page_shows_the_study_note(dashboard):
    browser, url, tmp = dashboard
    dom = render(browser, url + "/note", tmp / "profile3")
    assert "band: FLOPs ratio" in dom and "sampler: " in dom


def test_dashboard_listens_on_localhost_by_default():
    from searchprune.cli.main import build_parser

    args = build_parser().parse_args(["dashboard"])
    assert args.host == "127.0.0.1" and args.artifact_dir is None  # next to the storage
    assert optuna.__version__.startswith("5.")


PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.postgres
def test_optuna_dashboard_started_by_hand_on_postgresql_lists_a_searchprune_study(tmp_path):
    """``optuna-dashboard postgresql://...`` (no driver in the URL, psycopg 3) shows a study
    that ``searchprune study run`` wrote to that database."""
    import uuid

    from searchprune.errors import StorageError

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium binary (apt-get install -y chromium) for the browser test")
    try:
        storage = get_storage(PG_URL, heartbeat_interval=None)
        storage.get_all_studies()
    except StorageError as exc:
        pytest.skip(f"no PostgreSQL server answers at 127.0.0.1:5432 ({exc})")
    name = f"dash-pg-{uuid.uuid4().hex[:10]}"
    cfg = make_cfg(tmp_path, "random", n_trials=2, storage=PG_URL,
                   **{"search.study_name": name})
    run_study(cfg, engine=FakeEngine(), progress=False)
    dashboard_cli = Path(sys.executable).with_name("optuna-dashboard")
    port = free_port()
    server = subprocess.Popen([str(dashboard_cli), PG_URL, "--port", str(port), "--quiet"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for(port, server)
        dom = render(browser, f"http://127.0.0.1:{port}/dashboard/", tmp_path / "profile")
        assert name in dom  # the study list of the home page
        study_id = storage.get_study_id_from_name(name)
        dom = render(browser, f"http://127.0.0.1:{port}/dashboard/studies/{study_id}",
                     tmp_path / "profile-study")
        assert name in dom and "val_top1" in dom and "layer0.conv" in dom
    finally:
        server.terminate()
        server.wait(timeout=30)
        optuna.delete_study(study_name=name, storage=storage)
