"""Distillation while fine-tuning (issue 24, part 3): the unpruned network teaches the pruned one.

The loss is checked against sums written out by hand, the teacher is shown to stay untouched
(no gradients, same weights, eval mode, one pass per step on the student's own batch), alpha 0
is the label loss, two torchrun ranks take the steps of one process, and the setting travels
from the config and the flags into the recipe's checkpoint key, the study record and the
export card.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from searchprune.config import DistillConfig, config_from_dict
from searchprune.distill import Distiller, distillation_loss, frozen_teacher
from searchprune.errors import ConfigError
from searchprune.finetune import Candidate, FinetuneSettings, run_meta
from searchprune.train import fit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


# -- the loss, by hand -----------------------------------------------------------------------
def _linear(weights: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weights[0]), len(weights)).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights, dtype=torch.float64))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return layer


STUDENT_W, STUDENT_B = [[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8]], [0.1, -0.2, 0.0]
TEACHER_W, TEACHER_B = [[2.0, 0.5], [-1.0, 1.0], [0.3, -2.0]], [0.0, 0.4, -0.1]
X, Y = [[1.0, 2.0], [-0.5, 1.5], [2.0, -1.0]], [0, 2, 1]


def _logits(w, b, x) -> list[float]:
    return [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)]


def _softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _by_hand(alpha: float, t: float) -> float:
    """(1 - alpha) * mean_b(-log p_b[y_b]) + alpha * t^2 * mean_b(sum_k q_bk log(q_bk / r_bk)),
    p = softmax(student), q = softmax(teacher / t), r = softmax(student / t)."""
    ce = kl = 0.0
    for x, y in zip(X, Y):
        s, te = _logits(STUDENT_W, STUDENT_B, x), _logits(TEACHER_W, TEACHER_B, x)
        ce -= math.log(_softmax(s, 1.0)[y])
        q, r = _softmax(te, t), _softmax(s, t)
        kl += sum(qk * math.log(qk / rk) for qk, rk in zip(q, r))
    return (1 - alpha) * ce / len(X) + alpha * t * t * kl / len(X)


@pytest.mark.parametrize(("alpha", "t"), [(0.7, 4.0), (0.3, 1.0), (1.0, 2.5)])
def test_the_loss_on_a_tiny_net_equals_the_hand_computed_value(alpha, t):
    student = _linear(STUDENT_W, STUDENT_B)
    teacher = _linear(TEACHER_W, TEACHER_B)
    x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y)
    loss = Distiller(teacher, DistillConfig(alpha=alpha, temperature=t))(student, x, y)
    assert loss.item() == pytest.approx(_by_hand(alpha, t), rel=1e-12)
    # the teacher term is there: without it the value is another one
    assert abs(_by_hand(alpha, t) - (1 - alpha) * _by_hand(0.0, t)) > 1e-3


def test_alpha_zero_is_the_plain_label_loss():
    torch.manual_seed(0)
    s, te, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    loss, parts = distillation_loss(s, te, y, 0.0, 4.0)
    assert torch.equal(loss, F.cross_entropy(s, y)) and set(parts) == {"ce"}
    assert _by_hand(0.0, 3.0) == pytest.approx(
        F.cross_entropy(_linear(STUDENT_W, STUDENT_B)(torch.tensor(X, dtype=torch.float64)),
                        torch.tensor(Y)).item(), rel=1e-12)


# -- the teacher, in training ----------------------------------------------------------------
class Augmented(torch.utils.data.Dataset):
    """Random noise on every image, drawn when it is loaded (like crop + flip): a teacher fed
    another draw of the batch would see other inputs than the student."""

    def __init__(self, n: int = 48) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = (self.x[:, 0] > self.x[:, 1]).long() + (self.x[:, 2] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.3 * torch.randn(4), self.y[i]


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def _inputs_of(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def test_the_teacher_gets_no_gradients_and_runs_once_per_step_on_the_students_batch():
    student, teacher = _mlp(0), _mlp(1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    taught, learned = _inputs_of(teacher), _inputs_of(student)
    loss = Distiller(teacher, DistillConfig(alpha=0.8, temperature=2.0))
    records = fit(student, Augmented(), epochs=2, lr=0.1, batch_size=16, seed=0, loss_fn=loss,
                  loss_parts=loss.parts)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training  # eval mode (its dropout off) while the student trained
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    # one teacher pass per step (2 epochs x 3 batches), on exactly the student's inputs
    assert len(taught) == len(learned) == 6
    assert all(torch.equal(a, b) for a, b in zip(taught, learned))
    # the epoch records carry both terms of the loss
    assert all(r["loss_kd"] > 0 and r["loss_ce"] > 0 for r in records)


def test_fitting_with_alpha_zero_is_fitting_on_labels_and_runs_no_teacher():
    plain, distilled, teacher = _mlp(0), _mlp(0), _mlp(1)
    taught = _inputs_of(teacher)
    fit(plain, Augmented(), epochs=1, lr=0.1, batch_size=16, seed=0)
    fit(distilled, Augmented(), epochs=1, lr=0.1, batch_size=16, seed=0,
        loss_fn=Distiller(teacher, DistillConfig(alpha=0.0, temperature=4.0)))
    assert all(torch.equal(v, distilled.state_dict()[k]) for k, v in plain.state_dict().items())
    assert taught == []
    # positive control: alpha > 0 ends elsewhere
    other = _mlp(0)
    fit(other, Augmented(), epochs=1, lr=0.1, batch_size=16, seed=0,
        loss_fn=Distiller(teacher, DistillConfig(alpha=0.5, temperature=4.0)))
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in plain.state_dict().items())


def test_the_teacher_is_a_frozen_copy_and_the_engines_network_is_left_alone():
    model = _mlp(0).train()
    teacher = frozen_teacher(SimpleNamespace(model=model))
    assert teacher is not model and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    for a, b in zip(teacher.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


# -- two torchrun ranks, one process ---------------------------------------------------------
def ddp_distiller() -> Distiller:
    """The distillation of the DDP comparison: a teacher of the test_ddp net's shape."""
    from test_ddp import tiny_net

    torch.manual_seed(1)
    teacher = tiny_net()
    with torch.no_grad():  # not the student's initialisation: another network
        for p in teacher.parameters():
            p.mul_(3.0).add_(0.1)
    return Distiller(teacher, DistillConfig(alpha=0.7, temperature=2.0))


def test_two_ranks_distilling_take_the_steps_of_one_process(tmp_path):
    from test_ddp import EPOCHS, PER_RANK_BATCH, tiny_data, tiny_net

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "_ddp_fit.py"), str(tmp_path), str(PER_RANK_BATCH), "distill"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "weights.pt", weights_only=True)
    kwargs = dict(epochs=EPOCHS, lr=0.1, momentum=0.9, weight_decay=1e-4,
                  batch_size=2 * PER_RANK_BATCH, seed=3)
    same = tiny_net()
    records = fit(same, tiny_data(), loss_fn=ddp_distiller(), **kwargs)
    for name, value in same.state_dict().items():
        torch.testing.assert_close(ddp[name], value, atol=1e-5, rtol=1e-4)
    run = json.loads((tmp_path / "records.json").read_text())
    for got, expected in zip(run["records"], records, strict=True):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    # the comparison can tell distillation from none: on labels alone it ends elsewhere
    plain = tiny_net()
    fit(plain, tiny_data(), **kwargs)
    assert max((ddp[k] - v).abs().max().item() for k, v in plain.state_dict().items()) > 1e-3


# -- the setting: config, flags, recipe key ---------------------------------------------------
@pytest.mark.parametrize(("distill", "fix"), [
    ({"alpha": 1.5}, "finetune.distill.alpha must be in [0, 1]"),
    ({"alpha": -0.1}, "finetune.distill.alpha must be in [0, 1]"),
    ({"temperature": 0}, "finetune.distill.temperature must be a finite number > 0"),
    ({"alpha": "high"}, "'finetune.distill.alpha' must be a finite number"),
])
def test_a_bad_distill_setting_is_one_line(distill, fix):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"finetune": {"distill": distill}})
    assert fix in str(err.value) and "\n" not in str(err.value)


def test_a_bad_distill_flag_is_one_line_before_any_study_is_opened(tmp_path, capsys):
    from searchprune.cli.main import main

    def error(*flags: str) -> str:
        code = main(["finetune", "--study-name", "none", "--storage",
                     str(tmp_path / "absent.db"), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert error("--distill-alpha", "2") == ("error: --distill-alpha must be in [0, 1] (the "
                                             "weight of the distillation loss; 0: labels only), "
                                             "got 2.0")
    assert error("--distill-alpha", "nan").startswith("error: --distill-alpha must be in [0, 1]")
    assert error("--distill-temperature", "-1").startswith(
        "error: --distill-temperature must be a finite number > 0")
    assert not (tmp_path / "absent.db").exists()


def test_distillation_is_part_of_the_recipe_key():
    base, cand = {"version": 1}, Candidate(0, {"g": 4})

    def recipe(distill):
        return run_meta(base, cand, FinetuneSettings(distill=distill), "each")["recipe"]

    plain = recipe(None)
    assert "distill" not in plain  # labels only: the key checkpoints had before distillation
    assert recipe(DistillConfig(alpha=0.0, temperature=9.0)) == plain  # alpha 0 is labels only
    on = recipe(DistillConfig(alpha=0.5, temperature=4.0))
    assert on["distill"] == {"alpha": 0.5, "temperature": 4.0}
    assert {k: v for k, v in on.items() if k != "distill"} == plain
    assert recipe(DistillConfig(alpha=0.5, temperature=2.0)) != on
    assert recipe(DistillConfig(alpha=0.9, temperature=4.0)) != on


# -- through the command line -----------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from searchprune.search import run_study

    tmp = tmp_path_factory.mktemp("distill")
    run_study(config_from_dict({
        "data": {"calib_size": 64, "val_size": 100, "train_size": 256},
        "pruning": {"gamma": 0.6, "tolerance": 0.05},
        "search": {"n_trials": 2, "study_name": "kd"},
        "finetune": {"distill": {"alpha": 0.5, "temperature": 3.0}},
        "storage": str(tmp / "s.db"),
    }), progress=False)
    return tmp


def _finetune(tmp: Path, out: Path, *extra: str) -> int:
    from searchprune.cli.main import main

    return main(["finetune", "--study-name", "kd", "--storage", str(tmp / "s.db"), "--top", "1",
                 "--epochs", "1", "--batch-size", "64", "--out", str(out), "--artifact-dir",
                 str(tmp / "artifacts"), "--json", *extra])


def _recipe(path: Path) -> dict:
    return json.loads(torch.load(path, weights_only=True)["meta"])["recipe"]


def test_finetune_distils_as_the_study_config_says_and_the_flags_override(study, capsys):
    from searchprune.search.finishing import export_trial

    out = study / "ft"
    assert _finetune(study, out, "--final-epochs", "1") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["distill"] == {"alpha": 0.5, "temperature": 3.0}  # the study's config
    (stage1,) = out.glob("trial-*-stage1-*.pt")
    assert _recipe(stage1)["distill"] == {"alpha": 0.5, "temperature": 3.0}
    (stage2,) = out.glob("trial-*-stage2-*.pt")
    meta = json.loads(torch.load(stage2, weights_only=True)["meta"])
    assert meta["after"]["recipe"]["distill"] == {"alpha": 0.5, "temperature": 3.0}
    assert record["test_top1"] > 50.0  # the digits net distilled at 60% FLOPs, far above 10%
    st = optuna.load_study(study_name="kd", storage=f"sqlite:///{study / 's.db'}")
    card = export_trial(st, study / "exported", latency=False)
    assert card["accuracy"]["distill"] == {"alpha": 0.5, "temperature": 3.0}
    saved = json.loads((study / "exported" / "card.json").read_text())
    assert saved["accuracy"]["distill"] == card["accuracy"]["distill"]
    # --distill-alpha 0: labels only, another run (another checkpoint), recorded as such
    assert _finetune(study, out, "--final-epochs", "0", "--distill-alpha", "0") == 0
    assert json.loads(capsys.readouterr().out)["distill"] is None
    plain = set(out.glob("trial-*-stage1-*.pt")) - {stage1}
    assert len(plain) == 1 and "distill" not in _recipe(plain.pop())


def test_finetune_each_distils_with_the_flags(study, capsys):
    out = study / "each"
    assert _finetune(study, out, "--each", "--baselines", "uniform", "--no-latency",
                     "--distill-alpha", "0.9", "--distill-temperature", "2") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["distill"] == {"alpha": 0.9, "temperature": 2.0}
    assert len(shown["rows"]) == 2
    for path in out.glob("*-each-*.pt"):
        assert _recipe(path)["distill"] == {"alpha": 0.9, "temperature": 2.0}
    assert len(list(out.glob("*-each-*.pt"))) == 2
    st = optuna.load_study(study_name="kd", storage=f"sqlite:///{study / 's.db'}")
    assert st.user_attrs["finetune_each"]["distill"] == {"alpha": 0.9, "temperature": 2.0}


def test_changing_the_distill_setting_does_not_make_a_study_another_search():
    """``study run`` again with another ``finetune.distill`` continues the study (the search is
    the same) and stores the new setting, which ``finetune`` then uses."""
    from searchprune.config import Config, config_to_dict
    from searchprune.search.runner import config_diff

    stored = config_to_dict(Config())
    stored.pop("finetune")  # a study stored before distillation existed
    new = config_to_dict(config_from_dict({"finetune": {"distill": {"alpha": 0.9}}}))
    assert config_diff(stored, new) == {}
    # positive control: a setting of the search itself is a difference
    assert "pruning.gamma" in config_diff(stored, config_to_dict(config_from_dict(
        {"pruning": {"gamma": 0.4}})))
