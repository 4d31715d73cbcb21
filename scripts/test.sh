#!/usr/bin/env bash
# The README's test command. Set-up included, it tests zoo at both ends of
# its supported range and as a release:
#   release  python -m build (sdist, then the wheel from it), the wheel in a
#            fresh Python 3.12 venv: list, forward pass, one epoch, eval
#   floor    Python 3.11 with the oldest supported releases
#            (constraints/floor.txt), core install only: the smoke set
#   docs     Python 3.13 with '.[docs]': the site built with sphinx -W, then
#            every page opened in Debian's headless Chromium
#            (docs/check_site.py: images, internal links, console, requests;
#            its own tests first)
#   full     Python 3.13 with the newest releases and every extra
#            ('.[test]'): the whole suite (CPU, 8 virtual devices); a
#            Python 3.11 venv with torch's CPU build for the peer benchmark
# ZOO_TEST_STAGES picks stages (default "release floor docs full"); extra
# arguments go to the full suite's pytest, e.g.
# `bash scripts/test.sh -k checkpoint`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ZOO_ROOT"
zoo_data
workers="${ZOO_TEST_WORKERS:-2}"
SMOKE=(zoo_tests/test_registry.py zoo_tests/test_models.py
       zoo_tests/test_step.py zoo_tests/test_losses.py
       zoo_tests/test_pretrained.py zoo_tests/test_extras.py
       zoo_tests/test_checkpoint.py zoo_tests/test_train.py
       zoo_tests/test_evaluate.py zoo_tests/test_data_sources.py
       zoo_tests/test_export.py)

stage() { echo; echo "=== zoo tests: $* ($(date +%T))"; }

for s in ${ZOO_TEST_STAGES:-release floor docs full}; do
  case "$s" in
    release)
      stage "release: sdist -> wheel -> fresh Python 3.12 venv"
      bash scripts/release_check.sh ;;
    floor)
      stage "floor: Python 3.11, constraints/floor.txt, core install, smoke set"
      zoo_venv .venv-floor "$(zoo_python 3.11)" -c constraints/floor.txt -e . \
        'pytest>=8,<10' 'pytest-xdist>=3.5,<4'
      .venv-floor/bin/python -c 'import jax; print("floor: jax", jax.__version__)'
      # On JAX 0.7.0 the mesh strategy's BatchNorm CNN does not match one
      # device's numbers (docs/guides/getting_started.md, Install); jit and pmap do.
      .venv-floor/bin/python -m pytest "${SMOKE[@]}" -q -n "$workers" \
        --dist loadgroup -m "" -k "not savedmodel" --deselect \
        zoo_tests/test_train.py::test_mesh_trains_batchnorm_and_dropout_to_one_devices_numbers ;;
    docs)
      stage "docs: Python 3.13, '.[docs]', sphinx -W, every page in Chromium"
      zoo_chromium
      zoo_venv .venv-docs "$(zoo_python 3.13)" -e '.[docs]' 'pytest>=8,<10'
      # The check itself first, on hand-made broken sites ('.[test]' has no
      # Playwright, so the full stage skips this file).
      .venv-docs/bin/python -m pytest zoo_tests/test_docs_site_check.py -q -m ""
      .venv-docs/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html
      .venv-docs/bin/python docs/check_site.py docs/_build/html \
        --screenshots docs/_build/screenshots \
        --shoot models/cnn_fashion_mnist.html api.html ;;
    full)
      stage "full: Python 3.13, newest releases, every extra, whole suite"
      zoo_venv .venv-test "$(zoo_python 3.13)" -e '.[test]'
      .venv-test/bin/python -c 'import jax; print("full: jax", jax.__version__)'
      # The PyTorch side of bench/peer_cpu.py, for its test: torch 2.13.0's
      # CPU build (the one this machine keeps on disk for Python 3.11).
      zoo_venv .venv-torch "$(zoo_python 3.11)" 'torch==2.13.0' 'numpy>=1.26,<3'
      export ZOO_TORCH_PYTHON="$ZOO_ROOT/.venv-torch/bin/python"
      .venv-test/bin/python -m pytest zoo_tests -q -n "$workers" \
        --dist loadgroup -m "" "$@" ;;
    *) echo "zoo: error: unknown ZOO_TEST_STAGES entry $s: use release, floor, docs, full" >&2
       exit 2 ;;
  esac
done
