#!/usr/bin/env bash
# The README's test command: installs what it needs (idempotent), then lint + the test suite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup_env.sh"
venv="${PERFORATION_VENV:-$here/.venv}"
cd "$here"
"$venv/bin/ruff" check .
exec "$venv/bin/python" -m pytest -q "$@"
