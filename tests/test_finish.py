"""Fine-tune a study's winners and export a model that loads without searchprune."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import torch

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
    assert 0 <= record["test_top1"] <= 100 and record["artifact_id"]
    assert (tmp / "ft" / f"trial-{result.best}-stage2.pt").is_file()
    # a second call finds every epoch checkpointed and reproduces the result without training
    again = finetune_study(st, top=2, settings=settings, out_dir=tmp / "ft")
    assert again.test_top1 == pytest.approx(result.test_top1)


def test_export_loads_without_searchprune_and_matches(study, tmp_path):
    st, _ = study
    card = export_trial(st, tmp_path / "out", latency=False)
    assert card["input_shape"] == [1, 1, 8, 8]
    saved = json.loads((tmp_path / "out" / "card.json").read_text())
    assert saved["flops_ratio"] == pytest.approx(card["flops_ratio"])
    from searchprune.search.finishing import _engine, load_study_config

    engine = _engine(load_study_config(st))
    model = engine.build(st.trials[card["trial"]].user_attrs["widths"])
    ft = st.user_attrs.get("finetune")
    if ft and ft.get("best_trial") == card["trial"]:
        model.load_state_dict(torch.load(ft["checkpoint"], weights_only=True)["state_dict"])
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
    from searchprune.search.finishing import load_study_config
    from searchprune.supernet import engine_for

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
    assert all((tmp / "each" / f"{k}-each.pt").is_file() for k in (best, "uniform", "tp-global"))
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
