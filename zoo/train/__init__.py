"""Training: state, step, strategies, loop, evaluation, checkpoints.

The package is also callable: `zoo.train(name, **overrides)` runs
`zoo.train.loop.train`, so the function and the package share one name
without one hiding the other.
"""
import sys
import types


class _CallableModule(types.ModuleType):

  def __call__(self, name_or_entry, **overrides):
    """Trains a registered model; see zoo.train.loop.train."""
    from zoo.train.loop import train
    return train(name_or_entry, **overrides)


sys.modules[__name__].__class__ = _CallableModule
