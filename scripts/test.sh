#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VPY=.venv/bin/python
echo "[test] ruff"
"$VPY" -m ruff check src tests benchmarks scripts
"$VPY" -m ruff format --check src tests benchmarks scripts
echo "[test] pytest"
set +e
"$VPY" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: treating as failure (the suite must never be empty)" >&2
  exit 1
fi
exit "$rc"
