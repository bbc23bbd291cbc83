"""Predicted CPU latency of a width configuration: a per-layer lookup table (LUT).

FLOPs count multiply-accumulates, not time: a thin layer at a large resolution, a memory-bound
BatchNorm or the fixed cost of launching each operator can make two configurations of equal
FLOPs differ in latency. Timing every candidate's network would cost a forward pass per
proposal (and be noisy); the table predicts it from the widths in microseconds, so it gates
candidates like the analytic FLOPs (docs/algorithms.md, section 6).

The table is built once per (model signature, machine, batch, threads, dtype):

- *units*: every conv (and 2-D linear) layer with the BatchNorm and parameter-free activation
  that run right after it on its output (found by one hooked forward pass), timed together as
  they run. Layers with the same kernel, stride, padding, groups, input size, channel counts
  and followers share one *shape*, so a deep network costs about as much as a shallow one
  (ResNet-56 has the shapes of ResNet-20).
- each shape is timed on a coarse grid of (input, output) channel counts (``grid`` points per
  prunable axis, from 1/8 of the channels to all of them): median of ``repeats`` runs after
  ``warmup`` runs on a random batch, with ``torch.set_num_threads(threads)`` (restored after).
  Each axis is made non-decreasing (running maximum) so a wider layer never predicts faster.
- a unit's input and output channel counts at any widths are the cost model's linear forms
  (:meth:`~searchprune.space.SearchSpace.channel_form`: a layer reading a concatenation of
  several groups, or part of one, has exactly the channels of the built network); its
  latency is the bilinear interpolation of its shape's grid at those counts (exact at
  grid points; MACs are bilinear in the channel counts, so the grid only has to catch what is
  not: vector-width steps, memory effects). Widths below the first grid point take its value.
- the rest of the network (residual adds, shortcuts, pooling, the stem's input, Python
  overhead) is a fitted term: ``ms = alpha * sum(units) + beta``, least squares on the
  relative error over a few built networks (the unpruned one, uniform ones and seeded random
  ones). Further seeded networks that were *not* used in the fit are timed too and their
  relative errors are stored with the table (``holdout``), so every table says how well it
  predicts.

Tables are plain JSON (never pickle). A study keeps them as study system attributes
(``latency_table:<key>``), so SQLite and PostgreSQL storages both work and every worker reuses
the one table: :func:`study_latency` builds it under the study lock, the other workers wait on
that lock and load it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from searchprune.constraints import LatencySpec
from searchprune.space import SearchSpace, is_depthwise
from searchprune.space._cost import _ACTIVATIONS, forward_hooks

if TYPE_CHECKING:
    import optuna

__all__ = ["TABLE_ATTR", "VERSION", "LatencyModel", "LatencyTable", "build_table",
           "cpu_threads", "latency_for_engine", "machine_id", "network_of", "stored_table",
           "study_latency", "table_key", "time_forward"]

VERSION = 2  # 2: a unit's axes are the cost model's linear channel forms
TABLE_ATTR = "latency_table:"  # + key: a study system attribute holding the table's JSON
GRID_POINTS = 6
FIT_NETS = 8
HOLDOUT_NETS = 3
_FIT_LOW = 0.25  # random fitting networks draw keep-ratios from [_FIT_LOW, 1]
_UNIT_RUNS = (2, 5)  # warm-up and timed runs per grid point
_NET_RUNS = (3, 10)  # ... per whole network
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# -- timing ------------------------------------------------------------------------------------
def time_forward(module: Callable[[torch.Tensor], Any], x: torch.Tensor, *, repeats: int = 10,
                 warmup: int = 3) -> float:
    """Median wall time in milliseconds of ``module(x)`` (inference mode) over ``repeats``
    timed runs after ``warmup`` untimed ones. The one timer of the package (tests replace it)."""
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the previous count restored after."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def machine_id() -> str:
    """What a table was measured on: CPU model, logical cores, torch version."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__}"


# -- units and shapes --------------------------------------------------------------------------
def _grid(full: int, points: int, unit: int = 1) -> list[int]:
    """Channel counts from 1/8 of ``full`` to ``full`` (``points`` of them, multiples of
    ``unit``, deduplicated)."""
    fractions = np.linspace(0.125, 1.0, max(2, points))
    return sorted({max(unit, int(round(f * full / unit)) * unit) for f in fractions})


def _plain_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A CPU copy of ``model`` in eval mode without forward hooks (a supernet's masks)."""
    net = copy.deepcopy(model).cpu().eval().to(dtype)
    for m in net.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return net


def _find_units(model: nn.Module, example: torch.Tensor, space: SearchSpace,
                grid: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Units (conv/linear + following BN + activation) and their distinct shapes, from one
    hooked forward pass; each unit records, for each axis that varies, the linear form of
    its channel count in the searched widths (:func:`_varying_axes`)."""
    names = {m: n for n, m in model.named_modules() if not list(m.children())}
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(out, torch.Tensor):
            calls.append((names[mod], mod, inputs[0], out))  # tensors kept: ids stay unique

    with forward_hooks(names, hook), torch.no_grad():
        model(example)
    units: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for i, (name, mod, x, out) in enumerate(calls):
        if isinstance(mod, nn.Conv2d):
            depthwise = is_depthwise(mod)
            spec: dict[str, Any] = {
                "kind": "conv", "kernel": list(mod.kernel_size), "stride": list(mod.stride),
                "padding": mod.padding if isinstance(mod.padding, str) else list(mod.padding),
                "dilation": list(mod.dilation), "padding_mode": mod.padding_mode,
                "groups": "depthwise" if depthwise else mod.groups, "bias": mod.bias is not None,
                "input": list(x.shape[2:]), "cin": mod.in_channels, "cout": mod.out_channels}
        elif isinstance(mod, nn.Linear) and x.dim() == 2:
            spec = {"kind": "linear", "bias": mod.bias is not None, "cin": mod.in_features,
                    "cout": mod.out_features}
        else:
            continue
        bn = act = None
        follow = calls[i + 1] if i + 1 < len(calls) else None
        if (spec["kind"] == "conv" and follow is not None
                and isinstance(follow[1], nn.BatchNorm2d) and follow[2] is out):
            bn, out = follow[0], follow[3]
        after = calls[i + (2 if bn else 1)] if i + (2 if bn else 1) < len(calls) else None
        if (after is not None and isinstance(after[1], _ACTIVATIONS) and after[2] is out
                and not list(after[1].parameters())):
            act = after[1]
        spec.update(bn=bn is not None, act=type(act).__name__ if act is not None else None)
        vary = _varying_axes(space, mod, name, spec)
        axes = [form for form, _, _ in vary]
        unit = spec["groups"] if isinstance(spec.get("groups"), int) else 1
        points = [_grid(full, grid, unit) for _, _, full in vary]
        spec["vary"] = [which for _, which, _ in vary]
        key = json.dumps([spec, points], sort_keys=True)
        if key not in index:
            index[key] = len(shapes)
            shapes.append({"spec": spec, "points": points, "ms": None,
                           "_act": copy.deepcopy(act) if act is not None else None})
        units.append({"module": name, "bn": bn, "shape": index[key], "axes": axes})
    return units, shapes


def _varying_axes(space: SearchSpace, mod: nn.Module, name: str, spec: Mapping[str, Any]
                  ) -> list[tuple[list[list[Any]], str, int]]:
    """``(form, side, full)`` of each side of a layer whose channel count depends on the
    searched widths: ``form`` is the cost model's linear form of that count (``[[None, const],
    [group, multiplier], ...]``), so a layer read from several groups (a concatenation) or a
    part of one has the channel counts the built network has. A depthwise conv has one side,
    ``both``."""
    sides = (("both", "out", "cout"),) if spec.get("groups") == "depthwise" else (
        ("in", "in", "cin"), ("out", "out", "cout"))
    vary = []
    for which, role, key in sides:
        form = space.channel_form(mod, name, role)
        if any(g is not None and c for g, c in form.items()):
            vary.append(([[g, c] for g, c in form.items()], which, int(spec[key])))
    return vary


Axis = tuple[float, tuple[tuple[str, float], ...]]  # a channel count: const + sum coef * w_g


def _axis(axis: str | Sequence[Sequence[Any]], full: Mapping[str, int]) -> Axis:
    """A stored axis, a group name (that group's width) or a linear form ``[[None, const],
    [group, coef], ...]``, as ``(const, ((group, coef), ...))``."""
    if isinstance(axis, str):
        return 0.0, ((axis, 1.0),)
    const = sum(float(c) for g, c in axis if g is None)
    return const, tuple((str(g), float(c)) for g, c in axis if g is not None and c)


def _axis_value(axis: Axis, widths: Mapping[str, int], full: Mapping[str, int]) -> float:
    """An axis's channel count at ``widths`` (groups not given keep all their channels)."""
    value, terms = axis
    for g, c in terms:
        value += c * widths.get(g, full[g])
    return value


def _unit_module(shape: dict[str, Any], cin: int, cout: int, dtype: torch.dtype) -> nn.Module:
    s = shape["spec"]
    if s["kind"] == "linear":
        layers: list[nn.Module] = [nn.Linear(cin, cout, bias=s["bias"])]
    else:
        groups = cin if s["groups"] == "depthwise" else s["groups"]
        layers = [nn.Conv2d(cin, cout, tuple(s["kernel"]), tuple(s["stride"]),
                            s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"]),
                            tuple(s["dilation"]), groups=groups, bias=s["bias"],
                            padding_mode=s["padding_mode"])]
        if s["bn"]:
            layers.append(nn.BatchNorm2d(cout))
    if shape.get("_act") is not None:
        layers.append(copy.deepcopy(shape["_act"]))
    return nn.Sequential(*layers).eval().to(dtype)


def _channels(shape: dict[str, Any], values: Sequence[int]) -> tuple[int, int]:
    """(cin, cout) of a shape at one grid point (``values``: one per varying axis)."""
    s = shape["spec"]
    cin, cout = s["cin"], s["cout"]
    for v, which in zip(values, s["vary"]):
        if which in ("in", "both"):
            cin = v
        if which in ("out", "both"):
            cout = v
    return cin, cout


def _measure_shape(shape: dict[str, Any], batch: int, dtype: torch.dtype) -> list[Any]:
    """The shape's grid timed point by point (nested lists, one level per varying axis)."""
    points = shape["points"]
    s = shape["spec"]

    def at(values: Sequence[int]) -> float:
        cin, cout = _channels(shape, values)
        module = _unit_module(shape, cin, cout, dtype)
        dims = (batch, cin, *s["input"]) if s["kind"] == "conv" else (batch, cin)
        x = torch.randn(*dims).to(dtype)
        return float(time_forward(module, x, warmup=_UNIT_RUNS[0], repeats=_UNIT_RUNS[1]))

    if not points:
        return at(())  # type: ignore[return-value]
    if len(points) == 1:
        return list(np.maximum.accumulate([at((a,)) for a in points[0]]))
    grid = np.array([[at((a, b)) for b in points[1]] for a in points[0]])
    grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=0), axis=1)
    return grid.tolist()


# -- the table ---------------------------------------------------------------------------------
def _locate(points: Sequence[int], x: float) -> tuple[int, float]:
    """Segment index and fraction of ``x`` on ``points`` (clamped to the ends)."""
    n = len(points)
    if n == 1 or x <= points[0]:
        return 0, 0.0
    if x >= points[-1]:
        return n - 2, 1.0
    i = bisect_right(points, x) - 1
    return i, (x - points[i]) / (points[i + 1] - points[i])


class LatencyTable:
    """A built table (plain JSON data): :meth:`predict_ms` is a pure function of the widths.

    ``data`` keys: ``version``, ``key``, ``settings``, ``machine``, ``shapes`` (``spec``,
    ``points`` per varying axis, ``ms`` nested by axis), ``units`` (``module``, ``bn``,
    ``shape``, ``axes``: per varying axis, its channel count as ``[[null, constant],
    [group, multiplier], ...]``, or a group name: that group's width), ``full`` (each group's
    channels), ``fit`` (``alpha``, ``beta`` and the fitting networks), ``holdout`` (networks
    not fitted on: measured and predicted ms), ``measured_base_ms``, ``build_seconds``,
    ``measurements``.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = dict(data)
        self.full: dict[str, int] = {k: int(v) for k, v in data["full"].items()}
        self.alpha = float(data["fit"]["alpha"])
        self.beta = float(data["fit"]["beta"])
        shapes = data["shapes"]
        self._units = [([_axis(a, self.full) for a in u["axes"]], shapes[u["shape"]]["points"],
                        shapes[u["shape"]]["ms"])
                       for u in data["units"]]
        self.base_ms = self.predict_ms({})

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.data))

    @property
    def key(self) -> str:
        return str(self.data["key"])

    @property
    def measured_base_ms(self) -> float:
        return float(self.data["measured_base_ms"])

    def layer_shapes(self, widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Each timed layer's (input, output) channels at ``widths``: those of the built
        network (the cost model's channel counts)."""
        out = {}
        for u in self.data["units"]:
            s = self.data["shapes"][u["shape"]]["spec"]
            cin, cout = s["cin"], s["cout"]
            for axis, which in zip(u["axes"], s["vary"], strict=True):
                value = int(round(_axis_value(_axis(axis, self.full), widths, self.full)))
                cin = value if which in ("in", "both") else cin
                cout = value if which in ("out", "both") else cout
            out[u["module"]] = (cin, cout)
        return out

    def layer_ms(self, widths: Mapping[str, int]) -> float:
        """The interpolated units alone (no fitted remainder)."""
        total = 0.0
        for axes, points, ms in self._units:
            if not axes:
                total += ms
                continue
            i, t = _locate(points[0], _axis_value(axes[0], widths, self.full))
            if len(axes) == 1:
                total += ms[i] if t == 0.0 else (1 - t) * ms[i] + t * ms[i + 1]
                continue
            j, u = _locate(points[1], _axis_value(axes[1], widths, self.full))
            r0, r1 = ms[i], ms[i + 1] if len(points[0]) > 1 else ms[i]
            c1 = j + 1 if len(points[1]) > 1 else j
            total += ((1 - t) * ((1 - u) * r0[j] + u * r0[c1])
                      + t * ((1 - u) * r1[j] + u * r1[c1]))
        return total

    def predict_ms(self, widths: Mapping[str, int]) -> float:
        """Predicted milliseconds of one forward pass of the network with ``widths`` (groups
        not given keep all their channels)."""
        return max(1e-6, self.alpha * self.layer_ms(widths) + self.beta)

    def ratio(self, widths: Mapping[str, int]) -> float:
        """Predicted latency as a fraction of the unpruned network's."""
        return self.predict_ms(widths) / self.base_ms

    def holdout_errors(self) -> list[float]:
        """Relative errors ``predicted / measured - 1`` on the networks not fitted on."""
        return [float(h["predicted"] / h["measured"] - 1.0)
                for h in self.data.get("holdout", [])]


def table_key(model: nn.Module, space: SearchSpace, input_shape: Sequence[int],
              spec: LatencySpec) -> str:
    """``<model signature>-<machine>-b<batch>-t<threads>-<dtype>``: the signature hashes the
    module structure (not the weights), the input shape and the groups."""
    sig = json.dumps([repr(model), list(input_shape),
                      [(g.name, g.channels, g.prunable) for g in space.groups], VERSION])
    model_hash = hashlib.sha256(sig.encode()).hexdigest()[:12]
    host = hashlib.sha256(machine_id().encode()).hexdigest()[:8]
    return f"{model_hash}-{host}-b{spec.batch_size}-t{spec.threads}-{spec.dtype}"


def network_of(model: nn.Module, space: SearchSpace, widths: Mapping[str, int]) -> nn.Module:
    """The network of ``widths`` (the first channels of each group, or of each conv-group:
    weights do not matter)."""
    from searchprune.prune import prune_model

    return prune_model(model, space, space.first_indices(widths))


def _net_ms(model: nn.Module, space: SearchSpace, input_shape: Sequence[int],
            widths: Mapping[str, int], batch: int, dtype: torch.dtype) -> float:
    net = network_of(model, space, widths)
    x = torch.randn(batch, *input_shape).to(dtype)
    return float(time_forward(net, x, warmup=_NET_RUNS[0], repeats=_NET_RUNS[1]))


def _fit_configs(space: SearchSpace, n: int, seed: int) -> list[dict[str, int]]:
    """Uniform networks (all channels, ``_FIT_LOW``, half-way) then seeded random ones."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i < 3:
            ratios = {g.name: (1.0, _FIT_LOW, 0.5 + 0.5 * _FIT_LOW)[i] for g in space.prunable}
        else:
            ratios = {g.name: float(rng.uniform(_FIT_LOW, 1.0)) for g in space.prunable}
        out.append(space.widths(ratios))
    return out


def _fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``measured ~ alpha * units + beta`` by least squares on the relative error; an
    implausible or underdetermined fit falls back to ``alpha = 1`` and the median offset."""
    if len(points) >= 2:
        a = np.array([[s / t, 1.0 / t] for s, t in points])
        (alpha, beta), *_ = np.linalg.lstsq(a, np.ones(len(points)), rcond=None)
        if np.isfinite(alpha) and np.isfinite(beta) and 0.25 <= alpha <= 4.0:
            return float(alpha), float(beta)
    return 1.0, float(statistics.median(t - s for s, t in points))


def build_table(model: nn.Module, space: SearchSpace, input_shape: Sequence[int],
                spec: LatencySpec, *, grid: int = GRID_POINTS, fit_nets: int = FIT_NETS,
                holdout_nets: int = HOLDOUT_NETS, seed: int = 0,
                log: Callable[[str], None] | None = None) -> LatencyTable:
    """Measure the table of ``model`` (any device; timed on the CPU) for ``space``'s groups
    and one ``input_shape`` image (see the module docstring)."""
    start = time.perf_counter()
    dtype = _DTYPES[spec.dtype]
    net = _plain_copy(model, dtype)
    units, shapes = _find_units(net, torch.zeros(1, *input_shape).to(dtype), space, grid)
    n_points = sum(int(np.prod([len(p) for p in s["points"]])) for s in shapes)
    if log:
        log(f"latency table: timing {len(units)} layers as {len(shapes)} shapes "
            f"({n_points} grid points) and {fit_nets + holdout_nets} networks at batch "
            f"{spec.batch_size}, {spec.threads} threads, {spec.dtype}")
    with cpu_threads(spec.threads):
        for s in shapes:
            s["ms"] = _measure_shape(s, spec.batch_size, dtype)
        data: dict[str, Any] = {
            "version": VERSION, "key": table_key(model, space, input_shape, spec),
            "settings": {"batch_size": spec.batch_size, "threads": spec.threads,
                         "dtype": spec.dtype, "grid": grid},
            "machine": machine_id(), "input_shape": list(input_shape),
            "shapes": [{k: v for k, v in s.items() if not k.startswith("_")} for s in shapes],
            "units": units, "full": {g.name: g.channels for g in space.prunable},
            "fit": {"alpha": 1.0, "beta": 0.0},
        }
        raw = LatencyTable(data)
        configs = _fit_configs(space, fit_nets + holdout_nets, seed)
        timed = [(w, raw.layer_ms(w), _net_ms(net, space, input_shape, w, spec.batch_size,
                                               dtype)) for w in configs]
    fit, held = timed[:fit_nets], timed[fit_nets:]
    alpha, beta = _fit([(s, t) for _, s, t in fit])
    data["fit"] = {"alpha": alpha, "beta": beta,
                   "nets": [{"widths": w, "units_ms": s, "measured": t} for w, s, t in fit]}
    data["measured_base_ms"] = fit[0][2]  # the first fitting network is the unpruned one
    data["holdout"] = [{"widths": w, "measured": t, "predicted": max(1e-6, alpha * s + beta)}
                       for w, s, t in held]
    data["measurements"] = n_points + len(configs)
    data["build_seconds"] = time.perf_counter() - start
    table = LatencyTable(data)
    if log:
        errors = [abs(e) for e in table.holdout_errors()]
        worst = f"; held-out networks: largest error {100 * max(errors):.1f}%" if errors else ""
        log(f"latency table: built in {data['build_seconds']:.1f} s; unpruned "
            f"{table.base_ms:.2f} ms predicted, {table.measured_base_ms:.2f} ms measured{worst}")
    return table


# -- a study's latency -------------------------------------------------------------------------
class LatencyModel:
    """A table with what measuring a candidate needs: :meth:`ratio` and :meth:`predict_ms`
    (pure functions of the widths: gates), :meth:`measure_ms` (build and time the network)."""

    def __init__(self, table: LatencyTable, model: nn.Module, space: SearchSpace,
                 input_shape: Sequence[int], spec: LatencySpec) -> None:
        self.table = table
        self.spec = spec
        self.space = space
        self.input_shape = tuple(input_shape)
        self._model = model
        self._plain: nn.Module | None = None
        self.base_ms = table.base_ms

    def predict_ms(self, widths: Mapping[str, int]) -> float:
        return self.table.predict_ms(widths)

    def ratio(self, widths: Mapping[str, int]) -> float:
        return self.table.ratio(widths)

    def measure_ms(self, widths: Mapping[str, int]) -> float:
        """Median ms of the built network of ``widths`` at the table's batch, threads and
        dtype (after warm-up)."""
        dtype = _DTYPES[self.spec.dtype]
        if self._plain is None:
            self._plain = _plain_copy(self._model, dtype)
        with cpu_threads(self.spec.threads):
            return _net_ms(self._plain, self.space, self.input_shape, widths,
                           self.spec.batch_size, dtype)

    def summary(self) -> dict[str, Any]:
        """What a study records about its table (user attr ``latency``)."""
        errors = self.table.holdout_errors()
        return {"key": self.table.key, "base_ms_predicted": self.base_ms,
                "base_ms_measured": self.table.measured_base_ms,
                "batch_size": self.spec.batch_size, "threads": self.spec.threads,
                "dtype": self.spec.dtype, "machine": self.table.data.get("machine"),
                "holdout_errors": errors,
                "build_seconds": self.table.data.get("build_seconds")}


def latency_for_engine(engine: Any, spec: LatencySpec, *,
                       table: LatencyTable | None = None,
                       log: Callable[[str], None] | None = None) -> LatencyModel:
    """The latency model of an engine's network (``engine.model``, ``engine.space``,
    ``engine.data.input_shape``), measuring a new table unless one is given."""
    shape = tuple(engine.data.input_shape)
    if table is None:
        table = build_table(engine.model, engine.space, shape, spec, log=log)
    return LatencyModel(table, engine.model, engine.space, shape, spec)


def stored_table(study: optuna.Study, engine: Any, spec: LatencySpec) -> LatencyTable | None:
    """The study's table for this engine and ``spec`` on this machine, or None (nothing is
    measured)."""
    key = table_key(engine.model, engine.space, engine.data.input_shape, spec)
    stored = study._storage.get_study_system_attrs(study._study_id).get(TABLE_ATTR + key)
    if isinstance(stored, Mapping) and stored.get("version") == VERSION:
        return LatencyTable(stored)
    return None


def study_latency(study: optuna.Study, lock: Callable[[], Any], engine: Any,
                  spec: LatencySpec, *, progress: bool = False) -> LatencyModel:
    """The study's table for this engine and ``spec``: loaded from the study, or measured and
    stored by the first worker to take the study ``lock`` while the others wait on it."""
    log = (lambda line: sys.stderr.write(line + "\n")) if progress else None
    with lock():
        table = stored_table(study, engine, spec)
        if table is not None:
            return latency_for_engine(engine, spec, table=table)
        model = latency_for_engine(engine, spec, log=log)
        study._storage.set_study_system_attr(study._study_id, TABLE_ATTR + model.table.key,
                                             model.table.to_json())
        return model
