"""``searchprune dashboard``: optuna-dashboard on the study storage (localhost by default).

The server answers only requests addressed to it (Host header), read-only unless
``--allow-write``, and behind a token on any interface other than loopback (or with
``--token``): see :mod:`searchprune.cli._webguard`.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from pathlib import Path

from searchprune.cli._output import console
from searchprune.errors import ConfigError

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dashboard", parents=[common],
                       help="watch studies in optuna-dashboard (blocks; Ctrl-C stops it)")
    p.add_argument("--storage", help="storage URL or SQLite file (env SEARCHPRUNE_STORAGE)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only); "
                        "requests must address the server by this name (or, on loopback, "
                        "127.0.0.1, localhost, [::1])")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--artifact-dir", default=None,
                   help="artifact store folder (default: as 'searchprune finetune' uses)")
    p.add_argument("--allow-write", action="store_true",
                   help="let the browser change studies (delete, rename, notes, tell trials, "
                        "upload artifacts); read-only by default")
    p.add_argument("--token", action="store_true",
                   help="require a login token, also on loopback (always on other interfaces): "
                        "the value of SEARCHPRUNE_DASHBOARD_TOKEN, else a random one printed "
                        "once in the address")
    p.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    from searchprune.cli._webguard import DashboardGuard, is_loopback, is_wildcard, serve
    from searchprune.search import get_storage
    from searchprune.search.finishing import default_artifact_dir

    token, generated = _token(args.token or not is_loopback(args.host))
    storage = get_storage(args.storage, heartbeat_interval=None)
    artifacts = Path(args.artifact_dir or default_artifact_dir(args.storage))
    artifacts.mkdir(parents=True, exist_ok=True)
    app = DashboardGuard(wsgi(storage, artifact_store=FileSystemArtifactStore(str(artifacts))),
                         host=args.host, port=args.port, token=token,
                         allow_write=args.allow_write)
    if not is_loopback(args.host):
        console.print(f"[yellow]warning:[/] listening on {args.host}: anyone who can reach this "
                      "machine and has the token can read the studies"
                      + (" and change them" if args.allow_write else ""), soft_wrap=True)
    shown = _url_host(args.host)
    query = f"?token={token}" if generated else ""  # the only time a token is shown
    console.print(f"optuna-dashboard on http://{shown}:{args.port}/dashboard/{query} "
                  f"({'read-write' if args.allow_write else 'read-only'}, artifacts in "
                  f"{artifacts}); Ctrl-C stops it", soft_wrap=True, highlight=False)
    if token is not None and not generated:
        console.print("log in once with ?token= and the value of SEARCHPRUNE_DASHBOARD_TOKEN",
                      soft_wrap=True)
    if is_wildcard(args.host):
        console.print("any Host header is accepted on a wildcard address; the token guards it",
                      soft_wrap=True)
    serve(app, args.host, args.port)
    return 0


def _token(required: bool) -> tuple[str | None, bool]:
    """``(token, generated)``: the user's from the environment, else a random one when
    required, else none."""
    from searchprune.cli._webguard import TOKEN_ENV

    given = os.environ.get(TOKEN_ENV)
    if given:
        if not re.fullmatch(r"[A-Za-z0-9_.~-]{16,}", given):
            raise ConfigError(f"{TOKEN_ENV} must be at least 16 characters of A-Z, a-z, 0-9, "
                              "'_', '-', '.', '~'")
        return given, False
    if required:
        return secrets.token_urlsafe(24), True
    return None, False


def _url_host(host: str) -> str:
    """How a browser addresses ``host``."""
    import socket

    from searchprune.cli._webguard import is_wildcard

    if is_wildcard(host):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host
