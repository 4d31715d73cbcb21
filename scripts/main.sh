#!/usr/bin/env bash
# The main job: set up, then train the small CNN on the real Fashion-MNIST and
# print its test accuracy. Extra arguments go to `zoo train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
zoo train cnn_fashion_mnist --workdir runs/cnn_fashion_mnist "$@"
