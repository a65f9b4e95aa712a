"""Every setting of one adversarial training trial, validated in one place.

Presets (data files in `search_spaces/`) fill a `TrialConfig`; command-line flags override it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tuner.errors import ConfigError

PRECISIONS = ("fp32", "bf16")  # what `precision` and `eval_precision` accept (see tuner.core.device)


def parse_number(value: Any, *, name: str) -> float:
    """A float from a number or a fraction string such as "8/255" (how ε is usually written)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{name} must be a number or a fraction like 8/255, got {value!r}") from None


@dataclass(frozen=True)
class TrialConfig:
    """One trial: data, model of a given width, objective with weight `lam`, threat model, optimizer.

    `lam` is the robust-regularization weight λ of REFERENCE.md section 2; for TRADES it is the
    multiplier the TRADES code calls `beta`.
    """

    width: int
    lam: float
    # data
    dataset: str
    data_dir: str | None
    download: bool
    val_fraction: float
    split_seed: int
    augment: bool
    # model
    model: str
    depth: int | None
    normalize_mean: list[float] | None
    normalize_std: list[float] | None
    # objective and threat model (ℓ∞, pixel space [0, 1])
    method: str
    epsilon: float
    train_steps: int
    train_step_size: float
    eval_steps: int
    eval_step_size: float
    # optimization
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    lr_milestones: list[float]
    lr_gamma: float
    epochs: int
    batch_size: int
    eval_batch_size: int
    # validation: the first `val_epoch_examples` of the (randomly ordered) validation split are
    # evaluated after every epoch; the selected epoch is evaluated on the whole split. None: all.
    val_epoch_examples: int | None
    # execution (tuner.core.device): autocast dtype of training and of evaluation, NHWC, torch.compile
    precision: str
    eval_precision: str
    channels_last: bool
    compile: bool
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epsilon", "train_step_size", "eval_step_size", "lam"):
            object.__setattr__(self, name, parse_number(getattr(self, name), name=name))
        _check_types(self)
        _check(self.width > 0, f"width must be a positive integer, got {self.width!r}: pass --width 1 or more")
        _check(math.isfinite(self.lam) and self.lam >= 0, f"lam must be a finite number >= 0, got {self.lam:g}: "
               f"pass --lam 0 or more")
        _check(0 <= self.epsilon <= 1, f"epsilon must be in [0, 1] pixel units, got {self.epsilon:g}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}: pass --epochs 1 or more")
        _check(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1")
        _check(self.train_steps >= 1 and self.eval_steps >= 1, "attack steps must be >= 1")
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(all(0 < m <= 1 for m in self.lr_milestones),
               "lr_milestones are fractions of the epochs, each in (0, 1]")
        _check((self.normalize_mean is None) == (self.normalize_std is None),
               "normalize_mean and normalize_std go together: give both or neither")
        _check(self.depth is None or self.depth > 0, f"depth must be positive, got {self.depth}")
        _check(self.val_epoch_examples is None or (isinstance(self.val_epoch_examples, int) and self.val_epoch_examples >= 1),
               f"val_epoch_examples must be a positive integer or null (the whole split), got {self.val_epoch_examples!r}")
        for name in ("precision", "eval_precision"):
            value = getattr(self, name)
            _check(value in PRECISIONS, f"{name} must be one of {', '.join(PRECISIONS)}, got {value!r}"
                   + (" (fp16 needs loss scaling and its input gradients underflow)" if value == "fp16" else "")
                   + f": set {name}: fp32 or bf16 in the preset")
        for name in ("channels_last", "compile"):
            _check(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build from a flat mapping, rejecting unknown or missing keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown trial setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise ConfigError(f"missing trial setting(s) {', '.join(missing)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)


TYPES = {  # a field's annotation → the Python types a preset or flag may give it, and how to say so
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
    "list[float]": ((list,), "a list of numbers"),
}


def _check_types(config: TrialConfig) -> None:
    """Each setting has its annotated type (`null` only where the annotation allows None); bool is not a number."""
    for field in dataclasses.fields(config):
        value, annotation = getattr(config, field.name), str(field.type)
        optional = annotation.endswith(" | None")
        types, words = TYPES[annotation.removesuffix(" | None")]
        if value is None and optional:
            continue
        ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if ok and annotation.startswith("list"):
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        _check(ok, f"{field.name} must be {words}{' or null' if optional else ''}, got {value!r}: "
                   f"fix it in the preset (or its flag)")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
