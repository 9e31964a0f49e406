"""Runs: the folder a training writes (ownership, lock), its outputs' safety checks, and
the training checkpoint's format (save, read with version check and migrations, load a
method from a run). Trainer, evaluation, reports, sweep and demo go through here.
"""
