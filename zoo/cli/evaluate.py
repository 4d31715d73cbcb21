"""`zoo eval NAME (--workdir DIR | --weights pretrained|FILE|DIR) [--out DIR]`: evaluate
saved parameters on the test split (or --split), print the metrics as JSON
and write them, with two pictures, into --out: eval.json (the printed
metrics, with "weights", the path evaluated or "pretrained", "step" for
a checkpoint and the "params_sha256" of the parameters evaluated, plus "confusion", rows true class and columns predicted, and
"mistakes", the most confident wrong predictions),
eval_confusion.png and eval_mistakes.png."""
from __future__ import annotations

import argparse
import json

from zoo import config as config_lib
from zoo.cli.common import WEIGHTS_HELP, add_common, entry_and_weights


def add(sub) -> None:
  p = sub.add_parser("eval", help="evaluate saved parameters on the test set")
  add_common(p)
  p.add_argument("--weights", default=None,
                 help=WEIGHTS_HELP + " (default: the newest good "
                      "checkpoint of --workdir)")
  p.add_argument("--split", default=None, help="split, default the test split")
  p.add_argument("--out", default=None,
                 help="directory for eval.json, eval_confusion.png and "
                      "eval_mistakes.png (default: --workdir if given, else "
                      "the current directory)")
  p.add_argument("--mistakes", type=int, default=25,
                 help="how many of the most confident mistakes to show "
                      "(default 25)")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  """Evaluates --weights, or the newest good checkpoint of --workdir. With
  --workdir the run's own resolved config is used (model settings, test
  split, classes, eval batch), so the accuracy is result.json's."""
  from zoo.training.evaluate import evaluate_model
  from zoo.fingerprint import params_sha256
  if not args.weights and not args.workdir:
    raise config_lib.ConfigError(
        "zoo eval needs --workdir DIR (a zoo train run) or --weights "
        "pretrained|FILE|DIR (the shipped weights, a .safetensors weights file, "
        "a model folder or Hub repo id, or a "
        "checkpoint directory).")
  entry, params, model_state, source = entry_and_weights(
      args.name, args.weights, args.workdir, "eval")
  res = evaluate_model(entry, params, model_state, data_dir=args.data_dir,
                       split=args.split, top_mistakes=max(args.mistakes, 1))
  res["mistakes"] = res["mistakes"][:max(args.mistakes, 0)]
  res["split"] = args.split or entry.config["data"]["test_split"]
  res.update(source)  # which weights: "pretrained", a file, or step N's
  res["params_sha256"] = params_sha256(params)  # and exactly which numbers
  import jax
  if jax.process_index() == 0:
    res["files"] = write_outputs(entry, res, args.out or args.workdir or ".",
                                 args.data_dir)
  # The confusion matrix and the mistakes are in eval.json, not printed.
  print(json.dumps({k: v for k, v in res.items()
                    if k not in ("confusion", "mistakes")}, indent=1))
  return 0


def write_outputs(entry, res: dict, out, data_dir) -> list[str]:
  """Writes eval.json and the two pictures into the directory `out` (local
  or a URI; each file atomically); returns their paths."""
  from zoo.training import eval_plots
  from zoo.training.evaluate import load_split
  from zoo.training.workdir import as_path, write_atomic
  out = as_path(out)
  out.mkdir(parents=True, exist_ok=True)
  title = f"{entry.name} on {res['split']}"
  names = entry.class_names
  files = [eval_plots.plot_confusion(res["confusion"], names,
                                     out / "eval_confusion.png", title)]
  images = load_split(entry, res["split"], data_dir).images
  files.append(eval_plots.plot_mistakes(images, res["mistakes"], names,
                                        out / "eval_mistakes.png", title))
  files = [str(out / "eval.json")] + [str(f) for f in files]
  write_atomic(out / "eval.json",
               (json.dumps({**res, "files": files}, indent=1) + "\n").encode())
  return files
