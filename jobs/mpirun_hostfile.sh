#!/usr/bin/env bash
# The main job on several machines with the site's mpirun and a hostfile (no scheduler).
#   HOSTFILE=hosts.txt NP=8 jobs/mpirun_hostfile.sh --device cuda --amp
# hosts.txt, Open MPI syntax (one line per node, slots = ranks = GPUs on it):
#   node01 slots=4
#   node02 slots=4
#
# Install once, in a venv on a filesystem every node sees:
#   module load openmpi cuda              # the site MPI and CUDA (names vary by site)
#   python -m venv $HOME/venvs/hpcdl && . $HOME/venvs/hpcdl/bin/activate
#   pip install torch --index-url https://download.pytorch.org/whl/cu124   # torch's CUDA build
#   MPICC=$(which mpicc) pip install --no-binary=mpi4py mpi4py             # built against site MPI
#   pip install -e ".[examples]"          # NOT the [openmpi] extra: use the site's MPI
#   pip install cupy-cuda12x              # optional: hpcdl's fused pack/unpack kernels on GPU
# `hpcdl info` on each node prints the MPI library mpi4py loaded and whether it is CUDA-aware.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${HOSTFILE:?set HOSTFILE to an mpirun hostfile}"
NP=${NP:-$(awk '{for(i=1;i<=NF;i++) if($i ~ /^slots=/){split($i,a,"="); n+=a[2]}} END{print n}' "$HOSTFILE")}
PYTHON=${PYTHON:-python}
# -x forwards the venv to remote ranks; --map-by ppr:N:node places one rank per GPU.
exec mpirun -np "$NP" --hostfile "$HOSTFILE" -x PATH -x LD_LIBRARY_PATH -x VIRTUAL_ENV \
    "$PYTHON" -m mpi4py -m hpcdl.examples.train --out "${OUT:-out/mpirun}" "$@"
