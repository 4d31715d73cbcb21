"""`zoo info NAME [--card]`: layers, parameter count, config, baseline and
the weights card of shipped weights (--card: that card's JSON alone)."""
from __future__ import annotations

import argparse

from zoo.cli.common import plural


def add(sub) -> None:
  p = sub.add_parser("info", help="layers, parameters, config and baseline")
  p.add_argument("name", help="registered model (see `zoo list`)")
  p.add_argument("--card", action="store_true",
                 help="print only the weights card (JSON) of the shipped "
                      "pretrained weights")
  p.set_defaults(func=run)


def layer_summary(entry) -> list[tuple[str, str, int]]:
  """(module, parameter shapes, count) per Haiku module, sorted by module
  name as Haiku returns the parameters."""
  import jax
  params, _ = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                             entry.example_input())
  rows = []
  for module, leaves in params.items():
    desc = ", ".join(f"{k}{tuple(v.shape)}" for k, v in leaves.items())
    rows.append((module, desc, sum(v.size for v in leaves.values())))
  return rows


def card_summary(card: dict) -> list[str]:
  """A few lines of `card` for `zoo info`: what a user of the file needs."""
  w, i, o = card["weights"], card["input"], card["output"]
  e, b, h = card["evaluation"], card["baseline"], card["hardware"]
  lic = card["license"]
  shape = ", ".join(map(str, i["shape"]))
  if o["shape"][-1] == 1:
    output = o["meaning"]
  else:
    output = (f"{o['shape'][-1]} logits in this order: "
              + ", ".join(o["class_names"]))
  versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
  data = lic["dataset"]
  lines = [
      f"file        {w['file']} ({w['format'].split(':')[0]}), sha256 "
      f"{w['sha256']}",
      f"            params_sha256 {w['params_sha256']}",
      f"input       {i['dtype']} {i['layout'].split()[0]} ({shape}) in "
      f"[{i['range'][0]:g}, {i['range'][1]:g}]; from uint8: "
      f"{i['from_uint8']} (bit-exact: zoo.data.to_float)",
      f"output      {output}",
      f"accuracy    {100 * e['test_accuracy']:.2f}% test accuracy, loss "
      f"{e['test_loss']:.4f} (these weights, seed {e['seed']}); baseline "
      f"{b['summary']}",
  ]
  if card.get("features"):
    f = card["features"]
    lines.append(f"features    width {f['width']}: {f['what']}")
  lines += [
      f"reproduce   {card['reproduce']['command']} on {h['devices']}x "
      f"{h['device_kind']} ({h['machine']}); {versions}",
      f"license     weights {lic['weights']}; data {data['name']}: "
      f"{data['license']}" + (f" ({data['copyright']})"
                              if data.get("copyright") else ""),
  ]
  return lines


def run(args: argparse.Namespace) -> int:
  from zoo import cards, pretrained, registry
  entry = registry.get(args.name)
  if args.card:
    card = pretrained.shipped_card(entry)
    if card is None:
      raise pretrained.PretrainedNotAvailableError(
          "no weights card: " + pretrained._not_available(entry))
    print(cards.dumps(card), end="")
    return 0
  rows = layer_summary(entry)
  total = sum(r[2] for r in rows)
  print(f"{entry.name}: {entry.config['description']}")
  print(f"  dataset     {entry.dataset} (input {entry.input_shape}, "
        f"{entry.num_classes} classes: {', '.join(entry.class_names)})")
  print(f"  parameters  {total:,}")
  w = max(len(r[0]) for r in rows)
  for module, desc, count in rows:
    print(f"    {module:<{w}}  {desc:<40} {count:>12,}")
  print("  config")
  for section, values in entry.config.items():
    if isinstance(values, dict):
      print(f"    [{section}] " + ", ".join(f"{k}={v!r}"
                                          for k, v in values.items()))
  b = entry.baseline
  if b:
    print(f"  baseline    {100 * b['test_accuracy_mean']:.2f}% ± "
          f"{100 * b['test_accuracy_std']:.2f} test accuracy over "
          f"{plural(b['seeds'], 'seed')}, {plural(b['epochs'], 'epoch')}, "
          f"on {b['devices']}x "
          f"{b['device_kind']} ({b.get('date', '')}); reproduce: "
          f"{b['command']}")
    if b.get("pretrained"):
      print(f"  pretrained  zoo.get({entry.name!r}, pretrained=True): "
            f"{100 * b['pretrained']['test_accuracy']:.2f}% "
            f"(seed {b['pretrained']['seed']})")
    card = pretrained.shipped_card(entry)
    if card:
      print(f"  weights card  {pretrained.folder(entry.name)}/README.md and "
            f"config.json, entry.weights_card, zoo info {entry.name} --card")
      for line in card_summary(card):
        print(f"    {line}")
  else:
    print("  baseline    not measured yet (zoo baselines "
          f"{entry.name} measures it)")
  return 0
