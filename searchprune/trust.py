"""A study's stored config is not a trusted input: whoever can write to a shared storage can
edit it. Rebuilt from storage (``finetune``, ``export``), it may import a module or unpickle a
file only where the person running the command allowed exactly that on their own command line:

- ``model.trust_checkpoint`` is never stored (:func:`searchprune.redact.redact_config` drops
  it) and never read back: ``--trust-checkpoint`` on the command decides.
- A ``package.module:factory`` (``model.name``, ``search.sampler``, ``pruning.criterion``) is
  imported only when the same string is passed with ``--allow-factory``; otherwise the command
  stops in one line that names the key and the flag. Nothing is imported before that check
  (validating a config imports nothing either).

A config file of the user's own (``study run CONFIG.yaml``) is trusted as written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from searchprune.config import Config, config_from_dict, upgrade_stored
from searchprune.errors import ConfigError

__all__ = ["FACTORY_KEYS", "LocalTrust", "config_from_stored", "stored_factories"]

# Config keys whose value may name code to import: ``package.module:factory``.
FACTORY_KEYS = ("model.name", "search.sampler", "pruning.criterion")


@dataclass(frozen=True)
class LocalTrust:
    """What the person running a command allowed on their own command line (or in their own
    config file), for a config read back from a study's storage, which anyone who can write to
    the storage may have edited: ``factories``, the ``package.module:factory`` strings that
    may be imported (``--allow-factory``), and ``trust_checkpoint``, full unpickling of
    ``model.checkpoint`` (``--trust-checkpoint``). Nothing else in a stored config imports a
    module or unpickles a file."""

    factories: frozenset[str] = frozenset()
    trust_checkpoint: bool = False


def stored_factories(data: Mapping[str, Any]) -> dict[str, str]:
    """The ``package.module:factory`` strings of a config dict, by dotted key: a value of a
    :data:`FACTORY_KEYS` key with a ``:`` that is not a registered name (registered names
    come from code already imported, not from the config)."""
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
        if isinstance(value, str) and ":" in value and value not in registered[key]():
            found[key] = value
    return found


def config_from_stored(data: Mapping[str, Any], study_name: str,
                       trust: LocalTrust = LocalTrust()) -> Config:
    """A config stored with study ``study_name``, rebuilt under ``trust``: a stored
    ``model.trust_checkpoint`` is ignored (``trust.trust_checkpoint`` decides), and a stored
    ``package.module:factory`` not in ``trust.factories`` is a one-line :class:`ConfigError`
    naming the key and the flag that allows it; nothing is imported before that check."""
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
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, trust_checkpoint=trust.trust_checkpoint))
