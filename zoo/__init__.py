"""zoo: a model zoo for JAX built on Haiku.

    import zoo
    entry = zoo.get("cnn_fashion_mnist")
    params = entry.init(jax.random.PRNGKey(0), entry.example_input())

Importing zoo does no device work; everything heavy is imported on use.
"""
from zoo.errors import (ConfigError, InputError, UnknownConfigKeyError,
                        UnknownModelError, ZooError)
from zoo import registry as _registry
from zoo.registry import ModelEntry, list_models, register

__version__ = "0.1.0"

__all__ = ["get", "list_models", "register", "train", "evaluate",
           "ModelEntry", "ZooError", "ConfigError", "InputError",
           "UnknownConfigKeyError", "UnknownModelError"]


def get(name: str, *, pretrained=False, **model_overrides) -> ModelEntry:
  """The registered model `name`, with `model_overrides` applied to its
  `[model]` config (e.g. activation="gelu", hidden_sizes=(512, 256)).

  `pretrained` reads weights into `.params` and `.model_state`: True for the
  shipped ones, a model folder's path (zoo export NAME --format hub writes
  one), or a Hugging Face Hub repo id ("owner/name", "owner/name@revision"),
  fetched through huggingface_hub (pip install 'zoo[hub]'). Without it no
  weights are read.
  """
  entry = _registry.get(name, **model_overrides)
  if pretrained is False or pretrained is None:
    return entry
  from zoo import pretrained as pretrained_lib
  return pretrained_lib.attach(entry, pretrained)


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
