"""Shared test fixtures.

The same files run serially (``pytest tests``) and under mpiexec
(``hpcdl launch -n N -- python -m pytest --with-mpi tests``). Tests that need
several ranks are marked ``@pytest.mark.mpi(min_size=...)``; pytest-mpi skips
them in a serial run. GPU tests are marked ``gpu`` and skip unless
``cupy.is_available()``; ``HPCDL_REQUIRE_GPU=1`` turns that skip into a failure.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

from hpcdl.ops import SUPPORTED_DTYPES
from hpcdl.runtime import launched_rank, under_launcher


def gpu_available() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


def pytest_configure(config):
    # Under mpiexec every rank is its own pytest process; sharing the default
    # /tmp/pytest-of-<user> lets one rank's cleanup race another's tmp_path.
    rank = launched_rank()
    if rank is not None and not config.option.basetemp:
        config.option.basetemp = os.path.join(tempfile.gettempdir(),
                                              f"hpcdl-pytest-{os.getpid()}-rank{rank}")


def _under_mpi(config) -> bool:
    if config.getoption("--with-mpi", default=False):
        return True
    return under_launcher()


def pytest_collection_modifyitems(config, items):
    if _under_mpi(config):
        # A test that launches its own mpiexec job runs once, in the serial pass.
        skip_spawn = pytest.mark.skip(reason="launches its own mpiexec job: serial pass only")
        for item in items:
            if "spawns" in item.keywords:
                item.add_marker(skip_spawn)
    if gpu_available():
        return
    if os.environ.get("HPCDL_REQUIRE_GPU") == "1":
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.xfail(strict=True, reason="HPCDL_REQUIRE_GPU=1 but no usable GPU",
                                                  run=False))
        return
    skip = pytest.mark.skip(reason="no usable CUDA GPU (cupy.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture
def ctx():
    import hpcdl

    return hpcdl.init()


@pytest.fixture
def rng(ctx):
    """Random numbers that differ across ranks but are reproducible per (test, rank)."""
    return np.random.default_rng(1234 + 7919 * ctx.rank)


DTYPES = list(SUPPORTED_DTYPES)
