"""Training that survives a dead rank: shrink the job to the survivors and go on (ULFM).

Launch with ``hpcdl launch --ft`` (mpiexec ``--with-ft ulfm``, ``HPCDL_FT=1``).
A dead rank then surfaces on every survivor as
:class:`~hpcdl.errors.ProcessFailed` from whatever hpcdl call was waiting on it;
:func:`run` catches it, :func:`shrink` builds the context over the survivors,
:class:`State` restores the newest step every survivor committed, and
:class:`ElasticSampler` cuts the rest of the epoch over the new size
(docs/fault-tolerance.md, docs/api.md).
"""

from .run import MinRanksReached, run
from .sampler import ElasticSampler
from .shrink import agree, shrink
from .state import State

__all__ = ["run", "State", "ElasticSampler", "shrink", "agree", "MinRanksReached"]
