"""``CheckpointManager``: numbered checkpoints in one folder, the last ``keep`` kept.

    DIR/step-00000120/shared.pt        replicated state (written by rank 0)
    DIR/step-00000120/rank-00003.pt    one per rank (RNG states, per-rank residuals)
    DIR/step-00000120/sharded/         optional: sharded state through torch.distributed.checkpoint
    DIR/step-00000120/manifest.json    sha256 and size of every file, rank count, step
    DIR/latest                         the name of the newest complete checkpoint

Saving (collective): every rank writes its file atomically (files.py) into
``step-N.tmp/`` and reads it back as a resume will (loadable.py: a file no resume
could read is refused now, naming the key); rank 0 gathers the checksums, writes
the manifest, renames the folder to ``step-N`` and only then moves ``latest``; a
job killed at any point leaves the previous checkpoint and pointer intact. Any
rank's failure ends the save on every rank with its reason.

Order (series.py): "newest" means the latest *saved*, not the highest step;
``keep`` counts the newest saves, the one just written always among them. A
folder holding another run's checkpoints is refused by the drivers unless they
resume (:meth:`CheckpointManager.refuse_other_run`).

Loading (collective): the candidates newest first (``latest``, then every
``step-*`` folder by serial); for each, every rank checks its share of the files
against the manifest (verify.py) and the ranks agree; every corrupt or
incomplete one is reported on stderr and the first good one is read.

Sharded state (``save(..., sharded=)``: an FSDP2 model's ``state_dict()``, DTensors)
goes through DCP (sharded.py) into ``sharded/`` inside the same temporary folder,
so it is covered by the same manifest, checksums and atomic rename; ``load(sharded=)``
fills it in place and reshards when the rank count changed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import HpcdlError, InvalidArgumentError
from ..runtime import default_comm
from . import series
from .files import atomic_write, fsync_dir, load_torch, sha256_bytes, torch_bytes
from .loadable import load_problem, pickle_problem
from .loaded import Loaded
from .verify import FORMAT, SHARDED, check_files, hash_files, read_manifest, verify_files
from .verify import rank_file as _rank_file

__all__ = ["CheckpointManager", "CheckpointError", "Loaded"]


def _world_size() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()


class CheckpointError(HpcdlError):
    """A checkpoint is missing, corrupt or incomplete (the message names the file)."""


def _name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointManager:
    """Save and load checkpoints under ``directory``, keeping the newest ``keep``."""

    def __init__(self, directory: "str | Path", keep: int = 2, comm: Any = None) -> None:
        self.comm = default_comm(comm)
        if int(keep) < 1:
            raise InvalidArgumentError(f"keep={keep}; keep at least 1 checkpoint",
                                       rank=self.comm.rank, op="checkpoint")
        self.directory = Path(directory)
        self.keep = int(keep)
        self.save_seconds = 0.0   # summed over every save(), reported by the main job
        self.saves = 0

    # -- saving ------------------------------------------------------------------------
    def save(self, step: int, shared: Any, local: Any = None,
             sharded: dict[str, Any] | None = None) -> Path:
        """Collective: write checkpoint ``step``. ``shared`` matters on rank 0 only (it is
        the replicated state); ``local`` is this rank's own; ``sharded`` (given on every
        rank or on none) is state split across ranks, saved through DCP. Returns the folder.
        A value that cannot be pickled, or that ``torch.load(weights_only=True)`` would
        refuse on resume, ends the save on every rank with a :class:`CheckpointError`
        naming the rank, the file and the key."""
        start = time.perf_counter()
        c, rank = self.comm, self.comm.rank
        final = self.directory / _name(step)
        tmp = self.directory / (_name(step) + ".tmp")
        error = None
        if rank == 0:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed save
                tmp.mkdir()
            except OSError as exc:
                error = f"cannot create {tmp}: {exc}"
        self._agree(c.bcast_object(error, root=0), "save")
        files, error = self._write_own(tmp, shared, local)
        everyone = c.allgather_object((files, error, sharded is not None))
        self._fail_save(tmp, [e for _, e, _ in everyone if e])
        with_sharded = self._agree_sharded([s for _, _, s in everyone], "save")
        listed = {k: v for f, _, _ in everyone for k, v in f.items()}
        if with_sharded:
            self._check_world("save")
            from .sharded import save_sharded  # DCP is imported only when used

            save_sharded(sharded, tmp / SHARDED)   # collective; ends when all have written
            # DCP's files (written by whichever ranks held shards), hashed by their owners
            hashed, error = hash_files(c, tmp / SHARDED, SHARDED)
            self._fail_save(tmp, [error] if error else [])
            listed.update(hashed)
        if rank == 0:
            try:
                manifest = {"format": FORMAT, "step": int(step), "size": c.size,
                            "serial": series.next_serial(self.directory), "time": time.time(),
                            "sharded": with_sharded, "files": listed}
                atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
                fsync_dir(self.directory)
                atomic_write(self.directory / "latest", (final.name + "\n").encode())
                series.prune(self.directory, self.keep, final)
            except OSError as exc:
                error = f"cannot finish {final}: {exc}"
        self._agree(c.bcast_object(error, root=0), "save")
        self.save_seconds += time.perf_counter() - start
        self.saves += 1
        return final

    def _write_own(self, tmp: Path, shared: Any,
                   local: Any) -> tuple[dict[str, dict[str, Any]], str | None]:
        """This rank's files (``rank-R.pt``; rank 0 also ``shared.pt``), each read back as
        a resume will read it: (name -> sha256 and size, or the first problem)."""
        rank = self.comm.rank
        files: dict[str, dict[str, Any]] = {}
        for fname, obj in ((_rank_file(rank), local),
                           *((("shared.pt", shared),) if rank == 0 else ())):
            try:
                data = torch_bytes(obj)
            except Exception as exc:  # noqa: BLE001 - PicklingError, AttributeError, ...
                return files, f"rank {rank}: {pickle_problem(fname, obj, exc)}"
            try:
                atomic_write(tmp / fname, data)
            except OSError as exc:
                return files, f"rank {rank} could not write into {tmp}: {exc}"
            problem = load_problem(tmp / fname, obj)
            if problem:
                return files, f"rank {rank}: {problem}"
            files[fname] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        return files, None

    def _fail_save(self, tmp: Path, errors: list[str]) -> None:
        """Every rank holds the same ``errors`` (gathered): raise them on every rank, after
        rank 0 removed the unfinished folder (the other ranks have stopped writing)."""
        if not errors:
            return
        if self.comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        more = f" (and {len(errors) - 1} more: {'; '.join(errors[1:3])})" if errors[1:] else ""
        self._agree(errors[0] + more, "save")


    def _agree_sharded(self, given: list[bool], op: str) -> bool:
        if len(set(given)) > 1:
            which = ", ".join(str(r) for r, g in enumerate(given) if g)
            self._agree(f"sharded= given on rank(s) {which} only: pass it on every rank or on "
                        "none (DCP is collective)", op)
        return bool(given[0])

    def _check_world(self, op: str) -> None:
        """DCP runs over torch.distributed's default group, which spans COMM_WORLD."""
        if self.comm.size != _world_size():
            self._agree(f"sharded state needs a manager over every rank (this one spans "
                        f"{self.comm.size} of {_world_size()}): DCP runs over the default "
                        "process group", op)

    def _agree(self, error: str | None, op: str) -> None:
        if error:
            raise CheckpointError(error, rank=self.comm.rank, size=self.comm.size,
                                  op=f"checkpoint {op}")

    def refuse_other_run(self, how_to_resume: str = "resume=True") -> None:
        """Raise :class:`CheckpointError` if the folder holds checkpoints (of an earlier
        run): a new run that saved among them would mix two runs' checkpoints, and a
        later resume could pick the other run's. The drivers call it when they do not
        resume; ``how_to_resume`` is the way out they offer.

        Local, not collective: every rank looks at the (shared) folder itself and all see
        the same finished checkpoints, since nothing is saved before every rank is built
        (a save is collective, and its ``step-N.tmp`` does not count). A collective here
        would hang a driver built after ``hpcdl.ps.setup``, whose workers wait there for
        the servers' first answer."""
        found = self.candidates() if self.directory.is_dir() else []
        if found:
            self._agree(f"{self.directory} already holds {len(found)} checkpoint(s) of an "
                        f"earlier run, the newest {found[0].name}: to continue that run, "
                        f"pass {how_to_resume}; to start a new one, use an empty folder "
                        "(or remove that one); a new run does not save among another "
                        "run's checkpoints", "start")

    # -- loading -----------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """Checkpoint folders newest first: the ``latest`` pointer's, then by save order."""
        return series.candidates(self.directory)

    def verify(self, folder: Path) -> dict[str, Any]:
        """Local, on this rank alone: the manifest of ``folder`` if every file it lists is
        there with its checksum; else :class:`CheckpointError` saying what is wrong.
        (:meth:`load` splits this work over the ranks.)"""
        manifest = self._manifest(folder)
        problems = check_files(folder, manifest["files"])
        if problems:
            raise self._bad(folder, problems[0])
        return manifest

    def _bad(self, folder: Path, why: str) -> CheckpointError:
        return CheckpointError(f"{folder}: {why}", rank=self.comm.rank, op="checkpoint load")

    def _manifest(self, folder: Path) -> dict[str, Any]:
        try:
            return read_manifest(folder)
        except ValueError as exc:
            raise self._bad(folder, str(exc)) from None

    def _choose(self) -> tuple[Path, dict[str, Any]] | None:
        """Collective: the newest good checkpoint (rank 0 reads the manifests, every rank
        checks its share of the files, all agree); every bad one is reported on stderr."""
        c = self.comm
        names = c.bcast_object([str(p) for p in self.candidates()] if c.rank == 0 else None,
                               root=0)
        for name in names:
            folder, problem, manifest = Path(name), None, None
            if c.rank == 0:
                try:
                    manifest = self._manifest(folder)
                except CheckpointError as exc:
                    problem = str(exc)
            manifest, problem = c.bcast_object((manifest, problem), root=0)
            if problem is None:
                problems = verify_files(c, folder, manifest)
                if not problems:
                    return folder, manifest
                problem = f"{folder}: " + "; ".join(problems)
            if c.rank == 0:
                sys.stderr.write(f"{problem}; trying the previous checkpoint\n")
                sys.stderr.flush()
        return None

    def load(self, sharded: dict[str, Any] | None = None) -> Loaded | None:
        """Collective: the newest good checkpoint, or ``None`` when there is none.

        Every rank reads ``shared.pt``; rank ``r`` also reads ``rank-r.pt`` when the
        checkpoint was written by as many ranks as run now (else ``local`` is None:
        per-rank state does not carry over to another rank count). ``sharded`` (on every
        rank or none) is filled in place from the checkpoint's DCP part, resharded to
        this rank count.
        """
        c = self.comm
        choice = self._choose()
        if choice is None:
            return None
        folder, manifest = choice
        error, loaded = None, None
        try:
            shared = load_torch(folder / "shared.pt")
            local = (load_torch(folder / _rank_file(c.rank))
                     if int(manifest["size"]) == c.size else None)
            loaded = Loaded(shared=shared, local=local, manifest=manifest, folder=str(folder))
        except Exception as exc:  # noqa: BLE001 - any reader failure is reported collectively
            error = f"rank {c.rank} could not read {folder}: {exc}"
        everyone = c.allgather_object((error, sharded is not None))
        errors = [e for e, _ in everyone if e]
        self._agree(errors[0] if errors else None, "load")
        if self._agree_sharded([g for _, g in everyone], "load"):
            if not manifest.get("sharded"):
                self._agree(f"{folder} holds no sharded state, but load(sharded=) asks for it",
                            "load")
            self._check_world("load")
            from torch.distributed.checkpoint.api import CheckpointException

            from .sharded import load_sharded, metadata_problem

            problems = [p for p in c.allgather_object(metadata_problem(folder / SHARDED)) if p]
            self._agree(f"could not read {folder / SHARDED}: {problems[0]}" if problems
                        else None, "load")
            try:
                load_sharded(sharded, folder / SHARDED)   # collective
            except (Exception, CheckpointException) as exc:  # DCP raises on every rank
                last = (str(exc).strip().splitlines() or [""])[-1]
                self._agree(f"could not read {folder / SHARDED}: {type(exc).__name__}: "
                            f"{last}", "load")
        return loaded
