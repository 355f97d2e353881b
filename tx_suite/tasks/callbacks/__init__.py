"""Generic Lightning callbacks and plugins used by every task (the CLI adds them by default)."""

from tx_suite.tasks.callbacks.checkpoint_io import AtomicCheckpointIO
from tx_suite.tasks.callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from tx_suite.tasks.callbacks.loader_state import RestoreLoaderState
from tx_suite.tasks.callbacks.prediction_writer import PredictionWriter
from tx_suite.tasks.callbacks.rng_state import RNGStateCallback
from tx_suite.tasks.callbacks.run_checkpoint import RunCheckpoint

__all__ = ["AtomicCheckpointIO", "NonFiniteLossError", "PredictionWriter", "RestoreLoaderState", "RNGStateCallback",
           "RunCheckpoint", "StopOnNonFiniteLoss"]
