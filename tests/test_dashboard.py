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


# -- who may use the dashboard: Host header, read-only, token ---------------------------------
GUARD_NAME = "dash-guard"


def guarded_study(tmp: Path) -> Path:
    """A SQLite file holding the study ``dash-guard`` with two evaluated trials."""
    cfg = make_cfg(tmp, "random", n_trials=2, **{"search.study_name": GUARD_NAME})
    run_study(cfg, engine=FakeEngine(), progress=False)
    return tmp / "studies.db"


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    return guarded_study(tmp_path_factory.mktemp("guard"))


def serve(db: Path, *flags: str, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen[str], int]:
    """``searchprune dashboard`` on ``db`` and a free port: (process, port)."""
    port = free_port()
    full = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    full.pop("SEARCHPRUNE_DASHBOARD_TOKEN", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "searchprune.cli.main", "dashboard", "--storage", str(db),
         "--port", str(port), "--artifact-dir", str(db.parent / "artifacts"), *flags],
        cwd=db.parent, env={**full, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    wait_for(port, server)
    return server, port


def stop(server: subprocess.Popen[str]) -> str:
    """Stop the server; what it printed (stdout and stderr)."""
    server.terminate()
    out, err = server.communicate(timeout=30)
    return out + err


def request(port: int, method: str, path: str, host: str,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode(errors="replace")
    finally:
        conn.close()


def study_exists(db: Path, name: str) -> bool:
    storage = get_storage(str(db), heartbeat_interval=None)
    return name in {s.study_name for s in storage.get_all_studies()}


def test_a_foreign_host_header_is_refused_and_the_study_survives(tmp_path):
    """DNS rebinding: a page on rebind.attacker.example resolves its name to 127.0.0.1 and asks
    the dashboard to delete a study; the request names the attacker's host and is refused.
    The same request with this server's own Host deletes it (so the refusal is the Host check,
    not a broken route)."""
    db = guarded_study(tmp_path)
    study_id = get_storage(str(db), heartbeat_interval=None).get_study_id_from_name(GUARD_NAME)
    server, port = serve(db, "--allow-write")
    try:
        attacker = f"rebind.attacker.example:{port}"
        status, _, body = request(port, "DELETE", f"/api/studies/{study_id}", attacker)
        assert status == 403 and "is not this dashboard's address" in body
        status, _, body = request(port, "GET", "/api/studies", attacker)
        assert status == 403 and GUARD_NAME not in body
        assert study_exists(db, GUARD_NAME)
        for own in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            status, _, body = request(port, "GET", "/api/studies", own)
            assert status == 200 and GUARD_NAME in body, (own, status)
        status, _, _ = request(port, "DELETE", f"/api/studies/{study_id}", f"127.0.0.1:{port}")
        assert status == 204 and not study_exists(db, GUARD_NAME)  # the positive control
    finally:
        stop(server)


def test_the_dashboard_is_read_only_by_default(study_db):
    study_id = get_storage(str(study_db), heartbeat_interval=None).get_study_id_from_name(
        GUARD_NAME)
    server, port = serve(study_db)
    try:
        own = f"127.0.0.1:{port}"
        status, _, body = request(port, "DELETE", f"/api/studies/{study_id}", own)
        assert status == 403 and "--allow-write" in body
        status, _, body = request(port, "POST", f"/api/studies/{study_id}/rename", own,
                                  {"Content-Type": "application/json", "Content-Length": "0"})
        assert status == 403
        assert study_exists(study_db, GUARD_NAME)
        status, _, body = request(port, "GET", f"/api/studies/{study_id}", own)
        assert status == 200 and GUARD_NAME in body
    finally:
        stop(server)


def test_a_write_asked_by_another_sites_page_is_refused(tmp_path):
    """Cross-site request forgery needs no DNS trick: a page elsewhere posts to 127.0.0.1
    itself. Its browser names the page's origin, and the write is refused."""
    db = guarded_study(tmp_path)
    study_id = get_storage(str(db), heartbeat_interval=None).get_study_id_from_name(GUARD_NAME)
    server, port = serve(db, "--allow-write")
    try:
        own = f"127.0.0.1:{port}"
        status, _, _ = request(port, "DELETE", f"/api/studies/{study_id}", own,
                               {"Origin": "https://attacker.example"})
        assert status == 403 and study_exists(db, GUARD_NAME)
        status, _, _ = request(port, "DELETE", f"/api/studies/{study_id}", own,
                               {"Origin": f"http://{own}"})
        assert status == 204 and not study_exists(db, GUARD_NAME)
    finally:
        stop(server)


def test_a_token_from_the_environment_is_needed_once_then_a_cookie(study_db):
    token = "s3cret-token-of-the-user-0123456789"
    server, port = serve(study_db, "--token", env={"SEARCHPRUNE_DASHBOARD_TOKEN": token})
    try:
        own = f"127.0.0.1:{port}"
        status, _, body = request(port, "GET", "/api/studies", own)
        assert status == 401 and GUARD_NAME not in body
        status, _, _ = request(port, "GET", "/api/studies?token=wrong-token-0123456789", own)
        assert status == 401
        status, headers, _ = request(port, "GET", f"/dashboard/?token={token}&x=1", own)
        assert status == 303 and headers["Location"] == "/dashboard/?x=1"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        status, _, body = request(port, "GET", "/api/studies", own, {"Cookie": cookie})
        assert status == 200 and GUARD_NAME in body
        status, _, body = request(port, "GET", "/api/studies", own,
                                  {"Authorization": f"Bearer {token}"})
        assert status == 200 and GUARD_NAME in body
    finally:
        out = stop(server)
    assert token not in out  # the user's own token is never printed


def test_a_non_loopback_bind_needs_a_token_printed_once(study_db):
    server, port = serve(study_db, "--host", "0.0.0.0")
    try:
        status, _, body = request(port, "GET", "/api/studies", f"127.0.0.1:{port}")
        assert status == 401 and GUARD_NAME not in body
        line = ""
        while "?token=" not in line:
            line = server.stderr.readline()
            assert line, "no address with a token was printed"
        (token,) = [w.split("?token=")[1] for w in line.split() if "?token=" in w]
        assert len(token) >= 24
        # a wildcard bind cannot list the machine's names: the token guards it
        status, _, body = request(port, "GET", "/api/studies", f"any-name.example:{port}",
                                  {"Authorization": f"Bearer {token}"})
        assert status == 200 and GUARD_NAME in body
    finally:
        out = line + stop(server)
    assert out.count(token) == 1, out  # shown once, at startup
