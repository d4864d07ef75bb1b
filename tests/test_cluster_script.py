"""jobs/local-cluster/cluster.sh from the outside: arguments, the skip without root, the
exit code, and that every namespace it made is gone on every exit path.

Run by ``make cluster-test`` (HPCDL_CLUSTER_TEST=1), before the in-cluster tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from helpers.cluster_run import REPO

pytestmark = [pytest.mark.spawns,
              pytest.mark.skipif(os.environ.get("HPCDL_CLUSTER_TEST") != "1",
                                 reason="make cluster-test runs these (HPCDL_CLUSTER_TEST=1)")]
SCRIPT = REPO / "jobs/local-cluster/cluster.sh"


def _namespaces_work() -> bool:
    """Root, iproute2, and a kernel that gives network/UTS/mount namespaces."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return False
    try:
        return subprocess.run(["unshare", "--net", "--uts", "--mount", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to drop it, or for namespaces)")
needs_netns = pytest.mark.skipif(not _namespaces_work(),
                                 reason="needs root and network namespaces (cluster.sh says SKIP)")


def namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [ln.split()[0] for ln in out.stdout.splitlines() if ln.startswith(f"hpcdlc{pid}-")]


@pytest.mark.parametrize("args, why", [
    (["--nodes", "0", "--", "true"], "--nodes 0: use 1..16"),
    (["--link", "fast", "--", "true"], "--link fast"),
    (["--nodes", "2", "--slow-node", "3", "--slow-link", "1mbit", "--", "true"], "has 2 node(s)"),
    (["--slow-node", "1", "--", "true"], "needs --slow-link"),
    (["--nodes", "2"], "no command given"),
])
def test_bad_arguments_are_refused(args, why):
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and why in done.stderr, (done.returncode, done.stderr)


@needs_root   # setpriv drops root to check what happens without it
def test_without_root_it_says_skip():
    # The checkout may sit in a folder only root can enter (a CI clone under mktemp -d):
    # the unprivileged user runs a copy of the script from a folder anyone can read.
    where = tempfile.mkdtemp(prefix="hpcdl-cluster-script-")
    try:
        os.chmod(where, 0o755)
        script = shutil.copytree(SCRIPT.parent, os.path.join(where, "local-cluster"))
        _says_skip_without_root(os.path.join(script, SCRIPT.name))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _says_skip_without_root(script: str) -> None:
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           script, "--", "true"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "SKIP: emulated cluster not started: not root" in done.stderr, \
        (done.returncode, done.stderr)
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           script, "--strict", "--", "true"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 3, (done.returncode, done.stderr)


@needs_netns
def test_the_command_exit_code_is_returned_and_nothing_is_left():
    proc = subprocess.Popen([str(SCRIPT), "--nodes", "2", "--link", "none", "--", "sh", "-c",
                             "hostname; exit 7"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert out.splitlines()[-1] == "head", out   # the command runs on the login node
    assert "FAILED: the command exited 7" in err, err
    assert namespaces(proc.pid) == []


@needs_netns
@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                      (signal.SIGHUP, 129)])
def test_a_signal_stops_the_command_and_removes_every_namespace(sig, rc, tmp_path):
    # The command (a job across both nodes that would sleep 300 s) is running on the
    # nodes when the signal comes: every rank, daemon and namespace must go.
    marker = tmp_path / "started"
    secs = f"{300 + os.getpid() % 997 / 1000:.3f}"   # a sleep this test's processes alone run
    job = f"touch {marker}; exec sleep {secs}"
    hpcdl = REPO / ".venv/bin/hpcdl"
    proc = subprocess.Popen([str(SCRIPT), "--nodes", "2", "--link", "1gbit", "--", str(hpcdl),
                             "launch", "-n", "4", "--", "sh", "-c", job],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and len(namespaces(proc.pid)) == 4):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job did not start within 60 s"
            time.sleep(0.2)
        time.sleep(1)  # every rank started
        running = subprocess.run(["pgrep", "-f", f"^sleep {secs}$"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
        assert len(running) == 4, running
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == rc, err
    assert namespaces(proc.pid) == [], err
    left = subprocess.run(["pgrep", "-f", f"^sleep {secs}$"], capture_output=True, text=True)
    assert left.stdout == "", f"processes left: {left.stdout}"
