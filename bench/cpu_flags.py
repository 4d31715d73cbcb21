"""Which XLA CPU flags make zoo's training faster here, and do they change
the numbers? Each flag set trains in a fresh process (XLA reads XLA_FLAGS
once), interleaved over rounds with the flag-free run as the reference.

    python bench/cpu_flags.py                       # the candidates below
    python bench/cpu_flags.py --flag-set=--xla_cpu_use_onednn=true

Prints zoo's steady-state train images/s per model and flag set, the ratio
against no flags measured in the same round, and whether the trained
parameters are bit-identical to the flag-free run's (params_sha256).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CANDIDATES = [
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_onednn=true --xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_thunk_runtime=false",
]
MODELS = ["cnn_fashion_mnist", "mlp_fashion_mnist"]


def _child(name: str, steps: int) -> None:
  """Trains `name` for 2 epochs of steps+1 batches (train_speed.zoo_run)."""
  sys.path.insert(0, str(BENCH))
  import train_speed  # pylint: disable=g-import-not-at-top
  r = train_speed.zoo_run(train_speed.bench_entry(name), 128, steps,
                          devices=1, strategy="jit")
  print(json.dumps({k: r[k] for k in ("train_images_per_second",
                                       "params_sha256", "loop")}))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--flag-set", action="append", dest="flags", metavar="FLAGS",
                 help="an XLA_FLAGS value to try (repeat; write it as "
                      "--flag-set=--xla_...); default: the candidates above")
  p.add_argument("--models", nargs="+", default=MODELS)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    return _child(args.child[0], int(args.child[1]))
  flags = [""] + [f for f in (args.flags or CANDIDATES) if f]
  runs: dict = {}
  for rnd in range(args.rounds):
    for name in args.models:
      for f in (flags if rnd % 2 == 0 else flags[::-1]):
        env = {**os.environ, "XLA_FLAGS": f, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, __file__, "--child", name,
                               str(args.steps)], capture_output=True,
                              text=True, env=env)
        if proc.returncode:
          print(f"{name} {f!r}: failed: "
                f"{(proc.stderr.strip().splitlines() or [''])[-1][:200]}")
          runs.setdefault((name, f), [])
          continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.setdefault((name, f), []).append(out)
        print(f"round {rnd + 1} {name:<20} {f or '(no flags)':<56} "
              f"{out['train_images_per_second']:>8,.0f} img/s", flush=True)
  print(f"\n{'model':<20} {'XLA_FLAGS':<56} {'img/s':>8} {'vs none':>7}  "
        "same params")
  summary = {}
  for name in args.models:
    base = runs[(name, "")]
    base_ips = statistics.median(r["train_images_per_second"] for r in base)
    for f in flags:
      rs = runs[(name, f)]
      if not rs:
        print(f"{name:<20} {f or '(no flags)':<56} {'failed':>8}")
        continue
      ips = statistics.median(r["train_images_per_second"] for r in rs)
      same = all(r["params_sha256"] == base[0]["params_sha256"] for r in rs)
      summary[(name, f)] = {"images_per_second": ips,
                            "ratio": ips / base_ips, "same_params": same}
      print(f"{name:<20} {f or '(no flags)':<56} {ips:>8,.0f} "
            f"{ips / base_ips:>7.2f}  {'yes' if same else 'NO'}")
  return summary


if __name__ == "__main__":
  main()
