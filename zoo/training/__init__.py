"""Training: run preparation, steps, strategies, the loop, evaluation,
checkpoints, multi-host. Users call `zoo.train(...)` (zoo/__init__.py); the
loop itself is zoo.training.loop.train."""
