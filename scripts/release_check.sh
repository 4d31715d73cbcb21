#!/usr/bin/env bash
# The release as a user gets it: `python -m build` makes the sdist and, from
# it, the wheel; the wheel (not editable, core install: no extras) goes into
# a fresh Python 3.12 venv outside the checkout, where zoo lists its models,
# runs a forward pass, trains one epoch on the offline Fashion-MNIST and
# evaluates the shipped weights. Called by scripts/test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ZOO_ROOT"
zoo_data
out="$(mktemp -d /tmp/zoo-release.XXXXXX)"
trap 'rm -rf "$out"' EXIT

zoo_venv .venv-build "$(zoo_python 3.12)" 'build>=1.2,<2'
.venv-build/bin/python -m build --outdir "$out/dist" . >"$out/build.log" 2>&1 || {
  tail -30 "$out/build.log"; echo "zoo: error: python -m build failed" >&2; exit 1; }
sdist="$(ls "$out"/dist/*.tar.gz)"; wheel="$(ls "$out"/dist/*.whl)"
want="$(ls zoo/configs/*.toml | wc -l)"
in_sdist="$(tar tzf "$sdist" | grep -c '/zoo/configs/[^/]*\.toml$' || true)"
in_wheel="$(python3 -m zipfile -l "$wheel" | grep -c '^zoo/configs/[^ ]*\.toml ' || true)"
echo "release: $(basename "$sdist"): $in_sdist configs; $(basename "$wheel"): $in_wheel configs (checkout: $want)"
[ "$in_sdist" = "$want" ] && [ "$in_wheel" = "$want" ] || {
  echo "zoo: error: the release does not carry every model config" >&2; exit 1; }

"$(zoo_python 3.12)" -m venv "$out/venv"
"$out/venv/bin/python" -m pip install -q "$wheel"
cd "$out"  # outside the checkout: nothing can import the clone by accident
export PATH="$out/venv/bin:$PATH"
python - <<'PY'
import jax, numpy as np, zoo, importlib.util, pathlib
print(f"release: jax {jax.__version__}, zoo {zoo.__version__} from {pathlib.Path(zoo.__file__).parent}")
assert "site-packages" in zoo.__file__, zoo.__file__
for extra in ("tensorflow", "tensorflow_datasets"):
  assert importlib.util.find_spec(extra) is None, f"{extra} is in the core install"
entry = zoo.get("cnn_mnist")
x = entry.example_input(batch=4)
params, state = entry.init_with_state(jax.random.PRNGKey(0), x)
logits, _ = entry.apply_with_state(params, state, None, x)
assert logits.shape == (4, entry.num_classes) and np.isfinite(logits).all()
print(f"release: {len(zoo.list_models())} models; cnn_mnist forward pass {logits.shape}")
PY
zoo list
zoo train cnn_fashion_mnist --epochs 1 --workdir "$out/run" | tail -2
zoo eval cnn_fashion_mnist --weights pretrained --out "$out/eval" | grep -E '"(accuracy|test_accuracy|split)"'
echo "release: core venv $(du -sh "$out/venv" | cut -f1)"
