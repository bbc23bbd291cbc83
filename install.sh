#!/usr/bin/env bash
# Install searchprune into ./.venv and run the quickstart study (digits, offline, CPU).
# Prints one line per step; pip's own output goes to .venv/install.log and is shown only when a
# step fails (the last 40 lines of the log, where pip puts its errors).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
LOG=.venv/install.log
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

step() {  # step "what" command...: one progress line, the command's output into $LOG
  local what=$1 start=$SECONDS
  shift
  printf '==> %s ... ' "$what"
  if "$@" >>"$LOG" 2>&1; then
    echo "done ($((SECONDS - start)) s)"
  else
    local code=$?
    echo "FAILED (exit $code); the last lines of $LOG:"
    tail -n 40 "$LOG"
    exit "$code"
  fi
}

if [ ! -x .venv/bin/python ]; then
  printf '==> creating .venv with %s ... ' "$PY"
  "$PY" -m venv .venv
  echo done
fi
: >"$LOG"
step "upgrading pip" .venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: this exact version is what the project is tested with.
step "installing torch 2.14.1 and torchvision 0.29.1 (CPU wheels are large)" \
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
step "installing searchprune and its dependencies (editable, with test and docs tools)" \
  .venv/bin/python -m pip install -q -e ".[test,docs]"
echo "installed: $(.venv/bin/searchprune --version); pip's output is in $LOG"
if [ "${SEARCHPRUNE_SKIP_QUICKSTART:-0}" != "1" ]; then
  echo "==> running the quickstart study (studies/quickstart.yaml)"
  .venv/bin/searchprune study run studies/quickstart.yaml
fi
