"""Storage passwords never leave the process: they are removed from every URL that is stored or
shown, and from any text searchprune prints or logs (``--debug`` tracebacks included).

A password may sit in the URL's user part (``postgresql://user:pass@host/db``, percent-encoded
or not, so ``@`` and ``%`` may appear in it) or in a query parameter (``?password=...``). Every
URL that reaches :func:`redact_url` or :func:`remember` has its passwords registered, so
:func:`redact_text` can replace them (in every encoding) wherever they turn up later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus

__all__ = ["MASK", "RedactingFilter", "public_config", "redact_config", "redact_text", "redact_url",
           "remember"]

MASK = "***"
_PASSWORD_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})
_SECRETS: set[str] = set()
_SHORTEST = 4  # shorter passwords are removed from URLs, but not searched for in free text


def _split(url: str) -> tuple[str, str, str, str, str]:
    """``scheme://``, user part, password (raw, as written), host part, the rest (path, query)."""
    scheme, sep, tail = url.partition("://")
    if not sep:
        return "", "", "", "", url
    slash = tail.find("/")
    netloc, rest = (tail, "") if slash < 0 else (tail[:slash], tail[slash:])
    creds, at, host = netloc.rpartition("@")
    if not at:
        return scheme + sep, "", "", netloc, rest
    user, colon, password = creds.partition(":")
    return scheme + sep, user + colon, password, "@" + host, rest


def _query_passwords(rest: str) -> list[str]:
    _, q, query = rest.partition("?")
    if not q:
        return []
    return [v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() in _PASSWORD_KEYS]


def remember(url: str | None) -> None:
    """Register the passwords in ``url`` so :func:`redact_text` hides them from now on."""
    if not url:
        return
    _, _, password, _, rest = _split(url)
    found = ([password] if password else []) + _query_passwords(rest)
    for secret in found:
        if len(secret) < _SHORTEST:
            continue
        for form in {secret, unquote(secret), unquote_plus(secret)}:
            _SECRETS.update({form, quote(form, safe=""), quote_plus(form, safe="")})


def redact_url(url: str | None) -> str | None:
    """``url`` with its passwords replaced by ``***`` (user part and query parameters)."""
    if not url:
        return url
    remember(url)
    head, user, password, host, rest = _split(url)
    path, q, query = rest.partition("?")
    if q:
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(k + eq + (MASK if k.lower() in _PASSWORD_KEYS else v)
                         for k, eq, v in pairs)
    return f"{head}{user}{MASK if password else ''}{host}{path}{q}{query}"


def redact_text(text: str) -> str:
    """``text`` with every registered password replaced by ``***`` (longest first)."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def public_config(cfg: Any) -> dict[str, Any]:
    """``config_to_dict(cfg)`` as it may be stored and shown: the storage password and
    ``model.trust_checkpoint`` removed."""
    from searchprune.config import config_to_dict

    return redact_config(config_to_dict(cfg))


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict as it may be stored and shown: the ``storage`` URL redacted and
    ``model.trust_checkpoint`` dropped (a permission of one command's user, never a property
    of a study; a stored one is never read back)."""
    out = dict(config)
    if isinstance(out.get("storage"), str):
        out["storage"] = redact_url(out["storage"])
    if isinstance(out.get("model"), Mapping):
        out["model"] = {k: v for k, v in out["model"].items() if k != "trust_checkpoint"}
    return out


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message and traceback text with passwords removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        record.msg, record.args = redact_text(record.getMessage()), None
        if record.exc_info:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
