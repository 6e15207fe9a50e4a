"""Coordinated checkpoints: the directory layout and writers, how each saved state record
maps onto its HDF5 file (``state_files``), validation and the one lookup of a run's newest
valid checkpoint, restore, the resume decision, and preemption (signals, schedule, exit
codes).

Import from the modules themselves.
"""
