"""The Horovod front end's state: the hpcdl context that ``hvd.init()`` made.

A leaf of the front end, so ``basics`` (which starts it) and ``process_sets``
(which needs it) both read it without importing each other.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError

__all__ = ["STATE", "context"]


class _State:
    ctx: Any = None            # hpcdl Context, None before init / after shutdown
    homogeneous: bool = True


STATE = _State()


def context() -> Any:
    """The hpcdl context behind the Horovod calls; raises like Horovod before ``init()``."""
    if STATE.ctx is None:
        raise InvalidArgumentError("Horovod has not been initialized; use hvd.init().",
                                   op="horovod")
    return STATE.ctx
