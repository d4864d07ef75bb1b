"""DCP checkpoints of the example: model and optimizer state in any layout.

``get_state_dict`` hands DCP sharded (DTensor) state under FSDP2/TP and whole
tensors under DDP; DCP writes each rank's shards and reshards on load, so a
checkpoint saved in one layout or rank count loads into another. Folders are
``DIR/step_NNNNNN``; a resume takes the newest complete one (DCP writes its
``.metadata`` file last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

__all__ = ["save", "load_newest"]


def save(folder: str, step: int, model: Any, opt: torch.optim.Optimizer) -> Path:
    """Collective: write the state after ``step`` steps into ``folder/step_NNNNNN``."""
    msd, osd = get_state_dict(model, opt)
    path = Path(folder) / f"step_{step:06d}"
    dcp.save({"model": msd, "optim": osd, "step": torch.tensor(step)}, checkpoint_id=str(path))
    return path


def load_newest(folder: str, model: Any, opt: torch.optim.Optimizer) -> int:
    """Collective: restore the newest complete checkpoint; the steps done (0: none)."""
    done = sorted(p for p in Path(folder).glob("step_*") if (p / ".metadata").exists())
    if not done:
        return 0
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd, "step": torch.tensor(0)}
    dcp.load(state, checkpoint_id=str(done[-1]))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["step"])
