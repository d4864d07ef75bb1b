"""Run by test_torch_backend_dcp.py under its own mpiexec: ``save DIR`` or ``load DIR``.

Both sides shard the same model with FSDP2 over however many ranks they have; the
loading side checks its own shards against the saved model, rebuilt from the seed.
"""

import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.fsdp import fully_shard

import hpcdl.torch  # noqa: F401


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Linear(13, 5))


def main(action: str, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("hpcdl")
    rank, size = dist.get_rank(), dist.get_world_size()
    m = model(0 if action == "save" else 1)
    fully_shard(m)
    if action == "save":
        dcp.save({"model": m.state_dict()}, checkpoint_id=path)
    else:
        state = {"model": m.state_dict()}
        dcp.load(state, checkpoint_id=path)
        m.load_state_dict(state["model"])
        for (name, p), q in zip(m.named_parameters(), model(0).parameters()):
            chunks = q.detach().chunk(size, dim=0)
            want = chunks[rank] if rank < len(chunks) else q.detach()[:0]
            assert torch.equal(p.to_local(), want), f"rank {rank}: {name} not restored"
        print(f"rank {rank}/{size}: restored", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
