"""A worked example: a small GPT trained as a character-level language model.

    hpcdl launch -n 4 -- python -m hpcdl.examples.gpt --parallel fsdp-tp --out out/gpt
    python -m hpcdl.examples.gpt --parallel dp --steps 300      # one process

The text is this Python's own standard library (no download). ``--parallel``
is ``dp`` (DDP), ``fsdp`` (FSDP2), ``tp`` (tensor parallel) or ``fsdp-tp``
(FSDP2 x TP on a 2-D mesh), all over the "hpcdl" torch.distributed backend.
The job writes ``metrics.json`` (the main job's fields), ``curves.png`` (the
loss curve against the text's unigram entropy) and, with
``--checkpoint-dir``, DCP checkpoints (``--resume`` continues from the newest).
"""

from .train import main, run

__all__ = ["main", "run"]
