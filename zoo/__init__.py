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


def train(name: str, **overrides):
  """Trains registered model `name`; see zoo.train.loop.train."""
  from zoo.train.loop import train as _train
  return _train(name, **overrides)


def evaluate(name: str, params, state=None, **kwargs):
  """Evaluates parameters on the model's test split; see zoo.train.evaluate."""
  from zoo.train.evaluate import evaluate_model
  return evaluate_model(name, params, state, **kwargs)
