"""The exactness check: the analytic cost against networks actually built.

At random widths (every prunable group narrowed at once, a seeded draw), the network
:func:`~searchprune.prune.prune_model` builds must run, and its counted FLOPs, MACs and params
(:func:`~searchprune.space._cost.count_cost`) must equal the analytic ones exactly. When they do
not, each group is tried alone; a group that fails alone is kept whole, with the mismatch as its
reason. A mismatch no single group explains is a one-line ModelError.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

import torch
from torch import nn

from searchprune.errors import ModelError
from searchprune.space._cost import count_cost

__all__ = ["check_widths", "verify_space"]

_log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_widths(model: nn.Module, example: torch.Tensor, space, widths: Mapping[str, int],
                 seed: int = 0) -> str | None:
    """None if the network built at ``widths`` (random kept channels) runs and costs exactly
    what the analytic model says; otherwise what went wrong, in one line."""
    from searchprune.prune import prune_model

    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.channels, generator=gen) for g in space.prunable}
    try:
        keep = space.keep_indices(widths, scores)
        pruned = prune_model(model, space, keep)
        counted = count_cost(pruned.eval(), example)
    except Exception as exc:  # noqa: BLE001 -- any failure makes the group unsafe to search
        return f"the pruned network fails ({_first_line(exc)})"
    analytic = space.cost(widths)
    for key in ("flops", "macs", "params"):
        a, c = getattr(analytic, key), getattr(counted, key)
        if a != c:
            return f"analytic {key} {a:,} != {c:,} counted on the pruned network"
    return None


def _random_widths(space, rng: random.Random) -> dict[str, int]:
    return space.widths({g.name: rng.uniform(0.25, 0.9) for g in space.prunable})


def _narrow(space, group) -> dict[str, int]:
    widths = space.widths({group.name: 0.5})
    if widths[group.name] >= group.channels:  # a unit as large as the group: its smallest width
        widths[group.name] = space.widths({group.name: 0.0})[group.name]
    return widths


def verify_space(model: nn.Module, example: torch.Tensor, space, *, configs: int = 2,
                 seed: int = 0):
    """``space``, with every group whose cost is not exact kept whole (see the module doc)."""
    if not space.prunable:
        return space
    rng = random.Random(seed)
    failure = None
    for i in range(configs):
        failure = check_widths(model, example, space, _random_widths(space, rng), seed + i)
        if failure:
            break
    if failure is None:
        return space
    _log.info("exactness check: %s; checking each group alone", failure)
    reasons = {}
    for g in space.prunable:
        problem = check_widths(model, example, space, _narrow(space, g), seed)
        if problem:
            reasons[g.name] = f"cost check: {problem}"
    space = space.with_fixed(reasons)
    failure = None
    for i in range(configs):
        if not space.prunable:
            break
        failure = check_widths(model, example, space, _random_widths(space, rng), seed + i)
        if failure:
            break
    if failure:
        raise ModelError(f"the analytic cost of this model is not exact when several groups are "
                         f"pruned together ({failure}); keep groups whole with pruning.groups "
                         "(e.g. {'*': {fixed: 1.0}} for one pattern at a time)")
    return space
