"""Running hpcdl's unchanged CUDA kernels on the CPU, for tests without a GPU.

``cuda_on_cpu.h`` supplies the CUDA built-ins (one std::thread per CUDA thread),
``harness.cpp`` exposes every kernel instance by its name expression, ``build.py``
compiles it (plain, ASan+UBSan, TSan), ``runner.py`` drives it through ctypes,
``cases.py`` compares every kernel instance with ``reference.py`` and ``check.py``
runs the cases as a script (under a sanitizer, or on a mutated copy of the sources).
See docs/gpu.md, "Kernels on the CPU".
"""
