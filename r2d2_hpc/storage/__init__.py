"""Persistence primitives: checksummed, crash-safe files, the one HDF5 encoding (arrays,
nested state, state records; every HDF5 file is opened there) and state digests.

Imports nothing of the project: the replay snapshots, the checkpoints and the run's
``learner_final.h5`` are all written with these helpers.
"""
