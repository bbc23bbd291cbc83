"""band-TPE's dependence on Optuna's private TPE internals, pinned and tested: pyproject admits
only the tested Optuna versions, the estimator hook is the one TPE builds its estimators with,
and an Optuna without the internals is a clear error rather than an unconstrained TPE."""

from __future__ import annotations

import re

import optuna
import pytest
from _helpers import GAMMA, ROOT, TOL, FakeEngine, make_cfg, run
from optuna.samplers import TPESampler
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import searchprune.search._band_tpe as band_tpe
from searchprune.search._band_tpe import TESTED_OPTUNA, BandTPESampler
from searchprune.search.band import Band


def _optuna_pin() -> SpecifierSet:
    text = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"optuna([<>=!~][^"]*)"', text)
    return SpecifierSet(spec)


def test_pyproject_admits_only_the_tested_optuna_versions():
    pin = _optuna_pin()
    for minor in ("4.9", "5.0", "5.1", "5.2", "5.3", "6.0"):
        for patch in ("0", "9"):
            admitted = Version(f"{minor}.{patch}") in pin
            assert admitted == (minor in TESTED_OPTUNA), (minor, pin)


def test_the_installed_optuna_is_a_tested_version():
    installed = Version(optuna.__version__)
    assert f"{installed.major}.{installed.minor}" in TESTED_OPTUNA


def _sampler() -> BandTPESampler:
    engine = FakeEngine()
    band = Band(GAMMA, TOL)
    return BandTPESampler([g.name for g in engine.groups], 0.3,
                          lambda r: band.contains_ratios(engine, r), seed=0,
                          n_startup_trials=3)


def test_tpe_builds_its_estimators_with_the_in_band_class_and_samples_in_band(tmp_path,
                                                                            monkeypatch):
    """After the startup trials Optuna's TPE builds its estimators through the hook, and the
    candidates it scores come from the in-band estimator's ``sample``."""
    built, sampled = [], []
    init, sample = band_tpe._InBandParzenEstimator.__init__, band_tpe._InBandParzenEstimator.sample

    def spy_init(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    def spy_sample(self, rng, size):
        out = sample(self, rng, size)
        sampled.append(out)
        return out

    monkeypatch.setattr(band_tpe._InBandParzenEstimator, "__init__", spy_init)
    monkeypatch.setattr(band_tpe._InBandParzenEstimator, "sample", spy_sample)
    study = run(make_cfg(tmp_path, "tpe", n_trials=13))
    assert len(built) == 2 * 3  # below and above, for each of the 3 trials after 10 startup
    assert len(sampled) == 3
    engine, band = FakeEngine(), Band(GAMMA, TOL)
    for batch in sampled:
        names = list(batch)
        assert len(batch[names[0]]) == 24  # n_ei_candidates, every one in band
        for i in range(24):
            assert band.contains_ratios(engine, {n: float(batch[n][i]) for n in names})
    chosen = [t.params for t in study.get_trials()[10:]]
    assert all(any(all(float(b[n][i]) == p[n] for n in p) for b in sampled for i in range(24))
               for p in chosen)  # each trial's parameters are one of the in-band candidates


def test_a_sampler_on_an_optuna_without_the_internals_is_a_clear_error(monkeypatch):
    _sampler()  # the installed Optuna has them
    monkeypatch.delattr(TPESampler, "_sample")
    with pytest.raises(RuntimeError, match=r"TPESampler._sample not found in optuna .*install "
                                           r"optuna 5\.0\.x or 5\.1\.x"):
        _sampler()


def test_a_renamed_hook_is_a_clear_error(monkeypatch):
    real = TPESampler.__init__

    def renamed(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self._estimator_cls = self.__dict__.pop("_parzen_estimator_cls")

    monkeypatch.setattr(TPESampler, "__init__", renamed)
    with pytest.raises(RuntimeError, match="TPESampler._parzen_estimator_cls not found"):
        _sampler()
