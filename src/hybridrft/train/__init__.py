"""The training loop, checkpoints and run-folder logging."""

from hybridrft.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from hybridrft.train.logging import MetricsLogger, read_metrics
from hybridrft.train.trainer import Trainer, TrainResult

__all__ = [
    "MetricsLogger",
    "TrainResult",
    "Trainer",
    "latest_checkpoint",
    "list_checkpoints",
    "read_metrics",
    "save_checkpoint",
]
