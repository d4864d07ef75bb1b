"""``horovod.run(fn, np=N)``: Horovod's in-Python launcher, answered with a clear error.

Horovod's ``run`` pickles ``fn`` and starts ``np`` workers itself. hpcdl starts
workers only through ``mpiexec`` (``hpcdl launch``), so that one rank's
exception aborts the whole job; a script launched that way runs its ``main``
directly, which is what Horovod's examples do when ``--num-proc`` is absent.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import InvalidArgumentError

__all__ = ["run"]


def run(func: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
        np: int = 1, **launcher_options: Any) -> list[Any]:
    """Raise: hpcdl launches through ``mpiexec``; say how to run the script instead."""
    name = getattr(func, "__qualname__", repr(func))
    raise InvalidArgumentError(
        f"horovod.run({name}, np={np}) is not supported: hpcdl starts workers with mpiexec. "
        f"Launch the script itself with `hpcdl launch -n {np} -- python SCRIPT.py ...` "
        "(without --num-proc) and call the function directly on every rank",
        op="horovod.run")
