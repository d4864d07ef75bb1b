"""Stand-ins that let one process test what needs a GPU or several ranks.

``FakeCudaArray`` is host memory that looks like a CUDA array; ``group_params`` and
``on_group`` run a test's body on the job's communicator (``--with-mpi`` passes) or on
in-process fake communicators of 3 and 4 ranks (the serial pass).
"""

from __future__ import annotations

import numpy as np
import pytest

__all__ = ["FakeCudaArray", "FAKE_SIZES", "group_params", "on_group", "gpu_available"]


def gpu_available() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


class FakeCudaArray:
    """Host memory that presents itself as a CUDA array (``__cuda_array_interface__``).

    Without a GPU hpcdl treats such pointers as host memory, so the device code
    paths (stream sync, staging, chunking) run on a CPU.
    """

    def __init__(self, host: np.ndarray, readonly: bool = False, strides=None) -> None:
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": host.shape, "typestr": host.dtype.str, "data": (host.ctypes.data, readonly),
            "version": 3, "strides": strides, "stream": 1,
        }

    @property
    def shape(self):
        return self.host.shape


#: Rank counts of the in-process fake communicators that the serial pass runs
#: collective tests at (non-powers of two and a power of two).
FAKE_SIZES = (3, 4)


def group_params(fake_sizes: tuple[int, ...] = FAKE_SIZES) -> list:
    """``group`` parameters: the job's communicator (``--with-mpi`` passes only) and
    in-process fake communicators of ``fake_sizes`` ranks (serial pass only)."""
    return ([pytest.param("mpi", marks=pytest.mark.mpi_pass)]
            + [pytest.param(f"fake{n}", marks=pytest.mark.fake_ranks) for n in fake_sizes])


def on_group(group: str, body, timeout: float = 60.0) -> list:
    """``body(comm)`` on every rank of ``group`` (see :func:`group_params`); the results
    of the ranks this process runs (one under mpiexec, all of them for a fake group)."""
    if group == "mpi":
        import hpcdl

        return [body(hpcdl.init().comm)]
    from hpcdl.comm import run_ranks

    return run_ranks(int(group[len("fake"):]), body, timeout=timeout)
