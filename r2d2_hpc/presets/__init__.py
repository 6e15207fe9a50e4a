"""Configs embedded in the package (used when no --config is given)."""
from __future__ import annotations

import os
from typing import Any, Dict

from r2d2_hpc.config import read_yaml

PRESET_DIR = os.path.dirname(os.path.abspath(__file__))


def preset_path(name: str = "default") -> str:
    """Path of an embedded preset YAML file."""
    return os.path.join(PRESET_DIR, f"{name}.yaml")


def load_preset(name: str = "default") -> Dict[str, Any]:
    """The embedded preset as a plain dict (a base for load_config)."""
    return read_yaml(preset_path(name))
