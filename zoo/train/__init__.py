"""Training: state, step, strategies, loop, evaluation, checkpoints."""
