"""Checkpoint when signalled: SLURM's ``--signal=B:USR1@60`` warning, a preemption's SIGTERM.

A signal handler may only set a flag: it runs between two bytecodes of the main
thread, possibly inside a collective's Python code, where starting another
collective would break MPI's ordering. The training loop asks
:meth:`SignalFlag.agreed` at a step boundary; the ranks combine their flags with
one 4-byte MAX allreduce, so all of them checkpoint at the same step even
though each received the signal at a different moment.
"""

from __future__ import annotations

import signal
from typing import Any, Iterable

import numpy as np

from ..collectives import allreduce

__all__ = ["SignalFlag"]


class SignalFlag:
    """Catches ``signals`` (names like ``"USR1"`` or numbers) and remembers the first one."""

    def __init__(self, signals: Iterable["str | int"] = ("USR1",)) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        for s in signals:
            name = "SIG" + str(s).upper().removeprefix("SIG")
            num = s if isinstance(s, int) else getattr(signal, name)
            self._previous[int(num)] = signal.signal(num, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def agreed(self, comm: Any = None) -> bool:
        """Collective: has any rank received one of the signals?"""
        flag = np.array([1 if self.received is not None else 0], np.int32)
        allreduce(flag, op="max", comm=comm)
        if flag[0] and self.received is None:
            self.received = next(iter(self._previous))  # another rank's signal: take it as ours
        return bool(flag[0])

    def restore(self) -> None:
        """Put the previous handlers back."""
        for num, old in self._previous.items():
            signal.signal(num, old)
        self._previous.clear()
