"""`zoo info NAME`: layers, parameter count, config and baseline."""
from __future__ import annotations

import argparse


def add(sub) -> None:
  p = sub.add_parser("info", help="layers, parameters, config and baseline")
  p.add_argument("name")
  p.set_defaults(func=run)


def layer_summary(entry) -> list[tuple[str, str, int]]:
  """(module, parameter shapes, count) per Haiku module, in init order."""
  import jax
  params, _ = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                             entry.example_input())
  rows = []
  for module, leaves in params.items():
    desc = ", ".join(f"{k}{tuple(v.shape)}" for k, v in leaves.items())
    rows.append((module, desc, sum(v.size for v in leaves.values())))
  return rows


def run(args: argparse.Namespace) -> int:
  from zoo import registry
  entry = registry.get(args.name)
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
          f"{b['seeds']} seeds, {b['epochs']} epochs, on {b['devices']}x "
          f"{b['device_kind']} ({b.get('date', '')}); reproduce: "
          f"{b['command']}")
    if b.get("pretrained"):
      print(f"  pretrained  zoo.get({entry.name!r}, pretrained=True): "
            f"{100 * b['pretrained']['test_accuracy']:.2f}% "
            f"(seed {b['pretrained']['seed']})")
  else:
    print("  baseline    not measured yet (zoo baselines "
          f"{entry.name} measures it)")
  return 0
