#!/usr/bin/env bash
# The README's first command: installs what it needs (idempotent), then runs the main job end to
# end on the embedded synthetic cohort: generate, split, train, evaluate, compare, report.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup_env.sh"
venv="${PERFORATION_VENV:-$here/.venv}"
cd "$here"
exec "$venv/bin/python" -m perforation_d2 demo --out "${1:-output/demo}" --overwrite "${@:2}"
