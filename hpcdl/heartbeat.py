"""A long phase said out loud: a thread that tells the peers "alive, busy" until it ends.

The parameter server and P-Reduce's controller end a job when a peer has been
silent for their ``timeout``, which a long evaluation or checkpoint at an
epoch's end would trip on a healthy job. A rank entering such a phase says so::

    with ps.long_phase("evaluation"):        # or session.long_phase(...) in P-Reduce
        accuracy = evaluate(model)

and a daemon thread sends a heartbeat every ``period`` seconds (a quarter of the
peers' timeout) until the block ends, so only the silence of a rank that is
stuck outside such a phase counts. The heartbeats are nonblocking sends whose
requests the thread tests; the phase's end waits for them (they are tiny, and
the peers always receive them).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["LongPhase"]


class LongPhase:
    """Context manager: call ``beat()`` now and every ``period`` seconds until exit.

    ``beat`` posts the heartbeat messages and returns their MPI requests.
    """

    def __init__(self, beat: Callable[[], list], period: float, what: str) -> None:
        self.beat, self.period, self.what = beat, max(0.05, float(period)), what
        self._halt = threading.Event()
        self._reqs: list = []
        self._thread = threading.Thread(target=self._run, name=f"hpcdl-heartbeat({what})",
                                        daemon=True)
        self.beats = 0

    def __enter__(self) -> "LongPhase":
        self._reqs += self.beat()
        self.beats += 1
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._halt.set()
        self._thread.join()
        from mpi4py import MPI

        MPI.Request.Waitall(self._reqs)

    def _run(self) -> None:
        while not self._halt.wait(self.period):
            self._reqs = [r for r in self._reqs if not r.Test()]
            self._reqs += self.beat()
            self.beats += 1
