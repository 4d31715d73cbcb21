"""Built-in architectures, one hk.Module class per file; importing this
package registers them in the architecture table (zoo.models.base)."""
from zoo.models import base  # noqa: F401
from zoo.models import cnn, logistic, mlp  # noqa: F401
from zoo.models import cnn_bn  # noqa: F401
from zoo.models import lstm  # noqa: F401
from zoo.models import vit  # noqa: F401
