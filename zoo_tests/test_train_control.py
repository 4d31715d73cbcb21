"""Training control: `steps` instead of epochs, evaluation every N steps
(metrics.jsonl rows), and a moving average of the parameters (EMA) for
evaluation; each with a bit-exact resume."""
import json

import chex
import jax
import numpy as np
import pytest

import zoo
from zoo import cli, registry
from zoo.errors import ZooError
from zoo.training import loop, run_weights
from zoo.training import checkpoint as ckpt_lib
from zoo.fingerprint import params_sha256
from zoo.training.optim import optimizer
from zoo.training.state import eval_params, init_state
from zoo.training.step import make_train_step

MODEL = "mlp_fashion_mnist"
# 2048 / 64 = 32 steps per epoch.
BASE = dict(batch_size=64, devices=1, progress=False,
            **{"data.train_split": "train[:2048]",
               "data.test_split": "test[:500]"})
# Ends mid-epoch 2 (step 40), evaluates at 12, 24, 36 between the epoch
# ends, keeps an average, saves every 16 steps; a constant learning rate, so
# that a shorter run passes through the same models.
CONTROL = {"steps": 40, "eval_every": 12, "ema_decay": 0.9,
           "checkpoint_every": 16, "schedule.name": "constant"}
TIMING = ("images_per_second", "seconds", "wall_seconds")


def _numbers(history):
  return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
  """One uninterrupted run with CONTROL: (workdir, TrainResult)."""
  workdir = tmp_path_factory.mktemp("controlled")
  return workdir, loop.train(MODEL, workdir=workdir, **BASE, **CONTROL,
                             **{"train.loop": "python"})


def test_steps_equal_to_whole_epochs_train_the_same_model():
  by_epochs = zoo.train(MODEL, epochs=2, **BASE)
  by_steps = zoo.train(MODEL, steps=64, **BASE)
  assert by_steps.result["params_sha256"] == by_epochs.result["params_sha256"]
  assert _numbers(by_steps.history) == _numbers(by_epochs.history)
  assert by_steps.result["steps"] == 64 and by_steps.result["epochs"] == 2


def test_steps_end_mid_epoch_with_evaluations_between_epoch_ends(controlled):
  workdir, out = controlled
  assert out.result["steps"] == 40
  assert out.result["epochs"] == 1.25
  rows = [json.loads(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  assert _numbers(rows) == _numbers(out.history)
  assert [(r["step"], bool(r.get("eval"))) for r in rows] == [
      (12, True), (24, True), (32, False), (36, True), (40, False)]
  assert [r["epoch"] for r in rows] == [0.375, 0.75, 1, 1.125, 2]
  for row in rows:
    assert 0.1 < row["test_accuracy"] <= 1 and np.isfinite(row["test_loss"])
    assert ("train_loss" in row) == (not row.get("eval"))
  # The last row (a partial epoch) is the final evaluation.
  assert rows[-1]["test_accuracy"] == out.result["test_accuracy"]
  manager = ckpt_lib.CheckpointManager(workdir / "checkpoints")
  assert manager.steps() == [16, 32, 40]


def test_an_evaluation_row_is_the_model_at_that_step(controlled, tmp_path):
  """The row at step 12 is what zoo.evaluate says of a run stopped there."""
  _, out = controlled
  stopped = loop.train(MODEL, **BASE, **{**CONTROL, "steps": 12,
                                         "eval_every": 0})
  ev = zoo.evaluate(stopped.entry, stopped.params, stopped.model_state,
                    split="test[:500]")
  assert out.history[0]["step"] == 12
  assert out.history[0]["test_accuracy"] == pytest.approx(ev["accuracy"])
  assert out.history[0]["test_loss"] == pytest.approx(ev["loss"], rel=1e-5)


def test_sigterm_then_resume_is_bit_identical_with_all_three(
    controlled, tmp_path, sigterm_when_epoch_starts):
  """SIGTERM just before epoch 2: saved at step 33 (after an evaluation
  row at 24 and an epoch row at 32, before the one at 36); the re-run
  resumes to the same parameters, average and rows, none repeated."""
  _, ref = controlled
  run = lambda: loop.train(MODEL, workdir=tmp_path, **BASE, **CONTROL,
                           **{"train.loop": "python"})
  with sigterm_when_epoch_starts(1), pytest.raises(loop.Preempted,
                                                   match="saved step 33 "):
    run()
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  assert [r["step"] for r in manager.read_meta(33)["history"]] == [12, 24, 32]
  out = run()
  assert out.result["params_sha256"] == ref.result["params_sha256"]
  assert _numbers(out.history) == _numbers(ref.history)
  chex.assert_trees_all_equal(out.params, ref.params)


def test_ema_is_the_average_the_update_rule_says():
  """One step: ema = decay * initial + (1 - decay) * updated, for every
  leaf; the returned parameters are the average; off, there is none."""
  entry = registry.with_config(registry.get(MODEL),
                               {"train.ema_decay": 0.9})
  tx = optimizer(entry.config, 10)
  state = init_state(entry, tx, 0)
  chex.assert_trees_all_equal(state.ema_params, state.params)
  step = jax.jit(make_train_step(entry, tx))
  rng = np.random.default_rng(0)
  images = rng.random((8, 28, 28, 1), np.float32)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  new, _ = step(state, images, labels)
  want = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, state.params,
                      new.params)
  chex.assert_trees_all_close(new.ema_params, want, rtol=1e-6, atol=1e-7)
  assert params_sha256(new.ema_params) != params_sha256(new.params)
  chex.assert_trees_all_equal(eval_params(new), new.ema_params)
  off = init_state(registry.get(MODEL), tx, 0)
  assert off.ema_params is None
  assert eval_params(off) is off.params


def test_a_run_with_ema_hands_out_and_evaluates_the_average(controlled):
  """The returned params, result.json's fingerprint and accuracy, and
  `zoo eval --workdir` all use the average."""
  workdir, out = controlled
  params, model_state = run_weights.from_workdir(out.entry, workdir)
  assert params_sha256(params) == out.result["params_sha256"]
  chex.assert_trees_all_equal(params, out.params)
  ev = zoo.evaluate(out.entry, params, model_state, split="test[:500]")
  assert ev["accuracy"] == out.result["test_accuracy"]
  raw = ckpt_lib.CheckpointManager(workdir / "checkpoints").restore_weights(
      40, *zoo.weights.template(out.entry))[0]
  assert params_sha256(raw) != out.result["params_sha256"]


def test_cli_flags_set_the_three_keys(tmp_path, capsys):
  code = cli.main(["train", MODEL, "--steps", "20", "--eval-every", "8",
                   "--ema-decay", "0.5", "--batch-size", "64", "--devices",
                   "1", "--no-progress", "--workdir", str(tmp_path),
                   "--set", "data.train_split='train[:2048]'",
                   "--set", "data.test_split='test[:500]'"])
  assert code == 0
  printed = capsys.readouterr().out
  assert "after 20 steps" in printed
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["config"]["train"]["steps"] == 20
  assert result["config"]["train"]["eval_every"] == 8
  assert result["config"]["train"]["ema_decay"] == 0.5
  rows = [json.loads(line) for line in
          (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [8, 16, 20]


@pytest.mark.parametrize("flag,value,allowed", [
    ("--steps", "-1", "train.steps"),
    ("--eval-every", "-5", "train.eval_every"),
    ("--ema-decay", "1.0", "train.ema_decay"),
    ("--ema-decay", "-0.1", "train.ema_decay"),
    ("--ema-decay", "nan", "train.ema_decay"),
])
def test_bad_values_are_one_line_errors(flag, value, allowed, capsys):
  code = cli.main(["train", MODEL, flag, value])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and flag in err[0] and allowed in err[0]


def test_bad_values_are_refused_by_zoo_train_too():
  for key, value in (("steps", -1), ("eval_every", 1.5), ("ema_decay", 1.0)):
    with pytest.raises(ZooError, match=f"train.{key}"):
      zoo.train(MODEL, **{key: value})
