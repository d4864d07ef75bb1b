"""Horovod's API over hpcdl: ``import hpcdl.horovod.torch as hvd`` runs a Horovod script.

    import hpcdl.horovod.torch as hvd      # was: import horovod.torch as hvd
    import hpcdl.horovod as horovod        # was: import horovod (for horovod.run)

The adapters live only here; hpcdl's core keeps one spelling of each operation
(``hpcdl.allreduce(..., op="sum")``) and this package maps Horovod's spellings
and defaults onto it (``hvd.allreduce`` averages and returns a new tensor).
See docs/migrating-from-horovod.md for the status of every call.
"""

from .run import run

#: The Horovod release whose API this package mirrors.
__version__ = "0.28.1"

__all__ = ["run", "__version__"]
