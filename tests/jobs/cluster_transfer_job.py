"""Time a 64 MiB message from rank 0 to rank 1 (on another node inside cluster.sh).

    hpcdl launch -n 2 -- --map-by ppr:1:node -- python tests/jobs/cluster_transfer_job.py OUT.json

Rank 0 sends ``--mib`` MiB ``--repeats`` times (after one warm-up message); each time
is from the send until rank 1 acknowledges the whole message, so TCP's send buffer
cannot hide a slow link. Writes {"seconds": [...], "hosts": [host0, host1], "bytes": n}.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

import numpy as np
from mpi4py import MPI


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    if comm.size != 2:
        raise SystemExit(f"rank {comm.rank}: cluster_transfer_job needs 2 ranks, got {comm.size}")
    buf = np.ones(a.mib << 20, dtype=np.uint8)
    ack = np.zeros(1, dtype=np.uint8)
    times = []
    for i in range(a.repeats + 1):
        comm.Barrier()
        t0 = time.perf_counter()
        if comm.rank == 0:
            comm.Send(buf, dest=1, tag=i)
            comm.Recv(ack, source=1, tag=i)
        else:
            comm.Recv(buf, source=0, tag=i)
            comm.Send(ack, dest=0, tag=i)
        if i:  # the first one connects and warms up
            times.append(time.perf_counter() - t0)
    hosts = comm.gather(socket.gethostname())
    if comm.rank == 0:
        with open(a.out, "w") as f:
            json.dump({"seconds": times, "hosts": hosts, "bytes": buf.nbytes}, f)


if __name__ == "__main__":
    main()
