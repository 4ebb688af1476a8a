#!/usr/bin/env bash
# Set up vlmood on a fresh machine: a virtual environment with vlmood (editable) and its dev tools.
#   VLMOOD_VENV   where the environment lives (default: ./.venv; ./.venv becomes a link to it otherwise)
#   VLMOOD_TORCH  pip requirement(s) for torch (default: the releases available on this workplace's
#                 disk; set e.g. VLMOOD_TORCH="torch torchvision" to take your index's latest)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLMOOD_VENV:-.venv}"
TORCH_REQ="${VLMOOD_TORCH:-torch==2.14.1 torchvision==0.29.1}"
PY="${PYTHON:-python3}"

# System packages: Chromium for the report's browser test (tests only; skip with VLMOOD_NO_APT=1).
if [ -z "${VLMOOD_NO_APT:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium (apt) for the report's browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "[setup] chromium is missing: run 'sudo apt-get install -y --no-install-recommends chromium' (browser test)"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$VENV" != ".venv" ] && [ ! -e .venv ]; then ln -s "$VENV" .venv; fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_REQ (large download on first run)"
  # shellcheck disable=SC2086
  "$VPY" -m pip install -q $TORCH_REQ
fi
stamp="$VENV/.vlmood-setup-$(sha256sum pyproject.toml | cut -c1-16)"
# (re)install when the dependencies changed or vlmood is not imported from THIS checkout's src/
here="$(pwd -P)/src/vlmood"
if [ ! -f "$stamp" ] || ! "$VPY" -c "import os, sys, vlmood; sys.exit(os.path.realpath(os.path.dirname(vlmood.__file__)) != '$here')" >/dev/null 2>&1; then
  echo "[setup] installing vlmood (editable) with dev extras"
  "$VPY" -m pip install -q -e ".[dev]" --config-settings editable_mode=compat
  touch "$stamp"
fi
echo "[setup] ready: $VPY ($("$VPY" -c 'import torch, open_clip; print("torch", torch.__version__, "open_clip", open_clip.__version__)'))"
