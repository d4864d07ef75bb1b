"""Communicators: the protocol and its backends (MPI, in-process fake)."""

from .base import Communicator, Request
from .fake import FakeCommunicator, run_ranks

__all__ = ["Communicator", "Request", "FakeCommunicator", "run_ranks", "MPICommunicator"]


def __getattr__(name: str):  # MPI is imported only when the MPI backend is asked for
    if name == "MPICommunicator":
        from .mpi import MPICommunicator

        return MPICommunicator
    raise AttributeError(name)
