"""The training loop, checkpoints and run-folder logging."""

from hybridrft.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    latest_checkpoint,
    latest_complete_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from hybridrft.train.logging import MetricsLogger, read_metrics
from hybridrft.train.run_folder import RunFolderError
from hybridrft.train.stopping import STOPPED_EXIT_CODE, TrainingStopped
from hybridrft.train.trainer import NonFiniteTrainingError, Trainer, TrainResult

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "MetricsLogger",
    "NonFiniteTrainingError",
    "RunFolderError",
    "STOPPED_EXIT_CODE",
    "TrainResult",
    "Trainer",
    "TrainingStopped",
    "latest_checkpoint",
    "latest_complete_checkpoint",
    "list_checkpoints",
    "read_metrics",
    "save_checkpoint",
]
