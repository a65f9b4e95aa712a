"""Attack suites by name, and the strong robust accuracy they give: the worst case per example.

A suite is an ordered list of registered attacks (see `attacks`). Each attack is run only on the
examples that the clean input and every earlier attack left correctly classified, so an example
counts as robust only if it is classified correctly on the clean input and on every attack's
point; each attack's count of examples it broke is kept, so a user sees which attack did what.

`standard` is AutoAttack's gradient pair (APGD-CE, then APGD-T over 9 targets, 100 steps each);
`fast` is a cheaper stand-in for the CPU presets, measured against `standard` in BENCHMARKS.md.
Counts are sums over examples, so the counts of data-parallel workers can be summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuner.core.attacks import eval_mode, get_attack, pgd_linf
from tuner.core.objectives import AttackSettings, cross_entropy_to
from tuner.errors import ConfigError
from tuner.registry import Registry

DEFAULT_SUITE = "standard"
# The first counts of `suite_counts`; one count per attack of the suite follows, in suite order.
COUNTS = ("examples", "natural_correct", "robust_correct", "pgd_robust_correct")


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a suite: a registered attack name and its options (e.g. steps, targets)."""

    attack: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    name: str
    attacks: tuple[SuiteAttack, ...]
    description: str

    def __post_init__(self) -> None:
        names = [a.attack for a in self.attacks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"suite {self.name} needs one or more attacks, each once: {names}")


SUITES: Registry[Suite] = Registry("attack suite")
list_suites = SUITES.names


def get_suite(suite: str | Suite) -> Suite:
    """The suite registered as `suite`, or `suite` itself when it is one (a suite built on the fly)."""
    return suite if isinstance(suite, Suite) else SUITES.get(suite)


def register_suite(suite: Suite) -> Suite:
    return SUITES.register(suite.name)(suite)


register_suite(Suite("standard", (SuiteAttack("apgd-ce", {"steps": 100}), SuiteAttack("apgd-t", {"steps": 100, "targets": 9})),
                     "APGD-CE then APGD-T (9 targets), 100 steps each: AutoAttack's gradient attacks"))
register_suite(Suite("fast", (SuiteAttack("apgd-ce", {"steps": 50}), SuiteAttack("apgd-t", {"steps": 50, "targets": 3})),
                     "APGD-CE then APGD-T (3 targets), 50 steps each: the CPU presets' stand-in for standard"))


@dataclass(frozen=True)
class SuiteResult:
    """Counts of one suite over a split; `robust_correct` is the worst case per example over the suite and the clean input."""

    suite: str
    epsilon: float
    examples: int
    natural_correct: int
    robust_correct: int
    broken: dict[str, int]  # per attack, in suite order: the examples it broke that nothing before it had
    pgd_robust_correct: int | None  # under PGD alone (on the same examples), when asked for

    @property
    def natural_acc(self) -> float:
        return self.natural_correct / self.examples

    @property
    def robust_acc(self) -> float:
        return self.robust_correct / self.examples

    @property
    def pgd_robust_acc(self) -> float | None:
        return None if self.pgd_robust_correct is None else self.pgd_robust_correct / self.examples

    @classmethod
    def from_counts(cls, counts: torch.Tensor, *, suite: str | Suite, epsilon: float) -> SuiteResult:
        """From a tensor of `suite_counts` (summed across workers when data-parallel)."""
        values = counts.tolist()
        n, natural, robust, pgd_robust = values[:len(COUNTS)]
        if n == 0:
            raise ValueError("cannot evaluate on an empty split")
        chosen = get_suite(suite)
        return cls(chosen.name, epsilon, int(n), int(natural), int(robust),
                   {a.attack: int(c) for a, c in zip(chosen.attacks, values[len(COUNTS):], strict=True)},
                   None if math.isnan(pgd_robust) else int(pgd_robust))

    def as_dict(self) -> dict[str, Any]:
        """Flat fields for a table row or metrics: counts, accuracies and `broken_<attack>` per attack."""
        return {"suite": self.suite, "epsilon": self.epsilon, "examples": self.examples,
                "natural_correct": self.natural_correct, "robust_correct": self.robust_correct,
                "pgd_robust_correct": self.pgd_robust_correct, "natural_acc": self.natural_acc,
                "robust_acc": self.robust_acc, "pgd_robust_acc": self.pgd_robust_acc,
                **{f"broken_{name}": count for name, count in self.broken.items()}}


def suite_counts(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, suite: str | Suite,
                 epsilon: float, pgd: AttackSettings | None = None) -> torch.Tensor:
    """Sums over `batches` of `COUNTS` then the per-attack broken counts (float64, on the model's device).

    With `pgd`, also PGD on cross-entropy from a uniform start with those settings, on every
    correctly classified example, as the per-epoch metrics define robust accuracy; without it
    that count is NaN. Random starts come from torch's global generator: seed it to repeat.
    """
    chosen = get_suite(suite)
    attacks = [(get_attack(a.attack), a.options) for a in chosen.attacks]
    if not 0 <= epsilon <= 1:
        raise ConfigError(f"epsilon must be in [0, 1] pixel units, got {epsilon:g}")
    counts = torch.zeros(len(COUNTS) + len(attacks), dtype=torch.float64, device=next(model.parameters()).device)
    if pgd is None:
        counts[COUNTS.index("pgd_robust_correct")] = math.nan
    with eval_mode(model):
        for x, y in batches:
            with torch.no_grad():
                robust = model(x).argmax(1) == y
            counts[:2] += torch.tensor([len(y), robust.sum().item()], dtype=torch.float64, device=counts.device)
            if pgd is not None:
                counts[3] += correct_after(model, x, y, robust, lambda xs, ys: pgd_linf(
                    model, xs, cross_entropy_to(ys), epsilon=pgd.epsilon, step_size=pgd.step_size, steps=pgd.steps,
                    start="uniform").x_adv).sum().item()
            for i, (attack, options) in enumerate(attacks):
                survived = correct_after(model, x, y, robust,
                                         lambda xs, ys: attack(model, xs, ys, epsilon=epsilon, **options))
                counts[len(COUNTS) + i] += (robust & ~survived).sum().item()
                robust = survived
            counts[2] += robust.sum().item()
    return counts


def correct_after(model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, attack) -> torch.Tensor:
    """`correct` with each example cleared that `attack(x[correct], y[correct])` makes misclassified."""
    index = correct.nonzero()[:, 0]
    if not len(index):
        return correct
    with torch.no_grad():
        fooled = model(attack(x[index], y[index])).argmax(1) != y[index]
    result = correct.clone()
    result[index[fooled]] = False
    return result


def evaluate_suite(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                   suite: str | Suite = DEFAULT_SUITE, epsilon: float, pgd: AttackSettings | None = None) -> SuiteResult:
    """`suite`'s robust accuracy of `model` over all `batches` at radius `epsilon` (and PGD's, with `pgd`)."""
    return SuiteResult.from_counts(suite_counts(model, batches, suite=suite, epsilon=epsilon, pgd=pgd),
                                   suite=suite, epsilon=epsilon)
