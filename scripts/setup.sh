#!/usr/bin/env bash
# Installs what the main job needs on a fresh Debian/Ubuntu machine,
# idempotently: the real Fashion-MNIST (Debian package) and zoo's core install
# (editable, no extras: no TensorFlow) in .venv. Sourced by main.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ZOO_ROOT"
zoo_data
PYTHON="${ZOO_PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "zoo: error: zoo needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1):" \
       "set ZOO_PYTHON to a newer one" >&2; exit 2; }
zoo_venv "${ZOO_VENV:-.venv}" "$(command -v "$PYTHON")" -e .
export PATH="$PWD/${ZOO_VENV:-.venv}/bin:$PATH"
