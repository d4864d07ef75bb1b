"""The worker <-> controller protocol: two tags on the control communicator.

A worker sends ``Ready`` to the controller (rank 0) after each local step and
waits for one ``Reply``. Messages are small pickled tuples; the arrays never
travel through the controller, only through the group communicators.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TAG_READY", "TAG_REPLY", "TAG_HEARTBEAT", "TAG_ALIVE", "Ready", "Reply", "GROUP",
           "SYNC", "STOP", "ERROR", "FULL_SYNC_ERROR"]

TAG_READY = 101
TAG_REPLY = 102
TAG_HEARTBEAT = 103   # worker -> controller, empty: "in a long phase, alive" (long_phase)
TAG_ALIVE = 104       # controller -> a waiting worker, empty: "a rank you wait for is alive"

GROUP, SYNC, STOP, ERROR = "group", "sync", "stop", "error"
FULL_SYNC_ERROR = "full sync: "  # an ERROR reply starting so ends the session


class Ready(NamedTuple):
    rank: int
    signature: str      # "float32[38282]": checked across every group before it averages
    final: bool         # sent by close(): this rank takes no more steps


class Reply(NamedTuple):
    kind: str                   # GROUP | SYNC | STOP | ERROR
    members: tuple[int, ...]    # sorted ranks that average together (all ranks for SYNC/STOP)
    reason: str                 # why: "full" | "deadline" | "connect" | "every" | "budget" | ...
    step: int                   # the controller's count of Ready messages so far
