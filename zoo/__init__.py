"""zoo: a model zoo for JAX built on Haiku.

    import zoo
    entry = zoo.get("cnn_fashion_mnist")
    params = entry.init(jax.random.PRNGKey(0), entry.example_input())

Importing zoo does no device work; everything heavy is imported on use.
"""
from zoo.errors import (ConfigError, InputError, UnknownConfigKeyError,
                        UnknownModelError, ZooError)
from zoo.registry import ModelEntry, get, list_models, register
from zoo import train  # a callable package: zoo.train(name, **overrides)

__version__ = "0.1.0"

__all__ = ["get", "list_models", "register", "train", "evaluate",
           "ModelEntry", "ZooError", "ConfigError", "InputError",
           "UnknownConfigKeyError", "UnknownModelError"]


def evaluate(name: str, params, state=None, **kwargs):
  """Evaluates parameters on the model's test split; see zoo.train.evaluate."""
  from zoo.train.evaluate import evaluate_model
  return evaluate_model(name, params, state, **kwargs)
