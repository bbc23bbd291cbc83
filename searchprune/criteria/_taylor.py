"""TE: first-order Taylor importance of a per-channel gate (Molchanov et al. CVPR 2019).

A gate ``z = 1`` multiplies each group channel where it leaves its producers (every BN output of
the group, and the option-A shortcut's output; see :func:`gate_points`). One gate is shared by
all those places, so for minibatch m

    I_j^(m) = ( sum over gate points, n, h, w of dL/dy * y )^2 = ( dL/dz_j )^2

(for a BN output this equals ``(gamma dL/dgamma + beta dL/dbeta)^2`` summed over the group's
BN members before squaring), and I_j is the mean over M minibatches (square, then average).
L is the mean cross-entropy on training images with their labels.

The model runs in eval mode (frozen BN statistics) and gradients are taken only with respect to
the gates via :func:`torch.autograd.grad`, so parameters, their ``.grad`` and the BN running
statistics are never touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from searchprune.criteria._base import Criterion, register
from searchprune.criteria._common import gate_points, model_device, module_width, scale_channels

__all__ = ["Taylor"]


@register("te")
class Taylor(Criterion):
    """Args:
    batches: minibatches M (fewer when the training set is smaller).
    batch_size: images per minibatch.
    augment: use train-time augmentation (crop + flip) for the images.
    seed: seed of the shuffled loader (the same images every time) and, with the study's data
        seed, of the augmentation: the scores are a function of the cache key, and the global
        RNG is left untouched.
    """

    needs_data = True

    def __init__(self, batches: int = 30, batch_size: int = 64, augment: bool = False,
                 seed: int = 0) -> None:
        self.batches = int(batches)
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        self.seed = int(seed)

    def scores(self, model, space, data, *, device):
        dev = model_device(model, device)
        gates: dict[str, torch.Tensor] = {}
        owners: list[tuple[str, object]] = []  # (group name, gate point)
        for g in space.prunable:
            for p in gate_points(model, g):
                if p.module not in gates:
                    width = module_width(model.get_submodule(p.module))
                    gates[p.module] = torch.ones(width, device=dev, requires_grad=True)
                owners.append((g.name, p))
        handles = [
            model.get_submodule(name).register_forward_hook(
                lambda mod, args, out, gate=gate: scale_channels(out, gate))
            for name, gate in gates.items()
        ]
        totals = {g.name: torch.zeros(g.channels, dtype=torch.float64) for g in space.prunable}
        loader = DataLoader(data.train_set(augment=self.augment), batch_size=self.batch_size,
                            shuffle=True, generator=torch.Generator().manual_seed(self.seed))
        try:
            with torch.random.fork_rng(devices=[]):  # crops and flips use the global RNG
                torch.manual_seed(self.seed * 1_000_003 + int(getattr(data, "seed", 0) or 0))
                seen = self._accumulate(model, loader, gates, owners, totals, space, dev)
        finally:
            for h in handles:
                h.remove()
        if seen == 0:
            raise ValueError("TE needs at least one training minibatch")
        return {k: v / seen for k, v in totals.items()}

    def _accumulate(self, model, loader, gates, owners, totals, space, dev) -> int:
        """Add each minibatch's squared gate gradients to ``totals``; returns the batches."""
        seen = 0
        for x, y in loader:
            if seen >= self.batches:
                break
            with torch.enable_grad():
                loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
                names = list(gates)
                grads = dict(zip(names, torch.autograd.grad(loss, [gates[n] for n in names])))
            per_group = {g.name: torch.zeros(g.channels, dtype=torch.float64)
                         for g in space.prunable}
            for gname, p in owners:
                per_group[gname].index_add_(0, p.roots, grads[p.module].double().cpu()[p.idxs])
            for gname, v in per_group.items():
                totals[gname] += v.square()
            seen += 1
        return seen
