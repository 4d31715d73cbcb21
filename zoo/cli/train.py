"""`zoo train NAME`: validate every flag, join the multi-host job if any,
train (resuming in --workdir), print the result."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.cli.common import add_common, parse_sets, plural
from zoo.errors import ConfigValueError
from zoo.training import distributed


def add(sub) -> None:
  p = sub.add_parser("train", help="train a model (resumes in --workdir)")
  add_common(p)
  p.add_argument("--epochs", type=int,
                 help="passes over the training split (default: the config's)")
  p.add_argument("--steps", type=int,
                 help="optimizer steps in all, instead of --epochs")
  p.add_argument("--eval-every", type=int, metavar="STEPS",
                 help="also evaluate every STEPS steps (metrics.jsonl rows)")
  p.add_argument("--ema-decay", type=float, metavar="DECAY",
                 help="evaluate a moving average of the parameters, e.g. "
                 "0.999")
  p.add_argument("--batch-size", type=int, help="global batch size")
  p.add_argument("--seed", type=int,
                 help="seeds initialisation, shuffling and dropout (default: "
                      "the config's)")
  p.add_argument("--devices", type=int, default=None,
                 help="use the first N local devices (default: all)")
  p.add_argument("--strategy", default="auto",
                 choices=["auto", "jit", "pmap", "mesh"],
                 help="auto: jit on one device, mesh on several in one "
                      "process, pmap across processes")
  p.add_argument("--checkpoint-every", type=int, help="steps between saves")
  p.add_argument("--data", metavar="FILE.npz",
                 help="train on your own arrays: an .npz with train_images, "
                      "train_labels, test_images, test_labels")
  p.add_argument("--num-classes", type=int,
                 help="with --data: classes of the head (default: max label "
                      "+ 1)")
  p.add_argument("--init-from", metavar="pretrained|FILE|DIR",
                 help="start from the shipped pretrained weights, a weights "
                      "file (.safetensors) or a model folder (a head of "
                      "another shape starts fresh); "
                      "--set train.trainable=head trains only the head")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="config override, e.g. optimizer.learning_rate=3e-4")
  p.add_argument("--coordinator-address", help="multi-host: host:port of "
                 "process 0 (as in jax.distributed.initialize)")
  p.add_argument("--num-processes", type=int,
                 help="multi-host: how many processes the job has")
  p.add_argument("--process-id", type=int,
                 help="multi-host: this process's index, 0..N-1 (0 is the "
                      "coordinator)")
  p.add_argument("--init-timeout", type=float, metavar="SECONDS",
                 default=distributed.DEFAULT_INIT_TIMEOUT_S,
                 help="multi-host: how long to wait for every process to "
                      "join (default %(default)g)")
  p.add_argument("--heartbeat-timeout", type=float, metavar="SECONDS",
                 default=distributed.DEFAULT_HEARTBEAT_TIMEOUT_S,
                 help="multi-host: JAX ends the other processes once one "
                      "has been silent this long (default %(default)g)")
  p.add_argument("--fresh", action="store_true",
                 help="start over: move the existing checkpoints aside "
                      "instead of resuming")
  p.add_argument("--no-progress", action="store_true",
                 help="a line per epoch instead of a progress bar (the "
                      "default when not a terminal)")
  p.set_defaults(func=run)


# Flags that set a config key (attribute -> key): an error about the key
# names the flag too.
_FLAG_KEYS = {"epochs": "train.epochs", "batch_size": "train.batch_size",
              "seed": "train.seed", "checkpoint_every": "train.checkpoint_every",
              "init_from": "train.init_from", "steps": "train.steps",
              "eval_every": "train.eval_every",
              "ema_decay": "train.ema_decay"}


def _check_train_args(args: argparse.Namespace) -> dict:
  """The config overrides of `zoo train`'s flags, after checking every flag
  that is not a config key; raises a ZooError before any device work."""
  if args.steps is not None and args.steps < 1:
    raise ConfigValueError("--steps (train.steps)", args.steps, "an int >= 1",
                           "optimizer steps in all; leave it out to train "
                           "for --epochs")
  if args.devices is not None and args.devices < 1:
    raise ConfigValueError("--devices", args.devices, "an int >= 1",
                           "the number of local devices to use; leave it out "
                           "to use them all")
  distributed.check_flags(args.coordinator_address, args.num_processes,
                          args.process_id, args.init_timeout,
                          args.heartbeat_timeout)
  overrides = parse_sets(args.set)
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


def _own_data(entry, args: argparse.Namespace):
  """(entry, train()'s own-data arguments) for --data FILE.npz, the arrays
  read safely and checked (and the entry sized to them) here, before any
  device work; (entry, {}) without --data. A missing --init-from file is
  reported here too."""
  from pathlib import Path as _Path
  from zoo.errors import WeightsNotFoundError
  init_from = entry.config["train"]["init_from"]
  if init_from not in ("", "pretrained") and not _Path(init_from).exists():
    raise WeightsNotFoundError(
        f"--init-from {init_from}: no such file; pass a weights file written "
        "by zoo.weights.save (.safetensors), a model folder, or "
        "'pretrained'.")
  if args.data is None:
    if args.num_classes is not None:
      raise ConfigValueError("--num-classes", args.num_classes,
                             "used with --data FILE.npz",
                             "leave it out for the model's own dataset")
    return entry, {}
  from zoo.data import arrays
  from zoo.training import run as run_lib
  train, test = arrays.read_npz(args.data)
  own = {"data": train, "test_data": test, "num_classes": args.num_classes}
  entry, _, _ = run_lib.load_data(entry, own)
  return entry, own


def run(args: argparse.Namespace) -> int:
  from zoo import registry
  # Validate everything before any device work.
  overrides = _check_train_args(args)
  entry = _with_flags(registry.get(args.name), overrides, args)
  entry, own_data = _own_data(entry, args)
  distributed.initialize(args.coordinator_address, args.num_processes,
                         args.process_id, timeout=args.init_timeout,
                         heartbeat_timeout=args.heartbeat_timeout)
  with distributed.stop_alone_on_error():
    from zoo.training.loop import PREEMPTED_EXIT_CODE, Preempted, train
    # A bar on a terminal; otherwise (batch jobs, pipes) a line per epoch as
    # it ends.
    progress = ("bar" if sys.stderr.isatty() and not args.no_progress else
                "lines")
    try:
      out = train(entry, workdir=args.workdir, data_dir=args.data_dir,
                  strategy=args.strategy, devices=args.devices,
                  progress=progress, resume=not args.fresh, **own_data)
    except Preempted as e:
      how = "preempted" if e.exit_code == PREEMPTED_EXIT_CODE else "interrupted"
      print(f"zoo: {how}: {e}", file=sys.stderr)
      return e.exit_code
  r = out.result
  ips = r["train_images_per_second"]
  print(f"{r['model']}: test accuracy {100 * r['test_accuracy']:.2f}% "
        f"(loss {r['test_loss']:.4f}) after "
        + (plural(r["steps"], "step") if r["config"]["train"]["steps"]
           else plural(r["epochs"], "epoch")) + ", "
        + f"{r['wall_seconds']:.1f} s wall, "
        + (f"{ips:,.0f} train images/s, " if ips else "")
        + f"{r['devices']} device(s) x {r['processes']} process(es) "
        f"[{r['strategy']}, {r['loop']} loop]")
  if args.workdir:
    from zoo.training.workdir import is_remote
    where = (args.workdir if is_remote(args.workdir)
             else Path(args.workdir).resolve())
    print(f"results in {where}: result.json, "
          "metrics.jsonl, learning_curve.png, checkpoints/")
  return 0
