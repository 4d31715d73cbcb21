"""Writes docs/models/: one page per registered model and index.md, from the
registry, the weight cards (zoo/pretrained/<name>.json) and the measured
baselines (zoo/baselines.json).

    python docs/model_pages.py           # (re)write every page and index.md
    python docs/model_pages.py --images  # also re-evaluate the shipped weights
                                         # for docs/models/images/
    python docs/model_pages.py --check   # write nothing; exit 1 listing stale,
                                         # missing or extra pages and images

The pages are a pure function of the checkout (no dates of generation, no
absolute paths), so `--check` and zoo_tests/test_docs_model_pages.py can
tell a stale page from a current one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))  # the checkout's zoo, as docs/conf.py does

import zoo  # noqa: E402
from zoo import cards, pretrained  # noqa: E402
from zoo.cli.info import layer_summary  # noqa: E402
from zoo.pretrained import shipped_card  # noqa: E402
from zoo.data import catalog  # noqa: E402

OUT_DIR = REPO / "docs" / "models"
IMAGES = "images"
REGENERATE = "python docs/model_pages.py"
# How many of the most confident mistakes the mistakes picture shows.
MISTAKES = 15
# A `[model]` override per architecture for the pages' override example.
OVERRIDES = {
    "cnn": ("hidden_size", 256),
    "cnn_bn": ("hidden_size", 256),
    "mlp": ("hidden_sizes", (512, 256)),
    "lstm": ("hidden_size", 64),
    "vit": ("depth", 2),
    "logistic": ("initializer", "glorot_uniform"),
}
SKIP = "<!-- docs-test: skip: {} -->"
# Datasets the machines this project measures on cannot download.
UNREACHABLE = {"mnist"}


# --- formatting -------------------------------------------------------------

def pct(x: float) -> str:
  """0.92291 -> '92.29%'."""
  return f"{100 * x:.2f}%"


def duration(seconds: float) -> str:
  """A rounded human duration: '14 s', '14 minutes', '1.5 hours'."""
  if seconds < 90:
    return f"{max(1, round(seconds))} s"
  if seconds < 90 * 60:
    return f"{round(seconds / 60)} minutes"
  return f"{seconds / 3600:.1f} hours"


def py(value) -> str:
  """A Python literal, strings in double quotes like the docs' code."""
  if isinstance(value, str):
    return json.dumps(value)
  return repr(value)


def fence(language: str, code: str, skip: str | None = None) -> str:
  """A fenced code block, preceded by the docs-test skip marker if `skip`."""
  head = SKIP.format(skip) + "\n" if skip else ""
  return f"{head}```{language}\n{code.rstrip()}\n```\n"


def figure(path: str, alt: str, caption: str) -> str:
  """A MyST figure with a one-line caption."""
  return f"```{{figure}} {path}\n:alt: {alt}\n\n{caption}\n```\n"


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
  """A Markdown table; `align` holds one of 'l'/'r' per column."""
  align = align or "l" * len(header)
  rule = ["---:" if a == "r" else "---" for a in align]
  lines = [header, rule] + rows
  return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def toml_value(value) -> str:
  """A TOML literal of a config value (str, bool, int, float or list)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float)):
    return repr(value)
  if isinstance(value, str):
    return json.dumps(value)  # a TOML basic string
  if isinstance(value, (list, tuple)):
    return "[" + ", ".join(toml_value(v) for v in value) + "]"
  raise TypeError(f"no TOML literal for {value!r}")


def to_toml(config: dict) -> str:
  """The resolved config as TOML (top-level keys, then one table per
  section); checked to read back as the same config."""
  lines = [f"{k} = {toml_value(v)}" for k, v in config.items()
           if not isinstance(v, dict)]
  for section, values in config.items():
    if isinstance(values, dict):
      lines += ["", f"[{section}]"]
      lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
  text = "\n".join(lines) + "\n"
  if tomllib.loads(text) != json.loads(json.dumps(config)):
    raise ValueError("the config does not survive its TOML form")
  return text


# --- facts about a model ----------------------------------------------------

def dataset_title(entry) -> str:
  """'Fashion-MNIST' for fashion_mnist (the catalog's title, else the name)."""
  return catalog.get(entry.dataset).title or entry.dataset


def architecture_class(entry) -> str:
  """Dotted path of the architecture's constructor, e.g.
  zoo.models.cnn.SmallCNN."""
  build = entry.architecture.build
  return f"{build.__module__}.{build.__qualname__}"


def state_size(entry) -> int:
  """Number of Haiku state values (BatchNorm statistics), 0 if stateless."""
  import jax
  _, state = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                            entry.example_input())
  return sum(x.size for x in jax.tree.leaves(state))


def feature_width(entry) -> int:
  """Width of `entry.features`, from shapes alone."""
  import jax
  params, state = jax.eval_shape(entry.init_with_state,
                                 jax.random.PRNGKey(0), entry.example_input())
  out, _ = jax.eval_shape(entry.features_transformed.apply, params, state,
                          None, entry.example_input())
  return out.shape[-1]


def output_text(entry) -> str:
  """What the logits mean, in class order."""
  names = entry.class_names
  if entry.is_binary:
    return (f"(batch, 1): one logit per image; > 0 (sigmoid > 0.5) means "
            f"{names[1]}, otherwise {names[0]}")
  return (f"(batch, {entry.num_classes}) logits, in this class order: "
          + ", ".join(names))


def curve_path(name: str) -> str:
  """Seed 0's learning curve (`zoo baselines --curves-dir docs/baselines`),
  relative to the pages."""
  return f"../baselines/{name}.png"


def image_paths(name: str) -> dict[str, str]:
  """The pictures `--images` makes for model `name`, relative to the pages."""
  return {"confusion": f"{IMAGES}/{name}_confusion.png",
          "mistakes": f"{IMAGES}/{name}_mistakes.png",
          "record": f"{IMAGES}/{name}.json"}


# --- page sections ----------------------------------------------------------

def summary_section(entry, card, params: int) -> str:
  """One paragraph: what it is, its data, its size, whether weights ship."""
  h, w, c = entry.input_shape
  classes = ", ".join(entry.class_names)
  text = (f"{entry.config['description']} Architecture `{entry.arch}` "
          f"(`{architecture_class(entry)}`) with {params:,} parameters, for "
          f"{dataset_title(entry)}: {h}x{w}x{c} images in "
          f"{entry.num_classes} classes ({classes}). ")
  if card:
    text += (f"Pretrained weights ship with zoo: seed 0 of its baseline, "
             f"{pct(card['evaluation']['test_accuracy'])} test accuracy, "
             f"loaded by `zoo.get({py(entry.name)}, pretrained=True)`.")
  elif entry.baseline:
    text += "Its baseline is measured; no weights ship."
  elif entry.dataset not in UNREACHABLE:
    text += (f"Its baseline is not measured yet and no weights ship; "
             f"`{measure_command(entry)}` measures it.")
  else:
    text += (f"{dataset_title(entry)} is not reachable from the machines this "
             "project measures on, so this model has no measured baseline "
             "and no shipped weights; "
             f"`{measure_command(entry)}` measures it on a machine where "
             f"{dataset_title(entry)} downloads.")
  return text + "\n"


def measure_command(entry) -> str:
  """The command that measures (and records) the baseline of `entry`."""
  if entry.baseline:
    return entry.baseline["command"]
  return f"zoo baselines '{entry.name}' --seeds 3"


def architecture_section(entry, rows) -> str:
  """The layer table of `zoo info`, the input, output and features."""
  total = sum(r[2] for r in rows)
  body = [[f"`{m}`", desc, f"{n:,}"] for m, desc, n in rows]
  body.append(["**total**", "", f"**{total:,}**"])
  h, w, c = entry.input_shape
  parts = [
      "## Architecture\n",
      "Parameters per Haiku module (`zoo info "
      f"{entry.name}` prints the same table):\n",
      table(["module", "parameters (shape)", "count"], body, "llr"),
  ]
  state = state_size(entry)
  if state:
    parts.append(f"Besides the parameters, the model keeps {state:,} values "
                 "of Haiku state (BatchNorm moving statistics), which "
                 "evaluation uses and the optimizer does not train.\n")
  feature = cards.FEATURES.get(entry.arch)
  parts.append(
      f"- **Input:** float32 images (batch, {h}, {w}, {c}), NHWC, values in "
      "[0, 1] with no mean or std subtracted (`zoo.data.to_float` converts "
      "uint8 images).\n"
      f"- **Output:** {output_text(entry)}.\n"
      + (f"- **Features:** `entry.features(params, images, model_state)` "
         f"gives (batch, {feature_width(entry)}): {feature}.\n"
         if feature else ""))
  return "\n".join(parts)


def override_example(entry) -> tuple[str, object] | None:
  """A `[model]` key and a new value for it, for the override example (its
  current value for an architecture not in OVERRIDES; None without one)."""
  key, value = OVERRIDES.get(entry.arch, (None, None))
  if key in entry.config["model"]:
    return key, value
  keys = [k for k in entry.config["model"] if k != "arch"]
  return (keys[0], entry.config["model"][keys[0]]) if keys else None


def override_code(entry, key: str, value) -> str:
  """A script that builds the model with one `[model]` key overridden."""
  return (f"import zoo\n\n"
          f"entry = zoo.get({py(entry.name)}, {key}={py(value)})\n"
          f"print(entry.config[\"model\"][{py(key)}], entry.param_count(), "
          f"\"parameters\")\n")


def set_flags(example) -> str:
  """`--set` words for the command-line override example."""
  flags = ["optimizer.learning_rate=3e-4"]
  if example:
    key, value = example
    text = value if isinstance(value, str) else toml_value(value)
    flags.insert(0, f"model.{key}={text}")
  return " ".join("--set " + (f"'{f}'" if " " in f else f) for f in flags)


def config_section(entry) -> str:
  """The resolved config as TOML, and how to override it."""
  example = override_example(entry)
  kwargs = [
      "Keyword arguments of `zoo.get` override the `[model]` section (a "
      "changed model has no baseline and loads no pretrained weights):\n",
      fence("python", override_code(entry, *example)),
  ] if example else []
  return "\n".join([
      "## Config\n",
      f"The resolved config (`zoo.get({py(entry.name)}).config`): "
      f"`zoo/configs/{entry.name}.toml` over the defaults of "
      "`zoo.config` and of the architecture's constructor.\n",
      fence("toml", to_toml(entry.config)),
      *kwargs,
      "On the command line, `--set KEY=VALUE` overrides any key, e.g.:\n",
      fence("bash", f"zoo train {entry.name} {set_flags(example)} "
                    "--workdir run",
            skip=f"trains {entry.name} for "
                 f"{entry.config['train']['epochs']} epochs"),
      "See [configs and the command line](../guides/configs_and_cli.md) for "
      "every key.\n",
  ])


def baseline_table(b: dict) -> str:
  """The measured baseline: accuracy, seeds, loss, hardware, versions."""
  seeds = ", ".join(f"{pct(a)} (seed {i})"
                    for i, a in enumerate(b["test_accuracy_per_seed"]))
  versions = ", ".join(f"{k} {v}" for k, v in sorted(b["versions"].items()))
  rows = [
      ["test accuracy", f"{pct(b['test_accuracy_mean'])} ± "
                        f"{100 * b['test_accuracy_std']:.2f} (mean ± sample "
                        f"std over {b['seeds']} seeds)"],
      ["per seed", seeds],
      ["test loss", f"{b['test_loss_mean']:.4f} ± {b['test_loss_std']:.4f}"],
      ["epochs", str(b["epochs"])],
      ["device", f"{b['devices']}x {b['device_kind']} ({b['machine']}), "
                 f"about {duration(b['wall_seconds_mean'])} per seed"],
      ["versions", versions],
      ["date", b.get("date") or "—"],
  ]
  p = b.get("pretrained")
  if p:
    rows.append(["shipped weights", f"seed {p['seed']}: "
                 f"{pct(p['test_accuracy'])} test accuracy, test loss "
                 f"{p['test_loss']:.4f}"])
  return table(["measure", "value"], rows)


def baseline_section(entry, card) -> str:
  """The baseline, its command, and the curve and evaluation pictures."""
  name, b = entry.name, entry.baseline
  if not b:
    return "\n".join([
        "## Baseline\n",
        "Not measured. Where the data is available, this trains three seeds "
        "and records the baseline in `zoo/baselines.json`, shipping seed 0's "
        "weights:\n",
        fence("bash", measure_command(entry),
              skip=f"needs {dataset_title(entry)}, which is not installed on "
                   "this project's machines"),
    ])
  parts = [
      "## Baseline\n",
      f"Measured on the full {entry.config['data']['test_split']} split by "
      "`zoo baselines` and recorded in `zoo/baselines.json` "
      f"(`zoo.get({py(name)}).baseline`):\n",
      baseline_table(b),
      "This reproduces it (it trains every seed, then rewrites the record "
      "and the shipped weights):\n",
      fence("bash", b["command"],
            skip=f"trains {b['seeds']} seeds of {b['epochs']} epochs, about "
                 f"{duration(b['wall_seconds_mean'])} each"),
      figure(curve_path(name), f"learning curves of {name}",
             "Seed 0's loss and accuracy per epoch, on the training and test "
             "splits."),
  ]
  if card:
    images = image_paths(name)
    parts += [
        figure(images["confusion"], f"confusion matrix of {name}",
               "Confusion matrix of the shipped weights on the test split "
               "(rows: true class, columns: predicted class)."),
        figure(images["mistakes"], f"most confident mistakes of {name}",
               f"The {MISTAKES} most confident mistakes of the shipped "
               "weights on the test split (true -> predicted, probability, "
               "test index)."),
        f"`zoo eval {name} --weights pretrained --out DIR` writes both "
        "pictures, with the metrics in `eval.json`.\n",
    ]
  return "\n".join(parts)


def load_subset(entry) -> str:
  """Which test images the load example evaluates."""
  if entry.config["data"]["classes"]:
    return (f"the {' and '.join(entry.class_names)} images among the first "
            "1000 test images")
  return "the first 1000 test images"


def load_code(entry) -> str:
  """A self-contained script: the shipped weights on 1000 test images."""
  name, classes = entry.name, entry.config["data"]["classes"]
  load = (f'test = data.load({py(entry.dataset)}, "test[:1000]"'
          + (f", classes={py(classes)})" if classes else ")"))
  if entry.is_binary:
    predict = "predicted = (logits[:, 0] > 0).astype(int)"
  else:
    predict = "predicted = logits.argmax(-1)"
  return (
      "import zoo\nfrom zoo import data\n\n"
      f"entry = zoo.get({py(name)}, pretrained=True)\n"
      f"{load}\n"
      "logits, _ = entry.apply_with_state(entry.params, entry.model_state, "
      "None,\n"
      "                                   data.to_float(test.images))\n"
      f"{predict}\n"
      "print(f\"accuracy on {len(test.labels)} test images: "
      "{(predicted == test.labels).mean():.2%}\")\n"
      "print(\"first five predicted:\", [entry.class_names[i] for i in "
      "predicted[:5]])\n"
      "print(\"first five true:     \", [entry.class_names[i] for i in "
      "test.labels[:5]])\n")


def random_init_code(entry) -> str:
  """A self-contained script: the model built and run with random weights,
  on the entry's example input (no data needed)."""
  return (
      "import jax\nimport zoo\n\n"
      f"entry = zoo.get({py(entry.name)})\n"
      "images = entry.example_input(batch=2)  # zeros, (2, "
      + ", ".join(map(str, entry.input_shape)) + ")\n"
      "params, model_state = entry.init_with_state(jax.random.PRNGKey(0), "
      "images)\n"
      "logits, _ = entry.apply_with_state(params, model_state, None, images)\n"
      "print(logits.shape, entry.param_count(), \"parameters\")\n")


def load_section(entry, card) -> str:
  """How to use it: the shipped weights, or the model with random init."""
  if card:
    return "\n".join([
        "## Load it\n",
        f"The shipped weights, on {load_subset(entry)}:\n",
        fence("python", load_code(entry)),
        "`entry.apply_with_state` works for every model (a model without "
        "BatchNorm has the state `{}`); see [pretrained weights, cards and "
        "features](../guides/pretrained.md).\n",
    ])
  return "\n".join([
      "## Use it\n",
      "No weights ship, so this builds the model with random weights and "
      "runs it on a batch of blank images:\n",
      fence("python", random_init_code(entry)),
      f"`zoo train {entry.name} --workdir DIR` trains it (with "
      f"{dataset_title(entry)} available) and "
      "`zoo.training.run_weights.from_workdir` loads the result.\n",
  ])


def numpy_code(entry, card) -> str:
  """The card's load-without-zoo lines, made runnable on the shipped file."""
  return ("from zoo import pretrained\n\n"
          f"path = pretrained.path({py(entry.name)})  # the shipped model.safetensors\n"
          + "\n".join(card["weights"]["load_without_zoo"]) + "\n"
          "print(sorted(params))\n")


def weights_section(entry, card) -> str:
  """The shipped file, its digests and licenses, from its card."""
  if not card:
    return "\n".join([
        "## Weights and license\n",
        "No weights ship with zoo for this model, so it has no weight card. "
        "The code is Apache-2.0 (see LICENSE).\n",
    ])
  w, lic = card["weights"], card["license"]
  data = lic["dataset"]
  copyright = f", {data['copyright']}" if data.get("copyright") else ""
  rows = [
      ["file", f"`{w['path_in_package']}` ({', '.join(w['dtypes'])})"],
      ["sha256", f"`{w['sha256']}`"],
      ["params_sha256", f"`{w['params_sha256']}`"],
      ["weights license", lic["weights"]],
      ["dataset license", f"{data['name']}: {data['license']}{copyright} "
                          f"(<{data['url']}>)"],
  ]
  return "\n".join([
      "## Weights and license\n",
      f"The weights are a safetensors file in a Hub-style folder, "
      f"`zoo/pretrained/{entry.name}/` (`model.safetensors`, `config.json`, "
      "`README.md`); its weight card (`entry.weights_card`, in config.json "
      "and, with Hub metadata, in README.md) records the input, output, "
      "evaluation, hardware, versions and licenses.\n",
      table(["field", "value"], rows),
      "`params_sha256` is `zoo.fingerprint.params_sha256` of the "
      "parameters. The card:\n",
      fence("bash", f"zoo info {entry.name} --card"),
      "With the safetensors library alone (zoo only finds the file here):\n",
      fence("python", numpy_code(entry, card)),
  ])


# Hand-written notes on how a model's config was chosen, by model name: the
# one part of a page that is not derived from the registry, card or baseline.
NOTES_FILE = REPO / "docs" / "model_notes.toml"


def notes_section(name: str) -> str:
  """The model's notes from NOTES_FILE, or nothing when it has none."""
  notes = tomllib.loads(NOTES_FILE.read_text()).get(name) if \
      NOTES_FILE.exists() else None
  if not notes:
    return ""
  return "## Notes\n\n" + notes.strip() + "\n"


def render_page(name: str) -> str:
  """The Markdown page of registered model `name`."""
  entry = zoo.get(name)
  card = shipped_card(entry)
  rows = layer_summary(entry)
  return "\n".join(part for part in [
      f"# {name}\n",
      summary_section(entry, card, sum(r[2] for r in rows)),
      architecture_section(entry, rows),
      config_section(entry),
      baseline_section(entry, card),
      notes_section(name),
      load_section(entry, card),
      weights_section(entry, card),
  ] if part)


def index_row(name: str) -> list[str]:
  """One row of the models table."""
  entry = zoo.get(name)
  b = entry.baseline
  accuracy = (f"{pct(b['test_accuracy_mean'])} ± "
              f"{100 * b['test_accuracy_std']:.2f}" if b else "—")
  return [f"[`{name}`]({name}.md)", f"`{entry.arch}`",
          f"{entry.param_count():,}", dataset_title(entry), accuracy,
          "yes" if shipped_card(entry) else "no"]


def render_index(names: list[str]) -> str:
  """docs/models/index.md: the table of every model and the toctree."""
  rows = [index_row(n) for n in names]
  toctree = "\n".join(names)
  return "\n".join([
      "# Models\n",
      f"Every registered model ({len(names)}), with its architecture, size, "
      "dataset, measured test accuracy (mean ± sample std over seeds, from "
      "`zoo/baselines.json`; — where not measured) and whether pretrained "
      "weights ship. Each page has the layers, the full config, the "
      "baseline with its command, and code that runs the model. `zoo list` "
      "and `zoo info NAME` print the same facts.\n",
      table(["model", "architecture", "parameters", "dataset",
             "test accuracy", "weights"], rows, "llrlrl"),
      f"```{{toctree}}\n:hidden:\n:maxdepth: 1\n\n{toctree}\n```\n",
  ])


def render_all() -> dict[str, str]:
  """Every page's text, by file name under docs/models/."""
  names = zoo.list_models()
  pages = {f"{n}.md": render_page(n) for n in names}
  pages["index.md"] = render_index(names)
  return pages


# --- writing and checking ---------------------------------------------------

def write(out_dir: Path, pages: dict[str, str]) -> list[str]:
  """Writes the pages that differ and removes pages of no model; returns
  what it changed."""
  out_dir.mkdir(parents=True, exist_ok=True)
  changed = []
  for file, text in sorted(pages.items()):
    path = out_dir / file
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
      path.write_text(text, encoding="utf-8")
      changed.append(f"wrote {file}")
  for path in sorted(out_dir.glob("*.md")):
    if path.name not in pages:
      path.unlink()
      changed.append(f"removed {path.name}")
  return changed


def page_problems(out_dir: Path, pages: dict[str, str]) -> list[str]:
  """Stale, missing and extra pages under `out_dir`."""
  problems = []
  for file, text in sorted(pages.items()):
    path = out_dir / file
    if not path.is_file():
      problems.append(f"missing: {file}")
    elif path.read_text(encoding="utf-8") != text:
      problems.append(f"stale: {file}")
  problems += [f"extra: {p.name} (no registered model)"
               for p in sorted(out_dir.glob("*.md")) if p.name not in pages]
  return problems


def image_record(name: str, out_dir: Path) -> dict | None:
  """What images/<name>.json says the pictures were made from."""
  path = out_dir / image_paths(name)["record"]
  return json.loads(path.read_text()) if path.is_file() else None


def image_problems(out_dir: Path) -> list[str]:
  """Pictures of shipped weights that are missing, or were made from other
  weights than the ones shipped now."""
  problems = []
  for name in zoo.list_models():
    card = shipped_card(zoo.get(name))
    if not card:
      continue
    files = image_paths(name)
    problems += [f"missing image: {files[k]}" for k in ("confusion",
                 "mistakes", "record") if not (out_dir / files[k]).is_file()]
    record = image_record(name, out_dir)
    if record and (record["params_sha256"] != card["weights"]["params_sha256"]
                   or record["weights_sha256"] !=
                   pretrained.sha256(pretrained.path(name))):
      problems.append(f"stale images: {files['record']} records other "
                      "weights than the shipped ones")
  return problems + extra_images(out_dir)


def extra_images(out_dir: Path) -> list[str]:
  """Files under images/ that belong to no model with shipped weights."""
  wanted = {Path(f).name for name in zoo.list_models()
            if shipped_card(zoo.get(name))
            for f in image_paths(name).values()}
  folder = out_dir / IMAGES
  found = sorted(folder.iterdir()) if folder.is_dir() else []
  return [f"extra image: {IMAGES}/{p.name}" for p in found
          if p.name not in wanted]


def evaluate_for_images(name: str, out_dir: Path) -> None:
  """Runs `zoo eval NAME --weights pretrained` on the test split and keeps
  its two pictures and a record of the weights and accuracy behind them."""
  digest = shipped_card(zoo.get(name))["weights"]["params_sha256"]
  files = image_paths(name)
  (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
  args = ["eval", name, "--weights", "pretrained", "--mistakes",
          str(MISTAKES), "--out"]
  env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  with tempfile.TemporaryDirectory() as tmp:
    # The checkout's zoo, as `zoo eval` (python -m zoo.cli).
    subprocess.run([sys.executable, "-m", "zoo.cli", *args, tmp], check=True,
                   cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    result = json.loads((Path(tmp) / "eval.json").read_text())
    if result["params_sha256"] != digest:
      raise SystemExit(f"{name}: zoo eval evaluated params_sha256 "
                       f"{result['params_sha256']}, not the {digest} of the "
                       "shipped weights' card")
    shutil.copyfile(Path(tmp) / "eval_confusion.png",
                    out_dir / files["confusion"])
    shutil.copyfile(Path(tmp) / "eval_mistakes.png",
                    out_dir / files["mistakes"])
  record = {
      "model": name,
      "weights": f"zoo/pretrained/{name}/model.safetensors",
      "weights_sha256": pretrained.sha256(pretrained.path(name)),
      "params_sha256": digest,
      "command": " ".join(["zoo", *args, "DIR"]),
      "split": result["split"],
      "examples": result["examples"],
      "accuracy": result["accuracy"],
      "loss": result["loss"],
  }
  (out_dir / files["record"]).write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
  """The command line; returns the exit status."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 listing stale, missing or "
                           "extra pages and images")
  parser.add_argument("--images", action="store_true",
                      help="also evaluate each model's shipped weights on "
                           "the test split for its pictures (slow)")
  parser.add_argument("--out", type=Path, default=OUT_DIR,
                      help="the pages' folder (default docs/models)")
  args = parser.parse_args(argv)
  pages = render_all()
  if args.check:
    problems = page_problems(args.out, pages) + image_problems(args.out)
    for line in problems:
      print(line)
    if problems:
      print(f"regenerate with: {REGENERATE}"
            + (" --images" if any("image" in p for p in problems) else ""))
    return 1 if problems else 0
  if args.images:
    for name in zoo.list_models():
      if shipped_card(zoo.get(name)):
        print(f"evaluating {name} ...", flush=True)
        evaluate_for_images(name, args.out)
  for line in write(args.out, pages):
    print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
