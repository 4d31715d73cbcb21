#!/usr/bin/env bash
# Helpers sourced by the set-up and test scripts: the real Fashion-MNIST and
# Chromium from Debian, a Python of a given minor version, and virtualenvs
# that install once and again only when what they were made from changes.
set -euo pipefail
ZOO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

zoo_data() {  # the offline Fashion-MNIST (Debian's dataset-fashion-mnist)
  if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      dataset-fashion-mnist >/dev/null
  fi
}

zoo_chromium() {  # the browser docs/check_site.py drives (Debian's chromium)
  if ! command -v chromium >/dev/null 2>&1; then
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      chromium >/dev/null
  fi
}

zoo_python() {  # zoo_python 3.12: the path of a working python3.12 (PATH, pyenv)
  local want="$1" root p
  root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  for p in "$(command -v "python$want" 2>/dev/null || true)" \
           "$root"/versions/"$want".*/bin/python"$want"; do
    # A pyenv shim is on PATH for every version but runs only the selected.
    if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import sys; sys.exit(
        "%d.%d" % sys.version_info[:2] != "'"$want"'")' >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  echo "zoo: error: Python $want is needed (zoo is tested on 3.11, 3.12" \
       "and 3.13): install it, e.g. pyenv install $want, or" \
       "apt-get install python$want" >&2
  return 2
}

zoo_venv() {  # zoo_venv DIR PYTHON PIP-INSTALL-ARGS...: DIR ready to use
  local dir="$1" python="$2"; shift 2
  local version have want
  version="$("$python" -c 'import sys; print(sys.version.split()[0])')"
  have="$("$dir/bin/python" -c 'import sys; print(sys.version.split()[0])' \
          2>/dev/null || true)"
  want="$version|$*|$(cd "$ZOO_ROOT" &&
                      cat setup.cfg setup.py constraints/*.txt | sha256sum)"
  if [ "$have" = "$version" ] && [ -f "$dir/.zoo-installed" ] &&
     [ "$(cat "$dir/.zoo-installed")" = "$want" ]; then
    return 0
  fi
  if [ "$have" != "$version" ]; then
    rm -rf "$dir"
    "$python" -m venv "$dir"
  fi
  echo "zoo: installing into $dir (Python $version): pip install $*" >&2
  (cd "$ZOO_ROOT" && "$dir/bin/python" -m pip install -q --upgrade pip &&
   "$dir/bin/python" -m pip install -q "$@")
  echo "$want" > "$dir/.zoo-installed"
}
