"""``CheckpointManager``: numbered checkpoints in one folder, the last ``keep`` kept.

    DIR/step-00000120/shared.pt        replicated state (written by rank 0)
    DIR/step-00000120/rank-00003.pt    one per rank (RNG states, per-rank residuals)
    DIR/step-00000120/sharded/         optional: sharded state through torch.distributed.checkpoint
    DIR/step-00000120/manifest.json    sha256 and size of every file, rank count, step
    DIR/latest                         the name of the newest complete checkpoint

Saving (collective): every rank writes its file atomically (files.py) into
``step-N.tmp/``; rank 0 gathers the checksums, writes the manifest, renames the
folder to ``step-N`` and only then moves ``latest``; a job killed at any point
leaves the previous checkpoint and pointer intact. Loading (collective): rank 0
checks the candidates newest first (``latest``, then every ``step-*`` folder),
reports every corrupt or incomplete one on stderr and picks the first whose
files all match the manifest; all ranks then read that one.

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
from .files import atomic_write, fsync_dir, load_torch, sha256_bytes, sha256_file, torch_bytes

__all__ = ["CheckpointManager", "CheckpointError", "Loaded"]

FORMAT = 1
SHARDED = "sharded"   # the DCP part's folder inside a checkpoint


def _world_size() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()


class CheckpointError(HpcdlError):
    """A checkpoint is missing, corrupt or incomplete (the message names the file)."""


class Loaded(dict):
    """A loaded checkpoint: ``shared`` and this rank's ``local`` state, plus where from."""

    @property
    def step(self) -> int:
        return int(self["manifest"]["step"])

    @property
    def saved_size(self) -> int:
        return int(self["manifest"]["size"])

    def local_of(self, rank: int) -> Any:
        """The ``local`` state that rank ``rank`` of the saving job wrote (its file was
        checked against the manifest with the rest): how a resume at another rank count
        maps per-rank state, e.g. parameter-server shards re-split across other servers,
        or new rank r taking saved rank r % saved_size's optimizer state."""
        if not 0 <= int(rank) < self.saved_size:
            from mpi4py import MPI

            raise InvalidArgumentError(f"local_of({rank}): rank {rank}: this checkpoint was "
                                       f"written by {self.saved_size} rank(s)",
                                       rank=MPI.COMM_WORLD.Get_rank(), op="checkpoint load")
        return load_torch(Path(self["folder"]) / _rank_file(int(rank)))


def _name(step: int) -> str:
    return f"step-{step:08d}"


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


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
        rank or on none) is state split across ranks, saved through DCP. Returns the folder."""
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
        files: dict[str, dict[str, Any]] = {}
        try:
            for fname, obj in ((_rank_file(rank), local),
                               *((("shared.pt", shared),) if rank == 0 else ())):
                data = torch_bytes(obj)
                atomic_write(tmp / fname, data)
                files[fname] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        except OSError as exc:
            error = f"rank {rank} could not write into {tmp}: {exc}"
        everyone = c.allgather_object((files, error, sharded is not None))
        errors = [e for _, e, _ in everyone if e]
        self._agree(errors[0] if errors else None, "save")
        with_sharded = self._agree_sharded([s for _, _, s in everyone], "save")
        if with_sharded:
            self._check_world("save")
            from .sharded import save_sharded  # DCP is imported only when used

            save_sharded(sharded, tmp / SHARDED)   # collective; ends when all have written
        if rank == 0:
            try:
                # every rank's files, and DCP's (written by whichever ranks held shards)
                listed = {k: v for f, _, _ in everyone for k, v in f.items()}
                if with_sharded:
                    listed.update({f"{SHARDED}/{p.name}": {"sha256": sha256_file(p),
                                                           "bytes": p.stat().st_size}
                                   for p in sorted((tmp / SHARDED).iterdir()) if p.is_file()})
                manifest = {"format": FORMAT, "step": int(step), "size": c.size,
                            "time": time.time(), "sharded": with_sharded, "files": listed}
                atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
                fsync_dir(self.directory)
                atomic_write(self.directory / "latest", (final.name + "\n").encode())
                self._prune()
            except OSError as exc:
                error = f"cannot finish {final}: {exc}"
        self._agree(c.bcast_object(error, root=0), "save")
        self.save_seconds += time.perf_counter() - start
        self.saves += 1
        return final

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

    def _prune(self) -> None:
        done = sorted(p for p in self.directory.glob("step-*") if p.is_dir()
                      and not p.name.endswith(".tmp"))
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # -- loading -----------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """Checkpoint folders newest first: the ``latest`` pointer's, then by step."""
        order: list[Path] = []
        pointer = self.directory / "latest"
        if pointer.is_file():
            name = pointer.read_text().strip()
            if name.startswith("step-") and "/" not in name:
                order.append(self.directory / name)
        for p in sorted(self.directory.glob("step-*"), reverse=True):
            if p.is_dir() and not p.name.endswith(".tmp") and p not in order:
                order.append(p)
        return order

    def verify(self, folder: Path) -> dict[str, Any]:
        """The manifest of ``folder`` if every file it lists is there with its checksum;
        else :class:`CheckpointError` saying what is wrong."""
        def bad(why: str) -> CheckpointError:
            return CheckpointError(f"{folder}: {why}", rank=self.comm.rank, op="checkpoint load")

        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except FileNotFoundError:
            raise bad("no manifest.json (an incomplete save)") from None
        except (OSError, ValueError) as exc:
            raise bad(f"unreadable manifest.json ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else "?"
            raise bad(f"manifest format {found}, expected {FORMAT}")
        expected = {"shared.pt", *(_rank_file(r) for r in range(int(manifest["size"])))}
        if manifest.get("sharded"):
            expected |= {f for f in manifest["files"] if f.startswith(SHARDED + "/")}
            if f"{SHARDED}/.metadata" not in expected:
                raise bad(f"manifest lists no {SHARDED}/.metadata (DCP's index)")
        if set(manifest["files"]) != expected:
            raise bad(f"manifest lists {sorted(manifest['files'])}, expected {sorted(expected)}")
        for fname, meta in manifest["files"].items():
            path = folder / fname
            if not path.is_file():
                raise bad(f"{fname} is missing")
            if path.stat().st_size != meta["bytes"]:
                raise bad(f"{fname} holds {path.stat().st_size} bytes, the manifest says "
                          f"{meta['bytes']} (truncated or overwritten)")
            if sha256_file(path) != meta["sha256"]:
                raise bad(f"{fname}: sha256 does not match the manifest (corrupt)")
        return manifest

    def find(self) -> tuple[Path, dict[str, Any]] | None:
        """Rank 0's choice, local: the newest good checkpoint; corrupt ones are reported."""
        for folder in self.candidates():
            try:
                return folder, self.verify(folder)
            except CheckpointError as exc:
                sys.stderr.write(f"{exc}; trying the previous checkpoint\n")
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
        choice = None
        if c.rank == 0:
            found = self.find()
            choice = None if found is None else (str(found[0]), found[1])
        choice = c.bcast_object(choice, root=0)
        if choice is None:
            return None
        folder, manifest = Path(choice[0]), choice[1]
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
            from .sharded import load_sharded

            load_sharded(sharded, folder / SHARDED)   # collective
        return loaded
