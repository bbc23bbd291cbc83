"""After a search: fine-tune a study's best trials and export one, recording results in the study.

The candidates are :func:`~searchprune.search.confirm.ranked_trials`: the top trials by
validation top-1 of a single-objective study (the confirmed ones first, best on the
confirmation images first, when the study was confirmed: ``search.confirm``), the Pareto front
of a multi-objective one; either may be restricted to a FLOPs-ratio range
(``flops_min``/``flops_max``).

Optuna does not let a finished trial change, so results go into the study's user attribute
``finetune`` (keyed by trial number) and the fine-tuned checkpoint becomes a study artifact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchprune.config import Config
from searchprune.constraints import LatencySpec
from searchprune.engine import engine_for
from searchprune.errors import SearchpruneError, UntrustedCheckpointError
from searchprune.finetune import (
    Candidate,
    FinetuneResult,
    FinetuneSettings,
    distill_record,
    finetune_candidates,
    finetune_each,
)
from searchprune.redact import redact_config
from searchprune.search.confirm import confirmations, ranked_trials
from searchprune.search.identity import study_uuid
from searchprune.search.problem import Goal, describe_goal
from searchprune.search.trials import top1
from searchprune.train import distributed_world, is_main_process
from searchprune.trust import LocalTrust, config_from_stored, stored_checkpoint_refusal

__all__ = ["ARTIFACTS_ENV", "FINETUNE_ATTR", "FINETUNE_EACH_ATTR", "default_artifact_dir",
           "export_trial", "finetune_study", "finetune_study_each", "load_study_config",
           "study_identity", "study_latency_table", "top_trials"]

FINETUNE_ATTR = "finetune"
FINETUNE_EACH_ATTR = "finetune_each"
ARTIFACTS_ENV = "SEARCHPRUNE_ARTIFACTS"
_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from searchprune.latency import LatencyTable


def load_study_config(study: optuna.Study, trust: LocalTrust | None = None) -> Config:
    """The study's stored config, rebuilt under ``trust`` (what this command's user allowed:
    see :mod:`searchprune.trust`); the storage is not trusted to import code or
    to unpickle files."""
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise SearchpruneError(f"study '{study.study_name}' has no stored config; it was not "
                               "created by 'searchprune study run'")
    return config_from_stored(stored, study.study_name, trust or LocalTrust())


# The stored config sections that decide the networks fine-tuning starts from and its images.
_DEFINING = ("model", "data", "pruning", "supernet", "setting")


def study_identity(study: optuna.Study) -> dict[str, Any]:
    """What tells this study apart from any other, whatever its storage: its name, its
    random uuid (:func:`~searchprune.search.identity.study_uuid`; a study deleted and created
    again under the same name gets another; a study created before uuids: the start of its
    first trial) and a digest of the stored settings that decide its networks and data."""
    import hashlib
    import json

    stored = study.user_attrs.get("config") or {}
    defining = {k: stored.get(k) for k in _DEFINING}
    if isinstance(defining["model"], dict):  # how a file was allowed to load is no part of it
        defining["model"] = {k: v for k, v in defining["model"].items()
                             if k != "trust_checkpoint"}
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode())
    uuid = study_uuid(study)
    if uuid is not None:
        return {"name": study.study_name, "uuid": uuid, "config": digest.hexdigest()[:16]}
    first = next((t.datetime_start for t in sorted(study.get_trials(deepcopy=False),
                                                   key=lambda t: t.number)
                  if t.datetime_start is not None), None)
    return {"name": study.study_name, "created": first.isoformat() if first else None,
            "config": digest.hexdigest()[:16]}


def _engine(cfg: Config, study: optuna.Study) -> Any:
    """The engine of a stored config; refusing to unpickle its ``model.checkpoint`` names the
    file and this command's flag (:func:`~searchprune.trust.stored_checkpoint_refusal`)."""
    with stored_checkpoint_refusal(cfg, study.study_name):
        return engine_for(cfg)


def top_trials(study: optuna.Study, k: int, *, flops_min: float | None = None,
               flops_max: float | None = None) -> list[FrozenTrial]:
    """The ``k`` best trials (front members of a Pareto study) within the FLOPs-ratio bounds;
    confirmed trials first, best on confirmation first (:func:`ranked_trials`)."""
    done = ranked_trials(study, flops_min=flops_min, flops_max=flops_max)
    if not done:
        bounds = ("" if flops_min is None and flops_max is None
                  else f" with a FLOPs ratio in [{flops_min or 0:g}, {flops_max or 1:g}]")
        hint = ("widen --flops-min/--flops-max" if bounds
                else "run 'searchprune study run' first")
        raise SearchpruneError(f"study '{study.study_name}' has no evaluated trials{bounds} "
                               f"yet; {hint}")
    return done[:k]


def default_artifact_dir(storage: str | None) -> Path:
    """Where fine-tuned checkpoints are stored as Optuna artifacts: ``$SEARCHPRUNE_ARTIFACTS``,
    else ``artifacts/`` next to a SQLite file, else ``<cache>/artifacts`` (workers on several
    machines should point ``SEARCHPRUNE_ARTIFACTS`` at a folder they all see)."""
    import os

    from searchprune.data import default_cache_dir
    from searchprune.search.storage import resolve_storage_url

    if os.environ.get(ARTIFACTS_ENV):
        return Path(os.environ[ARTIFACTS_ENV]).expanduser().resolve()
    url = resolve_storage_url(storage)
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///"):]).parent / "artifacts"
    return default_cache_dir().resolve() / "artifacts"



def finetune_study(study: optuna.Study, *, top: int, settings: FinetuneSettings,
                   out_dir: str | Path, artifact_dir: str | Path | None = None,
                   progress: bool = False, flops_min: float | None = None,
                   flops_max: float | None = None,
                   trust: LocalTrust | None = None) -> FinetuneResult:
    """Fine-tune the ``top`` best trials (of a Pareto study: front members, most accurate first)
    within the FLOPs-ratio bounds, then the best of them longer; store the results.

    Paths are recorded absolute, so ``export`` finds the weights from any folder. ``trust``:
    what the stored config may import or unpickle (:func:`load_study_config`)."""
    cfg = load_study_config(study, trust)
    out_dir = Path(out_dir).expanduser().resolve()
    trials = top_trials(study, top, flops_min=flops_min, flops_max=flops_max)
    engine = _engine(cfg, study)
    candidates = [Candidate(t.number, t.user_attrs["widths"]) for t in trials]
    result = finetune_candidates(engine, candidates, settings, out_dir, progress=progress,
                                 study=study_identity(study))
    record: dict[str, Any] = {
        "trials": {str(k): v for k, v in result.candidates.items()},
        "best_trial": result.best, "epochs": settings.epochs,
        "final_epochs": settings.final_epochs, "lr": settings.lr, "seed": settings.seed,
        "distill": distill_record(settings),
        "world_size": distributed_world()[1], "batch_size_per_rank": settings.batch_size,
        "val_top1": result.val_top1, "test_top1_before": result.test_top1_before,
        "test_top5_before": result.test_top5_before, "test_top1": result.test_top1,
        "test_top5": result.test_top5, "checkpoint": result.checkpoint,
        "confirm_top1": {str(t.number): _confirmed(study, t.number).get("confirm_top1_search")
                         for t in trials},
    }
    if not is_main_process():  # under torchrun rank 0 records the one result
        return result
    if artifact_dir is not None:
        artifact_dir = Path(artifact_dir).expanduser().resolve()
        record["artifact_id"] = _upload(study, result.checkpoint, artifact_dir)
        record["artifact_dir"] = str(artifact_dir)
    study.set_user_attr(FINETUNE_ATTR, record)
    return result


def finetune_study_each(study: optuna.Study, *, trials: list[int] | None = None, top: int = 5,
                        baselines: list[str] = (), settings: FinetuneSettings,
                        out_dir: str | Path, latency_batch: int | None = 64,
                        progress: bool = False, flops_min: float | None = None,
                        flops_max: float | None = None,
                        trust: LocalTrust | None = None) -> list[dict[str, Any]]:
    """Fine-tune the listed trials (default: the ``top`` best, of a Pareto study front members,
    within the FLOPs-ratio bounds) and the named baselines
    (:mod:`searchprune.baselines`, solved for the study's band) with one recipe; store and
    return one row per candidate. ``trust``: as for :func:`finetune_study`."""
    from searchprune.baselines import solve_baseline
    from searchprune.search.problem import resolve_problem

    cfg = load_study_config(study, trust)
    if trials:
        by_number = {t.number: t for t in study.get_trials(deepcopy=False,
                                                           states=(TrialState.COMPLETE,))}
        missing = [n for n in trials if n not in by_number or "widths" not in
                   by_number[n].user_attrs]
        if missing:
            raise SearchpruneError(f"trial {missing[0]} of study '{study.study_name}' is not an "
                                   "evaluated trial; see 'searchprune study show'")
        chosen = [by_number[n] for n in trials]
    else:
        chosen = top_trials(study, top, flops_min=flops_min, flops_max=flops_max) if top > 0 \
            else []
    engine = _engine(cfg, study)
    problem = resolve_problem(cfg, engine)
    candidates = [Candidate(t.number, t.user_attrs["widths"]) for t in chosen]
    for name in baselines:
        b = solve_baseline(name, engine, problem=problem)
        candidates.append(Candidate(name, b.widths, b.keep))
    spec, table = study_latency_table(study, problem.goal, engine)
    if spec is not None and latency_batch is not None:  # measured as the study measures
        latency_batch = spec.batch_size
    rows = finetune_each(engine, candidates, settings, out_dir, latency_batch=latency_batch,
                         latency_threads=spec.threads if spec is not None else None,
                         predict_latency=table.ratio if table is not None else None,
                         progress=progress, study=study_identity(study))
    confirmed = confirmations(study)
    for row in rows:  # a confirmed trial's confirmation top-1 beside its validation top-1
        if isinstance(row.get("key"), int) and row["key"] in confirmed:
            row["confirm_top1"] = confirmed[row["key"]].top1
    record = {"epochs": settings.epochs, "lr": settings.lr, "seed": settings.seed,
              "distill": distill_record(settings),
              "proxy": cfg.pruning.proxy, "world_size": distributed_world()[1], "rows": rows}
    if is_main_process():  # under torchrun rank 0 records the one result
        study.set_user_attr(FINETUNE_EACH_ATTR, record)
    return rows


def study_latency_table(study: optuna.Study, goal: Goal, engine: Any
                        ) -> tuple[LatencySpec | None, LatencyTable | None]:
    """The study's latency settings (the goal's: ``pruning.latency``, or the defaults of a
    latency Pareto study) and its latency table on this machine, each None when absent."""
    from searchprune.latency import stored_table

    spec = goal.latency
    return spec, stored_table(study, engine, spec) if spec is not None else None


def _upload(study: optuna.Study, path: str, artifact_dir: str | Path) -> str | None:
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    try:
        return upload_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)),
                               file_path=path, study_or_trial=study)
    except Exception as exc:  # an artifact is a convenience; the checkpoint file exists anyway
        _log.warning("could not store the checkpoint as an artifact: %s", exc)
        return None


def _confirmed(study: optuna.Study, number: int) -> dict[str, Any]:
    """A confirmed trial's confirmation top-1 and images (nothing when not confirmed)."""
    c = confirmations(study).get(number)
    return {} if c is None else {"confirm_top1_search": c.top1, "confirm_images": c.images}


def _finetuned_state(study: optuna.Study, ft: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned weights: the recorded checkpoint file, else its copy in the artifact
    store. Neither found is an error, never a silent export of the un-fine-tuned weights."""
    import tempfile

    path = Path(ft.get("checkpoint", ""))
    if path.is_absolute() and path.is_file():
        return _tuned_weights(study, path)
    store, artifact = ft.get("artifact_dir"), ft.get("artifact_id")
    if store and artifact and Path(store).is_dir():
        from optuna.artifacts import FileSystemArtifactStore, download_artifact

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "finetuned.pt"
            try:
                download_artifact(artifact_store=FileSystemArtifactStore(store),
                                  artifact_id=artifact, file_path=str(local))
            except Exception:  # noqa: BLE001  # missing or unreadable: reported below
                pass
            else:
                return _tuned_weights(study, local)
    raise SearchpruneError(
        f"the fine-tuned checkpoint of study '{study.study_name}' is gone: {path} does not exist"
        + (f" and artifact {artifact} is not in {store}" if artifact else "")
        + "; pass --not-finetuned to export the searched weights, or fine-tune again")


def _tuned_weights(study: optuna.Study, path: Path) -> dict[str, Any]:
    """The state_dict in a fine-tuned checkpoint, read weights-only: searchprune writes tensors
    only, so a file that needs more is refused whatever the command line says."""
    from searchprune.models import load_weights

    try:
        state = load_weights(path)
    except UntrustedCheckpointError:
        raise SearchpruneError(
            f"the fine-tuned checkpoint {path} of study '{study.study_name}' holds objects "
            "other than tensors (searchprune writes tensors only), and loading it would run "
            "code from the file; refused: fine-tune again, or pass --not-finetuned") from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise SearchpruneError(f"the fine-tuned checkpoint {path} of study "
                               f"'{study.study_name}' holds no state_dict; fine-tune again, "
                               "or pass --not-finetuned")
    return state["state_dict"]


def export_trial(study: optuna.Study, out_dir: str | Path, *, trial: int | None = None,
                 finetuned: bool = True, latency: bool = True, flops_min: float | None = None,
                 flops_max: float | None = None, force: bool = False,
                 format: str = "torch", trust: LocalTrust | None = None) -> dict[str, Any]:
    """Export trial ``trial`` (default: the fine-tuned best, else the best trial; of a Pareto
    study the most accurate front member; with FLOPs bounds, the best within them) into
    ``out_dir`` (a non-empty folder only with ``force``) in ``format`` (``torch``, ``onnx`` or
    ``all``; see :func:`searchprune.export.export_model`). ``trust``: as for
    :func:`finetune_study`."""
    import torch

    from searchprune.export import check_out_dir, export_model, file_sha256, measure_latency
    from searchprune.provenance import provenance

    check_out_dir(out_dir, force)  # before any work

    cfg = load_study_config(study, trust)
    ft = study.user_attrs.get(FINETUNE_ATTR) or {}
    bounded = flops_min is not None or flops_max is not None
    if trial is not None:
        number = trial
    elif ft.get("best_trial") is not None and not bounded:
        number = ft["best_trial"]
    else:
        number = top_trials(study, 1, flops_min=flops_min, flops_max=flops_max)[0].number
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or "widths" not in frozen.user_attrs or frozen.state != TrialState.COMPLETE:
        raise SearchpruneError(f"trial {number} of study '{study.study_name}' is not an "
                               "evaluated trial; see 'searchprune study show'")
    engine = _engine(cfg, study)
    widths = frozen.user_attrs["widths"]
    model = engine.build(widths)
    tuned = finetuned and ft.get("best_trial") == number
    if tuned:
        model.load_state_dict(_finetuned_state(study, ft))
    data = engine.data
    shape = (1, *data.input_shape)
    cost = engine.cost(widths)
    base = engine.base_cost
    card = {
        "study": study.study_name, "trial": number, "model": cfg.model.name,
        "dataset": cfg.data.name, "num_classes": data.num_classes,
        "mean": list(data.mean), "std": list(data.std),
        "flops": cost.flops, "macs": cost.macs, "params": cost.params,
        "flops_ratio": cost.flops / base.flops, "params_ratio": cost.params / base.params,
        "base": {"flops": base.flops, "macs": base.macs, "params": base.params},
        "accuracy": {"val_top1_search": top1(frozen), **_confirmed(study, number),
                     "finetuned": tuned},
        "config": redact_config(study.user_attrs.get("config") or {}),
        "provenance": provenance(cfg, data, **({"finetune_seed": ft.get("seed", 0)}
                                                if tuned else {})),
        "study_provenance": study.user_attrs.get("provenance"),
        "source_checkpoint": cfg.model.checkpoint,
        "source_checkpoint_sha256": (file_sha256(cfg.model.checkpoint)
                                     if cfg.model.checkpoint and Path(cfg.model.checkpoint).is_file()
                                     else None),
    }
    if tuned:
        card["accuracy"].update({k: ft[k] for k in ("val_top1", "test_top1", "test_top5",
                                                    "test_top1_before") if k in ft})
        card["accuracy"]["epochs"] = ft.get("epochs", 0) + ft.get("final_epochs", 0)
        card["accuracy"]["distill"] = ft.get("distill")  # None: fine-tuned on labels only
    spec, table = study_latency_table(study, describe_goal(cfg), engine)
    ratios: dict[str, float] = {"flops": cost.flops / base.flops,
                                "params": cost.params / base.params}
    if table is not None:
        ratios["latency_predicted"] = table.ratio(widths)
        card["latency_table"] = {"key": table.key, "base_ms_predicted": table.base_ms,
                                 "holdout_errors": table.holdout_errors()}
    if latency:
        threads = spec.threads if spec is not None else torch.get_num_threads()
        card["latency_ms"] = {}
        for b in sorted({1, 64, *([spec.batch_size] if spec is not None else [])}):
            entry = card["latency_ms"][f"batch{b}"] = {
                "pruned": measure_latency(model, shape, b, threads=threads),
                "original": measure_latency(engine.model.cpu().eval(), shape, b,
                                            threads=threads),
            }
            ratios[f"latency_measured_batch{b}"] = entry["pruned"] / entry["original"]
        card["latency_method"] = (f"median of 20 timed forward passes after 3 warm-up passes, "
                                  f"random input, torch.inference_mode, CPU, "
                                  f"{threads} threads, eager PyTorch modules")
    card["ratios"] = ratios
    return export_model(model, out_dir, input_shape=shape, widths=widths, card=card, force=force,
                        format=format)
