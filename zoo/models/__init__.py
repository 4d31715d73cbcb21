"""Built-in architectures, one per file; importing registers them."""
from zoo.models import cnn, logistic, mlp  # noqa: F401
