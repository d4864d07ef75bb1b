"""Importable helpers of the test suite (not tests): fakes, NumPy references, job launchers."""
