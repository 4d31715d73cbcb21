"""`zoo eval` writes eval.json, a confusion matrix and a grid of the most
confident mistakes; the confusion counts and the mistakes come from the same
sharded pass as the accuracy, and agree with a plain one-device reference."""
import json

import jax
import numpy as np
import pytest
from matplotlib import image as mpimg

import zoo
from zoo import cli, data, pretrained
from zoo.data import to_float
from zoo.training import strategies
from zoo.training.evaluate import Evaluator
from zoo.training.step import forward

MODEL = "cnn_fashion_mnist"
SPLIT = "test[:500]"


def _reference(entry, images, labels):
  """Predictions and their softmax probabilities, all examples at once."""
  logits, _ = forward(entry, entry.params, entry.model_state, None,
                      to_float(images), False)
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
  pred = np.asarray(logits).argmax(axis=-1)
  return pred, probs[np.arange(len(pred)), pred]


def _check_mistakes(mistakes, labels, pred, conf, k):
  """Really wrong, most confident first, and the k most confident ones."""
  wrong = np.flatnonzero(pred != labels)
  assert len(mistakes) == min(k, len(wrong)) > 0
  for m in mistakes:
    assert m["true"] == labels[m["index"]] != m["predicted"]
    assert m["predicted"] == pred[m["index"]]
    np.testing.assert_allclose(m["probability"], conf[m["index"]], rtol=1e-5)
  probs = [m["probability"] for m in mistakes]
  assert probs == sorted(probs, reverse=True)
  # Nothing left out is more confident than the least confident shown.
  shown = {m["index"] for m in mistakes}
  rest = [conf[i] for i in wrong if i not in shown]
  assert not rest or max(rest) <= probs[-1] + 1e-6


def test_zoo_eval_writes_pictures_and_metrics(tmp_path, capsys):
  out = tmp_path / "out"
  weights = pretrained.path(MODEL)
  assert cli.main(["eval", MODEL, "--weights", str(weights), "--split", SPLIT,
                   "--out", str(out)]) == 0
  printed = json.loads(capsys.readouterr().out)
  res = json.loads((out / "eval.json").read_text())
  assert res["accuracy"] == printed["accuracy"] and res["examples"] == 500
  assert sorted(printed["files"]) == sorted(
      str(out / f) for f in ("eval.json", "eval_confusion.png",
                             "eval_mistakes.png"))
  for name, min_side in (("eval_confusion.png", 300),
                         ("eval_mistakes.png", 300)):
    path = out / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side
    assert img.std() > 0.05  # not blank
  assert not [p for p in out.iterdir() if "tmp" in p.name]
  # Confusion: rows true, columns predicted; diagonal = accuracy * examples.
  confusion = np.array(res["confusion"])
  entry = zoo.get(MODEL, pretrained=True)
  assert confusion.shape == (entry.num_classes,) * 2
  assert confusion.dtype.kind == "i" and confusion.sum() == 500
  assert np.trace(confusion) == round(res["accuracy"] * 500)
  assert np.trace(confusion) / 500 == res["accuracy"]
  test = data.load(entry.dataset, SPLIT)
  np.testing.assert_array_equal(confusion.sum(axis=1),
                                np.bincount(test.labels, minlength=10))
  pred, conf = _reference(entry, test.images, test.labels)
  expect = np.zeros_like(confusion)
  np.add.at(expect, (test.labels, pred), 1)
  np.testing.assert_array_equal(confusion, expect)
  _check_mistakes(res["mistakes"], test.labels, pred, conf, 25)


def test_zoo_eval_weights_pretrained_is_the_shipped_file(tmp_path, capsys):
  """`--weights pretrained` as in `zoo export`: the same metrics as the
  shipped file itself; with --workdir it is refused in one line (it takes
  the registered config, not a run's), and a model that ships none says so."""
  args = ["eval", MODEL, "--split", SPLIT, "--mistakes", "0"]
  assert cli.main(args + ["--weights", "pretrained",
                          "--out", str(tmp_path / "a")]) == 0
  by_name = json.loads(capsys.readouterr().out)
  assert cli.main(args + ["--weights", str(pretrained.path(MODEL)),
                          "--out", str(tmp_path / "b")]) == 0
  by_file = json.loads(capsys.readouterr().out)
  assert by_name["accuracy"] == by_file["accuracy"] > 0.85
  for extra, words in ((["--workdir", str(tmp_path)], "drop --workdir"),
                       ([], "no pretrained weights ship for 'cnn_mnist'")):
    argv = ["eval", "cnn_mnist" if not extra else MODEL, "--weights",
            "pretrained", *extra]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and words in err, err


def test_eval_json_says_which_weights_it_evaluated(tmp_path, capsys):
  """eval.json (and the printed JSON) name the weights: "pretrained", the
  file, or the checkpoint directory and its step (--workdir: the newest)."""
  run = tmp_path / "run"
  zoo.train("logreg_fashion_mnist", workdir=run, steps=3, batch_size=64,
            devices=1, progress=False, **{"data.train_split": "train[:256]"})
  [step] = (run / "checkpoints").glob("step_*")
  assert int(step.name[5:]) == 3
  file = pretrained.path("logreg_fashion_mnist")
  trained = json.loads((run / "result.json").read_text())["params_sha256"]
  shipped = zoo.get("logreg_fashion_mnist").baseline["params_sha256_seed0"]
  for source, want in ((["--workdir", str(run)], {"weights": str(step),
                                                   "step": 3,
                                                   "params_sha256": trained}),
                       (["--weights", str(step)], {"weights": str(step),
                                                   "step": 3,
                                                   "params_sha256": trained}),
                       (["--weights", "pretrained"], {"weights": "pretrained",
                                                      "params_sha256": shipped}),
                       (["--weights", str(file)], {"weights": str(file),
                                                   "params_sha256": shipped})):
    out = tmp_path / f"out{len(source[1])}"
    assert cli.main(["eval", "logreg_fashion_mnist", *source, "--split",
                     "test[:100]", "--mistakes", "0", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "eval.json").read_text())
    for res in (printed, saved):
      assert {k: res.get(k) for k in ("weights", "step", "params_sha256")
              } == {"step": None, **want}, source


@pytest.mark.parametrize("devices", [1, 3, 8])
def test_detailed_is_exact_when_sharded(devices):
  entry = zoo.get("mlp_fashion_mnist", pretrained=True)
  test = data.load(entry.dataset, "test[:997]")
  ev = Evaluator(entry, test.images, test.labels, 100,
                 strategy=strategies.make("mesh", devices=devices))
  plain = ev(entry.params)
  res = ev.detailed(entry.params, top_k=16)
  # The default numbers are unchanged; the extras add to them.
  assert {k: res[k] for k in plain} == plain
  confusion = np.array(res["confusion"])
  assert np.trace(confusion) == round(plain["accuracy"] * 997)
  pred, conf = _reference(entry, test.images, test.labels)
  _check_mistakes(res["mistakes"], test.labels, pred, conf, 16)
