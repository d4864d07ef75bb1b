"""Gradient compression for allreduce: Horovod's contract.

    payload, ctx = compressor.compress(tensor)            # before the allreduce
    hpcdl.allreduce(payload, op="sum", comm=comm)          # the caller reduces the payload
    total = compressor.decompress(payload, ctx)            # the SUM, in tensor's dtype/shape

The protocol (:class:`~hpcdl.compression.base.Compressor`) is explicit: besides
``compress(x, *, name=None)`` and ``decompress``, a compressor has ``bind(comm)``
(the communicator the payload is summed over) and ``collective`` (whether
``compress`` itself communicates). :func:`as_compressor` adapts an object with
only Horovod's two methods (:class:`PlainCompressor`).

* :class:`NoneCompressor` returns the tensor itself (``ctx`` is None).
* :class:`FP16Compressor(chunk_size=8192, error_feedback=False, comm=None)
  <hpcdl.compression.fp16.FP16Compressor>` sends float16 with one power-of-two
  scale per chunk of ``chunk_size`` elements. ``compress`` is *collective*: it
  allreduces the per-chunk max |x| with ``op="max"`` over ``comm`` (default
  ``hpcdl.get_context().comm``, one message of ``ceil(numel / chunk_size)``
  float32) so that every rank quantizes a chunk with the same scale, which is
  what makes the sum of payloads meaningful. Every rank must call it for the
  same tensors in the same order, and the payload must be summed over that
  same ``comm`` (the scale leaves room for exactly ``comm.size`` addends).
  ``decompress`` returns the sum (divide by ``comm.size`` for the mean).
  ``compress(tensor, name=...)`` names the tensor for error feedback (else it
  is keyed by pointer, shape and dtype).

Works on NumPy arrays, torch CPU tensors (torch ops, no CuPy), torch CUDA
tensors and CuPy arrays (hpcdl's CUDA kernels when CuPy is usable, zero copy;
torch ops otherwise). The payload is the same kind of array as the input, on
the same device, with the input's shape, dtype float16.
"""

from .base import Compressor, NoneCompressor, PlainCompressor, as_compressor
from .fp16 import FP16Compressor, FP16Context

__all__ = ["Compressor", "NoneCompressor", "PlainCompressor", "as_compressor", "FP16Compressor",
           "FP16Context"]
