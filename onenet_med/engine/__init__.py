"""What bundles call: loss, optimiser and schedule factories, checkpoint I/O, resume, BatchNorm and speed handlers."""

from onenet_med.engine.atomic import atomic_path, atomic_torch_save, atomic_write_text
from onenet_med.engine.bn import BNStatsRefresh, batchnorm_layers, recompute_bn_stats
from onenet_med.engine.checkpoint import (
    BEST_FILENAME,
    LATEST_FILENAME,
    BestCheckpointSaver,
    BundleCheckpointLoader,
    CheckpointResumer,
    LatestCheckpointSaver,
    RNGState,
    describe_state_mismatch,
    load_checkpoint,
    save_checkpoint,
)
from onenet_med.engine.failures import install_failure_summary
from onenet_med.engine.losses import IGNORE_INDEX, WeightedCrossEntropyLoss, class_weights, get_loss
from onenet_med.engine.network_switches import NetworkSwitches, apply_switches
from onenet_med.engine.optim import get_optimizer
from onenet_med.engine.schedules import get_lr_scheduler, paper_milestones

__all__ = [
    "BEST_FILENAME",
    "IGNORE_INDEX",
    "LATEST_FILENAME",
    "BNStatsRefresh",
    "BestCheckpointSaver",
    "BundleCheckpointLoader",
    "CheckpointResumer",
    "LatestCheckpointSaver",
    "NetworkSwitches",
    "RNGState",
    "WeightedCrossEntropyLoss",
    "atomic_path",
    "atomic_torch_save",
    "apply_switches",
    "atomic_write_text",
    "batchnorm_layers",
    "class_weights",
    "describe_state_mismatch",
    "get_loss",
    "get_lr_scheduler",
    "get_optimizer",
    "install_failure_summary",
    "load_checkpoint",
    "paper_milestones",
    "recompute_bn_stats",
    "save_checkpoint",
]
