#!/bin/sh
# Open MPI's launch agent inside an emulated cluster (cluster.sh copies this file and
# fills in @PIDS@): called like ssh, "node-exec.sh [OPTIONS] HOST COMMAND-STRING...",
# it runs the command string with sh inside HOST's network, UTS and mount namespaces,
# by entering those of the process that holds them (its PID is in @PIDS@/HOST).
while [ $# -gt 0 ]; do
    case "$1" in
        -*) shift ;;          # ssh options Open MPI may add (-x, -o ...): no meaning here
        *) break ;;
    esac
done
host=$1
shift
if [ ! -r "@PIDS@/$host" ]; then
    echo "node-exec: no node named '$host' in this cluster (nodes: $(ls @PIDS@ | tr '\n' ' '))" >&2
    exit 255
fi
exec nsenter -t "$(cat "@PIDS@/$host")" --net --uts --mount --wd="$PWD" -- /bin/sh -c "$*"
