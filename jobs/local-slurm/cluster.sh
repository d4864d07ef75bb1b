#!/usr/bin/env bash
# A throw-away Slurm cluster on this machine: munged, slurmctld and NODES slurmd's
# (emulated nodes n1..nN sharing the host on different ports), all under one
# temporary folder, stopped by PID when the command it runs exits, whatever happens.
#
#   jobs/local-slurm/cluster.sh [--nodes 2] -- COMMAND...   # COMMAND sees SLURM_CONF
#   make slurm-test                                         # runs tests/slurm/ in it
#
# Needs root (the daemons run as root, SlurmUser=root) and Debian's slurm-wlm, munge
# and libpmix-dev; installs them with apt-get when missing. Without root or apt it
# prints "SKIP: ..." and exits 0 (exit 3 with --strict). Settings (environment):
#   HPCDL_SLURM_PORT  first TCP port (default 16817: slurmctld, then one per node)
#   HPCDL_SLURM_CPUS  CPUs declared per node (default: this machine's core count)
#   HPCDL_SLURM_KEEP  1: keep the temporary folder (logs) after exit
# Why each odd setting is there: docs/slurm.md, "A local Slurm for testing".
set -euo pipefail
NODES=2 STRICT=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) NODES=$2; shift 2 ;;
        --strict) STRICT=1; shift ;;
        --) shift; break ;;
        *) echo "cluster.sh: unknown option $1 (usage: cluster.sh [--nodes N] -- COMMAND...)" >&2
           exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "cluster.sh: no command given (cluster.sh [--nodes N] -- COMMAND...)" >&2; exit 2; }
[[ "$NODES" =~ ^[1-9]$ ]] || { echo "cluster.sh: --nodes $NODES: use 1..9" >&2; exit 2; }

skip() {  # a clear, visible skip: CI logs must show that Slurm was NOT tested
    echo "SKIP: local Slurm cluster not started: $*" >&2
    exit $(( STRICT ? 3 : 0 ))
}

# ---- 1. packages -------------------------------------------------------------------
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
compgen -G "/usr/lib/*/libpmix.so" >/dev/null || need+=(libpmix-dev)  # mpi_pmix dlopens the unversioned name
if (( ${#need[@]} )); then
    [[ $(id -u) -eq 0 ]] || skip "not root and ${need[*]} missing (install them, or run as root)"
    command -v apt-get >/dev/null || skip "no apt-get to install ${need[*]}"
    echo "cluster.sh: installing ${need[*]} (apt-get)"
    timeout 600 apt-get update -qq || skip "apt-get update failed (offline?)"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null || skip "apt-get install ${need[*]} failed"
fi
[[ $(id -u) -eq 0 ]] || skip "not root (this recipe runs slurmctld/slurmd as root)"

# ---- 2. config under a temporary folder --------------------------------------------
T=$(mktemp -d /tmp/hpcdl-slurm.XXXXXX)
chmod 755 "$T"
PIDS=()            # daemons we started, in start order
MARK="HPCDL_LOCAL_SLURM=$T"   # in every daemon's environment, so their orphans are found by PID

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM HUP
    # The command's process group (its own, see 5.): pytest and the sbatch/srun it
    # started, whether it was interrupted or left children behind.
    if [[ -n $CMD ]]; then
        kill -TERM -- "-$CMD" 2>/dev/null
        for _ in $(seq 50); do kill -0 -- "-$CMD" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$CMD" 2>/dev/null
    fi
    # Cancel what is left so slurmd takes its steps down itself; then stop the daemons.
    SLURM_CONF=$T/n1/slurm.conf timeout 10 scancel --quiet --full --signal=KILL --user=root \
        2>/dev/null || true
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.2
    done
    # A slurmd stuck on a failed step ignores SIGTERM; slurmstepd's double-fork away from
    # slurmd (PID 1 here does not reap or kill them): find both by the marker, by PID.
    local strays=()
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}; pid=${pid%/environ}
        [[ $pid == "$$" ]] && continue
        { tr '\0' '\n' <"$env" | grep -qxF "$MARK"; } 2>/dev/null && strays+=("$pid")
    done
    for pid in "${PIDS[@]}" "${strays[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if (( rc != 0 )) || [[ ${HPCDL_SLURM_KEEP:-0} == 1 ]]; then
        # The requeue test makes slurmstepd log "error: *** JOB n ... CANCELLED ... DUE TO
        # JOB REQUEUE ***" in every run: it is how a requeue looks, not a failure.
        for f in "$T"/*.log; do   # (the *.out files repeat them)
            [[ -s $f ]] || continue
            echo "--- tail $f (daemon log)"
            grep -v 'DUE TO JOB REQUEUE' "$f" | tail -n 15
        done >&2
    fi
    if [[ ${HPCDL_SLURM_KEEP:-0} == 1 ]]; then echo "cluster.sh: kept $T" >&2; fi
    echo "cluster.sh: stopped ${#PIDS[@]} daemon(s) and ${#strays[@]} leftover process(es)" >&2
    if (( rc != 0 )); then
        # Last, so that the end of a failed run names what failed (tests/slurm/slurm_report.py
        # writes one line per failed test there).
        [[ -s $T/failures.txt ]] && cat "$T/failures.txt" >&2
        echo "cluster.sh: FAILED: the command exited $rc: ${CMDLINE:-}" >&2
    fi
    [[ ${HPCDL_SLURM_KEEP:-0} == 1 ]] || rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
CMDLINE="$*"
CMD=
trap 'exit 130' INT    # cleanup (the EXIT trap) stops the command's process group
trap 'exit 143' TERM
trap 'exit 129' HUP

UTS=0
mkdir -p "$T/spool" "$T/tmp"
if unshare --uts --mount sh -c "mount --bind $T/tmp $T/spool && mount -t tmpfs shm /dev/shm" 2>/dev/null; then UTS=1
elif (( NODES > 1 )); then
    echo "cluster.sh: WARNING: unshare --uts --mount failed: the $NODES nodes share one hostname" \
         "and one spool folder, so MPI jobs spanning them cannot start (HPCDL_SLURM_UTS=0 tells the tests)" >&2
fi
export HPCDL_SLURM_UTS=$UTS
PORT=${HPCDL_SLURM_PORT:-16817}
CPUS=${HPCDL_SLURM_CPUS:-$(nproc)}
HOST=$(hostname -s)
mkdir -p "$T/state" "$T/munge"
# Our own munged on our own socket and key: nothing shared with a system munge.
chown munge:munge "$T/munge"; chmod 755 "$T/munge"
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$T/munge/munge.key"; chmod 400 "$T/munge/munge.key"

write_conf() {  # $1: node name, for TmpFS (pmix collides when two slurmd share one /tmp)
    local dir=$T/$1 n
    mkdir -p "$dir/tmp" "$dir/spool"; chmod 1777 "$dir/tmp"
    {
        echo "ClusterName=hpcdl-local"
        echo "SlurmctldHost=$HOST(127.0.0.1)"
        echo "SlurmctldPort=$PORT"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        # cred_expire: a requeued job waits this long to start again (default 120 s)
        echo "AuthInfo=socket=$T/munge/munge.socket,cred_expire=10"
        echo "CredType=cred/munge"
        echo "StateSaveLocation=$T/state"
        if (( UTS )); then  # one path, a different folder on each node (bind mounts)
            echo "SlurmdSpoolDir=$T/spool"
            echo "TmpFS=$T/tmp"
        else
            echo "SlurmdSpoolDir=$dir/spool"
            echo "TmpFS=$dir/tmp"
        fi
        echo "SlurmctldPidFile=$T/slurmctld.pid"
        echo "SlurmdPidFile=$dir/slurmd.pid"
        echo "SlurmctldLogFile=$T/slurmctld.log"
        echo "SlurmdLogFile=$T/slurmd-$1.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "SchedulerType=sched/backfill"
        echo "MpiDefault=none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "ReturnToService=2"
        echo "SlurmdParameters=config_overrides"
        echo "DebugFlags=NO_CONF_HASH"   # the per-node TmpFS makes the files differ on purpose
        echo "KillWait=5"
        echo "InactiveLimit=0"
        echo "MinJobAge=600"   # the tests read a finished job's state and exit code
        for (( n=1; n<=NODES; n++ )); do
            echo "NodeName=n$n NodeAddr=127.0.0.1 Port=$((PORT + n)) CPUs=$CPUS State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=30 State=UP OverSubscribe=NO"
    } >"$dir/slurm.conf"
    # The Open MPI wheel's PMIx has no munge security module: native it is, in every step.
    echo "PMIxEnv=PMIX_SECURITY_MODE=native" >"$dir/mpi.conf"
    # Both stepds share one host: route their PMIx traffic through slurmd (direct
    # connections resolved the peer's socket path with the local node's spool folder),
    # and give each node its own client folder (a shared one let ranks find the other
    # node's PMIx server and hang in MPI_Init).
    echo "PMIxDirectConn=false" >>"$dir/mpi.conf"
    echo "PMIxCliTmpDirBase=$dir/tmp" >>"$dir/mpi.conf"
}
for (( n=1; n<=NODES; n++ )); do write_conf "n$n"; done
export SLURM_CONF=$T/n1/slurm.conf

# ---- 3. daemons, foreground (-D) children of this shell so their PIDs are ours -----
start() {  # $1: log name, rest: command
    local log=$T/$1.out; shift
    env "$MARK" "$@" >"$log" 2>&1 &
    PIDS+=($!)
}
start munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground --force --socket "$T/munge/munge.socket" \
    --key-file "$T/munge/munge.key" --pid-file "$T/munge/munged.pid" \
    --seed-file "$T/munge/munged.seed" --log-file "$T/munged.log"
for _ in $(seq 100); do [[ -S $T/munge/munge.socket ]] && break; sleep 0.1; done
[[ -S $T/munge/munge.socket ]] || { echo "cluster.sh: munged did not start" >&2; cat "$T/munged.out" >&2; exit 1; }
start slurmctld slurmctld -D -i -f "$T/n1/slurm.conf"
for (( n=1; n<=NODES; n++ )); do
    # Each emulated node gets its own hostname (a UTS namespace): Slurm's PMIx tells
    # Open MPI the host by gethostname(), and two nodes named alike made MPI_Init hang.
    # And its own /dev/shm: Open MPI's shared-memory segments are named by job and local
    # rank, which repeat on every node (and in a second local cluster), and crashed.
    # unshare without --fork and sh's exec keep the PID we record that of slurmd itself.
    if (( UTS )); then
        start "slurmd-n$n" unshare --uts --mount sh -c \
            'hostname "$0" && mount --bind "$1/$0/spool" "$1/spool" && mount --bind "$1/$0/tmp" "$1/tmp" && mount -t tmpfs -o mode=1777 shm /dev/shm && shift && exec "$@"' \
            "n$n" "$T" slurmd -D -N "n$n" -f "$T/n$n/slurm.conf"
    else
        start "slurmd-n$n" slurmd -D -N "n$n" -f "$T/n$n/slurm.conf"
    fi
done

# ---- 4. wait until every node is idle ------------------------------------------------
deadline=$(( SECONDS + 60 ))
while :; do
    states=$(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)
    idle=$(grep -c ' idle$' <<<"$states" || true)
    (( idle == NODES )) && break
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "cluster.sh: daemon $pid exited early" >&2; exit 1; }
    done
    if (( SECONDS > deadline )); then
        echo "cluster.sh: nodes not idle after 60 s: ${states:-no answer from slurmctld}" >&2; exit 1
    fi
    sleep 0.3
done
echo "cluster.sh: $NODES node(s) idle ($(tr '\n' ' ' <<<"$states")) in ${SECONDS}s; SLURM_CONF=$SLURM_CONF"

# ---- 5. the command; its exit code is ours ------------------------------------------
# In the background + wait, so that a TERM/INT to this script runs the trap at once
# (bash defers traps until a foreground child returns). setsid: its own process group,
# whose id is its PID (a background child is no group leader, so setsid does not
# fork), so that cleanup stops it and every process it started, by that id.
set +e
export HPCDL_LOCAL_SLURM_DIR=$T
setsid "$@" <&0 &   # <&0: a background job would read /dev/null (cluster.sh -- bash)
CMD=$!
wait "$CMD"
exit $?
