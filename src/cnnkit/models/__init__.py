"""Model registry and families: `create(name, num_classes, in_chans, **options)`, `list_models()`."""

from cnnkit.models import (  # noqa: F401  (register the families)
    detect,
    imagenet,
    inception_small,
    modern_small,
    nin,
    resnet_small,
    restore,
    segment,
    segment_smp,
    tinyvgg,
    vgg_small,
)
from cnnkit.models.base import Classifier
from cnnkit.models.registry import (TIMM_PREFIX, ModelEntry, check_options, create, get_entry, list_models,
                                     register_model)

DEFAULT_MODEL = "resnet9"

__all__ = ["Classifier", "ModelEntry", "TIMM_PREFIX", "check_options", "create", "get_entry", "list_models",
           "register_model", "DEFAULT_MODEL"]
