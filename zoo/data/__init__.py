"""zoo's data layer: find and load datasets as uint8 NHWC arrays, batch them deterministically.

Importing this package does not import TensorFlow/TFDS; they are imported only
when a TFDS source is actually used.
"""

from zoo.data import errors
from zoo.data.batching import (epoch_indices, epoch_permutation, gather,
                               job_devices, pad_batches, put_sharded,
                               shard_batches, to_float)
from zoo.data.errors import (CacheWarning, CorruptDataError, DataNotFoundError,
                             SplitError, UnknownDatasetError)
from zoo.data.sources import Split, clear_memory_cache, load

__all__ = [
    "CacheWarning", "CorruptDataError", "DataNotFoundError",
    "Split", "SplitError", "UnknownDatasetError",
    "clear_memory_cache", "epoch_indices", "epoch_permutation", "errors",
    "gather", "job_devices", "load", "pad_batches", "prepare_tfds_from_idx",
    "put_sharded", "shard_batches", "to_float",
]


def __getattr__(name: str):
  """`prepare_tfds_from_idx`, imported on use: `python -m zoo.data.tfds_local`
  runs that module as __main__, so importing the package must not load it."""
  if name == "prepare_tfds_from_idx":
    from zoo.data.tfds_local import prepare_tfds_from_idx
    return prepare_tfds_from_idx
  raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
