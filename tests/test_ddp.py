"""Data-parallel training under torchrun: two CPU processes (gloo) must take the same steps as
one process over the same global batches, so the weights agree; they would not if the ranks
trained on the same images, or did not average their gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
PER_RANK_BATCH = 8
N = 64  # 2 ranks x 8 images x 4 steps per epoch


def tiny_data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 1, 6, 6, generator=gen)
    top, bottom, whole = x[:, 0, :3].mean((1, 2)), x[:, 0, 3:].mean((1, 2)), x.mean((1, 2, 3))
    y = (top > bottom).long() + 2 * (whole > 0).long()  # four classes
    return TensorDataset(x, y)


def tiny_net() -> nn.Module:
    """No BatchNorm: DDP normalises each rank's batch on its own, so only without it are the
    two runs the same computation."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(24, 4))


def one_process(batch: int) -> tuple[nn.Module, list[dict]]:
    from searchprune.train import fit

    model = tiny_net()
    records = fit(model, tiny_data(), epochs=EPOCHS, lr=0.1, momentum=0.9, weight_decay=1e-4,
                  batch_size=batch, seed=3)
    return model, records


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "_ddp_fit.py"), str(out), str(PER_RANK_BATCH)],
        cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_ranks_take_the_steps_of_one_process_with_the_global_batch(ddp_run):
    ddp = torch.load(ddp_run / "weights.pt", weights_only=True)
    same, _ = one_process(2 * PER_RANK_BATCH)
    for name, value in same.state_dict().items():
        torch.testing.assert_close(ddp[name], value, atol=1e-5, rtol=1e-4)
    # the comparison can tell: one process on a rank's batch size ends elsewhere
    alone, _ = one_process(PER_RANK_BATCH)
    assert max((ddp[k] - v).abs().max().item() for k, v in alone.state_dict().items()) > 1e-3


def test_each_rank_trains_on_its_own_half(ddp_run):
    seen = [json.loads((ddp_run / f"seen-{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == EPOCHS * N // 2
    for epoch in range(EPOCHS):
        half = N // 2
        a, b = (set(s[epoch * half:(epoch + 1) * half]) for s in seen)
        assert not a & b and a | b == set(range(N))  # disjoint shards covering every image


def test_rank_zero_writes_once_and_reports_the_loss_over_all_ranks(ddp_run):
    run = json.loads((ddp_run / "records.json").read_text())
    assert run["world"] == 2 and [r["epoch"] for r in run["records"]] == [1, 2]
    _, records = one_process(2 * PER_RANK_BATCH)
    for got, expected in zip(run["records"], records, strict=True):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    ckpt = torch.load(ddp_run / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == EPOCHS
    assert sorted(p.name for p in ddp_run.glob("*.pt")) == ["ckpt.pt", "weights.pt"]
