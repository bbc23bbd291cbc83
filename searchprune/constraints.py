"""What the user allows: per-group keep-ratio bounds (``pruning.groups``) and limits on a cost
ratio (``pruning.params``, ``pruning.latency``). Plain functions, no torch and no Optuna, so the
config, the search layer and any other step (e.g. a sensitivity scan) share one definition.

``pruning.groups`` maps glob patterns over group names (``fnmatch``: ``*`` matches dots too) to
``{min: r, max: r}`` or ``{fixed: r}``. A group's range is the intersection of ``[eta, 1]`` and
the range of every pattern that matches it (``fixed: r`` is ``[r, r]``), so pattern order does
not matter. A group whose range is one point is *fixed*: it is not a trial parameter, but it
still has a width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from searchprune.errors import ConfigError, did_you_mean

__all__ = ["LATENCY_DTYPES", "Bounds", "KeepRange", "KeepRanges", "LatencySpec", "Limit",
           "check_group_rules", "fixed_ratios", "free_names", "latency_spec", "limit_from",
           "resolve_bounds"]

Bounds = dict[str, tuple[float, float]]
_RULE_KEYS = ("min", "max", "fixed")
LATENCY_DTYPES = ("float32", "bfloat16")
# pruning.latency keys besides the ratio forms of :func:`limit_from`
_LATENCY_KEYS = ("max_ms", "batch_size", "threads", "dtype", "measure")


def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 < float(value) <= 1.0):
        raise ConfigError(f"{where} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_group_rules(rules: Any) -> None:
    """The shape of ``pruning.groups`` (which groups match is checked against the model later)."""
    if rules is None:
        return
    if not isinstance(rules, Mapping):
        raise ConfigError("pruning.groups must map group-name patterns to {min, max} or "
                          f"{{fixed}}, got {rules!r}")
    for pattern, rule in rules.items():
        where = f"pruning.groups['{pattern}']"
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"pruning.groups keys must be non-empty patterns, got {pattern!r}")
        if not isinstance(rule, Mapping) or not rule:
            raise ConfigError(f"{where} must be {{min: r, max: r}} or {{fixed: r}}, got {rule!r}")
        for key in rule:
            if key not in _RULE_KEYS:
                raise ConfigError(f"unknown key '{key}' in {where}{did_you_mean(key, _RULE_KEYS)};"
                                  " use min, max or fixed")
        if "fixed" in rule and len(rule) > 1:
            raise ConfigError(f"{where}: 'fixed' excludes 'min' and 'max'")
        lo, hi = rule_range(rule, where)
        if lo > hi:
            raise ConfigError(f"{where}: min {lo:g} is above max {hi:g}")


def rule_range(rule: Mapping[str, Any], where: str = "pruning.groups") -> tuple[float, float]:
    """``[min, max]`` of one rule (missing ends are 0 and 1; ``fixed: r`` is ``[r, r]``)."""
    if "fixed" in rule:
        r = _ratio(rule["fixed"], f"{where}.fixed")
        return r, r
    lo = _ratio(rule["min"], f"{where}.min") if "min" in rule else 0.0
    hi = _ratio(rule["max"], f"{where}.max") if "max" in rule else 1.0
    return lo, hi


def resolve_bounds(rules: Mapping[str, Any] | None, names: Sequence[str], eta: float) -> Bounds:
    """``{group: (lo, hi)}`` for every name: ``[eta, 1]`` intersected with every matching rule.

    Raises ConfigError when a pattern matches no group (listing the groups) or a group's range
    is empty (naming the group and the patterns).
    """
    rules = dict(rules or {})
    for pattern in rules:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"pruning.groups pattern '{pattern}' matches no group; the groups "
                              f"are: {', '.join(names)}")
    out: Bounds = {}
    for name in names:
        lo, hi, matched = float(eta), 1.0, []
        for pattern, rule in rules.items():
            if fnmatchcase(name, pattern):
                r_lo, r_hi = rule_range(rule, f"pruning.groups['{pattern}']")
                lo, hi = max(lo, r_lo), min(hi, r_hi)
                matched.append(pattern)
        if lo > hi:
            raise ConfigError(f"group '{name}' has no allowed keep-ratio: eta {eta:g} and "
                              f"pruning.groups patterns {', '.join(repr(m) for m in matched)} "
                              "do not overlap; widen one of them")
        out[name] = (lo, hi)
    return out


def fixed_ratios(bounds: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """The groups whose range is one point, with that keep-ratio (not trial parameters)."""
    return {n: lo for n, (lo, hi) in bounds.items() if lo >= hi}


def free_names(bounds: Mapping[str, tuple[float, float]]) -> list[str]:
    """The groups the search varies (trial parameters), in ``bounds`` order."""
    return [n for n, (lo, hi) in bounds.items() if lo < hi]


@dataclass(frozen=True)
class KeepRange:
    """The keep-ratios one group may take, ``low <= r <= high`` (``[eta, 1]`` narrowed by
    ``pruning.groups``); a range that is one point is *fixed*: not a trial parameter."""

    low: float
    high: float

    @property
    def fixed(self) -> bool:
        return self.low >= self.high

    def clip(self, ratio: float) -> float:
        return min(self.high, max(self.low, ratio))


@dataclass(frozen=True)
class KeepRanges:
    """Every prunable group's :class:`KeepRange`, in group order, with the ``eta`` they were
    resolved under; ``restricted``: ``pruning.groups`` was given (the ranges may be narrower
    than ``[eta, 1]``)."""

    ranges: Mapping[str, KeepRange]
    eta: float
    restricted: bool = False

    @classmethod
    def resolve(cls, rules: Mapping[str, Any] | None, names: Sequence[str],
                eta: float) -> KeepRanges:
        """:func:`resolve_bounds` as ranges (its one-line errors)."""
        bounds = resolve_bounds(rules, names, eta)
        return cls({n: KeepRange(lo, hi) for n, (lo, hi) in bounds.items()}, float(eta),
                   bool(rules))

    @property
    def bounds(self) -> Bounds:
        """``{group: (low, high)}``."""
        return {n: (r.low, r.high) for n, r in self.ranges.items()}

    @property
    def rule_bounds(self) -> Bounds | None:
        """:attr:`bounds` when ``pruning.groups`` narrows them, else None (every group on
        ``[eta, 1]``)."""
        return self.bounds if self.restricted else None

    @property
    def free(self) -> list[str]:
        """The groups the search varies (trial parameters), in group order."""
        return [n for n, r in self.ranges.items() if not r.fixed]

    @property
    def fixed(self) -> dict[str, float]:
        """The groups whose range is one point, with that keep-ratio."""
        return {n: r.low for n, r in self.ranges.items() if r.fixed}

    def lowest(self) -> dict[str, float]:
        """Every group at its lowest keep-ratio (the cheapest configuration)."""
        return {n: r.low for n, r in self.ranges.items()}

    def highest(self) -> dict[str, float]:
        """Every group at its highest keep-ratio (the dearest configuration)."""
        return {n: r.high for n, r in self.ranges.items()}


@dataclass(frozen=True)
class Limit:
    """``low <= value <= high`` on a ratio of the unpruned network's cost (``name`` says
    which). An upper bound has ``low = 0``."""

    name: str
    high: float
    low: float = 0.0

    def distance(self, value: float) -> float:
        """Signed distance to the allowed range: ``<= 0`` inside (the Optuna constraint value)."""
        return max(self.low - value, value - self.high)

    def contains(self, value: float) -> bool:
        return self.distance(value) <= 0.0

    def describe(self) -> str:
        if self.low > 0.0:
            return f"{self.name} ratio in [{self.low:g}, {self.high:g}]"
        return f"{self.name} ratio <= {self.high:g}"


def _check_keys(key: str, raw: Any, known: Sequence[str], forms: str) -> None:
    """``raw`` is a mapping with only ``known`` keys (one-line :class:`ConfigError`s)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be {forms}, got {raw!r}")
    for k in raw:
        if k not in known:
            raise ConfigError(f"unknown key '{k}' in {key}{did_you_mean(k, known)}; use {forms}")


def limit_from(key: str, raw: Any, *, extra: Sequence[str] = ()) -> Limit | None:
    """``{max: r}`` or ``{target: r, tolerance: t}`` (ratios) as a :class:`Limit` named after
    the last part of ``key``; None when ``raw`` is None. ``extra`` keys are allowed and ignored
    here (they belong to the caller)."""
    if raw is None:
        return None
    forms = "{max: r} or {target: r, tolerance: t}"
    _check_keys(key, raw, ("max", "target", "tolerance", *extra), forms)
    name = key.rsplit(".", 1)[-1]
    if "max" in raw:
        if "target" in raw or "tolerance" in raw:
            raise ConfigError(f"{key}: give either max or target and tolerance, not both")
        return Limit(name, _ratio(raw["max"], f"{key}.max"))
    if "target" not in raw:
        raise ConfigError(f"{key} must be {forms}")
    target = _ratio(raw["target"], f"{key}.target")
    tol = raw.get("tolerance", 0.02)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
            0.0 <= tol < 1.0) or math.isnan(tol):
        raise ConfigError(f"{key}.tolerance must be a number in [0, 1), got {tol!r}")
    return Limit(name, target + float(tol), max(0.0, target - float(tol)))


@dataclass(frozen=True)
class LatencySpec:
    """``pruning.latency``: a limit on the predicted latency (a ratio ``limit`` of the unpruned
    network's, or ``max_ms`` milliseconds, or neither: predict and measure only) and how
    latency is measured (``batch_size`` images per forward pass, ``threads`` CPU threads,
    ``dtype``; ``measure``: also time every evaluated trial's built network)."""

    limit: Limit | None = None
    max_ms: float | None = None
    batch_size: int = 64
    threads: int = 2
    dtype: str = "float32"
    measure: bool = True

    @property
    def capped(self) -> bool:
        """Whether candidates are gated on latency (a ratio limit or ``max_ms``)."""
        return self.limit is not None or self.max_ms is not None

    def limit_for(self, base_ms: float) -> Limit | None:
        """The limit as a ratio, given the unpruned network's predicted latency ``base_ms``."""
        if self.max_ms is not None:
            return Limit("latency", self.max_ms / base_ms)
        return self.limit

    def describe(self) -> str:
        if self.max_ms is not None:
            return f"latency <= {self.max_ms:g} ms"
        return self.limit.describe() if self.limit is not None else "latency (no limit)"


def _count(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"pruning.latency.{key} must be an integer >= 1, got {value!r}")
    return value


def latency_spec(raw: Any) -> LatencySpec | None:
    """``pruning.latency`` checked and parsed (None when unset): ``{max: r}``,
    ``{target: r, tolerance: t}`` (ratios of the unpruned network's latency), ``{max_ms: x}``
    or no limit at all, plus the optional measurement keys."""
    if raw is None:
        return None
    _check_keys("pruning.latency", raw, ("max", "target", "tolerance", *_LATENCY_KEYS),
                "{max: r}, {target: r, tolerance: t} or {max_ms: x}, with batch_size, threads, "
                "dtype, measure")
    ratio_form = any(k in raw for k in ("max", "target", "tolerance"))
    max_ms = raw.get("max_ms")
    if max_ms is not None:
        if ratio_form:
            raise ConfigError("pruning.latency: give either max_ms or a ratio (max, or target "
                              "and tolerance), not both")
        if isinstance(max_ms, bool) or not isinstance(max_ms, (int, float)) or not (
                0.0 < float(max_ms) < math.inf):
            raise ConfigError(f"pruning.latency.max_ms must be a positive number of "
                              f"milliseconds, got {max_ms!r}")
        max_ms = float(max_ms)
    limit = limit_from("pruning.latency", raw, extra=_LATENCY_KEYS) if ratio_form else None
    dtype = raw.get("dtype", "float32")
    if dtype not in LATENCY_DTYPES:
        raise ConfigError(f"pruning.latency.dtype must be one of {', '.join(LATENCY_DTYPES)}, "
                          f"got {dtype!r}{did_you_mean(str(dtype), LATENCY_DTYPES)}")
    measure = raw.get("measure", True)
    if not isinstance(measure, bool):
        raise ConfigError(f"pruning.latency.measure must be true or false, got {measure!r}")
    return LatencySpec(limit, max_ms, _count(raw, "batch_size", 64), _count(raw, "threads", 2),
                       dtype, measure)
