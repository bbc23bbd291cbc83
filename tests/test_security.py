"""Hostile files, secrets, paths and crashes (issue 15).

Untrusted files never execute code: a checkpoint or a planted cache file whose unpickling would
create a marker file leaves no marker behind. A positive control proves each payload does
create the marker when unpickled without restriction, so these tests can fail.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from searchprune.cli.main import main
from searchprune.config import DataConfig, ModelConfig
from searchprune.models import build_model

SMALL = "data: {calib_size: 64, val_size: 64}\n"


class Payload:
    """Unpickling this object opens (creates) ``path``: code running from a data file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(path: Path, marker: Path, *, wrap: bool = True) -> None:
    """A file ``torch.save`` wrote, holding the payload next to (or instead of) tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"state_dict": {"w": torch.zeros(1)}, "evil": Payload(marker)} if wrap else Payload(
        marker)
    torch.save(obj, path)


def positive_control(path: Path, marker: Path) -> None:
    """The payload works: full unpickling creates the marker (then it is removed again)."""
    assert not marker.exists()
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists(), "the payload did not run; the test would prove nothing"
    marker.unlink()


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache folder, and a one-epoch digits baseline recipe (seconds, not minutes)."""
    from searchprune.models import baseline

    folder = tmp_path / "cache"
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(folder))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(baseline, "DIGITS_RECIPE", {**baseline.DIGITS_RECIPE, "epochs": 1})
    return folder


def test_checkpoint_is_weights_only_unless_trusted(tmp_path, cache, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    plant(evil, marker)
    positive_control(evil, marker)
    (tmp_path / "evil.yaml").write_text(
        f"model: {{name: cifar_resnet20, checkpoint: {evil}}}\n{SMALL}")
    assert main(["model", "eval", str(tmp_path / "evil.yaml")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"checkpoint {evil} holds objects other than tensors" in line
    assert "set model.trust_checkpoint: true (or pass --trust-checkpoint)" in line
    assert not marker.exists()
    assert main(["study", "run", str(tmp_path / "evil.yaml"), "--storage",
                 str(tmp_path / "s.db")]) == 1
    assert "trust_checkpoint" in one_error_line(capsys.readouterr().err)
    assert not marker.exists()

    # A trusted file with a non-tensor object (an argparse namespace) loads with the opt-in only.
    net = build_model(ModelConfig(name="cifar_resnet20"), num_classes=10, in_channels=1)
    trusted = tmp_path / "trusted.pt"
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, trusted)
    (tmp_path / "trusted.yaml").write_text(
        f"model: {{name: cifar_resnet20, checkpoint: {trusted}}}\n{SMALL}")
    assert main(["model", "eval", str(tmp_path / "trusted.yaml"), "--json"]) == 1
    assert "trust_checkpoint" in one_error_line(capsys.readouterr().err)
    assert main(["model", "eval", str(tmp_path / "trusted.yaml"), "--json",
                 "--trust-checkpoint"]) == 0
    assert '"top1"' in capsys.readouterr().out


def test_planted_cache_files_never_run_and_are_recomputed(tmp_path, cache, capsys, caplog):
    from searchprune.data import load_data
    from searchprune.models.baseline import _cache_file

    marker = tmp_path / "MARKER"
    (tmp_path / "q.yaml").write_text(SMALL + "search: {n_trials: 2}\n")
    bundle = load_data(DataConfig(calib_size=64, val_size=64))
    baseline = _cache_file(ModelConfig(), bundle, cache)
    plant(baseline, marker, wrap=False)
    positive_control(baseline, marker)
    with caplog.at_level(logging.WARNING):
        assert main(["model", "eval", str(tmp_path / "q.yaml")]) == 0
    assert not marker.exists()
    assert any("ignoring baseline cache" in r.getMessage() for r in caplog.records)
    assert torch.load(baseline, weights_only=True)  # retrained and replaced by real weights
    assert stat.S_IMODE((cache / "scores").stat().st_mode) == 0o700  # created by searchprune

    # The score cache: plant the payload where model eval stored the l1 scores.
    (scores,) = (cache / "scores").glob("l1-*.pt")
    plant(scores, marker)
    positive_control(scores, marker)
    caplog.clear()
    from searchprune.criteria import _base

    _base._MEMORY.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["study", "run", str(tmp_path / "q.yaml"), "--storage",
                     str(tmp_path / "s.db"), "--json"]) == 0
    assert not marker.exists()
    warned = [r.getMessage() for r in caplog.records if "score cache" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0], warned
    assert "evil" not in torch.load(scores, weights_only=True)  # recomputed


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_foreign_owned_cache_file_is_ignored(tmp_path, caplog):
    from searchprune.data._cache import usable_cache_file

    mine = tmp_path / "mine.pt"
    torch.save({"w": torch.zeros(1)}, mine)
    assert usable_cache_file(mine)
    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.zeros(1)}, foreign)
    os.chown(foreign, 65534, 65534)
    with caplog.at_level(logging.WARNING):
        assert not usable_cache_file(foreign)
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring cache file {foreign}: owned by uid 65534, not by this user; recomputing it"]


def test_unreadable_cache_file_is_ignored(tmp_path, caplog):
    from searchprune.data import _cache

    path = tmp_path / "scores.pt"
    torch.save({"w": torch.zeros(1)}, path)
    # Real: the file's mode gives its owner no read permission. Root could still open it, so
    # the check reads the mode of the open file (fstat) rather than asking open() to fail.
    path.chmod(0o200)
    with caplog.at_level(logging.WARNING):
        assert not _cache.usable_cache_file(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring cache file {path}: not readable; recomputing it"]


# -- a shared cache folder: symbolic-link swaps, shared folders, other users' files -----------
OTHER_UID = 12345  # a second user: root gives files and folders to it with a real chown

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")


def _digits_bundle():
    from searchprune.data import load_data

    return load_data(DataConfig(calib_size=64, val_size=64))


def _weights(seed: int) -> dict[str, torch.Tensor]:
    """A digits_resnet8 state_dict no training produces (seeded random init)."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(), num_classes=10, in_channels=1).state_dict()


def _holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


def _plant_ours(cache: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    """A cache file written the way searchprune writes one (this user's, mode 0600)."""
    from searchprune.data._cache import cache_folder

    with cache_folder(cache, "baselines") as folder:
        folder.save(state, name)
    return cache / "baselines" / name


def _attacker_file(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    """The other user's weights in the other user's folder, both really owned by OTHER_UID."""
    folder = tmp_path / "attacker"
    folder.mkdir(mode=0o755)
    evil = folder / "evil.pt"
    torch.save(state, evil)
    os.chown(evil, OTHER_UID, OTHER_UID)
    os.chown(folder, OTHER_UID, OTHER_UID)
    return evil


def _swap_for_link(path: Path, target: Path) -> None:
    """What the attacker does in a folder they can write to: the name now points at their file."""
    side = path.with_name(path.name + ".swap")
    side.symlink_to(target)
    os.replace(side, path)


@needs_root
def test_a_symlink_swapped_in_before_the_open_is_refused(tmp_path, cache, caplog):
    """Real: the symbolic link, the other user's ownership of the weights (chown to uid 12345)
    and the swap on disk. The attacker's write access to the cache folder is not needed to
    make the swap here (root makes it); the folder tests below cover who may write there."""
    from searchprune.models.baseline import _cache_file, digits_baseline

    bundle = _digits_bundle()
    path = _cache_file(ModelConfig(), bundle, cache)
    _plant_ours(cache, path.name, _weights(1))
    evil_state = _weights(666)
    evil = _attacker_file(tmp_path, evil_state)
    _swap_for_link(path, evil)
    # positive control: a read by name now gets the attacker's weights
    assert all(torch.equal(torch.load(path, weights_only=True)[k], v)
               for k, v in evil_state.items())
    with caplog.at_level(logging.WARNING):
        model = digits_baseline(ModelConfig(), bundle)
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring cache file {path}: a symbolic link; recomputing it"]
    assert not _holds(model, evil_state)  # retrained, not poisoned
    assert not path.is_symlink() and path.stat().st_uid == os.getuid()  # replaced by ours
    assert _holds(model, torch.load(path, weights_only=True))
    assert evil.stat().st_uid == OTHER_UID and torch.load(evil, weights_only=True)


@needs_root
def test_a_swap_after_the_open_changes_nothing_that_is_read(tmp_path, cache, monkeypatch):
    """The race of the old code (check by name, then open by name) cannot happen: the checks
    are made on the open descriptor and the weights read from it. Simulated: the moment of the
    swap, made deterministic by a hook at the check right after the open. Real: the swap to a
    symbolic link to another user's weights."""
    from searchprune.data import _cache
    from searchprune.models.baseline import _cache_file, digits_baseline

    bundle = _digits_bundle()
    path = _cache_file(ModelConfig(), bundle, cache)
    ours, evil_state = _weights(1), _weights(666)
    _plant_ours(cache, path.name, ours)
    evil = _attacker_file(tmp_path, evil_state)
    real_check, swapped = _cache.file_problem, []

    def swap_then_check(st):
        _swap_for_link(path, evil)
        swapped.append(path.is_symlink())
        return real_check(st)

    monkeypatch.setattr(_cache, "file_problem", swap_then_check)
    model = digits_baseline(ModelConfig(), bundle)
    assert swapped == [True]  # the name pointed at the attacker's file while it was read
    assert _holds(model, ours) and not _holds(model, evil_state)
    assert path.is_symlink()  # nothing was retrained or rewritten: the open file was ours


@needs_root
@pytest.mark.parametrize("where", ["root", "subfolder"])
def test_a_cache_folder_others_can_write_is_refused_unless_sticky_and_ours(
        tmp_path, cache, caplog, where):
    """Real: mode 0777 folders (existing ones, not created by searchprune), then the same with
    the sticky bit, owned by this user."""
    from searchprune.models.baseline import _cache_file, digits_baseline

    bundle = _digits_bundle()
    path = _cache_file(ModelConfig(), bundle, cache)
    planted = _weights(7)
    _plant_ours(cache, path.name, planted)
    folder = cache if where == "root" else path.parent
    folder.chmod(0o777)
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        model = digits_baseline(ModelConfig(), bundle)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"not using cache folder {folder} (computing without the cache): "
                           "other users can write to it (mode 0777)"), line
    assert "chmod 700" in line
    assert not _holds(model, planted)  # the file in it was not trusted...
    assert path.read_bytes() == before  # ...and nothing was written there
    # positive control: sticky and this user's, others may add files but not replace ours
    folder.chmod(0o1777)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _holds(digits_baseline(ModelConfig(), bundle), planted)
    assert not caplog.records


@needs_root
def test_a_cache_folder_of_another_user_is_refused(tmp_path, cache, caplog):
    """Real: the existing scores folder belongs to uid 12345 (chown), mode 0755."""
    from searchprune.data._cache import cache_folder

    with cache_folder(cache, "scores") as folder:
        folder.save({"w": torch.ones(1)}, "x.pt")
    os.chown(cache / "scores", OTHER_UID, OTHER_UID)
    (cache / "scores").chmod(0o755)
    with caplog.at_level(logging.WARNING), cache_folder(cache, "scores") as folder:
        assert folder is None
    assert [r.getMessage() for r in caplog.records] == [
        f"not using cache folder {cache / 'scores'} (computing without the cache): owned by "
        f"uid {OTHER_UID}, not by this user; point SEARCHPRUNE_CACHE at a folder of your own"]


@needs_root
@pytest.mark.parametrize("how", ["owner", "mode"])
def test_a_cache_file_of_another_user_or_writable_by_others_is_refused(
        tmp_path, cache, caplog, how):
    """Real: the baseline cache file is given to uid 12345 (chown), or made writable by every
    user (chmod 0666); either way its weights are not used and it is retrained."""
    from searchprune.models.baseline import _cache_file, digits_baseline

    bundle = _digits_bundle()
    path = _cache_file(ModelConfig(), bundle, cache)
    planted = _weights(7)
    _plant_ours(cache, path.name, planted)
    if how == "owner":
        os.chown(path, OTHER_UID, OTHER_UID)
        why = f"owned by uid {OTHER_UID}, not by this user"
    else:
        path.chmod(0o666)
        why = "writable by other users (mode 0666)"
    with caplog.at_level(logging.WARNING):
        model = digits_baseline(ModelConfig(), bundle)
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring cache file {path}: {why}; recomputing it"]
    assert not _holds(model, planted)
    assert path.stat().st_uid == os.getuid() and _holds(model, torch.load(path, weights_only=True))


# -- secrets ----------------------------------------------------------------------------------
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture()
def pg_role():
    """A uniquely named role with a password containing ``@`` and ``%``, and a database it owns;
    both dropped afterwards. Yields (role, password, database)."""
    import uuid

    import sqlalchemy

    from searchprune.search.storage import resolve_storage_url

    try:
        admin = sqlalchemy.create_engine(resolve_storage_url(ADMIN), isolation_level="AUTOCOMMIT",
                                         connect_args={"connect_timeout": 3})
        admin.connect().close()
    except Exception as exc:  # noqa: BLE001  # any failure means: no server to test against
        pytest.skip(f"no PostgreSQL server answers at 127.0.0.1:5432 ({exc})")
    token = uuid.uuid4().hex[:10]
    role, password, db = f"sp_sec_{token}", f"Pw@{token}%x/y", f"sp_sec_{token}"
    with admin.connect() as conn:
        # DDL takes no bound parameters; the password holds no quote character.
        conn.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {db} OWNER {role}"))
    try:
        yield role, password, db
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            conn.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def _leaks(text: str, forms: set[str]) -> list[str]:
    return [f for f in forms if f in text]


def test_storage_password_is_never_stored_or_shown(tmp_path, pg_role, monkeypatch):
    import json
    import subprocess
    from urllib.parse import quote, quote_plus

    from _helpers import cli

    role, password, db = pg_role
    forms = {password, quote(password, safe=""), quote_plus(password)}
    url = f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:5432/{db}"
    url_query = f"postgresql://{role}@127.0.0.1:5432/{db}?password={quote(password, safe='')}"
    closed = [f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:1/{db}",
              f"postgresql://{role}@127.0.0.1:1/{db}?password={quote(password, safe='')}",
              f"postgresql://{role}:{password}@127.0.0.1:1/{db}"]  # '@' and '/' not encoded
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "q.yaml").write_text("model: {name: cifar_resnet8}\n" + SMALL
                                     + "search: {n_trials: 2, sampler: random}\n")
    runs = [
        cli("study", "run", "q.yaml", "--storage", url, "--debug", cwd=tmp_path),
        cli("study", "run", "q.yaml", "--storage", url_query, "--json", cwd=tmp_path),
        cli("study", "show", "--storage", url, "--study-name", "q", "--json", cwd=tmp_path),
        cli("study", "list", "--storage", url_query, "--json", cwd=tmp_path),
        cli("export", "--storage", url, "--study-name", "q", "--out", "exported",
            "--no-latency", "--json", cwd=tmp_path),
    ]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-2000:]
    shown = json.loads(runs[2].stdout)
    assert shown["user_attrs"]["config"]["storage"] == (
        f"postgresql://{role}:***@127.0.0.1:5432/{db}")
    assert shown["counts"] == {"COMPLETE": 2}
    card = json.loads((tmp_path / "exported" / "card.json").read_text())
    assert card["config"]["storage"] == f"postgresql://{role}:***@127.0.0.1:5432/{db}"
    for bad in closed:
        proc = cli("study", "show", "--storage", bad, "--study-name", "q", "--debug",
                   cwd=tmp_path)
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr and "cannot open storage URL" in proc.stderr
        runs.append(proc)
        proc = cli("study", "show", "--storage", bad, "--study-name", "q", cwd=tmp_path)
        assert proc.returncode == 1 and "***" in one_error_line(proc.stderr)
        runs.append(proc)
    for proc in runs:
        assert not _leaks(proc.stdout + proc.stderr, forms), proc.args
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("latin-1")
            assert not _leaks(text, forms), path
    # Everything the database holds (attributes, notes, system attributes), as text.
    dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--data-only", db],
                          capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert "study_user_attributes" in dump.stdout and role in dump.stdout  # redacted URL stored
    assert not _leaks(dump.stdout, forms)


# -- paths and atomic writes ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "", "a/b", "..", "a\\b"])
def test_study_names_that_would_escape_are_refused(tmp_path, capsys, name):
    (tmp_path / "q.yaml").write_text(SMALL)
    assert main(["study", "run", str(tmp_path / "q.yaml"), "--storage", str(tmp_path / "s.db"),
                 "--study-name", name]) == 2
    assert "cannot be used as a folder name" in one_error_line(capsys.readouterr().err)
    assert main(["finetune", "--storage", str(tmp_path / "s.db"), "--study-name", name]) == 2
    assert "cannot be used as a folder name" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()


@pytest.fixture()
def tuned(tmp_path, monkeypatch):
    """A fine-tuned study (random-init ResNet-8 on digits: no baseline training), fine-tuned
    from folder ``a`` with a relative ``--out``. Returns (study, storage path)."""
    from searchprune.config import config_from_dict
    from searchprune.finetune import FinetuneSettings
    from searchprune.search import run_study
    from searchprune.search.finishing import default_artifact_dir, finetune_study

    db = tmp_path / "store" / "s.db"
    cfg = config_from_dict({"model": {"name": "cifar_resnet8"},
                            "data": {"calib_size": 64, "val_size": 64, "train_size": 128},
                            "search": {"n_trials": 2, "study_name": "t"}, "storage": str(db)})
    study = run_study(cfg, progress=False)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    finetune_study(study, top=1, settings=FinetuneSettings(epochs=1, final_epochs=1),
                   out_dir="ft", artifact_dir=default_artifact_dir(str(db)))
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    return study, db


def _exported_matches(out: Path, checkpoint: Path) -> bool:
    state = torch.load(out / "state_dict.pt", weights_only=True)["state_dict"]
    tuned = torch.load(checkpoint, weights_only=True)["state_dict"]
    return all(torch.equal(state[k], tuned[k]) for k in tuned)


def test_export_from_another_folder_uses_the_finetuned_weights(tuned, tmp_path, capsys):
    study, db = tuned
    ft = study.user_attrs["finetune"]
    checkpoint = Path(ft["checkpoint"])
    assert checkpoint.is_absolute() and checkpoint.parent == tmp_path / "a" / "ft"
    assert Path(ft["artifact_dir"]) == db.parent / "artifacts"  # next to the SQLite file
    ex = ["export", "--storage", str(db), "--study-name", "t", "--no-latency", "--json"]
    assert main([*ex, "--out", "one"]) == 0
    capsys.readouterr()
    card = json.loads((tmp_path / "b" / "one" / "card.json").read_text())
    assert card["accuracy"]["finetuned"] is True
    assert _exported_matches(tmp_path / "b" / "one", checkpoint)
    # The checkpoint file is gone: the copy in the artifact store is used.
    saved = checkpoint.read_bytes()
    checkpoint.unlink()
    assert main([*ex, "--out", "two"]) == 0
    capsys.readouterr()
    checkpoint.write_bytes(saved)
    assert _exported_matches(tmp_path / "b" / "two", checkpoint)
    # Neither is there: an error, never a silent export of the un-fine-tuned weights.
    checkpoint.unlink()
    shutil.rmtree(db.parent / "artifacts")
    assert main([*ex, "--out", "three"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{checkpoint} does not exist" in line and "--not-finetuned" in line
    assert not (tmp_path / "b" / "three").exists()
    # A truncated checkpoint: one line naming the file.
    checkpoint.write_bytes(saved[: len(saved) // 2])
    assert main([*ex, "--out", "four"]) == 1
    assert f"cannot read checkpoint {checkpoint}: truncated" in one_error_line(
        capsys.readouterr().err)


def test_export_is_atomic_and_refuses_a_non_empty_out(tuned, tmp_path, capsys, monkeypatch):
    study, db = tuned
    out = tmp_path / "b" / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ex = ["export", "--storage", str(db), "--study-name", "t", "--no-latency", "--json",
          "--out", str(out)]
    assert main(ex) == 2
    assert f"--out {out} is not empty; pass --force" in one_error_line(capsys.readouterr().err)
    assert (out / "keep.txt").read_text() == "mine"
    # A crash half-way through writing: the old folder stays as it was, no temporary left.
    import searchprune.export as export

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write", lambda model, tmp, *a: (
        (tmp / "model.pt2").write_text("partial"), crash()))
    assert main([*ex, "--force", "--debug"]) == 1
    assert "OSError: disk full" in capsys.readouterr().err  # --debug: the traceback
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    monkeypatch.undo()
    assert main([*ex, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.pt2", "state_dict.pt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_a_stored_finetuned_checkpoint_path_never_unpickles(tuned, tmp_path, capsys):
    """The study records where its fine-tuned weights are (``finetune.checkpoint``, an
    artifact store and id); whoever can write to the study can point them at a payload.
    ``export`` reads them weights-only: refused in one line, the payload never runs, and no
    flag of the command line changes that."""
    study, db = tuned
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    plant(evil, marker)
    positive_control(evil, marker)
    ft = dict(study.user_attrs["finetune"])
    ex = ["export", "--storage", str(db), "--study-name", "t", "--no-latency", "--json"]

    study.set_user_attr("finetune", {**ft, "checkpoint": str(evil)})
    assert main([*ex, "--out", "one"]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"error: the fine-tuned checkpoint {evil} of study 't' holds objects other than "
        "tensors (searchprune writes tensors only), and loading it would run code from the "
        "file; refused: fine-tune again, or pass --not-finetuned")
    assert not marker.exists() and not (tmp_path / "b" / "one").exists()
    assert main([*ex, "--out", "one", "--trust-checkpoint", str(evil)]) == 2  # not a way in
    assert "loads no model.checkpoint" in one_error_line(capsys.readouterr().err)
    assert not marker.exists()

    # the artifact copy: the recorded file is gone, the stored store holds the payload
    store = tmp_path / "store2"
    store.mkdir()
    shutil.copy(evil, store / "planted")
    study.set_user_attr("finetune", {**ft, "checkpoint": str(tmp_path / "gone.pt"),
                                     "artifact_dir": str(store), "artifact_id": "planted"})
    assert main([*ex, "--out", "two"]) == 1
    assert "holds objects other than tensors" in one_error_line(capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "b" / "two").exists()

    study.set_user_attr("finetune", ft)  # positive control: the real record exports
    assert main([*ex, "--out", "three"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"]["finetuned"] is True


def test_trust_checkpoint_must_name_the_file_the_study_loads(tmp_path):
    """``--trust-checkpoint PATH`` on finetune/export allows the stored ``model.checkpoint``
    only when PATH is that same file (links resolved, same inode), and the file loaded is
    then the one the user named: the stored path swapped afterwards changes nothing."""
    from searchprune.config import Config, config_to_dict
    from searchprune.errors import ConfigError
    from searchprune.trust import LocalTrust, config_from_stored

    mine, other = tmp_path / "mine.pt", tmp_path / "other.pt"
    mine.write_bytes(b"mine")
    other.write_bytes(b"other")
    shared = tmp_path / "shared.pt"  # the path the study names: a link an attacker controls
    shared.symlink_to(mine)
    stored = config_to_dict(Config(model=ModelConfig(checkpoint=str(shared))))

    def rebuilt(named: Path | str | None):
        return config_from_stored(stored, "q", LocalTrust(checkpoint=named and str(named)))

    assert rebuilt(None).model.trust_checkpoint is False
    assert rebuilt(None).model.checkpoint == str(shared)
    hard = tmp_path / "hard.pt"
    os.link(mine, hard)
    for named in (mine, shared, hard):
        cfg = rebuilt(named)
        assert cfg.model.trust_checkpoint is True
        assert cfg.model.checkpoint == os.path.realpath(named)  # the user's file is loaded
    with pytest.raises(ConfigError, match=rf"^--trust-checkpoint {other} is not the file "
                                          rf"study 'q' loads: its model.checkpoint is "
                                          rf"{shared}; pass --trust-checkpoint {shared} if "):
        rebuilt(other)
    with pytest.raises(ConfigError, match=r": no such file$"):
        rebuilt(tmp_path / "missing.pt")
    none = config_to_dict(Config())
    with pytest.raises(ConfigError, match=r"loads no model.checkpoint; drop the flag$"):
        config_from_stored(none, "q", LocalTrust(checkpoint=str(mine)))
    cfg = rebuilt(mine)
    shared.unlink()
    shared.symlink_to(other)  # swapped after the check: the resolved file stays the user's
    assert Path(cfg.model.checkpoint).read_bytes() == b"mine"


# -- a killed worker ---------------------------------------------------------------------------
def _dead_worker_identity() -> dict:
    """The identity a worker process recorded, taken from a process that has since exited."""
    import subprocess
    import sys

    from _helpers import ROOT

    out = subprocess.run([sys.executable, "-c", "import json; from searchprune.search._liveness "
                          "import identity; print(json.dumps(identity()))"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120, check=True)
    return json.loads(out.stdout)


def _stranded_trial(study, worker: dict, names: list[str]) -> int:
    """A RUNNING trial holding a budget claim, as a worker leaves it when it is killed."""
    from _helpers import GAMMA

    from searchprune.search.budget import CLAIM_ATTR

    # In the band: the fake engine's FLOPs ratio is about the square of a uniform keep-ratio.
    study.enqueue_trial(dict.fromkeys(names, GAMMA ** 0.5))
    trial = study.ask({k: optuna.distributions.FloatDistribution(0.3, 1.0) for k in names})
    trial.set_user_attr("worker", worker)
    trial.set_user_attr(CLAIM_ATTR, trial.number)
    return trial.number


def test_liveness_tells_dead_reused_and_remote_workers_apart():
    from searchprune.search._liveness import identity, is_gone

    me = identity()
    assert is_gone(me) is False
    assert is_gone(_dead_worker_identity()) is True
    assert is_gone({**me, "start": me["start"] + 1}) is True  # the pid was reused
    assert is_gone({**me, "boot_id": "another-boot"}) is True  # the host rebooted
    assert is_gone({**me, "host": "elsewhere"}) is None  # cannot tell: the heartbeat decides


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_killed_workers_trial_is_retried_at_once(tmp_path):
    import time

    from _helpers import FakeEngine, make_cfg

    from searchprune.search import run_study
    from searchprune.search.runner import open_storage

    cfg = make_cfg(tmp_path, n_trials=3)  # heartbeat 30 s, grace period 120 s
    run_study(cfg, engine=FakeEngine(), progress=False)
    study = optuna.load_study(study_name="s", storage=open_storage(cfg))
    names = [g.name for g in FakeEngine().groups]
    stranded = _stranded_trial(study, _dead_worker_identity(), names)
    start = time.perf_counter()
    study = run_study(make_cfg(tmp_path, n_trials=4), engine=FakeEngine(), progress=False)
    assert time.perf_counter() - start < 10  # not the 120 s grace period
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 4
    assert states.count("RUNNING") == 0 and states.count("WAITING") == 0
    dead = study.get_trials()[stranded]
    assert dead.state.name == "FAIL"
    assert dead.user_attrs["fail_reason"].startswith("interrupted: worker pid ")
    retry = [t for t in study.get_trials() if t.user_attrs.get("requeued_from") == stranded]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == dead.params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_waiting_for_a_worker_on_another_host_says_so(tmp_path, capsys):
    from _helpers import FakeEngine, make_cfg

    from searchprune.search import run_study
    from searchprune.search._liveness import identity
    from searchprune.search.runner import open_storage

    over = {"search.heartbeat_interval": 1, "search.grace_period": 2}
    cfg = make_cfg(tmp_path, n_trials=2, **over)
    run_study(cfg, engine=FakeEngine(), progress=False)
    storage = open_storage(cfg)
    study = optuna.load_study(study_name="s", storage=storage)
    names = [g.name for g in FakeEngine().groups]
    remote = {**identity(), "host": "node-7", "pid": 4242}
    number = _stranded_trial(study, remote, names)
    storage.record_heartbeat(study.get_trials()[number]._trial_id)
    study = run_study(make_cfg(tmp_path, n_trials=3, **over), engine=FakeEngine(),
                      progress=False)
    err = capsys.readouterr().err
    assert (f"waiting for trial {number} (pid 4242 on node-7, last heartbeat " in err
            and "it is marked FAIL if silent for 2 s" in err), err
    assert err.count("waiting for trial") == 1
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 3
    assert states.count("RUNNING") == 0 and states.count("WAITING") == 0


# -- a user's own sampler and criterion, named in YAML -----------------------------------------
USER_PLUGINS = '''
import optuna
from searchprune.criteria import Criterion

def sampler(ctx):
    return optuna.samplers.RandomSampler(seed=ctx.seed)
sampler.projects = True  # the objective projects its proposals onto the band

class Ones(Criterion):
    def scores(self, model, space, data, *, device):
        import torch
        return {g.name: torch.ones(g.channels) for g in space.prunable}

def criterion(**options):
    return Ones()
'''


def test_user_sampler_and_criterion_by_module_path(tmp_path, monkeypatch):
    from _helpers import FakeEngine, make_cfg

    from searchprune.config import load_config
    from searchprune.criteria import get_criterion
    from searchprune.search import run_study

    (tmp_path / "my_plugins.py").write_text(USER_PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "u.yaml").write_text("search: {sampler: 'my_plugins:sampler'}\n"
                                     "pruning: {criterion: 'my_plugins:criterion'}\n")
    cfg = load_config(tmp_path / "u.yaml")
    assert cfg.search.sampler == "my_plugins:sampler"
    crit = get_criterion(cfg.pruning.criterion)
    assert type(crit).__name__ == "Ones" and crit.name == "my_plugins:criterion"
    study = run_study(make_cfg(tmp_path, "my_plugins:sampler", n_trials=3), engine=FakeEngine(),
                      progress=False)
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(done) == 3 and all(t.user_attrs.get("projected") for t in done)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)


# -- cache keys cover what changes the content -------------------------------------------------
def test_digits_baseline_cache_key_covers_every_input(tmp_path, monkeypatch):
    import dataclasses

    from searchprune.data import load_data
    from searchprune.models import baseline

    def key(model=ModelConfig(), **data):
        return baseline._cache_file(model, load_data(DataConfig(**data)), tmp_path).name

    base = key()
    assert key() == base and key(batch_size=64) == base  # evaluation batch size: same weights
    changed = {"image_size": key(image_size=16), "val_from": key(val_from="test"),
               "seed": key(seed=1), "train_size": key(train_size=1000),
               "val_size": key(val_size=300),
               "shortcut": key(dataclasses.replace(ModelConfig(), shortcut="pad"))}
    assert all(k != base for k in changed.values()), changed
    monkeypatch.setattr(baseline, "DIGITS_RECIPE", {**baseline.DIGITS_RECIPE, "lr": 0.1})
    assert key() != base
    # trusting a checkpoint does not change the weights a baseline trains to
    assert key(dataclasses.replace(ModelConfig(), trust_checkpoint=True)) == key()


def test_worker_command_lines_carry_no_storage_url(monkeypatch):
    """``--workers K``: other users can read command lines (``ps``), so the storage URL, which
    may hold a password, reaches the workers in their environment."""
    from searchprune.cli import _workers
    from searchprune.cli.main import build_parser
    from searchprune.cli.study import _worker_args
    from searchprune.config import Config

    url = "postgresql://u:Secret%40pw@127.0.0.1:1/db"
    args = build_parser().parse_args(["study", "run", "q.yaml", "--storage", url,
                                      "--workers", "2", "--trust-checkpoint"])
    argv = _worker_args(args, threads=1)
    assert not any("Secret" in a for a in argv) and "--storage" not in argv
    assert "--trust-checkpoint" in argv
    started = []

    class Popen:
        def __init__(self, command, **kwargs):
            started.append((command, kwargs["env"]))
            self.returncode = 0

        def poll(self):
            return 0

        def wait(self):
            return 0

    monkeypatch.setattr(_workers.subprocess, "Popen", Popen)
    monkeypatch.setattr(_workers, "_update", lambda *a: None)
    _workers.run_workers(Config(storage=url), None, argv, 2, progress=False, poll=0)
    assert len(started) == 2
    for command, env in started:
        assert not any("Secret" in part for part in command)
        assert env[_workers.STORAGE_ENV] == url


# -- a shared study is not a trusted input (issue 25) ------------------------------------------
ZEN = "Beautiful is better than ugly."  # what importing the module ``this`` prints


def _stored(study: optuna.Study, section: str, **values) -> None:
    """Edit the study's stored config through Optuna's API, as anyone with write access to
    the storage can."""
    config = json.loads(json.dumps(study.user_attrs["config"]))
    config[section].update(values)
    study.set_user_attr("config", config)


def _storage_url(kind: str, request) -> str:
    if kind == "sqlite":
        return ""
    from urllib.parse import quote

    role, password, db = request.getfixturevalue("pg_role")  # skips without a server
    return f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:5432/{db}"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_stored_config_cannot_import_or_unpickle(tmp_path, kind, request, monkeypatch):
    """Whoever can write to a shared study edits its config; another user's ``export`` and
    ``finetune`` (real subprocesses) then neither unpickle the file it names nor import the
    module:factory it names, and say in one line what the study needs."""
    from _helpers import cli

    from searchprune.data import load_data
    from searchprune.search.storage import get_storage

    url = _storage_url(kind, request) or str(tmp_path / "s.db")
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(tmp_path / "cache"))
    in_channels = load_data(DataConfig(calib_size=64, val_size=64)).input_shape[0]
    net = build_model(ModelConfig(name="cifar_resnet8"), num_classes=10, in_channels=in_channels)
    ckpt = tmp_path / "net.pt"  # the study owner's own file: weights and a non-tensor object
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, ckpt)
    benign = ckpt.read_bytes()
    (tmp_path / "q.yaml").write_text(f"model: {{name: cifar_resnet8, checkpoint: {ckpt}}}\n"
                                     + SMALL + "pruning: {proxy: none}\nsearch: {n_trials: 2}\n")
    run = cli("study", "run", "q.yaml", "--storage", url, "--trust-checkpoint", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    # the suggested next commands can be copied: a plain path as is, a password never, not
    # even masked (the URL then comes from $SEARCHPRUNE_STORAGE)
    assert "***" not in run.stderr
    flag = '--storage "$SEARCHPRUNE_STORAGE"' if kind == "postgresql" else f"--storage {url}"
    assert f"searchprune finetune --study-name q {flag} --top 3" in run.stderr
    study = optuna.load_study(study_name="q", storage=get_storage(url, heartbeat_interval=None))
    assert "trust_checkpoint" not in study.user_attrs["config"]["model"]  # never stored

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--study-name", "q", "--storage", url, cwd=tmp_path)

    export = ("export", "--out", "exported", "--no-latency", "--json")
    finetune = ("finetune", "--top", "1", "--epochs", "0", "--final-epochs", "0", "--json")
    # the owner's --trust-checkpoint on 'study run' was not kept: export has to name the file
    # (the refusal's hint adapted in issue 25: the study names the file, the user allows it)
    line = one_error_line(command(*export).stderr)
    assert line == (f"error: checkpoint {ckpt} (model.checkpoint of study 'q') holds objects "
                    "other than tensors, and loading it would run code from the file; if you "
                    f"trust it, pass --trust-checkpoint {ckpt}")

    # an attacker swaps the file and marks it trusted in the stored config
    marker = tmp_path / "MARKER"
    plant(ckpt, marker)
    positive_control(ckpt, marker)
    _stored(study, "model", trust_checkpoint=True)
    for args in (export, finetune):
        proc = command(*args)
        assert proc.returncode == 1 and f"pass --trust-checkpoint {ckpt}" in one_error_line(
            proc.stderr)
        assert not marker.exists(), args
    assert not (tmp_path / "exported").exists()

    # the user allows their own file; the attacker points the stored config at another one
    ckpt.write_bytes(benign)
    evil = tmp_path / "evil.pt"
    plant(evil, marker)
    positive_control(evil, marker)
    _stored(study, "model", checkpoint=str(evil))
    for args in (export, finetune):
        proc = command(*args, "--trust-checkpoint", str(ckpt))
        assert proc.returncode == 2, proc.stderr
        assert one_error_line(proc.stderr) == (
            f"error: --trust-checkpoint {ckpt} is not the file study 'q' loads: its "
            f"model.checkpoint is {evil}; pass --trust-checkpoint {evil} if you trust that file")
        assert not marker.exists(), args
    _stored(study, "model", checkpoint=str(ckpt), trust_checkpoint=False)
    assert not (tmp_path / "exported").exists()

    # module:factory strings in the stored config: refused, nothing imported
    control = subprocess.run([sys.executable, "-c", "import this"], capture_output=True,
                             text=True, timeout=60)
    assert ZEN in control.stdout  # importing the module is what would show
    ckpt.write_bytes(benign)
    for section, key, args in (("search", "sampler", export), ("pruning", "criterion", finetune),
                               ("model", "name", export)):
        before = study.user_attrs["config"][section][key]
        _stored(study, section, **{key: "this:s"})
        proc = command(*args)
        assert proc.returncode == 2, proc.stderr
        assert ZEN not in proc.stdout + proc.stderr
        assert one_error_line(proc.stderr) == (
            f"error: study 'q' uses {section}.{key} 'this:s', a package.module:factory that "
            "imports code; a stored study is not trusted to name code, so pass "
            "--allow-factory this:s to import it")
        _stored(study, section, **{key: before})

    # what the user running export allows on their own command line is used
    _stored(study, "search", sampler="my_plugins:sampler")
    link = tmp_path / "link.pt"  # the user may name the file by another path
    link.symlink_to(ckpt)
    proc = command(*export, "--trust-checkpoint", str(link), "--allow-factory",
                   "my_plugins:sampler")
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads(proc.stdout)
    assert card["config"]["model"]["checkpoint"] == str(ckpt)
    assert card["source_checkpoint"] == os.path.realpath(ckpt)  # what was loaded
    assert card["config"]["search"]["sampler"] == "my_plugins:sampler"


def test_stored_config_is_rebuilt_under_the_users_own_permissions(tmp_path):
    from searchprune.config import Config, config_to_dict
    from searchprune.errors import ConfigError
    from searchprune.redact import public_config
    from searchprune.trust import LocalTrust, config_from_stored

    x = tmp_path / "x.pt"
    x.write_bytes(b"")
    trusted = Config(model=ModelConfig(checkpoint=str(x), trust_checkpoint=True))
    assert "trust_checkpoint" not in public_config(trusted)["model"]  # what a study stores
    stored = config_to_dict(trusted)  # as an attacker (or an old version) would store it
    assert config_from_stored(stored, "q").model.trust_checkpoint is False
    # the user names the file (adapted in issue 25: a bare yes is no longer enough)
    assert config_from_stored(stored, "q", LocalTrust(checkpoint=str(x))
                              ).model.trust_checkpoint is True
    stored["search"]["sampler"] = "pkg.mod:make"
    with pytest.raises(ConfigError, match=r"^study 'q' uses search.sampler 'pkg.mod:make', a "
                                          r"package.module:factory .* --allow-factory "
                                          r"pkg.mod:make to import it$"):
        config_from_stored(stored, "q", LocalTrust(factories=frozenset({"pkg.mod:other"})))
    allowed = config_from_stored(stored, "q", LocalTrust(factories=frozenset({"pkg.mod:make"})))
    assert allowed.search.sampler == "pkg.mod:make"
    stored["search"]["sampler"] = "tpe"  # registered names are not code named by the study
    assert config_from_stored(stored, "q").search.sampler == "tpe"


def test_validating_a_config_imports_no_module(tmp_path, monkeypatch):
    """A config naming a module:factory is validated by the form of the name; the module is
    imported only where it is used (the user's own search), never by validation."""
    import importlib

    from searchprune.config import config_from_dict

    marker = tmp_path / "IMPORTED"
    (tmp_path / "planted_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef make(*a, **k):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in ("sampler", "criterion"):
        section = "search" if key == "sampler" else "pruning"
        cfg = config_from_dict({section: {key: "planted_mod:make"}})
        assert getattr(getattr(cfg, section), key) == "planted_mod:make"
    config_from_dict({"model": {"name": "planted_mod:make"}})
    assert not marker.exists()
    importlib.import_module("planted_mod")  # positive control: importing it leaves the marker
    assert marker.exists()
    sys.modules.pop("planted_mod", None)
