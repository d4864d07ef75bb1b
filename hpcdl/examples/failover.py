"""The main job's failure-handling flags (docs/fault-tolerance.md)."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("failure handling (docs/fault-tolerance.md)")
    g.add_argument("--on-failure", choices=("abort", "shrink"), default="abort",
                   help="abort: a dead rank ends the job, naming it (default); shrink: the "
                        "survivors go on without it (launch with `hpcdl launch --ft`)")
    g.add_argument("--min-ranks", type=int, default=1,
                   help="with --on-failure shrink: below K ranks, checkpoint and exit for a requeue")
