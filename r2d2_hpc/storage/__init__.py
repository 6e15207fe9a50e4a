"""Persistence primitives: checksummed, crash-safe files and the HDF5 encoding of nested state.

Imports nothing of the project: the replay snapshots and the checkpoints are
both written with these helpers.
"""
