"""The wire protocol between workers and servers: tags, message kinds, headers.

Everything travels on the parameter server's own ``Dup`` of the job's
communicator, so no message of ours can match a receive of a collective or of
the user's code. Each request is two messages sent back to back, a fixed
``int64`` header and (for pushes) the payload; MPI's non-overtaking rule for one
(source, tag, communicator) keeps them paired without copying the gradient into
a combined buffer. Tags stay far below 32767, the smallest ``MPI_TAG_UB`` the
standard guarantees.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TAG_REQUEST", "TAG_PUSH_DATA", "TAG_REPLY", "TAG_REPLY_DATA", "TAG_ERROR",
           "TAG_ERROR_TEXT", "TAG_INIT", "TAG_SAVED", "TAG_ALIVE", "PUSH", "PULL", "DONE", "SAVE",
           "HEARTBEAT",
           "HEADER_LEN", "header",
           "encode_text", "decode_text", "PSError", "PSTimeoutError", "poll"]

TAG_REQUEST = 7101      # worker -> server: header (PUSH / PULL / DONE)
TAG_PUSH_DATA = 7102    # worker -> server: the gradient shard of a PUSH
TAG_REPLY = 7103        # server -> worker: header (version, clock, staleness)
TAG_REPLY_DATA = 7104   # server -> worker: the parameter shard
TAG_ERROR = 7105        # either way: header saying an error text follows
TAG_ERROR_TEXT = 7106   # either way: the error text (utf-8)
TAG_INIT = 7107         # first worker -> server at setup: the initial parameter shard
TAG_SAVED = 7108        # server -> worker: header, "quiesced, saving checkpoint <step> now"
TAG_ALIVE = 7109        # server -> waiting worker: a worker you wait for is alive, in a long phase

# SAVE (checkpoint.py): header [SAVE, clock, step, 0, rank, stop after saving (0/1), 0]
# HEARTBEAT (hpcdl/heartbeat.py): header [HEARTBEAT, clock, 0, 0, rank, 0, 0], "in a long
# phase (evaluation, checkpoint), alive": the server's silence timer starts again.
PUSH, PULL, DONE, SAVE, HEARTBEAT = 1, 2, 3, 4, 5

# [kind, clock, payload elements, compressed (0/1), rank of the sender, spare, save_at]
# Requests use ``spare`` for "this worker was signalled" (PUSH) or "stop after saving"
# (SAVE); replies for the clock gap. ``save_at`` (replies of server 0): the step at which
# the workers checkpoint because some rank was signalled (0: none asked).
HEADER_LEN = 7


def header(kind: int, clock: int = 0, count: int = 0, compressed: int = 0, rank: int = 0,
           spare: int = 0, save_at: int = 0) -> np.ndarray:
    return np.array([kind, clock, count, compressed, rank, spare, save_at], dtype=np.int64)


def encode_text(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def decode_text(buf: np.ndarray) -> str:
    return bytes(buf).decode("utf-8", errors="replace")


from ..errors import HpcdlError  # noqa: E402


class PSError(HpcdlError):
    """A parameter server job failed; the message names the rank that caused it."""


class PSTimeoutError(PSError, TimeoutError):
    """A wait of the parameter server ran past its ``timeout`` (a peer stopped talking)."""


def poll(test: "callable", timeout: float, on_idle: "callable | None" = None) -> bool:
    """Call ``test()`` until it returns True, sleeping a little longer each idle round
    (up to 1 ms) so waiting ranks leave the cores to ranks that compute; ``on_idle``
    runs each round (error checks; when it returns True a peer said it is alive, and
    the ``timeout`` counts again from then). False once ``timeout`` seconds of silence
    have passed."""
    import time

    deadline = time.monotonic() + timeout
    idle = 0
    while not test():
        if on_idle is not None and on_idle():
            deadline = time.monotonic() + timeout
        if time.monotonic() > deadline:
            return False
        idle += 1
        time.sleep(0 if idle < 20 else min(1e-3, 2e-5 * (idle - 19)))
    return True
