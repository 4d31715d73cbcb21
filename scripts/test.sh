#!/usr/bin/env bash
# Set up, then run the test suite (CPU only, 8 virtual devices for pmap tests).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest zoo_tests -q -n "${ZOO_TEST_WORKERS:-2}" --dist loadgroup "$@"
