"""Pictures of an evaluation (matplotlib, headless Agg): the confusion matrix
and a grid of the most confident mistakes, as `zoo eval` writes them next to
its metrics. Each PNG is written atomically (zoo.training.workdir.write_atomic:
local or remote), so a reader never sees half a picture."""
from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np


def _pyplot():
  """matplotlib.pyplot on the Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: os.PathLike, dpi: int = 100):
  """Saves `fig` to `path` atomically and closes it."""
  from zoo.training.workdir import as_path, write_atomic
  path = as_path(path)
  out = io.BytesIO()
  try:
    fig.savefig(out, format="png", dpi=dpi)
  finally:
    _pyplot().close(fig)
  write_atomic(path, out.getvalue())
  return path


def plot_confusion(confusion: Sequence[Sequence[int]],
                   class_names: Sequence[str], path: os.PathLike,
                   title: str):
  """Confusion matrix: rows the true class, columns the predicted one; each
  cell shows its count, coloured by the row-normalised rate (so rare and
  common classes read alike)."""
  plt = _pyplot()
  counts = np.asarray(confusion, np.int64)
  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  size = max(4.5, 0.6 * n + 2.5)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
               label="fraction of the true class")
  for i in range(n):
    for j in range(n):
      if counts[i, j]:
        ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  acc = np.trace(counts) / max(counts.sum(), 1)
  ax.set(xlabel="predicted class", ylabel="true class",
         title=f"{title}\n{counts.sum()} examples, accuracy {acc:.2%}")
  fig.tight_layout()
  return _save(fig, path)


def plot_mistakes(images: np.ndarray, mistakes: Sequence[dict[str, Any]],
                  class_names: Sequence[str], path: os.PathLike,
                  title: str):
  """A grid of the given mistakes (most confident first), each image titled
  "true -> predicted (probability)". `images` are the split's uint8 images,
  indexed by each mistake's "index"."""
  plt = _pyplot()
  cols = max(1, min(5, len(mistakes)))
  rows = max(1, -(-len(mistakes) // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows + 0.5),
                           squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, m in zip(axes.flat, mistakes):
    img = np.asarray(images[m["index"]])
    if img.ndim == 3 and img.shape[-1] == 1:
      img = img[..., 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_title(f"{class_names[m['true']]} -> {class_names[m['predicted']]}"
                 f"\n({m['probability']:.3f}, #{m['index']})", fontsize=8)
  if not mistakes:
    axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
  fig.suptitle(f"{title}: most confident mistakes (true -> predicted (p))",
               fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
