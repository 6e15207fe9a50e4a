"""Entry points: ``r2d2-train`` (:mod:`~r2d2_hpc.cli.train`), ``r2d2-ckpt``
(:mod:`~r2d2_hpc.cli.ckpt`) and ``r2d2-eval`` (:mod:`~r2d2_hpc.cli.eval`).
``python -m r2d2_hpc.cli`` is ``r2d2-train``."""
