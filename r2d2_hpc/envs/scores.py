"""Human-normalised Atari-57 scores: the random and human reference table.

A raw score ``s`` (undiscounted episode return, averaged over evaluation
episodes) of game ``g`` is normalised as::

    hns(g, s) = (s - random[g]) / (human[g] - random[g])

so 0 is a uniformly random policy and 1 a professional human game tester.
Over a set of games the benchmark reports the **median** (the headline figure
of Ape-X, R2D2 and Agent57) and the **mean** of the per-game ``hns``.

Source of the table. The 57 (random, human) pairs used by the DeepMind
line of Atari-57 agents (Ape-X, R2D2, Agent57): they are the "Random" and
"Average Human" columns of the Agent57 paper's per-game score tables (Badia
et al., 2020, "Agent57: Outperforming the Atari Human Benchmark", appendix),
and exactly the table of DeepMind's DQN Zoo, ``dqn_zoo/atari_data.py``
(github.com/google-deepmind/dqn_zoo), which describes them as "evaluation
scores (undiscounted returns), each averaged over at least 3 episode runs ...
Each episode begins with the environment already stepped with a uniform random
number (between 1 and 30 inclusive) of noop actions ... episode length capped
to 108,000 frames". The values below were compared with that file entry by
entry, and spot-checked against the Agent57 columns (as quoted, rounded, for
Berzerk, Bowling, DemonAttack, Enduro, FishingDerby, Frostbite, Gravitar,
Kangaroo, Phoenix, Qbert, Seaquest, SpaceInvaders, StarGunner, TimePilot)
and other public copies of the table (e.g. CleanRL-derived ``hns`` tables).

Note on Video Pinball: its random score (16,256.9) is close to the human one
(17,667.9), so small raw differences give large normalised ones; this is the
table's property, not a bug.
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, Iterable, Mapping, NamedTuple, Tuple

from r2d2_hpc.envs.games import ATARI57

__all__ = ["REFERENCE_SCORES", "random_score", "human_score", "human_normalized",
           "Aggregate", "aggregate"]

#: game -> (random score, human score), the 57 games of ``ATARI57``.
REFERENCE_SCORES: Dict[str, Tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}
assert tuple(REFERENCE_SCORES) == ATARI57, "the table must cover exactly ATARI57, in order"


def _reference(game: str) -> Tuple[float, float]:
    try:
        return REFERENCE_SCORES[game]
    except KeyError:
        raise ValueError(f"no reference scores for game {game!r}: human-normalised scores "
                         f"exist for the Atari-57 games only (python -m "
                         f"r2d2_hpc.envs.games --list)") from None


def random_score(game: str) -> float:
    """The uniformly random policy's score of ``game``.

    Raises:
      ValueError: if ``game`` is not an Atari-57 name.
    """
    return _reference(game)[0]


def human_score(game: str) -> float:
    """The professional human tester's score of ``game``.

    Raises:
      ValueError: if ``game`` is not an Atari-57 name.
    """
    return _reference(game)[1]


def human_normalized(game: str, score: float) -> float:
    """``(score - random) / (human - random)`` for ``game``.

    Args:
      game: Atari-57 name, e.g. ``Pong``.
      score: raw score (mean episode return).

    Returns:
      The human-normalised score (0 = random, 1 = human; may be negative or > 1).

    Raises:
      ValueError: if ``game`` is not an Atari-57 name.
    """
    rnd, hum = _reference(game)
    return (float(score) - rnd) / (hum - rnd)


class Aggregate(NamedTuple):
    """Human-normalised scores over a set of games.

    Attributes:
      median: median of the per-game scores (the benchmark's headline figure).
      mean: mean of the per-game scores.
      per_game: game -> human-normalised score.
      num_games: number of games.
    """

    median: float
    mean: float
    per_game: Dict[str, float]
    num_games: int


def aggregate(scores: Mapping[str, float] | Iterable[Tuple[str, float]]) -> Aggregate:
    """Median and mean human-normalised score of raw per-game scores.

    Args:
      scores: game -> raw score (or ``(game, raw score)`` pairs), one per game.

    Returns:
      An ``Aggregate``; ``per_game`` in the order given.

    Raises:
      ValueError: no games, a game given twice, or a game outside Atari-57.
    """
    pairs = list(scores.items()) if isinstance(scores, Mapping) else list(scores)
    if not pairs:
        raise ValueError("aggregate: no games given")
    per_game: Dict[str, float] = {}
    for game, raw in pairs:
        if game in per_game:
            raise ValueError(f"aggregate: game {game!r} given twice")
        per_game[game] = human_normalized(game, raw)
    values = list(per_game.values())
    return Aggregate(float(statistics.median(values)), float(math.fsum(values) / len(values)),
                     per_game, len(values))
