"""A main-job mode without ``CHECKPOINTS = True``, for test_train_demo's refusal test."""

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No flags of its own."""


def run(*args: object) -> None:
    raise AssertionError("the checkpoint flags should have been refused before the run")
