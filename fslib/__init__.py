"""fslib: few-shot transfer of CLIP, five papers re-implemented on one small code path."""
from fslib.models import register_model_configs

# papermill starts each notebook in a fresh kernel: make fslib's architectures known to open_clip
# as soon as the package is imported.
register_model_configs()

__version__ = "0.1.0"
