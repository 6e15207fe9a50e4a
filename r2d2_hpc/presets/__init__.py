"""Configs embedded in the package (used when no --config is given)."""
from __future__ import annotations

import os
from typing import Any, Dict, List

from r2d2_hpc.config import read_yaml

PRESET_DIR = os.path.dirname(os.path.abspath(__file__))


def preset_path(name: str = "default") -> str:
    """Path of an embedded preset YAML file."""
    return os.path.join(PRESET_DIR, f"{name}.yaml")


def preset_names() -> List[str]:
    """Names of the embedded presets (``--config NAME`` picks one)."""
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))


def config_path(name_or_path: str) -> str:
    """``--config``'s argument as a file: an existing path as is, else the embedded
    preset of that name, else the argument unchanged (reading it then names it)."""
    if os.path.exists(name_or_path) or name_or_path not in preset_names():
        return name_or_path
    return preset_path(name_or_path)


def load_preset(name: str = "default") -> Dict[str, Any]:
    """The embedded preset as a plain dict (a base for load_config)."""
    return read_yaml(preset_path(name))
