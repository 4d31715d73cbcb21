"""The PyTorch side of bench/peer_cpu.py: trains zoo's CNN or MLP, as a
PyTorch user writes it, on the arrays peer_cpu.py hands over; one JSON line.

Run by peer_cpu.py in a fresh process (any Python with torch and numpy; zoo
need not be installed there):

    python bench/peer_torch.py DATA_DIR SPEC_JSON

DATA_DIR holds {train,test}_{images,labels}.npy (uint8 NHWC images, integer
labels); SPEC_JSON is {"arch", "channels"/"hidden_sizes", "hidden_size",
"learning_rate", "batch_size", "epochs", "threads", "seed"}, read from the
zoo model's config so both sides train the same thing: He-normal weights,
zero biases, Adam with cosine decay to 0 over the run, each epoch's batches
in a fresh shuffle, the last partial batch dropped.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path

T_START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def network(spec: dict, image_shape, classes: int) -> nn.Module:
  """zoo's small CNN (conv3x3 SAME + ReLU + 2x2 max-pool per channel count,
  dense, logits) or its MLP (dense + ReLU per hidden size, logits)."""
  h, w, c = image_shape
  layers: list[nn.Module] = []
  if spec["arch"] == "cnn":
    for out in spec["channels"]:
      layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
      c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, spec["hidden_size"]),
               nn.ReLU(), nn.Linear(spec["hidden_size"], classes)]
  elif spec["arch"] == "mlp":
    width = h * w * c
    layers.append(nn.Flatten())
    for size in spec["hidden_sizes"]:
      layers += [nn.Linear(width, size), nn.ReLU()]
      width = size
    layers.append(nn.Linear(width, classes))
  else:
    raise SystemExit(f"peer_torch: no PyTorch twin for arch {spec['arch']!r}")
  net = nn.Sequential(*layers)
  for m in net.modules():  # He-normal (fan in), zero bias: zoo's he_normal
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      nn.init.zeros_(m.bias)
  return net


def _tensors(data_dir: Path, split: str):
  images = np.load(data_dir / f"{split}_images.npy")
  labels = np.load(data_dir / f"{split}_labels.npy")
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
  return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def accuracy(net, x, y, batch=1000) -> float:
  net.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(x), batch):
      correct += (net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
  net.train()
  return correct / len(x)


def main(argv: list[str]) -> None:
  data_dir, spec = Path(argv[0]), json.loads(argv[1])
  torch.set_num_threads(spec["threads"])
  torch.manual_seed(spec["seed"])
  train_x, train_y = _tensors(data_dir, "train")
  test_x, test_y = _tensors(data_dir, "test")
  classes = int(max(train_y.max(), test_y.max())) + 1
  _, c, h, w = train_x.shape
  net = network(spec, (h, w, c), classes)
  batch = spec["batch_size"]
  steps_per_epoch = len(train_x) // batch
  total = steps_per_epoch * spec["epochs"]
  opt = torch.optim.Adam(net.parameters(), lr=spec["learning_rate"])
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
  loss_fn = nn.CrossEntropyLoss()
  rng = np.random.default_rng(spec["seed"])
  history = []
  t_train = time.time()
  for epoch in range(1, spec["epochs"] + 1):
    order = torch.from_numpy(rng.permutation(len(train_x)))
    t0 = time.time()
    for i in range(steps_per_epoch):
      idx = order[i * batch:(i + 1) * batch]
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(net(train_x[idx]), train_y[idx])
      loss.backward()
      opt.step()
      sched.step()
    seconds = time.time() - t0
    acc = accuracy(net, test_x, test_y)
    history.append({"epoch": epoch, "test_accuracy": acc,
                    "images_per_second": steps_per_epoch * batch / seconds,
                    "end": time.time()})
  print(json.dumps({"side": "pytorch", "version": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "onednn": torch.backends.mkldnn.is_available(),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                    "t_start": T_START, "t_train": t_train,
                    "history": history, **memory()}))


def memory() -> dict:
  """This process's peak resident memory and page faults so far."""
  use = resource.getrusage(resource.RUSAGE_SELF)
  return {"max_rss_mib": round(use.ru_maxrss / 1024, 1),
          "minor_faults": use.ru_minflt}


if __name__ == "__main__":
  main(sys.argv[1:])
