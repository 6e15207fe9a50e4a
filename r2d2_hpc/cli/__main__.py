"""``python -m r2d2_hpc.cli``: the same as ``r2d2-train``."""
import sys

from r2d2_hpc.cli.train import train_main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
