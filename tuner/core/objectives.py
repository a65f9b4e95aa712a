"""Adversarial training objectives by name, each of the form natural loss + λ · robust regularizer.

- `trades`: CE(f(x), y) + λ·KL(softmax f(x) ‖ softmax f(x')), x' maximizing that KL from
  x + 0.001·N(0, 1). λ is what the TRADES code calls `beta`.
- `pgd-at`: CE(f(x), y) + λ·(CE(f(x'), y) − CE(f(x), y)), x' from PGD on CE with a uniform
  random start; λ = 1 is Madry et al.'s PGD adversarial training. The difference is not
  clipped at 0 (the Wu et al. code clips it), so that λ = 1 is exactly CE on x'.

`model` may be wrapped in DistributedDataParallel: the attack runs on the bare module, the
loss through the wrapper, so only the training step synchronizes gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tuner.core.attacks import eval_mode, pgd_linf
from tuner.core.distributed import bare
from tuner.registry import Registry


@dataclass(frozen=True)
class AttackSettings:
    epsilon: float
    step_size: float
    steps: int


@dataclass(frozen=True)
class ObjectiveValue:
    loss: torch.Tensor  # what the optimizer minimizes
    natural_loss: torch.Tensor  # CE(f(x), y), detached
    regularizer: torch.Tensor  # the term λ multiplies, detached


# objective(model, x, y, *, lam, attack) -> ObjectiveValue, by method name
OBJECTIVES: Registry[Callable[..., ObjectiveValue]] = Registry("method")
register_objective = OBJECTIVES.register
list_objectives = OBJECTIVES.names
get_objective = OBJECTIVES.get


def kl_to(clean_logits: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-example KL(softmax clean ‖ softmax attacked), with the clean side fixed once per batch."""
    clean_probs = F.softmax(clean_logits.detach(), dim=1)

    def loss(adv_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(adv_logits, dim=1), clean_probs, reduction="none").sum(1)

    return loss


def cross_entropy_to(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-example CE with the true labels (the PGD evaluation loss)."""
    return lambda logits: F.cross_entropy(logits, y, reduction="none")


@register_objective("trades")
def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam: float, attack: AttackSettings) -> ObjectiveValue:
    """Under bf16 autocast the clean logits and the first attack step still run in fp32: the attack
    starts 0.001 from x, where the KL and its gradient are below bf16's resolution of the logits, so
    a bf16 first step goes in a random direction (and the attack reached 0.85 of fp32's KL)."""
    net = bare(model)
    with torch.autocast(x.device.type, enabled=False):
        with torch.no_grad(), eval_mode(net):
            clean_logits = net(x)
        attack_loss = kl_to(clean_logits)
        first = pgd_linf(net, x, attack_loss, epsilon=attack.epsilon, step_size=attack.step_size,
                         steps=min(1, attack.steps), start="normal").x_adv
    x_adv = pgd_linf(net, x, attack_loss, epsilon=attack.epsilon, step_size=attack.step_size,
                     steps=attack.steps - 1, start=first).x_adv
    logits = model(x)
    natural = F.cross_entropy(logits, y)
    regularizer = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    return ObjectiveValue(natural + lam * regularizer, natural.detach(), regularizer.detach())


@register_objective("pgd-at")
def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam: float, attack: AttackSettings) -> ObjectiveValue:
    x_adv = pgd_linf(bare(model), x, cross_entropy_to(y), epsilon=attack.epsilon, step_size=attack.step_size,
                     steps=attack.steps, start="uniform").x_adv
    natural = F.cross_entropy(model(x), y)
    adversarial = F.cross_entropy(model(x_adv), y)
    regularizer = adversarial - natural
    return ObjectiveValue((1 - lam) * natural + lam * adversarial, natural.detach(), regularizer.detach())
