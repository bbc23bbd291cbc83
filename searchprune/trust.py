"""A study's stored config is not a trusted input: whoever can write to a shared storage can
edit it. Rebuilt from storage (``finetune``, ``export``), it may import a module or unpickle a
file only where the person running the command allowed exactly that on their own command line:

- ``model.trust_checkpoint`` is never stored (:func:`searchprune.redact.redact_config` drops
  it) and never read back. The file is the study's to name, the permission the user's: a
  stored ``model.checkpoint`` is fully unpickled only when the user names that same file
  (``--trust-checkpoint PATH``: same inode after resolving links), and then the file loaded
  is the one the user named, so swapping the stored path after the check changes nothing.
- A ``package.module:factory`` (``model.name``, ``search.sampler``, ``pruning.criterion``) is
  imported only when the same string is passed with ``--allow-factory``; otherwise the command
  stops in one line that names the key and the flag. Nothing is imported before that check
  (validating a config imports nothing either).

A config file of the user's own (``study run CONFIG.yaml``) is trusted as written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from searchprune.config import Config, config_from_dict, upgrade_stored
from searchprune.errors import CheckpointError, ConfigError, UntrustedCheckpointError

__all__ = ["FACTORY_KEYS", "LocalTrust", "config_from_stored", "same_file",
           "stored_checkpoint_refusal", "stored_factories"]

# Config keys whose value may name code to import: ``package.module:factory``.
FACTORY_KEYS = ("model.name", "search.sampler", "pruning.criterion")


@dataclass(frozen=True)
class LocalTrust:
    """What the person running a command allowed on their own command line (or in their own
    config file), for a config read back from a study's storage, which anyone who can write to
    the storage may have edited: ``factories``, the ``package.module:factory`` strings that
    may be imported (``--allow-factory``), and ``checkpoint``, the file the user allows to be
    fully unpickled (``--trust-checkpoint PATH``), honoured only when it is the stored
    ``model.checkpoint``. Nothing else in a stored config imports a module or unpickles a
    file."""

    factories: frozenset[str] = frozenset()
    checkpoint: str | None = None


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` are one existing file: the same device and inode once every
    link is resolved."""
    try:
        sa, sb = (os.stat(os.path.realpath(os.path.expanduser(p))) for p in (a, b))
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _allowed_checkpoint(stored: str | None, named: str | None, study_name: str) -> str | None:
    """The file to fully unpickle: the user's ``named`` file (resolved) when it is the stored
    ``model.checkpoint``; None when the user named none. Naming another file, or one where the
    study names none, is a one-line :class:`ConfigError`."""
    if named is None:
        return None
    flag = f"--trust-checkpoint {named}"
    if not os.path.isfile(os.path.expanduser(named)):
        raise ConfigError(f"{flag}: no such file")
    if not stored:
        raise ConfigError(f"{flag}: study '{study_name}' loads no model.checkpoint; drop the "
                          "flag")
    if not same_file(named, stored):
        raise ConfigError(f"{flag} is not the file study '{study_name}' loads: its "
                          f"model.checkpoint is {stored}; pass --trust-checkpoint {stored} if "
                          "you trust that file")
    return os.path.realpath(os.path.expanduser(named))


def stored_factories(data: Mapping[str, Any]) -> dict[str, str]:
    """The ``package.module:factory`` strings of a config dict, by dotted key: a value of a
    :data:`FACTORY_KEYS` key with a ``:`` that is not a registered name (registered names
    come from code already imported, not from the config) nor a ``timm:<name>`` model (a model
    timm registered, built by timm, nothing imported by name)."""
    from searchprune.criteria import available as criteria
    from searchprune.models import list_models
    from searchprune.search.samplers import available_samplers

    registered = {"model.name": list_models, "search.sampler": available_samplers,
                  "pruning.criterion": criteria}
    found: dict[str, str] = {}
    for key in FACTORY_KEYS:
        section, leaf = key.split(".")
        node = data.get(section)
        value = node.get(leaf) if isinstance(node, Mapping) else None
        if key == "model.name" and isinstance(value, str) and value.startswith("timm:"):
            continue
        if isinstance(value, str) and ":" in value and value not in registered[key]():
            found[key] = value
    return found


def config_from_stored(data: Mapping[str, Any], study_name: str,
                       trust: LocalTrust = LocalTrust()) -> Config:
    """A config stored with study ``study_name``, rebuilt under ``trust``. A stored
    ``model.trust_checkpoint`` is ignored: ``trust.checkpoint`` decides (see
    :class:`LocalTrust`), and when it allows the stored file, ``model.checkpoint`` becomes the
    user's file, resolved. A stored ``package.module:factory`` not in ``trust.factories`` is a
    one-line :class:`ConfigError` naming the key and the flag that allows it; nothing is
    imported before that check."""
    for key, spec in stored_factories(data).items():
        if spec not in trust.factories:
            raise ConfigError(
                f"study '{study_name}' uses {key} '{spec}', a package.module:factory that "
                f"imports code; a stored study is not trusted to name code, so pass "
                f"--allow-factory {spec} to import it")
    data = upgrade_stored(data)
    model = data.get("model")
    if isinstance(model, Mapping):
        data["model"] = {k: v for k, v in model.items() if k != "trust_checkpoint"}
    cfg = config_from_dict(data)
    allowed = _allowed_checkpoint(cfg.model.checkpoint, trust.checkpoint, study_name)
    return dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, trust_checkpoint=allowed is not None,
        checkpoint=allowed or cfg.model.checkpoint))


@contextlib.contextmanager
def stored_checkpoint_refusal(cfg: Config, study_name: str) -> Iterator[None]:
    """Around loading a stored config's model: a refusal to fully unpickle its
    ``model.checkpoint`` says which file the study names and how this command allows it
    (``--trust-checkpoint PATH``; a stored config's own setting never does)."""
    try:
        yield
    except UntrustedCheckpointError as exc:
        stored = cfg.model.checkpoint
        unsafe = "holds objects other than tensors, and loading it would run code from the file"
        if stored and same_file(exc.path, stored):
            raise CheckpointError(
                f"checkpoint {stored} (model.checkpoint of study '{study_name}') {unsafe}; if "
                f"you trust it, pass --trust-checkpoint {stored}") from None
        raise CheckpointError(
            f"checkpoint {exc.path} {unsafe}; refused (only the model.checkpoint a study "
            "names can be allowed, with --trust-checkpoint PATH)") from None
