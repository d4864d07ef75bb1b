"""hpcdl's CUDA kernels: sources, loader, NumPy references.

The ``.cu`` files in this folder (also reachable as the top-level ``kernels/``)
are compiled at run time by :mod:`hpcdl.kernels.nvrtc` with hpcdl's own options
(``-ftz=false``: CuPy's ``RawModule(code=...)`` would append ``-ftz=true``), once
per (source, device), to a cubin for the device's architecture that
``cupy.RawModule(path=...)`` loads; ``name_expressions`` name the template
instances, so no ``extern "C"`` wrappers. Nothing here imports CuPy until a
kernel is asked for.

* ``pack.cu``      multi-tensor pack / unpack with fused scale and cast
* ``quantize.cu``  per-chunk absmax, FP16 quantize (+ error feedback), dequantize
* ``reduce.cu``    dst = dst op src for fp16 / bf16 / fp32 payloads, fp32 math (used by
  ``fusion.reduce_into`` only: no collective reduces on the device yet)

Python entry points: :mod:`hpcdl.kernels.fusion` (device arrays), and
:mod:`hpcdl.kernels.reference` (NumPy, the specification the GPU tests check).
"""

from .loader import forget_modules, get_kernel, get_module
from .sources import (CTYPES, KERNEL_DIR, NVRTC_OPTIONS, REDUCE_OPS, SOURCES, cuda_include_dirs,
                      instantiation_source, name_expressions, nvrtc_options, source)

__all__ = ["KERNEL_DIR", "SOURCES", "CTYPES", "REDUCE_OPS", "NVRTC_OPTIONS", "name_expressions",
           "source", "cuda_include_dirs", "nvrtc_options", "get_module", "get_kernel", "forget_modules",
           "instantiation_source"]
