"""``python -m searchprune``: the same as the ``searchprune`` command."""

from __future__ import annotations

import sys

from searchprune.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
