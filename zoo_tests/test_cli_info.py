"""`zoo list` and `zoo info`: output, and one-line errors with status 2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo import cli
from zoo.cli import info as cli_info

REPO = Path(__file__).resolve().parent.parent


def _run(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def test_list(capsys):
  code, out, err = _run(capsys, "list")
  assert code == 0 and err == ""
  lines = out.strip().splitlines()
  names = [line.split()[0] for line in lines]
  assert names == zoo.list_models()
  assert "logreg_binary_fashion_mnist" in names
  by_name = dict(zip(names, lines))
  assert "fashion_mnist" in by_name["cnn_fashion_mnist"]
  assert "n/a" in by_name["cnn_mnist"]  # no baseline measured yet
  assert "Small CNN" in by_name["cnn_mnist"]


def test_list_pattern(capsys):
  code, out, _ = _run(capsys, "list", "*cnn*")
  assert code == 0
  names = [line.split()[0] for line in out.strip().splitlines()]
  assert names == sorted(names) and all("cnn" in n for n in names)
  assert {"cnn_fashion_mnist", "cnn_mnist"} <= set(names)
  code, out, _ = _run(capsys, "list", "*fashion*")
  names = [line.split()[0] for line in out.strip().splitlines()]
  assert names == zoo.list_models("*fashion*")
  assert "mlp_mnist" not in names


def test_list_no_match(capsys):
  code, out, err = _run(capsys, "list", "*resnet*")
  assert code == 1
  assert out == ""
  assert "*resnet*" in err


def test_info_cnn(capsys):
  code, out, err = _run(capsys, "info", "cnn_fashion_mnist")
  assert code == 0 and err == ""
  assert out.startswith("cnn_fashion_mnist: ")
  assert "parameters  421,642" in out
  assert "fashion_mnist" in out and "10 classes" in out
  assert "Ankle boot" in out
  for module in ("small_cnn/conv_0", "small_cnn/conv_1", "small_cnn/dense",
                 "small_cnn/logits"):
    assert module in out
  assert "w(3, 3, 32, 64)" in out
  assert "401,536" in out  # dense 3136 * 128 + 128
  assert "[model]" in out and "arch='cnn'" in out
  baseline = zoo.get("cnn_fashion_mnist").baseline
  if baseline:  # measured here: one summary line with the reproduce command
    assert f"{100 * baseline['test_accuracy_mean']:.2f}%" in out
    assert "zoo baselines 'cnn_fashion_mnist'" in out
  code, out, _ = _run(capsys, "info", "cnn_mnist")  # MNIST: not reachable here
  assert code == 0 and "not measured yet" in out


@pytest.mark.parametrize("name,count", [
    ("logreg_mnist", "7,850"), ("logreg_binary_fashion_mnist", "785"),
    ("mlp_mnist", "235,146")])
def test_info_counts(capsys, name, count):
  code, out, _ = _run(capsys, "info", name)
  assert code == 0
  assert f"parameters  {count}\n" in out


def test_info_layer_summary_matches_param_count():
  for name in zoo.list_models():
    entry = zoo.get(name)
    rows = cli_info.layer_summary(entry)
    assert sum(r[2] for r in rows) == entry.param_count()


def test_info_binary_classes(capsys):
  _, out, _ = _run(capsys, "info", "logreg_binary_fashion_mnist")
  assert "2 classes: Sneaker, Ankle boot" in out


def test_info_unknown_name(capsys):
  code, out, err = _run(capsys, "info", "cnn_fashon_mnist")
  assert code == 2
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith("zoo: error: unknown model 'cnn_fashon_mnist'")
  assert "Did you mean: cnn_fashion_mnist" in lines[0]
  assert "Traceback" not in err


def test_bad_command_is_usage_error(capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(["lsit"])
  assert info.value.code == 2
  _, err = capsys.readouterr()
  assert "invalid choice" in err and "Traceback" not in err


def _subprocess(*args):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(REPO)
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "zoo.cli", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


def test_subprocess_list_and_error():
  proc = _subprocess("list")
  assert proc.returncode == 0, proc.stderr
  names = [line.split()[0] for line in proc.stdout.strip().splitlines()]
  assert names == zoo.list_models()
  proc = _subprocess("info", "mlp_mnsit")
  assert proc.returncode == 2
  assert proc.stdout == ""
  assert proc.stderr.strip().count("\n") == 0
  assert "zoo: error: unknown model 'mlp_mnsit'" in proc.stderr
  assert "mlp_mnist" in proc.stderr and "Traceback" not in proc.stderr


def test_version(capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(["--version"])
  assert info.value.code == 0
  assert capsys.readouterr().out == f"zoo {zoo.__version__}\n"


def test_every_flag_has_help():
  """`zoo CMD --help` explains every flag (--epochs, --seed, ... had none)."""
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")
  for name, command in sub.choices.items():
    bare = [a.option_strings[0] for a in command._actions
            if a.option_strings and not a.help]
    assert not bare, (name, bare)
