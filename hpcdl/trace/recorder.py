"""One rank's recorder: a bounded buffer, flushed to ``rank<r>.jsonl`` by size and time."""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .clock import LANES, now

__all__ = ["Recorder", "clock_offset", "FLUSH_EVENTS", "FLUSH_SECONDS"]

FLUSH_EVENTS = 2048
FLUSH_SECONDS = 1.0
_PINGS = 8
_TAG = 29_001   # below MPI's guaranteed tag bound (32767)
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))  # made once: str() what JSON lacks


def clock_offset(comm: Any, skew_ns: int = 0) -> tuple[int, int]:
    """``(offset_ns, rtt_ns)`` to add to this rank's clock to get rank 0's clock.

    Collective. Rank 0 answers each rank's pings in turn; each rank keeps the
    ping with the shortest round trip and assumes the reply was stamped half
    way (Cristian's algorithm): the error is at most half that round trip.
    This rank's clock is ``now() + skew_ns`` (see :class:`Recorder`).
    """
    if comm.size == 1:
        return 0, 0
    stamp = np.zeros(1, np.int64)
    best = (0, 1 << 62)
    for peer in range(1, comm.size):
        for _ in range(_PINGS):
            if comm.rank == 0:
                comm.recv(stamp, peer, _TAG)
                stamp[0] = now() + skew_ns
                comm.send(stamp, peer, _TAG)
            elif comm.rank == peer:
                t0 = now() + skew_ns
                comm.send(stamp, 0, _TAG)
                comm.recv(stamp, 0, _TAG)
                t1 = now() + skew_ns
                if t1 - t0 < best[1]:
                    best = (int(stamp[0]) - (t0 + t1) // 2, t1 - t0)
    return best if comm.rank else (0, 0)


class Recorder:
    """Buffers events and appends one JSON line per flush; the first line describes the rank.

    ``clock_skew_ns`` (tests only): this rank's clock reads ``now() + clock_skew_ns``,
    in the offset measurement and in every event it records, as if it ran on a host
    whose clock differs. On one host all ranks share one clock, so without it a test
    could not tell a merge that removes the offsets from one that ignores them.
    """

    def __init__(self, directory: str, comm: Any, clock_skew_ns: int = 0) -> None:
        self.directory = directory
        self.rank = comm.rank
        self.skew = int(clock_skew_ns)
        offset, rtt = clock_offset(comm, self.skew)
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"rank{comm.rank}.jsonl"
        self._file = open(self.path, "w", buffering=1 << 16)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()
        self._events: list[tuple] = []
        self._last_flush = now()
        meta = {"rank": comm.rank, "size": comm.size, "host": socket.gethostname(),
                "pid": os.getpid(), "offset_ns": offset, "offset_error_ns": rtt // 2,
                "lanes": list(LANES)}
        self._file.write(json.dumps({"meta": meta}) + "\n")
        self._file.flush()
        atexit.register(self.close)

    def add(self, name: str, lane: str, t0: int, t1: int, args: dict[str, Any]) -> None:
        self._events.append((name, lane, t0 + self.skew, t1 - t0, args))  # atomic under the GIL
        if len(self._events) >= FLUSH_EVENTS or t1 - self._last_flush > FLUSH_SECONDS * 1e9:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            self._last_flush = now()
            if self._file.closed:
                return
            if events:
                # One line per flush, a JSON array of [name, lane, t, d, args] rows, encoded
                # in one C call: a dict and a json.dumps per event cost ~8 us each (most of
                # tracing's cost), the batch ~1 us per event. A rank killed mid-write leaves
                # a cut last line, which merge drops: everything up to the last flush stays.
                self._file.write(_ENCODER.encode(events) + "\n")
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            with self._lock:
                self._file.close()
