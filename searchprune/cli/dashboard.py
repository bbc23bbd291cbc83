"""``searchprune dashboard``: optuna-dashboard on the study storage (localhost by default)."""

from __future__ import annotations

import argparse
from pathlib import Path

from searchprune.cli._output import console

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dashboard", parents=[common],
                       help="watch studies in optuna-dashboard (blocks; Ctrl-C stops it)")
    p.add_argument("--storage", help="storage URL or SQLite file (env SEARCHPRUNE_STORAGE)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--artifact-dir", default=None,
                   help="artifact store folder (default: as 'searchprune finetune' uses)")
    p.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from searchprune.search import get_storage

    storage = get_storage(args.storage, heartbeat_interval=None)
    from searchprune.search.finishing import default_artifact_dir

    artifacts = Path(args.artifact_dir or default_artifact_dir(args.storage))
    artifacts.mkdir(parents=True, exist_ok=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {args.host}: anyone who can reach this "
                      "machine can read and annotate the studies")
    console.print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard/ "
                  f"(artifacts in {artifacts}); Ctrl-C stops it")
    run_server(storage, host=args.host, port=args.port,
               artifact_store=FileSystemArtifactStore(str(artifacts)))
    return 0
