#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs everything the
# package, its tests and the demo need. Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PERFORATION_VENV:-$here/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.perforation_d2_deps"
# The pins this environment was built from: a change of requirements.txt or setup.py reinstalls.
wanted="v3 $(cat "$here/requirements.txt" "$here/setup.py" | sha256sum | cut -d' ' -f1)"

# Debian packages the tests need (scripts/debian-packages.txt): installed when missing, with one
# `apt-get update` first; a clear failure when that is not possible (no apt, no root).
debian_missing=()
while read -r package; do
  package="${package%%#*}"; package="${package// /}"
  [ -n "$package" ] || continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || debian_missing+=("$package")
done < "$here/scripts/debian-packages.txt"
if [ "${#debian_missing[@]}" -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  if ! command -v apt-get >/dev/null \
     || ! "${sudo[@]}" apt-get update -q \
     || ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
          apt-get install -y -q --no-install-recommends "${debian_missing[@]}"; then
    echo "setup_env: the tests need the Debian packages ${debian_missing[*]}, and apt-get could not install them" \
         "here (its message is above; it needs root or password-less sudo); install them and run again" >&2
    exit 1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip "$@"; }

if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  pip install -q --upgrade "pip<26" wheel installer
  # torch / torchvision first so nothing else pulls a different build.
  pip install -q "torch==2.14.1" "torchvision==0.29.1"
  pip install -q -r "$here/requirements.txt"
  # Detectron2 is not on PyPI: the pure-Python 0.7.2 build is repackaged as sal-detectron2
  # (a cp310 wheel whose compiled _C we never use). pypa/installer ignores the tag.
  if ! "$venv/bin/python" -c "import detectron2" 2>/dev/null; then
    tmp="$(mktemp -d)"
    pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" "sal-detectron2==0.7.2"
    "$venv/bin/python" -m installer "$tmp"/sal_detectron2-0.7.2-*.whl
    rm -rf "$tmp"
  fi
  pip install -q --no-deps -e "$here"
  rm -f "$venv"/.perforation_d2_deps_v*  # stamps of older versions of this script
  echo "$wanted" > "$stamp"
fi
"$venv/bin/python" -c "import torch, detectron2, pydicom, pycocotools, sklearn; import perforation_d2" \
  || { echo "setup_env: the environment in $venv is broken; delete it and run again" >&2; exit 1; }
