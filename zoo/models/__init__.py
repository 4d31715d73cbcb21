"""Built-in architectures, one per file; importing registers them."""
from zoo.models import cnn, logistic, mlp  # noqa: F401
from zoo.models import cnn_bn  # noqa: F401
from zoo.models import lstm  # noqa: F401
from zoo.models import vit  # noqa: F401
