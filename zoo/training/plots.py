"""Learning-curve plots (matplotlib, headless)."""
from __future__ import annotations

import io
from typing import Any, Sequence


def learning_curve_png(history: Sequence[dict[str, Any]],
                       title: str) -> bytes | None:
  """Loss and accuracy per epoch as PNG bytes; None if nothing to plot.
  (Rows of evaluations between epoch ends, "eval" true, are left out.)"""
  history = [h for h in history if not h.get("eval")]
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
  out = io.BytesIO()
  fig.savefig(out, format="png", dpi=100)
  plt.close(fig)
  return out.getvalue()
