"""``hvd.elastic``: Horovod's elastic training is not available in hpcdl.

Any use (``hvd.elastic.run``, ``TorchState``, ``ElasticSampler``) raises an
error that says so and names the alternative, instead of failing later.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError

_WHY = ("Horovod elastic training (hvd.elastic.{name}) is not available in hpcdl: jobs run "
        "under mpiexec with a fixed set of ranks. Checkpoint with hvd.broadcast_object / "
        "torch.save on rank 0 and restart the job with `hpcdl launch -n N` to change its size")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise InvalidArgumentError(_WHY.format(name=name), op="elastic")
