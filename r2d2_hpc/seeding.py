"""The job's one seed derivation: ``(cfg.seed, role, index, ...) -> seed``.

Every random stream of a job (an actor's envs and exploration, a replay shard's
sampling, a learner's batch allocation, the evaluators' episodes) takes its
seed from :func:`derive_seed`, so two streams share a seed only if they pass the
same arguments. numpy's ``SeedSequence`` does the mixing: the base seed is its
entropy, ``(role code, index, ...)`` its spawn key, the key ``spawn()`` would
give a child; unlike ``seed * a + b * index`` formulas, no two roles or indices
can collide by arithmetic (e.g. ``seed=1, index=0`` against ``seed=0, index=k``).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

#: Role name -> spawn-key code. Codes are part of every derived seed: add new
#: roles with new codes, never renumber (a run's streams would change).
ROLE_CODES: Dict[str, int] = {
    "actor": 1,        # index: actor number; the actor's envs and epsilon-greedy draws
    "replay": 2,       # index: shard number; the shard's prioritized sampling
    "learner": 3,      # index: learner number; its multinomial batch allocation
    "evaluator": 4,    # index: EVALUATOR_PERIODIC or EVALUATOR_FINAL
    "evaluation": 5,   # index: evaluation number j of one Evaluator (base: its seed)
    "demo": 6,         # index: shard number; its demonstration table's sampling (R2D3)
}
#: ``derive_seed(cfg.seed, "evaluator", ...)`` index of the periodic evaluator.
EVALUATOR_PERIODIC = 0
#: ``derive_seed(cfg.seed, "evaluator", ...)`` index of the final evaluation's evaluator.
EVALUATOR_FINAL = 1
#: Derived seeds lie in ``[0, SEED_LIMIT)``: a valid seed for numpy (also the
#: legacy ``np.random.seed``), ``torch.manual_seed`` and ALE's int32 ``random_seed``.
SEED_LIMIT = 2**31


def derive_seed(base_seed: int, role: str, index: int, *more: int) -> int:
    """The seed of stream ``(role, index, *more)`` of a job seeded ``base_seed``.

    ``SeedSequence(entropy=base_seed, spawn_key=(ROLE_CODES[role], index, *more))``,
    its first 32-bit word, top bit dropped.

    Args:
      base_seed: the job's seed (``cfg.seed``), ``>= 0``.
      role: a key of ``ROLE_CODES``.
      index: which stream of that role (actor, shard, learner number), ``>= 0``.
      *more: further non-negative key parts (e.g. a per-call counter).

    Returns:
      An int in ``[0, SEED_LIMIT)``; the same arguments give the same seed.

    Raises:
      ValueError: on an unknown role or a negative seed or key part.
    """
    if role not in ROLE_CODES:
        raise ValueError(f"unknown seed role {role!r}; known: {', '.join(ROLE_CODES)}")
    key = (int(index),) + tuple(int(m) for m in more)
    if int(base_seed) < 0 or any(k < 0 for k in key):
        raise ValueError(f"seed and key parts must be >= 0, got seed {base_seed}, key {key}")
    seq = np.random.SeedSequence(entropy=int(base_seed), spawn_key=(ROLE_CODES[role],) + key)
    return int(seq.generate_state(1, np.uint32)[0]) % SEED_LIMIT
