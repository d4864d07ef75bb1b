#!/usr/bin/env bash
# An emulated cluster on this machine: NODES nodes, each its own network namespace,
# hostname (UTS namespace) and /dev/shm (mount namespace), joined by a bridge through
# links shaped with tc tbf. COMMAND runs on a login node ("head", no ranks) with Open MPI
# set up to start its daemons on the nodes through a launch agent that enters a node's
# namespaces (no ssh), so `mpiexec` and `hpcdl launch -n N` fill n1, then n2, ...
#
#   jobs/local-cluster/cluster.sh --nodes 2 --link 1gbit -- hpcdl launch -n 4 -- hpcdl info
#   jobs/local-cluster/cluster.sh --nodes 4 --link 1gbit --slow-node 4 --slow-link 100mbit -- CMD
#   make cluster-test                                 # tests/test_cluster_*.py inside one
#
# Options: --nodes N (1..16, default 2), --link RATE (tc rate: 1gbit, 100mbit, ... or
# none; default 1gbit), --slots S (ranks per node before the next node is used; default
# this machine's core count), --slow-node K --slow-link RATE (node K's link at RATE),
# --strict (exit 3 instead of 0 when the cluster cannot be built).
# COMMAND sees HPCDL_CLUSTER_NODES, HPCDL_CLUSTER_LINK, HPCDL_CLUSTER_HOSTFILE (also as
# HOSTFILE, for jobs/mpirun_hostfile.sh) and the Open MPI variables (docs/cluster.md).
# Needs root and network namespaces; otherwise prints "SKIP: ..." and exits 0.
# Everything made is named hpcdlc<pid>-*: namespaces, and inside them the bridge and
# veths. It is deleted by name on every exit path; a run killed with SIGKILL leaves
# names whose pid is dead, which the next run deletes.
set -euo pipefail
NODES=2 LINK=1gbit SLOTS=$(nproc) SLOW_NODE=0 SLOW_LINK= STRICT=0
usage="usage: cluster.sh --nodes N --link RATE [--slots S] [--slow-node K --slow-link RATE] -- COMMAND..."
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) NODES=$2; shift 2 ;;
        --link) LINK=$2; shift 2 ;;
        --slots) SLOTS=$2; shift 2 ;;
        --slow-node) SLOW_NODE=$2; shift 2 ;;
        --slow-link) SLOW_LINK=$2; shift 2 ;;
        --strict) STRICT=1; shift ;;
        --) shift; break ;;
        *) echo "cluster.sh: unknown option $1 ($usage)" >&2; exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "cluster.sh: no command given ($usage)" >&2; exit 2; }
[[ $NODES =~ ^[0-9]+$ ]] && (( NODES >= 1 && NODES <= 16 )) || { echo "cluster.sh: --nodes $NODES: use 1..16" >&2; exit 2; }
[[ $SLOTS =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: --slots $SLOTS: use a positive integer" >&2; exit 2; }
rate_ok() { [[ $1 == none || $1 =~ ^[1-9][0-9]*(kbit|mbit|gbit)$ ]]; }
rate_ok "$LINK" || { echo "cluster.sh: --link $LINK: use e.g. 100mbit, 1gbit, 10gbit or none" >&2; exit 2; }
if (( SLOW_NODE )); then
    (( SLOW_NODE <= NODES )) || { echo "cluster.sh: --slow-node $SLOW_NODE: the cluster has $NODES node(s)" >&2; exit 2; }
    rate_ok "${SLOW_LINK:-}" || { echo "cluster.sh: --slow-node needs --slow-link RATE (e.g. 100mbit), got '${SLOW_LINK:-}'" >&2; exit 2; }
fi

skip() {  # a clear, visible skip: CI logs must show that the cluster was NOT tested
    echo "SKIP: emulated cluster not started: $*" >&2
    exit $(( STRICT ? 3 : 0 ))
}
[[ $(id -u) -eq 0 ]] || skip "not root (network namespaces and tc need it)"
for tool in ip tc nsenter unshare setsid; do
    command -v "$tool" >/dev/null || skip "$tool not found (iproute2 / util-linux)"
done

P=hpcdlc$$            # every name this run makes starts with it
SUBNET=10.77.0        # private to this run's namespaces: concurrent runs do not meet
SW=$P-sw HEAD=$P-head
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d /tmp/hpcdl-cluster.XXXXXX)
chmod 755 "$T"; mkdir -p "$T/tmp" "$T/pids"; chmod 1777 "$T/tmp"
HOLDERS=() CMD= CMDLINE="$*"

# Leftovers of an earlier run that was SIGKILLed: its pid is gone, so its names are free.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^hpcdlc[0-9]+-' || true); do
    owner=${ns#hpcdlc}; owner=${owner%%-*}
    kill -0 "$owner" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

cleanup() {
    local rc=$? ns pid
    trap - EXIT INT TERM HUP
    if [[ -n $CMD ]]; then   # the command's process group: mpiexec and what it started
        kill -TERM -- "-$CMD" 2>/dev/null
        for _ in $(seq 50); do kill -0 -- "-$CMD" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$CMD" 2>/dev/null
    fi
    # Open MPI daemons and ranks on the nodes are no children of the command's group
    # (the agent's nsenter keeps them in it, but a daemon may setsid): every process left
    # in one of this run's network namespaces is this run's.
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$P-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    for pid in "${HOLDERS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$P-" || true); do
        ip netns del "$ns" 2>/dev/null || echo "cluster.sh: could not delete namespace $ns" >&2
    done
    rm -rf "$T"
    echo "cluster.sh: removed $P-* ($NODES node(s)); the command exited $rc" >&2
    (( rc == 0 )) || echo "cluster.sh: FAILED: the command exited $rc: $CMDLINE" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT   # the EXIT trap cleans up
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---- 1. namespaces, bridge, shaped links -------------------------------------------
ip netns add "$SW" 2>/dev/null || skip "ip netns add failed (no network namespace support?)"
ip -n "$SW" link set lo up
ip -n "$SW" link add br0 type bridge || skip "no bridge support in this kernel"
ip -n "$SW" link set br0 up
shape() {  # $1 namespace, $2 device, $3 rate: tbf on that device's egress
    [[ $3 == none ]] && return 0
    local bits=${3%bit} mult
    case $bits in *k) mult=1000 ;; *m) mult=1000000 ;; *g) mult=1000000000 ;; esac
    # burst: 2 ms at the rate, at least 64 KiB (one GSO packet); 50 ms of queue
    local burst=$(( ${bits%?} * mult / 8 / 500 )); (( burst >= 65536 )) || burst=65536
    tc -n "$1" qdisc add dev "$2" root tbf rate "$3" burst "$burst" latency 50ms \
        || skip "tc qdisc add ... tbf failed on $2"
}
link_node() {  # $1 namespace, $2 address, $3 switch port name, $4 rate
    ip netns add "$1"
    ip -n "$1" link set lo up
    ip -n "$SW" link add "$3" type veth peer name eth0 netns "$1"
    ip -n "$SW" link set "$3" master br0 up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    shape "$1" eth0 "$4"        # the node's upload
    shape "$SW" "$3" "$4"       # its download (the switch port's egress)
}
link_node "$HEAD" "$SUBNET.254" phead none   # the login node: control traffic only
{ echo "127.0.0.1 localhost"; echo "$SUBNET.254 head"; } >"$T/hosts"
: >"$T/hostfile"
for (( n=1; n<=NODES; n++ )); do
    rate=$LINK; (( n == SLOW_NODE )) && rate=$SLOW_LINK
    link_node "$P-n$n" "$SUBNET.$n" "p$n" "$rate"
    echo "$SUBNET.$n n$n" >>"$T/hosts"
    echo "n$n slots=$SLOTS" >>"$T/hostfile"
done

# ---- 2. a process holding each node's hostname and /dev/shm ------------------------
# One long-lived process per node owns its UTS and mount namespaces; the launch agent
# joins them with nsenter. /etc/hosts is the cluster's, so node names resolve as on a
# real cluster; /dev/shm is the node's own, so Open MPI's shared-memory segments (named
# by job and local rank, which repeat on every node) never meet another node's.
hold() {  # $1 namespace, $2 hostname
    ip netns exec "$1" unshare --uts --mount --propagation private sh -c \
        'hostname "$0" && mount -t tmpfs -o mode=1777 shm /dev/shm && mount --bind "$1" /etc/hosts && exec sleep 86400' \
        "$2" "$T/hosts" &
    HOLDERS+=($!)
    echo $! >"$T/pids/$2"
    disown $!   # killed by PID in cleanup, without bash reporting "Killed"
}
hold "$HEAD" head
for (( n=1; n<=NODES; n++ )); do hold "$P-n$n" "n$n"; done
deadline=$(( SECONDS + 20 ))
for name in head $(seq -f 'n%g' 1 "$NODES"); do
    pid=$(cat "$T/pids/$name")
    until [[ $(nsenter -t "$pid" --uts hostname 2>/dev/null) == "$name" ]] \
          && nsenter -t "$pid" --mount grep -q ' /dev/shm tmpfs' /proc/self/mounts 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || skip "could not make node $name (unshare --uts --mount failed?)"
        (( SECONDS < deadline )) || { echo "cluster.sh: node $name not ready after 20 s" >&2; exit 1; }
        sleep 0.1
    done
done

# ---- 3. the launch agent and Open MPI's settings ------------------------------------
# Open MPI's ssh launcher runs "AGENT HOST COMMAND-STRING" for every node but the one
# mpiexec runs on, as it would run ssh; the agent enters HOST's namespaces instead.
sed "s|@PIDS@|$T/pids|" "$HERE/node-exec.sh" >"$T/node-exec"
chmod 755 "$T/node-exec"
export PRTE_MCA_plm_ssh_agent=$T/node-exec
export PRTE_MCA_plm_ssh_no_tree_spawn=1       # mpiexec starts every daemon itself
export PRTE_MCA_prte_default_hostfile=$T/hostfile
# Fill n1's slots, then n2's, ...; past every slot, oversubscribe rather than refuse.
export PRTE_MCA_rmaps_default_mapping_policy=slot:oversubscribe
export PRTE_MCA_oob_tcp_if_include=$SUBNET.0/24
# Between nodes TCP over the shaped links, within a node shared memory (never loopback).
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,sm,tcp OMPI_MCA_btl_tcp_if_include=$SUBNET.0/24
# Every node's ranks share this one machine's cores, which Open MPI cannot see (each node
# has its own slots): busy-polling ranks then take the cores from the ranks that have
# data to move, and a 64 KiB allreduce at 2x2 took 24 ms instead of 0.2 ms. Yield.
export OMPI_MCA_mpi_yield_when_idle=1
# A bare mpirun as root (jobs/mpirun_hostfile.sh) as well as hpcdl launch: this is root's cluster.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TMPDIR=$T/tmp   # session folders: one per cluster, one per node inside it (hostname)
export HPCDL_CLUSTER_NODES=$NODES HPCDL_CLUSTER_LINK=$LINK HPCDL_CLUSTER_SLOTS=$SLOTS
export HPCDL_CLUSTER_SLOW_NODE=$SLOW_NODE HPCDL_CLUSTER_SLOW_LINK=$SLOW_LINK
export HPCDL_CLUSTER_HOSTFILE=$T/hostfile HOSTFILE=$T/hostfile
desc="$NODES node(s) x $SLOTS slot(s), links $LINK"
(( SLOW_NODE )) && desc+=", n$SLOW_NODE at $SLOW_LINK"
echo "cluster.sh: $desc; namespaces $P-*; COMMAND runs on head"

# ---- 4. the command on the login node; its exit code is ours ------------------------
# In the background + wait, so that a signal to this script runs the trap at once;
# setsid: its own process group (id = its PID), which cleanup stops whole.
set +e
setsid nsenter -t "$(cat "$T/pids/head")" --net --uts --mount --wd="$PWD" -- "$@" <&0 &
CMD=$!
wait "$CMD"
exit $?
