#!/usr/bin/env bash
# Install searchprune into ./.venv and run the quickstart study (digits, offline, CPU).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: this exact version is what the project is tested with.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[test]"
if [ "${SEARCHPRUNE_SKIP_QUICKSTART:-0}" != "1" ]; then
  .venv/bin/searchprune study run studies/quickstart.yaml
fi
