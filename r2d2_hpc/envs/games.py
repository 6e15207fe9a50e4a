"""The Atari-57 benchmark's games, in one place.

The 57 games of the Arcade Learning Environment used by Ape-X, R2D2
(Kapturowski et al., 2019, Table 4/Appendix) and Agent57, alphabetically, as
ALE environment names (``ALE/<name>-v5``; ``env.game`` takes them). SLURM
array task ``i`` trains ``ATARI57[i]`` (``slurm/atari57.sh``)::

    python -m r2d2_hpc.envs.games 36        # prints: Pong
    python -m r2d2_hpc.envs.games --count   # prints: 57
    python -m r2d2_hpc.envs.games --list    # index and name, one a line
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Optional, Sequence, Tuple

ATARI57: Tuple[str, ...] = (
    "Alien", "Amidar", "Assault", "Asterix", "Asteroids", "Atlantis", "BankHeist",
    "BattleZone", "BeamRider", "Berzerk", "Bowling", "Boxing", "Breakout", "Centipede",
    "ChopperCommand", "CrazyClimber", "Defender", "DemonAttack", "DoubleDunk", "Enduro",
    "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar", "Hero", "IceHockey",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MontezumaRevenge", "MsPacman",
    "NameThisGame", "Phoenix", "Pitfall", "Pong", "PrivateEye", "Qbert", "Riverraid",
    "RoadRunner", "Robotank", "Seaquest", "Skiing", "Solaris", "SpaceInvaders", "StarGunner",
    "Surround", "Tennis", "TimePilot", "Tutankham", "UpNDown", "Venture", "VideoPinball",
    "WizardOfWor", "YarsRevenge", "Zaxxon",
)
assert len(ATARI57) == 57 and len(set(ATARI57)) == 57


def game(index: int) -> str:
    """The game of array task ``index`` (0-based).

    Raises:
      IndexError: naming the valid range.
    """
    if not 0 <= index < len(ATARI57):
        raise IndexError(f"Atari-57 index {index} is out of range; use 0..{len(ATARI57) - 1}")
    return ATARI57[index]


def rom_id(name: str) -> str:
    """ale-py's ROM id of a game name: ``MontezumaRevenge`` -> ``montezuma_revenge``.

    ``UpNDown`` -> ``up_n_down``; names without inner capitals are lowercased.
    """
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m r2d2_hpc.envs.games INDEX | --count | --list``."""
    p = argparse.ArgumentParser(prog="python -m r2d2_hpc.envs.games",
                                description="Print the Atari-57 game of a SLURM array index.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("index", nargs="?", type=int, help="0-based index (SLURM_ARRAY_TASK_ID)")
    g.add_argument("--count", action="store_true", help="print the number of games")
    g.add_argument("--list", action="store_true", help="print 'index name' lines")
    args = p.parse_args(argv)
    if args.count:
        print(len(ATARI57))
        return 0
    if args.list:
        for i, name in enumerate(ATARI57):
            print(i, name)
        return 0
    try:
        print(game(args.index))
    except IndexError as exc:
        print(f"r2d2_hpc.envs.games: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
