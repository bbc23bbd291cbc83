"""Knowledge distillation while fine-tuning: the unpruned network teaches the pruned one.

Logits distillation (Hinton et al.): with student logits ``s``, teacher logits ``t``, labels
``y`` and temperature ``T``::

    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

the KL divergence summed over classes and averaged over the batch ("batchmean"); ``T^2`` keeps
the soft term's gradients on the scale of the label term's as ``T`` grows. ``alpha = 0`` is the
plain label loss.

:class:`Distiller` is a :data:`~searchprune.train.LossFn` for :func:`~searchprune.train.fit`:
once per step it runs the teacher (a frozen copy, in eval mode, without gradients) on the very
batch the student sees, augmentation included. Under ``torchrun`` each rank's teacher sees its
rank's shard; both terms are batch means, so the ranks' averaged gradients are those of one
process on the global batch.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from searchprune.config import DistillConfig, validate_distill

__all__ = ["Distiller", "distill_config", "distillation_loss", "frozen_teacher"]


def distill_config(alpha: float, temperature: float,
                   names: tuple[str, str] = ("finetune.distill.alpha",
                                             "finetune.distill.temperature"),
                   ) -> DistillConfig | None:
    """Checked settings (one-line :class:`~searchprune.errors.ConfigError` naming ``names``,
    the key or flag of each); None when ``alpha`` is 0: labels only, no teacher."""
    validate_distill(alpha, temperature, names)
    return DistillConfig(alpha=alpha, temperature=temperature) if alpha > 0.0 else None


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor | None,
                      target: torch.Tensor, alpha: float, temperature: float
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss above, and its terms (detached): ``{"ce": CE, "kd": T^2 * KL}``; with
    ``alpha`` 0 the label loss alone (``teacher`` may then be None)."""
    ce = F.cross_entropy(student, target)
    if alpha == 0.0:
        return ce, {"ce": ce.detach()}
    if teacher is None:
        raise ValueError(f"distillation with alpha {alpha} needs the teacher's logits")
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                  reduction="batchmean", log_target=True)
    kd = kl * (t * t)
    return (1.0 - alpha) * ce + alpha * kd, {"ce": ce.detach(), "kd": kd.detach()}


def frozen_teacher(engine: Any) -> nn.Module:
    """A copy of ``engine.model``, the unpruned network, for teaching: eval mode, no parameter
    requires a gradient. A copy, so the engine's own network (which pruned networks are copied
    from) is left as it is; a supernet's width hooks are not copied along."""
    supernet = getattr(engine, "supernet", None)
    source = supernet.detached() if supernet is not None else nullcontext(engine.model)
    with source as model:
        teacher = copy.deepcopy(model)
    return teacher.eval().requires_grad_(False)


class Distiller:
    """``loss_fn(net, x, y)`` of :func:`~searchprune.train.fit` with distillation from
    ``teacher`` (frozen here: eval mode, no gradients; moved to each batch's device).
    :meth:`parts` gives the last step's label and distillation terms (``fit``'s
    ``loss_parts``: shown on the progress bar and stored per epoch as ``loss_ce``,
    ``loss_kd``)."""

    def __init__(self, teacher: nn.Module, distill: DistillConfig) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = float(distill.alpha), float(distill.temperature)
        self._parts: dict[str, torch.Tensor] = {}

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        teacher = None
        if self.alpha > 0.0:  # alpha 0 is labels only: no teacher pass
            self._place(x.device)
            with torch.no_grad():
                teacher = self.teacher(x)
        loss, self._parts = distillation_loss(net(x), teacher, y, self.alpha, self.temperature)
        return loss

    def parts(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._parts.items()}

    def _place(self, device: torch.device) -> None:
        if self.teacher.training:  # kept in eval mode whatever a caller did
            self.teacher.eval()
        first = next(self.teacher.parameters(), None)
        if first is not None and first.device != device:
            self.teacher.to(device)
