"""The package's layers point one way: cli -> training/export ->
pretrained -> hub -> cards -> registry -> models/weights -> config, data,
fingerprint, named functions -> errors. A module may import its own layer or those below, never above
(imports inside functions count too), so nothing below can import in a
circle with what is above it."""
import ast
from pathlib import Path

ZOO = Path(__file__).resolve().parents[1] / "zoo"
LAYERS = [
    ("zoo.errors",),
    ("zoo.fingerprint", "zoo.config", "zoo.activations", "zoo.initializers",
     "zoo.pooling", "zoo.conv", "zoo.losses", "zoo.data", "zoo.tfimport"),
    ("zoo.models", "zoo.weights"),
    ("zoo.registry",),
    ("zoo.cards",),
    ("zoo.hub",),
    ("zoo.pretrained",),
    ("zoo.training", "zoo.export"),
    ("zoo.cli",),
]


def layer(module: str) -> int | None:
  for i, group in enumerate(LAYERS):
    if any(module == g or module.startswith(g + ".") for g in group):
      return i
  return None  # the package's public face (zoo/__init__.py): on top


def imports(path: Path) -> set[str]:
  """Every zoo module `path` imports, at any depth of its code."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out |= {f"{node.module}.{a.name}" for a in node.names}
      if node.module != "zoo":
        out.add(node.module)
  return {m for m in out if m.split(".")[0] == "zoo"}


def test_no_module_imports_a_layer_above_its_own():
  checked, upward = 0, []
  for path in ZOO.rglob("*.py"):
    parts = path.relative_to(ZOO.parent).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    mine = layer(module)
    if mine is None:
      continue
    checked += 1
    for target in imports(path):
      theirs = layer(target)
      if theirs is not None and theirs > mine:
        upward.append(f"{module} imports {target}")
  assert checked > 40
  assert not upward, upward


def test_every_module_has_a_layer():
  """A new module must be placed in LAYERS (so the rule covers it)."""
  missing = []
  for path in ZOO.rglob("*.py"):
    parts = path.relative_to(ZOO.parent).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    if module != "zoo" and layer(module) is None:
      missing.append(module)
  assert not missing, missing
