"""Runnable examples: ``python -m hpcdl.examples.train`` is the main job."""
