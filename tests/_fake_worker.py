"""A ``searchprune`` CLI process whose engine is the fast FakeEngine (tests/_helpers.py).

Run as ``python tests/_fake_worker.py study run CONFIG.yaml ...``; ``--workers K`` starts K
copies of this script. Environment: ``FAKE_DELAY`` seconds per evaluation (default 0.1),
``FAKE_MARK`` a folder where each evaluation writes ``<pid>`` (holding the worker's index under
``--workers K``) when it starts; ``FAKE_BARRIER=N``: an evaluation starts only once ``N``
processes have marked one; ``FAKE_HANG=I``: worker ``I`` of ``--workers K`` never ends its first
evaluation (until it is killed); ``FAKE_RAISE=MESSAGE``: every evaluation raises
``RuntimeError(MESSAGE)``.
"""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _helpers import FakeEngine

import searchprune.cli._workers as workers
from searchprune.cli.main import main
from searchprune.search import runner


class SlowEngine(FakeEngine):
    def evaluate(self, widths, *, split="val", on_chunk=None):
        mark = os.environ.get("FAKE_MARK")
        index = os.environ.get(workers.INDEX_ENV, "")
        if mark:
            (Path(mark) / str(os.getpid())).write_text(index)
            _barrier(Path(mark), int(os.environ.get("FAKE_BARRIER", "0")))
        if index and index == os.environ.get("FAKE_HANG"):
            time.sleep(3600)
        time.sleep(float(os.environ.get("FAKE_DELAY", "0.1")))
        if os.environ.get("FAKE_RAISE"):
            raise RuntimeError(os.environ["FAKE_RAISE"])
        return super().evaluate(widths, split=split, on_chunk=on_chunk)


def _barrier(mark: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(list(mark.iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.05)


# the runner imports engine_for from here; a stub module keeps torch out of these processes
engines = types.ModuleType("searchprune.engine")
engines.engine_for = lambda cfg, progress=False: SlowEngine()  # type: ignore[attr-defined]
sys.modules["searchprune.engine"] = engines
# optuna-dashboard (for the study note) pulls in scikit-learn and scipy: seconds per process
dashboard = types.ModuleType("optuna_dashboard")
dashboard.save_note = lambda study, note: None  # type: ignore[attr-defined]
sys.modules["optuna_dashboard"] = dashboard
runner.check_names_exist = lambda cfg: None  # it imports the criteria, hence torch
workers.LAUNCHER = [str(Path(__file__).resolve())]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
