"""Checkpoint and restart: atomic files with a manifest, exact and elastic resume.

* :class:`CheckpointManager`: numbered checkpoints, ``keep`` newest, a ``latest``
  pointer moved last, sha256 of every file, fallback to the previous good one.
* :class:`TrainingCheckpoint`: the training loop's side (what to save, when,
  resuming mid-epoch from the global sample position, on another rank count too).
* :class:`SignalFlag`: checkpoint when SLURM (or anyone) sends a signal.
* :func:`params_sha256`: one hash of a model's parameters, to compare runs.

Nothing is unpickled: files are read with ``torch.load(weights_only=True)`` and
JSON. See docs/fault-tolerance.md.
"""

from .manager import CheckpointError, CheckpointManager, Loaded
from .signals import SignalFlag
from .state import params_sha256, rng_state, set_rng_state, state_sha256
from .training import TrainingCheckpoint

__all__ = ["CheckpointManager", "CheckpointError", "Loaded", "TrainingCheckpoint", "SignalFlag",
           "params_sha256", "state_sha256", "rng_state", "set_rng_state"]
