"""The one training loop: SGD with momentum and a per-step cosine schedule.

Used for the digits baseline, for fine-tuning pruned networks and (through ``loss_fn``) for
the supernet. Resumable from a checkpoint file written after every epoch.

Under ``torchrun --nproc_per_node K`` (after :func:`init_distributed`) the loop is data
parallel: the model is wrapped in DistributedDataParallel, each rank draws its shard of the
epoch's permutation (DistributedSampler) and gradients are averaged across ranks, so K ranks
with batch size B take the steps one process takes with batch size K*B (for networks without
BatchNorm exactly; BatchNorm normalises each rank's batch on its own, as usual with DDP).
Only rank 0 writes checkpoints and shows progress.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from searchprune.errors import SearchpruneError
from searchprune.evaluate import evaluate
from searchprune.models._checkpoint import load_weights

if TYPE_CHECKING:
    from searchprune.data import Split

__all__ = ["LossFn", "accuracy", "distributed_world", "fit", "init_distributed",
           "is_main_process"]

_log = logging.getLogger(__name__)

# loss_fn(model, x, y) -> scalar loss; the default is cross-entropy of model(x).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(
    model: nn.Module, split: Split, batch_size: int = 512, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """(top-1, top-5) in percent of ``model`` on an in-memory split."""
    return evaluate(model, split.images, split.y, batch_size=batch_size, device=device)


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless a process group is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and whenever training is not distributed): the one that writes."""
    return distributed_world()[0] == 0


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): NCCL when CUDA is used, gloo on CPU;
    on CUDA each rank takes GPU ``LOCAL_RANK``. Without torchrun nothing happens. Returns
    (rank, world size)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return distributed_world()
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(dist.destroy_process_group)
    return distributed_world()


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _save_atomic(obj: Any, path: Path) -> None:
    from searchprune.data._cache import atomic_save

    atomic_save(obj, path)


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


@dataclass(frozen=True)
class TrainConfig:
    """The training hyper-parameters of :func:`fit` (SGD with momentum, cosine learning-rate
    schedule) for fine-tuning searched networks and for the supernet's top-k fine-tuning
    and retraining."""

    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    seed: int = 0

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`fit` this config sets."""
        return {"epochs": self.epochs, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "seed": self.seed}


def fit(
    model: nn.Module,
    train_set: Dataset,
    *,
    epochs: int,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    val: Split | None = None,
    progress: bool = False,
    checkpoint_path: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], bool | None] | None = None,
    loss_fn: LossFn | None = None,
    num_workers: int = 0,
    loss_parts: Callable[[], Mapping[str, float]] | None = None,
    checkpoint_meta: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``epochs`` epochs and return one record per epoch.

    Records hold ``epoch`` (1-based), ``loss`` (mean over the epoch), ``val_top1`` (None
    without ``val``), ``lr`` and ``seconds``. Shuffling and augmentation are seeded per
    (seed, epoch), so a run resumed from ``checkpoint_path`` follows the uninterrupted one;
    the global RNG state is left untouched. ``on_epoch(record)`` returning True stops early.
    ``loss_parts()``, called after every step, gives named parts of that step's loss (the
    supernet's full and sampled networks); their epoch means are shown on the progress bar and
    stored in the record as ``loss_<name>``. The model is left in eval mode on ``device``.
    ``checkpoint_meta`` (plain JSON values: what defines the run) is stored in the checkpoint,
    and a checkpoint holding other meta is not resumed: training starts fresh (a log line says
    so) and replaces it.

    Raises:
        SearchpruneError: the loss became NaN or infinite (lower ``lr``).
    """
    model.to(device)
    rank, world = distributed_world()
    net = _data_parallel(model, device) if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = math.ceil(len(train_set) / world)  # type: ignore[arg-type]  # images per rank
    # A last batch of one image breaks BatchNorm on 1x1 feature maps: drop it.
    steps = max(1, n // batch_size if n % batch_size == 1 else math.ceil(n / batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps))
    loss_fn = loss_fn or _cross_entropy
    records: list[dict[str, Any]] = []
    start = 0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    meta = _meta_text(checkpoint_meta)
    state = load_weights(ckpt) if ckpt is not None and ckpt.is_file() else None
    stored = state.get("meta") if isinstance(state, dict) else None
    if state is not None and meta is not None and stored != meta:
        _log.info("not resuming from %s: it was written for another run (%s); starting fresh",
                  ckpt, _meta_change(stored, checkpoint_meta))
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, records = int(state["epoch"]), list(state.get("records", []))
        _log.info("resuming training from %s at epoch %d/%d", ckpt, start, epochs)

    with _progress(progress and rank == 0, (epochs - start) * steps) as bar:
        task = bar.add_task("training", total=(epochs - start) * steps) if bar else None
        for epoch in range(start, epochs):
            began = time.perf_counter()
            epoch_seed = seed * 1_000_003 + epoch
            loader = _loader(train_set, batch_size, epoch_seed, n % batch_size == 1, num_workers,
                             rank, world)
            model.train()
            total, count = 0.0, 0
            parts: dict[str, float] = {}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(epoch_seed + 1_000_000_007 * rank)  # augmentation per rank
                for x, y in loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    loss = loss_fn(net, x, y)
                    if not torch.isfinite(loss):
                        raise SearchpruneError(
                            f"training loss became {loss.item()} in epoch {epoch + 1}; lower the "
                            f"learning rate (now {lr})"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += loss.item() * len(y)
                    count += len(y)
                    for key, value in (loss_parts() if loss_parts else {}).items():
                        parts[key] = parts.get(key, 0.0) + float(value) * len(y)
                    if bar:
                        shown = "".join(f" {k} {v / count:.3f}" for k, v in parts.items())
                        bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs} "
                                   f"loss {total / count:.3f}{shown}")  # fmt: skip
            model.eval()
            if world > 1:  # the epoch's loss over all ranks' images
                total, count = _sum_over_ranks(total, count, device)
            val_top1 = accuracy(model, val, device=device)[0] if val is not None else None
            record = {
                "epoch": epoch + 1,
                "loss": total / max(count, 1),
                "val_top1": val_top1,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - began,
                **{f"loss_{k}": v / max(count, 1) for k, v in parts.items()},
            }
            records.append(record)
            _log.info("epoch %d/%d loss %.4f val_top1 %s", epoch + 1, epochs, record["loss"],
                      "-" if val_top1 is None else f"{val_top1:.2f}")  # fmt: skip
            if ckpt is not None and rank == 0:
                _save_atomic(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1,
                        "records": records,
                        **({"meta": meta} if meta is not None else {}),
                    },
                    ckpt,
                )
            if on_epoch is not None and on_epoch(record):
                break
    model.eval()
    return records


def _meta_text(meta: Mapping[str, Any] | None) -> str | None:
    return None if meta is None else json.dumps(meta, sort_keys=True, default=str)


def _meta_change(stored: Any, meta: Mapping[str, Any] | None) -> str:
    """Which top-level entries of the run's meta differ from a checkpoint's stored meta."""
    try:
        old = json.loads(stored) if isinstance(stored, str) else {}
    except ValueError:
        old = {}
    new = json.loads(_meta_text(meta) or "{}")
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(changed) + (" differ" if len(changed) > 1 else " differs") if changed \
        else "no run description"


def _loader(train_set: Dataset, batch_size: int, epoch_seed: int, drop_last: bool,
            num_workers: int, rank: int, world: int) -> DataLoader:
    """The epoch's batches: a permutation seeded by ``epoch_seed``; with ``world`` > 1 rank
    ``rank`` takes positions ``rank, rank + world, ...`` of the same permutation, so step s of
    all ranks together covers the images of step s of one process with batch size
    ``world * batch_size``."""
    order = RandomSampler(train_set, generator=torch.Generator().manual_seed(epoch_seed))
    sampler = order if world == 1 else _Shard(order, rank, world)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers)


class _Shard(Sampler[int]):
    """Rank ``rank``'s share of another sampler's order (DistributedSampler's interleaving; the
    order is padded by repeating its start so every rank takes as many steps)."""

    def __init__(self, order: Sampler[int], rank: int, world: int) -> None:
        self.order, self.rank, self.world = order, rank, world

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.world)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        indices = list(self.order)
        indices += indices[: len(self) * self.world - len(indices)]
        return iter(indices[self.rank::self.world])


def _data_parallel(model: nn.Module, device: str | torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device)
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _sum_over_ranks(total: float, count: int, device: str | torch.device) -> tuple[float, int]:
    import torch.distributed as dist

    both = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(both)
    return float(both[0]), int(both[1])
