"""Model registry and families: `create(name, num_classes, in_chans, **options)`, `list_models()`."""

from cnnkit.models import resnet_small, tinyvgg  # noqa: F401  (register the families)
from cnnkit.models.base import Classifier
from cnnkit.models.registry import TIMM_PREFIX, ModelEntry, create, get_entry, list_models, register_model

DEFAULT_MODEL = "resnet9"

__all__ = ["Classifier", "ModelEntry", "TIMM_PREFIX", "create", "get_entry", "list_models", "register_model",
           "DEFAULT_MODEL"]
