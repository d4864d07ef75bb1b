"""How many MPI communicators this process holds, read from MPI itself (not from hpcdl).

Open MPI gives a new communicator the lowest free slot of its handle table (the
index ``MPI_Comm_c2f`` returns), so the slot a fresh ``COMM_SELF.Dup`` gets is the
number of communicators alive below it: a leak makes it climb, a free brings it
back. ``COMM_SELF.Dup`` is a local call, so ranks may probe at different moments
(a Dup of the world would be a collective). Other MPIs number handles their own way:
``COUNTS`` says whether the probe means anything here.
"""

from __future__ import annotations

from mpi4py import MPI

__all__ = ["live_comms", "COUNTS"]

COUNTS = "Open MPI" in MPI.Get_library_version()


def live_comms() -> int:
    probe = MPI.COMM_SELF.Dup()
    try:
        return int(probe.py2f())
    finally:
        probe.Free()
