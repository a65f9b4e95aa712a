"""Presets: data files in `search_spaces/` holding every setting of a trial and of its search.

A preset is named by its file stem (`quick` → `search_spaces/quick.yaml`) or given as a path
to a YAML file of the same shape. Command-line flags override its values.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tuner.core.config import TrialConfig
from tuner.errors import ConfigError

DEFAULT_PRESET = "quick"
PAPER_PRESET = "cifar10-wrn34"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    trial: dict[str, Any]  # every TrialConfig field but width and lam
    search: dict[str, Any]

    def trial_config(self, **overrides: Any) -> TrialConfig:
        """The preset's trial settings with `overrides` (None values are ignored) applied."""
        return TrialConfig.from_dict({**self.trial, **{k: v for k, v in overrides.items() if v is not None}})


def list_presets() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("search_spaces").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> Preset:
    """The preset called `name_or_path`, or the YAML file at that path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist; give a YAML file or one of: {', '.join(list_presets())}")
        text, name = path.read_text(), path.stem
    elif name_or_path in list_presets():
        text, name = (resources.files("search_spaces") / f"{name_or_path}.yaml").read_text(), name_or_path
    else:
        raise ConfigError(f"unknown preset {name_or_path!r}; choose one of: {', '.join(list_presets())} (or a .yaml path)")
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {name} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(content, dict) or not isinstance(content.get("trial"), dict) or not isinstance(content.get("search"), dict):
        raise ConfigError(f"preset {name} needs the mappings 'trial' and 'search'")
    return Preset(name, str(content.get("description", "")), content["trial"], content["search"])


def add_trial_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override a preset's trial settings, shared by the train and search commands."""
    group = parser.add_argument_group("trial settings (override the preset)")
    group.add_argument("--method", help="objective: trades or pgd-at")
    group.add_argument("--epochs", type=int, help="training epochs per trial")
    group.add_argument("--seed", type=int, help="random seed of the trial")
    group.add_argument("--data-dir", help="where the dataset's files are (cifar10)")
    group.add_argument("--download", action="store_true", default=None, help="download CIFAR-10 if missing (needs internet)")
    group.add_argument("--batch-size", type=int, help="training batch size")
    group.add_argument("--epsilon", help="ℓ∞ radius in [0, 1] pixel units, e.g. 8/255 or 0.031")
    group.add_argument("--device", help="auto (default: cuda if available), cpu or cuda[:N]")


def trial_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The trial settings given on the command line."""
    return {name: getattr(args, name) for name in
            ("method", "epochs", "seed", "data_dir", "download", "batch_size", "epsilon", "device")}
