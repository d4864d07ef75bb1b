"""Shared test fixtures.

The same files run serially (``pytest tests``) and under mpiexec
(``hpcdl launch -n N -- python -m pytest --with-mpi tests``). Tests that need
several ranks are marked ``@pytest.mark.mpi(min_size=...)``; pytest-mpi skips
them in a serial run. GPU tests are marked ``gpu`` and skip unless
``cupy.is_available()``; ``HPCDL_REQUIRE_GPU=1`` turns that skip into a failure.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

from hpcdl.ops import SUPPORTED_DTYPES
from hpcdl.runtime import launched_rank, under_launcher

from helpers.fakes import gpu_available


def pytest_configure(config):
    # Online tuning (hpcdl/collectives/online.py) lets 'auto' run another algorithm in
    # another job, so float results may differ in the last bits between two jobs: tests
    # that compare jobs bit for bit need the fixed table. The suite runs with it (export
    # HPCDL_TUNE=on to run it tuned); test_online_tune*.py switch tuning on where they
    # test it. Never the user's cache folder.
    os.environ.setdefault("HPCDL_TUNE", "off")
    if "HPCDL_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="hpcdl-test-cache-")
        os.environ["HPCDL_CACHE_DIR"] = cache
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
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
        # A test that launches its own mpiexec job runs once, in the serial pass; so does
        # one on in-process fake ranks (it is the same in every pass).
        skip_spawn = pytest.mark.skip(reason="launches its own mpiexec job: serial pass only")
        skip_fake = pytest.mark.skip(reason="in-process fake ranks, the same in every pass: "
                                            "serial pass only")
        for item in items:
            if "spawns" in item.keywords:
                item.add_marker(skip_spawn)
            if "fake_ranks" in item.keywords:
                item.add_marker(skip_fake)
    else:
        # The serial pass has one rank: every collective would be a no-op and the test
        # would compare its input with itself. The --with-mpi passes run it (1..4 ranks).
        skip_mpi = pytest.mark.skip(reason="needs peers: 1 rank makes every collective a "
                                           "no-op; runs in the --with-mpi passes")
        for item in items:
            if "mpi_pass" in item.keywords:
                item.add_marker(skip_mpi)
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


@pytest.fixture
def ctx():
    import hpcdl

    return hpcdl.init()


@pytest.fixture
def rng(ctx):
    """Random numbers that differ across ranks but are reproducible per (test, rank)."""
    return np.random.default_rng(1234 + 7919 * ctx.rank)


DTYPES = list(SUPPORTED_DTYPES)
