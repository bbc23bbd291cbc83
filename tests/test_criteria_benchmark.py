"""The criteria benchmark: shared configurations, paired statistics, stored studies."""

from __future__ import annotations

import optuna
import pytest

from searchprune.config import config_from_dict
from searchprune.engine import PruningEngine
from searchprune.report.criteria import CriteriaReport, run_criteria_benchmark, summarise


def test_summary_statistics_on_a_hand_made_report():
    r = CriteriaReport(["l1", "l2"], configs=[{}, {}, {}], flops_ratio=[0.5, 0.5, 0.5])
    r.top1 = {"l1": [90.0, 80.0, 70.0], "l2": [91.0, 80.0, 60.0]}
    r.params_ratio = {"l1": [0.5] * 3, "l2": [0.6] * 3}
    s = summarise(r)
    assert s["criteria"]["l1"]["mean_top1"] == pytest.approx(80.0)
    assert s["criteria"]["l2"]["best_top1"] == 91.0
    assert s["win_rate"]["l2"]["l1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert s["win_rate"]["l1"]["l2"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert s["paired_tests"][0]["mean_diff"] == pytest.approx((-1 + 0 + 10) / 3)


def test_every_criterion_sees_the_same_configurations(tmp_path):
    cfg = config_from_dict({"data": {"calib_size": 64, "val_size": 100},
                            "pruning": {"gamma": 0.6, "tolerance": 0.05},
                            "search": {"study_name": "crit"}})
    engine = PruningEngine.from_config(cfg)
    storage = optuna.storages.InMemoryStorage()
    report = run_criteria_benchmark(cfg, ["l1", "gm"], n_configs=3, seed=1, engine=engine,
                                    storage=storage, study_prefix="crit")
    assert len(report.top1["l1"]) == len(report.top1["gm"]) == 3
    assert all(abs(r - 0.6) <= 0.05 for r in report.flops_ratio)
    l1 = optuna.load_study(study_name="crit-l1", storage=storage)
    gm = optuna.load_study(study_name="crit-gm", storage=storage)
    assert [t.params for t in l1.trials] == [t.params for t in gm.trials]
    # resuming evaluates nothing new
    again = run_criteria_benchmark(cfg, ["l1", "gm"], n_configs=3, seed=1, engine=engine,
                                   storage=storage, study_prefix="crit")
    assert again.top1 == report.top1
    assert len(l1.trials) == 3
