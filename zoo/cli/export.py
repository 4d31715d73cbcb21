"""`zoo export NAME (--weights pretrained|FILE | --workdir DIR) --format
stablehlo|savedmodel --out PATH`: the model with its weights, in inference
mode, as an artifact that runs without zoo or Haiku (see zoo.export)."""
from __future__ import annotations

import argparse
from pathlib import Path

from zoo import config as config_lib
from zoo.cli.common import check_workdir, entry_for_run, load_weights
from zoo.export import DEFAULT_PLATFORMS, FORMATS


def add(sub) -> None:
  p = sub.add_parser("export", help="write a model and its weights as a "
                                    "StableHLO artifact or a TF SavedModel")
  p.add_argument("name", help="registered model (see `zoo list`)")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--weights", default=None,
                   help="'pretrained' (the shipped weights), a .npz weights "
                        "file, or a checkpoint directory (DIR/checkpoints/"
                        "step_N)")
  src.add_argument("--workdir", default=None,
                   help="a zoo train run: its newest good checkpoint")
  p.add_argument("--format", required=True, choices=FORMATS,
                 help="stablehlo: jax.export's serialized artifact (+ "
                      "OUT.json); savedmodel: a TensorFlow SavedModel "
                      "directory (+ OUT/assets.extra/zoo.json)")
  p.add_argument("--out", required=True, help="the artifact's path")
  p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                 help="comma-separated platforms to lower for, among cpu, "
                      "cuda, rocm, tpu (default: %(default)s)")
  p.add_argument("--force", action="store_true",
                 help="replace an existing artifact of the same format at "
                      "--out (otherwise refused)")
  p.set_defaults(func=run)


def entry_and_weights(args: argparse.Namespace):
  """(entry, params, model_state) from --weights or --workdir; a run is
  loaded with its own resolved config (model overrides included)."""
  from zoo import registry
  from zoo.training import run_weights
  if args.weights == "pretrained":
    entry = registry.get(args.name, pretrained=True)
    return entry, entry.params, entry.model_state
  entry = registry.get(args.name)
  if args.workdir:
    check_workdir(args.workdir)
    return run_weights.load_run(args.workdir,
                                entry_for_run(entry, args.workdir, "export"))
  return (entry, *load_weights(entry, args.weights,
                               also="'pretrained', "))


def run(args: argparse.Namespace) -> int:
  """Checks --out and --platforms, loads the weights, writes the artifact
  and its JSON, and prints both paths."""
  from zoo import export as export_lib
  platforms = tuple(p.strip() for p in args.platforms.split(","))
  export_lib.check_platforms(platforms)
  export_lib.check_out(Path(args.out), args.format, args.force)
  entry, params, model_state = entry_and_weights(args)
  path = export_lib.export(entry, params, model_state, args.out, args.format,
                           platforms=platforms, overwrite=args.force)
  print(f"wrote {path} ({args.format}, {entry.name}, batch any size, "
        f"platforms {', '.join(platforms)})")
  print(f"wrote {export_lib.metadata_path(path, args.format)}")
  return 0
