"""Learning-curve plots (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def plot_learning_curve(history: Sequence[dict[str, Any]], path: Path,
                        title: str) -> Path | None:
  """Writes loss and accuracy per epoch to a PNG; None if nothing to plot."""
  if not history:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  epochs = [h["epoch"] for h in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
  ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
  ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
  ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
  ax_loss.legend()
  ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-",
              label="train")
  ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "s-",
              label="test")
  ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
  ax_acc.legend()
  fig.tight_layout()
  tmp = Path(path).with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  tmp.replace(path)
  return Path(path)
