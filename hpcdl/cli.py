"""The ``hpcdl`` command: ``launch``, ``info``, ``tune``, ``trace``, ``model``."""

from __future__ import annotations

import sys

USAGE = """usage: hpcdl COMMAND [ARGS]

commands:
  launch   run a command on N ranks with the safe laptop/CI defaults (hpcdl launch -h)
  info     MPI implementation, CUDA-aware MPI, ranks per node, GPUs, versions
  tune     measure allreduce crossovers on this machine and write the table 'auto' uses
  trace    merge the per-rank timelines of HPCDL_TRACE=DIR, summarise them, plot them
  model    fit the cost model (alpha, beta, gamma per algorithm), project it to 4,096 ranks
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "launch":
        from .launch import main as run
    elif command == "info":
        from .info import main as run
    elif command == "tune":
        from .tune import main as run
    elif command == "trace":
        from .trace.cli import main as run
    elif command == "model":
        from .model.cli import main as run
    else:
        print(f"hpcdl: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    return int(run(rest) or 0)
