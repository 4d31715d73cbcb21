"""zoo's data layer: find and load datasets as uint8 NHWC arrays, batch them deterministically.

Importing this package does not import TensorFlow/TFDS; they are imported only
when a TFDS source is actually used.
"""

from zoo.data import errors
from zoo.data.errors import (CacheWarning, CorruptDataError, DataNotFoundError,
                             SplitError, UnknownDatasetError)
from zoo.data.pipeline import (DeviceData, epoch_indices, epoch_permutation,
                               eval_batches, gather, iterate_batches,
                               shard_indices, to_float)
from zoo.data.sources import Split, clear_memory_cache, load
from zoo.data.tfds_local import prepare_tfds_from_idx

__all__ = [
    "CacheWarning", "CorruptDataError", "DataNotFoundError", "DeviceData",
    "Split", "SplitError", "UnknownDatasetError",
    "clear_memory_cache", "epoch_indices", "epoch_permutation", "errors",
    "eval_batches", "gather", "iterate_batches", "load",
    "prepare_tfds_from_idx", "shard_indices", "to_float",
]
