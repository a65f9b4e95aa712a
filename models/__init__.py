"""Model registry: `create_model(name, *, width, num_classes, in_channels, depth=None)`."""

from models import cnn, wrn  # noqa: F401  (register the built-in models)
from models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
