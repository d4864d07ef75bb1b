#!/usr/bin/env bash
# The main job on one machine (laptop, workstation, CI box): 4 ranks with hpcdl's launcher.
#   jobs/laptop.sh                  # defaults: 20 epochs, CPU, results in out/laptop
#   RANKS=2 jobs/laptop.sh --amp    # extra arguments go to the training script
# Setup once: make setup (a venv with the CPU build of torch, mpi4py and the Open MPI wheel).
# `hpcdl launch` finds the venv's mpiexec, allows oversubscription (more ranks than cores),
# and runs python under -m mpi4py so one crashed rank ends the job instead of hanging it.
# The script gives each rank cores/ranks torch threads (see docs/training.md, "threads").
set -euo pipefail
cd "$(dirname "$0")/.."
HPCDL=${HPCDL:-.venv/bin/hpcdl}
exec timeout 600 "$HPCDL" launch -n "${RANKS:-4}" -- \
    python -m hpcdl.examples.train --out "${OUT:-out/laptop}" "$@"
