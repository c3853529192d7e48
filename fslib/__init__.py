"""fslib: few-shot transfer of CLIP, five papers re-implemented on one small code path."""
from fslib.models import register_model_configs

# papermill starts each notebook in a fresh kernel: make fslib's architectures known to open_clip
# as soon as the package is imported.
register_model_configs()

# and the embedded world's datasets and dials known to fslib.data.load_dataset (each registers itself)
import fslib.world.dials  # noqa: E402,F401
import fslib.world.suite  # noqa: E402,F401

__version__ = "0.1.0"
