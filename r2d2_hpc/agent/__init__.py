"""The R2D2 algorithm, with no MPI: network, losses, learner, actor inference (policy),
sequence cutting (adder), exploration, greedy evaluation, devices.

A rank (:mod:`r2d2_hpc.job`) wraps these objects in a message loop; the
serial mode and the unit tests use them directly. Import from the modules.
"""
