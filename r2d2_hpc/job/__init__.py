"""The job: one role per rank (actor, replay shard, learner) as a message loop around the
algorithm objects, the MPI and serial runners, metrics and the run directory's outputs.

Import from the modules themselves.
"""
