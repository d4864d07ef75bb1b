"""The torch.distributed backend "hpcdl": DDP, FSDP2, pipelining and DCP over MPI.

    import hpcdl.torch                      # registers the backend
    torch.distributed.init_process_group("hpcdl")   # rank/size from MPI, no env vars

See docs/torch-backend.md.
"""

from .process_group import ProcessGroupHpcdl
from .registration import BACKEND, Options, init_process_group, register

__all__ = ["ProcessGroupHpcdl", "Options", "BACKEND", "init_process_group", "register"]
