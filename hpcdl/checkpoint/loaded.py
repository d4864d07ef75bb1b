"""``Loaded``: what ``CheckpointManager.load`` returns (the manifest, ``shared``, this rank's
``local``, and any saved rank's file on request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from .files import load_torch
from .verify import rank_file

__all__ = ["Loaded"]


class Loaded(dict):
    """A loaded checkpoint: ``shared`` and this rank's ``local`` state, plus where from."""

    @property
    def step(self) -> int:
        return int(self["manifest"]["step"])

    @property
    def saved_size(self) -> int:
        return int(self["manifest"]["size"])

    def local_of(self, rank: int) -> Any:
        """The ``local`` state that rank ``rank`` of the saving job wrote (its file was
        checked against the manifest with the rest): how a resume at another rank count
        maps per-rank state, e.g. parameter-server shards re-split across other servers,
        or new rank r taking saved rank r % saved_size's optimizer state."""
        if not 0 <= int(rank) < self.saved_size:
            from mpi4py import MPI

            raise InvalidArgumentError(f"local_of({rank}): rank {rank}: this checkpoint was "
                                       f"written by {self.saved_size} rank(s)",
                                       rank=MPI.COMM_WORLD.Get_rank(), op="checkpoint load")
        return load_torch(Path(self["folder"]) / rank_file(int(rank)))
