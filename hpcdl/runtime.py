"""``hpcdl.init()``: who am I, where am I, what can my MPI do.

The library talks on its own ``Dup`` of ``COMM_WORLD`` so its traffic never
matches a receive the user posted on ``COMM_WORLD``. Node layout comes from
MPI itself (``Split_type(COMM_TYPE_SHARED)``), keyed on the launcher's local
rank where the launcher gives one so both agree; ``HPCDL_RANKS_PER_NODE=k``
replaces it with blocks of ``k`` consecutive ranks, so that one machine can
stand in for several nodes in tests of hierarchical algorithms.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import shutil
import subprocess
import sys
import threading
import traceback
import warnings
from typing import Any, Mapping

from mpi4py import MPI

from . import context, trace as tracing, watchdog
from .collectives.debug import set_debug
from .collectives.handle import close_all
from . import ulfm
from .comm.mpi import MPICommunicator
from .comm.nodes import NodeComms, attach_node_comms, job_layout
from .context import Context, default_comm, get_context, is_initialized
from .device import gpu_count
from .errors import InvalidArgumentError

__all__ = ["Context", "init", "get_context", "default_comm", "is_initialized", "probe_cuda_aware",
           "launcher_env", "under_launcher", "launched_rank", "set_default_context"]

_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID",
                    "PMI_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "PALS_LOCAL_RANKID")
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMI_RANK", "PMIX_RANK",
              "MV2_COMM_WORLD_RANK", "PALS_RANKID")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
# Set only in a process that a launcher started as one rank of a job: mpirun/mpiexec
# (Open MPI, MPICH/Hydra, MVAPICH, PALS) or an srun step. Not SLURM_NTASKS or
# SLURM_PROCID: an salloc shell or a batch script (not a rank) has those too.
_JOB_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE",
             "PALS_RANKID", "SLURM_STEP_ID")


_LOCK = threading.Lock()


def launcher_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The launcher's rank variables present in ``env`` (srun, mpirun, mpiexec.hydra, ...)."""
    env = os.environ if env is None else env
    return {k: env[k] for k in (*_RANK_VARS, *_LOCAL_RANK_VARS, *_SIZE_VARS) if k in env}


def under_launcher(env: Mapping[str, str] | None = None) -> bool:
    """Is this process one rank of a launched job (mpiexec, mpirun, srun, ...)?"""
    env = os.environ if env is None else env
    return any(k in env for k in _JOB_VARS)


def launched_rank(env: Mapping[str, str] | None = None) -> int | None:
    """This process's rank as its launcher numbered it; None when no launcher says."""
    return _first_int(os.environ if env is None else env, _RANK_VARS)


def _first_int(env: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def _loaded_libmpi() -> str | None:
    """Path of the libmpi this process actually loaded (it may not be the one on PATH)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libmpi.so" in path or "/libmpi_" in path and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def probe_cuda_aware(library_version: str, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Is MPI CUDA-aware? Returns ``(answer, how it was decided)``.

    When unsure the answer is no: a wrong "no" costs a copy through host memory,
    a wrong "yes" hands device pointers to an MPI that dereferences them on the
    host and segfaults.
    """
    env = os.environ if env is None else env
    forced = env.get("HPCDL_CUDA_AWARE")
    if forced is not None:
        if forced not in ("0", "1"):
            raise InvalidArgumentError(f"HPCDL_CUDA_AWARE={forced!r}; use 0 or 1", op="init")
        return forced == "1", f"HPCDL_CUDA_AWARE={forced}"
    if "Open MPI" in library_version:
        lib = _loaded_libmpi()
        if lib:
            try:
                query = ctypes.CDLL(lib).MPIX_Query_cuda_support
                query.restype = ctypes.c_int
                answer = int(query())
                return bool(answer), f"MPIX_Query_cuda_support() returned {answer}"
            except (OSError, AttributeError):
                pass
        info = shutil.which("ompi_info", path=os.path.join(os.path.dirname(lib), "..", "bin")) \
            if lib else None
        if info:
            out = subprocess.run([info, "--parsable", "--all"], capture_output=True, text=True,
                                 timeout=30).stdout
            built = "mpi_built_with_cuda_support:value:true" in out
            return built, f"ompi_info: mpi_built_with_cuda_support={str(built).lower()}"
        return False, "Open MPI without MPIX_Query_cuda_support or ompi_info: assuming no"
    if env.get("MPICH_GPU_SUPPORT_ENABLED") == "1":
        return True, "Cray MPICH with MPICH_GPU_SUPPORT_ENABLED=1"
    if "MVAPICH" in library_version:
        on = env.get("MV2_USE_CUDA") == "1"
        return on, f"MVAPICH with MV2_USE_CUDA={env.get('MV2_USE_CUDA', 'unset')}"
    if "MPICH" in library_version:
        built = "--with-cuda" in library_version
        enabled = env.get("MPIR_CVAR_ENABLE_GPU", "1") != "0"
        return built and enabled, (f"MPICH built {'with' if built else 'without'} --with-cuda"
                                   + ("" if enabled else ", MPIR_CVAR_ENABLE_GPU=0"))
    return False, "unrecognised MPI library: assuming no"


def _bind_gpu(local_rank: int) -> tuple[int | None, int]:
    count = gpu_count()
    if count == 0:
        return None, 0
    gpu = local_rank % count
    try:
        import cupy

        cupy.cuda.Device(gpu).use()
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.set_device(gpu)
    return gpu, count


def _write_stderr(text: str) -> None:
    """Write ``text`` to the process's real stderr (file descriptor 2), now.

    Not to ``sys.stderr``: a hook chained in front of ours may have pointed it
    elsewhere for the duration of the call (torch's ``init_process_group``
    installs one that swaps in a ``StringIO`` and prints it only after our hook
    returns), and ``MPI_Abort`` ends the process before that. Whatever Python
    buffered on the real streams is flushed first so the report comes after it.
    """
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or broken: the report still goes out
            pass
    data = text.encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:  # fd 2 closed: nowhere left to report, the abort still happens
        pass


def _abort_on_uncaught(rank: int, size: int, world: Any) -> None:
    """One rank's uncaught exception ends the whole job (MPI_Abort), naming the rank."""
    if os.environ.get("HPCDL_ABORT_ON_ERROR", "1") == "0":
        return

    def report_and_abort(kind: str, exc_type: type, exc: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        _write_stderr(f"\n[hpcdl rank {rank}/{size}] {kind}; aborting the whole job "
                      f"(MPI_Abort):\n{text}")
        if os.environ.get("HPCDL_FT") == "1" and hasattr(signal, "alarm"):
            # Under ULFM, with a rank of the job dead already, MPI_Abort was seen (rarely,
            # on a loaded machine) not to return or end the process: SIGALRM's default
            # action ends it in 10 s whatever holds the GIL, so the job still ends.
            signal.alarm(10)
        world.Abort(1)

    previous = sys.excepthook

    def excepthook(exc_type: type, exc: BaseException, tb: Any) -> None:
        if issubclass(exc_type, KeyboardInterrupt) and size == 1:
            previous(exc_type, exc, tb)
            return
        report_and_abort("uncaught exception", exc_type, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        report_and_abort(f"uncaught exception in thread {args.thread.name if args.thread else '?'}",
                         args.exc_type, args.exc_value, args.exc_traceback)  # type: ignore[arg-type]

    sys.excepthook = excepthook
    threading.excepthook = thread_hook


def init(comm: Any = None, timeout: float | None = None, *,
         trace: str | None = None) -> Context:
    """Initialise hpcdl and return a :class:`Context`. Collective over the ranks.

    Without ``comm``: the default context, over a Dup of ``COMM_WORLD``, made
    once; later calls return it unchanged (their ``timeout`` and ``trace`` are
    not looked at). It alone gets the tracer.

    ``comm``: an mpi4py communicator to build a context over instead (hpcdl
    works on its own Dup of it). Every call makes a new context, not the
    default one; ``trace`` does not apply to it.

    Whichever communicator is given, the first ``init`` of the process installs
    the job's safety nets, once: the hook that aborts the whole job on an
    uncaught exception (naming the rank in ``COMM_WORLD``), the exit handler that
    drains the async queues before MPI is finalized, and, with a timeout, the
    watchdog. The watchdog's thread is started collectively over ``COMM_WORLD``,
    so a ``comm`` over only some of the job's ranks cannot start it (a warning
    says so; ``init()`` on every rank first can); once running it watches every
    context's communicator, with the timeout it was started with.

    ``timeout`` (seconds; default ``$HPCDL_TIMEOUT``, else 600; 0 = off) turns
    on the watchdog: an operation that waits that long ends the job naming the
    ranks it waits for (docs/fault-tolerance.md); ranks that pass different values
    get a MismatchError.
    ``trace`` (or ``$HPCDL_TRACE``) is a folder to record a timeline of every
    rank into (:mod:`hpcdl.trace`); every rank must pass the same.
    """
    with _LOCK:
        if comm is None and context.is_initialized():
            return context.get_context()
        env = os.environ
        base = MPI.COMM_WORLD if comm is None else comm
        # FT mode (HPCDL_FT=1): errors return, so a dead rank is a ProcessFailed the
        # survivors can handle (hpcdl/ulfm.py); the Dup below inherits the handler.
        ulfm.make_fault_tolerant(MPI.COMM_WORLD)
        ulfm.make_fault_tolerant(base)
        ulfm.guard_exit()   # after a failure, leave without MPI_Finalize (see hpcdl/ulfm.py)

        dup = base.Dup()
        wd_timeout = watchdog.resolve_timeout(timeout, rank=dup.Get_rank())
        watchdog.agree(dup, wd_timeout)
        if wd_timeout and not watchdog.active() \
                and dup.Get_size() != MPI.COMM_WORLD.Get_size():
            warnings.warn(f"hpcdl.init(comm) over {dup.Get_size()} of the job's "
                          f"{MPI.COMM_WORLD.Get_size()} ranks cannot start the watchdog (it "
                          "starts over every rank); call hpcdl.init() on every rank first to "
                          "watch this communicator", RuntimeWarning, stacklevel=2)
            wd_timeout = 0.0
        # On: every later communicator derives from this counting view (watchdog/comm.py).
        main = MPICommunicator(watchdog.watch(dup) if wd_timeout else dup)
        rank, size = main.rank, main.size
        launcher = launcher_env(env)
        launched_size = _first_int(env, _SIZE_VARS)
        if comm is None and size == 1 and launched_size and launched_size > 1:
            warnings.warn(f"the launcher started {launched_size} tasks but MPI sees a job of "
                          "1 rank: this MPI does not speak the launcher's protocol (for srun, "
                          "try --mpi=pmix or pmi2, or use mpirun); every process now runs alone",
                          RuntimeWarning, stacklevel=2)
        local, node, num_nodes, source = job_layout(main, env,
                                                    _first_int(env, _LOCAL_RANK_VARS))
        cross = main.split(local.rank, node, name="hpcdl:cross")
        gpu, count = _bind_gpu(local.rank)
        library = MPI.Get_library_version().strip()
        aware, reason = probe_cuda_aware(library, env)
        for c in (main, local, cross):
            c.cuda_aware = aware
        # The node layout, for the hierarchical algorithms over this communicator.
        attach_node_comms(main, NodeComms(local, cross,
                                          len(set(main.allgather_object(local.size))) == 1))
        levels = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                  MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}
        ctx = Context(comm=main, local_comm=local, cross_comm=cross, rank=rank, size=size,
                      local_rank=local.rank, local_size=local.size, node=node,
                      num_nodes=num_nodes, layout_source=source, gpu=gpu, gpu_count=count,
                      cuda_aware=aware, cuda_aware_reason=reason,
                      mpi_library=library.splitlines()[0].split(", package")[0].strip(),
                      thread_level=levels.get(MPI.Query_thread(), "?"), launcher=launcher)
        if comm is None:
            context.set_context(ctx)
            set_debug(None)   # HPCDL_DEBUG as it is now (it may have been set after import)
            directory = trace or env.get("HPCDL_TRACE")
            if directory:
                tracing.start(directory, main)
                # atexit runs last-in first-out: registered after the tracer's handler,
                # _shutdown drains (and records) the queues before the trace is flushed
                # (a second run of it, from the safety nets, finds nothing left)
                atexit.register(_shutdown)
        _install_safety_nets()
        if wd_timeout:
            watchdog.start(wd_timeout)   # collective over COMM_WORLD the first time only
        return ctx


_NETS_INSTALLED = False


def _install_safety_nets() -> None:
    """The abort hook and the exit drain, once per process, whatever the communicator:
    an uncaught exception on a rank must end the whole job however hpcdl was started
    (a context over ``init(comm)`` left the others waiting forever without them)."""
    global _NETS_INSTALLED
    if _NETS_INSTALLED:
        return
    _NETS_INSTALLED = True
    world = MPI.COMM_WORLD   # Abort ends every rank of the job, whatever comm was given
    _abort_on_uncaught(world.Get_rank(), world.Get_size(), world)
    atexit.register(_shutdown)


def _shutdown() -> None:
    """Finish every communicator's async queue and stop its progress thread before
    mpi4py finalizes MPI (its finalizer runs after Python's atexit handlers)."""
    close_all()


# get_context() (hpcdl.context) starts hpcdl on first use by calling init();
# collectives read the context from there without importing this module.
context.set_starter(init)


def set_default_context(ctx: Context) -> None:
    """Make ``ctx`` the default context (what ``comm=None`` means from now on).

    :mod:`hpcdl.elastic` calls it after a shrink: the old default communicator holds a
    dead rank, and every later ``hpcdl.allreduce(x)`` must run over the survivors."""
    with _LOCK:
        context.set_context(ctx)
