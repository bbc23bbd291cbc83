"""Bad input: one ``error: ...`` line on stderr, a non-zero exit, and nothing corrupted.

Each row runs ``searchprune study run`` (in-process through ``main()``, the same code path as the
command; a few rows also as a real subprocess) against a storage that already holds a study,
and checks that the study's trials are unchanged afterwards. Failures inside a trial (NaN/inf
features) are checked on the API: the trial FAILs with a reason and the study goes on.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from _helpers import ROOT, FakeEngine, make_cfg, one_line_error, run
from optuna.trial import TrialState

from searchprune.cli.main import main
from searchprune.config import ModelConfig
from searchprune.models import build_model
from searchprune.search import run_study

PG_CLOSED = "postgresql://postgres@127.0.0.1:1/test"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Path:
    """A folder with a study ``s`` (4 COMPLETE trials) in ``studies.db`` and bad inputs."""
    tmp = tmp_path_factory.mktemp("bad")
    run_study(make_cfg(tmp, n_trials=4), engine=FakeEngine(), progress=False)
    (tmp / "s.yaml").write_text(  # the config study ``s`` was created with
        "pruning: {gamma: 0.4, tolerance: 0.05, eta: 0.3}\nsearch: {n_trials: 5, seed: 0, "
        "sampler: random, warm_start: none}\nsensitivity: {method: scan}\n")
    (tmp / "malformed.yaml").write_text("pruning:\n  gamma: [0.5\n")
    (tmp / "typo.yaml").write_text("pruning:\n  gama: 0.5\n")
    (tmp / "typo-section.yaml").write_text("serch:\n  n_trials: 3\n")
    net = build_model(ModelConfig(name="cifar_resnet20"), num_classes=10, in_channels=1)
    state = net.state_dict()
    torch.save({k: v for k, v in state.items() if "layer3" not in k}, tmp / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp / "unexpected.pt")
    classifier = [k for k in state if k.endswith(".weight")][-1]
    torch.save({**state, classifier: torch.zeros(100, 64)}, tmp / "shapes.pt")
    torch.save(state, tmp / "good.pt")
    data = (tmp / "good.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp / "empty" / split / c).mkdir(parents=True)
    for name in ("missing", "unexpected", "shapes", "truncated", "nofile"):
        (tmp / f"ckpt-{name}.yaml").write_text(
            f"model: {{name: cifar_resnet20, checkpoint: {tmp / (name + '.pt')}}}\n")
    (tmp / "noroot.yaml").write_text(f"data: {{name: imagefolder, root: {tmp / 'nope'}}}\n")
    (tmp / "noimages.yaml").write_text(f"data: {{name: imagefolder, root: {tmp / 'empty'}}}\n")
    (tmp / "nomodel.yaml").write_text("model: {name: resnet5O}\n")
    (tmp / "supernet-lr.yaml").write_text("setting: scratch\nsupernet: {lr: 0}\n")
    (tmp / "supernet-topk.yaml").write_text("supernet: {top_k: 0}\n")
    for name, text in {"trainsize": "data: {train_size: abc}", "testsize": "data: {test_size: abc}",
                       "classes": "model: {num_classes: ten}", "batch": "data: {batch_size: 0}",
                       "two": "data: {train_size: abc, batch_size: 0}"}.items():
        (tmp / f"{name}.yaml").write_text(text + "\n")
    _image_folders(tmp)
    (tmp / "afile").write_text("a regular file, not a folder")
    for name, text in {
        "include5": "include: 5\n", "tpu": "device: tpu\n", "cuda": "device: cuda\n",
        "seed": "data: {seed: 100000000000000000000000}\n",
        "imgsize": "data: {image_size: 30000}\n",
        "ridge": f"pruning: {{reconstruction: {{ridge: {10**400}}}}}\n",
        "dup": "search: {n_trials: 5, sampler: tpe}\npruning: {gamma: 0.4}\nsearch: {seed: 1}\n",
        "dup-nested": "pruning:\n  gamma: 0.4\n  eta: 0.3\n  gamma: 0.5\n",
        "dup-preset": "pruning: {gamma: 0.4}\ndata: {seed: 1, seed: 2}\n",
        "dupinc": "include: dup-preset.yaml\n",
    }.items():
        (tmp / f"{name}.yaml").write_text(text)
    return tmp


def _image_folders(tmp: Path) -> None:
    """ImageFolder layouts: one with a corrupt file, one with one class, one whose test split
    lacks a class; each with a study file."""
    from PIL import Image

    layouts = {"corrupt": (("a", "b"), ("a", "b")), "oneclass": (("a",), ("a",)),
               "missing": (("a", "b", "c"), ("a", "b"))}
    for name, (train, test) in layouts.items():
        for split, classes in (("train", train), ("test", test)):
            for c in classes:
                folder = tmp / name / split / c
                folder.mkdir(parents=True)
                for i in range(4):
                    Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")
        (tmp / f"{name}.yaml").write_text(
            f"model: {{name: cifar_resnet8}}\ndata: {{name: imagefolder, root: {tmp / name}, "
            "calib_size: 2, val_size: 2}\n")
    (tmp / "corrupt" / "test" / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    # Splits are decoded when a command reads them (issue 23): a study reads val, so the corrupt
    # test image is drawn into val (seed 1 puts test image 6, b/2.png, in val's half).
    (tmp / "corrupt.yaml").write_text(
        f"model: {{name: cifar_resnet8}}\ndata: {{name: imagefolder, root: {tmp / 'corrupt'}, "
        "calib_size: 2, val_size: 4, val_from: test, seed: 1}\n")


# (id, config file, extra flags, exit code, pattern the one line must match)
CASES = [
    ("malformed-yaml", "malformed.yaml", [], 2, r"malformed YAML in .*malformed.yaml at line 3"),
    ("misspelled-key", "typo.yaml", [], 2,
     r"unknown config key 'pruning.gama' \(did you mean 'gamma'\?\)"),
    ("misspelled-section", "typo-section.yaml", [], 2,
     r"unknown config key 'serch' \(did you mean 'search'\?\)"),
    ("gamma-above-1", "s.yaml", ["--gamma", "1.5"], 2,
     r"pruning.gamma must be in \(0, 1\], got 1.5"),
    ("gamma-zero", "s.yaml", ["--gamma", "0"], 2, r"pruning.gamma must be in \(0, 1\], got 0"),
    ("negative-tolerance", "s.yaml", ["--tolerance", "-0.01"], 2,
     r"pruning.tolerance must be >= 0"),
    ("eta-zero", "s.yaml", ["--eta", "0"], 2, r"pruning.eta must be in \(0, 1\], got 0"),
    ("eta-above-1", "s.yaml", ["--eta", "1.2"], 2, r"pruning.eta must be in \(0, 1\]"),
    ("unknown-sampler", "s.yaml", ["--sampler", "tpee"], 2,
     r"unknown sampler 'tpee' \(did you mean 'tpe'\?\)"),
    ("unknown-criterion", "s.yaml", ["--criterion", "gmm"], 2,
     r"unknown criterion 'gmm' \(did you mean 'gm'\?\)"),
    ("unknown-model", "nomodel.yaml", [], 2,
     r"unknown model 'resnet5O' \(did you mean 'resnet50'\?\)"),
    ("supernet-lr-zero", "supernet-lr.yaml", [], 2, r"supernet.lr must be > 0"),
    ("supernet-top-k-zero", "supernet-topk.yaml", [], 2, r"supernet.top_k must be >= 1, got 0"),
    ("ckpt-missing-keys", "ckpt-missing.yaml", [], 1,
     r"does not fit model cifar_resnet20: missing keys layer3"),
    ("ckpt-unexpected-keys", "ckpt-unexpected.yaml", [], 1, r"unexpected keys extra.weight"),
    ("ckpt-wrong-shapes", "ckpt-shapes.yaml", [], 1,
     r"wrong shapes \S+ \(100x64 in file, 10x64 in model\)"),
    ("ckpt-truncated", "ckpt-truncated.yaml", [], 1,
     r"cannot read checkpoint .*truncated.pt: truncated"),
    ("ckpt-no-file", "ckpt-nofile.yaml", [], 1, r"checkpoint not found: .*nofile.pt"),
    ("data-root-missing", "noroot.yaml", [], 1, r"data root not found: .*nope"),
    ("data-no-images", "noimages.yaml", [], 1, r"no images in .*train"),
    ("train-size-not-a-number", "trainsize.yaml", [], 2,
     r"^error: 'data.train_size' must be an integer, got 'abc'$"),
    ("test-size-not-a-number", "testsize.yaml", [], 2,
     r"^error: 'data.test_size' must be an integer, got 'abc'$"),
    ("num-classes-not-a-number", "classes.yaml", [], 2,
     r"^error: 'model.num_classes' must be an integer, got 'ten'$"),
    ("batch-size-zero", "batch.yaml", [], 2, r"^error: 'data.batch_size' must be >= 1, got 0$"),
    ("two-problems-in-one-line", "two.yaml", [], 2,
     r"'data.train_size' must be an integer, got 'abc'; 'data.batch_size' must be >= 1"),
    ("tolerance-inf", "s.yaml", ["--tolerance", "inf"], 2,
     r"'pruning.tolerance' must be a finite number, got inf"),
    ("gamma-nan", "s.yaml", ["--gamma", "nan"], 2, r"'pruning.gamma' must be a finite number"),
    ("sampler-factory-missing", "s.yaml", ["--sampler", "no_such_module:make"], 2,
     r"cannot import module 'no_such_module' for search.sampler 'no_such_module:make'"),
    ("criterion-factory-missing", "s.yaml", ["--criterion", "no_such_module:make"], 2,
     r"cannot import module 'no_such_module' for pruning.criterion"),
    ("image-corrupt", "corrupt.yaml", [], 1,
     r"cannot read image .*corrupt/test/b/2.png: .*remove or replace the file"),
    ("one-class", "oneclass.yaml", [], 1, r"oneclass/train has one class folder \(a\)"),
    ("class-missing-from-test", "missing.yaml", [], 1,
     r"class folders of .*missing/test differ from .*missing/train \(missing c\)"),
    ("storage-under-a-file", "s.yaml", ["--storage", "afile/x.db"], 1,
     r"cannot create the storage folder .*afile: .*afile is a file, not a folder; choose another"),
    ("storage-closed-port", "s.yaml", ["--storage", PG_CLOSED], 1,
     r"cannot open storage URL: .*server is running"),
    ("storage-bad-scheme", "s.yaml", ["--storage", "foo://bar"], 1,
     r"cannot open storage URL: .*foo://bar"),
    ("include-not-a-file-name", "include5.yaml", [], 2,
     r"^error: 'include' in .*include5.yaml must be a file name or a list of file names, got "
     r"5$"),
    ("duplicate-section", "dup.yaml", [], 2,
     r"^error: duplicate key 'search' at line 3 of .*dup.yaml \(first at line 1\); write each "
     r"key once per section$"),
    ("duplicate-key-in-a-section", "dup-nested.yaml", [], 2,
     r"duplicate key 'gamma' at line 4 of .*dup-nested.yaml \(first at line 2\)"),
    ("duplicate-key-in-an-include", "dupinc.yaml", [], 2,
     r"duplicate key 'seed' at line 2 of .*dup-preset.yaml \(first at line 2\)"),
    ("device-tpu", "tpu.yaml", [], 2,
     r"^error: unknown device 'tpu' \(did you mean 'cpu'\?\); choose one of: auto, cpu, cuda, "
     r"cuda:N, mps$"),
    ("seed-too-large", "seed.yaml", [], 2,
     r"^error: 'data.seed' must be <= 4294967295, got 100000000000000000000000$"),
    ("n-trials-too-large", "s.yaml", ["--n-trials", str(10**30)], 2,
     r"^error: 'search.n_trials' must be <= 2147483647, got 10{30}$"),
    ("image-size-too-large", "imgsize.yaml", [], 2,
     r"^error: 'data.image_size' must be <= 2048, got 30000$"),
    ("float-beyond-the-float-range", "ridge.yaml", [], 2,
     r"'pruning.reconstruction.ridge' must be a finite number, got 1000"),
    ("storage-port-not-a-number", "s.yaml",
     ["--storage", "postgresql://u:pw12345@127.0.0.1:notaport/db"], 1,
     r"^error: invalid storage URL postgresql://u:\*\*\*@127.0.0.1:notaport/db: its port is not "
     r"a number; write it as postgresql://user@host:5432/database$"),
    ("config-differs", "s.yaml", ["--study-name", "s", "--gamma", "0.6", "--criterion", "l2"], 2,
     r"study 's' exists with a different config: pruning.criterion \('l1' -> 'l2'\), "
     r"pruning.gamma \(0.4 -> 0.6\); pass --study-name .* or --force-config"),
]


def trial_states(db: Path) -> dict[str, list[str]]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    return {s.study_name: [t.state.name for t in optuna.load_study(
        study_name=s.study_name, storage=storage).get_trials()]
        for s in optuna.get_all_study_summaries(storage)}


@pytest.mark.parametrize(("config", "flags", "code", "pattern"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(env, capsys, monkeypatch, config, flags,
                                                   code, pattern):
    monkeypatch.chdir(env)
    db = env / "studies.db"
    before = trial_states(db)
    argv = ["study", "run", str(env / config), "--storage", str(db), "--study-name", "new",
            *flags]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(pattern, err[0]), err[0]
    assert trial_states(db) == before  # no trial added, no study created


@pytest.mark.parametrize(("config", "flags", "code"), [
    ("malformed.yaml", [], 2), ("s.yaml", ["--gamma", "2"], 2),
    ("s.yaml", ["--workers", "2", "--storage", "sqlite:///:memory:"], 2),
], ids=["malformed-yaml", "gamma", "workers-in-memory"])
def test_bad_input_as_a_subprocess(env, config, flags, code):
    proc = subprocess.run([sys.executable, "-m", "searchprune.cli.main", "study", "run",
                           str(env / config), *flags], cwd=env, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert proc.returncode == code
    one_line_error(proc)


def test_unwritable_storage_is_one_line(env, capsys, monkeypatch):
    from searchprune.search import storage

    # Root writes anywhere, so a read-only folder is simulated where the check asks the system.
    monkeypatch.setattr(storage.os, "access", lambda path, mode: False)
    argv = ["study", "run", str(env / "s.yaml"), "--storage", str(env / "ro" / "x.db")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: storage {env / 'ro'} is not writable; choose another --storage path"]


def test_unreachable_band_fails_fast_and_creates_nothing(tmp_path):
    from searchprune.errors import BandError

    storage = optuna.storages.InMemoryStorage()
    cfg = make_cfg(tmp_path, **{"pruning.gamma": 0.1, "pruning.eta": 0.6})
    with pytest.raises(BandError, match=r"gamma 0.1 is below the FLOPs ratio .* lower eta"):
        run(cfg, storage=storage)
    assert storage.get_all_studies() == []


class NaNFeatures(FakeEngine):
    """Every other evaluation meets NaN features in reconstruction, as reconstruct.py raises."""

    def evaluate(self, widths, *, split="val", on_chunk=None):
        if self.calls % 2:
            self.calls += 1
            raise FloatingPointError("NaN/inf in feature maps during least-squares reconstruction")
        return super().evaluate(widths, split=split, on_chunk=on_chunk)


def test_nan_features_fail_the_trial_and_the_study_goes_on(tmp_path):
    study = run(make_cfg(tmp_path, n_trials=4), engine=NaNFeatures())
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert len(failed) == 3
    assert all(t.user_attrs["fail_reason"] == "reconstruction failed: NaN/inf in feature maps "
               "during least-squares reconstruction" for t in failed)
    assert all(math.isfinite(t.value) for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_cuda_on_a_machine_without_cuda_is_one_line(env, capsys, monkeypatch):
    if torch.cuda.is_available():  # simulated on a machine that has CUDA
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    db = env / "studies.db"
    before = trial_states(db)
    argv = ["study", "run", str(env / "cuda.yaml"), "--storage", str(db), "--study-name", "new"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: device 'cuda' is not available: this machine has no usable CUDA "
                   "device; set device: auto or cpu"]
    assert trial_states(db) == before


def test_a_writable_database_in_an_unwritable_folder_is_one_line(env, tmp_path, capsys,
                                                                monkeypatch):
    """SQLite and the study lock write files next to the database. Root writes anywhere, so
    the read-only folder is simulated where the check asks the system."""
    from searchprune.search import storage

    db = tmp_path / "ro" / "x.db"
    db.parent.mkdir()
    shutil.copy(env / "studies.db", db)
    real = storage.os.access
    monkeypatch.setattr(storage.os, "access",
                        lambda path, mode: False if Path(path) == db.parent else real(path, mode))
    assert main(["study", "run", str(env / "s.yaml"), "--storage", str(db)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: storage folder {db.parent} is not writable (SQLite and the study lock "
                   "write files next to the database); choose another --storage path or make "
                   "the folder writable"]
    assert sorted(p.name for p in db.parent.iterdir()) == ["x.db"]  # no lock file, no journal


@pytest.mark.parametrize(("flags", "message"), [
    (["--top", "0"], "--top must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--epochs", "-1", "--weight-decay", "-0.1"],
     "--epochs must be >= 0, got -1; --weight-decay must be a finite number >= 0, got -0.1"),
    (["--seed", str(2**40)], "--seed must be <= 4294967295, got 1099511627776"),
], ids=["top", "batch-size", "lr", "lr-nan", "two", "seed"])
def test_finetune_recipe_out_of_range_is_one_line(env, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(env)
    db = env / "studies.db"
    before = trial_states(db)
    assert main(["finetune", "--study-name", "s", "--storage", str(db), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert trial_states(db) == before and not (env / "runs").exists()


def test_each_may_finetune_baselines_only():
    from searchprune.cli.finish import _check_recipe
    from searchprune.cli.main import build_parser

    args = build_parser().parse_args(["finetune", "--study-name", "s", "--each", "--top", "0",
                                      "--baselines", "uniform"])
    _check_recipe(args)  # --top 0 with --each: the baselines alone


@pytest.mark.parametrize(("exc", "line"), [
    (RuntimeError("boom\nsecond line"), "RuntimeError: boom"),
    (PermissionError(13, "Permission denied", "/srv/studies/s.db.lock"),
     "PermissionError: [Errno 13] Permission denied: '/srv/studies/s.db.lock'"),
    (MemoryError(), "MemoryError: out of memory; lower data.image_size, data.batch_size or "
                    "data.calib_size"),
    (KeyError("x"), "KeyError: 'x'"),
], ids=["runtime", "permission", "memory", "key"])
def test_any_other_exception_is_one_line_and_debug_keeps_the_traceback(
        env, capsys, monkeypatch, exc, line):
    from searchprune.cli import study

    def fail(args):
        raise exc

    monkeypatch.setattr(study, "_list", fail)
    argv = ["study", "list", "--storage", str(env / "studies.db")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {line} (rerun with --debug for the traceback)"]
    assert main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in fail" in err and f"\n{type(exc).__name__}" in err  # the whole traceback
    if isinstance(exc, RuntimeError):
        assert err.strip().endswith("RuntimeError: boom\nsecond line")


def test_a_band_no_draw_can_hit_is_refused_before_any_trial(tmp_path):
    from searchprune.errors import BandError

    storage = optuna.storages.InMemoryStorage()
    for gamma in (1.0, 0.5):
        cfg = make_cfg(tmp_path, **{"pruning.gamma": gamma, "pruning.tolerance": 0.0})
        with pytest.raises(BandError, match=rf"^gamma {gamma:g} \(band half-width 0\) leaves no "
                                            r"room inside the reachable FLOPs ratios "
                                            r"\[0\.\d{4}, 1\.0000\]: no draw can land in it; "
                                            r"widen pruning.tolerance"):
            run(cfg, storage=storage)
    assert storage.get_all_studies() == []
    # a band with room inside the range still runs
    study = run(make_cfg(tmp_path, n_trials=2, **{"pruning.tolerance": 0.05}), storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2


def test_a_band_no_draw_can_hit_is_one_line_from_the_command(tmp_path):
    from _helpers import start_worker

    config = tmp_path / "full.yaml"
    config.write_text("pruning: {gamma: 1.0, tolerance: 0}\n")
    db = tmp_path / "s.db"
    proc = start_worker(config, str(db), "full", 3)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gamma 1 (band half-width 0) leaves "
                                                   "no room inside the reachable FLOPs ratios ["), err
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    assert optuna.get_all_study_summaries(storage) == []  # no study, no trial


@pytest.mark.parametrize("url", ["postgresql://u:s3cret-pw@db.example:5432/studies",
                                 "postgresql://u@db.example/studies?password=s3cret-pw"])
def test_next_commands_never_show_a_storage_password(capsys, url):
    from searchprune.cli.study import _print_next
    from searchprune.config import Config

    _print_next("q", Config(storage=url))
    err = capsys.readouterr().err
    assert "s3cret-pw" not in err and "***" not in err
    assert 'searchprune study show --study-name q --storage "$SEARCHPRUNE_STORAGE"' in err
    assert "export SEARCHPRUNE_STORAGE=<that URL>" in err
    _print_next("q", Config(storage="/data/my studies/s.db"))
    assert "--storage '/data/my studies/s.db' --top 3" in capsys.readouterr().err
