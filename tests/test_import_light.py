"""``import hpcdl`` has no side effects: it starts no MPI (importing ``mpi4py.MPI``
calls ``MPI_Init``) and loads no torch; the public names still resolve on use."""

import os
import subprocess
import sys

import pytest

# fresh interpreters, the same in every pass: run once, in the serial pass
pytestmark = pytest.mark.spawns

# each runs in a fresh interpreter: this test process has long imported both
LIGHT_MODULES = ["hpcdl", "hpcdl.errors", "hpcdl.ops", "hpcdl.buffers", "hpcdl.device",
                 "hpcdl.model", "hpcdl.tuning", "hpcdl.comm", "hpcdl.context", "hpcdl.trace",
                 "hpcdl.version", "hpcdl.atomic"]


def _run(code: str) -> subprocess.CompletedProcess:
    # without a launcher's variables the child is an MPI singleton, not a stray rank
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PRTE_"))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_import_starts_no_mpi_and_loads_no_torch(module):
    r = _run(f"import sys, {module}\n"
             "heavy = [m for m in ('mpi4py.MPI', 'torch') if m in sys.modules]\n"
             "assert not heavy, heavy")
    assert r.returncode == 0, f"import {module} loaded {r.stderr.strip().splitlines()[-1]}"


def test_every_public_name_resolves():
    r = _run("import sys, hpcdl\n"
             "missing = [n for n in hpcdl.__all__ if getattr(hpcdl, n, None) is None]\n"
             "assert not missing, missing\n"
             "assert set(hpcdl.__all__) <= set(dir(hpcdl))\n"
             "from hpcdl import allreduce, init, PReduce, ReduceOp, __version__\n"
             "assert hpcdl.allreduce is allreduce and callable(hpcdl.init)\n"
             "import hpcdl.preduce.torch  # the subpackage import keeps hpcdl.preduce the function\n"
             "assert callable(hpcdl.preduce) and hpcdl.preduce.__name__ == 'preduce'\n"
             "assert 'mpi4py.MPI' in sys.modules  # the names really loaded their modules\n"
             "try:\n"
             "    hpcdl.no_such_name\n"
             "except AttributeError as e:\n"
             "    assert 'no_such_name' in str(e)\n"
             "else:\n"
             "    raise SystemExit('hpcdl.no_such_name did not raise')\n")
    assert r.returncode == 0, r.stderr
