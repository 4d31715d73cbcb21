"""A fingerprint of parameters: sha256 over every leaf in a canonical order."""
from __future__ import annotations

import hashlib

import jax
import numpy as np


def params_sha256(params) -> str:
  """sha256 of (path, dtype, shape, bytes) of each leaf, sorted by path, so
  the same numbers give the same digest whatever the dict order."""
  digest = hashlib.sha256()
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  items = sorted((jax.tree_util.keystr(path), np.asarray(leaf))
                 for path, leaf in flat)
  for path, leaf in items:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{path}|{leaf.dtype.str}|{leaf.shape}|".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()
