"""What bundles call: loss, optimiser and schedule factories, checkpoint I/O, resume and BatchNorm handlers."""

from onenet_med.engine.atomic import atomic_path, atomic_torch_save, atomic_write_text
from onenet_med.engine.losses import IGNORE_INDEX, WeightedCrossEntropyLoss, class_weights, get_loss

__all__ = [
    "IGNORE_INDEX",
    "WeightedCrossEntropyLoss",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "class_weights",
    "get_loss",
]
