"""The hpcdl error family.

Every error carries the rank that raised it and the operation it was doing, and
its message starts with both, so a line in a 64-rank log says where it came from:

    [hpcdl rank 2/4] allreduce: argument 'out' holds 6 elements, expected 8
"""

from __future__ import annotations

import functools

__all__ = [
    "HpcdlError",
    "InvalidArgumentError",
    "DtypeError",
    "ContiguityError",
    "DeviceMismatchError",
    "MismatchError",
    "CommError",
    "ProcessFailed",
]


class HpcdlError(RuntimeError):
    """Base class: ``rank``, ``size`` and ``op`` say who failed doing what."""

    def __init__(self, message: str, *, rank: int | None = None, size: int | None = None,
                 op: str | None = None) -> None:
        self.rank = rank
        self.size = size
        self.op = op
        self.reason = message
        where = "hpcdl" if rank is None else (
            f"hpcdl rank {rank}" if size is None else f"hpcdl rank {rank}/{size}")
        prefix = f"[{where}] " + (f"{op}: " if op else "")
        super().__init__(prefix + message)

    def __reduce__(self) -> tuple:
        # Rebuilt from the parts, so an error that crosses processes (pickled by
        # mpi4py or multiprocessing) keeps its message without a second prefix.
        return (functools.partial(type(self), rank=self.rank, size=self.size, op=self.op),
                (self.reason,))


class InvalidArgumentError(HpcdlError, ValueError):
    """An argument has a value the operation cannot use (unknown op, bad root, wrong size)."""


class DtypeError(HpcdlError, TypeError):
    """The buffer's type or dtype is not supported by the operation."""


class ContiguityError(HpcdlError, ValueError):
    """The buffer is not C-contiguous; MPI needs one flat block of memory."""


class DeviceMismatchError(HpcdlError, ValueError):
    """Input and output live on different devices (CPU vs GPU, or two GPUs)."""


class MismatchError(HpcdlError):
    """Ranks called the same collective with different arguments (``HPCDL_DEBUG=1``)."""


class CommError(HpcdlError):
    """MPI itself reported a failure; the MPI error string is the reason."""


class ProcessFailed(CommError):
    """Ranks of a communicator died (ULFM: MPI_ERR_PROC_FAILED or MPI_ERR_REVOKED).

    ``failed`` lists the dead ranks (ranks of the communicator the operation used)
    as far as this rank knows them; the survivors can shrink and go on.
    """

    def __init__(self, message: str, *, failed: tuple[int, ...] = (), **kw) -> None:
        self.failed = tuple(failed)
        super().__init__(message, **kw)

    def __reduce__(self) -> tuple:
        return (functools.partial(type(self), failed=self.failed, rank=self.rank,
                                  size=self.size, op=self.op), (self.reason,))
