"""zoo: a model zoo for JAX built on Haiku.

    import zoo
    entry = zoo.get("cnn_fashion_mnist")
    params = entry.init(jax.random.PRNGKey(0), entry.example_input())

Importing zoo does no device work; everything heavy is imported on use.
"""
from zoo.errors import (ConfigError, InputError, UnknownConfigKeyError,
                        UnknownModelError, ZooError)
from zoo.registry import ModelEntry, get, list_models, register

__version__ = "0.1.0"

__all__ = ["get", "list_models", "register", "train", "evaluate",
           "ModelEntry", "ZooError", "ConfigError", "InputError",
           "UnknownConfigKeyError", "UnknownModelError"]


def train(name_or_entry, **kwargs):
  """Trains a registered model and returns a `TrainResult` (params,
  model_state, history, result).

  The keyword arguments are those of `zoo.training.loop.train`: workdir,
  data_dir, strategy, devices, progress, resume, your own data, and config
  overrides such as `epochs=2` or `**{"optimizer.learning_rate": 3e-4}`.
  """
  from zoo.training.loop import train as train_loop
  return train_loop(name_or_entry, **kwargs)


def evaluate(name_or_entry, params, model_state=None, **kwargs):
  """Evaluates `params` of a model (a name or a `ModelEntry`) on its test
  split and returns the metrics dict ("accuracy", "loss", ...).

  The keyword arguments are those of `zoo.training.evaluate.evaluate_model`:
  data_dir, split, batch_size, and top_mistakes (which adds "confusion" and
  "mistakes").
  """
  from zoo.training.evaluate import evaluate_model
  return evaluate_model(name_or_entry, params, model_state, **kwargs)
