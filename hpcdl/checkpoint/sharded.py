"""Sharded state through ``torch.distributed.checkpoint`` (DCP) over the "hpcdl" backend.

Replicated data-parallel state needs no DCP (rank 0's copy is everyone's), but
state that is split across ranks (an FSDP2 model, DTensors) must be written
shard by shard and resharded when the rank count changes: DCP does both. hpcdl
runs it over its own torch.distributed backend (``hpcdl.torch.backend``), so no
gloo or NCCL rendezvous is needed.

Safety: DCP writes tensors it reads back with ``torch.load(weights_only=True)``,
but its ``.metadata`` file is a plain pickle that stock DCP reads with
``pickle.load``. :class:`SafeReader` reads it with an unpickler that only
resolves an exact list of DCP's own metadata classes, ``torch.Size``, dtypes and
plain containers, so a tampered checkpoint cannot name a callable to run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType

from ..torch.backend import register as register_backend

__all__ = ["save_sharded", "load_sharded", "metadata_problem", "SafeReader",
           "ensure_process_group"]

# Exactly the globals DCP's metadata pickle names (torch 2.13: listed by unpickling the
# .metadata of plain tensors, FSDP2 DTensors, flattened optimizer state and bytes values),
# each an inert class or a lookup. Exact (module, name) pairs only: pickle protocol 4
# resolves a dotted name ("io.FileIO") through a module's attributes, so allowing a
# module prefix would allow whatever that module imported (io.FileIO creates files).
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    *((_DCP_METADATA, n) for n in ("Metadata", "MetadataIndex", "StorageMeta",
                                   "TensorProperties", "TensorStorageMetadata",
                                   "ChunkStorageMetadata", "BytesStorageMetadata",
                                   "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),   # a layout by name, e.g. "torch.strided"
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),   # the checkpoint_id
    ("collections", "OrderedDict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if (module == "torch" and "." not in name
                and isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"DCP metadata names {module}.{name}, which a checkpoint "
                                     "has no business loading (refused)")


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` is read by a restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _SafeUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{path} does not hold DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: Any, planner: Any) -> Any:
        # DCP reads a non-tensor value back with torch.load(weights_only=False), a full
        # unpickler: refused, like every other pickle in a checkpoint. Keep non-tensor
        # state in the manager's shared/local files (weights_only) instead.
        pickled = [r.dest_index.fqn for r in plan.items if r.type == LoadItemType.BYTE_IO]
        if pickled:
            raise pickle.UnpicklingError(f"DCP would unpickle {', '.join(pickled[:3])}"
                                         f"{' ...' if len(pickled) > 3 else ''} (non-tensor "
                                         "values) with a full unpickler (refused)")
        return super().read_data(plan, planner)


def ensure_process_group() -> None:
    """torch.distributed over hpcdl's backend, started once (DCP needs a process group)."""
    if not dist.is_initialized():
        register_backend()  # idempotent; importing hpcdl.torch has usually done it
        dist.init_process_group("hpcdl")


def save_sharded(state: dict[str, Any], folder: "str | Path") -> None:
    """Collective: DCP-save ``state`` (plain tensors, DTensors, nested dicts) into ``folder``."""
    ensure_process_group()
    dcp.save(state, checkpoint_id=str(folder))


def metadata_problem(folder: "str | Path") -> str | None:
    """Why ``folder``'s DCP index cannot be read safely, or None. Checked by every rank
    before the collective ``dcp.load``, so that the ranks can agree on a refusal (DCP
    itself reports it wrapped in every rank's traceback)."""
    try:
        SafeReader(str(folder)).read_metadata()
        return None
    except Exception as exc:  # noqa: BLE001 - a refusal, a truncated pickle, an OSError
        return f"{type(exc).__name__}: {exc}"


def load_sharded(state: dict[str, Any], folder: "str | Path") -> None:
    """Collective: fill ``state``'s tensors in place from ``folder``, resharding as needed."""
    ensure_process_group()
    dcp.load(state, storage_reader=SafeReader(str(folder)))
