"""ℓ∞ projected gradient ascent (PGD) in [0, 1] pixel space.

The model is attacked in eval mode (BatchNorm uses running statistics and moves none of them)
and handed back in the mode the caller had; gradients are taken with respect to the input only,
so no parameter gradient is created or accumulated.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Start = Literal["uniform", "normal", "none"]
# Maps the attacked logits to a per-example loss to maximize.
AttackLoss = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackResult:
    x_adv: torch.Tensor
    # Per example, the largest ℓ1 norm (dual of ℓ∞) of the loss gradient over the iterates:
    # the local Lipschitz probe of REFERENCE.md section 3 when the loss is the TRADES KL.
    max_grad_l1: torch.Tensor


@contextmanager
def eval_mode(model: nn.Module):
    """Put `model` in eval mode for the block and restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def pgd_linf(model: nn.Module, x: torch.Tensor, loss_fn: AttackLoss, *, epsilon: float, step_size: float,
             steps: int, start: Start | torch.Tensor = "uniform") -> AttackResult:
    """Maximize `loss_fn(model(x'))` over the ℓ∞ ball of radius `epsilon` around `x`, intersected with [0, 1].

    `start`: "uniform" in the ball (Madry et al., PGD evaluation), "normal" for x + 0.001·N(0, 1)
    (TRADES), "none" for x itself, or a tensor: that point (where an earlier attack stopped). Each
    step moves by `step_size`·sign(gradient), projects to the ball, then clamps to [0, 1].
    """
    x = x.detach()
    if isinstance(start, torch.Tensor):
        x_adv = start.detach()
    elif start == "uniform":
        x_adv = x + torch.empty_like(x).uniform_(-epsilon, epsilon)
    elif start == "normal":
        x_adv = x + 0.001 * torch.randn_like(x)
    else:
        x_adv = x.clone()
    x_adv = _project(x_adv, x, epsilon)
    max_grad_l1 = torch.zeros(len(x), device=x.device)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            max_grad_l1 = torch.maximum(max_grad_l1, grad.abs().flatten(1).sum(1))
            x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, epsilon)
    return AttackResult(x_adv.detach(), max_grad_l1)


def _project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    return torch.clamp(torch.min(torch.max(x_adv, x - epsilon), x + epsilon), 0.0, 1.0)
