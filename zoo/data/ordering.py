"""The example order TFDS gives MNIST-style datasets, computed without TFDS.

TFDS writes a split sorted by md5(split_name + str(key)) of each example's key
(tensorflow_datasets/core/hashing.py; changing it would need a major version
bump of every dataset). MNIST/Fashion-MNIST builders use the IDX index as key,
so applying this permutation to IDX arrays reproduces TFDS's order exactly, and
`train[:90%]` then selects the same examples whichever source was found.
"""

from __future__ import annotations

import hashlib

import numpy as np


def tfds_order(split_name: str, num_examples: int) -> np.ndarray:
  """Indices into the upstream (IDX) order, in the order TFDS stores them."""
  salt = hashlib.md5(split_name.encode("utf-8"))
  digests = bytearray()
  for key in range(num_examples):
    md5 = salt.copy()
    md5.update(str(key).encode("utf-8"))
    digests += md5.digest()
  # A 128-bit big-endian hash sorts like its (high, low) 64-bit halves.
  halves = np.frombuffer(bytes(digests), dtype=">u8").reshape(num_examples, 2)
  return np.lexsort((halves[:, 1], halves[:, 0])).astype(np.int64)
