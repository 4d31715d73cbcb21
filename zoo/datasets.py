"""Dataset facts the registry needs (shapes, class names), from the data
catalog (zoo/data/catalog.py), with config-style errors."""
from __future__ import annotations

from zoo.data import catalog
from zoo.errors import ConfigError, close_matches

DatasetInfo = catalog.DatasetInfo


def info(name: str) -> DatasetInfo:
  """Facts about dataset `name`; a ConfigError with suggestions if unknown."""
  try:
    return catalog.DATASETS[name]
  except KeyError:
    hint = close_matches(name, catalog.DATASETS)
    raise ConfigError(f"unknown dataset {name!r}"
                      + (f"; did you mean {', '.join(hint)}?" if hint else ".")
                      + f" Known: {', '.join(sorted(catalog.DATASETS))}.") from None
