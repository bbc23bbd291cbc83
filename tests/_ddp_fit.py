"""Run under ``torchrun --nproc_per_node K``: train the tiny net of ``test_ddp.py`` with
:func:`searchprune.train.fit` (per-rank batch size from argv; a third argument ``distill``:
with the distillation loss of ``test_distill.py``) and let rank 0 save the weights, the epoch
records and the checkpoint; every rank writes which images it trained on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from test_ddp import EPOCHS, tiny_data, tiny_net

from searchprune.train import fit, init_distributed, is_main_process


class Recorded(torch.utils.data.Dataset):
    """The tiny data set, remembering which indices this process loaded."""

    def __init__(self) -> None:
        self.data, self.seen = tiny_data(), []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        self.seen.append(int(i))
        return self.data[i]


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    rank, world = init_distributed("cpu")
    torch.set_num_threads(1)
    data, model = Recorded(), tiny_net()
    loss = None
    if sys.argv[3:] == ["distill"]:
        from test_distill import ddp_distiller

        loss = ddp_distiller()
    records = fit(model, data, epochs=EPOCHS, lr=0.1, momentum=0.9, weight_decay=1e-4,
                  batch_size=batch, seed=3, checkpoint_path=out / "ckpt.pt", loss_fn=loss)
    (out / f"seen-{rank}.json").write_text(json.dumps(data.seen))
    if is_main_process():
        torch.save(model.state_dict(), out / "weights.pt")
        (out / "records.json").write_text(json.dumps({"world": world, "records": records}))


if __name__ == "__main__":
    main()
