"""Fine-tune a study's winners and export a model that loads without searchprune."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import torch
from _helpers import cli, one_line_error

from searchprune.config import config_from_dict
from searchprune.finetune import FinetuneSettings
from searchprune.search import run_study
from searchprune.search.finishing import export_trial, finetune_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finish")
    cfg = config_from_dict({
        "data": {"calib_size": 128, "val_size": 200},
        "pruning": {"gamma": 0.6, "tolerance": 0.05},
        "search": {"n_trials": 3, "study_name": "finish"},
        "storage": str(tmp / "s.db"),
    })
    return run_study(cfg, progress=False), tmp


def test_finetune_records_results_in_the_study_and_resumes(study):
    st, tmp = study
    settings = FinetuneSettings(epochs=1, final_epochs=1, batch_size=64)
    result = finetune_study(st, top=2, settings=settings, out_dir=tmp / "ft",
                            artifact_dir=tmp / "artifacts")
    record = optuna.load_study(study_name="finish", storage=f"sqlite:///{tmp / 's.db'}"
                               ).user_attrs["finetune"]
    assert len(record["trials"]) == 2 and record["best_trial"] == result.best
    assert record["artifact_id"] and record["test_top1"] == pytest.approx(result.test_top1)
    # the trained digits net, pruned to 60% FLOPs and fine-tuned, is far above chance (10%)
    assert record["test_top1"] > 50.0 and record["val_top1"] == pytest.approx(result.val_top1)
    # checkpoints are named by the run's key (issue 25): one stage-2 file for this best
    assert len(list((tmp / "ft").glob(f"trial-{result.best}-stage2-*.pt"))) == 1
    # a second call finds every epoch checkpointed and reproduces the result without training
    again = finetune_study(st, top=2, settings=settings, out_dir=tmp / "ft")
    assert again.test_top1 == pytest.approx(result.test_top1)
    # export now defaults to the fine-tuned best, with its fine-tuned weights
    card = export_trial(st, tmp / "ft-out", latency=False)
    assert card["trial"] == result.best and card["accuracy"]["finetuned"] is True
    assert card["accuracy"]["test_top1"] == pytest.approx(result.test_top1)


def test_export_loads_without_searchprune_and_matches(study, tmp_path):
    st, _ = study
    best = max(st.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    card = export_trial(st, tmp_path / "out", trial=best.number, finetuned=False,
                        latency=False)
    assert card["trial"] == best.number and card["accuracy"]["finetuned"] is False
    assert card["accuracy"]["val_top1_search"] == best.value
    assert card["input_shape"] == [1, 1, 8, 8] and "latency_ms" not in card
    saved = json.loads((tmp_path / "out" / "card.json").read_text())
    assert saved["flops_ratio"] == pytest.approx(best.user_attrs["flops_ratio"])
    from searchprune.engine import engine_for
    from searchprune.search.finishing import load_study_config

    engine = engine_for(load_study_config(st))
    model = engine.build(best.user_attrs["widths"])
    x = torch.randn(5, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model.eval()(x), tmp_path / "expected.pt")
    script = (
        "import sys; sys.modules['searchprune'] = None\n"
        "import torch\n"
        f"m = torch.export.load(r'{tmp_path / 'out' / 'model.pt2'}').module()\n"
        f"x = torch.load(r'{tmp_path / 'x.pt'}')\n"
        f"e = torch.load(r'{tmp_path / 'expected.pt'}')\n"
        "assert torch.allclose(m(x), e, atol=1e-5), (m(x) - e).abs().max()\n"
        "try:\n    import searchprune\nexcept ImportError:\n    print('ok-without-searchprune')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ok-without-searchprune" in proc.stdout


def test_finetune_each_gives_trials_and_baselines_one_recipe(study, capsys):
    from searchprune.baselines import solve_baseline
    from searchprune.cli.main import main
    from searchprune.engine import engine_for
    from searchprune.search.finishing import load_study_config

    st, tmp = study
    best = st.best_trial.number
    code = main(["finetune", "--study-name", "finish", "--storage", str(tmp / "s.db"), "--each",
                 "--trials", str(best), "--baselines", "uniform,tp-global", "--epochs", "1",
                 "--batch-size", "64", "--out", str(tmp / "each"), "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["key"] for r in rows] == [best, "uniform", "tp-global"]
    assert all(r["epochs"] == 1 and abs(r["flops_ratio"] - 0.6) <= 0.05 for r in rows)
    assert all(r["latency_ms"] > 0 and r["latency_batch"] == 64 for r in rows)
    assert rows[0]["widths"] == st.best_trial.user_attrs["widths"]
    engine = engine_for(load_study_config(st))
    assert rows[2]["widths"] == solve_baseline("tp-global", engine).widths
    # checkpoints are named by the run's key (issue 25): one file per candidate
    assert all(len(list((tmp / "each").glob(f"{k}-each-*.pt"))) == 1
               for k in (best, "uniform", "tp-global"))
    stored = optuna.load_study(study_name="finish", storage=f"sqlite:///{tmp / 's.db'}"
                               ).user_attrs["finetune_each"]
    assert [r["test_top1"] for r in stored["rows"]] == [r["test_top1"] for r in rows]


def test_finetune_trials_without_each_is_refused(study, capsys):
    from searchprune.cli.main import main

    st, tmp = study
    code = main(["finetune", "--study-name", "finish", "--storage", str(tmp / "s.db"),
                 "--baselines", "uniform"])
    assert code == 2
    assert "go with --each" in capsys.readouterr().err


def test_export_measures_latency(study, tmp_path):
    st, _ = study
    card = export_trial(st, tmp_path / "out", trial=0, finetuned=False, latency=True)
    saved = json.loads((tmp_path / "out" / "card.json").read_text())
    assert saved["latency_ms"] == card["latency_ms"]
    assert set(card["latency_ms"]) == {"batch1", "batch64"}
    for timing in card["latency_ms"].values():
        assert set(timing) == {"pruned", "original"}
        assert all(isinstance(v, float) and v > 0.0 for v in timing.values())
    assert f"{torch.get_num_threads()} threads" in card["latency_method"]


def test_pareto_study_through_run_show_finetune_export(tmp_path):
    """The whole command line on a multi-objective study (real engine, digits)."""
    config = tmp_path / "pareto.yaml"
    config.write_text(
        "data: {calib_size: 128, val_size: 200}\n"
        "search: {objective: pareto, gamma_range: [0.3, 0.9], n_trials: 5, sampler: random}\n")
    db = str(tmp_path / "s.db")
    run = cli("study", "run", str(config), "--storage", db, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["objective"] == "pareto" and summary["evaluated"] == 5
    front = summary["front"]
    ratios = [t["values"][1] for t in front]
    assert front and ratios == sorted(ratios)
    # a front: accuracy rises with the FLOPs ratio, and nothing evaluated dominates a member
    accs = [t["values"][0] for t in front]
    assert accs == sorted(accs) and len(set(accs)) == len(accs)

    show = cli("study", "show", "--storage", db, "--study-name", "pareto", "--json")
    shown = json.loads(show.stdout)
    assert shown["front"] == front and [t["number"] for t in shown["trials"][:len(front)]] == [
        t["number"] for t in front]
    complete = [t for t in shown["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == 5
    for m in front:  # no evaluated trial dominates a front member
        assert not any(t["values"][0] >= m["values"][0] and t["values"][1] <= m["values"][1]
                       and t["values"] != m["values"] for t in complete)
    table = cli("study", "show", "--storage", db, "--study-name", "pareto")
    assert table.returncode == 0 and "front members" in table.stderr

    listed = json.loads(cli("study", "list", "--storage", db, "--json").stdout)["studies"]
    assert listed[0]["objective"] == "pareto" and listed[0]["front_size"] == len(front)

    # fine-tune the front members under a FLOPs cap (the cheapest member always qualifies)
    cap = ratios[0] + 1e-9
    ft = cli("finetune", "--storage", db, "--study-name", "pareto", "--top", "2", "--epochs",
             "1", "--final-epochs", "0", "--flops-max", str(cap), "--out",
             str(tmp_path / "ft"), "--artifact-dir", str(tmp_path / "art"), "--json")
    assert ft.returncode == 0, ft.stderr
    record = json.loads(ft.stdout)
    assert set(record["trials"]) == {str(front[0]["number"])}
    assert record["best_trial"] == front[0]["number"]

    ex = cli("export", "--storage", db, "--study-name", "pareto", "--out", str(tmp_path / "ex"),
             "--no-latency", "--json")
    assert ex.returncode == 0, ex.stderr
    card = json.loads(ex.stdout)
    assert card["trial"] == front[0]["number"] and card["accuracy"]["finetuned"] is True
    assert card["flops_ratio"] == pytest.approx(ratios[0])
    # with FLOPs bounds, export picks the most accurate front member inside them
    ex2 = cli("export", "--storage", db, "--study-name", "pareto", "--out",
              str(tmp_path / "ex2"), "--no-latency", "--flops-min", str(ratios[-1] - 1e-9),
              "--json")
    assert json.loads(ex2.stdout)["trial"] == front[-1]["number"]
    bad = cli("finetune", "--storage", db, "--study-name", "pareto", "--flops-max", "0.01")
    assert bad.returncode == 1 and "widen --flops-min/--flops-max" in one_line_error(bad)


def test_export_all_writes_onnx_that_onnxruntime_runs_like_pytorch(study, tmp_path):
    import onnxruntime

    st, _ = study
    card = export_trial(st, tmp_path / "out", latency=False, format="all")
    out = tmp_path / "out"
    listed = set(card["files"].values())
    assert listed == {"model.pt2", "model.onnx", "state_dict.pt", "card.json"}
    assert sorted(p.name for p in out.iterdir()) == sorted(listed)
    from searchprune.engine import engine_for
    from searchprune.search.finishing import load_study_config

    engine = engine_for(load_study_config(st))
    model = engine.build(st.trials[card["trial"]].user_attrs["widths"]).eval()
    ft = st.user_attrs.get("finetune")
    if ft and ft.get("best_trial") == card["trial"]:
        model.load_state_dict(torch.load(ft["checkpoint"], weights_only=True)["state_dict"])
    session = onnxruntime.InferenceSession(str(out / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch dimension
    for batch in (1, 13):
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        with torch.no_grad():
            expected = model(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4
    assert card["onnx_check"]["max_abs_diff"] <= 1e-4


def test_export_onnx_only_and_the_card_records_provenance(study, tmp_path):
    st, _ = study
    card = export_trial(st, tmp_path / "o", latency=False, format="onnx")
    assert set(card["files"].values()) == {"model.onnx", "state_dict.pt", "card.json"}
    assert not (tmp_path / "o" / "model.pt2").exists()
    saved = json.loads((tmp_path / "o" / "card.json").read_text())
    prov = saved["provenance"]
    assert prov["searchprune"] == __import__("searchprune").__version__
    assert prov["torch"] == torch.__version__ and prov["optuna"] == optuna.__version__
    assert prov["criterion"] == "l1" and prov["proxy"] == "ls"
    assert prov["seeds"]["search"] == 0 and prov["seeds"]["data"] == 0
    assert prov["splits"]["calib"] == 128 and prov["splits"]["val"] == 200
    assert prov["splits"]["train"] > 0 and prov["splits"]["test"] > 0
    assert saved["study_provenance"]["splits"] == prov["splits"]
    assert st.user_attrs["provenance"]["optuna"] == optuna.__version__


def test_finetune_under_torchrun_two_cpu_ranks_writes_one_result(study, tmp_path):
    import os
    from pathlib import Path

    st, tmp = study
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "searchprune", "finetune", "--study-name", "finish", "--storage",
         str(tmp / "s.db"), "--top", "2", "--epochs", "1", "--final-epochs", "1",
         "--batch-size", "32", "--out", str(tmp_path / "ft"), "--artifact-dir",
         str(tmp_path / "artifacts"), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)  # one JSON object: only rank 0 reports
    assert record["world_size"] == 2 and record["batch_size_per_rank"] == 32
    stored = optuna.load_study(study_name="finish", storage=f"sqlite:///{tmp / 's.db'}"
                               ).user_attrs["finetune"]
    assert stored == record
    assert len([p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]) == 1
    # one final file, of the best trial (named by the run's key since issue 25)
    finals = sorted(p.name for p in (tmp_path / "ft").glob("*-final-*.pt"))
    assert finals == [Path(record["checkpoint"]).name]
    assert finals[0].startswith(f"trial-{record['best_trial']}-final-")


# -- fine-tune checkpoints belong to one run (issue 25) -------------------------------------
def _small_study(db, gamma: float = 0.6, name: str = "stale") -> optuna.Study:
    return run_study(config_from_dict({
        "data": {"calib_size": 64, "val_size": 100, "train_size": 256},
        "pruning": {"gamma": gamma, "tolerance": 0.05},
        "search": {"n_trials": 2, "study_name": name}, "storage": str(db),
    }), progress=False)


def _finetune(db, out, *extra: str, name: str = "stale") -> int:
    from searchprune.cli.main import main

    return main(["finetune", "--study-name", name, "--storage", str(db), "--top", "1",
                 "--epochs", "1", "--final-epochs", "0", "--batch-size", "64", "--out",
                 str(out), "--artifact-dir", str(out.parent / "artifacts"), "--json", *extra])


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def _stored_meta(path) -> dict:
    return json.loads(torch.load(path, weights_only=True)["meta"])


@pytest.fixture(scope="module")
def stale(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stale")
    _small_study(tmp / "s.db")
    return tmp / "s.db"


def test_finetune_resumes_only_its_own_recipe(stale, tmp_path, caplog, capsys):
    import logging

    out = tmp_path / "ft"
    with caplog.at_level(logging.INFO):
        assert _finetune(stale, out, "--lr", "0.01") == 0
    (first,) = out.glob("trial-*-stage1-*.pt")
    assert _stored_meta(first)["recipe"]["lr"] == 0.01
    # positive control: the same recipe again resumes the finished checkpoint
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _finetune(stale, out, "--lr", "0.01") == 0
    assert f"resuming training from {first} at epoch 1/1" in _messages(caplog)
    for flag, value in (("--lr", "0.02"), ("--seed", "1"), ("--batch-size", "32")):
        caplog.clear()
        before = set(out.glob("trial-*-stage1-*.pt"))
        with caplog.at_level(logging.INFO):
            assert _finetune(stale, out, flag, value) == 0
        (new,) = set(out.glob("trial-*-stage1-*.pt")) - before  # its own checkpoint...
        assert not any(m.startswith("resuming training") for m in _messages(caplog))
        assert any("not resuming" in m and first.name in m and "starting fresh in "
                   f"{new.name}" in m for m in _messages(caplog)), _messages(caplog)
        recipe = _stored_meta(new)["recipe"]  # ...trained for the new recipe, 1 epoch
        assert str(recipe[flag[2:].replace("-", "_")]) == value
        assert len(torch.load(new, weights_only=True)["records"]) == 1
    capsys.readouterr()


def test_a_recreated_study_does_not_resume_the_old_ones_checkpoints(tmp_path, caplog, capsys):
    """Deleted and created again under the same name: with the same config (same widths) the
    old checkpoint is not resumed; with another band (other widths) the old checkpoint, which
    no longer fits, is not even opened (it used to be a RuntimeError traceback)."""
    import logging

    from searchprune.engine import engine_for
    from searchprune.search.finishing import load_study_config

    db, out = tmp_path / "s.db", tmp_path / "ft"
    old = _small_study(db)
    assert _finetune(db, out) == 0
    (old_ckpt,) = out.glob("trial-*-stage1-*.pt")
    old_widths = old.trials[int(old_ckpt.name.split("-")[1])].user_attrs["widths"]
    for gamma in (0.6, 0.35):
        optuna.delete_study(study_name="stale", storage=f"sqlite:///{db}")
        new = _small_study(db, gamma=gamma)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert _finetune(db, out) == 0, capsys.readouterr().err
        assert not any(m.startswith("resuming training") for m in _messages(caplog))
        assert any("not resuming" in m and old_ckpt.name in m for m in _messages(caplog))
    best = max(new.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
               key=lambda t: t.value)
    # the old checkpoint really does not fit the new study's best network
    assert best.user_attrs["widths"] != old_widths
    model = engine_for(load_study_config(new)).build(best.user_attrs["widths"])
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(torch.load(old_ckpt, weights_only=True)["model"])
    capsys.readouterr()


def test_a_recreated_study_has_another_identity_and_checkpoint_key(tmp_path):
    """A study gets a random uuid when it is created (a study system attr); fine-tune
    checkpoints are keyed by it, so a study deleted and created again under the same name
    gets other keys, while running the same study on keeps its key. A study created before
    uuids keeps the old identity (the start of its first trial)."""
    from _helpers import FakeEngine, make_cfg

    from searchprune.finetune import _run
    from searchprune.search.finishing import study_identity
    from searchprune.search.identity import STUDY_UUID_ATTR
    from searchprune.search.storage import get_storage

    storage = get_storage(str(tmp_path / "studies.db"), heartbeat_interval=None)

    def created(n_trials: int = 3) -> optuna.Study:
        return run_study(make_cfg(tmp_path, n_trials=n_trials), engine=FakeEngine(),
                         progress=False, storage=storage)

    def key(study: optuna.Study) -> str:
        return _run(tmp_path, "trial-0-stage1", "l", {"study": study_identity(study)}).path.name

    first = created()
    identity = study_identity(first)
    assert set(identity) == {"name", "uuid", "config"}  # the uuid, not a time, tells it apart
    assert identity["uuid"] == storage.get_study_system_attrs(first._study_id)[STUDY_UUID_ATTR]
    assert study_identity(created(n_trials=4)) == identity  # the same study, run on
    old_key = key(first)
    optuna.delete_study(study_name="s", storage=storage)
    second = created()
    assert study_identity(second)["uuid"] != identity["uuid"]
    assert key(second) != old_key
    # a study without the attribute (an older version's): identified by its first trial
    plain = optuna.create_study(study_name="old", storage=storage)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert set(study_identity(plain)) == {"name", "created", "config"}
    assert study_identity(plain)["created"] == plain.trials[0].datetime_start.isoformat()


def test_a_second_finetune_of_the_same_run_is_refused_while_one_holds_it(stale, tmp_path,
                                                                         capsys):
    """Real: another process holds the run's lock (flock); no timing is involved, the holder
    says when it holds the lock and keeps it until told to let go."""
    from pathlib import Path

    out = tmp_path / "ft"
    assert _finetune(stale, out) == 0
    (lock,) = out.glob("trial-*-stage1-*.lock")
    (ckpt,) = out.glob("trial-*-stage1-*.pt")
    saved = ckpt.read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys\n"
         f"f = open({str(lock)!r}, 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        capsys.readouterr()
        assert _finetune(stale, out) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: trial ") and (
            f"of study 'stale' is being fine-tuned with this recipe by another process (it "
            f"holds {lock}); wait for it to finish, then rerun" in err[0]), err
        assert ckpt.read_bytes() == saved  # nothing trained or written
        # another recipe is another run: not held up
        assert _finetune(stale, out, "--lr", "0.02") == 0
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    # the lock is free again: the same run now goes ahead and reuses the finished checkpoint
    capsys.readouterr()
    assert _finetune(stale, out) == 0
    record = json.loads(capsys.readouterr().out)
    assert Path(record["checkpoint"]).is_file() and ckpt.read_bytes() == saved


# -- export killed between its two renames (issue 25) ---------------------------------------
def test_export_puts_back_what_a_killed_export_moved_aside_and_cleans_up(study, tmp_path,
                                                                         caplog, capsys):
    """Simulated: the crash state on disk, made as an export killed at each point leaves it
    (the folders are created by the test). Real: the dead process id (a process that ran and
    was reaped), the live one (this test's parent) and the export command that recovers."""
    import logging
    import os

    from searchprune.cli.main import main
    from searchprune.export import _host

    st, tmp = study
    out = tmp_path / "exp"
    ex = ["export", "--storage", str(tmp / "s.db"), "--study-name", "finish", "--no-latency",
          "--json", "--out", str(out)]
    assert main(ex) == 0
    card = (out / "card.json").read_text()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    host, live = _host(), os.getppid()
    # killed between the renames: --out moved aside, the new files complete in their tmp
    old = tmp_path / f".exp.{host}.{dead}.old"
    out.rename(old)
    half = tmp_path / f".exp.{host}.{dead}.k2j4x_0a.tmp"
    half.mkdir()
    (half / "model.pt2").write_text("partial")
    keep = [tmp_path / f".exp.{host}.{live}.b7c8d9e0.tmp",  # an export still running
            tmp_path / f".exp.otherhost.{dead}.old"]  # another machine's: cannot be asked
    for p in keep:
        p.mkdir()
    with caplog.at_level(logging.INFO):
        assert main(ex) == 2  # the old export is back, and replacing it still needs --force
    assert f"--out {out} is not empty; pass --force" in capsys.readouterr().err
    assert (out / "card.json").read_text() == card
    assert f"restored {out} from {old.name}, left by an export that was killed" in [
        r.getMessage() for r in caplog.records]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["exp", *(p.name for p in keep)])
    # killed after the second rename, while deleting the old copy: --out is the new export
    (tmp_path / f".exp.{host}.{dead}.del").mkdir()
    (tmp_path / f".exp.{host}.{dead}.old").mkdir()
    assert main([*ex, "--force"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.pt2", "state_dict.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["exp", *(p.name for p in keep)])
