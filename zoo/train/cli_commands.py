"""`zoo train` and `zoo eval`: thin wrappers over zoo.train and zoo.evaluate."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zoo import config as config_lib
from zoo.errors import ConfigValueError
from zoo.train import distributed, peers


def _parse_sets(items) -> dict:
  out = {}
  for item in items or []:
    if "=" not in item:
      raise config_lib.ConfigError(
          f"--set {item!r}: write key=value, e.g. optimizer.learning_rate=3e-4")
    key, value = item.split("=", 1)
    out[key.strip()] = config_lib.parse_value(value.strip())
  return out


def _add_common(p: argparse.ArgumentParser) -> None:
  p.add_argument("name", help="registered model (see `zoo list`)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data dir or folder with IDX files "
                      "(default: $ZOO_DATA_DIR, $TFDS_DATA_DIR, system paths)")
  p.add_argument("--workdir", default=None, help="run directory")


def _add_train(sub) -> None:
  p = sub.add_parser("train", help="train a model (resumes in --workdir)")
  _add_common(p)
  p.add_argument("--epochs", type=int)
  p.add_argument("--batch-size", type=int, help="global batch size")
  p.add_argument("--seed", type=int)
  p.add_argument("--devices", type=int, default=None,
                 help="use the first N local devices (default: all)")
  p.add_argument("--strategy", default="auto",
                 choices=["auto", "jit", "pmap", "mesh"],
                 help="auto: jit on one device, pmap on several")
  p.add_argument("--checkpoint-every", type=int, help="steps between saves")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="config override, e.g. optimizer.learning_rate=3e-4")
  p.add_argument("--coordinator-address", help="multi-host: host:port of "
                 "process 0 (as in jax.distributed.initialize)")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  p.add_argument("--init-timeout", type=float, metavar="SECONDS",
                 default=distributed.DEFAULT_INIT_TIMEOUT_S,
                 help="multi-host: how long to wait for every process to "
                      "join (default %(default)g)")
  p.add_argument("--peer-timeout", type=float, metavar="SECONDS",
                 default=distributed.DEFAULT_PEER_TIMEOUT_S,
                 help="multi-host: a process silent this long is lost; the "
                      "others exit with status 75 (default %(default)g)")
  p.add_argument("--no-progress", action="store_true",
                 help="a line per epoch instead of a progress bar (the "
                      "default when not a terminal)")
  p.set_defaults(func=run_train)


# Flags that set a config key (attribute -> key): an error about the key
# names the flag too.
_FLAG_KEYS = {"epochs": "train.epochs", "batch_size": "train.batch_size",
              "seed": "train.seed", "checkpoint_every": "train.checkpoint_every"}


def _check_train_args(args: argparse.Namespace) -> dict:
  """The config overrides of `zoo train`'s flags, after checking every flag
  that is not a config key; raises a ZooError before any device work."""
  if args.devices is not None and args.devices < 1:
    raise ConfigValueError("--devices", args.devices, "an int >= 1",
                           "the number of local devices to use; leave it out "
                           "to use them all")
  distributed.check_flags(args.coordinator_address, args.num_processes,
                          args.process_id, args.init_timeout,
                          args.peer_timeout)
  overrides = _parse_sets(args.set)
  for attr, key in _FLAG_KEYS.items():
    if getattr(args, attr) is not None:
      overrides[key] = getattr(args, attr)
  return overrides


def _with_flags(entry, overrides: dict, args: argparse.Namespace):
  """`registry.with_config`, with errors about a flag's key naming the flag."""
  from zoo import registry
  try:
    return registry.with_config(entry, overrides)
  except ConfigValueError as e:
    for attr, key in _FLAG_KEYS.items():
      if key == e.key and getattr(args, attr) is not None:
        flag = "--" + attr.replace("_", "-")
        raise ConfigValueError(f"{flag} ({key})", e.value, e.allowed,
                               e.hint) from None
    raise


def run_train(args: argparse.Namespace) -> int:
  from zoo import registry
  # Validate everything before any device work.
  overrides = _check_train_args(args)
  entry = _with_flags(registry.get(args.name), overrides, args)
  distributed.initialize(args.coordinator_address, args.num_processes,
                         args.process_id, timeout=args.init_timeout,
                         peer_timeout=args.peer_timeout)
  # With several processes, a lost one ends this one (peers.LOST_EXIT_CODE).
  with peers.watching(args.peer_timeout):
    from zoo.train.loop import PREEMPTED_EXIT_CODE, Preempted, train
    # A bar on a terminal; otherwise (batch jobs, pipes) a line per epoch as
    # it ends.
    progress = ("bar" if sys.stderr.isatty() and not args.no_progress else
                "lines")
    try:
      out = train(entry, workdir=args.workdir, data_dir=args.data_dir,
                  strategy=args.strategy, devices=args.devices,
                  progress=progress)
    except Preempted as e:
      print(f"zoo: preempted: {e}", file=sys.stderr)
      return PREEMPTED_EXIT_CODE
  r = out.result
  ips = r["train_images_per_second"]
  print(f"{r['model']}: test accuracy {100 * r['test_accuracy']:.2f}% "
        f"(loss {r['test_loss']:.4f}) after {r['epochs']} epochs, "
        f"{r['wall_seconds']:.1f} s wall, "
        + (f"{ips:,.0f} train images/s, " if ips else "")
        + f"{r['devices']} device(s) x {r['processes']} process(es) "
        f"[{r['strategy']}, {r['loop']} loop]")
  if args.workdir:
    print(f"results in {Path(args.workdir).resolve()}: result.json, "
          "metrics.jsonl, learning_curve.png, checkpoints/")
  return 0


def _add_eval(sub) -> None:
  p = sub.add_parser("eval", help="evaluate saved parameters on the test set")
  _add_common(p)
  p.add_argument("--weights", default=None,
                 help=".npz weights file (default: newest checkpoint in "
                      "--workdir)")
  p.add_argument("--split", default=None, help="split, default the test split")
  p.set_defaults(func=run_eval)


def _flat_overrides(cfg: dict, prefix: str = "") -> dict:
  """A resolved config as dotted-key overrides ({"train.epochs": 2, ...})."""
  out = {}
  for key, value in cfg.items():
    if isinstance(value, dict):
      out.update(_flat_overrides(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def run_eval(args: argparse.Namespace) -> int:
  """Evaluates --weights, or the newest good checkpoint of --workdir. With
  --workdir the run's own resolved config is used (model settings, test
  split, classes, eval batch), so the accuracy is result.json's."""
  from zoo import registry
  from zoo.train import weights
  from zoo.train.evaluate import evaluate_model
  if not args.weights and not args.workdir:
    raise config_lib.ConfigError("zoo eval needs --workdir DIR (a zoo train "
                                 "run) or --weights FILE (.npz).")
  if args.workdir and not Path(args.workdir).is_dir():
    raise config_lib.ConfigError(f"--workdir {args.workdir}: no such "
                                 "directory; give the --workdir of a zoo "
                                 "train run.")
  if args.weights and not (Path(args.weights).is_file() or
                           Path(args.weights).is_dir()):
    raise config_lib.ConfigError(f"--weights {args.weights}: no such file; "
                                 "give a .npz weights file (zoo.train.weights"
                                 ".save writes one) or a checkpoint directory "
                                 "(DIR/checkpoints/step_N).")
  entry = registry.get(args.name)
  def run_entry(cfg):
    if cfg.get("name") and cfg["name"] != entry.name:
      raise config_lib.ConfigError(
          f"{args.workdir} holds a run of {cfg['name']!r}, not "
          f"{entry.name!r}: run `zoo eval {cfg['name']} --workdir "
          f"{args.workdir}`.")
    return registry.with_config(entry, _flat_overrides(cfg))

  if args.workdir:  # the run's own config; its checkpoint is read once
    entry, params, model_state = weights.load_run(args.workdir, run_entry)
  if args.weights:
    params, model_state = weights.load(entry, args.weights)
  res = evaluate_model(entry, params, model_state, data_dir=args.data_dir,
                       split=args.split)
  print(json.dumps(res, indent=1))
  return 0


COMMANDS = [_add_train, _add_eval]
