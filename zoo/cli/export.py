"""`zoo export NAME (--weights pretrained|FILE | --workdir DIR) --format
stablehlo|savedmodel|safetensors|hub --out PATH`: the model with its
weights, in inference mode, as an artifact that runs without zoo or Haiku,
or its weights alone as a safetensors file or a Hub-style model folder (see
zoo.export)."""
from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli.common import WEIGHTS_HELP, entry_and_weights
from zoo.export import DEFAULT_PLATFORMS, FORMATS, WEIGHTS_FORMATS


def add(sub) -> None:
  p = sub.add_parser("export", help="write a model and its weights as a "
                                    "StableHLO artifact or a TF SavedModel, "
                                    "or its weights as safetensors or a Hub "
                                    "model folder")
  p.add_argument("name", help="registered model (see `zoo list`)")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--weights", default=None,
                   help=WEIGHTS_HELP)
  src.add_argument("--workdir", default=None,
                   help="a zoo train run: its newest good checkpoint")
  p.add_argument("--format", required=True, choices=FORMATS + WEIGHTS_FORMATS,
                 help="stablehlo: jax.export's serialized artifact (+ "
                      "OUT.json); savedmodel: a TensorFlow SavedModel "
                      "directory (+ OUT/assets.extra/zoo.json); safetensors: "
                      "the weights file; hub: a model folder (config.json, "
                      "model.safetensors, README.md) to load with "
                      "--weights OUT or upload to the Hugging Face Hub")
  p.add_argument("--out", required=True, help="the artifact's path")
  p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                 help="comma-separated platforms to lower for, among cpu, "
                      "cuda, rocm, tpu (default: %(default)s)")
  p.add_argument("--force", action="store_true",
                 help="replace an existing artifact of the same format at "
                      "--out (otherwise refused)")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  """Checks --out and --platforms, loads the weights, writes the artifact
  and its JSON, and prints both paths."""
  from zoo import export as export_lib
  platforms = tuple(p.strip() for p in args.platforms.split(","))
  export_lib.check_platforms(platforms)
  export_lib.check_out(Path(args.out), args.format, args.force)
  if args.format == "savedmodel":
    export_lib.import_tf()  # before any weights are read
  entry, params, model_state, _ = entry_and_weights(
      args.name, args.weights, args.workdir, "export")
  path = export_lib.export(entry, params, model_state, args.out, args.format,
                           platforms=platforms, overwrite=args.force)
  if args.format in WEIGHTS_FORMATS:
    print(f"wrote {path} ({args.format}, {entry.name}, "
          f"{entry.param_count():,} parameters)")
    return 0
  print(f"wrote {path} ({args.format}, {entry.name}, batch any size, "
        f"platforms {', '.join(platforms)})")
  print(f"wrote {export_lib.metadata_path(path, args.format)}")
  return 0
