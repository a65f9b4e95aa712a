"""Robustness metrics over a whole split, as sums of per-example counts.

On one evaluation, with the same PGD examples x' for all of them:
- natural_acc: top-1 on clean inputs;
- robust_acc: top-1 under ℓ∞ PGD on CE with the true labels, uniform random start. The clean
  input lies in the ε-ball too, so an example counts as robust only if it is classified
  correctly both clean and attacked (the worst case per example of the two);
- stability: share of all examples, correct or not, whose attacked prediction equals the clean one;
- lipschitz: ℓ1 norm of the input gradient of the TRADES KL term, maximum over the iterates of
  the training attack (KL-maximizing PGD from x + 0.001·N(0, 1)), mean over examples.
Hence robust ≤ natural and robust ≥ natural − (1 − stability) on every evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from tuner.core.attacks import eval_mode, pgd_linf
from tuner.core.objectives import AttackSettings, cross_entropy_to, kl_to

COUNTS = ("examples", "natural_correct", "robust_correct", "stable", "lipschitz_sum")


RATES = ("natural_acc", "robust_acc", "stability", "lipschitz")


@dataclass(frozen=True)
class Evaluation:
    natural_acc: float
    robust_acc: float
    stability: float
    lipschitz: float
    examples: int

    @classmethod
    def from_counts(cls, counts: torch.Tensor) -> Evaluation:
        """From a tensor of the `COUNTS` sums (summed across workers when data-parallel, or over parts of a split)."""
        n, natural, robust, stable, lipschitz = counts.tolist()
        if n == 0:
            raise ValueError("cannot evaluate on an empty split")
        return cls(natural / n, robust / n, stable / n, lipschitz / n, int(n))

    @classmethod
    def from_dict(cls, values: dict[str, float], prefix: str) -> Evaluation:
        """The evaluation `as_dict(prefix)` wrote into `values`."""
        return cls(*(values[f"{prefix}_{name}"] for name in RATES), int(values[f"{prefix}_examples"]))

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {**{f"{prefix}_{name}": getattr(self, name) for name in RATES}, f"{prefix}_examples": self.examples}

    def counts(self) -> torch.Tensor:
        """The `COUNTS` sums this evaluation came from (float64), to pool it with the counts of other examples."""
        n = self.examples
        return torch.tensor([n, round(self.natural_acc * n), round(self.robust_acc * n), round(self.stability * n),
                             self.lipschitz * n], dtype=torch.float64)


def evaluation_counts(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                      eval_attack: AttackSettings, probe_attack: AttackSettings) -> torch.Tensor:
    """Sums of `COUNTS` over `batches` (float64, on the model's device; zeros for no batches, e.g. an empty shard)."""
    counts = torch.zeros(len(COUNTS), dtype=torch.float64, device=next(model.parameters()).device)
    with eval_mode(model):
        for x, y in batches:
            with torch.no_grad():
                clean_logits = model(x)
            clean_pred = clean_logits.argmax(1)
            x_adv = pgd_linf(model, x, cross_entropy_to(y), epsilon=eval_attack.epsilon,
                             step_size=eval_attack.step_size, steps=eval_attack.steps, start="uniform").x_adv
            with torch.no_grad():
                adv_pred = model(x_adv).argmax(1)
            probe = pgd_linf(model, x, kl_to(clean_logits), epsilon=probe_attack.epsilon,
                             step_size=probe_attack.step_size, steps=probe_attack.steps, start="normal")
            natural_correct, robust_correct, stable = outcome_counts(y, clean_pred, adv_pred)
            batch = torch.stack([
                torch.tensor(float(len(y)), device=x.device),
                natural_correct,
                robust_correct,
                stable,
                probe.max_grad_l1.sum().double(),
            ]).double()
            counts += batch
    return counts


def outcome_counts(labels: torch.Tensor, clean_pred: torch.Tensor, adv_pred: torch.Tensor) -> torch.Tensor:
    """How many examples are natural-correct, robust-correct and stable, from their clean and attacked predictions.

    Robust needs both predictions right; stable compares the two predictions, whatever the label.
    """
    natural_correct = clean_pred == labels
    return torch.stack([natural_correct.sum(), (natural_correct & (adv_pred == labels)).sum(),
                        (adv_pred == clean_pred).sum()]).double()


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
             eval_attack: AttackSettings, probe_attack: AttackSettings) -> Evaluation:
    """Metrics of `model` over all `batches`."""
    return Evaluation.from_counts(evaluation_counts(model, batches, eval_attack=eval_attack, probe_attack=probe_attack))
