"""Coordinated checkpoints: the directory layout and writers, validation, restore, the
resume decision, and preemption (signals, schedule, exit codes).

Import from the modules themselves.
"""
