"""The job: one role per rank (actor, replay shard, learner) as a message loop around the
algorithm objects, the MPI and serial runners, metrics and the run directory's outputs.
The learner rank's loop delegates to ``sampler``, ``learner_metrics``,
``checkpoint_coordinator`` and ``stop``.

Import from the modules themselves.
"""
