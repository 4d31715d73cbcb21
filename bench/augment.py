"""What on-device augmentation costs: zoo's training with `[augment]` on
against the same run with it off, in the same process.

Both sides are `zoo.train` as bench/train_speed.py runs it (its `zoo_run`
and `bench_entry`: real Fashion-MNIST, the model's optimizer at a constant
learning rate, steady-state images/s of the second epoch), interleaved
repeats, the best of each side. "On" is a random crop after padding by
`--crop-padding` pixels plus a horizontal flip, the augmentation running
inside the compiled step.

    python bench/augment.py                         # MLP and CNN, batch 128
    python bench/augment.py --models cnn_fashion_mnist --crop-padding 4
    python bench/augment.py --json out.json

Prints images/s off and on and the ratio on/off (1.0: free) per model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path

import jax

DEFAULT_MODELS = ["mlp_fashion_mnist", "cnn_fashion_mnist"]


def _train_speed():
  """bench/train_speed.py as a module (bench/ is not a package)."""
  path = Path(__file__).resolve().with_name("train_speed.py")
  spec = importlib.util.spec_from_file_location("bench_train_speed", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def augment_overrides(crop_padding: int, flip: bool = True,
                      mode: str = "zero") -> dict:
  """The `[augment]` settings of the "on" side."""
  return {"augment.crop_padding": crop_padding, "augment.flip": flip,
          "augment.padding_mode": mode}


def measure(name, batch, steps, repeats, on, strategy="jit"):
  """(off row, on row): the best steady-state run of each side, alternated
  so both see the same machine noise."""
  speed = _train_speed()
  entry = speed.bench_entry(name)
  best = {"off": None, "on": None}
  for _ in range(repeats):
    for side, kw in (("off", {}), ("on", on)):
      r = speed.zoo_run(entry, batch, steps, devices=1, strategy=strategy,
                        **kw)
      if best[side] is None or (r["train_images_per_second"] >
                                best[side]["train_images_per_second"]):
        best[side] = r
  return best["off"], best["on"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--steps", type=int, default=0,
                 help="timed steps per run (default: train_speed's, by "
                      "backend and model)")
  p.add_argument("--repeats", type=int, default=2,
                 help="interleaved repeats per side; the best is reported")
  p.add_argument("--crop-padding", type=int, default=4)
  p.add_argument("--padding-mode", default="zero", choices=["zero", "reflect"])
  p.add_argument("--no-flip", action="store_true")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  speed = _train_speed()
  device = jax.local_devices()[0]
  on = augment_overrides(args.crop_padding, not args.no_flip,
                         args.padding_mode)
  print(f"# {device.device_kind} ({device.platform}), {platform.machine()}, "
        f"jax {jax.__version__}; on = {json.dumps(on)}")
  print(f"{'model':<22} {'batch':>5} {'off img/s':>10} {'on img/s':>10} "
        f"{'on/off':>7} {'loop':>6}")
  rows = []
  for name in args.models:
    arch = speed.bench_entry(name).arch
    cpu = device.platform == "cpu"
    steps = args.steps or (speed.CPU_STEPS.get(arch, 400) if cpu else 400)
    off, on_r = measure(name, args.batch_size, steps, args.repeats, on)
    row = {"model": name, "batch": args.batch_size, "steps": steps,
           "off_images_per_second": off["train_images_per_second"],
           "on_images_per_second": on_r["train_images_per_second"],
           "loop": on_r["loop"], "augment": on,
           # What each side's run resolved [augment] to (a check, not a guess).
           "off_config": off["config"]["augment"],
           "on_config": on_r["config"]["augment"],
           "device_kind": device.device_kind}
    row["ratio"] = row["on_images_per_second"] / row["off_images_per_second"]
    rows.append(row)
    print(f"{name:<22} {args.batch_size:>5} "
          f"{row['off_images_per_second']:>10,.0f} "
          f"{row['on_images_per_second']:>10,.0f} {row['ratio']:>7.2f} "
          f"{row['loop']:>6}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "argv": sys.argv, "jax": jax.__version__}, f,
                indent=1)
  return rows


if __name__ == "__main__":
  main()
