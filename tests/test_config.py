"""Config mistakes: one line on stderr naming the fix, exit code 2, before any work is done."""

from __future__ import annotations

import pytest
from _helpers import cli, one_line_error

from searchprune.config import apply_overrides, config_to_dict, load_config
from searchprune.errors import ConfigError


@pytest.mark.parametrize(("text", "flags", "message"), [
    ("model: [unclosed\n", [], "malformed YAML .* line"),
    ("pruning:\n  gama: 0.5\n", [], "unknown config key 'pruning.gama' \\(did you mean 'gamma'\\?\\)"),
    ("", ["--gamma", "1.5"], r"pruning.gamma must be in \(0, 1\]"),
    ("", ["--tolerance", "-0.1"], "pruning.tolerance must be >= 0"),
    ("", ["--eta", "0"], r"pruning.eta must be in \(0, 1\]"),
    ("", ["--sampler", "rnadom"], "unknown sampler 'rnadom' \\(did you mean 'random'\\?\\)"),
    ("search:\n  n_trials: many\n", [], "'search.n_trials' must be an integer"),
])
def test_config_errors_via_cli(tmp_path, text, flags, message):
    import re

    path = tmp_path / "study.yaml"
    path.write_text(text)
    proc = cli("study", "run", str(path), "--storage", str(tmp_path / "s.db"), *flags)
    assert proc.returncode == 2
    assert re.search(message, one_line_error(proc))


def test_flags_override_file_and_unset_flags_do_not(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("pruning:\n  gamma: 0.6\n  eta: 0.4\nsearch:\n  sampler: tpe\n")
    cfg = load_config(path, {"pruning.gamma": 0.7, "pruning.eta": None, "search.seed": None})
    assert cfg.pruning.gamma == 0.7 and cfg.pruning.eta == 0.4 and cfg.search.sampler == "tpe"
    assert cfg.source == str(path)


def test_resolved_config_round_trips():
    cfg = load_config(None, {"search.sampler": "cmaes"})
    assert config_to_dict(apply_overrides(cfg, {})) == config_to_dict(cfg)


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown override"):
        apply_overrides(load_config(None), {"pruning.gama": 0.5})


def test_include_merges_presets_and_the_file_wins(tmp_path):
    from searchprune.config import load_config

    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "data.yaml").write_text("data:\n  name: digits\n  val_size: 123\n")
    (tmp_path / "presets" / "prune.yaml").write_text("pruning:\n  gamma: 0.7\n  eta: 0.4\n")
    study = tmp_path / "study.yaml"
    study.write_text("include:\n  - presets/data.yaml\n  - presets/prune.yaml\n"
                     "pruning:\n  gamma: 0.6\n")
    cfg = load_config(study)
    assert cfg.data.val_size == 123 and cfg.pruning.eta == 0.4 and cfg.pruning.gamma == 0.6


def test_include_cycle_is_a_clear_error(tmp_path):
    from searchprune.config import load_config
    from searchprune.errors import ConfigError

    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_duplicate_keys_are_an_error_but_yaml_merge_keys_still_override(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("search:\n  n_trials: 5\n  sampler: tpe\npruning: {gamma: 0.4}\n"
                   "search:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"^duplicate key 'search' at line 5 of .*dup.yaml "
                                          r"\(first at line 1\)"):
        load_config(dup)
    merged = tmp_path / "merged.yaml"
    merged.write_text("pruning:\n  <<: {gamma: 0.4, tolerance: 0.05}\n  gamma: 0.6\n")
    cfg = load_config(merged)
    assert (cfg.pruning.gamma, cfg.pruning.tolerance) == (0.6, 0.05)
