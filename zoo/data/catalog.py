"""What zoo knows about each dataset: shapes, class names, IDX file names, hashes.

Kept apart from the loading code so that adding a dataset is a table edit.
"""

from __future__ import annotations

import dataclasses

from zoo.data.errors import UnknownDatasetError

# IDX file stems per base split (TFDS uses the same upstream names).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about one dataset."""
  name: str
  image_shape: tuple[int, int, int]  # (H, W, C)
  class_names: tuple[str, ...]
  num_examples: dict[str, int]  # per base split
  # Names of a dataset folder under a data dir, and system-wide IDX folders
  # (Debian packages). Empty `system_dirs` and `idx=False`: TFDS only.
  idx: bool = False
  dir_names: tuple[str, ...] = ()
  system_dirs: tuple[str, ...] = ()
  # sha256 of the DEcompressed IDX files, checked on first decode.
  idx_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
  apt_package: str | None = None
  title: str = ""  # how messages name it, e.g. "Fashion-MNIST"

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        image_shape=(28, 28, 1),
        class_names=tuple(str(i) for i in range(10)),
        num_examples={"train": 60000, "test": 10000},
        idx=True,
        dir_names=("mnist",),
        system_dirs=("/usr/share/datasets/mnist",),
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        title="Fashion-MNIST",
        image_shape=(28, 28, 1),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        num_examples={"train": 60000, "test": 10000},
        idx=True,
        dir_names=("fashion_mnist", "fashion-mnist"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        idx_sha256={
            "t10k-images-idx3-ubyte":
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte":
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "train-images-idx3-ubyte":
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte":
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        },
        apt_package="dataset-fashion-mnist",
    ),
    "kmnist": DatasetInfo(
        name="kmnist",
        title="KMNIST",
        image_shape=(28, 28, 1),
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        num_examples={"train": 60000, "test": 10000},
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        image_shape=(32, 32, 3),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog",
                     "frog", "horse", "ship", "truck"),
        num_examples={"train": 50000, "test": 10000},
    ),
}


# The dataset name of a run on your own arrays (zoo.data.arrays).
CUSTOM = "custom"


def get(name: str) -> DatasetInfo:
  """Returns the catalog entry for `name`, or UnknownDatasetError listing valid names."""
  if name == CUSTOM:
    raise UnknownDatasetError(
        "this run trained on your own arrays (dataset 'custom'), which zoo "
        "does not keep: its result.json holds the accuracy on your test_data; "
        "for other images call entry.apply_with_state(params, model_state, "
        "None, images) yourself.")
  try:
    return DATASETS[name]
  except (KeyError, TypeError):  # TypeError: unhashable, e.g. a list from a config
    raise UnknownDatasetError(
        f"Unknown dataset {name!r}; zoo knows {sorted(DATASETS)}") from None
