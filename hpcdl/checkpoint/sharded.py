"""Sharded state through ``torch.distributed.checkpoint`` (DCP) over the "hpcdl" backend.

Replicated data-parallel state needs no DCP (rank 0's copy is everyone's), but
state that is split across ranks (an FSDP2 model, DTensors) must be written
shard by shard and resharded when the rank count changes: DCP does both. hpcdl
runs it over its own torch.distributed backend (``hpcdl.torch.backend``), so no
gloo or NCCL rendezvous is needed.

Safety: DCP writes tensors it reads back with ``torch.load(weights_only=True)``,
but its ``.metadata`` file is a plain pickle that stock DCP reads with
``pickle.load``. :class:`SafeReader` reads it with an unpickler that only
resolves DCP's own metadata classes, ``torch.Size``, dtypes and plain
containers, so a tampered checkpoint cannot name a callable to run.
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

__all__ = ["save_sharded", "load_sharded", "SafeReader", "ensure_process_group"]

_DCP_MODULES = ("torch.distributed.checkpoint.", "torch.distributed._shard.",
                "torch.distributed.tensor.")
_BUILTINS = {("builtins", n) for n in ("set", "frozenset", "slice", "object", "complex",
                                       "bytearray", "getattr")} - {("builtins", "getattr")}
_OTHERS = {("collections", "OrderedDict"), ("copyreg", "_reconstructor"),
           ("copyreg", "__newobj__"), ("torch", "Size"), ("torch", "device"),
           ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # the checkpoint_id
           ("torch.serialization", "_get_layout")}  # layout by name, e.g. "torch.strided"


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _BUILTINS or (module, name) in _OTHERS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_DCP_MODULES):
            obj = super().find_class(module, name)
            if isinstance(obj, type):   # classes only: constructing DCP metadata is inert
                return obj
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
        import hpcdl.torch  # noqa: F401  (registers the "hpcdl" backend)

        dist.init_process_group("hpcdl")


def save_sharded(state: dict[str, Any], folder: "str | Path") -> None:
    """Collective: DCP-save ``state`` (plain tensors, DTensors, nested dicts) into ``folder``."""
    ensure_process_group()
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(state: dict[str, Any], folder: "str | Path") -> None:
    """Collective: fill ``state``'s tensors in place from ``folder``, resharding as needed."""
    ensure_process_group()
    dcp.load(state, storage_reader=SafeReader(str(folder)))
